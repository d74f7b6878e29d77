"""Records: many files, globs, directories, zarr stores, any order of dims, --sel/--isel."""

import netCDF4
import numpy as np
import pytest

from ctxq_cli import api, reading, record, writing
from ctxq_cli.errors import CtxqError

from conftest import smooth_field, write_nc


def daily_file(path, values, first_day, units="days since 2000-01-01", observed=None,
               time_last=False, step=1.0):
    """One file of ``len(values)`` daily frames starting at ``first_day`` of ``units``."""
    if time_last:
        write_nc(path, np.moveaxis(values, 0, -1), observed=None if observed is None else
                 np.moveaxis(observed, 0, -1), dims=("lat", "lon", "time"))
    else:
        write_nc(path, values, observed=observed)
    with netCDF4.Dataset(path, "a") as ds:
        ds["time"].units = units
        ds["time"][:] = first_day + step * np.arange(len(values), dtype=float)
    return path


def test_files_of_a_glob_are_joined_in_time_order_whatever_their_names(tmp_path):
    values = smooth_field(9, 6, 7)
    # Named so that sorting by name gives the wrong order; one file uses other units.
    daily_file(tmp_path / "c.nc", values[:3], 0)
    daily_file(tmp_path / "a.nc", values[3:6], 72, units="hours since 2000-01-01", step=24)
    daily_file(tmp_path / "b.nc", values[6:], 6)
    fld = reading.read_field(str(tmp_path / "*.nc"))
    assert fld.values[:, 0].tobytes() == values.tobytes()
    assert [p.path.name for p in fld.parts] == ["c.nc", "a.nc", "b.nc"]
    times, unit = fld.times()
    np.testing.assert_array_equal(times, np.arange(9.0))
    assert reading.read_field(tmp_path).values.tobytes() == fld.values.tobytes()     # a directory
    listed = reading.read_field([tmp_path / "b.nc", tmp_path / "c.nc", tmp_path / "a.nc"])
    assert listed.values.tobytes() == fld.values.tobytes()


def test_repeated_and_overlapping_times_are_one_line_errors(tmp_path):
    values = smooth_field(6, 5, 5)
    daily_file(tmp_path / "a.nc", values[:3], 0)
    daily_file(tmp_path / "b.nc", values[3:], 2)
    with pytest.raises(CtxqError, match="b.nc: its first time 2000-01-03 00:00:00 repeats the "
                                        "times of .*a.nc"):
        reading.open_field([tmp_path / "a.nc", tmp_path / "b.nc"])
    daily_file(tmp_path / "b.nc", values[3:], 1.5)
    with pytest.raises(CtxqError, match="overlaps"):
        reading.open_field([tmp_path / "a.nc", tmp_path / "b.nc"])
    with pytest.raises(CtxqError, match="a.nc: named twice"):
        reading.open_field([tmp_path / "a.nc", tmp_path / "a.nc"])
    with pytest.raises(CtxqError, match=r"nothing\*.nc: no file matches"):
        reading.open_field(str(tmp_path / "nothing*.nc"))


def test_files_on_another_grid_are_refused(tmp_path):
    values = smooth_field(6, 5, 5)
    daily_file(tmp_path / "a.nc", values[:3], 0)
    daily_file(tmp_path / "b.nc", values[3:], 3)
    with netCDF4.Dataset(tmp_path / "b.nc", "a") as ds:
        ds["lat"][:] = ds["lat"][:] + 20
    with pytest.raises(CtxqError, match="b.nc: coordinate 'lat' differs from .*a.nc"):
        reading.open_field(str(tmp_path / "*.nc"))
    daily_file(tmp_path / "b.nc", smooth_field(3, 5, 6), 3)
    with pytest.raises(CtxqError, match="b.nc: variable 'sst' has shape"):
        reading.open_field(str(tmp_path / "*.nc"))


def test_time_last_reads_like_time_first_and_writes_back_in_its_own_order(tmp_path):
    values = smooth_field(5, 6, 7)
    observed = np.random.default_rng(0).random(values.shape) < 0.7
    first = reading.read_field(daily_file(tmp_path / "first.nc", values, 0, observed=observed))
    last = reading.read_field(daily_file(tmp_path / "last.nc", values, 0, observed=observed,
                                    time_last=True))
    assert last.dims == ("lat", "lon", "time") and last.time_axis == 2
    assert last.values.tobytes() == first.values.tobytes()
    np.testing.assert_array_equal(last.observed, first.observed)
    out = tmp_path / "out.nc"
    sst = writing.OutputVariable("sst", np.where(observed, values, np.nan), {})
    writing.write_output(out, last, [sst], {}, "h")
    with netCDF4.Dataset(out) as ds:
        assert ds["sst"].dimensions == ("lat", "lon", "time")
        back = np.moveaxis(ds["sst"][:].filled(np.nan), -1, 0)
    assert np.array_equal(back, np.where(observed, values, np.nan), equal_nan=True)


def write_levels(path, values):
    """(time, depth, lat, lon) temperatures at depths 0, 10 and 50 m."""
    with netCDF4.Dataset(path, "w") as ds:
        for d, n in zip(("time", "depth", "lat", "lon"), values.shape):
            ds.createDimension(d, n)
        ds.createVariable("depth", "f4", ("depth",))[:] = [0.0, 10.0, 50.0]
        ds.createVariable("time", "f8", ("time",))[:] = np.arange(values.shape[0])
        ds["time"].units = "days since 2000-01-01"
        var = ds.createVariable("thetao", "f4", ("time", "depth", "lat", "lon"))
        var[:] = values
        var.units = "degC"
    return path


