"""Training a denoiser and a mask prior: options, data, partition, losses and validation; the
optimisation loop they share is :mod:`ctxq_cli.loop`.

Validation windows lie in blocks of frames spread over the record, the last block at its end,
so that they sample the states of the whole record and its newest frames; no training window
overlaps them, while their observations still reach neighbouring windows through the temporal
smoother, as every observation of a file does when it is filled. What keeps the weights and stops
training early is, by default, the fill error on the observations kept out for the spread's
calibration (:mod:`ctxq_cli.selection`); the validation windows' loss is logged beside it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from ctxq_cli import distributed
from ctxq_cli.data import Batch, Holdout, Normalization, TrainingFrames, Windows, padded_size
from ctxq_cli.diffusion import (
    Denoiser,
    FirstGuess,
    NoiseSchedule,
    context_query_loss,
    parameter_count,
)
from ctxq_cli.distributed import WindowSampler
from ctxq_cli.errors import CtxqError
from ctxq_cli.frames import CachedFrames, FrameSource, MaskView, ObservedSums, Prefetch, chunks
from ctxq_cli.loop import LoopOptions, RunControl, optimise
from ctxq_cli.mask_structure import mask_statistics, mask_structure
from ctxq_cli.maskprior import (
    MaskPrior,
    MaskPriorConfig,
    draw_pool,
    mask_prior_loss,
    sample_masks,
)
from ctxq_cli.model import DenoiserModel, MaskPriorModel
from ctxq_cli.options import check_channels, option
from ctxq_cli.partition import (
    PARTITIONS,
    Partition,
    PartitionInputs,
    choose_partition,
)
from ctxq_cli.selection import SELECTION, WithheldFill
from ctxq_cli.temporal import Smoother, SmootherConfig, first_guess, fit_smoother
from ctxq_cli.unet import UNetConfig
from ctxq_cli.withhold import calibration_frames, calibration_hidden, mask_fingerprint

log = logging.getLogger(__name__)


TEMPORAL = ("smoother", "none")   # first guesses from the whole record a denoiser can use


@dataclass(frozen=True)
class TrainOptions(LoopOptions):
    """Everything that shapes a denoiser's training run; stored in the checkpoint."""

    window: int = option(3, ge=1, integer=True)    # consecutive frames per sample
    # the first guess from the whole record (none: no first guess)
    temporal: str = option("smoother", choices=TEMPORAL)
    partition: str = "auto"       # a name in partition.PARTITIONS, or auto
    context_ratio: float = option(0.8, gt=0, le=1)
    block_size: int | None = option(None, ge=1, integer=True)
    overlap: float = option(0.0, ge=0, le=1)
    channels: tuple[int, ...] = (32, 64, 96)
    stem_patch: int = option(2, ge=1, le=4, integer=True)
    attention_heads: int = option(4, ge=0, integer=True)   # at the coarsest level (0: none)
    # learned position map on the training grid (0: none)
    position_channels: int = option(8, ge=0, integer=True)
    val_fraction: float = option(0.1, ge=0, le=0.5)
    patch: int = option(128, ge=8, integer=True)
    low_noise_fraction: float = option(0.8, ge=0, le=1)
    # or "variable": one mean per variable (any grid)
    normalization: str = option("cell", choices=("cell", "variable"))
    calibration_holdout: bool = True   # keep impute's calibration cells out of training
    # what selects the weights and stops early: the fill error on those cells (withheld), the
    # denoising loss on held-out frames (validation), or the first where there are such cells
    select: str = option("auto", choices=SELECTION)
    pool_size: int = option(512, ge=1, integer=True)
    prior_steps: int = option(10, ge=1, integer=True)   # ODE steps per mask from a mask prior

    def check(self) -> None:
        """Widths; a registered partition; attention heads that divide the coarsest width."""
        check_channels(self)
        if self.partition not in ("auto", *PARTITIONS):
            self.fail("partition", f"must be one of {', '.join(('auto', *PARTITIONS))}, "
                      f"not '{self.partition}'")
        if self.select == "withheld" and not self.calibration_holdout:
            self.fail("select", "withheld needs calibration_holdout: the withheld cells are "
                      "the calibration cells kept out of training")
        if self.attention_heads and self.channels[-1] % self.attention_heads:
            self.fail("attention_heads", f"{self.attention_heads} must divide the last width "
                      f"of {type(self).__name__}.channels, {self.channels[-1]}")


