"""Time-varying observation masks for gridded fields (True = observed).

Each generator returns a boolean array m of shape (T, ny, nx) and mimics one way
geophysical observations go missing:

* pixel   — i.i.d. Bernoulli(p) cells, P(m = 1) = observed_fraction;
* block   — the field cut into grid×grid tiles, `missing_blocks` random tiles hidden per frame;
* swath   — periodic slanted bands, observed where (x cos θ − y sin θ − s_t) mod (w + g) < w,
            whose offset s_t advances every frame, like successive satellite passes;
* cloud   — a Gaussian random field z = G_L * ξ (white noise ξ smoothed with a Gaussian
            of width L, periodic via FFT) that evolves as an AR(1) process
            ξ_t = ρ ξ_{t−1} + √(1−ρ²) ε_t, ρ = exp(−1/τ); in each frame the cells with the
            lowest z are hidden, so the missing fraction is exact up to one cell;
* station — a fixed set of sparse stations, each reporting at every step except for
            rare independent drop-outs.

`make_mask(kind, shape, rng, **params)` dispatches by name.  Run
`python examples/masks.py --kind cloud --missing 0.3` to print a mask's statistics.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable

import numpy as np

Shape = tuple[int, int, int]
Rng = np.random.Generator | None


def _rng(rng: Rng) -> np.random.Generator:
    """The given generator, or a freshly seeded one."""
    return np.random.default_rng() if rng is None else rng


def pixel_mask(shape: Shape, observed_fraction: float = 0.25, rng: Rng = None) -> np.ndarray:
    """Independently observed cells, each with probability `observed_fraction`."""
    return _rng(rng).random(shape) < observed_fraction


def block_mask(shape: Shape, grid: int = 3, missing_blocks: int = 4, rng: Rng = None) -> np.ndarray:
    """Tiles of a grid×grid partition, `missing_blocks` of them hidden per frame."""
    t, ny, nx = shape
    if not 0 <= missing_blocks <= grid * grid:
        raise ValueError(f"missing_blocks must lie in [0, {grid * grid}]")
    # a random permutation per frame; the first `missing_blocks` tiles in it are hidden
    ranks = _rng(rng).random((t, grid * grid)).argsort(axis=1).argsort(axis=1)
    hidden = ranks < missing_blocks
    tile = (np.arange(ny) * grid // ny)[:, None] * grid + (np.arange(nx) * grid // nx)[None, :]
    return ~hidden[:, tile]


def swath_mask(
    shape: Shape,
    swath_width: float = 12.0,
    gap_width: float = 20.0,
    angle: float = 15.0,
    rng: Rng = None,
    drift: float | None = None,
) -> np.ndarray:
    """Observed slanted bands (sizes in cells, angle in degrees from y) that move every frame."""
    t, ny, nx = shape
    period = swath_width + gap_width
    # by default advance by the golden fraction of a period, so passes do not repeat
    drift = period * (np.sqrt(5) - 1) / 2 if drift is None else drift
    offset = _rng(rng).uniform(0, period) + drift * np.arange(t)
    theta = np.deg2rad(angle)
    across = np.arange(nx)[None, :] * np.cos(theta) - np.arange(ny)[:, None] * np.sin(theta)
    return (across[None] - offset[:, None, None]) % period < swath_width


def _smooth_noise(shape: Shape, correlation_length: float, persistence: float,
                  rng: np.random.Generator) -> np.ndarray:
    """Smooth periodic Gaussian random fields, AR(1)-correlated from frame to frame."""
    t, ny, nx = shape
    rho = np.exp(-1.0 / persistence) if persistence > 0 else 0.0
    noise = rng.standard_normal(shape)
    for i in range(1, t):
        noise[i] = rho * noise[i - 1] + np.sqrt(1 - rho**2) * noise[i]
    ky = 2 * np.pi * np.fft.fftfreq(ny)[:, None]
    kx = 2 * np.pi * np.fft.rfftfreq(nx)[None, :]
    kernel = np.exp(-0.5 * correlation_length**2 * (kx**2 + ky**2))
    return np.fft.irfft2(np.fft.rfft2(noise) * kernel, s=(ny, nx))


def cloud_mask(
    shape: Shape,
    missing_fraction: float = 0.5,
    correlation_length: float = 6.0,
    rng: Rng = None,
    persistence: float = 5.0,
) -> np.ndarray:
    """Clustered cloud-like gaps covering `missing_fraction` of each frame, evolving in time."""
    t, ny, nx = shape
    field = _smooth_noise(shape, correlation_length, persistence, _rng(rng)).reshape(t, -1)
    hidden = round(missing_fraction * ny * nx)
    mask = np.ones_like(field, dtype=bool)
    np.put_along_axis(mask, np.argsort(field, axis=1)[:, :hidden], False, axis=1)
    return mask.reshape(shape)


def station_mask(shape: Shape, n_stations: int = 64, rng: Rng = None,
                 dropout: float = 0.02) -> np.ndarray:
    """Fixed randomly placed stations, each missing a report with probability `dropout`."""
    t, ny, nx = shape
    rng = _rng(rng)
    sites = rng.choice(ny * nx, size=n_stations, replace=False)
    mask = np.zeros((t, ny * nx), dtype=bool)
    mask[:, sites] = rng.random((t, n_stations)) >= dropout
    return mask.reshape(shape)


MASKS: dict[str, Callable[..., np.ndarray]] = {
    "pixel": pixel_mask,
    "block": block_mask,
    "swath": swath_mask,
    "cloud": cloud_mask,
    "station": station_mask,
}


def make_mask(kind: str, shape: Shape, rng: Rng = None, **params: float) -> np.ndarray:
    """A mask of the named kind ('pixel', 'block', 'swath', 'cloud' or 'station')."""
    if kind not in MASKS:
        raise ValueError(f"unknown mask kind {kind!r}; choose from {', '.join(MASKS)}")
    return MASKS[kind](shape, rng=rng, **params)


# command-line option -> generator parameter; a generator gets those its signature names
_OPTIONS = {
    "observed": ("observed_fraction", float, "pixel: observed fraction"),
    "blocks": ("grid", int, "block: tiles per side"),
    "missing_blocks": ("missing_blocks", int, "block: hidden tiles per frame"),
    "swath_width": ("swath_width", float, "swath: band width in cells"),
    "gap_width": ("gap_width", float, "swath: gap between bands in cells"),
    "angle": ("angle", float, "swath: band angle from the y axis in degrees"),
    "drift": ("drift", float, "swath: band shift per frame in cells"),
    "missing": ("missing_fraction", float, "cloud: missing fraction"),
    "correlation_length": ("correlation_length", float, "cloud: correlation length in cells"),
    "persistence": ("persistence", float, "cloud: e-folding time of the clouds in frames"),
    "stations": ("n_stations", int, "station: number of stations"),
    "dropout": ("dropout", float, "station: probability a report is missing"),
}


def add_mask_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the mask kind and every generator's parameters as command-line options."""
    g = parser.add_argument_group("observation mask (unset options take the generator's default)")
    g.add_argument("--mask", "--kind", dest="mask", choices=list(MASKS), default="cloud",
                   help="mask kind (default cloud)")
    for option, (_, kind, text) in _OPTIONS.items():
        g.add_argument("--" + option.replace("_", "-"), type=kind, help=text)