def test_an_extra_dimension_is_chosen_by_value_or_by_index(tmp_path):
    values = np.random.default_rng(2).random((4, 3, 5, 6)).astype(np.float32)
    path = write_levels(tmp_path / "levels.nc", values)
    with pytest.raises(CtxqError, match="choose one element of 'depth' with --sel depth="):
        reading.open_field(path)
    by_value = reading.read_field(path, selection=record.Selection.parse(sel=["depth=10"]))
    by_index = reading.read_field(path, selection=record.Selection.parse(isel=["depth=1"]))
    assert by_value.values[:, 0].tobytes() == values[:, 1].tobytes()
    assert by_index.values.tobytes() == by_value.values.tobytes()
    assert by_value.shape == (4, 1, 5, 6)                # the level stays, as one element
    assert next(c for c in by_value.coords if c.name == "depth").values.tolist() == [10.0]
    for sel, isel, pattern in [(["depth=5"], [], r"no such value of 'depth' \(values: 0.0, "
                                                 "10.0, 50.0"),
                               ([], ["depth=3"], "dimension 'depth' has 3 elements"),
                               (["level=0"], [], "no dimension 'level'"),
                               ([], ["depth=top"], "must be an integer"),
                               (["depth"], [], "expected DIM=VALUE")]:
        with pytest.raises(CtxqError, match=pattern):
            reading.open_field(path, selection=record.Selection.parse(sel, isel))


def test_a_zarr_store_reads_like_the_netcdf_file_it_was_made_from(tmp_path):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("zarr")
    values = smooth_field(5, 6, 7)
    observed = np.random.default_rng(3).random(values.shape) < 0.6
    nc = daily_file(tmp_path / "obs.nc", values, 0, observed=observed)
    with xr.open_dataset(nc) as ds:
        ds.to_zarr(tmp_path / "obs.zarr", consolidated=False)
    from_nc, from_zarr = reading.read_field(nc), reading.read_field(tmp_path / "obs.zarr")
    np.testing.assert_array_equal(from_zarr.observed, from_nc.observed)
    assert from_zarr.values.tobytes() == from_nc.values.tobytes()
    np.testing.assert_array_equal(from_zarr.times()[0], from_nc.times()[0])


def test_reading_a_range_opens_only_the_files_it_needs(tmp_path, monkeypatch):
    values = smooth_field(12, 4, 5)
    for i in range(4):
        daily_file(tmp_path / f"d{i}.nc", values[3 * i:3 * i + 3], 3 * i)
    source = reading.open_field(str(tmp_path / "d*.nc"))
    opened = []
    real = record.open_dataset
    monkeypatch.setattr(record, "open_dataset",
                        lambda p, *rest: opened.append(p.name) or real(p, *rest))
    vals, _ = source.read(4, 8)
    assert opened == ["d1.nc", "d2.nc"]
    assert vals[:, 0].tobytes() == values[4:8].tobytes()


def test_files_in_a_model_calendar_join_in_that_calendar_from_files_and_from_xarray(tmp_path):
    xr = pytest.importorskip("xarray")
    values = smooth_field(4, 5, 6)
    for name, part, units, days in (("a.nc", values[:2], "days since 2000-02-27", [0, 1]),
                                    ("b.nc", values[2:], "days since 2000-03-01", [-1, 0])):
        daily_file(tmp_path / name, part, 0, units=units)
        with netCDF4.Dataset(tmp_path / name, "a") as ds:
            ds["time"].calendar = "noleap"
            ds["time"][:] = days
    # a.nc: Feb 27 and 28; b.nc: Feb 28 again and Mar 1.
    with pytest.raises(CtxqError, match="repeats"):
        reading.open_field(str(tmp_path / "*.nc"))
    with netCDF4.Dataset(tmp_path / "b.nc", "a") as ds:
        ds["time"][:] = [0, 1]                                 # Mar 1 and Mar 2
    fld = reading.read_field(str(tmp_path / "*.nc"))
    np.testing.assert_array_equal(fld.times()[0], [0.0, 1.0, 2.0, 3.0])    # no Feb 29
    assert fld.values[:, 0].tobytes() == values.tobytes()
    with xr.open_dataset(tmp_path / "a.nc", use_cftime=True) as a, \
            xr.open_dataset(tmp_path / "b.nc", use_cftime=True) as b:
        joined = xr.concat([a["sst"], b["sst"]], "time")
        source = api.open_record(joined)
    np.testing.assert_array_equal(source.template.times()[0], [0.0, 1.0, 2.0, 3.0])


def test_variables_in_a_netcdf4_group_are_read_with_group(tmp_path):
    values = smooth_field(3, 4, 5)
    path = tmp_path / "grouped.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.title = "root"
        g = ds.createGroup("geophysical_data")
        for d, n in zip(("time", "lat", "lon"), values.shape):
            g.createDimension(d, n)
        g.createVariable("sst", "f4", ("time", "lat", "lon"))[:] = values
    with pytest.raises(CtxqError, match="no data variable"):
        reading.open_field(path)
    fld = reading.read_field(path, selection=record.Selection.parse(group="/geophysical_data"))
    assert fld.names == ["sst"] and fld.values[:, 0].tobytes() == values.tobytes()
    with pytest.raises(CtxqError, match="grouped.nc: cannot be read as NetCDF"):
        reading.open_field(path, selection=record.Selection.parse(group="nope"))
