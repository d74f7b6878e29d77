"""Scores against known values."""

import numpy as np

from ctxq_cli.metrics import bias, mae, rmse, scores, vrmse


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
