"""Writing outputs that mirror their input, CF-correctly, NetCDF and NPZ."""


import netCDF4
import numpy as np
import pytest

from ctxq_cli import reading, writing
from ctxq_cli.cf import Encoding

from conftest import write_nc


def test_written_file_mirrors_input_and_round_trips_packed_int16(tmp_path, small_field):
    values, observed = small_field
    src = write_nc(tmp_path / "obs.nc", values, observed=observed,
                   extra={"long_name": "sea surface temperature"})
    fld = reading.read_field(src)
    enc = Encoding("int16", fill_value=-32767, scale_factor=0.001, add_offset=0.5)
    expected = np.where(observed, values, np.nan)
    out = tmp_path / "packed.nc"
    writing.write_output(out, fld, [writing.OutputVariable("sst", expected, fld.var_attrs[0],
                                                 encoding=enc)],
                    {"ctxq_test": 1}, "2026-01-01T00:00:00Z: ctxq test")
    back = reading.read_field(out)
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
    fld = reading.read_field(tmp_path / "obs.npz")
    writing.write_output(tmp_path / "out.npz", fld, [writing.OutputVariable("data", values, {})],
                         {}, "h")
    with np.load(tmp_path / "out.npz") as npz:
        np.testing.assert_array_equal(npz["data"], values)


def test_a_computation_failing_inside_an_output_is_not_called_a_write_failure(tmp_path):
    values = np.zeros((3, 4, 5), np.float32)
    fld = reading.read_field(write_nc(tmp_path / "in.nc", values))
    spec = [writing.OutputVariable("sst", None, {})]
    out = tmp_path / "out.nc"
    with pytest.raises(RuntimeError, match="out of memory"):
        with writing.open_output(out, fld, spec, "h") as writer:
            writer.write(0, {"sst": values[:1]})
            raise RuntimeError("CUDA out of memory")
    assert not out.exists() and not list(tmp_path.glob(".out.nc*"))
