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

A model with a temporal smoother (:mod:`ctxq_cli.temporal`) starts each window from the
smoother's estimate given every other frame of the record: before filling, the record is swept
once forward and once backward, chunk by chunk, keeping the smoother's state at the chunks'
edges only; each chunk then filters its own frames again from those states, so the first guess
of a window is the same whatever the chunk.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ctxq_cli.data import pad_grid
from ctxq_cli.diffusion import multi_step, single_step
from ctxq_cli.errors import CtxqError
from ctxq_cli.maskprior import DEFAULT_CELL_WEIGHT, GuidedPriorPartition
from ctxq_cli.model import DenoiserModel
from ctxq_cli.progress import progress as progress_of
from ctxq_cli.spread import Spread, fit_correction, fit_spread, shift_weights
from ctxq_cli.temporal import RecordStates, Smoother, first_guess, posterior, window_messages
from ctxq_cli.tiles import Tile, Tiling, blend, plan
from ctxq_cli.withhold import calibration_frames, calibration_hidden, mask_fingerprint

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
    spread: Spread = Spread()
    observed: np.ndarray | None = None   # (T, C, H, W) the observed cells, as given
    first_guess_std: np.ndarray | None = None   # (T, C, H, W) the smoother's, physical units
    first_guess: np.ndarray | None = None       # (T, C, H, W) the smoother's mean, likewise


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
                 domain: np.ndarray, *, ensemble: int = 32, steps: int = 1, seed: int = 0,
                 members: bool = False, device: torch.device = torch.device("cpu"),
                 batch: int = 64, progress: bool = True, guided: bool = True,
                 spread: Spread = Spread(), rho: float = 0.5,
                 guidance_weight: float = DEFAULT_CELL_WEIGHT, tiling: Tiling = Tiling(),
                 chunk: int | None = None, times: np.ndarray | None = None,
                 fill: slice | None = None) -> Imputation:
    """Fill a (T, C, H, W) field held in memory; observed values are returned unchanged.

    See :func:`impute_chunks` for the options; the result does not depend on ``chunk``.
    """
    parts = list(impute_chunks(
        model, lambda a, b: (values[a:b], observed[a:b]), values.shape[0], domain,
        ensemble=ensemble, steps=steps, seed=seed, members=members, device=device, batch=batch,
        progress=progress, guided=guided, spread=spread, rho=rho,
        guidance_weight=guidance_weight, tiling=tiling, chunk=chunk, times=times, fill=fill))
    return Imputation(
        mean=np.concatenate([p.mean for _, p in parts]),
        std=np.concatenate([p.std for _, p in parts]),
        members=(np.concatenate([p.members for _, p in parts], axis=1) if members else None),
        empty_frames=[a + f for a, p in parts for f in p.empty_frames],
        spread=spread, observed=np.concatenate([p.observed for _, p in parts]),
        first_guess_std=_joined([p.first_guess_std for _, p in parts]),
        first_guess=_joined([p.first_guess for _, p in parts]))


def _joined(pieces: list[np.ndarray | None]) -> np.ndarray | None:
    """Chunks' arrays joined along time; None when the chunks carry none (no smoother)."""
    return None if pieces[0] is None else np.concatenate(pieces)


