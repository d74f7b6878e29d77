"""Training: the denoiser's setup and the optimisation loop every model shares.

The loop (AdamW, warm-up and cosine decay, clipping, EMA, time budget) writes resumable states
periodically and when asked to stop, and resumes from them bit for bit on the same device. It
keeps the EMA weights that did best on the validation windows and stops when they have not
improved for ``patience`` validations: a record of few independent states (a slowly evolving
daily field) is otherwise memorised, the validation loss rising while the training loss falls.

Validation windows lie in blocks of frames spread over the record, the last block at its end,
so that they sample the states of the whole record and its newest frames; no training window
overlaps them, while their observations still reach neighbouring windows through the temporal
smoother, as every observation of a file does when it is filled.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from torch import Tensor, nn

from ctxq_cli import distributed, resume
from ctxq_cli.data import Batch, Normalization, Windows, padded_size
from ctxq_cli.diffusion import (
    Denoiser,
    FirstGuess,
    NoiseSchedule,
    context_query_loss,
    parameter_count,
)
from ctxq_cli.distributed import WindowSampler
from ctxq_cli.errors import CtxqError, Interrupted
from ctxq_cli.maskprior import (
    MaskPrior,
    MaskPriorConfig,
    draw_pool,
    mask_prior_loss,
    mask_statistics,
    sample_masks,
)
from ctxq_cli.model import DenoiserModel, MaskPriorModel
from ctxq_cli.partition import (
    PARTITIONS,
    Partition,
    PartitionInputs,
    choose_partition,
    mask_structure,
)
from ctxq_cli.progress import progress as progress_of
from ctxq_cli.temporal import Smoother, SmootherConfig, first_guess, fit_smoother
from ctxq_cli.unet import UNetConfig
from ctxq_cli.withhold import calibration_cells, mask_fingerprint

log = logging.getLogger(__name__)


TEMPORAL = ("smoother", "none")   # first guesses from the whole record a denoiser can use


@dataclass(frozen=True)
class LoopOptions:
    """How long and how a network is optimised; shared by every trained model."""

    steps: int = 20000
    max_minutes: float | None = None
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 20
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    val_every: int = 250
    patience: int = 8          # validations without improvement before stopping (0: never)
    checkpoint_every: int = 1000
    precision: str = "auto"    # bf16 autocast on GPUs, float32 on CPUs
    compile: bool = False      # torch.compile the network being trained


@dataclass(frozen=True)
class TrainOptions(LoopOptions):
    """Everything that shapes a denoiser's training run; stored in the checkpoint."""

    window: int = 3
    temporal: str = "smoother"    # the first guess from the whole record (none: no first guess)
    partition: str = "auto"
    context_ratio: float = 0.8
    block_size: int | None = None
    overlap: float = 0.0
    channels: tuple[int, ...] = (32, 64, 96)
    stem_patch: int = 2
    attention_heads: int = 4      # self-attention at the coarsest level (0: none)
    position_channels: int = 8    # learned position map on the training grid (0: none)
    val_fraction: float = 0.1
    patch: int = 128
    low_noise_fraction: float = 0.8
    normalization: str = "cell"   # or "variable": one mean per variable (any grid)
    calibration_holdout: bool = True   # keep impute's calibration cells out of training
    pool_size: int = 512
    prior_steps: int = 10         # ODE steps per mask drawn from a mask prior

    def __post_init__(self) -> None:
        choices = {"temporal": TEMPORAL, "partition": ("auto", *PARTITIONS),
                   "normalization": ("cell", "variable")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainOptions.{name} must be one of {', '.join(allowed)}, "
                                 f"not '{getattr(self, name)}'")


@dataclass(frozen=True)
class MaskPriorOptions(LoopOptions):
    """Everything that shapes a mask prior's training run; stored in its checkpoint."""

    window: int = 3
    scale: float = 1.0
    channels: tuple[int, ...] = (32, 64)
    stem_patch: int = 2
    val_fraction: float = 0.1
    patch: int = 128
    batch_size: int = 16
    report_samples: int = 64
    report_steps: int = 20


@dataclass
class RunControl:
    """Where a run keeps its resumable state, whether it resumes, and when it must stop."""

    state_path: Path | None = None
    resume: bool = False
    should_stop: Callable[[], bool] = field(default=lambda: False)
    group: distributed.Group = field(default_factory=distributed.Group)