def mask_params(args: argparse.Namespace) -> dict[str, float]:
    """The parameters set on the command line that the chosen generator accepts."""
    accepted = inspect.signature(MASKS[args.mask]).parameters
    params = {name: getattr(args, option) for option, (name, _, _) in _OPTIONS.items()}
    unused = [option for option, (name, _, _) in _OPTIONS.items()
              if params[name] is not None and name not in accepted]
    if unused:
        raise SystemExit(f"options not used by --mask {args.mask}: {', '.join(unused)}")
    return {name: value for name, value in params.items() if value is not None}


def main() -> None:
    """Command-line entry point: print the statistics of one mask."""
    parser = argparse.ArgumentParser(description="Print statistics of an example observation mask.")
    add_mask_arguments(parser)
    parser.add_argument("--shape", type=int, nargs=3, default=(100, 64, 64),
                        metavar=("T", "NY", "NX"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    mask = make_mask(args.mask, tuple(args.shape), rng, **mask_params(args))
    per_frame = mask.mean(axis=(1, 2))
    print(f"{args.mask} mask {mask.shape}: observed {mask.mean():.3f} "
          f"(per frame {per_frame.min():.3f}..{per_frame.max():.3f}), "
          f"cells ever observed {mask.any(axis=0).mean():.3f}")


if __name__ == "__main__":
    main()
