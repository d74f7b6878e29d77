"""Observation masks and domains: mask files, domains from data and from files."""


import netCDF4
import numpy as np
import pytest

from ctxq_cli import masks, reading
from ctxq_cli.errors import CtxqError

from conftest import write_mask_nc, write_nc


def test_mask_file_intersects_and_broadcasts(tmp_path, small_field):
    values, observed = small_field
    data = write_nc(tmp_path / "full.nc", values)
    mask = write_mask_nc(tmp_path / "mask.nc", observed)
    fld = reading.read_field(data, mask_path=mask)
    np.testing.assert_array_equal(fld.observed[:, 0], observed)
    assert np.all(fld.values[:, 0][~observed] == 0)  # hidden values are not used

    static = write_mask_nc(tmp_path / "static.nc", observed[0], dims=("lat", "lon"))
    fld = reading.read_field(data, mask_path=static)
    assert np.all(fld.observed[:, 0] == observed[0])


def test_domain_from_observed_and_from_file(tmp_path, small_field):
    values, observed = small_field
    observed = observed.copy()
    observed[:, :, :3] = False   # "land" never observed
    fld = reading.read_field(write_nc(tmp_path / "obs.nc", values, observed=observed))
    dom = masks.observed_domain(fld.observed)
    assert not dom[:, :3].any() and dom[:, 3:].all()
    land = np.zeros((16, 16), np.int8)
    land[:, 5:] = 1
    with netCDF4.Dataset(tmp_path / "domain.nc", "w") as ds:
        ds.createDimension("lat", 16)
        ds.createDimension("lon", 16)
        ds.createVariable("domain", "i1", ("lat", "lon"))[:] = land
    np.testing.assert_array_equal(masks.read_domain(tmp_path / "domain.nc", (16, 16)), land == 1)
    with pytest.raises(CtxqError, match="shape"):
        masks.read_domain(tmp_path / "domain.nc", (8, 8))


def test_a_mask_with_another_number_of_frames_is_refused_before_any_work(tmp_path):
    values = np.zeros((6, 4, 5), np.float32)
    write_nc(tmp_path / "in.nc", values)
    np.savez(tmp_path / "mask.npz", mask=np.ones((4, 4, 5), np.int8))
    with pytest.raises(CtxqError, match=r"mask shape \(4, 4, 5\) does not match .*\(6, 4, 5\)"):
        reading.open_field(tmp_path / "in.nc", mask_path=tmp_path / "mask.npz")
