"""Resumable training state: weights, EMA, optimiser, step and RNG states in one safetensors file.

The state is written beside the output checkpoint (``denoiser.safetensors`` →
``denoiser.resume.safetensors``) periodically and when a job is told to stop. The previous
state is kept as ``….resume.prev.safetensors`` until the new one is complete, and every write
is a temporary file renamed into place, so a crash mid-write never leaves a corrupt state: at
worst the newest is missing and the previous one is read instead.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ctxq_cli import checkpoint
from ctxq_cli.errors import CtxqError

log = logging.getLogger(__name__)

KIND = "training-state"
# Options that may change between an interrupted run and its resumption.
RESUMABLE_CHANGES = frozenset({"steps", "max_minutes", "checkpoint_every", "precision",
                               "compile", "patience"})


def state_path(output: Path) -> Path:
    """The resumable-state file that goes with a checkpoint path."""
    output = Path(output)
    stem = output.name[: -len(output.suffix)] if output.suffix else output.name
    return output.with_name(stem + ".resume.safetensors")


def previous_path(path: Path) -> Path:
    """The previous-state file kept beside a state file."""
    return path.with_name(path.name.replace(".resume.safetensors", "") + ".resume.prev.safetensors")


@dataclass
class TrainingState:
    """Everything a training loop needs to go on exactly where it stopped."""

    step: int
    progress: float                 # fraction of the run's schedule done (0 → 1)
    seconds: float                  # training time spent so far, all sessions
    loss_avg: float | None
    scores: dict[str, float]        # the last validation's (the first selects the weights)
    options: dict[str, Any]
    fingerprint: dict[str, Any]     # what the data looked like: shapes, variables, normalisation
    network: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    rng: dict[str, torch.Tensor]    # "generator" is rank 0's, "generator.<r>" rank r's
    sampler: dict[str, int] | None = None
    best: dict[str, torch.Tensor] | None = None   # EMA weights of the best validation
    best_step: int = 0
    best_val: float = float("inf")
    validations_since_best: int = 0


def _generator_key(rank: int) -> str:
    """Name of a rank's generator state in the file."""
    return "generator" if rank == 0 else f"generator.{rank}"