def impute_chunks(model: DenoiserModel, read: Callable[[int, int], tuple[np.ndarray, np.ndarray]],
                  frames: int, domain: np.ndarray, *, ensemble: int = 32, steps: int = 1,
                  seed: int = 0, members: bool = False, device: torch.device = torch.device("cpu"),
                  batch: int = 64, progress: bool = True, guided: bool = True,
                  spread: Spread = Spread(), rho: float = 0.5,
                  guidance_weight: float = DEFAULT_CELL_WEIGHT, tiling: Tiling = Tiling(),
                  chunk: int | None = None, times: np.ndarray | None = None,
                  fill: slice | None = None) -> Iterator[tuple[int, Imputation]]:
    """Fill a field of ``frames`` frames, ``chunk`` frames at a time; yield (first frame, result).

    ``read(a, b)`` returns values and observed (b − a, C, H, W) of frames [a, b), so memory
    is bounded by the chunk and the tile, not the record. Every chunk reads the frames its
    windows need around it; each window and tile draws from its own generator, so the result
    is the same whatever the chunk, and differs only through blending from an untiled one.
    ``times`` (frames,) are the frames' times in the model's time unit (default 0, 1, …);
    ``fill`` restricts the frames filled (the temporal smoother still sees every frame).

    The spread and the members follow ``spread`` (see :class:`Spread` and
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
    fill = fill or slice(0, frames)
    padded = _padded_reader(read, frames)
    # Single-step estimates are needed a window beyond the chunk to guide the sampler.
    reach = win - 1 if steps > 1 else 0
    chunks = []
    for a in range(fill.start, fill.stop, step):
        b = min(a + step, fill.stop)
        b_pad = span if b == frames else b       # the last chunk also owns the padding
        first_pass = _windows_owning(by_start, starts, win, a - reach, b_pad + reach)
        second_pass = _windows_owning(by_start, starts, win, a, b_pad) if steps > 1 else []
        lo = min(j.start for j in first_pass)
        hi = max(j.start + win for j in first_pass)
        chunks.append((a, b, lo, hi, first_pass, second_pass))
    sweeps = None
    if model.smoother is not None:
        sweeps = _Sweeps(Smoother(model.smoother), model, padded, span,
                         _times(times, frames, span), domain, device, step,
                         [(lo, hi) for _, _, lo, hi, _, _ in chunks])
    bar = progress_of((fill.stop - fill.start) * len(tiles), "impute", "frame", progress,
                      unit_scale=1 / len(tiles) if len(tiles) > 1 else 1)
    runner = _TileRunner(model, domain, device, batch, guided, rho, guidance_weight, steps, seed)
    outside, empty = 0, []
    for a, b, lo, hi, first_pass, second_pass in chunks:
        values, observed = padded(lo, hi)
        states = None if sweeps is None else sweeps.chunk(lo, hi, values, observed)
        total = np.zeros((ensemble, b - a) + values.shape[1:], np.float32)
        weights = np.zeros((h, w))
        for t, tile in enumerate(tiles):
            est = runner.tile(values, observed, tile, t, lo, first_pass, second_pass, states)
            blend(total, weights, tile, est[:, a - lo:b - lo])
            bar.update(b - a)
        total /= weights
        mine = slice(a - lo, b - lo)
        outside += int((observed[mine] & ~domain[None, None]).sum())
        guess_mean = first_std = None
        if states is not None:
            mean, var = posterior(sweeps.smoother, states, slice(1 + a - lo, 1 + b - lo),
                                  sweeps.normalised(values[mine], observed[mine]))
            guess_mean = model.normalization.invert(mean.float().cpu().numpy())
            first_std = (var.sqrt().float().cpu().numpy()
                         * np.asarray(model.normalization.std, np.float32)[:, None, None])
        result = _finish(model, total, values[mine], observed[mine], domain, spread, members,
                         (guess_mean, first_std), seed, a)
        empty += [a + f for f in result.empty_frames]
        yield a, result
    bar.close()
    if outside:
        log.warning("%d observed values lie outside the model's domain: kept, never filled",
                    outside)
    if empty:
        log.warning("%d frame(s) have no observation in the domain and are filled from the "
                    "model's prior with climatological spread: %s", len(empty), _ranges(empty))
    if runner.ratios:
        log.info("guided prior contexts keep %.2f of the observed cells on average (%.2f–%.2f)",
                 float(np.mean(runner.ratios)), min(runner.ratios), max(runner.ratios))


def _padded_reader(read: Callable[[int, int], tuple[np.ndarray, np.ndarray]], frames: int
                   ) -> Callable[[int, int], tuple[np.ndarray, np.ndarray]]:
    """``read`` extended beyond the record's last frame with frames that observe nothing."""
    def padded(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        values, observed = read(a, min(b, frames))
        if b > frames:
            pad = [(0, b - max(a, frames)), (0, 0), (0, 0), (0, 0)]
            values, observed = np.pad(values, pad), np.pad(observed, pad)
        return values, observed

    return padded


def _times(times: np.ndarray | None, frames: int, span: int) -> np.ndarray:
    """The frames' times (0, 1, … by default), continued past the record by its median step."""
    out = np.arange(frames, dtype=np.float64) if times is None else np.asarray(
        times, dtype=np.float64)
    if span > frames:
        step = float(np.median(np.diff(out))) if frames > 1 else 1.0
        out = np.concatenate([out, out[-1] + step * np.arange(1, span - frames + 1)])
    return out


class _Sweeps:
    """The temporal smoother over a whole record read chunk by chunk: one forward and one
    backward sweep keep the states at the chunks' edges; each chunk then filters its own frames
    from them (the same operations as the sweeps, so the same bits)."""

    def __init__(self, smoother: Smoother, model: DenoiserModel,
                 read: Callable[[int, int], tuple[np.ndarray, np.ndarray]], span: int,
                 times: np.ndarray, domain: np.ndarray, device: torch.device, step: int,
                 edges: list[tuple[int, int]]) -> None:
        self.smoother, self.model, self.domain, self.device = smoother, model, domain, device
        self.times = torch.from_numpy(times).to(device)
        entering = {lo - 1 for lo, _ in edges if lo > 0}      # forward state after this frame
        leaving = {hi for _, hi in edges if hi < span}         # backward state after this frame
        self.forward: dict[int, torch.Tensor] = {}
        self.backward: dict[int, torch.Tensor] = {}
        state = None
        for a in range(0, max(entering, default=-1) + 1, step):
            b = min(a + step, span)
            run = self._filter(read, a, b, state, reverse=False)
            self.forward.update({f: run[f - a] for f in entering if a <= f < b})
            state = run[-1]
        state = None
        for b in range(span, min(leaving, default=span), -step):
            a = max(b - step, 0)
            run = self._filter(read, a, b, state, reverse=True)
            self.backward.update({f: run[f - a] for f in leaving if a <= f < b})
            state = run[0]

    def normalised(self, values: np.ndarray, observed: np.ndarray
                    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised values and observed cells inside the domain, on the device."""
        seen = observed & self.domain[None, None]
        normed = self.model.normalization.apply(values, seen)
        return torch.from_numpy(normed).to(self.device), torch.from_numpy(seen).to(self.device)

    def _filter(self, read: Callable[[int, int], tuple[np.ndarray, np.ndarray]] | None, a: int,
                b: int, state: torch.Tensor | None, reverse: bool,
                data: tuple[np.ndarray, np.ndarray] | None = None) -> torch.Tensor:
        """Filtered states of frames [a, b), continuing ``state`` (the frame just outside)."""
        values, observed = self.normalised(*(data if data is not None else read(a, b)))
        sm, t = self.smoother, self.times
        start = None
        if state is not None:
            gap = (t[b] - t[b - 1]) if reverse else (t[a] - t[a - 1])
            start = sm.carry(state.to(torch.float64), gap)
        return sm.record(values, observed, t[a:b], start, reverse)

    def chunk(self, lo: int, hi: int, values: np.ndarray, observed: np.ndarray) -> RecordStates:
        """States of frames lo − 1 … hi (the chunk and its two edges) and their times."""
        sm, t = self.smoother, self.times
        before = self.forward.get(lo - 1)
        after = self.backward.get(hi)
        forward = self._filter(None, lo, hi, before, False, (values, observed))
        backward = self._filter(None, lo, hi, after, True, (values, observed))
        prior = sm.prior(forward.shape[1:-1], forward.device).float()
        inf = torch.full((1,), np.inf, dtype=t.dtype, device=t.device)
        times = torch.cat([t[lo - 1:lo] if lo > 0 else -inf, t[lo:hi],
                           t[hi:hi + 1] if hi < len(t) else inf])
        return RecordStates(torch.cat([(prior if before is None else before)[None], forward,
                                       prior[None]]),
                            torch.cat([prior[None], backward,
                                       (prior if after is None else after)[None]]), times)


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


def tile_positions(tile: Tile, padded: tuple[int, int], grid: tuple[int, int]) -> torch.Tensor:
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


class _TileRunner:
    """Runs the sampler on one tile of a chunk; holds what every tile shares: the model on its
    device and the sampler options."""

    def __init__(self, model: DenoiserModel, domain: np.ndarray, device: torch.device,
                 batch: int, guided: bool, rho: float, guidance_weight: float,
                 steps: int, seed: int) -> None:
        self.model, self.domain, self.device, self.batch = model, domain, device, batch
        self.guided = guided and model.mask_prior is not None
        self.rho, self.guidance_weight = rho, guidance_weight
        self.steps, self.seed = steps, seed
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
             first_pass: list[_Job], second_pass: list[_Job],
             states: RecordStates | None = None) -> np.ndarray:
        """Normalised estimates (K, frames, C, h, w) of one tile over frames [lo, lo + frames).

        ``states`` (frames lo − 1 … lo + frames, from :class:`_Sweeps`) give each window the
        temporal smoother's messages from the rest of the record.
        """
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
        positions = None if position is None else tile_positions(tile, (hp, wp),
                                                         position.shape[-2:]).to(dev)
        ensemble = 1 + max(j.member for j in first_pass)
        est = torch.zeros((ensemble, n, c, hp, wp), device=dev)
        partition = self.partition(dom_t)
        smoother = None if model.smoother is None else Smoother(model.smoother)
        if states is not None and smoother is not None:
            states = _tile_states(states, tile, (hp, wp), smoother)

        def guess(r: int, wv: torch.Tensor):
            """The first guess of window r's members as a function of their context."""
            if smoother is None or states is None:
                return None
            # states[0] is frame lo − 1: window r enters from index r and starts at r + 1
            messages = window_messages(smoother, states, torch.tensor([r + 1]), win)
            return lambda ctx: first_guess(smoother, wv.expand(len(ctx), -1, -1, -1), ctx,
                                           messages, win)

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
            self.denoiser, wv, wo, dom, partition, sigma, g, self.batch, positions,
            guess(r, wv[None])))
        if isinstance(partition, GuidedPriorPartition):
            self.ratios += partition.ratios
        if second_pass:
            prior_mean = est.mean(dim=0)
            run(second_pass, 1, lambda r, wv, wo, g: multi_step(
                self.denoiser, wv, wo, dom, prior_mean[r:r + win].reshape(win * c, hp, wp),
                model.partition, model.schedule, self.steps, g, self.batch,
                positions, guess(r, wv[None])))
        return est[..., :th, :tw].cpu().numpy()