@dataclass(frozen=True)
class MaskPriorOptions(LoopOptions):
    """Everything that shapes a mask prior's training run; stored in its checkpoint."""

    window: int = option(3, ge=1, integer=True)    # consecutive mask frames per sample
    scale: float = option(1.0, gt=0)
    channels: tuple[int, ...] = (32, 64)
    stem_patch: int = option(2, ge=1, le=4, integer=True)
    val_fraction: float = option(0.1, ge=0, le=0.5)
    patch: int = option(128, ge=8, integer=True)
    batch_size: int = option(16, ge=1, integer=True)
    report_samples: int = option(64, ge=1, integer=True)
    report_steps: int = option(20, ge=1, integer=True)

    def check(self) -> None:
        """The network's widths."""
        check_channels(self)


def make_partition(options: TrainOptions, frames: TrainingFrames, windows: Windows,
                   generator: torch.Generator, mask_prior: MaskPriorModel | None = None
                   ) -> tuple[Partition, str]:
    """The partition named by the options, or the one ``auto`` picks from the masks."""
    domain = frames.domain
    # (T, H, W), read a range at a time: a cell is observed if any variable is
    masks = MaskView(lambda a, b: frames.observations(a, b)[1].any(axis=1), frames.frames,
                     domain)
    structure = mask_structure(masks, domain)
    if options.partition == "auto":
        return choose_partition(structure, options.context_ratio, options.overlap)

    def prior_masks() -> Tensor:
        assert mask_prior is not None
        start = time.perf_counter()
        prior_domain = torch.from_numpy(mask_prior.domain).to(windows.domain.device)
        pool = draw_pool(mask_prior.network.to(prior_domain.device), options.pool_size,
                         prior_domain, options.prior_steps, generator)
        log.info("drew %d masks from the mask prior in %.1f s", len(pool),
                 time.perf_counter() - start)
        return pool

    inputs = PartitionInputs(
        ratio=options.context_ratio, overlap=options.overlap, structure=structure,
        block_size=options.block_size,
        data_masks=lambda: windows.mask_pool(options.pool_size, generator),
        prior_masks=prior_masks if mask_prior is not None else None)
    try:
        partition = PARTITIONS[options.partition].for_training(inputs)
    except ValueError as exc:
        raise CtxqError(f"partition {options.partition}: {exc}") from None
    return partition, "chosen with --partition"


def worth_reading_ahead(source: FrameSource, sampler: WindowSampler, window: int) -> bool:
    """Whether reading the next batch's frames ahead gains anything: only into a cache that
    holds two batches of them (a smaller one would drop them before they are used)."""
    return isinstance(source, CachedFrames) and source.holds(2 * sampler.batch * window)


def batch_first_guess(windows: Windows, batch: Batch) -> FirstGuess | None:
    """The first guess of a batch's windows as a function of their context (None: no smoother)."""
    if windows.smoother is None or batch.messages is None:
        return None
    smoother, messages, window = windows.smoother, batch.messages, windows.window
    return lambda context: first_guess(smoother, batch.values, context, messages, window)


@torch.no_grad()
def validation_loss(denoiser: Denoiser, windows: Windows, partition: Partition,
                    schedule: NoiseSchedule, seed: int) -> float:
    """Masked loss on held-out observed cells at the smallest noise, with fixed draws."""
    g = torch.Generator(device=windows.device).manual_seed(seed)
    low = NoiseSchedule(**{**schedule.to_dict(), "low_noise_fraction": 1.0})
    total, n = 0.0, 0
    for batch in windows.sequential(stride=max(1, windows.window)):
        total += float(context_query_loss(denoiser, batch.values, batch.observed, batch.domain,
                                          partition, low, g, batch.positions,
                                          batch_first_guess(windows, batch))) * len(batch.values)
        n += len(batch.values)
    return total / max(n, 1)


