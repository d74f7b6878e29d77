"""A record: one file, many files (a list, a glob, a directory), a zarr store or an xarray
object, read as one field along time, lazily, a range of frames at a time.

Files are opened with xarray without decoding (``decode_cf=False``): ctxq decodes each range
itself (:mod:`ctxq_cli.cf`), because xarray ignores ``valid_range`` and the netCDF default fill
value, and observed values must come back bit for bit. Each file is read only where a range of
frames falls in it, through xarray's lazy indexing, so memory follows the range, not the
record; xarray keeps at most ``file_cache_maxsize`` files open at once.

Several files are one record when they hold the same variables on the same grid: they are put
in the order of their decoded time (each file's own units and reference date; one calendar),
and times that repeat or overlap are an error. Dimensions may come in any order; time is found
by name, CF ``axis``, ``standard_name`` or ``units``; any further dimension of more than one
element must be chosen with a :class:`Selection` (``--sel depth=0``, ``--isel depth=0``).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import flags
from ctxq_cli.cf import PACKING_ATTRS, decode
from ctxq_cli.errors import CtxqError

log = logging.getLogger(__name__)

MASK_VARIABLE = "mask"
NETCDF_SUFFIXES = (".nc", ".nc4", ".netcdf", ".cdf", ".h5", ".hdf5")
GLOB_CHARS = set("*?[")


# ----------------------------------------------------------------------------- which files

def expand(inputs: Sequence[str | Path]) -> list[Path]:
    """The files (or zarr stores) named by paths, globs and directories, in the order given
    (a glob's or directory's matches sorted by name)."""
    out: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.exists():
            if path.is_dir() and not is_zarr(path):
                found = sorted(p for p in path.iterdir()
                               if p.suffix.lower() in NETCDF_SUFFIXES or is_zarr(p))
                if not found:
                    raise CtxqError(f"{path}: directory holds no NetCDF file or zarr store")
                out += found
            else:
                out.append(path)
        elif GLOB_CHARS & set(str(item)):
            found = sorted(Path(p) for p in glob.glob(str(item)))
            if not found:
                raise CtxqError(f"{item}: no file matches")
            out += found
        else:
            raise CtxqError(f"{path}: no such file")
    seen: set[Path] = set()
    for path in out:
        if path.resolve() in seen:
            raise CtxqError(f"{path}: named twice")
        seen.add(path.resolve())
    return out


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr store (a directory with zarr metadata)."""
    return path.is_dir() and any((path / m).exists()
                                 for m in (".zgroup", ".zarray", ".zattrs", "zarr.json"))


