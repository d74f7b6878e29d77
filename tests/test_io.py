"""Reading fields, masks and domains; writing outputs atomically and CF-correctly."""

import os
from pathlib import Path

import netCDF4
import numpy as np
import pytest

from ctxq_cli import io
from ctxq_cli.cf import Encoding
from ctxq_cli.errors import CtxqError

from conftest import smooth_field, write_mask_nc, write_nc


def test_missing_from_fill_and_nan(tmp_path, small_field):
    values, observed = small_field
    path = write_nc(tmp_path / "obs.nc", values, observed=observed)
    fld = io.read_field(path)
    assert fld.names == ["sst"] and fld.values.shape == (24, 1, 16, 16)
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    assert fld.values[:, 0][observed].tobytes() == values[observed].tobytes()
    assert np.all(fld.values[~fld.observed] == 0)

    nan_values = np.where(observed, values, np.nan)
    fld = io.read_field(write_nc(tmp_path / "nan.nc", nan_values, fill=1e20))
    np.testing.assert_array_equal(fld.observed[:, 0], observed)


def test_mask_file_intersects_and_broadcasts(tmp_path, small_field):
    values, observed = small_field
    data = write_nc(tmp_path / "full.nc", values)
    mask = write_mask_nc(tmp_path / "mask.nc", observed)
    fld = io.read_field(data, mask_path=mask)
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    assert np.all(fld.values[:, 0][~observed] == 0)  # hidden values are not used

    static = write_mask_nc(tmp_path / "static.nc", observed[0], dims=("lat", "lon"))
    fld = io.read_field(data, mask_path=static)
    assert np.all(fld.observed[:, 0] == observed[0])


def test_npz_data_and_mask(tmp_path, small_field):
    values, observed = small_field
    np.savez(tmp_path / "obs.npz", data=values, mask=observed.astype(np.uint8))
    fld = io.read_field(tmp_path / "obs.npz")
    assert fld.format == "npz"
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    np.savez(tmp_path / "nan.npz", data=np.where(observed, values, np.nan))
    np.testing.assert_array_equal(io.read_field(tmp_path / "nan.npz").observed[:, 0], observed)


def test_domain_from_observed_and_from_file(tmp_path, small_field):
    values, observed = small_field
    observed = observed.copy()
    observed[:, :, :3] = False   # "land" never observed
    fld = io.read_field(write_nc(tmp_path / "obs.nc", values, observed=observed))
    dom = io.observed_domain(fld.observed)
    assert not dom[:, :3].any() and dom[:, 3:].all()
    land = np.zeros((16, 16), np.int8)
    land[:, 5:] = 1
    with netCDF4.Dataset(tmp_path / "domain.nc", "w") as ds:
        ds.createDimension("lat", 16)
        ds.createDimension("lon", 16)
        ds.createVariable("domain", "i1", ("lat", "lon"))[:] = land
    np.testing.assert_array_equal(io.read_domain(tmp_path / "domain.nc", (16, 16)), land == 1)
    with pytest.raises(CtxqError, match="shape"):
        io.read_domain(tmp_path / "domain.nc", (8, 8))


def test_other_dim_names_and_singleton_level(tmp_path):
    values = smooth_field(5, 6, 7)[:, None]          # (time, depth=1, y, x)
    path = write_nc(tmp_path / "nemo.nc", values, name="votemper",
                    dims=("time_counter", "deptht", "y", "x"))
    fld = io.read_field(path)
    assert fld.values.shape == (5, 1, 6, 7)
    out = tmp_path / "out.nc"
    io.write_output(out, fld, [io.OutputVariable("votemper", fld.values[:, 0], {})], {}, "h")
    with netCDF4.Dataset(out) as ds:
        assert ds.variables["votemper"].dimensions == ("time_counter", "deptht", "y", "x")
        np.testing.assert_array_equal(ds.variables["votemper"][:], values)


def test_two_dimensional_variable_is_one_frame(tmp_path):
    values = smooth_field(1, 6, 7)[0]
    fld = io.read_field(write_nc(tmp_path / "img.nc", values, dims=("lat", "lon")))
    assert fld.values.shape == (1, 1, 6, 7) and fld.time_axis is None


def test_written_file_mirrors_input_and_round_trips_packed_int16(tmp_path, small_field):
    values, observed = small_field
    src = write_nc(tmp_path / "obs.nc", values, observed=observed,
                   extra={"long_name": "sea surface temperature"})
    fld = io.read_field(src)
    enc = Encoding("int16", fill_value=-32767, scale_factor=0.001, add_offset=0.5)
    expected = np.where(observed, values, np.nan)
    out = tmp_path / "packed.nc"
    io.write_output(out, fld, [io.OutputVariable("sst", expected, fld.var_attrs[0],
                                                 encoding=enc)],
                    {"ctxq_test": 1}, "2026-01-01T00:00:00Z: ctxq test")
    back = io.read_field(out)
    np.testing.assert_array_equal(back.observed[:, 0], observed)
    np.testing.assert_allclose(back.values[:, 0][observed], values[observed], atol=6e-4)
    with netCDF4.Dataset(out) as ds:
        var = ds.variables["sst"]
        assert var.dtype == np.int16 and var.units == "K"
        assert var.standard_name == "sea_surface_temperature"
        assert ds.history.startswith("2026-01-01T00:00:00Z: ctxq test\n")
        assert "created by the test suite" in ds.history
        assert ds.ctxq_test == 1
        assert ds.dimensions["time"].isunlimited()
        np.testing.assert_array_equal(ds.variables["lat"][:], np.arange(16))
        assert ds.variables["lat"].units == "degrees_north"