def make_partition(options: TrainOptions, observed: np.ndarray, domain: np.ndarray,
                   windows: Windows, generator: torch.Generator,
                   mask_prior: MaskPriorModel | None = None) -> tuple[Partition, str]:
    """The partition named by the options, or the one ``auto`` picks from the masks."""
    masks = observed.any(axis=1)  # (T, H, W): a cell is observed if any variable is
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


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay over the run's progress (0 → 1)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


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
    g = torch.Generator(device=windows.values.device).manual_seed(seed)
    low = NoiseSchedule(**{**schedule.to_dict(), "low_noise_fraction": 1.0})
    total, n = 0.0, 0
    for batch in windows.sequential(stride=max(1, windows.window)):
        total += float(context_query_loss(denoiser, batch.values, batch.observed, batch.domain,
                                          partition, low, g, batch.cells,
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


def split_windows(values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                  options: TrainOptions | MaskPriorOptions, multiple: int,
                  device: torch.device, smoother: Smoother | None = None,
                  times: np.ndarray | None = None) -> tuple[Windows, Windows | None]:
    """Training windows and, when the record is long enough, validation windows (in blocks
    of frames that no training window touches, see :func:`validation_frames`)."""
    t, w = values.shape[0], options.window
    held = validation_frames(t, w, options.val_fraction)
    covered = np.lib.stride_tricks.sliding_window_view(held, w)     # (T − W + 1, W)
    everything = Windows(values, observed, domain, w, multiple, options.patch, device,
                         smoother=smoother, times=times)
    train = np.flatnonzero(~covered.any(axis=1))
    val = np.flatnonzero(covered.all(axis=1))
    if not held.any() or not len(val) or not len(train):
        return everything, None
    return everything.subset(train), everything.subset(val)




def train_denoiser(values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                   variables: list[str], options: TrainOptions, device: torch.device,
                   log_file: IO[str] | None = None, progress: bool = True,
                   control: RunControl | None = None,
                   mask_prior: MaskPriorModel | None = None, times: np.ndarray | None = None,
                   time_unit: str = "frames") -> DenoiserModel:
    """Train a denoiser on a field (T, C, H, W) with its observation mask and domain (H, W).

    ``times`` (T,) are the frames' times in ``time_unit`` (default: 0, 1, 2, … frames).
    """
    torch.manual_seed(options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    times = np.arange(len(values), dtype=np.float64) if times is None else np.asarray(
        times, dtype=np.float64)
    observed = observed & domain[None, None]  # cells outside the domain never take part
    holdout = None
    if options.calibration_holdout:
        observed, holdout = _hold_out_calibration_cells(observed, domain)
    norm = Normalization.fit(values, observed, per_cell=options.normalization == "cell")
    normed = norm.apply(values, observed)
    smoother_config: SmootherConfig | None = None
    if options.temporal == "smoother":
        start = time.perf_counter()
        smoother_config = fit_smoother(normed, observed, domain, times, time_unit, options.seed)
        log.info("temporal smoother fitted in %.1f s", time.perf_counter() - start)
    guessed = smoother_config is not None
    config = UNetConfig(in_channels=Denoiser.input_channels(options.window * values.shape[1],
                                                            guessed),
                        out_channels=options.window * values.shape[1],
                        channels=tuple(options.channels), patch=options.stem_patch,
                        attention_heads=options.attention_heads)
    if options.position_channels:   # the map covers the grid as Windows pads it
        config = dataclasses.replace(
            config, position_channels=options.position_channels,
            grid=(padded_size(values.shape[-2], config.multiple),
                  padded_size(values.shape[-1], config.multiple)))
    train_w, val_w = split_windows(normed, observed, domain, options, config.multiple, device,
                                   None if smoother_config is None else Smoother(smoother_config),
                                   times)
    if mask_prior is not None and mask_prior.window != options.window:
        raise CtxqError(f"the mask prior's window ({mask_prior.window} frames) differs from "
                        f"--window {options.window}; train the prior with --window "
                        f"{options.window}")
    partition, why = make_partition(options, observed, domain, train_w, gen, mask_prior)
    log.info("partition: %s (%s)", partition.name, why)

    schedule = NoiseSchedule(low_noise_fraction=options.low_noise_fraction)
    denoiser = Denoiser(config, first_guess=guessed).to(device)
    log.info("denoiser: %d parameters, window %d, %d training windows%s",
             parameter_count(denoiser), options.window, train_w.count,
             f", {val_w.count} validation windows" if val_w else ", no validation split")

    control = control or RunControl()
    sampler = WindowSampler(train_w.count, distributed.split_batch(options.batch_size,
                                                                    control.group),
                            options.seed, control.group)

    def loss_fn(net: nn.Module, g: torch.Generator) -> Tensor:
        batch = train_w.batch(sampler.next(), g)
        return context_query_loss(net, batch.values, batch.observed, batch.domain, partition,
                                  schedule, g, batch.cells, batch_first_guess(train_w, batch))

    def validate(ema: nn.Module) -> float:
        return validation_loss(ema, val_w, partition, schedule, options.seed)

    fingerprint = {"shape": list(values.shape), "variables": list(variables),
                   "normalization": norm.to_dict(), "observed": int(observed.sum()),
                   "domain": int(domain.sum()),
                   "temporal": None if smoother_config is None else smoother_config.to_dict()}
    log.info("batch size %d%s", options.batch_size,
             f" ({sampler.batch} per process × {control.group.world} processes)"
             if control.group.active else "")
    ema, summary = optimise(denoiser, loss_fn, options, gen, validate if val_w else None,
                            fingerprint, control, log_file, progress, sampler)
    summary["partition_reason"] = why
    if holdout:
        summary["calibration_holdout"] = holdout
    return DenoiserModel(denoiser=ema, schedule=schedule, normalization=norm, partition=partition,
                         variables=list(variables), window=options.window, domain=domain,
                         step=summary["steps_done"], training=summary,
                         mask_prior=mask_prior if partition.name == "prior" else None,
                         smoother=smoother_config)


def _hold_out_calibration_cells(observed: np.ndarray, domain: np.ndarray
                                ) -> tuple[np.ndarray, dict[str, Any] | None]:
    """Observations less the cells impute will calibrate its spread on, and what was held."""
    frames, hidden = calibration_cells(observed, domain)
    if hidden is None:
        return observed, None
    kept = observed.copy()
    kept[frames] &= ~hidden
    log.info("%d observations of frames %d-%d kept out of training: impute calibrates its "
             "spread on them", int(hidden.sum()), frames.start, frames.stop - 1)
    return kept, {"frames": [frames.start, frames.stop], "cells": int(hidden.sum()),
                  "fingerprint": mask_fingerprint(observed[frames], domain)}


def train_mask_prior(observed: np.ndarray, domain: np.ndarray, options: MaskPriorOptions,
                     device: torch.device, log_file: IO[str] | None = None,
                     progress: bool = True, control: RunControl | None = None) -> MaskPriorModel:
    """Learn p(M) from observation masks (T, C, H, W) inside the domain (H, W)."""
    torch.manual_seed(options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    masks = (observed.any(axis=1) & domain[None])[:, None]          # (T, 1, H, W)
    config = MaskPriorConfig(frames=options.window, scale=options.scale,
                             channels=tuple(options.channels), patch=options.stem_patch)
    zeros = np.zeros(masks.shape, np.float32)   # Windows wants values; only masks matter here
    train_w, val_w = split_windows(zeros, masks, domain, options, config.multiple, device)
    network = MaskPrior(config).to(device)
    log.info("mask prior: %d parameters, window %d, %d training windows%s",
             parameter_count(network), options.window, train_w.count,
             f", {val_w.count} validation windows" if val_w else ", no validation split")

    control = control or RunControl()
    sampler = WindowSampler(train_w.count, distributed.split_batch(options.batch_size,
                                                                    control.group),
                            options.seed, control.group)

    def loss_fn(net: nn.Module, g: torch.Generator) -> Tensor:
        batch = train_w.batch(sampler.next(), g)
        return mask_prior_loss(net, batch.observed, batch.domain, g)

    @torch.no_grad()
    def validate(ema: nn.Module) -> float:
        g = torch.Generator(device=device).manual_seed(options.seed)
        batches = val_w.sequential(stride=options.window)
        losses = [float(mask_prior_loss(ema, b.observed, b.domain, g)) * len(b.observed)
                  for b in batches]
        return sum(losses) / max(sum(len(b.observed) for b in batches), 1)

    fingerprint = {"shape": list(masks.shape), "observed": int(masks.sum()),
                   "domain": int(domain.sum())}
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


SYNC_EVERY_GPU = 16   # steps between host synchronisations on a GPU (losses, stop, budget)


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``--precision`` on a device (None: full float32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision not in ("bf16", "fp32"):
        raise CtxqError(f"--precision must be auto, bf16 or fp32, not '{precision}'")
    return torch.bfloat16 if precision == "bf16" else None


def optimise(network: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], Tensor],
             options: LoopOptions, generator: torch.Generator,
             validate: Callable[[nn.Module], float] | None, fingerprint: dict[str, Any],
             control: RunControl, log_file: IO[str] | None = None,
             progress: bool = True,
             sampler: WindowSampler | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Minimise ``loss_fn`` with AdamW, warm-up, cosine decay, clipping and an EMA copy.

    Stops after ``options.steps`` steps or ``options.max_minutes`` (counted from this start),
    or early, when ``options.patience`` validations in a row did not improve on the best;
    returns the EMA weights of the best validation, the untrained ones included (the last ones
    without validation). Writes a
    resumable state every ``options.checkpoint_every`` steps and when ``control.should_stop()``
    turns true (then raises :class:`Interrupted`), and resumes from ``control.state_path``
    when asked. Under torchrun the network is wrapped in DistributedDataParallel; all decisions
    (stop, budget, divergence) are agreed by all ranks, and only rank 0 writes. Losses stay on
    the device and are read every few steps, so a GPU never waits for the host. Returns the EMA
    network and a summary of the run.
    """
    group = control.group
    device = next(network.parameters()).device
    log.info("training on %s%s", device, f", {group.world} processes" if group.active else "")
    if device.type == "cuda":
        network.to(memory_format=torch.channels_last)
    trained: nn.Module = network
    if group.active:
        from torch.nn.parallel import DistributedDataParallel

        # Built first: it broadcasts rank 0's weights, which the EMA copy must start from.
        trained = DistributedDataParallel(
            network, device_ids=[device.index] if device.type == "cuda" else None)
        generator.manual_seed(options.seed + 7919 * group.rank)   # own masks and noise
        fingerprint = {**fingerprint, "processes": group.world}
    ema = copy.deepcopy(network).eval().requires_grad_(False)
    opt = torch.optim.AdamW(network.parameters(), lr=options.lr,
                            weight_decay=options.weight_decay)
    opts = asdict(options)
    step = first_step = 0
    progress0, seconds0, loss_avg, val = 0.0, 0.0, None, float("nan")
    best = Best()
    path = control.state_path
    if path is not None and control.resume:
        state = resume.load_state(path)
        if state is None:
            log.info("no resumable state at %s: starting afresh", path)
        else:
            resume.check_compatible(path, state, opts, fingerprint)
            resume.restore(state, network, ema, opt, generator, group.rank, sampler)
            best = Best(state.best_step, state.best_val, state.best,
                        state.validations_since_best)
            step = first_step = state.step
            progress0, seconds0, loss_avg = state.progress, state.seconds, state.loss_avg
            val = float("nan") if state.val_loss is None else state.val_loss
            log.info("resuming from %s at step %d", path, step)
    if options.compile:
        trained = torch.compile(trained)
    autocast_dtype = precision_dtype(options.precision, device)
    sync_every = 1 if device.type == "cpu" else SYNC_EVERY_GPU
    saved_step: int | None = None

    budget = options.max_minutes * 60 if options.max_minutes else math.inf
    start = time.perf_counter()
    agreed_elapsed = 0.0   # the same on every rank, so the schedule is too
    pending: list[tuple[int, Tensor, float]] = []   # (step, loss on the device, lr)

    def schedule_progress() -> float:
        """Share of the schedule done: by steps, or by time when a budget is set."""
        return max(step / options.steps, progress0 + (1 - progress0) * agreed_elapsed / budget)

    def save_state() -> None:
        nonlocal saved_step
        if path is None:
            return
        generators = distributed.gather(group, generator.get_state())
        if group.main:
            resume.save_state(path, resume.capture(
                step, schedule_progress(), seconds0 + agreed_elapsed, loss_avg,
                None if math.isnan(val) else val, opts, fingerprint, network, ema, opt,
                generators, sampler, best.weights, best.step, best.value, best.since))
        saved_step = step

    def synchronise() -> tuple[bool, bool]:
        """Read the pending losses, log them, check them; agree on (stop, out of time)."""
        nonlocal loss_avg, agreed_elapsed
        elapsed = time.perf_counter() - start
        losses = (torch.stack([loss for _, loss, _ in pending]).float() if pending
                  else torch.zeros(0, device=device))
        flags = torch.tensor([float(control.should_stop()), elapsed], device=device)
        totals = distributed.reduce_sum(group, torch.cat([losses.to(device), flags]))
        numbers = (totals / group.world).tolist()   # the one wait for the device
        agreed_elapsed = numbers[-1]
        for (at, _, lr), value in zip(pending, numbers[:len(pending)]):
            if not math.isfinite(value):
                bar.close()
                kept = (f"the resumable state of step {saved_step} is kept in {path}"
                        if saved_step is not None else "nothing was written")
                raise CtxqError(f"training diverged: the loss is {value} at step {at}; {kept} "
                                f"(try a smaller --lr)")
            loss_avg = value if loss_avg is None else 0.98 * loss_avg + 0.02 * value
            record: dict[str, Any] = {"step": at, "loss": value, "lr": lr,
                                      "elapsed_s": round(seconds0 + agreed_elapsed, 3)}
            if at == step and not math.isnan(val) and at % options.val_every == 0:
                record["val_loss"] = val
                record["best_val_loss"] = best.value
            if log_file is not None and group.main:
                log_file.write(json.dumps(record) + "\n")
        pending.clear()
        bar.set_postfix(loss=f"{loss_avg or float('nan'):.4f}", val=f"{val:.4f}", refresh=False)
        return numbers[-2] > 0, agreed_elapsed > budget

    if validate is not None and best.weights is None:
        # the untrained denoiser is a candidate too: with a first guess it is that guess, so
        # training can never end worse on the validation frames than where it started
        val = validate(ema)
        best.offer(val, step, ema)
    bar = progress_of(options.steps, "train", "step", progress and group.main, initial=step)
    stop, out_of_time = synchronise()
    while step < options.steps and not out_of_time:
        if stop:
            if saved_step != step:
                save_state()
            bar.close()
            where = (f"; resumable state written to {path}; run the same command with "
                     f"--resume to continue" if path else "")
            raise Interrupted(f"interrupted at step {step} of {options.steps}{where}")
        lr = options.lr * _lr_factor(schedule_progress(), step, options.warmup)
        for group_ in opt.param_groups:
            group_["lr"] = lr
        with torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                            enabled=autocast_dtype is not None):
            loss = loss_fn(trained, generator)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(network.parameters(), options.grad_clip, foreach=True)
        opt.step()
        decay = min(options.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(list(ema.parameters()), list(network.parameters()), 1 - decay)
        step += 1
        pending.append((step, loss.detach(), lr))
        bar.update(1)
        validating = validate is not None and step % options.val_every == 0
        checkpointing = bool(options.checkpoint_every) and step % options.checkpoint_every == 0
        if validating:
            val = validate(ema)
            best.offer(val, step, ema)
        if step % sync_every == 0 or validating or checkpointing or step == options.steps:
            stop, out_of_time = synchronise()
            if checkpointing:
                save_state()
        if validating and options.patience and best.since >= options.patience:
            stopped_early = True
            break
    else:
        stopped_early = False
    if pending:
        synchronise()
    if out_of_time:
        log.info("time budget of %.1f min reached at step %d", options.max_minutes, step)
    bar.close()
    elapsed = time.perf_counter() - start
    if validate is not None and step % options.val_every != 0:  # the final weights, once more
        val = validate(ema)
        best.offer(val, step, ema)
    rate = (step - first_step) * options.batch_size / max(elapsed, 1e-9)
    log.info("trained to step %d in %.1f s: %.1f samples/s, final loss %.4f, validation loss "
             "%.4f", step, elapsed, rate, loss_avg or float("nan"), val)
    if stopped_early:
        log.info("stopped early at step %d: the validation loss has not improved on %.4f "
                 "(step %d) in %d validations", step, best.value, best.step, best.since)
    if best.weights is not None and best.step != step:
        ema.load_state_dict(best.weights)
        log.info("kept the weights of step %d, the lowest validation loss (%.4f; %.4f at the "
                 "last step)", best.step, best.value, val)
    summary = {"options": opts, "steps_done": step, "seconds": round(seconds0 + elapsed, 1),
               "samples_per_s": round(rate, 2), "train_loss": loss_avg,
               "val_loss": None if math.isnan(val) else val, "processes": group.world,
               "best_step": best.step if best.weights is not None else step,
               "best_val_loss": best.value if best.weights is not None else None,
               "stopped_early": stopped_early}
    return ema, summary


@dataclass
class Best:
    """The EMA weights with the lowest validation loss so far, and how many validations since."""

    step: int = 0
    value: float = math.inf
    weights: dict[str, Tensor] | None = None
    since: int = 0

    def offer(self, value: float, step: int, ema: nn.Module) -> None:
        """Keep ``ema``'s weights (a CPU copy) if ``value`` is the lowest yet."""
        if math.isfinite(value) and value < self.value:
            self.step, self.value, self.since = step, value, 0
            self.weights = {k: v.detach().to("cpu", copy=True)
                            for k, v in ema.state_dict().items()}
        else:
            self.since += 1


def open_log(path: Path, append: bool = False) -> IO[str]:
    """Open the JSON-lines training log for writing (appending when a run resumes)."""
    try:
        return open(path, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise CtxqError(f"{path}: cannot write the training log ({exc.strerror})") from None
