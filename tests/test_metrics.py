"""Scores against known values."""

import numpy as np

from ctxq_cli.metrics import (
    bias,
    central_interval,
    coverage,
    crps_ensemble,
    crps_gaussian,
    interval_coverage,
    mae,
    per_frame,
    reliability,
    rmse,
    scores,
    spread_skill,
    vrmse,
)


def test_simple_scores():
    truth = np.zeros((1, 2, 2))
    est = np.array([[[1.0, -1.0], [3.0, 0.0]]])
    cells = np.array([[[True, True], [False, True]]])
    assert rmse(est, truth, cells) == np.sqrt(2 / 3)
    assert mae(est, truth, cells) == 2 / 3
    assert bias(est, truth, cells) == 0.0


def test_vrmse_is_one_for_the_frame_mean_and_zero_for_truth():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(5, 8, 8))
    cells = np.ones(truth.shape, bool)
    domain = np.ones((8, 8), bool)
    mean = np.broadcast_to(truth.mean(axis=(1, 2), keepdims=True), truth.shape)
    assert np.isclose(vrmse(mean, truth, cells, domain), 1.0)
    assert vrmse(truth, truth, cells, domain) == 0.0
    assert scores(truth, truth, cells, domain)["cells"] == truth.size


def test_vrmse_variance_ignores_unknown_truth_and_is_per_variable():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=(2, 2, 6, 6))
    truth[:, 1] *= 100                       # another variable in other units
    est = truth + 0.1
    valid = np.ones(truth.shape, bool)
    cells = valid.copy()
    expected = np.mean([0.1 / truth[t, c].std() for t in range(2) for c in range(2)])
    assert np.isclose(vrmse(est, truth, cells, valid), expected)
    known = truth.copy()
    known[:, :, :3] = 0.0                    # unknown truth stored as 0 must not count
    valid[:, :, :3] = False
    cells[:, :, :3] = False
    expected = np.mean([0.1 / truth[t, c, 3:].std() for t in range(2) for c in range(2)])
    assert np.isclose(vrmse(known + 0.1, known, cells, valid), expected)


def test_empty_selection_is_nan():
    a = np.zeros((1, 2, 2))
    assert np.isnan(rmse(a, a, np.zeros_like(a, bool)))


# --- probabilistic scores -------------------------------------------------------------------


def test_crps_of_a_degenerate_ensemble_is_the_mae():
    rng = np.random.default_rng(2)
    truth = rng.normal(size=(3, 5, 5))
    est = truth + rng.normal(size=truth.shape)
    cells = rng.random(truth.shape) < 0.5
    members = np.repeat(est[None], 4, axis=0)
    assert np.isclose(crps_ensemble(members, truth, cells), mae(est, truth, cells))
    assert np.isclose(crps_ensemble(members, truth, cells, fair=True), mae(est, truth, cells))
    assert np.isclose(crps_ensemble(est[None], truth, cells), mae(est, truth, cells))
    assert np.isclose(crps_gaussian(est, np.zeros_like(est), truth, cells),
                      mae(est, truth, cells))


def test_crps_ensemble_matches_the_pairwise_definition():
    rng = np.random.default_rng(3)
    members = rng.normal(size=(7, 4, 6))
    truth = rng.normal(size=(4, 6))
    cells = rng.random(truth.shape) < 0.7
    x, y = members[:, cells], truth[cells]
    skill = np.abs(x - y).mean(axis=0)
    pairs = np.abs(x[:, None] - x[None]).sum(axis=(0, 1))
    k = len(x)
    assert np.isclose(crps_ensemble(members, truth, cells),
                      np.mean(skill - pairs / (2 * k * k)))
    assert np.isclose(crps_ensemble(members, truth, cells, fair=True),
                      np.mean(skill - pairs / (2 * k * (k - 1))))


def test_crps_gaussian_closed_form_and_large_ensemble():
    one = np.ones((1, 1), bool)
    zero = np.zeros((1, 1))
    expected = 2 / np.sqrt(2 * np.pi) - 1 / np.sqrt(np.pi)   # CRPS(N(0, 1), 0)
    assert np.isclose(crps_gaussian(zero, zero + 1, zero, one), expected)
    rng = np.random.default_rng(4)
    mean = rng.normal(size=(40, 10))
    std = rng.uniform(0.5, 2.0, size=mean.shape)
    truth = mean + std * rng.normal(size=mean.shape)
    members = mean + std * rng.normal(size=(1000,) + mean.shape)
    cells = np.ones(mean.shape, bool)
    closed = crps_gaussian(mean, std, truth, cells)
    assert abs(crps_ensemble(members, truth, cells, fair=True) / closed - 1) < 0.02
    assert abs(crps_ensemble(members, truth, cells) / closed - 1) < 0.02


def calibrated(k: int, n: int, seed: int, width: float = 1.0):
    """Truth and k members drawn from one Gaussian per cell; members scaled by ``width``."""
    rng = np.random.default_rng(seed)
    centre = rng.normal(size=n)
    scale = rng.uniform(0.5, 2.0, size=n)
    truth = centre + scale * rng.normal(size=n)
    members = centre + width * scale * rng.normal(size=(k, n))
    return members, truth