def _consolidated(store: Path) -> bool:
    """Whether a zarr store has consolidated metadata (asking xarray to guess warns)."""
    import json

    if (store / ".zmetadata").exists():
        return True
    try:
        meta = json.loads((store / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(meta.get("consolidated_metadata"))


def open_dataset(path: Path, group: str | None = None) -> Any:
    """A NetCDF file or zarr store (or one of its groups) as an undecoded, lazily read xarray
    Dataset."""
    import xarray as xr

    zarr = is_zarr(path)
    try:
        return xr.open_dataset(path, engine="zarr" if zarr else None, decode_cf=False,
                               mask_and_scale=False, decode_times=False, cache=False,
                               group=group,
                               **({"consolidated": _consolidated(path)} if zarr else {}))
    except (OSError, ValueError, RuntimeError, KeyError, TypeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0]
        kind = "zarr" if zarr else "NetCDF"
        raise CtxqError(f"{path}: cannot be read as {kind} ({reason})") from None


# ----------------------------------------------------------------------------- selections

@dataclass(frozen=True)
class Selection:
    """What to read of each file: a NetCDF group, and one element of each extra dimension,
    by coordinate value or by index."""

    by_value: tuple[tuple[str, str], ...] = ()
    by_index: tuple[tuple[str, int], ...] = ()
    group: str | None = None

    @classmethod
    def parse(cls, sel: Sequence[str] = (), isel: Sequence[str] = (),
              group: str | None = None) -> Selection:
        """From 'depth=0' strings (``--sel``: a value; ``--isel``: an index) and a group path
        ('/' or 'data/sst')."""
        def split(text: str, flag: str) -> tuple[str, str]:
            name, eq, value = text.partition("=")
            if not eq or not name.strip() or not value.strip():
                raise CtxqError(f"{flag} {text}: expected DIM=VALUE, e.g. depth=0")
            return name.strip(), value.strip()

        by_index = []
        for text in isel:
            name, value = split(text, "--isel")
            try:
                by_index.append((name, int(value)))
            except ValueError:
                raise CtxqError(f"--isel {text}: the index must be an integer") from None
        by_value = tuple(split(text, "--sel") for text in sel)
        dims = [n for n, _ in by_value] + [n for n, _ in by_index]
        twice = [d for i, d in enumerate(dims) if d in dims[:i]]
        if twice:
            raise CtxqError(f"--sel/--isel: dimension '{twice[0]}' chosen twice")
        return cls(by_value, tuple(by_index), group.strip("/") or None if group else None)

    def __bool__(self) -> bool:
        return bool(self.by_value or self.by_index or self.group)

    def describe(self) -> str:
        """'group data, depth=0, member[2]' for logs and output attributes."""
        return ", ".join(([f"group {self.group}"] if self.group else []) +
                         [f"{d}={v}" for d, v in self.by_value] +
                         [f"{d}[{i}]" for d, i in self.by_index])

    def apply(self, ds: Any, label: Path) -> Any:
        """The dataset with each chosen dimension cut to its one chosen element."""
        for name, _ in self.by_value + self.by_index:
            if name not in ds.dims:
                raise CtxqError(f"{label}: --sel/--isel: no dimension '{name}' (dimensions: "
                                f"{', '.join(map(str, ds.dims))})")
        picks = {name: _index_of(ds, label, name, value) for name, value in self.by_value}
        for name, index in self.by_index:
            size = ds.sizes[name]
            if not -size <= index < size:
                raise CtxqError(f"{label}: --isel {name}={index}: dimension '{name}' has "
                                f"{size} elements")
            picks[name] = index % size
        # A list keeps the dimension (of length 1), so outputs keep its coordinate.
        return ds.isel({name: [i] for name, i in picks.items()}) if picks else ds


def _index_of(ds: Any, label: Path, name: str, text: str) -> int:
    """The index along ``name`` whose coordinate equals ``text`` (as a number or a string)."""
    if name not in ds.variables:
        raise CtxqError(f"{label}: --sel {name}={text}: dimension '{name}' has no coordinate; "
                        f"choose by position with --isel {name}=INDEX")
    values = np.asarray(ds.variables[name].values)
    try:
        hits = np.flatnonzero(np.isclose(values.astype(float), float(text), rtol=1e-6,
                                         atol=0))
    except ValueError:
        hits = np.flatnonzero(values.astype(str) == text)
    if len(hits) != 1:
        shown = ", ".join(str(v) for v in values[:8]) + (", ..." if len(values) > 8 else "")
        raise CtxqError(f"{label}: --sel {name}={text}: no such value of '{name}' "
                        f"(values: {shown})")
    return int(hits[0])


# ----------------------------------------------------------------------------- time

@dataclass
class TimeAxis:
    """A part's raw time values with their CF units and calendar."""

    values: np.ndarray
    units: str
    calendar: str

    def dates(self) -> np.ndarray:
        """The values as cftime dates."""
        import cftime

        return np.atleast_1d(cftime.num2date(self.values, self.units, self.calendar))

    def expressed_in(self, other: TimeAxis) -> np.ndarray:
        """The values in ``other``'s units (raw values when the units are the same)."""
        import cftime

        if self.units == other.units:
            return self.values
        converted = np.asarray(cftime.date2num(self.dates(), other.units, other.calendar),
                               dtype=np.float64)
        if other.values.dtype.kind in "iu" and np.array_equal(converted, np.round(converted)):
            return converted.astype(other.values.dtype)
        return converted


def _calendar(attrs: dict[str, Any]) -> str:
    """A CF calendar name, 'standard' when unset ('gregorian' is its old name)."""
    name = str(attrs.get("calendar", "standard")).lower()
    return "standard" if name == "gregorian" else name


# ----------------------------------------------------------------------------- parts

@dataclass
class Part:
    """One file (or xarray object) of a record and where its frames sit in the record.

    A file's ``dataset`` holds its metadata and is closed once the record is set up; each read
    opens the file again and closes it, so that no file stays open (or locked) between reads.
    """

    label: Path
    dataset: Any                      # undecoded xarray Dataset
    default_fill: bool = True         # the netCDF default fill value marks missing values
    reopen: bool = True               # a file, opened again for each read
    selection: Selection | None = None
    offset: int = 0
    frames: int = 1
    time: TimeAxis | None = None
    attrs: dict[str, dict[str, Any]] = field(default_factory=dict)

    def variable_attrs(self, name: str) -> dict[str, Any]:
        """A variable's attributes (cached)."""
        if name not in self.attrs:
            self.attrs[name] = dict(self.dataset.variables[name].attrs)
        return self.attrs[name]

    def select(self, selection: Selection) -> None:
        """Cut extra dimensions to the chosen elements, now and on every later read."""
        self.selection = selection
        self.dataset = selection.apply(self.dataset, self.label)

    @contextlib.contextmanager
    def opened(self) -> Iterator[Any]:
        """The dataset, open for reading."""
        if not self.reopen:
            yield self.dataset
            return
        ds = open_dataset(self.label, self.selection.group if self.selection else None)
        try:
            yield self.selection.apply(ds, self.label) if self.selection else ds
        finally:
            ds.close()

    def close(self) -> None:
        """Close the metadata dataset of a file (reads open it again)."""
        if self.reopen:
            self.dataset.close()

    def read(self, name: str, where: tuple[Any, ...], ds: Any = None) -> np.ndarray:
        """Raw values of part of a variable (from ``ds``, an opened dataset, if given); a read
        failure is one line."""
        try:
            if ds is None:
                with self.opened() as ds:
                    return np.asarray(ds.variables[name][where].values)
            return np.asarray(ds.variables[name][where].values)
        except (RuntimeError, OSError, ValueError, IndexError, KeyError) as exc:
            raise CtxqError(f"{self.label}: variable '{name}' cannot be read ({exc})") from None

    def decode(self, name: str, raw: np.ndarray) -> Any:
        """CF-decode raw values of a variable, an undecodable one being a one-line error."""
        try:
            return decode(raw, self.variable_attrs(name), self.default_fill)
        except (TypeError, ValueError, RuntimeError, OSError) as exc:
            raise CtxqError(f"{self.label}: variable '{name}' cannot be decoded "
                            f"({exc})") from None


def data_variables(ds: Any, ancillary: bool = False) -> dict[str, int]:
    """Gridded data variables and their ranks: not coordinates, bounds or the mask (nor
    ancillary or CF flag variables such as a quality level, unless ``ancillary``)."""
    linked: set[str] = set()
    for var in ds.variables.values():
        for key in ("bounds",) + (() if ancillary else ("ancillary_variables",)):
            linked.update(str(var.attrs.get(key, "")).split())
    out = {}
    for name, var in ds.variables.items():
        if name in ds.dims or name in linked or name == MASK_VARIABLE:
            continue
        if var.dtype.kind not in "iufb" or var.ndim < 2:
            continue
        if not ancillary and flags.is_flag_variable(dict(var.attrs)):
            continue
        out[str(name)] = var.ndim
    return out


def referenced(attrs: dict[str, Any]) -> set[str]:
    """Variables a data variable names in ``coordinates`` and ``grid_mapping`` (CF 5.6's
    short form 'crs' or long form 'crs: x y')."""
    names = set(str(attrs.get("coordinates", "")).split())
    return names | {t.rstrip(":") for t in str(attrs.get("grid_mapping", "")).split()}


def part_time(part: Part, dim: str) -> TimeAxis | None:
    """The part's decodable CF time coordinate along ``dim``, if it has one."""
    ds = part.dataset
    if dim not in ds.variables or ds.variables[dim].dims != (dim,):
        return None
    attrs = dict(ds.variables[dim].attrs)
    units = str(attrs.get("units", ""))
    if " since " not in units:
        return None
    values = part.read(dim, (...,), part.dataset)
    axis = TimeAxis(values, units, _calendar(attrs))
    try:
        axis.dates()
    except (TypeError, ValueError) as exc:
        raise CtxqError(f"{part.label}: time coordinate '{dim}' cannot be decoded (units "
                        f"'{units}', calendar '{axis.calendar}': {exc})") from None
    return axis


def order_parts(parts: list[Part], dim: str) -> list[Part]:
    """Parts sorted by their first time, with offsets; repeated or overlapping times fail."""
    times = [p.time for p in parts]
    if len(parts) == 1 or all(t is None for t in times):
        if len(parts) > 1:
            log.info("no time coordinate: %d files are taken in the order given", len(parts))
        ordered = parts
    else:
        if any(t is None for t in times):
            bad = next(p for p in parts if p.time is None)
            raise CtxqError(f"{bad.label}: no decodable time coordinate '{dim}', unlike "
                            f"{next(p for p in parts if p.time is not None).label}")
        calendars = {t.calendar for t in times if t is not None}
        if len(calendars) > 1:
            raise CtxqError(f"{parts[0].label}: files use different calendars "
                            f"({', '.join(sorted(calendars))})")
        reference = times[0]
        assert reference is not None
        starts = [float(np.min(t.expressed_in(reference))) for t in times if t is not None]
        ordered = [parts[i] for i in np.argsort(starts, kind="stable")]
        ends = None
        for part in ordered:
            assert part.time is not None
            values = np.asarray(part.time.expressed_in(reference), dtype=np.float64)
            if len(values) > 1 and np.any(np.diff(values) <= 0):
                raise CtxqError(f"{part.label}: time coordinate '{dim}' does not increase")
            if ends is not None and values[0] <= ends[1]:
                what = "repeats" if values[0] in ends[2] else "overlaps"
                raise CtxqError(f"{part.label}: its first time {_date(part.time, 0)} {what} "
                                f"the times of {ends[0].label} (which ends "
                                f"{_date(ends[0].time, -1)}); each time may appear once")
            ends = (part, values[-1], set(values.tolist()))
    offset = 0
    for part in ordered:
        part.offset = offset
        offset += part.frames
    return ordered


def _date(axis: TimeAxis | None, i: int) -> str:
    """One time of an axis as an ISO date, for messages."""
    return "?" if axis is None else str(axis.dates()[i])


# ----------------------------------------------------------------------------- the record

def open_parts(inputs: Sequence[str | Path], selection: Selection | None = None) -> list[Part]:
    """Every file of the inputs (the group ``selection`` names), opened lazily."""
    group = selection.group if selection else None
    parts = []
    for path in expand(inputs):
        if not is_zarr(path) and file_format(path) == "npz":
            raise CtxqError(f"{path}: an NPZ file cannot be combined with other files")
        parts.append(Part(path, open_dataset(path, group), default_fill=not is_zarr(path)))
    return parts


def check_readable(path: Path) -> None:
    """Fail with one line unless ``path`` is a readable regular file."""
    if not path.exists():
        raise CtxqError(f"{path}: no such file")
    if not path.is_file():
        raise CtxqError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise CtxqError(f"{path}: permission denied")


def file_format(path: Path) -> str:
    """'netcdf' or 'npz', from the file's leading bytes."""
    check_readable(path)
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:3] == b"CDF" or head[:8] == b"\x89HDF\r\n\x1a\n":
        return "netcdf"
    if head[:4] == b"PK\x03\x04" or head[:4] == b"PK\x05\x06":
        return "npz"
    raise CtxqError(f"{path}: not a NetCDF or NPZ file")


def without_packing(attrs: dict[str, Any]) -> dict[str, Any]:
    """Attributes to copy to outputs: the input's packing does not apply to them."""
    return {k: v for k, v in attrs.items() if k not in PACKING_ATTRS}


# ----------------------------------------------------------------------------- xarray objects

def xarray_part(obj: Any, label: str = "<xarray>") -> Part:
    """An xarray DataArray or Dataset (decoded, as xarray opens files) as a part of a record.

    Decoded times are encoded back to numbers in their own units (``encoding``, else days
    since the first), so that distances in time are measured as for a file; valid bounds of a
    packed variable are moved to physical units, since xarray has unpacked its values.
    """
    import xarray as xr

    if isinstance(obj, xr.DataArray):
        obj = obj.to_dataset(name=str(obj.name) if obj.name is not None else "data")
    if not isinstance(obj, xr.Dataset):
        raise TypeError(f"expected an xarray DataArray or Dataset, got {type(obj).__name__}")
    variables = {}
    for name, var in obj.variables.items():
        if var.dtype.kind == "M" or (var.dtype.kind == "O" and var.size and
                                     hasattr(var.values.flat[0], "calendar")):
            numbers, units, calendar = xr.coding.times.encode_cf_datetime(
                var.values, var.encoding.get("units"), var.encoding.get("calendar"))
            var = xr.Variable(var.dims, numbers, {**var.attrs, "units": units,
                                                  "calendar": calendar})
        elif "scale_factor" in var.encoding or "add_offset" in var.encoding:
            var = var.copy(deep=False)
            var.attrs = _physical_bounds(var.attrs, var.encoding)
        variables[name] = var
    coords = [n for n in obj.coords if n in variables]
    ds = xr.Dataset({n: v for n, v in variables.items()}, attrs=dict(obj.attrs)).set_coords(
        coords)
    return Part(Path(label), ds, default_fill=True, reopen=False)


def _physical_bounds(attrs: dict[str, Any], encoding: dict[str, Any]) -> dict[str, Any]:
    """valid_range/valid_min/valid_max of a packed variable in physical units."""
    scale = float(encoding.get("scale_factor", 1.0))
    offset = float(encoding.get("add_offset", 0.0))
    out = dict(attrs)
    for key in ("valid_range", "valid_min", "valid_max"):
        if key in out:
            out[key] = np.asarray(out[key], dtype=np.float64) * scale + offset
    return out
