"""Training loop for the context-query denoiser (AdamW, EMA, clipping, time budget)."""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from tqdm import tqdm

from ctxq_cli.data import Normalization, Windows
from ctxq_cli.diffusion import Denoiser, NoiseSchedule, context_query_loss, parameter_count
from ctxq_cli.errors import CtxqError
from ctxq_cli.model import DenoiserModel
from ctxq_cli.partition import (
    BlockPartition,
    EmpiricalPartition,
    Partition,
    PixelPartition,
    choose_partition,
    mask_structure,
)
from ctxq_cli.unet import UNetConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """Everything that shapes a training run; stored in the checkpoint."""

    window: int = 3
    partition: str = "auto"
    context_ratio: float = 0.8
    block_size: int | None = None
    overlap: float = 0.0
    channels: tuple[int, ...] = (32, 64, 96)
    stem_patch: int = 2
    steps: int = 20000
    max_minutes: float | None = None
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 0.0
    warmup: int = 20
    ema: float = 0.999
    grad_clip: float = 1.0
    seed: int = 0
    val_fraction: float = 0.1
    val_every: int = 250
    patch: int = 128
    low_noise_fraction: float = 0.8
    pool_size: int = 512


def make_partition(options: TrainOptions, observed: np.ndarray, domain: np.ndarray,
                   windows: Windows, generator: torch.Generator) -> tuple[Partition, str]:
    """The partition named by the options, or the one ``auto`` picks from the masks."""
    masks = observed.any(axis=1)  # (T, H, W): a cell is observed if any variable is
    structure = mask_structure(masks, domain)
    name, ratio, overlap = options.partition, options.context_ratio, options.overlap
    if name == "pixel":
        return PixelPartition(ratio=ratio, overlap=overlap), "chosen with --partition"
    if name == "block":
        size = options.block_size or structure.block_size
        return BlockPartition(size=size, ratio=ratio, overlap=overlap), "chosen with --partition"
    if name == "empirical":
        pool = windows.mask_pool(options.pool_size, generator)
        return EmpiricalPartition(pool=pool, overlap=overlap), "chosen with --partition"
    return choose_partition(structure, ratio, overlap)


def _lr_factor(progress: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay over the run's progress (0 → 1)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


@torch.no_grad()
def validation_loss(denoiser: Denoiser, windows: Windows, partition: Partition,
                    schedule: NoiseSchedule, seed: int) -> float:
    """Masked loss on held-out observed cells at the smallest noise, with fixed draws."""
    g = torch.Generator(device=windows.values.device).manual_seed(seed)
    low = NoiseSchedule(**{**schedule.to_dict(), "low_noise_fraction": 1.0})
    total, n = 0.0, 0
    for v, o, d in windows.sequential(stride=max(1, windows.window)):
        total += float(context_query_loss(denoiser, v, o, d, partition, low, g)) * len(v)
        n += len(v)
    return total / max(n, 1)


def train_denoiser(values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                   variables: list[str], options: TrainOptions, device: torch.device,
                   log_file: IO[str] | None = None, progress: bool = True) -> DenoiserModel:
    """Train a denoiser on a field (T, C, H, W) with its observation mask and domain (H, W)."""
    torch.manual_seed(options.seed)
    gen = torch.Generator(device=device).manual_seed(options.seed)
    t = values.shape[0]
    observed = observed & domain[None, None]  # cells outside the domain never take part
    norm = Normalization.fit(values, observed)
    normed = norm.apply(values, observed)
    n_val = int(round(t * options.val_fraction))
    if n_val < options.window or t - n_val < options.window:
        n_val = 0
    config = UNetConfig(in_channels=Denoiser.input_channels(options.window * values.shape[1]),
                        out_channels=options.window * values.shape[1],
                        channels=tuple(options.channels), patch=options.stem_patch)
    train_w = Windows(normed, observed, domain, options.window, config.multiple, options.patch,
                      (0, t - n_val), device)
    val_w = (Windows(normed, observed, domain, options.window, config.multiple, options.patch,
                     (t - n_val, t), device) if n_val else None)
    partition, why = make_partition(options, observed[: t - n_val], domain, train_w, gen)
    log.info("partition: %s (%s)", partition.name, why)

    schedule = NoiseSchedule(low_noise_fraction=options.low_noise_fraction)
    denoiser = Denoiser(config).to(device)
    ema = copy.deepcopy(denoiser).eval().requires_grad_(False)
    opt = torch.optim.AdamW(denoiser.parameters(), lr=options.lr,
                            weight_decay=options.weight_decay)
    log.info("denoiser: %d parameters, window %d, %d training windows%s",
             parameter_count(denoiser), options.window, train_w.count,
             f", {val_w.count} validation windows" if val_w else ", no validation split")

    budget = options.max_minutes * 60 if options.max_minutes else math.inf
    start = time.perf_counter()
    bar = tqdm(total=options.steps, disable=not progress, unit="step", dynamic_ncols=True)
    step, loss_avg, val = 0, None, float("nan")
    while step < options.steps:
        elapsed = time.perf_counter() - start
        if elapsed > budget:
            log.info("time budget of %.1f min reached at step %d", options.max_minutes, step)
            break
        prog = max(step / options.steps, elapsed / budget)
        for group in opt.param_groups:
            group["lr"] = options.lr * _lr_factor(prog, step, options.warmup)
        v, o, d = train_w.batch(options.batch_size, gen)
        loss = context_query_loss(denoiser, v, o, d, partition, schedule, gen)
        if not torch.isfinite(loss):
            raise CtxqError(f"training diverged: the loss is {float(loss.detach())} at step "
                            f"{step + 1}; nothing was written (try a smaller --lr)")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(denoiser.parameters(), options.grad_clip)
        opt.step()
        decay = min(options.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), denoiser.parameters()):
                pe.lerp_(p, 1 - decay)
        step += 1
        loss_value = float(loss.detach())
        loss_avg = loss_value if loss_avg is None else 0.98 * loss_avg + 0.02 * loss_value
        record: dict[str, Any] = {"step": step, "loss": loss_value, "lr": opt.param_groups[0]["lr"],
                                  "elapsed_s": round(time.perf_counter() - start, 3)}
        if val_w is not None and step % options.val_every == 0:
            val = record["val_loss"] = validation_loss(ema, val_w, partition, schedule,
                                                       options.seed)
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{loss_avg:.4f}", val=f"{val:.4f}", refresh=False)
        bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    if val_w is not None and step % options.val_every != 0:  # the final weights, once more
        val = validation_loss(ema, val_w, partition, schedule, options.seed)
    rate = step * options.batch_size / max(elapsed, 1e-9)
    log.info("trained %d steps in %.1f s: %.1f samples/s, final loss %.4f, validation loss %.4f",
             step, elapsed, rate, loss_avg or float("nan"), val)
    summary = {"options": asdict(options), "steps_done": step, "seconds": round(elapsed, 1),
               "samples_per_s": round(rate, 2), "train_loss": loss_avg,
               "val_loss": None if math.isnan(val) else val, "partition_reason": why}
    return DenoiserModel(denoiser=ema, schedule=schedule, normalization=norm, partition=partition,
                         variables=list(variables), window=options.window, domain=domain,
                         step=step, training=summary)


def open_log(path: Path) -> IO[str]:
    """Open the JSON-lines training log for writing."""
    try:
        return open(path, "w", encoding="utf-8")
    except OSError as exc:
        raise CtxqError(f"{path}: cannot write the training log ({exc.strerror})") from None
