"""Gap filling of a whole field with a trained denoiser: windows over time, ensembles, paste-back.

Ensemble member k tiles time with windows of W frames starting at offset k mod W, so every
frame is estimated once per member, from a different window position and context mask, at a
cost of K/W denoiser passes per frame (windows clipped at the ends overlap; a frame then comes
from the window where it sits most centrally). Member k's randomness comes from its own
generator seeded by (seed, k, window start, stage, tile), so on a given device it does not
depend on the batch size nor on how time is cut into chunks. Large grids are filled by
overlapping tiles blended smoothly (:mod:`ctxq_cli.tiles`); long records a chunk of frames at a
time, read and returned chunk by chunk, so memory follows the chunk and the tile. Observed
cells are copied back from the input; cells outside the domain are NaN, except observed ones,
which are kept as they are. Frames without any observation are
filled from the model's prior (and neighbouring frames in its window); their spread is at least
the climatological standard deviation and they are listed in the result.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ctxq_cli.data import pad_grid
from ctxq_cli.diffusion import multi_step, single_step
from ctxq_cli.errors import CtxqError
from ctxq_cli.maskprior import DEFAULT_CELL_WEIGHT, GuidedPriorPartition
from ctxq_cli.model import DenoiserModel
from ctxq_cli.tiles import Tile, Tiling, blend, plan
from ctxq_cli.withhold import calibration_cells, mask_fingerprint

log = logging.getLogger(__name__)


@dataclass
class Imputation:
    """Filled field, ensemble spread and optional members in physical units, (T, C, H, W).

    ``mean`` and ``members`` keep the input's float precision; NaN outside the domain.
    """

    mean: np.ndarray
    std: np.ndarray
    members: np.ndarray | None   # (K, T, C, H, W)
    empty_frames: list[int]      # frames with no observation inside the domain
    spread_scale: float = 1.0    # factor applied to the members' deviations from their mean
    observed: np.ndarray | None = None   # (T, C, H, W) the observed cells, as given


def window_plan(frames: int, window: int, offset: int) -> list[tuple[int, int, int]]:
    """Windows tiling [0, frames) from ``-offset``: (start, first, stop) with each frame in one.

    Windows are clipped inside the range; frame f is taken from the window whose centre is
    nearest, and ``[first, stop)`` are the frames (relative to ``start``) that window supplies.
    """
    if frames <= window:
        return [(0, 0, frames)]
    starts = sorted({min(max(s, 0), frames - window) for s in range(-offset, frames, window)})
    owner = []
    for f in range(frames):
        lo = bisect.bisect_left(starts, f - window + 1)
        hi = bisect.bisect_right(starts, f)
        owner.append(min(starts[lo:hi], key=lambda s: (abs(f - s - (window - 1) / 2), s)))
    plan = []
    for s in starts:
        lo, hi = bisect.bisect_left(owner, s), bisect.bisect_right(owner, s)
        if hi > lo:
            plan.append((s, lo - s, hi - s))
    return plan


def member_generator(seed: int, member: int, start: int, stage: int, tile: int,
                     device: torch.device) -> torch.Generator:
    """The generator of one member on one window, sampler stage and tile."""
    state = np.random.SeedSequence([seed, member, start + 1, stage, tile]).generate_state(
        2, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> np.uint64(1)))


@dataclass(frozen=True)
class _Job:
    """One member's pass over one window: it supplies frames [start+first, start+stop)."""

    start: int
    member: int
    first: int
    stop: int


def impute_field(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                 domain: np.ndarray, ensemble: int = 32, steps: int = 1, seed: int = 0,
                 members: bool = False, device: torch.device = torch.device("cpu"),
                 batch: int = 64, progress: bool = True, omega_shape: str = "linear",
                 guided: bool = True, spread_scale: float = 1.0, rho: float = 0.5,
                 guidance_weight: float = DEFAULT_CELL_WEIGHT, tiling: Tiling = Tiling(),
                 chunk: int | None = None) -> Imputation:
    """Fill a (T, C, H, W) field held in memory; observed values are returned unchanged.

    See :func:`impute_chunks` for the options; the result does not depend on ``chunk``.
    """
    parts = list(impute_chunks(model, lambda a, b: (values[a:b], observed[a:b]),
                               values.shape[0], domain, ensemble, steps, seed, members, device,
                               batch, progress, omega_shape, guided, spread_scale, rho,
                               guidance_weight, tiling, chunk))
    return Imputation(
        mean=np.concatenate([p.mean for _, p in parts]),
        std=np.concatenate([p.std for _, p in parts]),
        members=(np.concatenate([p.members for _, p in parts], axis=1) if members else None),
        empty_frames=[a + f for a, p in parts for f in p.empty_frames],
        spread_scale=spread_scale, observed=np.concatenate([p.observed for _, p in parts]))


