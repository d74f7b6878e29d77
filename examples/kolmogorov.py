"""Batched pseudo-spectral solver for 2-D Kolmogorov flow.

The vorticity ω = ∂v/∂x − ∂u/∂y of an incompressible flow on the 2π-periodic
square obeys

    ∂ω/∂t + u·∇ω = ν∇²ω − αω + n cos(n y),      u = (∂ψ/∂y, −∂ψ/∂x),  ∇²ψ = −ω,

with viscosity ν = 1/Re, linear (Rayleigh) drag α and the Kolmogorov forcing of
wavenumber n, which is the curl of the body force f = (−sin(n y), 0).  For
Re ≳ 100 the forced shear flow is unstable and, after a spin-up of the order of
the drag time 1/α, settles into a statistically steady turbulent state.

Discretisation: Fourier (rfft) in both directions, the advection term evaluated
in physical space and de-aliased with the 2/3 rule, time stepping with the
low-storage three-stage IMEX Runge–Kutta scheme of Spalart, Moser & Rogers
(1991): explicit RK3 for advection and forcing, Crank–Nicolson for the linear
viscous and drag terms.  Before each saved frame the step is chosen so that the
Courant number (|u| + |v|) Δt/Δx stays below `cfl` (RK3 is stable up to about √3).
Many independent trajectories are integrated as one batch, so a few thousand 64×64
snapshots take seconds to tens of seconds on one or two CPU cores.  A run is
reproducible for a given seed and thread count; the flow is chaotic, so rounding
differences between thread counts grow into different (but statistically equal)
trajectories.

Run `python examples/kolmogorov.py -o kolmogorov.npz` to write an .npz file with
the array `vorticity` of shape (trajectories, frames, ny, nx) and the settings.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import time

import numpy as np
import torch

# Std of the raw vorticity in the steady state at the default physics (grid 64,
# Re 1000, drag 0.1, n 4).  Output is divided by this fixed number rather than by
# each run's own std, so that data sets drawn with different seeds share one scale.
VORTICITY_STD = 4.7

# (γ, ζ) of the three RK3 stages; α + β = γ + ζ is the stage's share of dt.
_RK3 = ((8 / 15, 0.0), (5 / 12, -17 / 60), (3 / 4, -5 / 12))


def _wavenumbers(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer wavenumbers (ky, kx) broadcastable over an (n, n//2+1) rfft2 grid."""
    ky = torch.fft.fftfreq(n, 1.0 / n)[:, None]
    kx = torch.fft.rfftfreq(n, 1.0 / n)[None, :]
    return ky, kx


def _random_vorticity(trajectories: int, n: int, rng: np.random.Generator) -> torch.Tensor:
    """Random smooth initial vorticity in spectral space, O(1) amplitude."""
    noise = torch.from_numpy(rng.standard_normal((trajectories, n, n), dtype=np.float32))
    ky, kx = _wavenumbers(n)
    k = torch.sqrt(kx**2 + ky**2)
    w_hat = torch.fft.rfft2(noise) * (k * torch.exp(-((k / 4.0) ** 2)))
    w_hat[..., 0, 0] = 0
    std = torch.fft.irfft2(w_hat, s=(n, n)).std(dim=(-2, -1), keepdim=True)
    return w_hat * (3.0 / std)


def _truncate(w_hat: torch.Tensor, n: int, m: int) -> np.ndarray:
    """Physical field on an m×m grid from the spectrum of an n×n field (spectral truncation)."""
    if m == n:
        return torch.fft.irfft2(w_hat, s=(n, n)).numpy()
    h = m // 2  # the m-grid Nyquist mode is dropped to keep the field real-symmetric
    out = w_hat.new_zeros(w_hat.shape[:-2] + (m, h + 1))
    out[..., :h, :h] = w_hat[..., :h, :h]
    out[..., m - h + 1 :, :h] = w_hat[..., n - h + 1 :, :h]
    return torch.fft.irfft2(out * (m / n) ** 2, s=(m, m)).numpy()


def _keep_freed_memory() -> None:
    """Keep glibc from handing freed heap memory back to the kernel (no-op elsewhere)."""
    # torch's inverse real FFT copies its megabyte-sized input on every call; with
    # glibc's default thresholds each copy is a fresh mmap whose pages fault in again,
    # which more than doubled the run time of a fresh process.
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
    libc.mallopt(-1, 256 << 20)  # M_TRIM_THRESHOLD


