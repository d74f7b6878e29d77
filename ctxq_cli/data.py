"""Training samples: normalised time windows of a field, padded to the network's grid.

A sample is W consecutive frames of C variables stacked as F = W·C channels::

    values[b, w·C + c, y, x] = (u[t_b + w, c, y, x] − mean_c) / std_c     (0 where missing)

Grids are padded with cells outside the domain up to a multiple of the network's
down-sampling factor; grids larger than the patch size yield random patches.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Normalization:
    """Affine normalisation estimated from observed values: per variable, or per cell.

    With ``cell_mean`` (C, H, W) each cell's temporal mean (its climatology) is removed and the
    standard deviation is that of the anomalies, as EOF methods do; the network then learns
    anomalies, not the mean state. Without it, one mean per variable.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    cell_mean: np.ndarray | None = field(default=None, compare=False, repr=False)

    @classmethod
    def fit(cls, values: np.ndarray, observed: np.ndarray, per_cell: bool = False
            ) -> Normalization:
        """Means and standard deviations of observed values per variable (axis 1)."""
        cell_mean = None
        if per_cell:
            counts = observed.sum(axis=0)
            sums = np.where(observed, values, 0).astype(np.float64).sum(axis=0)
            overall = np.array([values[:, c][observed[:, c]].astype(np.float64).mean()
                                if observed[:, c].any() else 0.0
                                for c in range(values.shape[1])])[:, None, None]
            # cells never observed take the variable's mean
            cell_mean = np.where(counts > 0, sums / np.maximum(counts, 1), overall)
            values = values - cell_mean[None]
        means, stds = [], []
        for c in range(values.shape[1]):
            v = values[:, c][observed[:, c]].astype(np.float64)
            mean = float(v.mean()) if v.size else 0.0
            std = float(v.std()) if v.size > 1 else 1.0
            means.append(0.0 if per_cell else mean)
            stds.append(std if std > 0 and np.isfinite(std) else 1.0)
        return cls(tuple(means), tuple(stds),
                   None if cell_mean is None else cell_mean.astype(np.float32))

    def _centre(self) -> np.ndarray:
        """What is subtracted: (C, H, W) or (C, 1, 1)."""
        if self.cell_mean is not None:
            return self.cell_mean + np.asarray(self.mean, dtype=np.float32)[:, None, None]
        return np.asarray(self.mean, dtype=np.float64)[:, None, None]

    def check_grid(self, grid: tuple[int, int]) -> None:
        """Refuse a grid other than the one a per-cell normalisation was fitted on."""
        if self.cell_mean is not None and tuple(self.cell_mean.shape[-2:]) != tuple(grid):
            raise ValueError(f"per-cell normalisation fitted on grid "
                             f"{tuple(self.cell_mean.shape[-2:])}, not {tuple(grid)}")

    def apply(self, values: np.ndarray, observed: np.ndarray,
              cells: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        """(T, C, H, W) physical → normalised float32, 0 where not observed.

        ``cells`` (an ``np.ix_`` pair) says which grid cells a tile's values are, for a
        per-cell mean.
        """
        std = np.asarray(self.std)[None, :, None, None]
        centre = self._centre()
        if cells is not None and self.cell_mean is not None:
            centre = centre[(slice(None),) + tuple(cells)]
        return np.where(observed, (values - centre[None]) / std, 0.0).astype(np.float32)

    def invert(self, values: np.ndarray) -> np.ndarray:
        """Normalised (..., C, H, W) → physical float32."""
        std = np.asarray(self.std, dtype=np.float32)[:, None, None]
        return (values * std + self._centre().astype(np.float32)).astype(np.float32)

    def to_dict(self) -> dict:
        """JSON-able form (a per-cell mean is stored as a tensor beside it)."""
        return {"mean": list(self.mean), "std": list(self.std)}


def padded_size(n: int, multiple: int) -> int:
    """Smallest multiple of ``multiple`` that is ≥ n."""
    return -(-n // multiple) * multiple


def pad_grid(array: np.ndarray, multiple: int) -> np.ndarray:
    """Pad the last two axes at the end with zeros/False to a multiple of ``multiple``."""
    h, w = array.shape[-2:]
    ph, pw = padded_size(h, multiple) - h, padded_size(w, multiple) - w
    pad = [(0, 0)] * (array.ndim - 2) + [(0, ph), (0, pw)]
    return np.pad(array, pad)


class Windows:
    """Random training windows (and patches) drawn from a normalised field."""

    def __init__(self, values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                 window: int, multiple: int, patch: int, frames: tuple[int, int],
                 device: torch.device) -> None:
        """values, observed: (T, C, H, W); domain (H, W); frames: [start, stop) to draw from."""
        self.window = window
        self.start, self.stop = frames
        if self.stop - self.start < window:
            raise ValueError(f"{self.stop - self.start} frames are fewer than the window {window}")
        observed = observed & domain[None, None]
        self.values = torch.from_numpy(pad_grid(values, multiple)).to(device)
        self.observed = torch.from_numpy(pad_grid(observed, multiple)).to(device)
        self.domain = torch.from_numpy(pad_grid(domain, multiple)).to(device)
        h, w = self.values.shape[-2:]
        self.patch = (min(padded_size(patch, multiple), h), min(padded_size(patch, multiple), w))
        self.channels = values.shape[1]

    @property
    def count(self) -> int:
        """Number of distinct window start positions."""
        return self.stop - self.start - self.window + 1

    def _gather(self, starts: Tensor) -> tuple[Tensor, Tensor]:
        """Stack windows starting at ``starts`` as (B, W·C, H, W) values and masks."""
        idx = starts[:, None] + torch.arange(self.window, device=starts.device)[None]
        b = len(starts)
        v = self.values[idx].reshape(b, -1, *self.values.shape[-2:])
        o = self.observed[idx].reshape(b, -1, *self.observed.shape[-2:])
        return v, o

    def batch(self, indices: Tensor, generator: torch.Generator
              ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Windows ``indices`` (in [0, count)): values, observed (B, F, h, w), domain (B, 1, h, w)
        and the grid cells (B, 2, h, w) of a patch (None: the whole grid).

        On grids larger than the patch, each window is cropped at its own random corner; the
        crop is one gather on the device, with no round trip to the host.
        """
        dev = self.values.device
        size = len(indices)
        v, o = self._gather(indices.to(dev) + self.start)
        d = self.domain[None, None].expand(size, 1, -1, -1)
        ph, pw = self.patch
        h, w = v.shape[-2:]
        if (ph, pw) == (h, w):
            return v, o, d, None
        gd = generator.device
        oy = torch.randint(0, h - ph + 1, (size, 1), generator=generator, device=gd).to(dev)
        ox = torch.randint(0, w - pw + 1, (size, 1), generator=generator, device=gd).to(dev)
        rows = (oy + torch.arange(ph, device=dev))[:, None, :, None]    # (B, 1, ph, 1)
        cols = (ox + torch.arange(pw, device=dev))[:, None, None, :]    # (B, 1, 1, pw)
        b = torch.arange(size, device=dev)[:, None, None, None]

        def crop(t: Tensor) -> Tensor:
            f = torch.arange(t.shape[1], device=dev)[None, :, None, None]
            return t[b, f, rows, cols]

        cells = torch.cat([rows.expand(-1, 1, ph, pw), cols.expand(-1, 1, ph, pw)], dim=1)
        return crop(v), crop(o), crop(d), cells

    def sequential(self, stride: int) -> list[tuple[Tensor, Tensor, Tensor]]:
        """Non-random windows every ``stride`` frames (for validation), full grid."""
        starts = torch.arange(self.start, self.stop - self.window + 1, stride,
                              device=self.values.device)
        out = []
        for chunk in starts.split(16):
            v, o = self._gather(chunk)
            out.append((v, o, self.domain[None, None].expand(len(chunk), 1, -1, -1)))
        return out

    def mask_pool(self, size: int, generator: torch.Generator) -> Tensor:
        """Up to ``size`` observation-mask windows (N, F, H, W), for the empirical partition."""
        n = min(size, self.count)
        starts = torch.randperm(self.count, generator=generator, device=generator.device)[:n]
        _, o = self._gather(starts.to(self.values.device) + self.start)
        return o.cpu()
