"""Overlapping tiles of a large grid and the weights that blend them without seams.

A grid too large for one network pass is cut into square tiles of ``size`` cells that overlap
by ``overlap`` cells. Each tile is imputed on its own; where tiles overlap their estimates are
averaged with weights that fall smoothly towards each tile's inner edges, so a cell near one
tile's border (where that tile saw little context) takes most of its value from the tile in
which it lies deeper. Weights stay 1 along the grid's own edges. With ``periodic`` (a global
grid's longitude) the tiles wrap around, so the dateline is an interior seam like any other.

A tile is a pair of index arrays (rows, columns) into the grid, possibly wrapping, with a
weight per index; :func:`blend` accumulates tile results into the grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tiling:
    """How a grid is cut: tile side (None: one tile), overlap, and periodic longitude."""

    size: int | None = None
    overlap: int = 32
    wrap_lon: bool = False

    def check(self) -> None:
        """Refuse tiles that cannot blend (raises ValueError)."""
        if self.size is not None and not 0 <= 2 * self.overlap < self.size:
            raise ValueError(f"the tile overlap ({self.overlap}) must be under half the tile "
                             f"size ({self.size})")


@dataclass(frozen=True)
class Tile:
    """One tile: grid rows and columns it covers and its blending weights (rows, cols)."""

    rows: np.ndarray
    cols: np.ndarray
    weight: np.ndarray


def _ramp(length: int, overlap: int, low: bool, high: bool) -> np.ndarray:
    """Weights 1 inside, falling smoothly over ``overlap`` cells at the ramped ends."""
    w = np.ones(length)
    if overlap > 0:
        # sin² rises from near 0 to 1: a tile's outermost cells, which saw the least context,
        # count least.
        ramp = np.sin(0.5 * np.pi * np.arange(1, overlap + 1) / (overlap + 1)) ** 2
        if low:
            w[:overlap] = np.minimum(w[:overlap], ramp)
        if high:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def axis_tiles(n: int, size: int | None, overlap: int,
               periodic: bool = False) -> list[tuple[np.ndarray, np.ndarray]]:
    """(indices, weights) of the tiles along one axis of ``n`` cells."""
    if not periodic and (size is None or size >= n):
        return [(np.arange(n), np.ones(n))]
    if size is None or size >= n:
        # One tile, widened by the overlap on both sides with cells from across the seam.
        overlap = min(overlap, n // 2)
        idx = np.arange(-overlap, n + overlap) % n
        return [(idx, _ramp(len(idx), overlap, True, True))]
    stride = size - overlap
    if periodic:
        count = -(-n // stride)
        return [((s + np.arange(size)) % n, _ramp(size, overlap, True, True))
                for s in range(0, count * stride, stride)]
    starts = list(range(0, n - size, stride)) + [n - size]
    return [(s + np.arange(size), _ramp(size, overlap, s > 0, s + size < n)) for s in starts]


def plan(grid: tuple[int, int], tiling: Tiling) -> list[Tile]:
    """Tiles covering a (H, W) grid; the last axis wraps when ``tiling.wrap_lon``."""
    tiling.check()
    h, w = grid
    return [Tile(rows, cols, wr[:, None] * wc[None, :])
            for rows, wr in axis_tiles(h, tiling.size, tiling.overlap)
            for cols, wc in axis_tiles(w, tiling.size, tiling.overlap, tiling.wrap_lon)]


def blend(total: np.ndarray, weights: np.ndarray, tile: Tile, values: np.ndarray) -> None:
    """Add a tile's ``values`` (..., h, w), weighted, into ``total`` (..., H, W) in place.

    ``weights`` (H, W) collects the weights; the blend is ``total / weights`` once every tile
    is in. Indices that wrap onto the same cell add up.
    """
    if _contiguous(tile.rows) and _contiguous(tile.cols):   # the common case: plain slices
        where = (..., slice(tile.rows[0], tile.rows[-1] + 1), slice(tile.cols[0],
                                                                  tile.cols[-1] + 1))
        if (tile.weight == 1).all():
            total[where] += values
        else:
            total[where] += values * tile.weight
        weights[where[1:]] += tile.weight
        return
    rows, cols = np.meshgrid(tile.rows, tile.cols, indexing="ij")
    flat = (rows * total.shape[-1] + cols).ravel()
    lead = total.shape[:-2]
    out = total.reshape(*lead, -1)
    contrib = (values * tile.weight).reshape(*lead, -1)
    if len(np.unique(flat)) == flat.size:
        out[..., flat] += contrib
    else:
        for i in np.ndindex(*lead):
            np.add.at(out[i], flat, contrib[i])
    np.add.at(weights.reshape(-1), flat, tile.weight.ravel())


def _contiguous(index: np.ndarray) -> bool:
    """Whether indices are one ascending run without wrap."""
    return bool(index[-1] - index[0] + 1 == len(index) and (np.diff(index) == 1).all())
