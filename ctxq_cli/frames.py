"""A record's frames as training reads them: from arrays in memory, or from files on demand.

Training never needs a whole record at once: statistics come from passes over ranges of frames
(:func:`chunks`), and windows read their few frames when they are drawn. A record of files is
read through :class:`CachedFrames`, which keeps recently read blocks of frames up to a budget of
bytes, so a record that fits the budget is read from disk once and one that does not is read as
the windows ask for it. :class:`Prefetch` reads the next batch's frames in a background thread
while the device works on the current one.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

BLOCK_BYTES = 2 * 2**20   # a block of frames read from disk at once is about this large ...
MAX_BLOCK = 16            # ... and at most this many frames (random windows want few)
CHUNK_BYTES = 64 * 2**20  # a pass over a record reads about this much at a time ...
MAX_CHUNK = 64            # ... and at most this many frames


class FrameSource(Protocol):
    """Anything that reads frames [a, b) of a record: values (0 where missing) and observed,
    both (b − a, C, H, W)."""

    frames: int

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class InMemory:
    """A record held as arrays (T, C, H, W): values (0 where missing) and observed."""

    values: np.ndarray
    observed: np.ndarray

    @property
    def frames(self) -> int:
        """Number of frames."""
        return self.values.shape[0]

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b), as views."""
        return self.values[a:b], self.observed[a:b]


