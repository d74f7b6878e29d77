"""The layout of a variable on disk and in memory: which dimension is time, which two are the
grid, and the moves between the on-disk order (any order, singleton dims included) and the
internal (time, y, x); :func:`to_disk` is the inverse of :func:`to_internal`.

Time is found by name, CF ``axis``, ``standard_name`` or ``units``; the grid's dims by name,
``axis`` or ``standard_name``; any further dimension of more than one element must be chosen
(``--sel depth=0``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli.errors import CtxqError

TIME_NAMES = {"time", "t", "times", "time_counter", "date", "valid_time", "day", "month", "year"}


def is_time(name: str, attrs: dict[str, Any] | None = None) -> bool:
    """Whether a dimension denotes time: by its name, or its coordinate's axis, standard_name
    or units ('days since ...')."""
    if name.lower() in TIME_NAMES:
        return True
    attrs = attrs or {}
    return (str(attrs.get("axis", "")).upper() == "T" or attrs.get("standard_name") == "time"
            or " since " in str(attrs.get("units", "")))


def time_axis_of(label: Path, var: str, dims: tuple[str, ...], shape: tuple[int, ...],
                 attrs_of: dict[str, dict[str, Any]] | None = None) -> int | None:
    """The axis of time among ``dims`` (None for one 2-D frame); the other dimensions longer
    than one must be exactly the grid's two."""
    attrs_of = attrs_of or {}
    time_axes = [i for i, d in enumerate(dims) if is_time(d, attrs_of.get(d))]
    if len(time_axes) > 1:
        raise CtxqError(f"{label}: variable '{var}' has several time dims {dims}")
    big = [i for i, n in enumerate(shape) if n > 1]
    if time_axes:
        time_axis = time_axes[0]
    elif len(big) == 3:
        time_axis = big[0]     # an unnamed leading dimension is time, as in (t, y, x) arrays
    else:
        time_axis = None
    space = [i for i in big if i != time_axis]
    if len(space) == 2:
        return time_axis
    names = ", ".join(f"{d}={n}" for d, n in zip(dims, shape))
    if len(space) > 2:
        extra = [dims[i] for i in space if not _is_horizontal(dims[i], attrs_of.get(dims[i]))]
        extra = extra or [dims[i] for i in space[:-2]]
        raise CtxqError(f"{label}: variable '{var}' has dims ({names}); choose one element of "
                        f"'{extra[0]}' with --sel {extra[0]}=VALUE or --isel {extra[0]}=INDEX")
    raise CtxqError(f"{label}: variable '{var}' has dims ({names}); expected (time, y, x) "
                    "in any order, or (y, x), plus optional singleton dims")


HORIZONTAL_NAMES = {"lat", "latitude", "y", "lon", "longitude", "x", "nav_lat", "nav_lon",
                    "rlat", "rlon", "ni", "nj", "i", "j", "row", "col", "column"}


def _is_horizontal(name: str, attrs: dict[str, Any] | None) -> bool:
    """Whether a dimension is one of the grid's two, by name, axis or standard_name."""
    attrs = attrs or {}
    sn = str(attrs.get("standard_name", ""))
    return (name.lower() in HORIZONTAL_NAMES or str(attrs.get("axis", "")).upper() in "XY"
            and bool(attrs.get("axis")) or sn in ("latitude", "longitude") or
            sn.startswith(("projection_", "grid_lat", "grid_lon")))


def to_internal(array: np.ndarray, time_axis: int | None) -> np.ndarray:
    """An on-disk array as (T, H, W): time first, singletons squeezed."""
    if time_axis is None:
        return array.reshape([n for n in array.shape if n > 1])[None]
    moved = np.moveaxis(array, time_axis, 0)
    return moved.reshape(moved.shape[0], *[n for n in moved.shape[1:] if n > 1])


def to_disk(values: np.ndarray, shape: tuple[int, ...], time_axis: int | None) -> np.ndarray:
    """Internal (T, H, W) values in the on-disk ``shape`` (with T frames): the inverse of
    :func:`to_internal`."""
    if time_axis is None:
        return values[0].reshape(shape)
    moved = list(shape)
    moved.pop(time_axis)
    return np.moveaxis(values.reshape(values.shape[0], *moved), 0, time_axis)
