"""End to end on a month of GHRSST-like daily files: a glob and a directory in, one output or
one output per day out, quality levels, a land flag mask, provenance checks, and the Python
API matching the command line bit for bit."""

import warnings
from datetime import datetime, timedelta

import netCDF4
import numpy as np
import pytest
from typer.testing import CliRunner

from ctxq_cli import api
from ctxq_cli.cli import app
from ctxq_cli.flags import Quality

from conftest import smooth_field

xr = pytest.importorskip("xarray")
runner = CliRunner()
TINY = ["--channels", "8,16", "--steps", "4", "--batch-size", "2", "--window", "2", "--quiet"]
DAYS, NY, NX = 30, 12, 14
EPOCH = datetime(1981, 1, 1)
LAND = np.zeros((NY, NX), bool)
LAND[:4, :3] = True


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


def write_day(path, day, sst, observed, levels, time_last=False, units="kelvin",
              lat_shift=0.0):
    """One GHRSST L3-like file: packed SST, a quality_level and a land/water flag mask."""
    dims = ("lat", "lon", "time") if time_last else ("time", "lat", "lon")

    def put(a):
        return np.moveaxis(a[None], 0, -1) if time_last else a[None]

    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", NY)
        ds.createDimension("lon", NX)
        t = ds.createVariable("time", "i4", ("time",))
        t.units, t.calendar, t.axis = "seconds since 1981-01-01 00:00:00", "gregorian", "T"
        t[:] = [int((day - EPOCH).total_seconds())]
        for name, n, start, sn in (("lat", NY, 40.0 + lat_shift, "latitude"),
                                   ("lon", NX, -20.0, "longitude")):
            c = ds.createVariable(name, "f4", (name,))
            c[:] = start + 0.25 * np.arange(n)
            c.standard_name, c.units = sn, "degrees_north" if name == "lat" else "degrees_east"
        v = ds.createVariable("sea_surface_temperature", "i2", dims, fill_value=-32768)
        v.set_auto_maskandscale(False)
        v.scale_factor, v.add_offset = np.float32(0.01), np.float32(273.15)
        v.units, v.standard_name = units, "sea_surface_temperature"
        v.valid_min, v.valid_max = np.int16(-300), np.int16(4500)
        v[:] = put(np.where(observed, np.round((sst - 273.15) / 0.01), -32768).astype("i2"))
        q = ds.createVariable("quality_level", "i1", dims, fill_value=-128)
        q.set_auto_maskandscale(False)
        q.flag_values = np.arange(6, dtype=np.int8)
        q.flag_meanings = ("no_data bad_data worst_quality low_quality acceptable_quality "
                           "best_quality")
        q[:] = put(np.where(observed, levels, 0).astype("i1"))
        m = ds.createVariable("mask", "i1", dims)
        m.flag_masks = np.array([1, 2, 4, 8, 16], np.int8)
        m.flag_meanings = "water land optional_lake_surface sea_ice optional_river_surface"
        m[:] = put(np.where(LAND, 2, 1).astype("i1"))
        v.ancillary_variables = "quality_level"
        ds.Conventions, ds.title = "CF-1.7", "GHRSST-like test file"
        ds.start_time = day.strftime("%Y%m%dT%H%M%SZ")


def month(directory, time_last=False):
    """30 daily files, named by date, with clouds, quality levels and land."""
    rng = np.random.default_rng(7)
    sst = 288.0 + 2.0 * smooth_field(DAYS, NY, NX, seed=7)
    observed = (rng.random(sst.shape) < 0.55) & ~LAND
    levels = rng.integers(2, 6, sst.shape).astype(np.int8)
    directory.mkdir()
    for d in range(DAYS):
        day = datetime(2020, 6, 1) + timedelta(days=d)
        write_day(directory / f"{day:%Y%m%d}120000-L3C-GHRSST-SSTskin.nc", day, sst[d],
                  observed[d], levels[d], time_last)
    return observed & (levels >= 4)


