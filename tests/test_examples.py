"""Fast checks of the example-data tooling in examples/: solver, masks and NetCDF writer."""

from __future__ import annotations

import sys
from pathlib import Path

import netCDF4
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from kolmogorov import simulate
from make_data import FILL_VALUE, write_example
from masks import MASKS, block_mask, cloud_mask, make_mask, pixel_mask, station_mask, swath_mask

SMALL = {"grid": 32, "out_grid": 32, "spinup": 1.0}
SHAPE = (40, 32, 32)


def _neighbour_agreement(mask: np.ndarray) -> float:
    """Fraction of horizontally or vertically adjacent cell pairs with equal mask values."""
    vertical = (mask[:, 1:] == mask[:, :-1]).mean()
    horizontal = (mask[:, :, 1:] == mask[:, :, :-1]).mean()
    return float(vertical + horizontal) / 2


def test_simulate_shape_dtype_finite() -> None:
    """The solver returns finite float32 frames of the requested shape."""
    w = simulate(2, 4, seed=0, **SMALL)
    assert w.shape == (2, 4, 32, 32) and w.dtype == np.float32
    assert np.isfinite(w).all() and w.std() > 0.1


def test_simulate_is_deterministic() -> None:
    """The same seed gives the same trajectories and another seed different ones."""
    a, b, c = (simulate(1, 2, seed=s, **SMALL) for s in (3, 3, 4))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_simulate_energy_stays_bounded() -> None:
    """Forced, dragged flow neither blows up nor dies out over many time units."""
    w = simulate(2, 12, grid=32, out_grid=32, spinup=0.0, frame_interval=1.0, seed=1)
    rms = np.sqrt((w**2).mean(axis=(0, 2, 3)))
    assert np.isfinite(rms).all()
    assert rms.max() < 5 * rms[0] and rms[-1] > 0.1 * rms[0]


def test_out_grid_is_spectral_truncation() -> None:
    """A coarser output grid samples the band-limited fine field."""
    fine = simulate(1, 1, seed=2, **SMALL)[0, 0]
    coarse = simulate(1, 1, seed=2, grid=32, out_grid=16, spinup=1.0)[0, 0]
    spectrum = np.fft.fft2(fine)
    k = np.abs(np.fft.fftfreq(32, 1 / 32))
    spectrum[(k[:, None] >= 8) | (k[None, :] >= 8)] = 0
    np.testing.assert_allclose(coarse, np.fft.ifft2(spectrum).real[::2, ::2], atol=1e-4)


@pytest.mark.parametrize("kind", sorted(MASKS))
def test_make_mask_dispatches(kind: str) -> None:
    """Every named kind yields a boolean mask of the requested shape."""
    mask = make_mask(kind, SHAPE, np.random.default_rng(0))
    assert mask.dtype == bool and mask.shape == SHAPE
    assert 0 < mask.mean() < 1


def test_make_mask_rejects_unknown_kind() -> None:
    """An unknown kind is an error naming the alternatives."""
    with pytest.raises(ValueError, match="cloud"):
        make_mask("fog", SHAPE, np.random.default_rng(0))


def test_pixel_mask_fraction() -> None:
    """I.i.d. pixels are observed at the requested rate."""
    mask = pixel_mask(SHAPE, observed_fraction=0.3, rng=np.random.default_rng(0))
    assert abs(mask.mean() - 0.3) < 0.02


def test_block_mask_hides_whole_tiles() -> None:
    """Exactly `missing_blocks` tiles are hidden per frame, each entirely."""
    mask = block_mask((20, 30, 30), grid=3, missing_blocks=4, rng=np.random.default_rng(0))
    tiles = mask.reshape(20, 3, 10, 3, 10)
    assert (tiles.all(axis=(2, 4)) | ~tiles.any(axis=(2, 4))).all()
    np.testing.assert_array_equal((~tiles.any(axis=(2, 4))).sum(axis=(1, 2)), 4)
    assert abs(mask.mean() - 5 / 9) < 1e-9


def test_swath_mask_fraction_and_motion() -> None:
    """Swaths cover width/(width+gap) of the field and move between frames."""
    mask = swath_mask(SHAPE, swath_width=6, gap_width=10, angle=20, rng=np.random.default_rng(0))
    assert abs(mask.mean(axis=(1, 2)) - 6 / 16).max() < 0.04
    assert (mask[1:] != mask[:-1]).any(axis=(1, 2)).all()


def test_cloud_mask_fraction_and_clustering() -> None:
    """Clouds hit the missing fraction in every frame and cluster far more than i.i.d. gaps."""
    rng = np.random.default_rng(0)
    mask = cloud_mask(SHAPE, missing_fraction=0.3, correlation_length=3.0, rng=rng)
    assert abs((1 - mask.mean(axis=(1, 2))) - 0.3).max() < 0.02
    iid = pixel_mask(SHAPE, observed_fraction=0.7, rng=rng)
    assert _neighbour_agreement(mask) > _neighbour_agreement(iid) + 0.2
    # clouds persist: consecutive frames agree more often than independent ones would
    assert (mask[1:] == mask[:-1]).mean() > (iid[1:] == iid[:-1]).mean() + 0.15


def test_station_mask_is_fixed_in_time() -> None:
    """Stations stay put and report at almost every step."""
    mask = station_mask(SHAPE, n_stations=20, rng=np.random.default_rng(0), dropout=0.05)
    sites = mask.any(axis=0)
    assert sites.sum() == 20
    assert not mask[:, ~sites].any()
    assert mask[:, sites].mean() > 0.9


def test_write_example_files_agree(tmp_path: Path) -> None:
    """Truth, observations and mask are consistent CF files with fill values at the gaps."""
    paths = write_example(tmp_path, "test_", "pixel", {"observed_fraction": 0.4},
                          trajectories=2, frames=3, seed=5, **SMALL)
    names = ["test_mask.nc", "test_obs.nc", "test_truth.nc"]
    assert sorted(p.name for p in tmp_path.iterdir()) == names  # no temporary files left
    with (netCDF4.Dataset(paths["truth"]) as t, netCDF4.Dataset(paths["obs"]) as o,
          netCDF4.Dataset(paths["mask"]) as m):
        assert o.Conventions == "CF-1.8" and o["time"].units == "days since 2000-01-01 00:00:00"
        assert o["lat"].units == "degrees_north" and o["lon"].axis == "X"
        np.testing.assert_array_equal(o["trajectory"][:], [0, 0, 0, 1, 1, 1])
        assert m["mask"].dtype == np.int8 and o["vorticity"]._FillValue == FILL_VALUE
        truth = t["vorticity"][:]
        mask = m["mask"][:].astype(bool)
        o.set_auto_mask(False)
        obs = o["vorticity"][:]
    assert truth.shape == mask.shape == obs.shape == (6, 32, 32) and not np.ma.is_masked(truth)
    np.testing.assert_array_equal(obs == FILL_VALUE, ~mask)
    np.testing.assert_array_equal(obs[mask], np.asarray(truth)[mask])
    assert 0.3 < mask.mean() < 0.5
