"""Tiles: every cell covered, weights a partition of unity, seams wrap in longitude."""

import numpy as np
import pytest

from ctxq_cli.tiles import Tiling, axis_tiles, blend, plan


@pytest.mark.parametrize("n, size, overlap, periodic", [
    (100, 32, 8, False), (100, 32, 8, True), (64, 64, 8, False), (40, 64, 8, True),
    (37, 16, 0, False), (33, 16, 5, True), (16, 16, 4, True)])
def test_tiles_cover_every_cell_and_weights_are_positive(n, size, overlap, periodic):
    covered = np.zeros(n)
    for idx, weight in axis_tiles(n, size, overlap, periodic):
        assert (weight > 0).all() and (weight <= 1).all()
        assert len(idx) == len(weight) and idx.min() >= 0 and idx.max() < n
        np.add.at(covered, idx, weight)
    assert (covered > 0).all()


def test_blending_a_constant_returns_it_and_each_cell_blends_its_tiles():
    grid = (50, 70)
    tiles = plan(grid, Tiling(size=24, overlap=6, wrap_lon=True))
    total, weights = np.zeros((2, *grid)), np.zeros(grid)
    for t in tiles:
        blend(total, weights, t, np.full((2, len(t.rows), len(t.cols)), 3.0))
    np.testing.assert_allclose(total / weights, 3.0)
    # a field that is the same in every tile comes back unchanged, wrap-around included
    field = np.random.default_rng(0).normal(size=grid)
    total, weights = np.zeros(grid), np.zeros(grid)
    for t in tiles:
        blend(total, weights, t, field[np.ix_(t.rows, t.cols)])
    np.testing.assert_allclose(total / weights, field)


def test_weights_fall_towards_inner_edges_only():
    (a, wa), (b, wb) = axis_tiles(50, 30, 10)
    assert wa[0] == 1 and wa[-1] < 0.1          # the grid's edge keeps full weight
    assert wb[0] < 0.1 and wb[-1] == 1
    ((idx, w),) = axis_tiles(20, 32, 4, periodic=True)
    assert idx[0] == 16 and idx[-1] == 3        # one tile, widened across the seam
    assert w[0] < 0.25 and w[4] == 1


def test_longitude_wraps_so_the_seam_is_interior():
    tiles = plan((16, 40), Tiling(size=16, overlap=4, wrap_lon=True))
    seam = [t for t in tiles if 39 in t.cols and 0 in t.cols]
    assert seam, "no tile spans the dateline"
    cols = list(seam[0].cols)
    assert cols.index(0) == cols.index(39) + 1


def test_bad_tilings_are_refused():
    with pytest.raises(ValueError, match="under half the tile size"):
        plan((64, 64), Tiling(size=16, overlap=8))


def test_wrap_lon_without_a_tile_size_still_wraps():
    ((rows, _),) = axis_tiles(10, None, 32)
    assert list(rows) == list(range(10))
    ((cols, w),) = axis_tiles(10, None, 32, periodic=True)
    assert cols[0] == 5 and cols[-1] == 4 and len(cols) == 20   # half the grid on each side