def no_warnings_open(path):
    """xarray opens the file, decodes it and raises no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with xr.open_dataset(path) as ds:
            return ds.load()


def same_attrs(a, b):
    """Attribute dicts equal, array values compared element by element."""
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.slow
@pytest.mark.parametrize("time_last", [False, True], ids=["time_first", "time_last"])
def test_a_month_of_daily_files_in_and_out(tmp_path, time_last):
    kept = month(tmp_path / "l3", time_last)
    files = sorted((tmp_path / "l3").glob("*.nc"))
    select = ["--quality-var", "quality_level", "--min-quality", "4", "--domain", files[0]]
    den = tmp_path / "d.safetensors"
    result = run("train-denoiser", tmp_path / "l3" / "*.nc", "-o", den, *select, *TINY)
    assert result.exit_code == 0, result.output

    one = tmp_path / "month.nc"
    result = run("impute", tmp_path / "l3" / "*.nc", "--checkpoint", den, "-o", one,
                 "--ensemble", "2", *select, "--quiet")
    assert result.exit_code == 0, result.output
    merged = no_warnings_open(one)
    sst = merged["sea_surface_temperature"]
    assert sst.dims == (("lat", "lon", "time") if time_last else ("time", "lat", "lon"))
    sst = sst.transpose("time", "lat", "lon").values
    assert np.isnan(sst[:, LAND]).all() and np.isfinite(sst[:, ~LAND]).all()   # land is fill
    truth = xr.concat([xr.open_dataset(f)["sea_surface_temperature"] for f in files], "time")
    truth = truth.transpose("time", "lat", "lon").values
    assert sst[kept].tobytes() == truth[kept].tobytes()          # observations kept exactly
    with netCDF4.Dataset(one) as ds:
        for name in ("sea_surface_temperature", "sea_surface_temperature_std",
                     "sea_surface_temperature_flag"):
            assert "_FillValue" in ds[name].ncattrs(), name
        assert ds["time"].units == "seconds since 1981-01-01 00:00:00"
        assert ds["time"][:].tolist() == [netCDF4.Dataset(f)["time"][0] for f in files]

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    result = run("impute", tmp_path / "l3", "--checkpoint", den, "--output-dir", out_dir,
                 "--ensemble", "2", *select, "--quiet")
    assert result.exit_code == 0, result.output
    daily = sorted(out_dir.iterdir())
    assert [p.name for p in daily] == [f.stem + "_imputed.nc" for f in files]
    for i, (path, source) in enumerate(zip(daily, files)):
        day = no_warnings_open(path)
        assert day.sizes["time"] == 1
        assert day["time"].values[0] == merged["time"].values[i]
        assert day.attrs["start_time"] == xr.open_dataset(source).attrs["start_time"]
        for name in ("sea_surface_temperature", "sea_surface_temperature_std"):
            np.testing.assert_array_equal(day[name].values, merged[name].isel(time=[i]).values)


def test_other_units_and_a_shifted_grid_are_refused_in_one_line(tmp_path):
    month(tmp_path / "l3")
    files = sorted((tmp_path / "l3").glob("*.nc"))
    den = tmp_path / "d.safetensors"
    assert run("train-denoiser", files[0].parent, "-o", den, *TINY).exit_code == 0
    rng = np.random.default_rng(1)
    sst, observed = 288.0 + rng.random((NY, NX)), ~LAND
    levels = np.full((NY, NX), 5, np.int8)
    day = datetime(2020, 7, 1)
    write_day(tmp_path / "celsius.nc", day, sst - 273.15 + 273.15, observed, levels,
              units="celsius")
    write_day(tmp_path / "moved.nc", day, sst, observed, levels, lat_shift=20.0)
    for name, words in (("celsius", "is in 'celsius', the model was trained on 'kelvin'"),
                        ("moved", "coordinate 'lat' runs 60 to")):
        out = tmp_path / f"{name}_out.nc"
        result = run("impute", tmp_path / f"{name}.nc", "--checkpoint", den, "-o", out)
        assert result.exit_code == 1 and words in result.output, result.output
        assert result.output.count("\n") <= 2 and "Traceback" not in result.output
        assert not out.exists()


@pytest.mark.slow
def test_a_notebook_fills_a_dataarray_exactly_as_the_command_line(tmp_path):
    kept = month(tmp_path / "l3")
    files = sorted((tmp_path / "l3").glob("*.nc"))
    den = tmp_path / "d.safetensors"
    assert run("train-denoiser", files[0].parent, "-o", den, *TINY).exit_code == 0
    out = tmp_path / "cli.nc"
    result = run("impute", files[0].parent, "--checkpoint", den, "-o", out, "--ensemble", "3",
                 "--seed", "4", "--quiet")
    assert result.exit_code == 0, result.output
    cli = no_warnings_open(out)

    # As in a notebook: open the files with xarray, fill the DataArray.
    sst = xr.concat([xr.open_dataset(f)["sea_surface_temperature"] for f in files], "time")
    model = api.load_model(den)
    filled = api.impute(sst, model, ensemble=3, seed=4)
    assert set(filled.data_vars) == set(cli.data_vars)
    for name in cli.data_vars:
        assert filled[name].dims == cli[name].dims
        assert filled[name].dtype == cli[name].dtype, name
        assert filled[name].values.tobytes() == cli[name].values.tobytes(), name
        assert same_attrs(filled[name].attrs, cli[name].attrs), name
    np.testing.assert_array_equal(filled["time"].values, cli["time"].values)
    assert filled["sea_surface_temperature"].values[kept].size
    # A Dataset, a quality level and the model's path work the same way.
    ds = xr.concat([xr.open_dataset(f) for f in files], "time")
    with_quality = api.impute(ds, den, ensemble=3, seed=4, quality=Quality("quality_level", 4))
    assert with_quality.attrs["ctxq_quality"] == "quality_level >= 4"
    flags = with_quality["sea_surface_temperature_flag"].values
    assert (flags[kept] == 0).all()


def test_several_inputs_need_a_named_output_and_per_file_outputs_are_all_or_nothing(
        tmp_path, monkeypatch):
    month(tmp_path / "l3")
    files = sorted((tmp_path / "l3").glob("*.nc"))
    den = tmp_path / "d.safetensors"
    assert run("train-denoiser", *files[:6], "-o", den, *TINY).exit_code == 0
    result = run("impute", *files[:6], "--checkpoint", den)
    assert result.exit_code == 1 and "6 input files: name the output with --output" in \
        result.output
    (tmp_path / "a_file").write_text("")
    result = run("impute", *files[:6], "--checkpoint", den, "--output-dir", tmp_path / "a_file")
    assert result.exit_code == 1 and "exists and is not a directory" in result.output
    out_dir = tmp_path / "out" / "daily"  # created, parents included, as mkdir -p would
    result = run("impute", *files[:2], "--checkpoint", den, "--output-dir", out_dir)
    assert result.exit_code == 0 and len(list(out_dir.iterdir())) == 2
    for p in out_dir.iterdir():
        p.unlink()
    (out_dir / f"{files[3].stem}_imputed.nc").write_text("earlier result")
    result = run("impute", *files[:6], "--checkpoint", den, "--output-dir", out_dir)
    assert result.exit_code == 1 and "output exists (use --overwrite" in result.output
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{files[3].stem}_imputed.nc"]
    # A failure after some days were written leaves no output at all, not the days before it.
    from ctxq_cli import fill
    from ctxq_cli.errors import CtxqError

    calls = []
    real = fill.output_arrays

    def failing(names, result):
        calls.append(1)
        if len(calls) == 3:
            raise CtxqError("the disk went away")
        return real(names, result)

    monkeypatch.setattr(fill, "output_arrays", failing)
    result = run("impute", *files[:6], "--checkpoint", den, "--output-dir", out_dir,
                 "--overwrite", "--chunk", "2", "--ensemble", "2")
    assert result.exit_code == 1 and "the disk went away" in result.output, result.output
    assert len(calls) == 3
    assert sorted(p.name for p in out_dir.iterdir()) == [f"{files[3].stem}_imputed.nc"]
    assert (out_dir / f"{files[3].stem}_imputed.nc").read_text() == "earlier result"


def test_numpy_arrays_and_options_are_checked_where_they_are_defined(tmp_path):
    values = smooth_field(8, 10, 10, seed=2)
    observed = np.random.default_rng(2).random(values.shape) < 0.5
    data = np.where(observed, values, np.nan).astype(np.float32)
    model = api.train_denoiser(data, channels=(8, 16), steps=4, batch_size=2, window=2,
                               output=tmp_path / "m.safetensors")
    assert (tmp_path / "m.safetensors").exists() and model.variables == ["data"]
    filled = api.impute(data, model, ensemble=2, calibrate=False)
    assert filled["data"].dims == ("time", "y", "x")
    mean = filled["data"].values
    assert mean[observed].tobytes() == data[observed].tobytes()
    assert np.isfinite(mean[:, model.domain]).all()
    with pytest.raises(ValueError, match="ImputeOptions.ensemble must be a positive integer"):
        api.ImputeOptions(ensemble=0)
    with pytest.raises(ValueError, match="ImputeOptions.guidance_rho"):
        api.impute(data, model, guidance_rho=2.0)
    with pytest.raises(ValueError, match=r"expected an array \(T, H, W\)"):
        api.impute(data[0, 0], model)
