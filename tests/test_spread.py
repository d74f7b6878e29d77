"""The spread model: fitted on withheld errors, members that carry it."""

import numpy as np
import pytest

from ctxq_cli.spread import Spread, fit_correction, fit_spread, likeliest_tail, shift_weights


def test_the_fit_recovers_the_variance_the_errors_were_drawn_with():
    rng = np.random.default_rng(0)
    n = 200_000
    members_std = rng.uniform(0.05, 0.5, n)
    first_std = rng.uniform(0.0, 1.0, n)
    truth = Spread(ensemble=2.0, first_guess=0.5)
    errors = truth.sigma(members_std, first_std) * rng.standard_normal(n)
    fitted = fit_spread(errors, members_std, first_std)
    assert fitted.ensemble == pytest.approx(2.0, rel=0.05)
    assert fitted.first_guess == pytest.approx(0.5, rel=0.1)
    sigma = fitted.sigma(members_std, first_std)
    assert np.mean(sigma ** 2) == pytest.approx(np.mean(errors ** 2), rel=1e-3)  # spread = skill


def test_shift_weights_give_the_sample_the_targets_distribution():
    rng = np.random.default_rng(8)
    sample = rng.uniform(0.0, 1.0, 100_000)          # withheld cells: σ_first uniform
    target = rng.beta(1.0, 3.0, 20_000)               # real gaps: mostly small σ_first
    weights = shift_weights(sample, target)
    assert np.all(weights >= 0)
    for cut in (0.1, 0.3, 0.5):     # weighted shares below a cut match the target's
        share = weights[sample < cut].sum() / weights.sum()
        assert share == pytest.approx(np.mean(target < cut), abs=0.04)
    np.testing.assert_allclose(shift_weights(sample, sample), 1.0, atol=0.01)


def test_weighted_fit_calibrates_the_level_for_the_targets_cells():
    rng = np.random.default_rng(9)
    n = 200_000
    first_std = rng.uniform(0.2, 1.0, n)
    # the errors of cells far in time grow faster than their σ_first
    errors = first_std ** 2 * rng.standard_normal(n)
    members_std = np.full(n, 1e-3)
    near = rng.uniform(0.2, 0.4, 50_000)             # the real gaps' σ_first
    plain = fit_spread(errors, members_std, first_std)
    weighted = fit_spread(errors, members_std, first_std, weights=shift_weights(first_std, near))
    ok = first_std < 0.4
    skill = np.mean(errors[ok] ** 2)
    assert np.mean(weighted.sigma(members_std[ok], first_std[ok]) ** 2) == pytest.approx(
        skill, rel=0.1)      # within the resolution of the quantile bins
    assert np.mean(plain.sigma(members_std[ok], first_std[ok]) ** 2) > 1.5 * skill


def test_without_a_first_guess_the_spread_is_the_scaled_members():
    rng = np.random.default_rng(1)
    members_std = rng.uniform(0.1, 1.0, 10_000)
    errors = 3.0 * members_std * rng.standard_normal(10_000)
    fitted = fit_spread(errors, members_std, None)
    assert fitted.first_guess == 0.0 and fitted.ensemble == pytest.approx(3.0, rel=0.05)


def test_members_keep_their_mean_and_carry_the_spread():
    rng = np.random.default_rng(2)
    k, cells = 64, 5000
    deviations = rng.standard_normal((k, cells)).astype(np.float32) * 0.1
    deviations -= deviations.mean(axis=0)
    first_std = rng.uniform(0.5, 1.0, cells).astype(np.float32)
    spread = Spread(ensemble=1.5, first_guess=0.8)
    out = spread.members(deviations, first_std, rng.standard_normal((k, cells)).astype(np.float32))
    np.testing.assert_allclose(out.mean(axis=0), 0.0, atol=1e-5)
    ratio = out.std(axis=0) / spread.sigma(deviations.std(axis=0), first_std)
    assert np.median(ratio) == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("nu", [3.0, 5.0])
def test_the_likeliest_tail_is_found_for_student_t_errors(nu):
    rng = np.random.default_rng(3)
    z = rng.standard_t(nu, 200_000) * np.sqrt((nu - 2) / nu)
    assert likeliest_tail(z) == nu


def test_gaussian_errors_keep_normal_members():
    rng = np.random.default_rng(4)
    n = 100_000
    members_std = rng.uniform(0.05, 0.5, n)
    first_std = rng.uniform(0.1, 1.0, n)
    errors = Spread(1.0, 1.0).sigma(members_std, first_std) * rng.standard_normal(n)
    assert fit_spread(errors, members_std, first_std).tail >= 30


def test_heavy_tailed_noise_has_unit_variance_and_narrower_intervals():
    five = Spread(tail=5.0).noise(np.random.default_rng(6), (400_000,)).astype(np.float64)
    assert np.var(five) == pytest.approx(1.0, rel=0.03)   # ν = 5: the sample variance settles
    xi = Spread(tail=3.0).noise(np.random.default_rng(5), (400_000,))
    # the same variance, but 90 % of a t_3 lies within ±1.36 σ instead of ±1.64 σ
    assert np.quantile(np.abs(xi), 0.9) == pytest.approx(2.353 / np.sqrt(3), rel=0.03)
    normal = Spread().noise(np.random.default_rng(5), (400_000,))
    assert np.quantile(np.abs(normal), 0.9) == pytest.approx(1.645, rel=0.02)


def test_a_spread_refuses_an_infinite_variance():
    with pytest.raises(ValueError, match="tail"):
        Spread(tail=2.0)


def test_the_correction_share_is_the_least_squares_one_and_stays_in_0_1():
    rng = np.random.default_rng(7)
    n = 50_000
    first = rng.standard_normal(n)
    network = first + rng.standard_normal(n)
    targets = first + 0.4 * (network - first) + 0.3 * rng.standard_normal(n)
    assert fit_correction(targets, network, first) == pytest.approx(0.4, abs=0.01)
    away = first - (network - first)              # the network corrects the wrong way
    assert fit_correction(away, network, first) == 0.0
    beyond = first + 2.0 * (network - first)      # a share is never above one
    assert fit_correction(beyond, network, first) == 1.0
    assert fit_correction(targets, first, first) == 1.0   # no correction: nothing to fit


def test_the_centre_moves_from_the_network_to_the_first_guess_with_the_share():
    network, first = np.array([1.0, 3.0], np.float32), np.array([0.0, 1.0], np.float32)
    assert Spread().centre(network, first) is network
    np.testing.assert_allclose(Spread(correction=0.25).centre(network, first), [0.25, 1.5])
    np.testing.assert_allclose(Spread(correction=0.0).centre(network, first), first)
    assert Spread(correction=0.5).centre(network, None) is network
    with pytest.raises(ValueError, match="correction"):
        Spread(correction=1.5)