def _tile_states(states: RecordStates, tile: Tile, padded: tuple[int, int],
                 smoother: Smoother) -> RecordStates:
    """A chunk's smoother states at a tile's cells, padded like the tile with the prior (a
    padded cell is never observed)."""
    def cut(s: torch.Tensor) -> torch.Tensor:
        rows = torch.from_numpy(tile.rows).to(s.device)
        cols = torch.from_numpy(tile.cols).to(s.device)
        part = s.index_select(2, rows).index_select(3, cols)       # (n, C, h, w, 5)
        if tuple(part.shape[2:4]) != tuple(padded):
            out = smoother.prior((*part.shape[:2], *padded), s.device).to(s.dtype)
            out[:, :, :part.shape[2], :part.shape[3]] = part
            part = out
        return part

    return RecordStates(cut(states.forward), cut(states.backward), states.times)


def _finish(model: DenoiserModel, est: np.ndarray, values: np.ndarray, observed: np.ndarray,
            domain: np.ndarray, spread: Spread, members: bool,
            guess: tuple[np.ndarray | None, np.ndarray | None] = (None, None), seed: int = 0,
            first: int = 0) -> Imputation:
    """Physical mean, spread and members of a chunk's normalised estimates (K, T, C, H, W).

    ``guess``: the smoother's posterior mean and std (T, C, H, W) in physical units; ``first``:
    the chunk's first frame in the record, so that member noise is the same whatever the chunk.
    """
    first_mean, first_std = guess
    t, c, h, w = values.shape
    if not np.isfinite(est[:, :, :, domain]).all():
        raise CtxqError("the denoiser produced non-finite values; its checkpoint may be "
                        "damaged or the data far outside what it was trained on")
    seen = observed & domain[None, None]
    phys = model.normalization.invert(est.reshape(-1, c, h, w)).reshape(est.shape)
    network = phys.mean(axis=0)
    centre = spread.centre(network, first_mean)
    sigma = spread.sigma(phys.std(axis=0), first_std)
    if members:
        noise = None
        if spread.first_guess and first_std is not None:   # the only use of the draws
            noise = np.stack([np.stack([spread.noise(np.random.default_rng(
                [seed, k, first + i, 13]), (c, h, w)) for i in range(t)])
                for k in range(len(phys))])
        phys = centre + spread.members(phys - network, first_std, noise)
    inside = domain[None, None]
    # Paste after averaging: a mean of K copies of a value need not equal it bit for bit.
    mean = np.where(observed, values, np.where(inside, centre, np.nan))
    std = np.where(inside, sigma, np.nan)
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
    return Imputation(mean=mean, std=std, members=kept, empty_frames=empty, spread=spread,
                      observed=observed, first_guess_std=first_std, first_guess=first_mean)