def test_npz_output(tmp_path, small_field):
    values, observed = small_field
    np.savez(tmp_path / "obs.npz", data=values)
    fld = io.read_field(tmp_path / "obs.npz")
    io.write_output(tmp_path / "out.npz", fld, [io.OutputVariable("data", values, {})], {}, "h")
    with np.load(tmp_path / "out.npz") as npz:
        np.testing.assert_array_equal(npz["data"], values)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nc"
    target.write_text("previous")
    with pytest.raises(CtxqError, match="out.nc: cannot write .boom.; nothing was written"):
        with io.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")  # what netCDF4 raises on a full disk
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["out.nc"]


def test_check_output_refuses_existing_and_inputs(tmp_path):
    inp = tmp_path / "obs.nc"
    inp.write_text("x")
    with pytest.raises(CtxqError, match="overwrite an input"):
        io.check_output(inp, True, [inp])
    with pytest.raises(CtxqError, match="exists"):
        io.check_output(inp, False, [])
    with pytest.raises(CtxqError, match="does not exist"):
        io.check_output(tmp_path / "nodir" / "o.nc", False, [])
    assert io.check_output(tmp_path / "new.nc", False, [inp]) == tmp_path / "new.nc"


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
        io.read_field(path, **kwargs)
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
    assert io.read_field(path).names == ["sst"]
    import zipfile
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as z:
        z.writestr("readme.txt", "not an array")
    with pytest.raises(CtxqError, match="not an NPZ file"):
        io.read_field(tmp_path / "x.npz")


def test_npz_has_no_default_fill(tmp_path):
    data = np.full((3, 4, 4), 65535, dtype=np.uint16)
    np.savez(tmp_path / "u.npz", data=data)
    assert io.read_field(tmp_path / "u.npz").observed.all()


def test_outputs_get_ordinary_permissions(tmp_path):
    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        with io.atomic_path(target) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (target.stat().st_mode & 0o777) == 0o644


def test_a_computation_failing_inside_an_output_is_not_called_a_write_failure(tmp_path):
    values = np.zeros((3, 4, 5), np.float32)
    fld = io.read_field(write_nc(tmp_path / "in.nc", values))
    spec = [io.OutputVariable("sst", None, {})]
    out = tmp_path / "out.nc"
    with pytest.raises(RuntimeError, match="out of memory"):
        with io.open_output(out, fld, spec, "h") as writer:
            writer.write(0, {"sst": values[:1]})
            raise RuntimeError("CUDA out of memory")
    assert not out.exists() and not list(tmp_path.glob(".out.nc*"))


def test_a_mask_with_another_number_of_frames_is_refused_before_any_work(tmp_path):
    values = np.zeros((6, 4, 5), np.float32)
    write_nc(tmp_path / "in.nc", values)
    np.savez(tmp_path / "mask.npz", mask=np.ones((4, 4, 5), np.int8))
    with pytest.raises(CtxqError, match=r"mask shape \(4, 4, 5\) does not match .*\(6, 4, 5\)"):
        io.open_field(tmp_path / "in.nc", mask_path=tmp_path / "mask.npz")


def test_values_out_of_range_are_reported_once_per_variable_not_per_chunk(tmp_path, caplog):
    values = np.zeros((6, 4, 4), np.float32)
    values[[0, 3, 5], 1, 1] = 50.0            # beyond valid_max, in three chunks of two
    path = write_nc(tmp_path / "obs.nc", values, extra={"valid_max": np.float32(10)})
    source = io.open_field(path)
    with caplog.at_level("INFO", logger="ctxq_cli.io"):
        observed = np.concatenate([source.read(a, a + 2)[1] for a in (0, 2, 4)])
    assert observed.sum() == values.size - 3          # all three treated as missing
    lines = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert len(lines) == 1 and "frames 0–1" in lines[0]
    caplog.clear()
    with caplog.at_level("INFO", logger="ctxq_cli.io"):
        io.read_field(path)
    lines = [r.getMessage() for r in caplog.records if "valid range" in r.getMessage()]
    assert len(lines) == 1 and "3 values" in lines[0] and "frames" not in lines[0]


def test_the_time_coordinate_is_decoded_to_days_in_its_calendar(tmp_path):
    path = write_nc(tmp_path / "t.nc", smooth_field(4, 5, 6))
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["time"].units = "hours since 2001-02-27 00:00:00"
        ds.variables["time"].calendar = "noleap"
        ds.variables["time"][:] = [0.0, 24.0, 72.0, 96.0]        # no 29 February in noleap
    times, unit = io.read_field(path).times()
    assert unit == "days"
    np.testing.assert_allclose(times, [0.0, 1.0, 3.0, 4.0])
    assert "1 irregular step" in io.describe_times(times, unit)
    with netCDF4.Dataset(path, "a") as ds:
        ds.variables["time"][:] = [0.0, 24.0, 24.0, 48.0]
    with pytest.raises(CtxqError, match="does not increase at frame 2"):
        io.read_field(path).times()
    npz = tmp_path / "t.npz"
    np.savez(npz, data=smooth_field(3, 4, 4))
    assert io.read_field(npz).times() == (None, "frames")