VALIDATION_BLOCKS = 5   # validation frames come in up to this many blocks, the last at the end


def validation_frames(frames: int, window: int, fraction: float) -> np.ndarray:
    """Which frames validate (bool, (T,)): ``fraction`` of them in blocks spread evenly over
    the record, the last block at its end; none when either side would hold less than a window.
    """
    chosen = np.zeros(frames, bool)
    count = int(round(frames * fraction))
    if count < window or frames - count < window:
        return chosen
    blocks = max(1, min(VALIDATION_BLOCKS, count // (2 * window)))
    length = count // blocks
    for i in range(blocks):
        end = int(round((i + 1) * frames / blocks))
        chosen[end - length:end] = True
    return chosen


def split_windows(frames: TrainingFrames, options: TrainOptions | MaskPriorOptions,
                  device: torch.device, smoother: Smoother | None = None,
                  times: np.ndarray | None = None, memory: float = math.inf,
                  group: distributed.Group = distributed.Group(),
                  scored: slice | None = None) -> tuple[Windows, Windows | None]:
    """Training windows and, when the record is long enough, validation windows (in blocks
    of frames that no training window touches, see :func:`validation_frames`). The smoother's
    states are kept for this process's shard of the training windows, the validation ones and
    the windows inside frames ``scored`` (the withheld cells')."""
    t, w = frames.frames, options.window
    held = validation_frames(t, w, options.val_fraction)
    covered = np.lib.stride_tricks.sliding_window_view(held, w)     # (T − W + 1, W)
    train = np.flatnonzero(~covered.any(axis=1))
    val = np.flatnonzero(covered.all(axis=1))
    split = held.any() and len(val) and len(train)
    if not split:
        train, val = np.arange(t - w + 1), val[:0]
    used = np.concatenate([train[distributed.shard(len(train), group)], val])
    if scored is not None:
        used = np.concatenate([used, np.arange(scored.start, max(scored.start,
                                                                 scored.stop - w + 1))])
    everything = Windows(frames, w, options.patch, device, smoother=smoother, times=times,
                         memory=memory, used=used)
    if not split:
        return everything, None
    return everything.subset(train), everything.subset(val)


def train_denoiser(source: FrameSource, domain: np.ndarray, variables: list[str],
                   options: TrainOptions, device: torch.device,
                   log_file: IO[str] | None = None, progress: bool = True,
                   control: RunControl | None = None,
                   mask_prior: MaskPriorModel | None = None, times: np.ndarray | None = None,
                   time_unit: str = "frames", memory: float = math.inf) -> DenoiserModel:
    """Train a denoiser on a record's frames (T, C, H, W), read from ``source`` a range at a
    time, inside a domain (H, W).

    ``times`` (T,) are the frames' times in ``time_unit`` (default: 0, 1, 2, … frames). At
    most ``memory`` bytes of the smoother's states are held in memory (the rest go to scratch
    files); what holds the frames is the source's affair (:class:`ctxq_cli.frames.CachedFrames`).
    """
    torch.manual_seed(options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    frame_count = source.frames
    times = np.arange(frame_count, dtype=np.float64) if times is None else np.asarray(
        times, dtype=np.float64)
    holdout, held = None, None
    if options.calibration_holdout:
        holdout, held = _hold_out_calibration_cells(source, domain)
    guessed = options.temporal == "smoother"
    channels = len(variables)
    config = UNetConfig(in_channels=Denoiser.input_channels(options.window * channels, guessed),
                        out_channels=options.window * channels,
                        channels=tuple(options.channels), patch=options.stem_patch,
                        attention_heads=options.attention_heads)
    if options.position_channels:   # the map covers the grid as Windows pads it
        config = dataclasses.replace(
            config, position_channels=options.position_channels,
            grid=(padded_size(domain.shape[0], config.multiple),
                  padded_size(domain.shape[1], config.multiple)))
    sums = ObservedSums()
    observations = TrainingFrames(source, domain, holdout=holdout).observations
    for _, _, v, o in chunks(observations, frame_count):
        sums.add(v, o)
    norm = Normalization.from_sums(sums, per_cell=options.normalization == "cell")
    frames = TrainingFrames(source, domain, config.multiple, norm, holdout)
    smoother_config: SmootherConfig | None = None
    if guessed:
        start = time.perf_counter()
        smoother_config = fit_smoother(frames.normalised, frame_count, domain, times, time_unit,
                                       options.seed)
        log.info("temporal smoother fitted in %.1f s", time.perf_counter() - start)
    control = control or RunControl()
    select = options.select
    if select == "auto":
        select = "withheld" if holdout is not None else "validation"
    elif select == "withheld" and holdout is None:
        raise CtxqError("--select withheld: too few observations in the calibration frames to "
                        "withhold (use --select validation)")
    train_w, val_w = split_windows(frames, options, device,
                                   None if smoother_config is None else Smoother(smoother_config),
                                   times, memory, control.group,
                                   holdout.frames if select == "withheld" else None)
    if mask_prior is not None and mask_prior.window != options.window:
        raise CtxqError(f"the mask prior's window ({mask_prior.window} frames) differs from "
                        f"--window {options.window}; train the prior with --window "
                        f"{options.window}")
    partition, why = make_partition(options, frames, train_w, gen, mask_prior)
    log.info("partition: %s (%s)", partition.name, why)

    schedule = NoiseSchedule(low_noise_fraction=options.low_noise_fraction)
    denoiser = Denoiser(config, first_guess=guessed).to(device)
    log.info("denoiser: %d parameters, window %d, %d training windows%s",
             parameter_count(denoiser), options.window, train_w.count,
             f", {val_w.count} validation windows" if val_w else ", no validation split")

    sampler = WindowSampler(train_w.count, distributed.split_batch(options.batch_size,
                                                                    control.group),
                            options.seed, control.group)
    prefetch = Prefetch(train_w.read_ahead, worth_reading_ahead(source, sampler, options.window))

    def loss_fn(net: nn.Module, g: torch.Generator) -> Tensor:
        batch = train_w.batch(sampler.next(), g)
        prefetch.ahead(sampler.peek())
        return context_query_loss(net, batch.values, batch.observed, batch.domain, partition,
                                  schedule, g, batch.positions, batch_first_guess(train_w, batch))

    withheld = None
    if select == "withheld":
        withheld = WithheldFill(train_w, TrainingFrames(source, domain, config.multiple, norm),
                                holdout, partition, schedule.sigma_min, options.seed)
        log.info("the weights that fill the %d withheld observations best are kept "
                 "(--select validation: the lowest validation loss)", int(holdout.hidden.sum()))

    def validate(ema: nn.Module) -> dict[str, float]:
        scores = {} if withheld is None else {"withheld_rmse": withheld(ema)}
        if val_w is not None:
            scores["val_loss"] = validation_loss(ema, val_w, partition, schedule, options.seed)
        return scores

    fingerprint = {"shape": [frame_count, channels, *domain.shape],
                   "variables": list(variables), "normalization": norm.to_dict(),
                   "observed": int(sums.count.sum()), "domain": int(domain.sum()),
                   "temporal": None if smoother_config is None else smoother_config.to_dict()}
    log.info("batch size %d%s", options.batch_size,
             f" ({sampler.batch} per process × {control.group.world} processes)"
             if control.group.active else "")
    try:
        with prefetch:
            ema, summary = optimise(denoiser, loss_fn, options, gen,
                                    validate if val_w or withheld else None,
                                    fingerprint, control, log_file, progress, sampler)
    finally:
        train_w.close()
    if isinstance(source, CachedFrames):
        log.info("frames: %s", source.describe())
    summary["partition_reason"] = why
    if held:
        summary["calibration_holdout"] = held
    return DenoiserModel(denoiser=ema, schedule=schedule, normalization=norm, partition=partition,
                         variables=list(variables), window=options.window, domain=domain,
                         step=summary["steps_done"], training=summary,
                         mask_prior=mask_prior if partition.name == "prior" else None,
                         smoother=smoother_config)


def _hold_out_calibration_cells(source: FrameSource, domain: np.ndarray
                                ) -> tuple[Holdout | None, dict[str, Any] | None]:
    """The cells impute will calibrate its spread on, kept out of training, and what was held."""
    frames = calibration_frames(source.frames)
    observed = source.read(frames.start, frames.stop)[1] & domain[None, None]
    hidden = calibration_hidden(observed, domain)
    if hidden is None:
        return None, None
    log.info("%d observations of frames %d-%d kept out of training: impute calibrates its "
             "spread on them", int(hidden.sum()), frames.start, frames.stop - 1)
    return Holdout(frames, hidden), {"frames": [frames.start, frames.stop],
                                     "cells": int(hidden.sum()),
                                     "fingerprint": mask_fingerprint(observed, domain)}


def train_mask_prior(source: FrameSource, domain: np.ndarray, options: MaskPriorOptions,
                     device: torch.device, log_file: IO[str] | None = None,
                     progress: bool = True, control: RunControl | None = None) -> MaskPriorModel:
    """Learn p(M) from a record's observation masks (read from ``source`` a range at a time)
    inside the domain (H, W)."""
    torch.manual_seed(options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    config = MaskPriorConfig(frames=options.window, scale=options.scale,
                             channels=tuple(options.channels), patch=options.stem_patch)
    frames = TrainingFrames(source, domain, config.multiple, masks=True)
    train_w, val_w = split_windows(frames, options, device)
    network = MaskPrior(config).to(device)
    log.info("mask prior: %d parameters, window %d, %d training windows%s",
             parameter_count(network), options.window, train_w.count,
             f", {val_w.count} validation windows" if val_w else ", no validation split")

    control = control or RunControl()
    sampler = WindowSampler(train_w.count, distributed.split_batch(options.batch_size,
                                                                    control.group),
                            options.seed, control.group)

    prefetch = Prefetch(train_w.read_ahead, worth_reading_ahead(source, sampler, options.window))

    def loss_fn(net: nn.Module, g: torch.Generator) -> Tensor:
        batch = train_w.batch(sampler.next(), g)
        prefetch.ahead(sampler.peek())
        return mask_prior_loss(net, batch.observed, batch.domain, g)

    @torch.no_grad()
    def validate(ema: nn.Module) -> dict[str, float]:
        g = torch.Generator(device=device).manual_seed(options.seed)
        batches = val_w.sequential(stride=options.window)
        losses = [float(mask_prior_loss(ema, b.observed, b.domain, g)) * len(b.observed)
                  for b in batches]
        return {"val_loss": sum(losses) / max(sum(len(b.observed) for b in batches), 1)}

    observed = sum(int(o.sum()) for _, _, _, o in chunks(frames.observations, source.frames))
    fingerprint = {"shape": [source.frames, 1, *domain.shape], "observed": observed,
                   "domain": int(domain.sum())}
    with prefetch:
        ema, summary = optimise(network, loss_fn, options, gen, validate if val_w else None,
                                fingerprint, control, log_file, progress, sampler)
    model = MaskPriorModel(network=ema, domain=domain, step=summary["steps_done"],
                           training=summary)
    model.fidelity = fidelity_report(model, train_w, options, device)
    return model


def fidelity_report(model: MaskPriorModel, real: Windows, options: MaskPriorOptions,
                    device: torch.device) -> dict[str, Any]:
    """Statistics of real mask windows next to windows sampled from the prior."""
    g = torch.Generator(device=device).manual_seed(options.seed + 1)
    n = min(options.report_samples, real.count)
    real_masks = real.mask_pool(n, g)
    dom = real.domain
    sampled = sample_masks(model.network, n, dom, options.report_steps, g)
    return {"real": mask_statistics(real_masks, dom.cpu()),
            "sampled": mask_statistics(sampled, dom.cpu()),
            "samples": n, "steps": options.report_steps}


