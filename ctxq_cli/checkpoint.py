"""Checkpoints: safetensors tensors plus one JSON document in the metadata, never pickle.

The JSON under the metadata key ``ctxq`` holds everything needed to rebuild and use the
model: its kind, network config, noise schedule, normalisation, variables, window, partition,
grid, ctxq version and training step. Extra tensors (the domain, a mask pool) sit beside the
weights under names that start with ``extra.``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ctxq_cli import __version__
from ctxq_cli.errors import CtxqError
from ctxq_cli.safe_output import atomic_path

METADATA_KEY = "ctxq"
EXTRA = "extra."
FORMAT_VERSION = 1


@dataclass
class Checkpoint:
    """Weights, extra tensors and the JSON metadata of a saved model."""

    meta: dict[str, Any]
    weights: dict[str, torch.Tensor]
    extras: dict[str, torch.Tensor]


def save(path: Path | str, meta: dict[str, Any], weights: dict[str, torch.Tensor],
         extras: dict[str, torch.Tensor] | None = None) -> None:
    """Write a checkpoint atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in weights.items()}
    for name, tensor in (extras or {}).items():
        tensors[EXTRA + name] = tensor.detach().cpu().contiguous()
    doc = {"format": FORMAT_VERSION, "ctxq_version": __version__, **meta}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(doc)})


def load(path: Path | str, kind: str) -> Checkpoint:
    """Read a checkpoint of the given kind ('denoiser' or 'mask-prior'), validating it."""
    path = Path(path)
    if not path.is_file():
        raise CtxqError(f"{path}: no such checkpoint (train one with "
                        f"'ctxq train-{kind}' or pass --checkpoint)")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CtxqError(f"{path}: not a readable safetensors checkpoint ({exc})") from None
    if raw is None:
        raise CtxqError(f"{path}: safetensors file without ctxq metadata; not a ctxq checkpoint")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        meta = None
    if not isinstance(meta, dict):
        raise CtxqError(f"{path}: checkpoint metadata is corrupted")
    if meta.get("kind") != kind:
        raise CtxqError(f"{path}: checkpoint holds a {meta.get('kind', 'unknown')} model, "
                        f"not a {kind}")
    if meta.get("format") != FORMAT_VERSION:
        raise CtxqError(f"{path}: checkpoint format {meta.get('format')} is not supported by "
                        f"ctxq {__version__} (format {FORMAT_VERSION})")
    if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in tensors.values()):
        raise CtxqError(f"{path}: checkpoint holds NaN or infinite weights; it is corrupted")
    weights = {k: v for k, v in tensors.items() if not k.startswith(EXTRA)}
    extras = {k[len(EXTRA):]: v for k, v in tensors.items() if k.startswith(EXTRA)}
    return Checkpoint(meta=meta, weights=weights, extras=extras)