def impute_chunks(model: DenoiserModel, read: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                  frames: int, domain: np.ndarray, ensemble: int = 32, steps: int = 1,
                  seed: int = 0, members: bool = False, device: torch.device = torch.device("cpu"),
                  batch: int = 64, progress: bool = True, omega_shape: str = "linear",
                  guided: bool = True, spread_scale: float = 1.0, rho: float = 0.5,
                  guidance_weight: float = DEFAULT_CELL_WEIGHT, tiling: Tiling = Tiling(),
                  chunk: int | None = None) -> Iterator[tuple[int, Imputation]]:
    """Fill a field of ``frames`` frames, ``chunk`` frames at a time; yield (first frame, result).

    ``read(a, b)`` returns values and observed (b − a, C, H, W) of frames [a, b), so memory
    is bounded by the chunk and the tile, not the record. Every chunk reads the frames its
    windows need around it; each window and tile draws from its own generator, so the result
    is the same whatever the chunk, and differs only through blending from an untiled one.

    Members deviate from their mean by ``spread_scale`` times the raw deviations (see
    :func:`calibrate_spread`). With a ``prior`` partition and ``guided``, each member's context
    is drawn afresh from the mask prior guided towards that member's observation window
    (anchor share ``rho``, weight ``guidance_weight`` per in-domain cell); otherwise from the
    stored pool. ``tiling`` cuts large grids into blended tiles (:mod:`ctxq_cli.tiles`).
    """
    win = model.window
    h, w = domain.shape
    try:
        model.check_grid((h, w))
        tiles = plan((h, w), tiling)
    except ValueError as exc:
        raise CtxqError(f"{exc}") from None
    span = max(frames, win)       # a record shorter than the window is padded with gaps
    jobs = [_Job(s, k, first, stop) for k in range(ensemble)
            for s, first, stop in window_plan(span, win, k % win)]
    by_start: dict[int, list[_Job]] = {}
    for job in jobs:                       # in member order within each window
        by_start.setdefault(job.start, []).append(job)
    starts = sorted(by_start)
    step = chunk or span
    bar = tqdm(total=frames * len(tiles), desc="impute", disable=not progress, unit="frame",
               unit_scale=1 / len(tiles) if len(tiles) > 1 else 1)
    context = _Context(model, domain, device, batch, guided, rho, guidance_weight, omega_shape,
                       steps, seed)
    outside, empty = 0, []
    for a in range(0, frames, step):
        b = min(a + step, frames)
        b_pad = span if b == frames else b       # the last chunk also owns the padding
        # Single-step estimates are needed a window beyond the chunk to guide the sampler.
        reach = win - 1 if steps > 1 else 0
        first_pass = _windows_owning(by_start, starts, win, a - reach, b_pad + reach)
        second_pass = _windows_owning(by_start, starts, win, a, b_pad) if steps > 1 else []
        lo = min(j.start for j in first_pass)
        hi = max(j.start + win for j in first_pass)
        values, observed = read(lo, min(hi, frames))
        if hi > frames:
            pad = [(0, hi - frames), (0, 0), (0, 0), (0, 0)]
            values, observed = np.pad(values, pad), np.pad(observed, pad)
        total = np.zeros((ensemble, b - a) + values.shape[1:], np.float32)
        weights = np.zeros((h, w))
        for t, tile in enumerate(tiles):
            est = context.tile(values, observed, tile, t, lo, first_pass, second_pass)
            blend(total, weights, tile, est[:, a - lo:b - lo])
            bar.update(b - a)
        total /= weights
        mine = slice(a - lo, b - lo)
        outside += int((observed[mine] & ~domain[None, None]).sum())
        result = _finish(model, total, values[mine], observed[mine], domain, spread_scale,
                         members)
        empty += [a + f for f in result.empty_frames]
        yield a, result
    bar.close()
    if outside:
        log.warning("%d observed values lie outside the model's domain: kept, never filled",
                    outside)
    if empty:
        log.warning("%d frame(s) have no observation in the domain and are filled from the "
                    "model's prior with climatological spread: %s", len(empty), _ranges(empty))
    if context.ratios:
        log.info("guided prior contexts keep %.2f of the observed cells on average (%.2f–%.2f)",
                 float(np.mean(context.ratios)), min(context.ratios), max(context.ratios))


