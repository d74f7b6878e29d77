"""The spread model: fitted on withheld errors, members that carry it."""

import numpy as np
import pytest

from ctxq_cli.spread import Spread, fit_spread


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
