"""Reading fields, observation masks and domains from NetCDF/zarr/NPZ; writing outputs
atomically.

A field is a stack of C variables on a (time, y, x) grid, held as ``values[t, c, y, x]`` with
missing cells set to 0 and a boolean ``observed[t, c, y, x]``; NaN never leaves this module.
Dimensions may carry any names (time/t/Time, lat/latitude/y/nav_lat, lon/longitude/x, ...) and
come in any order (time first or last); singleton dimensions (a level chosen with ``--sel``,
say) are squeezed and restored on writing. A 2-D (y, x) variable is one frame. A record of many
files is read as one field (:mod:`ctxq_cli.record`).

The observation mask is the data's own missing cells (CF fill values, NaN, inf, out of the
valid range; see ``ctxq_cli.cf``), intersected with ``--mask FILE`` when given. The domain is
the set of grid cells that may be filled and scored: ``--domain FILE`` when given, else every
cell observed at least once in the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError

from ctxq_cli import flags, record
from ctxq_cli.cf import PACKING_ATTRS, Encoding, decode, encode
from ctxq_cli.errors import CtxqError
from ctxq_cli.record import file_format

log = logging.getLogger(__name__)

MASK_VARIABLE = record.MASK_VARIABLE
DOMAIN_VARIABLES = ("domain", "mask", "lsm", "land_sea_mask", "sea_mask", "valid")


@dataclass
class Coordinate:
    """A coordinate variable copied through to outputs unchanged."""

    name: str
    dims: tuple[str, ...]
    values: np.ndarray
    attrs: dict[str, Any]


@dataclass
class FilePart:
    """One input file of a record: its frames, own time coordinate and global attributes, so
    that an output per input file can be written exactly like it."""

    path: Path
    frames: int
    time: Coordinate | None = None
    global_attrs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Field:
    """Variables on a shared (time, y, x) grid with their observation mask and metadata."""

    path: Path
    format: str                      # "netcdf" or "npz"
    names: list[str]
    values: np.ndarray               # (T, C, H, W) float32 (float64 input: float64), 0 = missing
    observed: np.ndarray             # (T, C, H, W) bool
    dims: tuple[str, ...] = ()       # the variables' dims on disk, singletons included
    shape: tuple[int, ...] = ()      # the variables' shape on disk
    time_axis: int | None = 0        # axis of time in ``dims``; None for a 2-D variable
    var_attrs: list[dict[str, Any]] = field(default_factory=list)
    coords: list[Coordinate] = field(default_factory=list)
    global_attrs: dict[str, Any] = field(default_factory=dict)
    unlimited: set[str] = field(default_factory=set)
    parts: list[FilePart] = field(default_factory=list)     # input files, in time order

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the grid."""
        return self.values.shape[-2], self.values.shape[-1]

    @property
    def grid_dims(self) -> tuple[str, ...]:
        """Names of the (y, x) dims on disk."""
        return tuple(d for i, (d, n) in enumerate(zip(self.dims, self.shape))
                     if n > 1 and i != self.time_axis)

    @property
    def frames(self) -> int:
        """Number of time steps (on disk, whether or not they have been read)."""
        if self.time_axis is None or not self.shape:
            return self.values.shape[0]
        return self.shape[self.time_axis]

    def times(self) -> tuple[np.ndarray | None, str]:
        """The frames' times in days and "days", from the CF time coordinate (any calendar);
        (None, "frames") when there is none to decode (frames are then one unit apart)."""
        if self.time_axis is None or not self.dims:
            return None, "frames"
        name = self.dims[self.time_axis]
        coord = next((c for c in self.coords if c.name == name and c.dims == (name,)), None)
        if coord is None or " since " not in str(coord.attrs.get("units", "")):
            return None, "frames"
        days = decode_days(self.path, coord)
        back = np.flatnonzero(np.diff(days) <= 0)
        if len(back):
            raise CtxqError(f"{self.path}: time coordinate '{name}' does not increase at frame "
                            f"{back[0] + 1} ({days[back[0]]:g} then {days[back[0] + 1]:g} days); "
                            "frames must be in time order without repeats")
        return days, "days"

    def describe(self) -> str:
        """A short human description: names, shape and observed fraction."""
        t, c, h, w = self.values.shape
        frac = self.observed.mean() if self.observed.size else 0.0
        return f"{', '.join(self.names)}: {t} frames of {h}×{w}, {100 * frac:.1f} % observed"


