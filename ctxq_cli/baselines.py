"""Reference gap-fillers that ctxq is measured against (numpy/scipy, no training).

- ``linear``: per frame and variable, piecewise-linear interpolation on the Delaunay
  triangulation of the observed cells, nearest observed value outside their convex hull.
"""

from __future__ import annotations

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator


def linear(values: np.ndarray, observed: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """Fill (T, C, H, W) per frame by linear interpolation, nearest outside the hull.

    Observed cells are returned unchanged; cells outside ``domain`` (H, W) are NaN.
    """
    t, c, h, w = values.shape
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([yy[domain], xx[domain]], axis=1).astype(np.float64)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    for i in range(t):
        for j in range(c):
            seen = observed[i, j] & domain
            pts = np.stack([yy[seen], xx[seen]], axis=1).astype(np.float64)
            vals = values[i, j][seen].astype(np.float64)
            frame = np.full((h, w), np.nan)
            if len(vals) == 0:
                continue
            if len(vals) >= 3 and np.linalg.matrix_rank(pts - pts.mean(0)) == 2:
                est = LinearNDInterpolator(pts, vals)(grid)
                holes = np.isnan(est)
                if holes.any():
                    est[holes] = NearestNDInterpolator(pts, vals)(grid[holes])
            else:
                est = NearestNDInterpolator(pts, vals)(grid)
            frame[domain] = est
            frame[seen] = values[i, j][seen]
            out[i, j] = frame
    return out