def impute_calibrated(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                      domain: np.ndarray, *, ensemble: int = 32, steps: int = 1, seed: int = 0,
                      device: torch.device = torch.device("cpu"), batch: int = 64,
                      progress: bool = False, calibrate: bool = True,
                      times: np.ndarray | None = None,
                      fill: slice | None = None) -> tuple[Imputation, Spread]:
    """Fill a field held in memory with every member kept and the spread calibrated on
    withheld observations first (one-step sampling only; else the spread as sampled)."""
    scale = Spread()
    if calibrate and steps == 1:
        scale = calibrate_spread(model, lambda a, b: (values[a:b], observed[a:b]), len(values),
                                 domain, ensemble, seed, device=device, batch=batch,
                                 times=times)
    result = impute_field(model, values, observed, domain, ensemble=ensemble, steps=steps,
                          seed=seed, members=True, device=device, batch=batch,
                          progress=progress, spread=scale, times=times, fill=fill)
    return result, scale


def calibrate_spread(model: DenoiserModel,
                     read: Callable[[int, int], tuple[np.ndarray, np.ndarray]], frames: int,
                     domain: np.ndarray, ensemble: int = 32, seed: int = 0,
                     **options: Any) -> Spread:
    """The :class:`~ctxq_cli.spread.Spread` fitted on withheld observations.

    In the middle frames of the record (read by ``read(a, b)``, as in :func:`impute_chunks`), a
    share of the observations shaped like the real gaps is hidden
    (:func:`~ctxq_cli.withhold.calibration_cells`, the cells training kept out when this is its
    record) and imputed the same way, with every other frame of the record in reach
    (``options`` go to :func:`impute_chunks`); the spread model is fitted to the errors there
    (:func:`~ctxq_cli.spread.fit_spread`), each cell weighted to the real gaps' σ_first.
    """
    used = calibration_frames(frames)
    v, o = read(used.start, used.stop)
    hidden = calibration_hidden(o, domain)
    if hidden is None:
        log.warning("too few observations to calibrate the spread; left as is")
        return Spread()

    def without_hidden(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        values, observed = read(a, b)
        lo, hi = max(a, used.start), min(b, used.stop)
        if lo < hi:
            observed = observed.copy()
            observed[lo - a:hi - a] &= ~hidden[lo - used.start:hi - used.start]
        return np.where(observed, values, 0), observed

    parts = [p for _, p in impute_chunks(model, without_hidden, frames, domain,
                                         ensemble=ensemble, seed=seed, progress=False,
                                         fill=used, **options)]
    network = np.concatenate([p.mean for p in parts])[hidden]
    members_std = np.concatenate([p.std for p in parts])[hidden]
    guess_std = _joined([p.first_guess_std for p in parts])
    first_std, first = (None if x is None else x[hidden] for x in (
        guess_std, _joined([p.first_guess for p in parts])))
    correction = 1.0 if first is None else fit_correction(v[hidden], network, first)
    centre = Spread(correction=correction).centre(network, first)
    # The withheld cells are seen less near in time than the real gaps (their donors empty
    # whole frames): weighted to the real gaps' σ_first, they calibrate the level for those.
    gaps = ~o & domain[None, None]
    weights = None if guess_std is None else shift_weights(first_std, guess_std[gaps])
    spread = fit_spread(centre - v[hidden], members_std, first_std, correction, weights)
    held = model.training.get("calibration_holdout", {}).get("fingerprint")
    unseen = held == mask_fingerprint(o, domain)
    log.info("spread calibrated on %d withheld observations%s: %s", int(hidden.sum()),
             " (kept out of training)" if unseen else "", spread.describe())
    return spread


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5'."""
    parts, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)
