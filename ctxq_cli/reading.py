"""Fields: the in-memory model of gridded variables, and reading them from NetCDF, zarr and
NPZ.

A field is a stack of C variables on a (time, y, x) grid, held as ``values[t, c, y, x]`` with
missing cells set to 0 and a boolean ``observed[t, c, y, x]``; NaN never leaves this module.
Dimensions may carry any names (time/t/Time, lat/latitude/y/nav_lat, lon/longitude/x, ...) and
come in any order (:mod:`ctxq_cli.layout`). A record of many files is read as one field
(:mod:`ctxq_cli.record`), a range of frames at a time (:class:`FieldSource`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import flags, layout, masks, record, stored
from ctxq_cli.errors import CtxqError
from ctxq_cli.options import Options
from ctxq_cli.record import file_format

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReadOptions(Options):
    """How to read a record: which variables, a mask file, which observations to trust, what
    to select of each file, and the domain to fill (a file, its flags read by meaning)."""

    variables: tuple[str, ...] | None = None
    mask: Path | None = None
    quality_var: str | None = None      # an integer flag variable, with min_quality
    min_quality: float | None = None
    sel: tuple[str, ...] = ()           # 'depth=0': one element of a dim, by value
    isel: tuple[str, ...] = ()          # 'depth=0': by index
    group: str | None = None
    domain: Path | None = None
    domain_flags: tuple[str, ...] | None = None   # meanings that are inside (default: water)

    def check(self) -> None:
        """A quality variable and its minimum go together."""
        if (self.quality_var is None) != (self.min_quality is None):
            self.fail("quality_var", "and ReadOptions.min_quality go together")

    @property
    def quality(self) -> flags.Quality | None:
        """Which observations to trust (None: all)."""
        if self.quality_var is None:
            return None
        return flags.Quality(self.quality_var, float(self.min_quality))

    @property
    def selection(self) -> record.Selection:
        """What to read of each file."""
        return record.Selection.parse(self.sel, self.isel, self.group)

    def read_domain(self, grid: tuple[int, int]) -> np.ndarray | None:
        """The domain file's cells inside, on ``grid`` (None without a domain file)."""
        if self.domain is None:
            return None
        return masks.read_domain(self.domain, grid, self.domain_flags)


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
            values, observed = masks.apply_mask(values, observed, self.mask(a, b),
                                                self.mask_path, self.template.path,
                                                self.template.names[0])
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
    time_axis = layout.time_axis_of(first.label, names[0], dims, shape, dim_attrs)
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
                bad = layout.to_internal(~dec.missing & ~trusted, time_axis)
                failing = failing + bad.reshape(len(bad), -1).sum(axis=1)
                dec.missing |= ~trusted
                dec.values[~trusted] = 0
            values.append(layout.to_internal(dec.values, time_axis))
            missing.append(layout.to_internal(dec.missing, time_axis))
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


def _read_npz(path: Path, requested: Sequence[str] | None, default: Sequence[str]) -> Field:
    """Read an NPZ file with key ``data`` (or the chosen keys) and an optional ``mask``."""
    arrays = stored.load_npz(path)
    available = {k: a.ndim for k, a in arrays.items()
                 if k not in (masks.MASK_VARIABLE, "domain") and a.ndim >= 2
                 and a.dtype.kind in "iufb"}
    names = choose_variables(path, available, requested, [*default] or ["data"], list(arrays))
    shape = arrays[names[0]].shape
    dims = stored.npz_dims(len(shape))
    time_axis = layout.time_axis_of(path, names[0], dims, shape)
    values, missing = [], []
    for name in names:
        if arrays[name].shape != shape:
            raise CtxqError(f"{path}: array '{name}' has shape {arrays[name].shape}, "
                            f"unlike '{names[0]}' {shape}")
        dec = stored.decode_variable(path, name, arrays[name], {}, default_fill=False)
        values.append(layout.to_internal(dec.values, time_axis))
        missing.append(layout.to_internal(dec.missing, time_axis))
    fld = Field(path=path, format="npz", names=names, values=np.stack(values, axis=1),
                observed=~np.stack(missing, axis=1), dims=dims, shape=shape,
                time_axis=time_axis, var_attrs=[{} for _ in names])
    if masks.MASK_VARIABLE in arrays:
        fld.values, fld.observed = masks.apply_mask(fld.values, fld.observed,
                                                    masks.read_mask(path, names), path, path,
                                                    names[0])
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
        source.mask = masks.mask_reader(mask_path, source.template.names, source.frames,
                                        source.grid)
        source.mask_path = mask_path
    return source


def imputed_variables(path: Path | str) -> list[str]:
    """Variables of a ctxq output: those written with a ``VAR_flag`` companion."""
    path = Path(path)
    if file_format(path) == "npz":
        names = list(stored.load_npz(path))
    else:
        with stored.open_netcdf(path) as ds:
            names = list(ds.variables)
    return [n for n in names if f"{n}_flag" in names]