def _windows_owning(by_start: dict[int, list[_Job]], starts: list[int], window: int, a: int,
                    b: int) -> list[_Job]:
    """All jobs of the windows in which some member supplies a frame of [a, b).

    Whole windows are kept, so a window's members go through the network in the same batches
    whatever the chunk, and give the same values to the last bit. Only windows starting in
    (a − window, b) can supply such a frame, found by bisection.
    """
    near = starts[bisect.bisect_left(starts, a - window + 1):bisect.bisect_left(starts, b)]
    return [j for s in near
            if any(k.start + k.first < b and k.start + k.stop > a for k in by_start[s])
            for j in by_start[s]]


def tile_cells(tile: Tile, padded: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
    """Training-grid (row, col) of each cell of a padded tile: (2, *padded).

    Padding cells continue the tile's last row and column, as the padding of the training
    grid did, so a tile at the grid's edge sees the position map it was trained with.
    """
    def extend(index: np.ndarray, size: int, limit: int) -> torch.Tensor:
        more = index[-1] + 1 + np.arange(size - len(index))
        return torch.from_numpy(np.minimum(np.concatenate([index, more]), limit - 1))

    rows = extend(tile.rows, padded[0], grid[0])
    cols = extend(tile.cols, padded[1], grid[1])
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"))


class _Context:
    """What every tile of every chunk shares: the model on its device and the sampler options."""

    def __init__(self, model: DenoiserModel, domain: np.ndarray, device: torch.device,
                 batch: int, guided: bool, rho: float, guidance_weight: float,
                 omega_shape: str, steps: int, seed: int) -> None:
        self.model, self.domain, self.device, self.batch = model, domain, device, batch
        self.guided = guided and model.mask_prior is not None
        self.rho, self.guidance_weight = rho, guidance_weight
        self.omega_shape, self.steps, self.seed = omega_shape, steps, seed
        self.denoiser = model.denoiser.to(device).eval()
        self.ratios: list[float] = []

    def partition(self, tile_domain: np.ndarray):
        """The context partition for a tile: the model's, or guided prior draws."""
        model = self.model
        if not self.guided:
            return model.partition
        prior = model.mask_prior
        return GuidedPriorPartition(
            prior.network.to(self.device), torch.from_numpy(tile_domain).to(self.device),
            steps=model.training.get("options", {}).get("prior_steps", 10), rho=self.rho,
            cell_weight=self.guidance_weight,
            overlap=getattr(model.partition, "overlap", 0.0))

    def tile(self, values: np.ndarray, observed: np.ndarray, tile: Tile, index: int, lo: int,
             first_pass: list[_Job], second_pass: list[_Job]) -> np.ndarray:
        """Normalised estimates (K, frames, C, h, w) of one tile over frames [lo, lo + frames)."""
        model, dev = self.model, self.device
        win = model.window
        multiple = model.denoiser.net.config.multiple
        where = np.ix_(tile.rows, tile.cols)
        dom_t = self.domain[where]
        seen = observed[:, :, tile.rows][:, :, :, tile.cols] & dom_t[None, None]
        normed = model.normalization.apply(values[:, :, tile.rows][:, :, :, tile.cols], seen,
                                           where)
        n, c, th, tw = normed.shape
        v = torch.from_numpy(pad_grid(normed, multiple)).to(dev)
        o = torch.from_numpy(pad_grid(seen, multiple)).to(dev)
        dom = torch.from_numpy(pad_grid(dom_t, multiple))[None].to(dev)
        hp, wp = v.shape[-2:]
        position = model.denoiser.net.position
        cells = None if position is None else tile_cells(tile, (hp, wp),
                                                         position.shape[-2:]).to(dev)
        ensemble = 1 + max(j.member for j in first_pass)
        est = torch.zeros((ensemble, n, c, hp, wp), device=dev)
        partition = self.partition(dom_t)

        def run(jobs: list[_Job], stage: int, sampler) -> None:
            by_start: dict[int, list[_Job]] = {}
            for j in jobs:
                by_start.setdefault(j.start, []).append(j)
            for s, group in sorted(by_start.items()):
                gens = [member_generator(self.seed, j.member, s, stage, index, dev)
                        for j in group]
                r = s - lo
                wv = v[r:r + win].reshape(win * c, hp, wp)
                wo = o[r:r + win].reshape(win * c, hp, wp)
                out = sampler(r, wv, wo, gens).reshape(len(gens), win, c, hp, wp)
                for i, j in enumerate(group):
                    est[j.member, r + j.first:r + j.stop] = out[i, j.first:j.stop]

        sigma = model.schedule.sigma_min
        run(first_pass, 0, lambda r, wv, wo, g: single_step(
            self.denoiser, wv, wo, dom, partition, sigma, g, self.batch, cells))
        if isinstance(partition, GuidedPriorPartition):
            self.ratios += partition.ratios
        if second_pass:
            prior_mean = est.mean(dim=0)
            run(second_pass, 1, lambda r, wv, wo, g: multi_step(
                self.denoiser, wv, wo, dom, prior_mean[r:r + win].reshape(win * c, hp, wp),
                model.partition, model.schedule, self.steps, g, self.omega_shape, self.batch,
                cells))
        return est[..., :th, :tw].cpu().numpy()


def _finish(model: DenoiserModel, est: np.ndarray, values: np.ndarray, observed: np.ndarray,
            domain: np.ndarray, spread_scale: float, members: bool) -> Imputation:
    """Physical mean, spread and members of a chunk's normalised estimates (K, T, C, H, W)."""
    t, c, h, w = values.shape
    if not np.isfinite(est[:, :, :, domain]).all():
        raise CtxqError("the denoiser produced non-finite values; its checkpoint may be "
                        "damaged or the data far outside what it was trained on")
    seen = observed & domain[None, None]
    phys = model.normalization.invert(est.reshape(-1, c, h, w)).reshape(est.shape)
    centre = phys.mean(axis=0)
    phys = centre + np.float32(spread_scale) * (phys - centre)
    inside = domain[None, None]
    # Paste after averaging: a mean of K copies of a value need not equal it bit for bit.
    mean = np.where(observed, values, np.where(inside, phys.mean(axis=0), np.nan))
    std = np.where(inside, phys.std(axis=0), np.nan)
    # A frame without any observation is a draw from the model's prior; its members only
    # differ by their neighbours' context, so the spread is floored at the climatological one.
    empty = [int(i) for i in np.flatnonzero(~seen.any(axis=(1, 2, 3)))]
    if empty:
        climate = np.asarray(model.normalization.std, dtype=np.float32)[:, None, None]
        std[empty] = np.maximum(std[empty], climate)
    std = np.where(observed, 0.0, std).astype(np.float32)
    kept = None
    if members:
        kept = np.where(observed[None], values[None], np.where(inside[None], phys, np.nan))
    return Imputation(mean=mean, std=std, members=kept, empty_frames=empty,
                      spread_scale=spread_scale, observed=observed)


def calibrate_spread(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                     domain: np.ndarray, ensemble: int = 32, seed: int = 0,
                     **options: Any) -> float:
    """Factor that makes the ensemble spread match its error on withheld observations.

    A single-step ensemble varies only through its context masks, so its spread is narrower
    than the error of its mean. In the middle frames of the record, a share of the observations
    shaped like the real gaps is hidden (:func:`calibration_cells`, the cells training kept out
    when this is its record) and imputed the same way (``options`` go to
    :func:`impute_field`); the factor is sqrt(mean error² / mean spread²) on the hidden cells.
    """
    frames, hidden = calibration_cells(observed, domain)
    if hidden is None:
        log.warning("too few observations to calibrate the spread; left as is")
        return 1.0
    v, o = values[frames], observed[frames]
    kept = o & ~hidden
    trial = impute_field(model, np.where(kept, v, 0), kept, domain, ensemble, 1, seed,
                         progress=False, **options)
    err2 = float(np.mean((trial.mean[hidden] - v[hidden]).astype(np.float64) ** 2))
    spread2 = float(np.mean(trial.std[hidden].astype(np.float64) ** 2))
    scale = float(np.sqrt(err2 / spread2)) if spread2 > 0 else 1.0
    held = model.training.get("calibration_holdout", {}).get("fingerprint")
    unseen = held == mask_fingerprint(o, domain)
    log.info("spread calibrated on %d withheld observations%s: ×%.2f", int(hidden.sum()),
             " (kept out of training)" if unseen else "", scale)
    return scale


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5'."""
    parts, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)
