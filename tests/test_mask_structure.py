"""Mask structure is measured one way: the partition's choice and the prior's fidelity report
agree on the same masks."""

import numpy as np

from ctxq_cli.mask_structure import (
    lag1_correlation,
    mask_statistics,
    mask_structure,
    neighbour_pairs,
)


def _clouds(frames=6, n=32, seed=0):
    """Blobs of missing cells: a smoothed random field thresholded."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal((frames, n, n)), (0, 3, 3))
    return field > 0.0     # observed


def test_neighbour_pairs_count_pairs_inside_only():
    cells = np.ones((1, 3, 4), bool)
    inside = np.ones((1, 3, 4), bool)
    inside[0, 0, 0] = False
    (both_x, n_x), (both_y, n_y) = neighbour_pairs(cells, inside)
    assert (n_x, n_y) == (3 * 3 - 1, 2 * 4 - 1) and (both_x, both_y) == (n_x, n_y)


def test_the_correlation_is_that_of_the_indicator_whichever_state_is_counted():
    observed = _clouds()
    inside = np.ones_like(observed)
    p = observed.mean()
    (ox, nx), _ = neighbour_pairs(observed, inside)
    (mx, _), _ = neighbour_pairs(~observed, inside)
    # equal up to the edge cells, which have one neighbour fewer
    assert abs(lag1_correlation(ox, nx, p) - lag1_correlation(mx, nx, 1 - p)) < 0.01
    assert np.isnan(lag1_correlation(3.0, 3, 1.0))


def test_partition_choice_and_fidelity_report_agree():
    domain = np.ones((32, 32), bool)
    for observed, clustered in ((_clouds(), True),
                                (np.random.default_rng(1).random((6, 32, 32)) < 0.5, False)):
        structure = mask_structure(observed, domain)
        stats = mask_statistics(observed)
        # x and y pooled vs x and y averaged: the same quantity on an isotropic mask
        assert abs(structure.neighbour_correlation - stats["autocorrelation"]) < 0.02
        assert np.isclose(structure.missing_fraction, 1 - stats["observed_fraction"])
        assert structure.scattered is not clustered
        assert (stats["autocorrelation"] > 0.5) is clustered


def test_counting_in_ranges_of_frames_gives_the_numbers_of_the_whole(monkeypatch):
    from ctxq_cli import mask_structure as module

    observed = _clouds(frames=23)
    observed[5] = False                      # a frame without observations
    domain = np.ones((32, 32), bool)
    domain[:3, :5] = False
    whole = mask_structure(observed, domain)
    monkeypatch.setattr(module, "STRUCTURE_FRAMES", 4)
    assert mask_structure(observed, domain) == whole
    monkeypatch.setattr(module, "STRUCTURE_FRAMES", 1)
    assert mask_structure(observed, domain) == whole
    assert 0 < whole.temporal_change < 1 and whole.cluster_size > 1
