"""Output files that are safe to write: checked before any work (never an input, never an
existing file without ``--overwrite``), written to a temporary file beside the target and
moved into place only when complete, with a failed write reported in one line."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from safetensors import SafetensorError

from ctxq_cli.errors import CtxqError


def check_output(path: Path | str, overwrite: bool, inputs: Sequence[Path | str | None]) -> Path:
    """Validate an output path before any work: never an input, exists only with --overwrite."""
    path = Path(path)
    for inp in inputs:
        if inp is not None and Path(inp).exists() and path.exists() and \
                path.resolve() == Path(inp).resolve():
            raise CtxqError(f"{path}: output would overwrite an input file")
    if path.exists() and not overwrite:
        raise CtxqError(f"{path}: output exists (use --overwrite to replace it)")
    parent = path.resolve().parent
    if not parent.is_dir():
        raise CtxqError(f"{path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CtxqError(f"{path}: directory {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path: Path | str, writes_only: bool = True) -> Iterator[Path]:
    """A temporary path beside ``path`` that replaces it only if the block succeeds.

    With ``writes_only`` every OSError or RuntimeError of the block is a write failure and
    becomes one line; a block that also computes (``writes_only=False``) marks its writes with
    :func:`write_errors` instead, so that, say, running out of GPU memory is not reported as a
    full disk.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise CtxqError(f"{path}: cannot write ({exc.strerror})") from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        with write_errors(path) if writes_only else contextlib.nullcontext():
            yield Path(tmp)
        with write_errors(path):
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would hide outputs from the group
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextlib.contextmanager
def write_errors(path: Path) -> Iterator[None]:
    """Report a failed write to ``path`` in one line."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as exc:
        # netCDF4 and safetensors report a full disk as RuntimeError / SafetensorError
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        raise CtxqError(f"{path}: cannot write ({reason}); nothing was written (is the disk "
                        "full or the location read-only?)") from None
