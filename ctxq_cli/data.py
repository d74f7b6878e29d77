"""Training samples: normalised time windows of a field, padded to the network's grid.

A sample is W consecutive frames of C variables stacked as F = W·C channels::

    values[b, w·C + c, y, x] = (u[t_b + w, c, y, x] − mean_c) / std_c     (0 where missing)

Grids are padded with cells outside the domain up to a multiple of the network's
down-sampling factor; grids larger than the patch size yield random patches.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ctxq_cli.frames import FrameSource, ObservedSums
from ctxq_cli.temporal import STATE, RecordStates, Smoother, filter_record, window_messages


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
        """Means and standard deviations of observed values (T, C, H, W) per variable."""
        sums = ObservedSums()
        sums.add(values, observed)
        return cls.from_sums(sums, per_cell)

    @classmethod
    def from_sums(cls, sums: ObservedSums, per_cell: bool = False) -> Normalization:
        """The normalisation of a record whose observations were summed in ``sums``."""
        moments = sums.moments(per_cell)
        means = [0.0 if per_cell else mean for _, mean, _ in moments]
        stds = [std if n > 1 and std > 0 and np.isfinite(std) else 1.0 for n, _, std in moments]
        cell_mean = sums.cell_mean().astype(np.float32) if per_cell else None
        return cls(tuple(means), tuple(stds), cell_mean)

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


@dataclass
class Batch:
    """Training windows as the loss needs them, all (B, …, h, w) on one device."""

    values: Tensor                  # (B, F, h, w) normalised, 0 where missing
    observed: Tensor                # (B, F, h, w) bool
    domain: Tensor                  # (B, 1, h, w) bool
    positions: Tensor | None = None     # (B, 2, h, w) grid positions of a patch (None: the grid)
    messages: tuple[Tensor, Tensor, Tensor] | None = None   # the smoother's, for a window


def needed_states(starts: np.ndarray, window: int, frames: int) -> np.ndarray:
    """The frames (bool, (T,)) whose smoother states windows starting at ``starts`` are told:
    the one before each window and the one after it (:func:`ctxq_cli.temporal.window_messages`)."""
    keep = np.zeros(frames, bool)
    starts = np.asarray(starts, dtype=np.int64)
    keep[np.clip(starts - 1, 0, frames - 1)] = True
    keep[np.clip(starts + window, 0, frames - 1)] = True
    return keep


@dataclass
class Holdout:
    """Observations kept out of training: ``hidden`` (n, C, H, W) cells of frames ``frames``."""

    frames: slice
    hidden: np.ndarray


class TrainingFrames:
    """A record's frames as training sees them: observed only inside the domain and outside
    the held-out cells, normalised (0 where missing), padded to a multiple of the network's
    down-sampling factor. With ``masks`` only the mask matters: one channel, observed where any
    variable is, values 0."""

    def __init__(self, source: FrameSource, domain: np.ndarray, multiple: int = 1,
                 normalization: Normalization | None = None, holdout: Holdout | None = None,
                 masks: bool = False) -> None:
        self.source, self.domain, self.multiple = source, domain, multiple
        self.normalization, self.holdout, self.masks = normalization, holdout, masks
        self.frames = source.frames

    def observations(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b) in physical units, observed only where training may use them."""
        values, observed = self.source.read(a, b)
        observed = observed & self.domain[None, None]
        held = self.holdout
        if held is not None and held.frames.start < b and a < held.frames.stop:
            lo, hi = max(a, held.frames.start), min(b, held.frames.stop)
            observed[lo - a:hi - a] &= ~held.hidden[lo - held.frames.start:hi - held.frames.start]
        if self.masks:
            observed = observed.any(axis=1, keepdims=True)
            values = np.zeros(observed.shape, np.float32)
        return values, observed

    def normalised(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b) normalised (0 where missing) and their observed cells."""
        values, observed = self.observations(a, b)
        if self.normalization is not None:
            values = self.normalization.apply(values, observed)
        return values, observed

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b) normalised and padded."""
        values, observed = self.normalised(a, b)
        return pad_grid(values, self.multiple), pad_grid(observed, self.multiple)