class _Solver:
    """Spectral operators and work buffers for one batch of trajectories on an n×n grid."""

    def __init__(self, batch: int, n: int, re: float, drag: float, wavenumber: int) -> None:
        """Precompute wavenumber operators, the forcing spectrum and reusable buffers."""
        self.n, self.dx = n, 2 * np.pi / n
        ky, kx = _wavenumbers(n)
        k2 = kx**2 + ky**2
        inv_k2 = 1.0 / torch.where(k2 == 0, 1.0, k2)
        keep = (kx.abs() < n / 3) & (ky.abs() < n / 3)
        keep[0, 0] = False  # the mean vorticity is zero and stays zero
        self.dealias = keep.to(torch.complex64)
        ikx, iky = (1j * kx).to(torch.complex64), (1j * ky).to(torch.complex64)
        # spectral multipliers taking ω̂ to û, v̂, ∂ω/∂x, ∂ω/∂y
        self.derivatives = torch.stack(
            (iky * inv_k2, -ikx * inv_k2, ikx.expand_as(k2), iky.expand_as(k2)))[:, None]
        y = torch.arange(n) * self.dx
        forcing = wavenumber * torch.cos(wavenumber * y)[:, None].expand(n, n)
        self.forcing_hat = torch.fft.rfft2(forcing) * self.dealias
        self.linear = -(k2 / re + drag)
        # Buffers are reused in every stage: allocating fresh megabyte-sized tensors
        # thousands of times makes malloc hand pages back and forth with the kernel.
        m = n // 2 + 1
        self.spectra = torch.empty((4, batch, n, m), dtype=torch.complex64)
        self.fields = torch.empty((4, batch, n, n))
        self.product = torch.empty((batch, n, n))
        self.increment = torch.empty((batch, n, m), dtype=torch.complex64)
        self.tendencies = [torch.empty((batch, n, m), dtype=torch.complex64) for _ in range(2)]

    def max_speed(self, w_hat: torch.Tensor) -> float:
        """Largest |u| + |v| over the batch."""
        torch.mul(self.derivatives[:2], w_hat, out=self.spectra[:2])
        velocity = torch.fft.irfft2(self.spectra[:2], s=(self.n, self.n))
        return velocity.abs().sum(dim=0).max().item()

    def tendency(self, w_hat: torch.Tensor, out: torch.Tensor) -> None:
        """Write the spectral advection plus forcing, −u·∇ω + f, into `out` (not de-aliased)."""
        torch.mul(self.derivatives, w_hat, out=self.spectra)
        torch.fft.irfft2(self.spectra, s=(self.n, self.n), out=self.fields)
        u, v, wx, wy = self.fields
        torch.mul(u, wx, out=self.product).addcmul_(v, wy)
        torch.fft.rfft2(self.product, out=out)
        torch.sub(self.forcing_hat, out, out=out)

    def advance(self, w_hat: torch.Tensor, duration: float, dt: float, cfl: float) -> None:
        """Integrate `w_hat` in place over `duration` in equal steps within dt and the CFL limit."""
        speed = self.max_speed(w_hat)
        steps = max(1, math.ceil(duration / dt), math.ceil(duration * speed / (cfl * self.dx)))
        h = duration / steps
        stages = []
        for gamma, zeta in _RK3:
            half = (gamma + zeta) * h / 2 * self.linear
            stages.append(((1 + half) / (1 - half), h * self.dealias / (1 - half), gamma, zeta))
        current, previous = self.tendencies
        for _ in range(steps):
            for implicit, explicit, gamma, zeta in stages:
                self.tendency(w_hat, current)
                torch.mul(current, gamma, out=self.increment)
                if zeta:
                    self.increment.add_(previous, alpha=zeta)
                w_hat.mul_(implicit).add_(self.increment.mul_(explicit))
                current, previous = previous, current


