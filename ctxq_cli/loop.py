"""The optimisation loop every trained model shares.

AdamW with linear warm-up and cosine decay (over steps, or over the time budget when one is
set), gradient clipping and an EMA copy of the weights, which is what is validated and kept. The
loop writes resumable states periodically and when asked to stop, and resumes from them bit for
bit on the same device. A validation measures named scores (:data:`Scores`); the loop keeps the
EMA weights with the lowest first score and stops when it has not improved for ``patience``
validations: a record of few independent
states (a slowly evolving daily field) is otherwise memorised, the validation loss rising while
the training loss falls. Under torchrun the network is wrapped in DistributedDataParallel and
every decision (stop, budget, divergence) is agreed by all ranks; only rank 0 writes. Losses
stay on the device and are read every few steps, so a GPU never waits for the host.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import torch
from torch import Tensor, nn

from ctxq_cli import distributed, resume
from ctxq_cli.distributed import WindowSampler
from ctxq_cli.errors import CtxqError, Interrupted
from ctxq_cli.options import Options, option
from ctxq_cli.progress import progress as progress_of

log = logging.getLogger(__name__)

SYNC_EVERY_GPU = 16   # steps between host synchronisations on a GPU (losses, stop, budget)

# What one validation measured, by name (lower is better); the first score selects the weights.
Scores = dict[str, float]
Validate = Callable[[nn.Module], Scores]


@dataclass(frozen=True)
class LoopOptions(Options):
    """How long and how a network is optimised; shared by every trained model."""

    steps: int = option(20000, ge=1, integer=True)
    max_minutes: float | None = option(None, gt=0)
    batch_size: int = option(8, ge=1, integer=True)
    lr: float = option(2e-3, ge=0)
    # 0.1 measured and not kept: it lowered the best validation loss but not the fill's error
    # (examples/BENCHMARKS.md, 'Regularisation')
    weight_decay: float = option(0.0, ge=0)
    warmup: int = option(20, ge=0, integer=True)
    ema: float = option(0.999, ge=0, le=1)
    grad_clip: float = option(1.0, gt=0)
    seed: int = option(0, integer=True)
    val_every: int = option(250, ge=1, integer=True)
    # validations without improvement before stopping (0: never)
    patience: int = option(8, ge=0, integer=True)
    checkpoint_every: int = option(1000, ge=0, integer=True)   # 0: only when stopped
    # bf16 autocast on GPUs, float32 on CPUs
    precision: str = option("auto", choices=("auto", "bf16", "fp32"))
    compile: bool = False      # torch.compile the network being trained


@dataclass
class RunControl:
    """Where a run keeps its resumable state, whether it resumes, and when it must stop."""

    state_path: Path | None = None
    resume: bool = False
    should_stop: Callable[[], bool] = field(default=lambda: False)
    group: distributed.Group = field(default_factory=distributed.Group)


@dataclass
class Best:
    """The EMA weights with the lowest selecting score so far, and how many validations since."""

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


def lr_factor(done: float, step: int, warmup: int) -> float:
    """Linear warm-up, then cosine decay over the share of the schedule done (0 → 1)."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * min(done, 1.0)))


