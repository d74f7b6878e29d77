"""Variables as stored in NetCDF and NPZ files: opening, raw reads and CF decoding, each
failure a one-line error naming the file and the variable. Automatic decoding is off
everywhere (ctxq decodes itself, :mod:`ctxq_cli.cf`), so observed values come back bit for bit;
NPZ files are never unpickled."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli.cf import decode
from ctxq_cli.errors import CtxqError
from ctxq_cli.record import file_format


@contextlib.contextmanager
def open_netcdf(path: Path) -> Iterator[Any]:
    """Open a NetCDF file read-only with automatic decoding off (ctxq decodes itself)."""
    import netCDF4

    try:
        ds = netCDF4.Dataset(path, "r")
    except OSError as exc:
        raise CtxqError(f"{path}: cannot be read as NetCDF ({exc.strerror or exc})") from None
    try:
        ds.set_auto_maskandscale(False)
        yield ds
    finally:
        ds.close()


def read_values(path: Path, var: Any, where: tuple[Any, ...] = (...,)) -> np.ndarray:
    """Values of a netCDF4 variable (those at ``where``), raw; a read failure is one line."""
    try:
        return var[where]
    except (RuntimeError, OSError, ValueError, IndexError) as exc:
        raise CtxqError(f"{path}: variable '{var.name}' cannot be read ({exc})") from None


def nc_attrs(var: Any) -> dict[str, Any]:
    """All attributes of a netCDF4 variable or dataset."""
    return {k: var.getncattr(k) for k in var.ncattrs()}


def decode_variable(path: Path, name: str, raw: Any, attrs: dict[str, Any],
            default_fill: bool = True) -> Any:
    """CF-decode one variable, turning unusable content into a one-line error."""
    try:
        return decode(np.asarray(raw), attrs, default_fill)
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CtxqError(f"{path}: variable '{name}' cannot be decoded ({exc})") from None


def load_npz(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an NPZ file, never unpickling."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (ValueError, OSError, EOFError, KeyError) as exc:
        raise CtxqError(f"{path}: cannot be read as NPZ ({exc})") from None
    arrays = {k: v for k, v in arrays.items() if isinstance(v, np.ndarray)}
    if not arrays:
        raise CtxqError(f"{path}: a zip file without NumPy arrays, not an NPZ file")
    return arrays


def npz_dims(ndim: int) -> tuple[str, ...]:
    """Dimension names for an NPZ array: (time, y, x) or (y, x); generic beyond."""
    return ("time", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"dim{i}" for i in range(ndim))


@dataclass
class RawVariable:
    """One variable as stored: raw values, attributes and dimension names."""

    values: np.ndarray
    attrs: dict[str, Any]
    dims: tuple[str, ...]
    default_fill: bool       # netCDF default fill applies (not for NPZ)


def read_raw(path: Path, names: Sequence[str]) -> tuple[dict[str, RawVariable], list[str]]:
    """The named variables that exist in a NetCDF or NPZ file, and all names available."""
    if file_format(path) == "npz":
        arrays = load_npz(path)
        found = {n: RawVariable(arrays[n], {}, npz_dims(arrays[n].ndim), False)
                 for n in names if n in arrays}
        return found, sorted(arrays)
    with open_netcdf(path) as ds:
        found = {n: RawVariable(read_values(path, ds.variables[n]), nc_attrs(ds.variables[n]),
                                tuple(ds.variables[n].dimensions), True)
                 for n in names if n in ds.variables}
        return found, sorted(ds.variables)
