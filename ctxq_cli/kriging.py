"""Simple kriging of each frame from its own observed cells, on the grid, with FFTs.

A frame's anomaly z (normalised units, mean 0, variance 1) is taken as a stationary Gaussian
field with the Matérn-3/2 correlation

    c(d) = (1 + √3 d/ℓ) exp(−√3 d/ℓ)      (d, ℓ in grid cells)

observed with noise variance τ² at the cells O. The kriging mean at every cell is

    μ = C_·O (C_OO + τ² I)⁻¹ z_O,

found by conjugate gradients on the observed cells, where multiplying by C is a convolution,
done with zero-padded FFTs (the grid is not periodic), so a frame of N cells costs
O(N log N) per iteration and no matrix is formed. Long length scales make the system
ill-conditioned, so the iterations are preconditioned with the inverse of the kernel plus
nugget on the whole (circulant-embedded) grid, also one FFT product: it knows the field's
smoothness and leaves only the gaps' geometry to the iterations. On the A1B air temperature
under clouds hiding 30 % (ℓ = 10.6 cells, τ² = 0.01), 40 iterations come within 0.1 % of the
exact kriging error, where plain conjugate gradients were 87 % above it (1.08× after 200). A
fixed number of iterations gives the same answer wherever the frame is filled, and however
frames are batched (:meth:`Convolution.apply`).

The exact kriging variance needs a solve per cell; :func:`nearest_variance` gives instead the
variance of kriging from the nearest observed cell alone, 1 − c(d)², an upper bound that falls
to the nugget next to an observation and rises to 1 far from every one.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

DTYPE = torch.float64
TOLERANCE = 1e-8     # a frame's solve stops when its residual falls below this share of the first


def correlation(distance: Tensor, length_scale: float) -> Tensor:
    """Matérn-3/2 correlation at ``distance`` cells for length scale ℓ."""
    a = math.sqrt(3.0) * distance / length_scale
    return (1 + a) * torch.exp(-a)


def _lags(h: int, w: int, device: torch.device) -> Tensor:
    """Distances (2H, 2W) of the lags of a zero-padded (2H, 2W) grid, in FFT order."""
    dy = torch.fft.fftfreq(2 * h, 1.0 / (2 * h), dtype=DTYPE, device=device)[:, None]
    dx = torch.fft.fftfreq(2 * w, 1.0 / (2 * w), dtype=DTYPE, device=device)[None, :]
    return torch.sqrt(dy ** 2 + dx ** 2)


class Convolution:
    """Multiplication of frames (..., H, W) by a stationary kernel k(d), as a linear convolution."""

    def __init__(self, kernel: Tensor, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.spectrum = torch.fft.rfft2(kernel)

    @classmethod
    def of(cls, fn, shape: tuple[int, int], device: torch.device) -> Convolution:
        """The convolution with k = fn(distance) on a grid of ``shape``."""
        return cls(fn(_lags(*shape, device)), shape)

    def __call__(self, x: Tensor) -> Tensor:
        """Σ_n k(|x − n|) x_n at every cell."""
        return self.apply(x, self.spectrum)

    def inverse(self, x: Tensor, nugget: float) -> Tensor:
        """(K + τ² I)⁻¹ x for the circulant K that embeds the kernel in the padded grid, cut to
        the grid: symmetric and positive definite (negative parts of K's spectrum clipped)."""
        return self.apply(x, 1.0 / (self.spectrum.real.clamp(min=0) + nugget))

    def apply(self, x: Tensor, spectrum: Tensor) -> Tensor:
        """x zero-padded to (2H, 2W), multiplied by ``spectrum`` and cut back to (H, W)."""
        h, w = self.shape
        if x.numel() == h * w:
            # the FFT library takes another path for a single frame, whose last digits differ;
            # unconverged iterations amplify them, so a lone frame goes beside a zero one and
            # a frame's kriging does not depend on how frames are batched
            return self.apply(torch.stack([x, torch.zeros_like(x)]), spectrum)[0]
        padded = torch.fft.rfft2(x, s=(2 * h, 2 * w))
        return torch.fft.irfft2(padded * spectrum, s=(2 * h, 2 * w))[..., :h, :w]


def frame_sum(x: Tensor) -> Tensor:
    """Sum over each frame's cells, kept as (..., 1, 1)."""
    return x.sum((-2, -1), keepdim=True)


def krige(values: Tensor, observed: Tensor, length_scale: float, nugget: float,
          iterations: int = 40) -> Tensor:
    """Kriging mean (..., H, W) of each frame from its observed cells (values there only)."""
    shape = tuple(values.shape[-2:])
    cov = Convolution.of(lambda d: correlation(d, length_scale), shape, values.device)
    m = observed.to(DTYPE)

    def precondition(r: Tensor) -> Tensor:
        return m * cov.inverse(r, nugget)

    # preconditioned conjugate gradients on (M C M + τ² I) w = M z, w on the observed cells
    b = torch.where(observed, values.to(DTYPE), 0)
    w = torch.zeros_like(b)
    res = b.clone()
    pres = precondition(res)
    p = pres.clone()
    rz = frame_sum(res * pres)
    # a frame stops once solved: its tiny residuals would otherwise turn subnormal and slow
    # every later iteration by orders of magnitude
    floor = TOLERANCE ** 2 * frame_sum(res * res)
    for _ in range(iterations):
        active = frame_sum(res * res) > floor
        if not active.any():
            break
        ap = m * cov(p) + nugget * p
        alpha = torch.where(active, rz / frame_sum(p * ap).clamp(min=1e-300), 0)
        w = w + alpha * p
        res = torch.where(active, res - alpha * ap, 0)
        pres = precondition(res)
        new = frame_sum(res * pres)
        p = torch.where(active, pres + new / rz.clamp(min=1e-300) * p, 0)
        rz = new
    return cov(w)


def nearest_variance(observed: Tensor, length_scale: float, reach: int) -> Tensor:
    """1 − c(d)² (..., H, W) with d the distance to the nearest observed cell of the frame,
    measured as the Chebyshev distance up to ``reach`` cells (1 beyond; 0 on observed cells)."""
    shape = observed.shape
    seen = observed.to(DTYPE).reshape(-1, 1, *shape[-2:])
    distance = torch.full_like(seen, math.inf)
    distance[seen > 0] = 0.0
    grown = seen
    for d in range(1, reach + 1):     # the cells within d of an observation: one dilation more
        grown = torch.nn.functional.max_pool2d(grown, 3, stride=1, padding=1)
        distance = torch.where((grown > 0) & torch.isinf(distance),
                               torch.full_like(distance, float(d)), distance)
    near = correlation(distance.clamp(max=1e30), length_scale)
    return (1 - near ** 2).reshape(shape)