class CachedFrames:
    """A source read in blocks of frames (about ``BLOCK_BYTES``, at most ``MAX_BLOCK`` frames),
    the most recently used kept up to ``budget`` bytes. Safe to call from several threads
    (reads are serialised: NetCDF is not thread-safe)."""

    def __init__(self, source: FrameSource, budget: float) -> None:
        self.source, self.budget = source, budget
        self.frames = source.frames
        first = source.read(0, 1)
        self._empty = tuple(x[:0] for x in first)
        self.frame_bytes = first[0].nbytes + first[1].nbytes
        self.block = int(np.clip(BLOCK_BYTES // max(self.frame_bytes, 1), 1, MAX_BLOCK))
        self._blocks: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._held = 0
        self._lock = threading.Lock()       # the cache's bookkeeping
        self._reading = threading.Lock()    # the source: one read at a time
        self.reads = self.hits = 0

    def _cached(self, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Block ``k`` if it is held (marked as just used)."""
        with self._lock:
            block = self._blocks.get(k)
            if block is not None:
                self._blocks.move_to_end(k)
                self.hits += 1
            return block

    def _block(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Block ``k`` (frames k·block …), from the cache or the source."""
        block = self._cached(k)
        if block is not None:
            return block
        with self._reading:
            block = self._cached(k)       # another thread may have read it meanwhile
            if block is not None:
                return block
            block = self.source.read(k * self.block, min((k + 1) * self.block, self.frames))
        for part in block:     # what the cache hands out must not be changed in place
            part.setflags(write=False)
        size = block[0].nbytes + block[1].nbytes
        with self._lock:
            self.reads += 1
            if size <= self.budget and k not in self._blocks:
                self._blocks[k] = block
                self._held += size
                while self._held > self.budget:
                    _, (v, o) = self._blocks.popitem(last=False)
                    self._held -= v.nbytes + o.nbytes
        return block

    def read(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray]:
        """Frames [a, b), read-only."""
        if b <= a:
            return self._empty
        pieces = []
        n = self.block
        for k in range(a // n, (b - 1) // n + 1):
            v, o = self._block(k)
            lo, hi = max(a - k * n, 0), min(b - k * n, len(v))
            pieces.append((v[lo:hi], o[lo:hi]))
        if len(pieces) == 1:
            return pieces[0]
        return np.concatenate([v for v, _ in pieces]), np.concatenate([o for _, o in pieces])

    def holds(self, frames: int) -> bool:
        """Whether the budget holds the blocks of ``frames`` frames read at random (each may
        take two blocks)."""
        return self.budget >= 2 * frames * self.block * self.frame_bytes

    def describe(self) -> str:
        """'312 blocks read from disk, 9k served from memory (1.2 of 2.0 GB held)'."""
        return (f"{self.reads} blocks of {self.block} frames read from disk, {self.hits} served "
                f"from memory ({self._held / 1e9:.2f} of {self.budget / 1e9:.2f} GB held)")


Read = Callable[[int, int], tuple[np.ndarray, np.ndarray]]


def chunk_frames(read: Read) -> int:
    """Frames per step of a pass: about ``CHUNK_BYTES`` of them, 1 to ``MAX_CHUNK``."""
    values, observed = read(0, 1)
    return int(np.clip(CHUNK_BYTES // max(values.nbytes + observed.nbytes, 1), 1, MAX_CHUNK))


def chunks(read: Read, frames: int, size: int | None = None
           ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """(a, b, values, observed) of consecutive ranges of frames covering [0, frames), each from
    ``read(a, b)``; ``size`` frames at a time (default :func:`chunk_frames`)."""
    size = size or chunk_frames(read)
    for a in range(0, frames, size):
        b = min(a + size, frames)
        yield (a, b, *read(a, b))


class ObservedSums:
    """Counts, sums and sums of squares of observed values per variable and cell, (C, H, W),
    accumulated a range of frames at a time (float64, about a per-variable shift so that the
    squares do not swamp the variance)."""

    def __init__(self) -> None:
        self.count: np.ndarray | None = None
        self.total = self.squares = self.shift = None

    def add(self, values: np.ndarray, observed: np.ndarray) -> None:
        """Take in frames (T, C, H, W)."""
        if self.shift is None:
            shape = values.shape[1:]
            self.count = np.zeros(shape, np.int64)
            self.total, self.squares = np.zeros(shape), np.zeros(shape)
            self.shift = np.full((shape[0], 1, 1), np.nan)
        for c in np.flatnonzero(np.isnan(self.shift[:, 0, 0])):
            if observed[:, c].any():   # a variable's shift is its first observations' mean
                self.shift[c] = values[:, c][observed[:, c]].astype(np.float64).mean()
        shift = np.nan_to_num(self.shift)   # variables not yet observed add nothing
        x = np.where(observed, values - shift[None], 0.0)
        self.count += observed.sum(axis=0)
        self.total += x.sum(axis=0)
        self.squares += (x * x).sum(axis=0)

    def cell_mean(self) -> np.ndarray:
        """Each cell's mean, (C, H, W); a cell never observed takes its variable's mean."""
        n = np.maximum(self.count, 1)
        overall = self.total.sum(axis=(1, 2)) / np.maximum(self.count.sum(axis=(1, 2)), 1)
        return np.nan_to_num(self.shift) + np.where(self.count > 0, self.total / n,
                                                    overall[:, None, None])

    def moments(self, per_cell: bool = False) -> list[tuple[int, float, float]]:
        """(count, mean, std) per variable of the values, or of their anomalies from each
        cell's mean; (0, 0, 0) for a variable never observed."""
        out = []
        for c in range(len(self.shift)):
            n, s, q = self.count[c], self.total[c], self.squares[c]
            total = int(n.sum())
            if not total:
                out.append((0, 0.0, 0.0))
                continue
            if per_cell:    # Σ (x − m)² = q − s²/n per cell, mean of the anomalies 0
                mean, dev = 0.0, float(np.sum(q - np.where(n > 0, s * s / np.maximum(n, 1),
                                                            0.0)))
            else:
                centre = float(s.sum()) / total
                mean = float(np.nan_to_num(self.shift[c, 0, 0])) + centre
                dev = float(q.sum()) - total * centre * centre
            out.append((total, mean, float(np.sqrt(max(dev, 0.0) / total))))
        return out


class MaskView:
    """Observation masks (T, H, W) read a range at a time by ``read(a, b)``, sliced along time
    like an array (what :func:`ctxq_cli.mask_structure.mask_structure` counts)."""

    def __init__(self, read: Callable[[int, int], np.ndarray], frames: int,
                 domain: np.ndarray) -> None:
        self.read, self.shape = read, (frames, *domain.shape)

    def __getitem__(self, frames: slice) -> np.ndarray:
        a, b, _ = frames.indices(self.shape[0])
        return self.read(a, b) if b > a else np.zeros((0, *self.shape[1:]), bool)


class Prefetch:
    """Runs ``work`` for the next batch in a background thread while the current one trains.

    Only what ``work`` caches is gained; what it returns is dropped, so the batches themselves
    (and the random numbers that shape them) are the same with or without it. Used as a
    context manager: the thread stops on leaving, and an error of its own surfaces only when
    no other error is on its way.
    """

    def __init__(self, work: Callable[[object], object], enabled: bool = True) -> None:
        self.work = work
        self._pool = (ThreadPoolExecutor(max_workers=1, thread_name_prefix="ctxq-prefetch")
                      if enabled else None)
        self._pending: Future | None = None

    def ahead(self, item: object) -> None:
        """Start on ``item`` (waiting for the previous one first: one batch ahead at most);
        nothing when disabled (a source with nothing to cache)."""
        if self._pool is None:
            return
        self.wait()
        self._pending = self._pool.submit(self.work, item)

    def wait(self) -> None:
        """Let the batch in flight finish (an error in it surfaces here)."""
        if self._pending is not None:
            pending, self._pending = self._pending, None
            pending.result()

    def __enter__(self) -> Prefetch:
        return self

    def __exit__(self, kind: type | None, error: BaseException | None, trace: object) -> None:
        try:
            if kind is None:
                self.wait()
        finally:    # with an error on its way, the thread's own (if any) is dropped
            if self._pool is not None:
                self._pool.shutdown(cancel_futures=True)