def precision_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision option on a device (None: full float32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    return torch.bfloat16 if precision == "bf16" else None


def open_log(path: Path, append: bool = False) -> IO[str]:
    """Open the JSON-lines training log for writing (appending when a run resumes)."""
    try:
        return open(path, "a" if append else "w", encoding="utf-8")
    except OSError as exc:
        raise CtxqError(f"{path}: cannot write the training log ({exc.strerror})") from None


class Loop:
    """A run's moving parts: the network (wrapped for torchrun), its EMA copy, the optimiser,
    the schedule, the best weights, the pending losses and the resumable state."""

    def __init__(self, network: nn.Module, options: LoopOptions, generator: torch.Generator,
                 fingerprint: dict[str, Any], control: RunControl,
                 sampler: WindowSampler | None, log_file: IO[str] | None) -> None:
        self.network, self.options, self.generator = network, options, generator
        self.control, self.group, self.sampler = control, control.group, sampler
        self.log_file, self.path = log_file, control.state_path
        self.device = next(network.parameters()).device
        if self.device.type == "cuda":
            network.to(memory_format=torch.channels_last)
        self.trained: nn.Module = network
        self.fingerprint = fingerprint
        if self.group.active:
            from torch.nn.parallel import DistributedDataParallel

            # Built first: it broadcasts rank 0's weights, which the EMA copy must start from.
            self.trained = DistributedDataParallel(
                network, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            generator.manual_seed(options.seed + 7919 * self.group.rank)   # own masks, noise
            self.fingerprint = {**fingerprint, "processes": self.group.world}
        self.ema = copy.deepcopy(network).eval().requires_grad_(False)
        self.opt = torch.optim.AdamW(network.parameters(), lr=options.lr,
                                     weight_decay=options.weight_decay)
        self.opts = asdict(options)
        self.step = self.first_step = 0
        self.done0, self.seconds0 = 0.0, 0.0     # schedule share and time before this start
        self.loss_avg: float | None = None
        self.val = float("nan")     # the selecting score of the last validation
        self.scores: Scores = {}
        self.best = Best()
        self.saved_step: int | None = None
        self.budget = options.max_minutes * 60 if options.max_minutes else math.inf
        self.agreed_elapsed = 0.0   # the same on every rank, so the schedule is too
        self.pending: list[tuple[int, Tensor, float]] = []   # (step, loss on the device, lr)
        self.autocast = precision_dtype(options.precision, self.device)
        self.sync_every = 1 if self.device.type == "cpu" else SYNC_EVERY_GPU
        self.start = time.perf_counter()
        self.bar: Any = None

    def resume(self) -> None:
        """Go on from the resumable state, when asked and one exists."""
        if self.path is None or not self.control.resume:
            return
        state = resume.load_state(self.path)
        if state is None:
            log.info("no resumable state at %s: starting afresh", self.path)
            return
        resume.check_compatible(self.path, state, self.opts, self.fingerprint)
        resume.restore(state, self.network, self.ema, self.opt, self.generator,
                       self.group.rank, self.sampler)
        self.best = Best(state.best_step, state.best_val, state.best,
                         state.validations_since_best)
        self.step = self.first_step = state.step
        self.done0, self.seconds0, self.loss_avg = state.progress, state.seconds, \
            state.loss_avg
        self.scores = {k: float("nan") if v is None else v for k, v in state.scores.items()}
        self.val = next(iter(self.scores.values()), float("nan"))
        log.info("resuming from %s at step %d", self.path, self.step)

    def schedule_done(self) -> float:
        """Share of the schedule done: by steps, or by time when a budget is set."""
        return max(self.step / self.options.steps,
                   self.done0 + (1 - self.done0) * self.agreed_elapsed / self.budget)

    def save_state(self) -> None:
        """Write the resumable state (rank 0; every rank's generator is gathered)."""
        if self.path is None:
            return
        generators = distributed.gather(self.group, self.generator.get_state())
        if self.group.main:
            best = self.best
            resume.save_state(self.path, resume.capture(
                self.step, self.schedule_done(), self.seconds0 + self.agreed_elapsed,
                self.loss_avg, {k: None if math.isnan(v) else v for k, v in self.scores.items()},
                self.opts,
                self.fingerprint, self.network, self.ema, self.opt, generators, self.sampler,
                best.weights, best.step, best.value, best.since))
        self.saved_step = self.step

    def take_step(self, loss_fn: Callable[[nn.Module, torch.Generator], Tensor]) -> None:
        """One optimiser step on the scheduled learning rate, then the EMA update."""
        options = self.options
        lr = options.lr * lr_factor(self.schedule_done(), self.step, options.warmup)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                            enabled=self.autocast is not None):
            loss = loss_fn(self.trained, self.generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), options.grad_clip,
                                       foreach=True)
        self.opt.step()
        decay = min(options.ema, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(list(self.ema.parameters()), list(self.network.parameters()),
                                 1 - decay)
        self.step += 1
        self.pending.append((self.step, loss.detach(), lr))
        self.bar.update(1)

    def validate(self, validate: Validate) -> None:
        """Score the EMA weights; keep them if their selecting score is the best."""
        self.scores = validate(self.ema)
        self.val = next(iter(self.scores.values()))
        self.best.offer(self.val, self.step, self.ema)

    @property
    def selecting(self) -> str:
        """The name of the score that selects the weights."""
        return next(iter(self.scores), "val_loss")

    def synchronise(self) -> tuple[bool, bool]:
        """Read the pending losses, log them, check them; agree on (stop, out of time)."""
        elapsed = time.perf_counter() - self.start
        losses = (torch.stack([loss for _, loss, _ in self.pending]).float() if self.pending
                  else torch.zeros(0, device=self.device))
        flags = torch.tensor([float(self.control.should_stop()), elapsed], device=self.device)
        totals = distributed.reduce_sum(self.group, torch.cat([losses.to(self.device), flags]))
        numbers = (totals / self.group.world).tolist()   # the one wait for the device
        self.agreed_elapsed = numbers[-1]
        for (at, _, lr), value in zip(self.pending, numbers[:len(self.pending)]):
            if not math.isfinite(value):
                self.bar.close()
                kept = (f"the resumable state of step {self.saved_step} is kept in {self.path}"
                        if self.saved_step is not None else "nothing was written")
                raise CtxqError(f"training diverged: the loss is {value} at step {at}; {kept} "
                                f"(try a smaller --lr)")
            self.loss_avg = value if self.loss_avg is None else \
                0.98 * self.loss_avg + 0.02 * value
            self._log(at, value, lr)
        self.pending.clear()
        self.bar.set_postfix(loss=f"{self.loss_avg or float('nan'):.4f}",
                             val=f"{self.val:.4f}", refresh=False)
        return numbers[-2] > 0, self.agreed_elapsed > self.budget

    def _log(self, at: int, loss: float, lr: float) -> None:
        """One line of the JSON-lines log (rank 0), with the validation's scores when new."""
        record: dict[str, Any] = {"step": at, "loss": loss, "lr": lr,
                                  "elapsed_s": round(self.seconds0 + self.agreed_elapsed, 3)}
        if at == self.step and not math.isnan(self.val) and at % self.options.val_every == 0:
            record.update(self.scores)
            record[f"best_{self.selecting}"] = self.best.value
        if self.log_file is not None and self.group.main:
            self.log_file.write(json.dumps(record) + "\n")

    def interrupted(self) -> Interrupted:
        """Save the state (unless just saved) and say how to go on."""
        if self.saved_step != self.step:
            self.save_state()
        self.bar.close()
        where = (f"; resumable state written to {self.path}; run the same command with "
                 f"--resume to continue" if self.path else "")
        return Interrupted(f"interrupted at step {self.step} of {self.options.steps}{where}")

    def finish(self, validate: Validate | None, out_of_time: bool,
               stopped_early: bool) -> tuple[nn.Module, dict[str, Any]]:
        """Validate the last weights, report, restore the best ones; the EMA and a summary."""
        options, best = self.options, self.best
        if self.pending:
            self.synchronise()
        if out_of_time:
            log.info("time budget of %.1f min reached at step %d", options.max_minutes,
                     self.step)
        self.bar.close()
        elapsed = time.perf_counter() - self.start
        if validate is not None and self.step % options.val_every != 0:
            self.validate(validate)      # the final weights, once more
        step, val, name = self.step, self.val, self.selecting
        rate = (step - self.first_step) * options.batch_size / max(elapsed, 1e-9)
        log.info("trained to step %d in %.1f s: %.1f samples/s, final loss %.4f%s", step,
                 elapsed, rate, self.loss_avg or float("nan"),
                 "".join(f", {k} {v:.4f}" for k, v in self.scores.items()))
        if stopped_early:
            log.info("stopped early at step %d: %s has not improved on %.4f (step %d) in %d "
                     "validations", step, name, best.value, best.step, best.since)
        if best.weights is not None and best.step != step:
            self.ema.load_state_dict(best.weights)
            log.info("kept the weights of step %d, the lowest %s (%.4f; %.4f at the last "
                     "step)", best.step, name, best.value, val)
        summary = {"options": self.opts, "steps_done": step,
                   "seconds": round(self.seconds0 + elapsed, 1),
                   "samples_per_s": round(rate, 2), "train_loss": self.loss_avg,
                   **{k: None if math.isnan(v) else v for k, v in self.scores.items()},
                   "processes": self.group.world,
                   "best_step": best.step if best.weights is not None else step,
                   "selected_by": name if best.weights is not None else None,
                   f"best_{name}": best.value if best.weights is not None else None,
                   "stopped_early": stopped_early}
        return self.ema, summary


def optimise(network: nn.Module, loss_fn: Callable[[nn.Module, torch.Generator], Tensor],
             options: LoopOptions, generator: torch.Generator,
             validate: Validate | None, fingerprint: dict[str, Any],
             control: RunControl, log_file: IO[str] | None = None,
             progress: bool = True,
             sampler: WindowSampler | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """Minimise ``loss_fn``; return the EMA weights of the best validation (the lowest first
    score ``validate`` returns) and a summary.

    Stops after ``options.steps`` steps or ``options.max_minutes`` (counted from this start),
    or early, when ``options.patience`` validations in a row did not improve on the best (the
    untrained weights are a candidate too; without validation the last weights are kept).
    Writes a resumable state every ``options.checkpoint_every`` steps and when
    ``control.should_stop()`` turns true (then raises :class:`Interrupted`), and resumes from
    ``control.state_path`` when asked.
    """
    group = control.group
    loop = Loop(network, options, generator, fingerprint, control, sampler, log_file)
    log.info("training on %s%s", loop.device,
             f", {group.world} processes" if group.active else "")
    loop.resume()
    if options.compile:
        loop.trained = torch.compile(loop.trained)
    loop.start = time.perf_counter()

    # The untrained network is a candidate too: with a first guess it is that guess, so
    # training never ends worse on the validation windows than where it started.
    if validate is not None and loop.best.weights is None:
        loop.validate(validate)
    loop.bar = progress_of(options.steps, "train", "step", progress and group.main,
                           initial=loop.step)
    stop, out_of_time = loop.synchronise()
    stopped_early = False

    while loop.step < options.steps and not out_of_time:
        if stop:
            raise loop.interrupted()
        loop.take_step(loss_fn)

        # validation, host synchronisation, resumable states: on their own schedules
        validating = validate is not None and loop.step % options.val_every == 0
        checkpointing = bool(options.checkpoint_every) and \
            loop.step % options.checkpoint_every == 0
        if validating:
            loop.validate(validate)
        if loop.step % loop.sync_every == 0 or validating or checkpointing or \
                loop.step == options.steps:
            stop, out_of_time = loop.synchronise()
            if checkpointing:
                loop.save_state()

        # early stopping: the best weights have not changed for `patience` validations
        if validating and options.patience and loop.best.since >= options.patience:
            stopped_early = True
            break

    return loop.finish(validate, out_of_time, stopped_early)
