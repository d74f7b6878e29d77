"""Gap filling of a whole field with a trained denoiser: windows over time, ensembles, paste-back.

Ensemble member k tiles time with windows of W frames starting at offset k mod W, so every
frame is estimated once per member, from a different window position and context mask, at a
cost of K/W denoiser passes per frame (windows clipped at the ends overlap; a frame then comes
from the window where it sits most centrally). Member k's randomness comes from its own
generator seeded by (seed, k, window start, stage), so on a given device it does not depend on
the batch size. Observed cells are copied back from the input; cells outside the domain are
NaN, except observed ones, which are kept as they are. Frames without any observation are
filled from the model's prior (and neighbouring frames in its window); their spread is at least
the climatological standard deviation and they are listed in the result.
"""

from __future__ import annotations

import logging
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
from ctxq_cli.partition import mask_structure
from ctxq_cli.withhold import withhold

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


def window_plan(frames: int, window: int, offset: int) -> list[tuple[int, int, int]]:
    """Windows tiling [0, frames) from ``-offset``: (start, first, stop) with each frame in one.

    Windows are clipped inside the range; frame f is taken from the window whose centre is
    nearest, and ``[first, stop)`` are the frames (relative to ``start``) that window supplies.
    """
    if frames <= window:
        return [(0, 0, frames)]
    starts = sorted({min(max(s, 0), frames - window) for s in range(-offset, frames, window)})
    owner = [min((s for s in starts if s <= f < s + window),
                 key=lambda s: (abs(f - s - (window - 1) / 2), s)) for f in range(frames)]
    plan = []
    for s in starts:
        mine = [f - s for f in range(frames) if owner[f] == s]
        if mine:
            plan.append((s, mine[0], mine[-1] + 1))
    return plan


def member_generator(seed: int, member: int, start: int, stage: int,
                     device: torch.device) -> torch.Generator:
    """The generator of one member on one window and sampler stage."""
    state = np.random.SeedSequence([seed, member, start + 1, stage]).generate_state(
        2, dtype=np.uint64)
    return torch.Generator(device=device).manual_seed(int(state[0] >> np.uint64(1)))