def test_spread_skill_is_one_when_calibrated_and_low_when_underdispersed():
    cells = np.ones(20000, bool)
    members, truth = calibrated(8, 20000, 5)
    ratio = spread_skill(members.mean(0), members.std(0, ddof=1), truth, cells, members=8)
    assert abs(ratio - 1) < 0.03
    # without the finite-ensemble correction an 8-member ensemble looks under-dispersed
    assert spread_skill(members.mean(0), members.std(0, ddof=1), truth, cells) < ratio - 0.04
    narrow, truth = calibrated(8, 20000, 6, width=0.5)
    assert spread_skill(narrow.mean(0), narrow.std(0, ddof=1), truth, cells, members=8) < 0.7


def test_coverage_of_calibrated_gaussian_and_ensemble_intervals():
    rng = np.random.default_rng(7)
    n = 40000
    cells = np.ones(n, bool)
    mean = rng.normal(size=n)
    std = rng.uniform(0.5, 2.0, size=n)
    truth = mean + std * rng.normal(size=n)
    assert abs(interval_coverage(truth, cells, 0.9, mean=mean, std=std) - 0.9) < 0.01
    assert abs(interval_coverage(truth, cells, 0.5, mean=mean, std=std) - 0.5) < 0.01
    lower, upper = central_interval(0.9, mean=mean, std=std)
    assert coverage(lower, upper, truth, cells) == interval_coverage(truth, cells, 0.9,
                                                                     mean=mean, std=std)
    members, ens_truth = calibrated(19, n, 8)
    assert abs(interval_coverage(ens_truth, cells, 0.9, members=members) - 0.9) < 0.01
    narrow, narrow_truth = calibrated(19, n, 9, width=0.5)
    assert interval_coverage(narrow_truth, cells, 0.9, members=narrow) < 0.75


def test_reliability_lies_on_the_diagonal_when_calibrated():
    n = 40000
    cells = np.ones(n, bool)
    members, truth = calibrated(19, n, 12)
    for kwargs in ({"members": members},
                   {"mean": np.full(n, 1.5), "std": np.ones(n)}):  # a deliberately bad one
        nominal, observed = reliability(truth, cells, **kwargs)
        assert np.allclose(nominal, np.arange(1, 10) / 10)
        assert np.all(np.diff(observed) > 0)
        assert np.all(np.abs(observed - nominal) < 0.02) == ("members" in kwargs)
    narrow, truth = calibrated(19, n, 13, width=0.5)
    nominal, observed = reliability(truth, cells, members=narrow)
    assert np.all(observed < nominal)


def test_per_frame_cuts_every_array_along_its_frame_axis():
    rng = np.random.default_rng(10)
    truth = rng.normal(size=(4, 2, 5, 5))
    est = truth + rng.normal(size=truth.shape)
    members = est + rng.normal(size=(6,) + truth.shape)
    cells = rng.random(truth.shape) < 0.5
    domain = np.ones((5, 5), bool)
    assert np.allclose(per_frame(rmse, est, truth, cells),
                       [rmse(est[t], truth[t], cells[t]) for t in range(4)])
    assert np.allclose(per_frame(crps_ensemble, members, truth, cells=cells, fair=True),
                       [crps_ensemble(members[:, t], truth[t], cells[t], fair=True)
                        for t in range(4)])
    assert np.allclose(per_frame(vrmse, est, truth, cells, domain),
                       [vrmse(est[t], truth[t], cells[t], domain) for t in range(4)])
    assert np.allclose(per_frame(interval_coverage, truth, cells, 0.9, members=members),
                       [interval_coverage(truth[t], cells[t], 0.9, members=members[:, t])
                        for t in range(4)])


def test_scores_adds_probabilistic_keys_only_when_asked():
    rng = np.random.default_rng(11)
    truth = rng.normal(size=(3, 6, 6))
    members = truth + rng.normal(size=(5,) + truth.shape)
    est = members.mean(0)
    cells = rng.random(truth.shape) < 0.5
    valid = np.ones((6, 6), bool)
    plain = scores(est, truth, cells, valid)
    assert set(plain) == {"rmse", "mae", "bias", "vrmse", "cells"}
    extra = {"crps", "spread_skill", "coverage_50", "coverage_90"}
    ens = scores(est, truth, cells, valid, members=members)
    assert set(ens) == set(plain) | extra
    assert all(ens[key] == plain[key] for key in plain)
    assert np.isclose(ens["crps"], crps_ensemble(members, truth, cells))
    std = members.std(0, ddof=1)
    gauss = scores(est, truth, cells, valid, std=std)
    assert set(gauss) == set(plain) | extra
    assert np.isclose(gauss["crps"], crps_gaussian(est, std, truth, cells))
    assert np.isclose(ens["spread_skill"], gauss["spread_skill"] * np.sqrt(6 / 5))