class Windows:
    """Training windows (and patches) of W frames drawn from a record's :class:`TrainingFrames`.

    ``starts`` are the first frames of the windows this set may draw (all by default);
    :meth:`subset` gives another set over the same frames. A window's frames are read when it
    is drawn. With a temporal ``smoother`` the whole record is filtered once, forward and
    backward, with every observation, so each window can be told what the frames outside it
    say (:mod:`ctxq_cli.temporal`); only the states that the windows starting at ``used`` need
    are kept (all by default), on the device when they fit ``memory`` bytes, else in scratch
    files (:meth:`close` gives those back).
    """

    def __init__(self, frames: TrainingFrames, window: int, patch: int, device: torch.device,
                 starts: np.ndarray | None = None, smoother: Smoother | None = None,
                 times: np.ndarray | None = None, memory: float = math.inf,
                 used: np.ndarray | None = None) -> None:
        """``times`` (T,) for the smoother."""
        self.window, self.frames, self.device = window, frames, device
        count = frames.frames
        if count < window:
            raise ValueError(f"{count} frames are fewer than the window {window}")
        self.domain = torch.from_numpy(pad_grid(frames.domain, frames.multiple)).to(device)
        h, w = self.domain.shape
        multiple = frames.multiple
        self.patch = (min(padded_size(patch, multiple), h), min(padded_size(patch, multiple), w))
        every = np.arange(count - window + 1)
        self.starts = torch.from_numpy(every if starts is None else np.asarray(starts)).long()
        self.smoother = smoother
        self.states: RecordStates | None = None
        if smoother is not None:
            t = torch.from_numpy(np.asarray(times, dtype=np.float64))
            self.states = filter_record(smoother, frames.read, count, t, memory, device,
                                        None if used is None else needed_states(used, window,
                                                                                count))

    def subset(self, starts: np.ndarray) -> Windows:
        """The windows starting at ``starts``, sharing this set's frames and states."""
        other = copy.copy(self)
        other.starts = torch.from_numpy(np.asarray(starts)).long()
        return other

    def close(self) -> None:
        """Give back the scratch files of the smoother's states, if any."""
        if self.states is not None:
            self.states.close()

    @property
    def count(self) -> int:
        """Number of distinct windows."""
        return len(self.starts)

    def _gather(self, starts: Tensor, messages: bool = True) -> Batch:
        """Whole-grid windows starting at frames ``starts`` (without the smoother's messages
        when ``messages`` is false)."""
        b = len(starts)
        read = [self.frames.read(s, s + self.window) for s in starts.tolist()]
        h, w = self.domain.shape
        v = torch.from_numpy(np.stack([r[0] for r in read])).reshape(b, -1, h, w)
        o = torch.from_numpy(np.stack([r[1] for r in read])).reshape(b, -1, h, w)
        d = self.domain[None, None].expand(b, 1, -1, -1)
        told = None
        if self.smoother is not None and messages:
            told = window_messages(self.smoother, self.states, starts.to(self.device),
                                   self.window)
        return Batch(v.to(self.device), o.to(self.device), d, None, told)

    def read_ahead(self, indices: Tensor) -> None:
        """Read the frames of windows ``indices`` (into a cache, when the source has one)."""
        for s in self.starts[indices.cpu()].tolist():
            self.frames.source.read(s, s + self.window)

    def batch(self, indices: Tensor, generator: torch.Generator) -> Batch:
        """Windows ``indices`` (in [0, count)), each cropped to a patch at its own random
        corner on grids larger than the patch (one gather on the device, no host round trip).
        """
        dev = self.device
        full = self._gather(self.starts[indices.cpu()])
        size = len(indices)
        ph, pw = self.patch
        h, w = full.values.shape[-2:]
        if (ph, pw) == (h, w):
            return full
        gd = generator.device
        oy = torch.randint(0, h - ph + 1, (size, 1), generator=generator, device=gd).to(dev)
        ox = torch.randint(0, w - pw + 1, (size, 1), generator=generator, device=gd).to(dev)
        rows = (oy + torch.arange(ph, device=dev))[:, None, :, None]    # (B, 1, ph, 1)
        cols = (ox + torch.arange(pw, device=dev))[:, None, None, :]    # (B, 1, 1, pw)
        b = torch.arange(size, device=dev)[:, None, None, None]

        def crop(t: Tensor) -> Tensor:
            f = torch.arange(t.shape[1], device=dev)[None, :, None, None]
            return t[b, f, rows, cols]

        def crop_states(state: Tensor) -> Tensor:     # (B, C, H, W, 5)
            c = state.shape[1]
            flat = state.permute(0, 1, 4, 2, 3).reshape(size, c * STATE, h, w)
            return crop(flat).reshape(size, c, STATE, ph, pw).permute(0, 1, 3, 4, 2)

        positions = torch.cat([rows.expand(-1, 1, ph, pw), cols.expand(-1, 1, ph, pw)], dim=1)
        messages = None
        if full.messages is not None:
            entering, leaving, steps = full.messages
            messages = (crop_states(entering), crop_states(leaving), steps)
        return Batch(crop(full.values), crop(full.observed), crop(full.domain), positions, messages)

    def sequential(self, stride: int) -> list[Batch]:
        """Every ``stride``-th window in order (for validation), whole grid."""
        return [self._gather(chunk) for chunk in self.starts[::stride].split(16)]

    def mask_pool(self, size: int, generator: torch.Generator) -> Tensor:
        """Up to ``size`` observation-mask windows (N, F, H, W), for the empirical partition."""
        n = min(size, self.count)
        pick = torch.randperm(self.count, generator=generator, device=generator.device)[:n]
        return self._gather(self.starts[pick.cpu()], messages=False).observed.cpu()