def decode_days(path: Path, coord: Coordinate) -> np.ndarray:
    """A CF time coordinate in days since its own reference date, in its own calendar."""
    import cftime

    units = str(coord.attrs["units"])
    calendar = str(coord.attrs.get("calendar", "standard"))
    reference = "days since " + units.split(" since ", 1)[1]
    try:
        values = np.asarray(coord.values, dtype=np.float64)
        dates = cftime.num2date(values, units, calendar)
        days = np.asarray(cftime.date2num(dates, reference, calendar), dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise CtxqError(f"{path}: time coordinate '{coord.name}' cannot be decoded "
                        f"(units '{units}', calendar '{calendar}': {exc})") from None
    if not np.isfinite(days).all():
        raise CtxqError(f"{path}: time coordinate '{coord.name}' has missing values")
    return days


def describe_times(times: np.ndarray | None, unit: str) -> str:
    """One line on a record's sampling in time: its step and irregularities."""
    if times is None or len(times) < 2:
        return "no time coordinate: frames are taken one unit apart"
    steps = np.diff(times)
    step = float(np.median(steps))
    irregular = int(np.sum(~np.isclose(steps, step, rtol=1e-3)))
    return (f"time step {step:.4g} {unit}" + (f", {irregular} irregular step(s) (from "
                                               f"{steps.min():.4g} to {steps.max():.4g} {unit})"
                                               if irregular else ""))


# ----------------------------------------------------------------------------- reading

@contextlib.contextmanager
def _open_netcdf(path: Path) -> Iterator[Any]:
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


def _read(path: Path, var: Any, where: tuple[Any, ...] = (...,)) -> np.ndarray:
    """Values of a netCDF4 variable (those at ``where``), raw; a read failure is one line."""
    try:
        return var[where]
    except (RuntimeError, OSError, ValueError, IndexError) as exc:
        raise CtxqError(f"{path}: variable '{var.name}' cannot be read ({exc})") from None


def _attrs(var: Any) -> dict[str, Any]:
    """All attributes of a netCDF4 variable or dataset."""
    return {k: var.getncattr(k) for k in var.ncattrs()}


def choose_variables(path: Path, available: dict[str, int], requested: Sequence[str] | None,
                     default: Sequence[str] = (), present: Sequence[str] = ()) -> list[str]:
    """The variables to read: those requested, the defaults if all exist, or the only candidate.

    ``available`` maps gridded data variables to their rank; ``present`` names everything else
    in the file, so that asking for a coordinate or the mask gets a precise answer.
    """
    if requested:
        missing = [v for v in requested if v not in available]
        if missing and missing[0] in present:
            raise CtxqError(f"{path}: variable '{missing[0]}' is not a gridded data variable "
                            f"(data variables: {', '.join(sorted(available)) or 'none'})")
        if missing:
            listing = ", ".join(sorted(available)) or "none"
            raise CtxqError(f"{path}: no variable '{missing[0]}' (available: {listing})")
        return list(dict.fromkeys(requested))
    if default and all(d in available for d in default):
        return list(default)
    candidates = [n for n, ndim in available.items() if ndim >= 3]
    if len(candidates) == 1:
        return candidates
    if not candidates:
        twod = [n for n, ndim in available.items() if ndim == 2]
        if len(twod) == 1:
            return twod
        listing = ", ".join(sorted(available)) or "none"
        raise CtxqError(f"{path}: no data variable with (time, y, x) dims; use --var "
                        f"(available: {listing})")
    raise CtxqError(f"{path}: several data variables, choose with --var: "
                    f"{', '.join(sorted(candidates))}")


def _decode(path: Path, name: str, raw: Any, attrs: dict[str, Any],
            default_fill: bool = True) -> Any:
    """CF-decode one variable, turning unusable content into a one-line error."""
    try:
        return decode(np.asarray(raw), attrs, default_fill)
    except (TypeError, ValueError, RuntimeError, OSError) as exc:
        raise CtxqError(f"{path}: variable '{name}' cannot be decoded ({exc})") from None


@dataclass
class FieldSource:
    """A field's metadata (``template``, with no frames) and its frames read range by range.

    ``read(a, b)`` returns values and observed (b − a, C, H, W) of frames [a, b), with the
    ``--mask`` file applied; a NetCDF file is read only where asked, so memory follows the
    range, not the file.
    """

    template: Field
    frames: int
    reader: Callable[[int, int], tuple[np.ndarray, np.ndarray]]
    mask: Callable[[int, int], np.ndarray] | None = None
    mask_path: Path | None = None
    quality: flags.Quality | None = None
    rejected: np.ndarray | None = None   # per frame read: observations failing ``quality``

    @property
    def grid(self) -> tuple[int, int]:
        """(H, W) of the grid."""
        return self.template.grid

    def describe_quality(self) -> str | None:
        """'1234 observations with quality_level below 4 treated as missing' once read."""
        if self.quality is None or self.rejected is None:
            return None
        return (f"{int(self.rejected.sum())} observations with {self.quality.variable} below "
                f"{self.quality.minimum:g} treated as missing")

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Values (0 where missing) and observed cells of frames [a, b)."""
        values, observed = self.reader(a, b)
        if self.mask is not None:
            part = Field(self.template.path, self.template.format, self.template.names, values,
                         observed)
            apply_mask(part, self.mask(a, b), self.mask_path)
            values, observed = part.values, part.observed
        return values, observed


def record_source(parts: list[record.Part], requested: Sequence[str] | None,
                  default: Sequence[str], quality: flags.Quality | None = None,
                  selection: record.Selection | None = None) -> FieldSource:
    """Metadata of the chosen variables of a record's parts, their frames read on demand
    (observations below ``quality`` are missing)."""
    first = parts[0]
    if selection:
        for part in parts:
            part.select(selection)
    ds = first.dataset
    available = {n: r for n, r in record.data_variables(ds, bool(requested)).items()
                 if quality is None or n != quality.variable}
    names = choose_variables(first.label, available, requested, default,
                             list(map(str, ds.variables)))
    var0 = ds.variables[names[0]]
    dims, shape = tuple(map(str, var0.dims)), tuple(var0.shape)
    dim_attrs = {d: dict(ds.variables[d].attrs) for d in dims if d in ds.variables}
    time_axis = record.time_axis_of(first.label, names[0], dims, shape, dim_attrs)
    checked = names + ([quality.variable] if quality is not None else [])
    for part in parts:
        _check_part(part, checked, dims, shape, time_axis, first, quality)
    time_dim = dims[time_axis] if time_axis is not None else None
    for part in parts:
        part.frames = part.dataset.sizes[time_dim] if time_dim else 1
        part.time = record.part_time(part, time_dim) if time_dim else None
    if len(parts) > 1 and time_dim is None:
        raise CtxqError(f"{first.label}: variable '{names[0]}' has no time dimension; "
                        "several files are joined along time")
    parts = record.order_parts(parts, time_dim or "")
    frames = sum(p.frames for p in parts)
    if len(parts) > 1:
        log.info("%d files joined along time: %s … %s (%d frames)", len(parts), parts[0].label,
                 parts[-1].label, frames)
    attrs = [first.variable_attrs(n) for n in names]
    coords = _record_coords(parts, dims, attrs, time_dim)
    if len(parts) > 1:
        _check_same_grid(parts, coords, time_dim)
    full_shape = tuple(frames if i == time_axis else n for i, n in enumerate(shape))
    unlimited = set(ds.encoding.get("unlimited_dims", ())) & set(dims)
    if len(parts) > 1 and time_dim:
        unlimited.add(time_dim)
    dtype = np.result_type(*(_decoded_dtype(ds.variables[n].dtype) for n in names))
    grid = tuple(n for i, n in enumerate(shape) if n > 1 and i != time_axis)
    template = Field(path=first.label if len(parts) == 1 else Path(f"{first.label} … "
                                                                  f"{parts[-1].label}"),
                     format="netcdf", names=names,
                     values=np.zeros((0, len(names), *grid), dtype),
                     observed=np.zeros((0, len(names), *grid), bool), dims=dims,
                     shape=full_shape, time_axis=time_axis,
                     var_attrs=[record.without_packing(a) for a in attrs], coords=coords,
                     global_attrs=dict(ds.attrs), unlimited=unlimited,
                     parts=[_file_part(p, time_dim) for p in parts])
    if selection:
        template.global_attrs["ctxq_selection"] = selection.describe()
    reported: set[str] = set()   # variables whose out-of-range values were reported
    source = FieldSource(template=template, frames=frames, reader=lambda a, b: (None, None),
                         quality=quality, rejected=np.zeros(frames, np.int64))

    def read_part(part: record.Part, a: int, b: int,
                  whole: bool) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b) of the record that lie in ``part``."""
        where: tuple[Any, ...] = (...,)
        if time_axis is not None:
            where = tuple(slice(a - part.offset, b - part.offset) if i == time_axis
                          else slice(None) for i in range(len(dims)))
        with part.opened() as ds:
            raw = {n: part.read(n, where, ds) for n in checked}
        trusted, failing = None, 0
        if quality is not None:
            levels = part.decode(quality.variable, raw[quality.variable])
            trusted = quality.good(levels.values, levels.missing)
        values, missing = [], []
        for name in names:
            dec = part.decode(name, raw[name])
            if trusted is not None:
                bad = record.to_internal(~dec.missing & ~trusted, time_axis)
                failing = failing + bad.reshape(len(bad), -1).sum(axis=1)
                dec.missing |= ~trusted
                dec.values[~trusted] = 0
            values.append(record.to_internal(dec.values, time_axis))
            missing.append(record.to_internal(dec.missing, time_axis))
            if dec.counts.get("out_of_range") and name not in reported:
                reported.add(name)    # once per variable, not once per chunk
                log.info("%s: %s: %d values outside the valid range%s treated as missing%s",
                         part.label, name, dec.counts["out_of_range"],
                         "" if whole else f" in frames {a}–{b - 1}",
                         "" if whole else " (later frames are not reported)")
        if quality is not None:
            assert source.rejected is not None
            source.rejected[a:b] = failing     # assigned, not added: frames may be read twice
        return np.stack(values, axis=1).astype(dtype, copy=False), ~np.stack(missing, axis=1)

    def read(a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        whole = (a, b) == (0, frames) and len(parts) == 1
        pieces = [read_part(p, max(a, p.offset), min(b, p.offset + p.frames), whole)
                  for p in parts if p.offset < b and a < p.offset + p.frames]
        if len(pieces) == 1:
            return pieces[0]
        return (np.concatenate([v for v, _ in pieces]), np.concatenate([o for _, o in pieces]))

    source.reader = read
    for part in parts:
        part.close()
    return source


def _file_part(part: record.Part, time_dim: str | None) -> FilePart:
    """What an output written for this part alone needs to know of it."""
    time = None
    if part.time is not None and time_dim is not None:
        time = Coordinate(time_dim, (time_dim,), part.time.values,
                          dict(part.dataset.variables[time_dim].attrs))
    return FilePart(part.label, part.frames, time, dict(part.dataset.attrs))


def _check_part(part: record.Part, names: Sequence[str], dims: tuple[str, ...],
                shape: tuple[int, ...], time_axis: int | None, first: record.Part,
                quality: flags.Quality | None) -> None:
    """Every variable of every part on the first variable's dims (time may differ in length)."""
    ds = part.dataset
    for name in names:
        if name not in ds.variables:
            what = "quality variable" if quality and name == quality.variable else "variable"
            raise CtxqError(f"{part.label}: no {what} '{name}' (variables: "
                            f"{', '.join(sorted(map(str, ds.variables)))})")
        var = ds.variables[name]
        if tuple(map(str, var.dims)) != dims:
            raise CtxqError(f"{part.label}: variable '{name}' has dims {tuple(var.dims)}, "
                            f"unlike '{names[0]}' in {first.label} {dims}; variables must "
                            "share a grid")
        other = tuple(n for i, n in enumerate(var.shape) if i != time_axis)
        if other != tuple(n for i, n in enumerate(shape) if i != time_axis):
            raise CtxqError(f"{part.label}: variable '{name}' has shape {tuple(var.shape)}, "
                            f"unlike {first.label} {shape}; files must share a grid")


def _record_coords(parts: list[record.Part], dims: tuple[str, ...],
                   attrs: Sequence[dict[str, Any]], time_dim: str | None) -> list[Coordinate]:
    """Coordinates to copy to outputs; those along time joined over the parts (the time
    coordinate in the first part's units)."""
    first = parts[0].dataset
    wanted = set(dims).union(*(record.referenced(a) for a in attrs))
    coords = []
    for name, var in first.variables.items():
        vdims = tuple(map(str, var.dims))
        if name not in wanted or not set(vdims) <= set(dims) or var.dtype.kind not in "iufbM":
            continue
        if time_dim in vdims and len(parts) > 1:
            if name == time_dim and parts[0].time is not None:
                values = np.concatenate([p.time.expressed_in(parts[0].time) for p in parts
                                         if p.time is not None])
            else:
                axis = vdims.index(time_dim)
                values = np.concatenate([p.read(name, (...,), p.dataset)
                                         for p in parts],
                                        axis=axis)
        else:
            values = parts[0].read(name, (...,), parts[0].dataset)
        coords.append(Coordinate(str(name), vdims, values, dict(var.attrs)))
    return coords


def _check_same_grid(parts: list[record.Part], coords: list[Coordinate],
                     time_dim: str | None) -> None:
    """Every part's coordinates off the time axis equal the first part's."""
    for coord in coords:
        if time_dim in coord.dims:
            continue
        for part in parts[1:]:
            if coord.name not in part.dataset.variables:
                raise CtxqError(f"{part.label}: no coordinate '{coord.name}', unlike "
                                f"{parts[0].label}")
            other = part.read(coord.name, (...,), part.dataset)
            if other.shape != coord.values.shape or not np.array_equal(
                    other, coord.values, equal_nan=other.dtype.kind == "f"):
                raise CtxqError(f"{part.label}: coordinate '{coord.name}' differs from "
                                f"{parts[0].label}; files must share a grid")


def _decoded_dtype(dtype: np.dtype) -> np.dtype:
    """float64 for double variables, else float32 (what ``cf.decode`` gives)."""
    return np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)



def _load_npz(path: Path) -> dict[str, np.ndarray]:
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


def _npz_dims(ndim: int) -> tuple[str, ...]:
    """Dimension names for an NPZ array: (time, y, x) or (y, x); generic beyond."""
    return ("time", "y", "x")[-ndim:] if ndim <= 3 else tuple(f"dim{i}" for i in range(ndim))


def _read_npz(path: Path, requested: Sequence[str] | None, default: Sequence[str]) -> Field:
    """Read an NPZ file with key ``data`` (or the chosen keys) and an optional ``mask``."""
    arrays = _load_npz(path)
    available = {k: a.ndim for k, a in arrays.items()
                 if k not in (MASK_VARIABLE, "domain") and a.ndim >= 2 and a.dtype.kind in "iufb"}
    names = choose_variables(path, available, requested, [*default] or ["data"], list(arrays))
    shape = arrays[names[0]].shape
    dims = _npz_dims(len(shape))
    time_axis = record.time_axis_of(path, names[0], dims, shape)
    values, missing = [], []
    for name in names:
        if arrays[name].shape != shape:
            raise CtxqError(f"{path}: array '{name}' has shape {arrays[name].shape}, "
                            f"unlike '{names[0]}' {shape}")
        dec = _decode(path, name, arrays[name], {}, default_fill=False)
        values.append(record.to_internal(dec.values, time_axis))
        missing.append(record.to_internal(dec.missing, time_axis))
    fld = Field(path=path, format="npz", names=names, values=np.stack(values, axis=1),
                observed=~np.stack(missing, axis=1), dims=dims, shape=shape,
                time_axis=time_axis, var_attrs=[{} for _ in names])
    if MASK_VARIABLE in arrays:
        apply_mask(fld, read_mask(path, names), path)
    return fld


Inputs = Path | str | Sequence[Path | str]


def read_field(inputs: Inputs, variables: Sequence[str] | None = None,
               mask_path: Path | str | None = None, default: Sequence[str] = (),
               quality: flags.Quality | None = None,
               selection: record.Selection | None = None) -> Field:
    """Read a field and its observation mask from NetCDF, zarr or NPZ (plus ``--mask FILE``).

    ``inputs`` is a file, a zarr store, a glob, a directory or a list of them (one record
    along time). Without ``variables``, ``default`` is used when the file has all of them (a
    checkpoint's variables, say), else the only gridded data variable. Observations below
    ``quality`` are missing (the count is logged).
    """
    source = open_field(inputs, variables, mask_path, default, quality, selection)
    fld = source.template
    fld.values, fld.observed = source.read(0, source.frames)
    if source.quality is not None:
        log.info("%s: %s", fld.path, source.describe_quality())
    return fld


def open_field(inputs: Inputs, variables: Sequence[str] | None = None,
               mask_path: Path | str | None = None, default: Sequence[str] = (),
               quality: flags.Quality | None = None,
               selection: record.Selection | None = None) -> FieldSource:
    """Like :func:`read_field`, but a NetCDF or zarr record's frames are read when asked for.

    NPZ files (compressed archives) and NPZ or per-variable masks are read whole; a NetCDF
    ``mask`` variable is read range by range like the field.
    """
    items = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    if not items:
        raise CtxqError("no input file given")
    path = Path(items[0])
    if len(items) == 1 and path.is_file() and file_format(path) == "npz":
        if quality is not None:
            raise CtxqError(f"{path}: a quality variable needs a NetCDF file (NPZ has none)")
        if selection:
            raise CtxqError(f"{path}: --sel/--isel/--group need a NetCDF file (NPZ has no "
                            "named dims or groups)")
        fld = _read_npz(path, variables, default)
        source = FieldSource(template=fld, frames=fld.values.shape[0],
                             reader=lambda a, b: (fld.values[a:b], fld.observed[a:b]))
    else:
        source = record_source(record.open_parts(items, selection), variables, default,
                               quality, selection)
    if mask_path is not None:
        mask_path = Path(mask_path)
        source.mask, source.mask_path = mask_reader(mask_path, source), mask_path
    return source


def mask_reader(path: Path, source: FieldSource) -> Callable[[int, int], np.ndarray]:
    """Frames [a, b) of a mask file (or its single static frame), as read_mask shapes them."""
    names = source.template.names
    if file_format(path) == "netcdf":
        with _open_netcdf(path) as ds:
            var = ds.variables.get(MASK_VARIABLE)
            if var is not None:
                dims, shape = tuple(var.dimensions), tuple(var.shape)
                time_axis = record.time_axis_of(path, MASK_VARIABLE, dims, shape, {
                    d: _attrs(ds.variables[d]) for d in dims if d in ds.variables})
                if time_axis is not None and shape[time_axis] == source.frames > 1:
                    attrs = _attrs(var)

                    def read(a: int, b: int) -> np.ndarray:
                        with _open_netcdf(path) as ds:
                            where = tuple(slice(a, b) if i == time_axis else slice(None)
                                          for i in range(len(dims)))
                            raw = RawVariable(_read(path, ds.variables[MASK_VARIABLE],
                                                          where), attrs, dims, True)
                        return _mask_to_internal(path, MASK_VARIABLE,
                                                 _mask_values(path, MASK_VARIABLE, raw), dims)

                    return read
    whole = read_mask(path, names)
    if whole.shape[0] not in (1, source.frames) or whole.shape[-2:] != source.grid:
        raise CtxqError(f"{path}: mask shape ({whole.shape[0]}, {whole.shape[-2]}, "
                        f"{whole.shape[-1]}) does not match data '{names[0]}' shape "
                        f"({source.frames}, {source.grid[0]}, {source.grid[1]})")
    return lambda a, b: whole if whole.shape[0] == 1 else whole[a:b]


def imputed_variables(path: Path | str) -> list[str]:
    """Variables of a ctxq output: those written with a ``VAR_flag`` companion."""
    path = Path(path)
    if file_format(path) == "npz":
        names = list(_load_npz(path))
    else:
        with _open_netcdf(path) as ds:
            names = list(ds.variables)
    return [n for n in names if f"{n}_flag" in names]


# ----------------------------------------------------------------------------- masks

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
        arrays = _load_npz(path)
        found = {n: RawVariable(arrays[n], {}, _npz_dims(arrays[n].ndim), False)
                 for n in names if n in arrays}
        return found, sorted(arrays)
    with _open_netcdf(path) as ds:
        found = {n: RawVariable(_read(path, ds.variables[n]), _attrs(ds.variables[n]),
                                tuple(ds.variables[n].dimensions), True)
                 for n in names if n in ds.variables}
        return found, sorted(ds.variables)


def _mask_values(path: Path, name: str, var: RawVariable) -> np.ndarray:
    """A 0/1/NaN mask variable as booleans (True = observed)."""
    if getattr(var.values.dtype, "kind", "O") == "b":
        return var.values.astype(bool)
    dec = _decode(path, name, var.values, var.attrs, var.default_fill)
    good = dec.values[~dec.missing]
    bad = good[(good != 0) & (good != 1)]
    if bad.size:
        raise CtxqError(f"{path}: variable '{name}' has values other than 0/1/NaN "
                        f"(e.g. {bad.flat[0]:g})")
    return (dec.values == 1) & ~dec.missing


def read_mask(path: Path, names: Sequence[str]) -> np.ndarray:
    """Read an observation mask: variable ``mask``, or the named variables' non-missing cells.

    Returns booleans of shape (T, 1, H, W), (T, C, H, W) or (1, 1, H, W) for a static mask.
    """
    found, available = read_raw(path, [MASK_VARIABLE, *names])
    if MASK_VARIABLE in found:
        var = found[MASK_VARIABLE]
        return _mask_to_internal(path, MASK_VARIABLE, _mask_values(path, MASK_VARIABLE, var),
                                 var.dims)
    if not all(n in found for n in names):
        raise CtxqError(f"{path}: no variable 'mask' or '{names[0]}' (available: "
                        f"{', '.join(available) or 'none'})")
    per = []
    for n in names:
        var = found[n]
        seen = ~_decode(path, n, var.values, var.attrs, var.default_fill).missing
        per.append(_mask_to_internal(path, n, seen, var.dims)[:, 0])
    if len({p.shape for p in per}) > 1:
        raise CtxqError(f"{path}: variables {', '.join(names)} differ in shape")
    return np.stack(per, axis=1)


def _mask_to_internal(path: Path, name: str, mask: np.ndarray,
                      dims: tuple[str, ...]) -> np.ndarray:
    """A mask array as (T, 1, H, W); a 2-D mask becomes one static frame."""
    time_axis = record.time_axis_of(path, name, dims, mask.shape)
    return record.to_internal(mask, time_axis)[:, None]


def apply_mask(fld: Field, mask: np.ndarray, mask_path: Path) -> None:
    """Intersect the field's observed cells with a mask file (broadcast over time/variables)."""
    t, c, h, w = fld.values.shape
    mt, mc, mh, mw = mask.shape
    if (mh, mw) != (h, w) or mt not in (1, t) or mc not in (1, c):
        raise CtxqError(f"{mask_path}: mask shape ({mt}, {mh}, {mw}) does not match data "
                        f"'{fld.names[0]}' shape ({t}, {h}, {w})")
    mask = np.broadcast_to(mask, fld.observed.shape)
    absent = (mask & ~fld.observed).sum()
    if absent:
        log.warning("%s: %d cells marked observed have no value in %s; treated as missing",
                    mask_path, int(absent), fld.path)
    fld.observed = fld.observed & mask
    fld.values = np.where(fld.observed, fld.values, 0).astype(fld.values.dtype)


def read_domain(path: Path | str, grid: tuple[int, int],
                meanings: Sequence[str] | None = None) -> np.ndarray:
    """Read a 2-D domain mask (nonzero = inside, to be filled and scored) of the given grid.

    A CF flag variable (a land/sea ``mask`` with ``flag_meanings``) is read by meaning: the
    cells flagged with one of ``meanings``, by default the water ones (:mod:`ctxq_cli.flags`).
    """
    path = Path(path)
    found, available = read_raw(path, DOMAIN_VARIABLES)
    if not found and file_format(path) == "netcdf":
        candidates = list(record.data_variables(record.open_dataset(path)))
        if len(candidates) == 1:
            found, _ = read_raw(path, candidates)
    if not found:
        raise CtxqError(f"{path}: name the domain variable 'domain' (found: "
                        f"{', '.join(available) or 'none'})")
    name, var = next(iter(found.items()))
    dec = _decode(path, name, var.values, var.attrs, var.default_fill)
    squeezed = dec.values.reshape([n for n in dec.values.shape if n > 1] or [1])
    if squeezed.shape != tuple(grid):
        raise CtxqError(f"{path}: domain '{name}' has shape {dec.values.shape}, data grid is "
                        f"{tuple(grid)}")
    if not flags.is_flag_variable(var.attrs):
        if meanings:
            raise CtxqError(f"{path}: domain '{name}' is not a CF flag variable (no "
                            "flag_meanings); --domain-flags needs one")
        inside = (squeezed != 0) & ~dec.missing.reshape(squeezed.shape)
    else:
        try:
            cells, kept = flags.cells_meaning(var.values, var.attrs,
                                              None if meanings is None else set(meanings))
        except ValueError as exc:
            raise CtxqError(f"{path}: flag variable '{name}': {exc}") from None
        if not kept:
            raise CtxqError(f"{path}: flag variable '{name}' has none of the meanings "
                            f"{', '.join(meanings or ['of water'])} (it has: "
                            f"{var.attrs['flag_meanings']})")
        inside = cells.reshape(squeezed.shape) & ~dec.missing.reshape(squeezed.shape)
        log.info("%s: domain from flag variable '%s': cells flagged %s", path, name,
                 " or ".join(kept))
    if not inside.any():
        raise CtxqError(f"{path}: domain '{name}' has no cell inside")
    return inside


def observed_domain(observed: np.ndarray) -> np.ndarray:
    """Cells observed at least once (any time, any variable): the default domain, (H, W)."""
    return observed.any(axis=(0, 1))


# ----------------------------------------------------------------------------- writing

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


MEMBER_DIM = "realization"     # CF's name for the dimension of ensemble members


@dataclass
class OutputVariable:
    """One variable to write: internal (T, H, W) or (K, T, H, W) values, NaN = fill.

    For :func:`open_output` the values come later; a member variable's leading axis still
    says how many members there are.
    """

    name: str
    values: np.ndarray | None
    attrs: dict[str, Any]
    member_dim: bool = False
    encoding: Encoding = field(default_factory=lambda: Encoding("float32", -9999.0))


def history_line(command: str, version: str) -> str:
    """One CF history entry: UTC time, command line and version."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {command} (ctxq {version})"


def _to_disk(fld: Field, values: np.ndarray) -> np.ndarray:
    """Internal (T, H, W) values in the variable's on-disk layout (T frames)."""
    return record.to_disk(values, fld.shape, fld.time_axis)


def write_output(path: Path | str, template: Field, variables: Sequence[OutputVariable],
                 global_attrs: dict[str, Any], history: str) -> None:
    """Write variables on the template's grid: NPZ for a ``.npz`` path, else NetCDF-4."""
    with open_output(path, template, variables, history) as out:
        out.write(0, {v.name: v.values for v in variables})
        out.attributes(global_attrs)


class OutputWriter:
    """Receives an output's variables range of frames by range of frames (see open_output)."""

    def __init__(self, path: Path, template: Field, variables: Sequence[OutputVariable]) -> None:
        self.path, self.template = path, template
        self.variables = {v.name: v for v in variables}
        self.attrs: dict[str, Any] = {}
        self.pending: dict[str, list[np.ndarray]] = {v.name: [] for v in variables}
        self.dataset: Any = None    # an open netCDF4.Dataset when writing NetCDF

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write internal (n, H, W) or (K, n, H, W) arrays at frames [start, start + n)."""
        for name, values in arrays.items():
            var = self.variables[name]
            if self.dataset is None:
                self.pending[name].append(values)
                continue
            nc = self.dataset.variables[name]
            enc = var.encoding
            members = values if var.member_dim else values[None]
            for i, member in enumerate(members):
                disk = _to_disk(self.template, member)
                where: list[Any] = [slice(None)] * disk.ndim
                if self.template.time_axis is not None:
                    where[self.template.time_axis] = slice(start, start + member.shape[0])
                if var.member_dim:
                    where.insert(0, i)
                with write_errors(self.path):
                    nc[tuple(where)] = encode(disk, np.isnan(disk), enc)

    def attributes(self, attrs: dict[str, Any]) -> None:
        """Global attributes to add (known, say, only once every frame is written)."""
        self.attrs.update(attrs)
        if self.dataset is not None:
            with write_errors(self.path):
                self.dataset.setncatts(attrs)


@contextlib.contextmanager
def open_output(path: Path | str, template: Field, variables: Sequence[OutputVariable],
                history: str) -> Iterator[OutputWriter]:
    """An output file on the template's grid, written range by range, in place atomically.

    NetCDF-4 variables are written as the ranges come, so memory follows the range; an NPZ
    archive is compressed as a whole and so gathers the ranges first. Nothing appears at
    ``path`` unless the block completes.
    """
    path = Path(path)
    writer = OutputWriter(path, template, variables)
    with atomic_path(path, writes_only=False) as tmp:
        if path.suffix.lower() == ".npz":
            yield writer
            with write_errors(path):
                _write_npz(tmp, template, writer)
        else:
            import netCDF4

            # Each chunk is written once, in order, so HDF5's chunk cache (64 MiB for every
            # variable, filling as the file grows) would only hold memory.
            previous = netCDF4.get_chunk_cache()
            netCDF4.set_chunk_cache(1 << 20, 1, 1.0)
            try:
                with write_errors(path):
                    ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
                    _define_netcdf(ds, template, variables, history)
                writer.dataset = ds
                try:
                    yield writer
                finally:
                    with write_errors(path):
                        ds.close()
            finally:
                netCDF4.set_chunk_cache(*previous)


def part_template(template: Field, index: int) -> Field:
    """The template of one input file of a record: its frames, time coordinate and global
    attributes; the rest (grid, variables, other coordinates) the record's."""
    part = template.parts[index]
    start = sum(p.frames for p in template.parts[:index])
    axis = template.time_axis
    time_dim = template.dims[axis] if axis is not None else None
    coords = []
    for coord in template.coords:
        if part.time is not None and coord.name == part.time.name:
            coord = part.time
        elif time_dim in coord.dims:
            where = tuple(slice(start, start + part.frames) if d == time_dim else slice(None)
                          for d in coord.dims)
            coord = Coordinate(coord.name, coord.dims, coord.values[where], coord.attrs)
        coords.append(coord)
    shape = tuple(part.frames if i == axis else n for i, n in enumerate(template.shape))
    return replace(template, path=part.path, shape=shape, coords=coords,
                   global_attrs=dict(part.global_attrs), parts=[part])


class SplitWriter:
    """Receives a record's frames and writes each input file's frames to its own output.

    An output is created when its first frames arrive and closed when its last are written,
    so only one or two are open at a time; global attributes are added to every output at
    the end, with the frames without observations counted per output.
    """

    def __init__(self, outputs: Sequence[tuple[Path, Path]], template: Field,
                 variables: Sequence[OutputVariable], history: str) -> None:
        self.outputs = list(outputs)          # (path, temporary path) per input file
        self.templates = [part_template(template, i) for i in range(len(template.parts))]
        self.starts = np.cumsum([0] + [p.frames for p in template.parts]).tolist()
        self.variables, self.history = list(variables), history
        self.writers: dict[int, OutputWriter] = {}
        self.written = [0] * len(self.outputs)
        self.attrs: dict[str, Any] = {}

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write internal (n, H, W) or (K, n, H, W) arrays at record frames [start, start + n)."""
        n = next(iter(arrays.values())).shape[-3]
        for i, (lo, hi) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            a, b = max(start, lo), min(start + n, hi)
            if a >= b:
                continue
            writer = self.writers.get(i) or self._open(i)
            writer.write(a - lo, {k: v[..., a - start:b - start, :, :] for k, v in arrays.items()})
            self.written[i] += b - a
            if self.written[i] == hi - lo:
                self._close(i)

    def attributes(self, attrs: dict[str, Any]) -> None:
        """Global attributes for every output (added when the last frames are written)."""
        self.attrs.update(attrs)

    def _open(self, i: int) -> OutputWriter:
        """Create output ``i`` in its temporary path."""
        import netCDF4

        path, tmp = self.outputs[i]
        writer = OutputWriter(path, self.templates[i], self.variables)
        with write_errors(path):
            writer.dataset = netCDF4.Dataset(tmp, "w", format="NETCDF4")
            _define_netcdf(writer.dataset, self.templates[i], self.variables, self.history)
        self.writers[i] = writer
        return writer

    def _close(self, i: int) -> None:
        """Close output ``i``."""
        writer = self.writers.pop(i)
        with write_errors(writer.path):
            writer.dataset.close()

    def finish(self) -> None:
        """Add the global attributes to every output, each with its own frames without
        observations (indices counted from its first frame)."""
        import netCDF4

        unwritten = [str(p) for (p, _), w in zip(self.outputs, self.written) if not w]
        if unwritten:
            raise CtxqError(f"{unwritten[0]}: no frame was written")
        empty = np.asarray(self.attrs.get("ctxq_empty_frame_indices", []), dtype=np.int32)
        for (path, tmp), lo, hi in zip(self.outputs, self.starts[:-1], self.starts[1:]):
            attrs = {k: v for k, v in self.attrs.items() if k != "ctxq_empty_frame_indices"}
            own = empty[(empty >= lo) & (empty < hi)] - lo
            attrs["ctxq_frames_without_observations"] = len(own)
            if len(own):
                attrs["ctxq_empty_frame_indices"] = own.astype(np.int32)
            with write_errors(path), netCDF4.Dataset(tmp, "a") as ds:
                ds.setncatts(attrs)

    def close(self) -> None:
        """Close whatever is still open (after a failure)."""
        for i in list(self.writers):
            self._close(i)


@contextlib.contextmanager
def open_outputs(paths: Sequence[Path], template: Field, variables: Sequence[OutputVariable],
                 history: str) -> Iterator[SplitWriter]:
    """One NetCDF output per input file of the template's record (``paths`` in the record's
    order), written range by range. Nothing appears at any path unless the block completes."""
    import netCDF4

    if len(paths) != len(template.parts):
        raise ValueError(f"{len(paths)} outputs for {len(template.parts)} input files")
    previous = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(1 << 20, 1, 1.0)    # each chunk is written once (see open_output)
    try:
        with contextlib.ExitStack() as stack:
            outputs = [(Path(p), stack.enter_context(atomic_path(p, writes_only=False)))
                       for p in paths]
            writer = SplitWriter(outputs, template, variables, history)
            try:
                yield writer
            finally:
                writer.close()
            writer.finish()
    finally:
        netCDF4.set_chunk_cache(*previous)


def _write_npz(tmp: Path, template: Field, writer: OutputWriter) -> None:
    """Write the gathered arrays (NaN = fill) with a JSON-free, pickle-free layout."""
    arrays: dict[str, np.ndarray] = {}
    for name, parts in writer.pending.items():
        var = writer.variables[name]
        vals = np.concatenate(parts, axis=1 if var.member_dim else 0)
        if var.member_dim:
            arrays[name] = np.stack([_to_disk(template, v) for v in vals])
        else:
            arrays[name] = _to_disk(template, vals)
    for key, value in writer.attrs.items():
        arrays[f"attr_{key}"] = np.asarray(str(value))
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _define_netcdf(ds: Any, template: Field, variables: Sequence[OutputVariable],
                   history: str) -> None:
    """Dims, coordinates, attributes and empty variables mirroring the template."""
    attrs = dict(template.global_attrs)
    old = str(attrs.pop("history", "")).strip()
    attrs["history"] = history + ("\n" + old if old else "")
    ds.setncatts({k: v for k, v in attrs.items()})
    for dim, size in zip(template.dims, template.shape):
        ds.createDimension(dim, None if dim in template.unlimited else size)
    if any(v.member_dim for v in variables):
        k = next(v.values.shape[0] for v in variables if v.member_dim)
        ds.createDimension(MEMBER_DIM, k)
        mvar = ds.createVariable(MEMBER_DIM, "i4", (MEMBER_DIM,))
        mvar[:] = np.arange(k)
        mvar.setncatts({"standard_name": "realization", "long_name": "ensemble member"})
    for coord in template.coords:
        fill = coord.attrs.get("_FillValue")
        cvar = ds.createVariable(coord.name, coord.values.dtype, coord.dims, fill_value=fill)
        cvar.setncatts({k: v for k, v in coord.attrs.items() if k != "_FillValue"})
        cvar[...] = coord.values
    for var in variables:
        dims = ((MEMBER_DIM,) if var.member_dim else ()) + tuple(template.dims)
        enc = var.encoding
        nc = ds.createVariable(var.name, enc.dtype, dims, zlib=True, complevel=4,
                               fill_value=enc.fill_value)
        nc.set_auto_maskandscale(False)
        nc.setncatts({**{k: v for k, v in enc.attrs.items() if k != "_FillValue"},
                      **{k: v for k, v in var.attrs.items() if k not in PACKING_ATTRS}})
