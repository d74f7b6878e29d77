"""A training run's life: checking its paths, starting alone or as one of torchrun's
processes, keeping the log, stopping cleanly on a signal, resuming, and tidying up."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ctxq_cli import api
from ctxq_cli.errors import CtxqError, Interrupted

if TYPE_CHECKING:    # torch is imported only when a run starts
    from ctxq_cli.reading import ReadOptions
    from ctxq_cli.train import MaskPriorOptions, TrainOptions

log = logging.getLogger(__name__)


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """Turn SIGTERM and SIGINT into a request to stop cleanly, polled by the training loop."""
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def note(signum: int, frame: object) -> None:
        received.append(signum)

    handled = (signal.SIGTERM, signal.SIGINT)
    previous = {s: signal.signal(s, note) for s in handled}
    try:
        yield lambda: bool(received)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        log.info("stopped on %s", signal.Signals(received[0]).name)


@contextlib.contextmanager
def training(output: Path, log_file: Path | None, resume: bool, overwrite: bool,
             inputs: list[Path | None], device: str, progress: bool):
    """Set up a training run, alone or as one of torchrun's processes.

    Yields (run control, log file or None, device, show progress). Only rank 0 keeps the log,
    shows progress and reports; the others speak only of warnings and errors.
    """
    from ctxq_cli import distributed
    from ctxq_cli.loop import open_log

    group, dev = distributed.start(api.device(device))
    new_log = None      # a log this run created, removed if the run fails before writing to it
    try:
        if not group.main:
            logging.getLogger().setLevel(logging.WARNING)
        control, log_path, append = prepare(output, log_file, resume, overwrite, inputs)
        control.group = group
        logs = open_log(log_path, append) if group.main else contextlib.nullcontext()
        new_log = log_path if group.main and not append else None
        with logs as log_io, stop_requests() as stop:
            control.should_stop = stop
            yield control, log_io, dev, progress and group.main
    except Interrupted:
        distributed.finish(group)      # a stop every rank agreed on: they all get here
        raise
    except BaseException:
        if new_log is not None and new_log.exists() and new_log.stat().st_size == 0:
            new_log.unlink()           # bad input found after the log was opened
        distributed.finish(group, completed=False)
        raise
    distributed.finish(group)


def prepare(output: Path, log_file: Path | None, resume: bool, overwrite: bool,
            inputs: list[Path | None]):
    """Check the output, log and state paths; return the run control, log path, log append."""
    from ctxq_cli import safe_output
    from ctxq_cli.loop import RunControl
    from ctxq_cli.resume import previous_path, state_path

    safe_output.check_output(output, overwrite, inputs)
    log_path = log_file or output.with_suffix(".log.jsonl")
    state = state_path(output)
    for path in (log_path, state, previous_path(state)):
        safe_output.check_output(path, True, inputs)
    if not resume and not overwrite and state.exists():
        raise CtxqError(f"{state}: a resumable state of an earlier run exists; add --resume to "
                        "continue it or --overwrite to start afresh")
    append = resume and (state.exists() or previous_path(state).exists())
    return RunControl(state_path=state, resume=resume), log_path, append


@dataclass(frozen=True)
class Run:
    """Where a training run writes (the checkpoint, its log), whether it resumes or replaces,
    on which device, and the command recorded in the checkpoint."""

    output: Path
    log_file: Path | None = None
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    progress: bool = True
    command: str = ""
    memory_gb: float = api.MEMORY_GB   # frames (and smoother states) held in memory, each


def train(data: Any, read: ReadOptions, options: TrainOptions | MaskPriorOptions, run: Run,
          mask_prior: Path | None = None) -> None:
    """Train a denoiser (``TrainOptions``) or a mask prior (``MaskPriorOptions``) on a record
    of files, as one run: paths checked first, resumable, alone or under torchrun."""
    from ctxq_cli.model import MaskPriorModel
    from ctxq_cli.record import expand
    from ctxq_cli.train import MaskPriorOptions

    inputs = [*expand(data), read.mask, read.domain, mask_prior]
    with training(run.output, run.log_file, run.resume, run.overwrite, inputs, run.device,
                  run.progress) as (control, log_io, dev, progress):
        rec = api.read_training_record(data, read, run.memory_gb)
        if isinstance(options, MaskPriorOptions):
            model = api.train_mask_prior_field(rec, options, dev, log_io, progress, control)
        else:
            prior = None if mask_prior is None else MaskPriorModel.load(mask_prior)
            model = api.train_field(rec, options, dev, log_io, progress, control, prior)
        save(control, model, run.output, run.command)


def save(control, model, output: Path, command: str) -> None:
    """Save the trained model (the main process only), report it and drop the finished run's
    resumable states."""
    from ctxq_cli.resume import remove_states

    if not control.group.main:
        return
    model.training["command"] = command
    model.save(output)
    log.info("wrote %s", output)
    remove_states(control.state_path)


