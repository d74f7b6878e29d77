"""Reading fields: missing values, NPZ, any dim names, one-line errors, time."""

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from ctxq_cli import reading, writing
from ctxq_cli.errors import CtxqError

from conftest import smooth_field, write_mask_nc, write_nc


def test_missing_from_fill_and_nan(tmp_path, small_field):
    values, observed = small_field
    path = write_nc(tmp_path / "obs.nc", values, observed=observed)
    fld = reading.read_field(path)
    assert fld.names == ["sst"] and fld.values.shape == (24, 1, 16, 16)
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    assert fld.values[:, 0][observed].tobytes() == values[observed].tobytes()
    assert np.all(fld.values[~fld.observed] == 0)

    nan_values = np.where(observed, values, np.nan)
    fld = reading.read_field(write_nc(tmp_path / "nan.nc", nan_values, fill=1e20))
    np.testing.assert_array_equal(fld.observed[:, 0], observed)


def test_npz_data_and_mask(tmp_path, small_field):
    values, observed = small_field
    np.savez(tmp_path / "obs.npz", data=values, mask=observed.astype(np.uint8))
    fld = reading.read_field(tmp_path / "obs.npz")
    assert fld.format == "npz"
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    np.savez(tmp_path / "nan.npz", data=np.where(observed, values, np.nan))
    np.testing.assert_array_equal(reading.read_field(tmp_path / "nan.npz").observed[:, 0], observed)


def test_other_dim_names_and_singleton_level(tmp_path):
    values = smooth_field(5, 6, 7)[:, None]          # (time, depth=1, y, x)
    path = write_nc(tmp_path / "nemo.nc", values, name="votemper",
                    dims=("time_counter", "deptht", "y", "x"))
    fld = reading.read_field(path)
    assert fld.values.shape == (5, 1, 6, 7)
    out = tmp_path / "out.nc"
    writing.write_output(out, fld, [writing.OutputVariable("votemper", fld.values[:, 0], {})],
                         {}, "h")
    with netCDF4.Dataset(out) as ds:
        assert ds.variables["votemper"].dimensions == ("time_counter", "deptht", "y", "x")
        np.testing.assert_array_equal(ds.variables["votemper"][:], values)


def test_two_dimensional_variable_is_one_frame(tmp_path):
    values = smooth_field(1, 6, 7)[0]
    fld = reading.read_field(write_nc(tmp_path / "img.nc", values, dims=("lat", "lon")))
    assert fld.values.shape == (1, 1, 6, 7) and fld.time_axis is None


@pytest.mark.parametrize("case, pattern", [
    ("missing", "no such file"),
    ("text", "not a NetCDF or NPZ file"),
    ("unknown_var", r"no variable 'nope' \(available: .*sst"),
    ("coordinate", "'lat' is not a gridded data variable"),
    ("several", "several data variables"),
    ("dims", "choose one element of 'depth' with --sel depth=VALUE"),
    ("mask_shape", "does not match"),
    ("mask_values", "values other than 0/1/NaN"),
    ("corrupt", "cannot be read as NetCDF"),
])
def test_errors_are_one_line_and_name_the_file(tmp_path, small_field, case, pattern):
    values, observed = small_field
    good = write_nc(tmp_path / "good.nc", values, observed=observed)
    kwargs = {}
    path = good
    if case == "missing":
        path = tmp_path / "absent.nc"
    elif case == "text":
        path = tmp_path / "notes.nc"
        path.write_text("hello")
    elif case == "unknown_var":
        kwargs["variables"] = ["nope"]
    elif case == "coordinate":
        kwargs["variables"] = ["lat"]
    elif case == "several":
        path = write_nc(tmp_path / "two.nc", values)
        with netCDF4.Dataset(path, "a") as ds:
            ds.createVariable("sss", "f4", ("time", "lat", "lon"))[:] = values
    elif case == "dims":
        path = write_nc(tmp_path / "4d.nc", np.zeros((2, 3, 4, 5), np.float32),
                        dims=("time", "depth", "lat", "lon"))
    elif case == "mask_shape":
        kwargs["mask_path"] = write_mask_nc(tmp_path / "m.nc", observed[:, :8])
    elif case == "mask_values":
        mpath = tmp_path / "m.nc"
        with netCDF4.Dataset(mpath, "w") as ds:
            for d, n in zip(("time", "lat", "lon"), values.shape):
                ds.createDimension(d, n)
            ds.createVariable("mask", "f4", ("time", "lat", "lon"))[:] = 0.5
        kwargs["mask_path"] = mpath
    elif case == "corrupt":
        path = tmp_path / "c.nc"
        path.write_bytes(good.read_bytes()[:200])
    with pytest.raises(CtxqError, match=pattern) as info:
        reading.read_field(path, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    assert str(Path(message.split(":")[0]).name) in {p.name for p in tmp_path.iterdir()} | {
        "absent.nc"}


def test_string_variables_are_ignored_and_bad_zips_refused(tmp_path, small_field):
    values, observed = small_field
    path = write_nc(tmp_path / "obs.nc", values, observed=observed)
    with netCDF4.Dataset(path, "a") as ds:
        ds.createDimension("nchar", 3)
        label = ds.createVariable("label", str, ("nchar",))
        label[0] = "abc"
    assert reading.read_field(path).names == ["sst"]
    import zipfile
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("readme.txt", "not an array")
    with pytest.raises(CtxqError, match="not an NPZ file"):
        reading.read_field(tmp_path / "x.npz")


def test_npz_has_no_default_fill(tmp_path):
    data = np.full((3, 4, 4), 65535, dtype=np.uint16)
    np.savez(tmp_path / "u.npz", data=data)
    assert reading.read_field(tmp_path / "u.npz").observed.all()


def test_values_out_of_range_are_reported_once_per_variable_not_per_chunk(tmp_path, caplog):
    values = np.zeros((6, 4, 4), np.float32)
    values[[0, 3, 5], 1, 1] = 50.0            # beyond valid_max, in three chunks of two
    path = write_nc(tmp_path / "obs.nc", values, extra={"valid_max": np.float32(10)})
    source = reading.open_field(path)
    with caplog.at_level("INFO", logger="ctxq_cli.reading"):
        observed = np.concatenate([source.read(a, a + 2)[1] for a in (0, 2, 4)])
    assert observed.sum() == values.size - 3          # all three treated as missing
    lines = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert len(lines) == 1 and "frames 0–1" in lines[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="ctxq_cli.reading"):
        reading.read_field(path)
    lines = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert len(lines) == 1 and "3 values" in lines[0] and "frames" not in lines[0]


def test_the_time_coordinate_is_decoded_to_days_in_its_calendar(tmp_path):
    path = write_nc(tmp_path / "t.nc", smooth_field(4, 5, 6))
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["time"].units = "hours since 2001-02-27 00:00:00"
        ds.variables["time"].calendar = "noleap"
        ds.variables["time"][:] = [0.0, 24.0, 72.0, 96.0]        # no 29 February in noleap
    times, unit = reading.read_field(path).times()
    assert unit == "days"
    np.testing.assert_allclose(times, [0.0, 1.0, 3.0, 4.0])
    assert "1 irregular step" in reading.describe_times(times, unit)
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["time"][:] = [0.0, 24.0, 24.0, 48.0]
    with pytest.raises(CtxqError, match="does not increase at frame 2"):
        reading.read_field(path).times()
    npz = tmp_path / "t.npz"
    np.savez(npz, data=smooth_field(3, 4, 4))
    assert reading.read_field(npz).times() == (None, "frames")
