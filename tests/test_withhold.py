"""Withholding for cross-validation: a seeded subset of the observations, shaped as asked."""

import numpy as np
import pytest

from ctxq_cli.errors import CtxqError
from ctxq_cli.withhold import calibration_cells, mask_fingerprint, withhold


def _clouds(frames=40, size=24, seed=0):
    """Time-varying blob masks (True = observed), as (T, 1, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    seen = np.ones((frames, size, size), bool)
    for t in range(frames):
        for _ in range(3):
            cy, cx, r = rng.integers(size), rng.integers(size), rng.integers(3, 7)
            seen[t] &= (yy - cy) ** 2 + (xx - cx) ** 2 > r * r
    return seen[:, None]


@pytest.mark.parametrize("pattern", ["mask", "pixel", "block"])
def test_hidden_cells_are_observed_inside_the_domain_and_about_the_fraction(pattern):
    observed = _clouds()
    domain = np.ones(observed.shape[-2:], bool)
    domain[:, :3] = False
    hidden = withhold(observed, domain, 0.1, pattern, seed=1)
    assert hidden.shape == observed.shape
    assert not (hidden & ~observed).any() and not hidden[..., ~domain].any()
    share = hidden.sum() / (observed & domain).sum()
    assert 0.06 < share < 0.2, share
    np.testing.assert_array_equal(hidden, withhold(observed, domain, 0.1, pattern, seed=1))
    assert not np.array_equal(hidden, withhold(observed, domain, 0.1, pattern, seed=2))


def test_mask_pattern_hides_real_gap_shapes():
    observed = _clouds()
    hidden = withhold(observed, np.ones((24, 24), bool), 0.1, "mask", seed=0)[:, 0]
    gaps = ~observed[:, 0]
    for t in np.flatnonzero(hidden.any(axis=(1, 2))):
        # the hidden cells of frame t are exactly another frame's gaps over t's observations
        assert any(np.array_equal(hidden[t], observed[t, 0] & gaps[s])
                   for s in range(len(gaps)) if s != t)


def test_static_mask_falls_back_to_blocks_and_bad_options_are_refused():
    observed = np.broadcast_to(_clouds(1)[0], (10, 1, 24, 24))
    hidden = withhold(observed, np.ones((24, 24), bool), 0.2, "mask", seed=0)
    assert hidden.any()
    with pytest.raises(CtxqError, match="between 0 and 1"):
        withhold(observed, np.ones((24, 24), bool), 1.5)
    with pytest.raises(CtxqError, match="must be one of"):
        withhold(observed, np.ones((24, 24), bool), 0.1, "stripes")


def test_mask_pattern_on_scattered_gaps_hides_scattered_cells_in_every_frame():
    rng = np.random.default_rng(5)   # not the withholding seed: its stream would be this one
    observed = (rng.random((40, 1, 32, 32)) < 0.1)           # 10 % observed at random
    hidden = withhold(observed, np.ones((32, 32), bool), 0.1, "mask", seed=0)[:, 0]
    kept = (observed[:, 0] & ~hidden).sum(axis=(1, 2)) / observed[:, 0].sum(axis=(1, 2))
    # another frame's gaps would leave ~10 % of some frames; scattered withholding keeps ~90 %
    assert kept.min() > 0.6, kept.min()
    assert 0.06 < hidden.sum() / observed.sum() < 0.14


def _drifting_clouds(frames=60, size=32, seed=0):
    """Blobs that drift one cell per frame (True = observed), as (T, 1, H, W)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    blobs = [(rng.integers(size), rng.integers(size), rng.integers(3, 7)) for _ in range(4)]
    seen = np.ones((frames, size, size), bool)
    for t in range(frames):
        for cy, cx, r in blobs:
            dy, dx = (yy - cy) % size, (xx - cx - t) % size
            seen[t] &= np.minimum(dy, size - dy) ** 2 + np.minimum(dx, size - dx) ** 2 > r * r
        if t % 15 == 14:                                     # clouds change now and then
            blobs = [(rng.integers(size), rng.integers(size), rng.integers(3, 7))
                     for _ in range(4)]
    return seen[:, None]


def test_mask_pattern_hides_gaps_that_persist_in_time_like_real_ones():
    observed = _drifting_clouds()
    hidden = withhold(observed, np.ones((32, 32), bool), 0.1, "mask", seed=3)[:, 0]
    gaps = ~observed[:, 0]
    real = (gaps[:-1] & gaps[1:]).sum() / gaps[:-1].sum()
    # a hidden cell should stay unavailable in the next frame about as often as a real gap does
    after = (hidden[:-1] & (hidden[1:] | gaps[1:])).sum() / hidden[:-1].sum()
    assert after > 0.75 * real, (after, real)


def test_calibration_cells_are_reproducible_and_fingerprinted_with_the_domain():
    observed = _clouds(frames=60)
    domain = np.ones((24, 24), bool)
    frames, hidden = calibration_cells(observed, domain)
    assert (frames.start, frames.stop) == (6, 54)              # the middle 48 frames
    again = calibration_cells(observed.copy(), domain.copy())[1]
    np.testing.assert_array_equal(hidden, again)
    assert not (hidden & ~observed[frames]).any()
    key = mask_fingerprint(observed[frames], domain)
    assert key == mask_fingerprint(observed[frames].copy(), domain)
    changed = observed[frames].copy()
    changed[3, 0, 5, 5] ^= True
    smaller = domain.copy()
    smaller[0, 0] = False
    assert mask_fingerprint(changed, domain) != key != mask_fingerprint(observed[frames], smaller)
    assert calibration_cells(observed[:2, :, :3, :3], domain[:3, :3])[1] is None   # too few