def simulate(
    trajectories: int,
    frames: int,
    *,
    re: float = 1000.0,
    drag: float = 0.1,
    wavenumber: int = 4,
    grid: int = 64,
    out_grid: int = 64,
    dt: float = 0.05,
    cfl: float = 1.0,
    frame_interval: float = 0.25,
    spinup: float = 20.0,
    scale: float = 1.0 / VORTICITY_STD,
    seed: int = 0,
    threads: int = 1,
) -> np.ndarray:
    """Vorticity frames of independent Kolmogorov-flow runs, (trajectories, frames, y, x)."""
    if not 0 < out_grid <= grid or out_grid % 2:
        raise ValueError(f"out_grid ({out_grid}) must be even and at most grid ({grid})")
    _keep_freed_memory()
    solver = _Solver(trajectories, grid, re, drag, wavenumber)
    w_hat = _random_vorticity(trajectories, grid, np.random.default_rng(seed)) * solver.dealias
    out = np.empty((trajectories, frames, out_grid, out_grid), np.float32)
    # On a busy machine extra intra-op threads mostly spin-wait; one thread is often faster.
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            # spin up in chunks no longer than a frame interval so the step size can follow the flow
            chunks = math.ceil(spinup / frame_interval)
            for _ in range(chunks):
                solver.advance(w_hat, spinup / chunks, dt, cfl)
            for f in range(frames):
                if f:
                    solver.advance(w_hat, frame_interval, dt, cfl)
                out[:, f] = _truncate(w_hat, grid, out_grid) * scale
                if not np.isfinite(out[:, f]).all():
                    raise FloatingPointError(
                        f"solution blew up by frame {f}; try a smaller --cfl or --dt")
    finally:
        torch.set_num_threads(saved_threads)
    return out


def add_physics_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the solver's physics and sampling options to a command-line parser."""
    g = parser.add_argument_group("Kolmogorov flow")
    options = [
        ("--re", float, 1000.0, "Reynolds number, viscosity = 1/Re"),
        ("--drag", float, 0.1, "linear drag coefficient"),
        ("--wavenumber", int, 4, "forcing wavenumber n"),
        ("--grid", int, 64, "simulation grid size"),
        ("--out-grid", int, 64, "output grid size, reached by spectral truncation"),
        ("--dt", float, 0.05, "largest time step"),
        ("--cfl", float, 1.0, "Courant number (|u| + |v|) dt / dx the step size keeps below"),
        ("--frame-interval", float, 0.25, "model time between saved frames"),
        ("--spinup", float, 20.0, "discarded spin-up time"),
        ("--threads", int, 1, "torch CPU threads"),
        ("--scale", float, 1.0 / VORTICITY_STD, "factor applied to the output vorticity"),
    ]
    for flag, kind, default, text in options:
        g.add_argument(flag, type=kind, default=default, help=f"{text} (default {default:g})")


def physics_kwargs(args: argparse.Namespace) -> dict:
    """The `simulate` keyword arguments held in parsed command-line options."""
    names = ("re", "drag", "wavenumber", "grid", "out_grid", "dt", "cfl", "frame_interval",
             "spinup", "scale", "threads")
    return {name: getattr(args, name) for name in names}


def summarize(w: np.ndarray) -> str:
    """One-line statistics of a vorticity array."""
    lag1 = np.corrcoef(w[:, :-1].ravel(), w[:, 1:].ravel())[0, 1] if w.shape[1] > 1 else np.nan
    return (
        f"mean {w.mean():+.3f}  std {w.std():.3f}  min {w.min():.2f}  max {w.max():.2f}  "
        f"frame-to-frame correlation {lag1:.3f}  finite {bool(np.isfinite(w).all())}"
    )


def main() -> None:
    """Command-line entry point: simulate and save an .npz file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_physics_arguments(parser)
    parser.add_argument("--trajectories", type=int, default=32,
                        help="independent trajectories (default 32)")
    parser.add_argument("--frames", type=int, default=100,
                        help="saved frames per trajectory (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", default="kolmogorov.npz")
    args = parser.parse_args()

    params = physics_kwargs(args)
    start = time.perf_counter()
    w = simulate(args.trajectories, args.frames, seed=args.seed, **params)
    elapsed = time.perf_counter() - start
    print(f"{w.shape[0] * w.shape[1]} frames of {w.shape[2]}x{w.shape[3]} in {elapsed:.1f} s "
          f"({w.shape[0] * w.shape[1] / elapsed:.0f} frames/s)")
    print(summarize(w))
    np.savez_compressed(args.output, vorticity=w, seed=args.seed, **params)
    print(f"wrote {args.output} (vorticity = raw vorticity x {args.scale:g})")


if __name__ == "__main__":
    main()
