"""Frames read on demand: the cache returns what the source holds and keeps to its budget;
sums taken a range at a time give the statistics of the whole record."""

import threading

import numpy as np
import pytest

from ctxq_cli.data import Normalization
from ctxq_cli.frames import (
    CachedFrames,
    InMemory,
    MaskView,
    ObservedSums,
    Prefetch,
    chunks,
)


class Counting(InMemory):
    """An in-memory source that counts the frames read from it."""

    def __init__(self, values, observed):
        super().__init__(values, observed)
        self.frames_read = 0

    def read(self, a, b):
        self.frames_read += b - a
        return self.values[a:b].copy(), self.observed[a:b].copy()


def _record(frames=70, seed=0):
    rng = np.random.default_rng(seed)
    values = (280 + 3 * rng.standard_normal((frames, 2, 5, 6))).astype(np.float32)
    observed = rng.random(values.shape) < 0.6
    return np.where(observed, values, 0).astype(np.float32), observed


def test_the_cache_gives_the_source_frames_for_any_range():
    values, observed = _record()
    cached = CachedFrames(InMemory(values, observed), budget=1e9)
    rng = np.random.default_rng(1)
    for _ in range(50):
        a = int(rng.integers(0, 69))
        b = int(rng.integers(a + 1, 71))
        v, o = cached.read(a, b)
        np.testing.assert_array_equal(v, values[a:b])
        np.testing.assert_array_equal(o, observed[a:b])


def test_a_record_within_the_budget_is_read_once_and_one_beyond_it_is_held_to_it():
    values, observed = _record()
    source = Counting(values, observed)
    cached = CachedFrames(source, budget=1e9)
    for _ in range(3):
        for _ in chunks(cached.read, cached.frames, 10):
            pass
    assert source.frames_read == 1 + len(values)   # once (and its size), whatever the passes
    small = CachedFrames(Counting(values, observed), budget=1e9)
    block = values[:small.block].nbytes + observed[:small.block].nbytes
    small = CachedFrames(Counting(values, observed), budget=2 * block)
    for _ in range(3):
        for _ in chunks(small.read, small.frames, 10):
            assert small._held <= 2 * block
    assert small.source.frames_read == 1 + 3 * len(values)   # every pass reads again


def test_threads_reading_the_cache_together_get_the_right_frames():
    values, observed = _record(frames=200)
    cached = CachedFrames(InMemory(values, observed), budget=3 * values[:16].nbytes)
    errors = []

    def reader(seed):
        rng = np.random.default_rng(seed)
        for _ in range(200):
            a = int(rng.integers(0, 197))
            if not np.array_equal(cached.read(a, a + 3)[0], values[a:a + 3]):
                errors.append(a)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


@pytest.mark.parametrize("per_cell", [False, True])
def test_sums_taken_a_range_at_a_time_give_the_whole_record_statistics(per_cell):
    values, observed = _record()
    observed[:, :, 0, 0] = False                        # a cell never observed
    sums = ObservedSums()
    for _, _, v, o in chunks(InMemory(values, observed).read, len(values), 7):
        sums.add(v, o)
    norm = Normalization.from_sums(sums, per_cell)
    for c in range(2):
        seen = observed[:, c]
        if per_cell:
            counts = seen.sum(axis=0)
            cell_mean = np.where(counts > 0, np.where(seen, values[:, c], 0).astype(np.float64)
                                 .sum(axis=0) / np.maximum(counts, 1),
                                 values[:, c][seen].astype(np.float64).mean())
            np.testing.assert_allclose(norm.cell_mean[c], cell_mean, rtol=1e-6)
            anomalies = (values[:, c] - cell_mean)[seen]
            assert norm.mean[c] == 0.0
            np.testing.assert_allclose(norm.std[c], anomalies.std(), rtol=1e-9)
        else:
            x = values[:, c][seen].astype(np.float64)
            np.testing.assert_allclose([norm.mean[c], norm.std[c]], [x.mean(), x.std()],
                                       rtol=1e-9)


def test_a_mask_view_slices_like_the_array():
    _, observed = _record()
    masks = observed.any(axis=1)
    view = MaskView(lambda a, b: masks[a:b], len(masks), np.ones((5, 6), bool))
    assert view.shape == masks.shape
    for s in (slice(0, 64), slice(64, 128), slice(3, 10), slice(69, 70), slice(70, 80)):
        np.testing.assert_array_equal(view[s], masks[s])


def test_prefetch_runs_ahead_and_hands_on_its_errors():
    done = []
    with Prefetch(done.append) as prefetch:
        prefetch.ahead(1)
        prefetch.ahead(2)
    assert done == [1, 2]
    with pytest.raises(ZeroDivisionError), Prefetch(lambda item: 1 / 0) as failing:
        failing.ahead(0)
    # an error of the training itself is the one that comes out, and the thread stops
    with pytest.raises(KeyError), Prefetch(lambda item: 1 / 0) as failing:
        failing.ahead(0)
        raise KeyError("training")
    assert not [t for t in threading.enumerate() if t.name.startswith("ctxq-prefetch")]
    with Prefetch(done.append, enabled=False) as off:
        off.ahead(3)
    assert done == [1, 2]


def test_the_cache_hands_out_read_only_frames_and_empty_ranges():
    values, observed = _record()
    cached = CachedFrames(InMemory(values, observed), budget=1e9)
    v, o = cached.read(16, 20)
    assert not v.flags.writeable and not o.flags.writeable
    for a in (0, 16, 33):
        v, o = cached.read(a, a)
        assert v.shape == (0, 2, 5, 6) and o.shape == (0, 2, 5, 6)


def test_a_variable_first_observed_late_keeps_its_precision():
    rng = np.random.default_rng(2)
    values = (300 + 1e-3 * rng.standard_normal((200, 1, 4, 4))).astype(np.float64)
    observed = np.ones(values.shape, bool)
    observed[:100] = False
    sums = ObservedSums()
    for _, _, v, o in chunks(InMemory(values, observed).read, 200, 16):
        sums.add(v, o)
    _, mean, std = sums.moments()[0]
    x = values[observed]
    np.testing.assert_allclose([mean, std], [x.mean(), x.std()], rtol=1e-12)