def impute_field(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                 domain: np.ndarray, ensemble: int = 32, steps: int = 1, seed: int = 0,
                 members: bool = False, device: torch.device = torch.device("cpu"),
                 batch: int = 64, progress: bool = True, omega_shape: str = "linear",
                 guided: bool = True, spread_scale: float = 1.0, rho: float = 0.5,
                 guidance_weight: float = DEFAULT_CELL_WEIGHT) -> Imputation:
    """Fill a (T, C, H, W) field; observed values are returned unchanged.

    Members deviate from their mean by ``spread_scale`` times the raw deviations (see
    :func:`calibrate_spread`).

    With a ``prior`` partition and ``guided``, each member's context is drawn afresh from the
    mask prior guided towards that member's observation window (anchor share ``rho``, weight
    ``guidance_weight`` per in-domain cell); otherwise from the stored pool.
    """
    t, c, h, w = values.shape
    win = model.window
    multiple = model.denoiser.net.config.multiple
    outside = observed & ~domain[None, None]
    if outside.any():
        log.warning("%d observed values lie outside the model's domain: kept, never filled",
                    int(outside.sum()))
    seen = observed & domain[None, None]
    try:
        model.normalization.check_grid((h, w))
    except ValueError as exc:
        raise CtxqError(f"the checkpoint's {exc}; retrain with --normalization variable to "
                        "impute other grids") from None
    normed = model.normalization.apply(values, seen)
    frames = max(t, win)
    pad_t = [(0, frames - t), (0, 0), (0, 0), (0, 0)]
    v = torch.from_numpy(pad_grid(np.pad(normed, pad_t), multiple)).to(device)
    o = torch.from_numpy(pad_grid(np.pad(seen, pad_t), multiple)).to(device)
    dom = torch.from_numpy(pad_grid(domain, multiple))[None].to(device)
    hp, wp = v.shape[-2:]

    jobs: dict[int, list[tuple[int, int, int]]] = {}   # start -> [(member, first, stop)]
    for k in range(ensemble):
        for s, first, stop in window_plan(frames, win, k % win):
            jobs.setdefault(s, []).append((k, first, stop))

    def run(label: str, stage: int, sampler) -> np.ndarray:
        est = torch.zeros((ensemble, frames, c, hp, wp), device=device)
        for s in tqdm(sorted(jobs), desc=label, disable=not progress, unit="window"):
            gens = [member_generator(seed, k, s, stage, device) for k, _, _ in jobs[s]]
            wv = v[s:s + win].reshape(win * c, hp, wp)
            wo = o[s:s + win].reshape(win * c, hp, wp)
            out = sampler(s, wv, wo, gens).reshape(len(gens), win, c, hp, wp)
            for i, (k, first, stop) in enumerate(jobs[s]):
                est[k, s + first:s + stop] = out[i, first:stop]
        return est.cpu().numpy()

    den = model.denoiser.to(device).eval()
    sigma = model.schedule.sigma_min
    partition = model.partition
    if guided and model.mask_prior is not None:
        prior = model.mask_prior
        partition = GuidedPriorPartition(prior.network.to(device),
                                         torch.from_numpy(prior.domain).to(device),
                                         steps=model.training.get("options", {}).get(
                                             "prior_steps", 10), rho=rho,
                                         cell_weight=guidance_weight,
                                         overlap=getattr(partition, "overlap", 0.0))
    est = run("impute", 0, lambda s, wv, wo, g: single_step(den, wv, wo, dom, partition,
                                                            sigma, g, batch))
    if isinstance(partition, GuidedPriorPartition) and partition.ratios:
        log.info("guided prior contexts keep %.2f of the observed cells on average (%.2f–%.2f)",
                 float(np.mean(partition.ratios)), min(partition.ratios), max(partition.ratios))
    if steps > 1:
        prior_mean = torch.from_numpy(est.mean(axis=0)).to(device)
        est = run(f"sample ({steps} steps)", 1, lambda s, wv, wo, g: multi_step(
            den, wv, wo, dom, prior_mean[s:s + win].reshape(win * c, hp, wp), model.partition,
            model.schedule, steps, g, omega_shape, batch))

    est = est[:, :t, :, :h, :w]
    if not np.isfinite(est[:, :, :, domain]).all():
        raise CtxqError("the denoiser produced non-finite values; its checkpoint may be "
                        "damaged or the data far outside what it was trained on")
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
        log.warning("%d frame(s) have no observation in the domain and are filled from the "
                    "model's prior with climatological spread: %s", len(empty),
                    _ranges(empty))
        climate = np.asarray(model.normalization.std, dtype=np.float32)[:, None, None]
        std[empty] = np.maximum(std[empty], climate)
    std = np.where(observed, 0.0, std).astype(np.float32)
    kept = None
    if members:
        kept = np.where(observed[None], values[None], np.where(inside[None], phys, np.nan))
    return Imputation(mean=mean, std=std, members=kept, empty_frames=empty,
                      spread_scale=spread_scale)


def calibrate_spread(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                     domain: np.ndarray, ensemble: int = 32, seed: int = 0, frames: int = 48,
                     fraction: float = 0.1, **options: Any) -> float:
    """Factor that makes the ensemble spread match its error on withheld observations.

    A single-step ensemble varies only through its context masks, so its spread is narrower
    than the error of its mean. On up to ``frames`` consecutive frames from the middle of the
    record, a ``fraction`` of the observations shaped like the real gaps is hidden and imputed
    the same way (``options`` go to :func:`impute_field`); the factor is
    sqrt(mean error² / mean spread²) on the hidden cells.
    """
    t = values.shape[0]
    lo = max(0, (t - frames) // 2)
    chunk = slice(lo, lo + frames)
    v, o = values[chunk], observed[chunk]
    hidden = withhold(o, domain, fraction, "mask", seed + 7919,
                      mask_structure(o.any(axis=1), domain).block_size)
    if hidden.sum() < 50:
        log.warning("too few observations to calibrate the spread (%d hidden); left as is",
                    int(hidden.sum()))
        return 1.0
    kept = o & ~hidden
    trial = impute_field(model, np.where(kept, v, 0), kept, domain, ensemble, 1, seed,
                         progress=False, **options)
    err2 = float(np.mean((trial.mean[hidden] - v[hidden]).astype(np.float64) ** 2))
    spread2 = float(np.mean(trial.std[hidden].astype(np.float64) ** 2))
    scale = float(np.sqrt(err2 / spread2)) if spread2 > 0 else 1.0
    log.info("spread calibrated on %d withheld observations: ×%.2f", int(hidden.sum()), scale)
    return scale


def _ranges(indices: list[int]) -> str:
    """[0, 1, 2, 5] → '0-2, 5'."""
    parts, start = [], indices[0]
    for prev, cur in zip(indices, indices[1:] + [None]):
        if cur != prev + 1:
            parts.append(str(start) if start == prev else f"{start}-{prev}")
            start = cur
    return ", ".join(parts)
