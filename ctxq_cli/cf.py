"""CF decoding and encoding of one variable's raw values (pure numpy, no file access).

Decoding turns a raw array ``r`` with CF attributes into physical values and a mask::

    missing = r ∈ F  ∨  r outside the valid range  ∨  ¬finite(decoded)
    value   = r · scale_factor + add_offset            (where not missing, else 0)

where ``F`` is the union of ``_FillValue`` and ``missing_value`` (scalars or lists), compared
in the variable's own type (as the netCDF library does). Order follows CF: mask first (in packed
units), then scale. Integers flagged ``_Unsigned = "true"`` are read as unsigned. Packed
integers are promoted to float32; float64 stays float64, so that observed values can be
written back exactly.

Valid-range policy: ``valid_range``, ``valid_min`` and ``valid_max`` mark values outside them
as missing. CF states them in packed units when they are integers on an integer variable (or
floats on a float variable); a floating bound on an integer variable is read in physical units.

Encoding is the inverse: ``decode(encode(v, m, enc), enc.attrs) == (v, m)`` for every ``v``
representable in the packed type (tested for int16 + scale_factor + add_offset + _FillValue).

References:
    NetCDF Climate and Forecast (CF) Metadata Conventions 1.8, section 2.5 and 8.1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PACKING_ATTRS = ("_FillValue", "missing_value", "scale_factor", "add_offset",
                 "valid_range", "valid_min", "valid_max", "_Unsigned")

# netCDF-C default fill values, used when a variable declares none (as the library does).
DEFAULT_FILL = {
    "i2": -32767, "u2": 65535, "i4": -2147483647, "u4": 4294967295,
    "i8": -9223372036854775806, "u8": 18446744073709551614,
    "f4": 9.969209968386869e36, "f8": 9.969209968386869e36,
}


@dataclass(frozen=True)
class Encoding:
    """How a variable is stored on disk: dtype, packing and fill value."""

    dtype: str = "float32"
    fill_value: float | int | None = None
    scale_factor: float | None = None
    add_offset: float | None = None

    @property
    def attrs(self) -> dict[str, Any]:
        """CF attributes that describe this encoding."""
        out: dict[str, Any] = {}
        if self.fill_value is not None:
            out["_FillValue"] = np.array(self.fill_value, dtype=self.dtype)
        if self.scale_factor is not None:
            out["scale_factor"] = np.float32(self.scale_factor)
        if self.add_offset is not None:
            out["add_offset"] = np.float32(self.add_offset)
        return out


@dataclass
class Decoded:
    """Physical values (float32, or float64 for float64 input; 0 where missing) and the mask."""

    values: np.ndarray
    missing: np.ndarray
    counts: dict[str, int] = field(default_factory=dict)


def _as_list(value: Any) -> list:
    """An attribute value as a flat list."""
    return list(np.atleast_1d(np.asarray(value)).ravel())


def fill_values(raw_dtype: np.dtype, attrs: Mapping[str, Any], default_fill: bool = True) -> list:
    """The union of ``_FillValue`` and ``missing_value`` in the raw type, or the default fill."""
    values = []
    for name in ("_FillValue", "missing_value"):
        if name in attrs:
            values += _as_list(attrs[name])
    if not values and default_fill and raw_dtype.str[1:] in DEFAULT_FILL:
        values.append(DEFAULT_FILL[raw_dtype.str[1:]])
    out = []
    for v in values:
        with np.errstate(invalid="ignore", over="ignore"):
            cast = np.asarray(v).astype(raw_dtype) if raw_dtype.kind in "iuf" else v
        if raw_dtype.kind in "iu" and float(cast) != float(v):
            continue  # a fill value the type cannot hold never matches
        out.append(cast)
    return out


def _valid_bounds(attrs: Mapping[str, Any]) -> tuple[Any, Any]:
    """(low, high) from ``valid_range`` or ``valid_min``/``valid_max``; None when absent."""
    if "valid_range" in attrs:
        lo, hi = _as_list(attrs["valid_range"])[:2]
        return lo, hi
    return attrs.get("valid_min"), attrs.get("valid_max")


def _unsigned(raw: np.ndarray, attrs: Mapping[str, Any]) -> tuple[np.ndarray, dict[str, Any]]:
    """Reinterpret signed integers flagged ``_Unsigned = "true"``, with their attributes."""
    if raw.dtype.kind != "i" or str(attrs.get("_Unsigned", "")).lower() != "true":
        return raw, dict(attrs)
    udtype = np.dtype(f"u{raw.dtype.itemsize}")
    fixed = dict(attrs)
    for key in ("_FillValue", "missing_value", "valid_range", "valid_min", "valid_max"):
        if key in fixed and np.asarray(fixed[key]).dtype.kind == "i":
            fixed[key] = np.asarray(fixed[key]).astype(raw.dtype).view(udtype)
    return raw.view(udtype), fixed


def decode(raw: np.ndarray, attrs: Mapping[str, Any], default_fill: bool = True) -> Decoded:
    """Decode a raw CF variable into physical values and a missing mask.

    ``default_fill`` treats the netCDF default fill value as missing when none is declared
    (true for NetCDF variables, false for NPZ arrays).
    """
    raw = np.asarray(raw)
    if raw.dtype.kind not in "iufb":
        raise TypeError(f"cannot decode values of type {raw.dtype}")
    raw, attrs = _unsigned(raw, attrs)
    missing = np.zeros(raw.shape, dtype=bool)
    counts: dict[str, int] = {}

    for fv in fill_values(raw.dtype, attrs, default_fill):
        hit = np.isnan(raw) if (raw.dtype.kind == "f" and np.isnan(fv)) else (raw == fv)
        missing |= hit
    counts["fill"] = int(missing.sum())

    scale = float(np.asarray(attrs.get("scale_factor", 1.0)).ravel()[0])
    offset = float(np.asarray(attrs.get("add_offset", 0.0)).ravel()[0])
    work = np.float64 if raw.dtype.itemsize >= 4 else np.float32
    decoded = raw.astype(work)
    if scale != 1.0:
        decoded = decoded * scale
    if offset != 0.0:
        decoded = decoded + offset

    lo, hi = _valid_bounds(attrs)
    if lo is not None or hi is not None:
        # Integer bounds on integers, float bounds on floats: packed units; else physical.
        def kind(a: Any) -> str:
            return "int" if np.asarray(a).dtype.kind in "iub" else "float"

        packed_units = any(kind(b) == kind(raw) for b in (lo, hi) if b is not None)
        ref = raw if packed_units else decoded
        out = np.zeros(raw.shape, dtype=bool)
        if lo is not None:
            out |= ref < lo
        if hi is not None:
            out |= ref > hi
        counts["out_of_range"] = int((out & ~missing).sum())
        missing |= out

    out_dtype = np.float64 if raw.dtype == np.float64 else np.float32
    with np.errstate(invalid="ignore", over="ignore"):
        values = decoded.astype(out_dtype)
    nonfinite = ~np.isfinite(values) & ~missing
    counts["nonfinite"] = int(nonfinite.sum())
    missing |= nonfinite
    values[missing] = 0.0
    return Decoded(values=values, missing=missing, counts=counts)


def encode(values: np.ndarray, missing: np.ndarray, encoding: Encoding) -> np.ndarray:
    """Encode physical values into the stored dtype, writing the fill value where missing."""
    dtype = np.dtype(encoding.dtype)
    packed = np.asarray(values, dtype=np.float64)
    if encoding.add_offset is not None:
        packed = packed - float(np.float32(encoding.add_offset))
    if encoding.scale_factor is not None:
        packed = packed / float(np.float32(encoding.scale_factor))
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        packed = np.clip(np.round(np.where(missing, 0.0, packed)), info.min, info.max)
    out = packed.astype(dtype)
    if encoding.fill_value is not None:
        out[missing] = np.array(encoding.fill_value, dtype=dtype)
    elif dtype.kind == "f":
        out[missing] = np.nan
    return out