def capture(step: int, progress: float, seconds: float, loss_avg: float | None,
            scores: dict[str, float], options: dict[str, Any], fingerprint: dict[str, Any],
            network: nn.Module, ema: nn.Module, optimizer: torch.optim.Optimizer,
            generators: list[torch.Tensor], sampler: Any = None,
            best: dict[str, torch.Tensor] | None = None, best_step: int = 0,
            best_val: float = float("inf"), since_best: int = 0) -> TrainingState:
    """Snapshot a running loop (tensors are copied to the CPU); one generator state per rank."""
    rng = {"torch": torch.get_rng_state()}
    rng.update({_generator_key(r): g for r, g in enumerate(generators)})
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state()
    return TrainingState(step=step, progress=progress, seconds=seconds, loss_avg=loss_avg,
                         scores=scores, options=options, fingerprint=fingerprint,
                         network=_cpu(network.state_dict()), ema=_cpu(ema.state_dict()),
                         optimizer=optimizer.state_dict(), rng=rng,
                         sampler=None if sampler is None else sampler.state_dict(),
                         best=best, best_step=best_step, best_val=best_val,
                         validations_since_best=since_best)


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached CPU copies."""
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def save_state(path: Path, state: TrainingState) -> None:
    """Write ``state`` to ``path``, keeping the former state as the previous one."""
    newest, previous = path, previous_path(path)
    tensors = {f"network.{k}": v for k, v in state.network.items()}
    tensors.update({f"ema.{k}": v for k, v in state.ema.items()})
    tensors.update({f"rng.{k}": v for k, v in state.rng.items()})
    tensors.update({f"best.{k}": v for k, v in (state.best or {}).items()})
    param_state: dict[str, list[str]] = {}
    for index, entries in state.optimizer["state"].items():
        param_state[str(index)] = []
        for name, value in entries.items():
            tensor = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"optimizer.{index}.{name}"] = tensor.detach().cpu()
            param_state[str(index)].append(name)
    meta = {"kind": KIND, "step": state.step, "progress": state.progress,
            "seconds": state.seconds, "loss_avg": state.loss_avg, "scores": state.scores,
            "options": state.options, "fingerprint": state.fingerprint,
            "optimizer_groups": state.optimizer["param_groups"],
            "optimizer_state": param_state, "sampler": state.sampler,
            "best_step": state.best_step,
            "best_val": state.best_val if state.best_val != float("inf") else None,
            "validations_since_best": state.validations_since_best}
    if newest.exists():
        os.replace(newest, previous)
    checkpoint.save(newest, meta, tensors)


def load_state(path: Path) -> TrainingState | None:
    """The newest readable state at ``path`` (or its previous one); None if there is none."""
    previous = previous_path(path)
    for candidate in (path, previous):
        if not candidate.exists():
            continue
        try:
            return _read(candidate)
        except CtxqError as exc:
            log.warning("%s", exc)
            log.warning("falling back to the previous resumable state")
    return None


def _read(path: Path) -> TrainingState:
    """Decode one state file."""
    ckpt = checkpoint.load(path, KIND)
    meta, tensors = ckpt.meta, ckpt.weights
    try:
        def group(prefix: str) -> dict[str, torch.Tensor]:
            return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}

        opt_state = {int(i): {name: tensors[f"optimizer.{i}.{name}"] for name in names}
                     for i, names in meta["optimizer_state"].items()}
        return TrainingState(
            step=int(meta["step"]), progress=float(meta["progress"]),
            seconds=float(meta["seconds"]), loss_avg=meta["loss_avg"],
            scores=dict(meta["scores"]), options=dict(meta["options"]),
            fingerprint=dict(meta["fingerprint"]), network=group("network."),
            ema=group("ema."),
            optimizer={"state": opt_state, "param_groups": meta["optimizer_groups"]},
            rng=group("rng."), sampler=meta.get("sampler"), best=group("best.") or None,
            best_step=int(meta.get("best_step", 0)),
            best_val=float("inf") if meta.get("best_val") is None else float(meta["best_val"]),
            validations_since_best=int(meta.get("validations_since_best", 0)))
    except (KeyError, TypeError, ValueError) as exc:
        raise CtxqError(f"{path}: resumable state is corrupted ({type(exc).__name__})") from None


def check_compatible(path: Path, state: TrainingState, options: dict[str, Any],
                     fingerprint: dict[str, Any]) -> None:
    """Refuse to resume with other data or other options than the interrupted run."""
    changed = sorted(k for k in set(options) | set(state.options)
                     if k not in RESUMABLE_CHANGES
                     and _jsonish(options.get(k)) != _jsonish(state.options.get(k)))
    if changed:
        first = changed[0]
        raise CtxqError(f"{path}: cannot resume: option {first} was "
                        f"{state.options.get(first)!r}, now {options.get(first)!r} (only "
                        f"{', '.join(sorted(RESUMABLE_CHANGES))} may change; use --overwrite to "
                        f"start afresh)")
    before, now = state.fingerprint.get("processes", 1), fingerprint.get("processes", 1)
    if before != now:
        raise CtxqError(f"{path}: cannot resume: the run was interrupted with {before} "
                        f"process(es), now {now}; resume with the same number of processes")
    for key in sorted(set(fingerprint) | set(state.fingerprint)):
        if _jsonish(fingerprint.get(key)) != _jsonish(state.fingerprint.get(key)):
            raise CtxqError(f"{path}: cannot resume: the data differ from the interrupted "
                            f"run's ({key}); use --overwrite to start afresh")


def _jsonish(value: Any) -> Any:
    """Tuples as lists, so options compare equal after a JSON round trip."""
    if isinstance(value, dict):
        return {k: _jsonish(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_jsonish(v) for v in value]
    if isinstance(value, float):
        return round(value, 12)
    return value


def restore(state: TrainingState, network: nn.Module, ema: nn.Module,
            optimizer: torch.optim.Optimizer, generator: torch.Generator, rank: int = 0,
            sampler: Any = None) -> None:
    """Load a state into a freshly built loop (this rank's generator, the shared sampler)."""
    network.load_state_dict(state.network)
    ema.load_state_dict(state.ema)
    optimizer.load_state_dict(state.optimizer)
    torch.set_rng_state(state.rng["torch"])
    generator.set_state(state.rng[_generator_key(rank)])
    if sampler is not None and state.sampler is not None:
        sampler.load_state_dict(state.sampler)
    if "cuda" in state.rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(state.rng["cuda"])


def remove_states(path: Path) -> None:
    """Delete a finished run's resumable states."""
    for candidate in (path, previous_path(path)):
        candidate.unlink(missing_ok=True)
