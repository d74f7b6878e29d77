"""Shared fixtures: tiny CF NetCDF/NPZ files written with netCDF4 directly."""

from __future__ import annotations

from pathlib import Path

import netCDF4
import numpy as np
import pytest


def smooth_field(frames: int, ny: int, nx: int, seed: int = 0) -> np.ndarray:
    """A smooth, slowly drifting random field (frames, ny, nx), float32, unit-ish variance."""
    rng = np.random.default_rng(seed)
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.fftfreq(nx)[None, :]
    spectrum = np.exp(-(kx ** 2 + ky ** 2) / (2 * 0.06 ** 2))
    base = rng.normal(size=(ny, nx)) + 1j * rng.normal(size=(ny, nx))
    drift = rng.normal(size=(ny, nx)) + 1j * rng.normal(size=(ny, nx))
    out = []
    for t in range(frames):
        coeff = (base * np.cos(0.1 * t) + drift * np.sin(0.1 * t)) * spectrum
        out.append(np.real(np.fft.ifft2(coeff)))
    field = np.array(out)
    return (field / field.std()).astype(np.float32)


def write_nc(path: Path, values: np.ndarray, name: str = "sst", observed: np.ndarray | None = None,
             dims: tuple[str, ...] = ("time", "lat", "lon"), fill: float = -999.0,
             dtype: str = "f4", scale: float | None = None, offset: float | None = None,
             extra: dict | None = None) -> Path:
    """Write a CF variable with coordinates; cells not observed get the fill value."""
    observed = np.ones(values.shape, bool) if observed is None else observed
    with netCDF4.Dataset(path, "w") as ds:
        for d, n in zip(dims, values.shape):
            ds.createDimension(d, None if d == "time" else n)
            if d in ("time", "lat", "lon"):
                cv = ds.createVariable(d, "f8", (d,))
                cv[:] = np.arange(n, dtype=float)
                cv.units = {"time": "days since 2000-01-01", "lat": "degrees_north",
                            "lon": "degrees_east"}[d]
        var = ds.createVariable(name, dtype, dims, fill_value=np.array(fill, dtype=dtype))
        var.set_auto_maskandscale(False)
        var.units = "K"
        var.standard_name = "sea_surface_temperature"
        raw = values.astype(np.float64)
        if offset is not None:
            var.add_offset = np.float32(offset)
            raw = raw - np.float32(offset)
        if scale is not None:
            var.scale_factor = np.float32(scale)
            raw = raw / np.float32(scale)
        if np.dtype(dtype).kind in "iu":
            raw = np.round(raw)
        raw = raw.astype(dtype)
        raw[~observed] = np.array(fill, dtype=dtype)
        var[...] = raw
        for k, v in (extra or {}).items():
            var.setncattr(k, v)
        ds.Conventions = "CF-1.8"
        ds.history = "created by the test suite"
    return path


def write_mask_nc(path: Path, observed: np.ndarray, dims=("time", "lat", "lon")) -> Path:
    """Write a 'mask' variable (int8, 1 = observed)."""
    with netCDF4.Dataset(path, "w") as ds:
        for d, n in zip(dims[-observed.ndim:], observed.shape):
            ds.createDimension(d, n)
        var = ds.createVariable("mask", "i1", dims[-observed.ndim:])
        var[...] = observed.astype(np.int8)
    return path


@pytest.fixture
def small_field() -> tuple[np.ndarray, np.ndarray]:
    """A 24-frame 16×16 smooth field with 40 % of pixels observed."""
    values = smooth_field(24, 16, 16, seed=1)
    observed = np.random.default_rng(2).random(values.shape) < 0.4
    return values, observed
