"""Reference gap-fillers: DINEOF and optimal interpolation against known answers."""

import numpy as np
import pytest

from ctxq_cli import baselines
from ctxq_cli.baselines import (
    Covariance,
    dineof,
    fit_covariance,
    linear,
    oi,
    optimal_interpolation,
)


def gaussian_field(cov: Covariance, frames: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Frames (frames, n, n) of a stationary Gaussian field with covariance ``cov`` on a torus."""
    d = np.minimum(np.arange(n), n - np.arange(n))
    r = np.sqrt(d[:, None] ** 2 + d[None, :] ** 2)
    # the circulant covariance's eigenvalues are its FFT; tiny negative ones are round-off
    eig = np.maximum(np.fft.fft2(cov.variance * cov.correlation(r)).real, 0.0)
    noise = rng.standard_normal((frames, n, n))
    field = np.fft.ifft2(np.sqrt(eig) * np.fft.fft2(noise)).real
    return field + np.sqrt(cov.nugget) * rng.standard_normal(field.shape)


def low_rank(frames: int, h: int, w: int, rank: int, rng: np.random.Generator) -> np.ndarray:
    """A (frames, 2, h, w) record whose (cells·variables × frames) matrix has the given rank."""
    space = rng.normal(size=(2 * h * w, rank))
    time = rng.normal(size=(frames, rank))
    field = (space @ time.T).T.reshape(frames, 2, h, w)
    field[:, 1] = 100.0 * field[:, 1] + 50.0        # another variable in other units
    return field


def rms(a: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(a, dtype=np.float64))))


def test_dineof_recovers_an_exactly_low_rank_field():
    rng = np.random.default_rng(0)
    rank = 3
    truth = low_rank(60, 6, 7, rank, rng)
    observed = rng.random(truth.shape) < 0.5
    domain = np.ones((6, 7), bool)
    est, info = dineof(np.where(observed, truth, np.nan), observed, domain, tol=1e-11,
                       max_iter=5000, validation_fraction=0.1, seed=1, return_info=True)
    gaps = ~observed
    for c in range(2):
        err = rms((est - truth)[:, c][gaps[:, c]]) / truth[:, c].std()
        assert err < 1e-5                           # float32 output: ~1e-7 relative
    # removing each cell's observed temporal mean adds one direction (the error of that mean)
    # to the rank-3 matrix, so the exact fit needs rank + 1 modes
    assert abs(info.modes - (rank + 1)) <= 1
    assert info.validation_rmse[info.modes] < 1e-6 * info.validation_rmse[0]


def test_dineof_beats_the_mean_on_a_noisy_low_rank_field():
    rng = np.random.default_rng(2)
    truth = low_rank(80, 8, 8, 2, rng)[:, :1]
    noisy = truth + 0.1 * truth.std() * rng.standard_normal(truth.shape)
    observed = rng.random(truth.shape) < 0.4
    est, info = dineof(noisy, observed, np.ones((8, 8), bool), seed=0, return_info=True)
    gaps = ~observed
    mean = np.nanmean(np.where(observed, noisy, np.nan), axis=0, keepdims=True)
    assert rms((est - truth)[gaps]) < 0.15 * rms((mean - truth)[gaps])
    assert 2 <= info.modes <= 4


def test_dineof_contract_and_edge_cases():
    rng = np.random.default_rng(3)
    t, h, w = 12, 6, 8
    values = rng.normal(size=(t, 2, h, w)).astype(np.float32)
    observed = rng.random(values.shape) < 0.6
    observed[:, :, 2, 3] = False                    # a domain cell never observed
    observed[5] = False                             # a frame with no observation
    domain = np.ones((h, w), bool)
    domain[0, :3] = False
    values[~observed] = np.nan
    est = dineof(values, observed, domain, seed=0)
    assert est.dtype == np.float32 and est.shape == values.shape
    seen = observed & domain
    assert np.array_equal(est[seen].view(np.uint32), values[seen].view(np.uint32))
    assert np.isnan(est[:, :, ~domain]).all()
    assert np.isfinite(est[:, :, domain]).all()
    # with no observation a frame falls back on each cell's temporal mean
    ever = seen.any(axis=0)
    cell_mean = np.where(seen, values, 0).sum(axis=0) / np.maximum(seen.sum(axis=0), 1)
    assert np.allclose(est[5][ever], cell_mean[ever], atol=1e-5)


def test_dineof_reproducible_with_a_seed():
    rng = np.random.default_rng(4)
    values = low_rank(30, 5, 5, 2, rng)[:, :1] + rng.normal(size=(30, 1, 5, 5))
    observed = rng.random(values.shape) < 0.5
    domain = np.ones((5, 5), bool)
    a = dineof(values, observed, domain, seed=7)
    b = dineof(values, observed, domain, seed=7)
    assert np.array_equal(a, b, equal_nan=True)


def test_dineof_on_one_frame_is_linear_interpolation():
    rng = np.random.default_rng(5)
    values = rng.normal(size=(1, 1, 7, 9))
    observed = rng.random(values.shape) < 0.4
    domain = np.ones((7, 9), bool)
    assert np.allclose(dineof(values, observed, domain), linear(values, observed, domain),
                       atol=1e-6)


def test_dineof_with_very_few_observations_fills_the_domain():
    values = np.zeros((4, 1, 5, 5))
    observed = np.zeros(values.shape, bool)
    observed[0, 0, 1, 1] = observed[2, 0, 3, 4] = True
    values[0, 0, 1, 1], values[2, 0, 3, 4] = 1.0, 3.0
    domain = np.ones((5, 5), bool)
    est = dineof(values, observed, domain)
    assert np.isfinite(est).all() and est[0, 0, 1, 1] == 1.0 and est[2, 0, 3, 4] == 3.0
    assert np.all(dineof(values, np.zeros_like(observed), domain) == 0.0)


def test_fit_covariance_recovers_the_length_scale():
    rng = np.random.default_rng(6)
    true = Covariance(variance=2.0, length_scale=4.0, nugget=0.1)
    field = gaussian_field(true, 12, 48, rng)
    observed = rng.random(field.shape) < 0.5
    fit = fit_covariance(np.where(observed, field, np.nan), observed, np.ones((48, 48), bool),
                         seed=0)
    assert abs(fit.length_scale / true.length_scale - 1) < 0.25
    assert abs(fit.variance / true.variance - 1) < 0.25
    assert abs(fit.nugget - true.nugget) < 0.1
    fixed = fit_covariance(field, observed, np.ones((48, 48), bool), length_scale=6.0)
    assert fixed.length_scale == 6.0


def test_kriging_matches_a_dense_solve_when_the_neighbourhood_holds_every_observation():
    rng = np.random.default_rng(7)
    cov = Covariance(variance=1.5, length_scale=3.0, nugget=0.2)
    n = 10
    field = gaussian_field(cov, 1, n, rng)[:, None]
    observed = rng.random(field.shape) < 0.15
    domain = np.ones((n, n), bool)
    est, std = optimal_interpolation(field, observed, domain, covariance=cov, neighbours=64,
                                     return_std=True)
    yy, xx = np.mgrid[0:n, 0:n]
    pts = np.stack([yy[observed[0, 0]], xx[observed[0, 0]]], 1)
    tgt = np.stack([yy[~observed[0, 0]], xx[~observed[0, 0]]], 1)
    m = len(pts)

    def c(a, b):
        r = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
        return cov.variance * cov.correlation(r)

    lhs = np.ones((m + 1, m + 1))
    lhs[:m, :m] = c(pts, pts) + cov.nugget * np.eye(m)
    lhs[m, m] = 0.0
    rhs = np.vstack([c(pts, tgt), np.ones((1, len(tgt)))])
    sol = np.linalg.solve(lhs, rhs)
    expected = sol[:m].T @ field[0, 0][observed[0, 0]]
    var = cov.variance + cov.nugget - np.sum(sol[:m] * rhs[:m], 0) - sol[m]
    assert np.allclose(est[0, 0][~observed[0, 0]], expected, atol=1e-5)
    assert np.allclose(std[0, 0][~observed[0, 0]], np.sqrt(var), atol=1e-5)


def test_oi_beats_linear_on_sparse_observations_of_a_smooth_field():
    rng = np.random.default_rng(8)
    true = Covariance(variance=1.0, length_scale=5.0, nugget=0.0)
    field = gaussian_field(true, 6, 40, rng)[:, None]
    observed = rng.random(field.shape) < 0.1
    domain = np.ones((40, 40), bool)
    est, std = oi(field, observed, domain, seed=0, return_std=True)
    lin = linear(field, observed, domain)
    gaps = ~observed
    assert rms((est - field)[gaps]) < 0.9 * rms((lin - field)[gaps])
    z = (est - field)[gaps] / std[gaps]             # the std is calibrated too
    assert 0.8 < z.std() < 1.25


def test_oi_contract_and_edge_cases():
    rng = np.random.default_rng(9)
    values = gaussian_field(Covariance(1.0, 3.0, 0.05), 4, 16, rng)[:, None]
    values = values.astype(np.float32)
    observed = rng.random(values.shape) < 0.3
    observed[2] = False                             # a frame with no observation
    observed[3] = False
    observed[3, 0, 4, 4] = True                     # and one with a single observation
    domain = np.ones((16, 16), bool)
    domain[:, :2] = False
    est, std = optimal_interpolation(values, observed, domain, seed=0, return_std=True)
    seen = observed & domain
    assert est.dtype == np.float32 and est.shape == values.shape
    assert np.array_equal(est[seen].view(np.uint32), values[seen].view(np.uint32))
    assert np.isnan(est[:, :, ~domain]).all() and np.isnan(std[:, :, ~domain]).all()
    assert np.isfinite(est[:, :, domain]).all() and np.isfinite(std[:, :, domain]).all()
    assert (std[seen] == 0).all() and (std[:, :, domain][~seen[:, :, domain]] > 0).all()
    assert np.allclose(est[3][:, domain], values[3, 0, 4, 4])
    assert np.allclose(est[2][:, domain], values[seen].astype(np.float64).mean())
    again = optimal_interpolation(values, observed, domain, seed=0)
    assert np.array_equal(est, again, equal_nan=True)


@pytest.mark.parametrize("fill", [dineof, optimal_interpolation])
def test_fillers_handle_several_variables(fill):
    rng = np.random.default_rng(10)
    values = np.stack([gaussian_field(Covariance(1.0, 3.0, 0.0), 8, 12, rng),
                       10 + 5 * gaussian_field(Covariance(1.0, 2.0, 0.0), 8, 12, rng)], 1)
    observed = rng.random(values.shape) < 0.5
    est = fill(values, observed, np.ones((12, 12), bool), seed=0)
    assert np.isfinite(est).all()
    assert np.array_equal(est[observed], values[observed].astype(np.float32))


def test_triangulations_run_with_one_blas_thread(monkeypatch):
    # scipy's Delaunay interpolation makes one tiny LAPACK call per triangle: a threaded BLAS
    # on a busy machine turned milliseconds into minutes
    from threadpoolctl import threadpool_info

    seen_threads = []
    real = baselines.LinearNDInterpolator

    def spy(*args, **kwargs):
        seen_threads.extend(p["num_threads"] for p in threadpool_info()
                            if p["user_api"] == "blas")
        return real(*args, **kwargs)

    monkeypatch.setattr(baselines, "LinearNDInterpolator", spy)
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, 1, 12, 12))
    observed = rng.random(values.shape) < 0.5
    baselines.linear(values, observed, np.ones((12, 12), bool))
    assert seen_threads and set(seen_threads) == {1}


def test_persistence_interpolates_linearly_in_time_between_a_cells_observations():
    times = np.array([0.0, 1.0, 3.0, 4.0, 10.0])                 # irregular days
    truth = (2.0 * times - 1.0)[:, None, None, None] * np.ones((5, 1, 3, 3))
    observed = np.zeros(truth.shape, bool)
    observed[[0, 4]] = True
    observed[2, 0, 0, 0] = True
    observed[:, :, 2, 2] = False                                  # never observed
    domain = np.ones((3, 3), bool)
    domain[0, 2] = False
    out = baselines.persistence(np.where(observed, truth, 0), observed, domain, times)
    # a linear trend is reproduced exactly between observations, whatever their spacing
    np.testing.assert_allclose(out[:, 0, 1, 1], truth[:, 0, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(out[:, 0, 0, 0], truth[:, 0, 0, 0], rtol=1e-6)
    inside = observed & domain
    assert out[inside].tobytes() == truth[inside].astype(np.float32).tobytes()
    assert np.isnan(out[:, 0, 0, 2]).all()                        # outside the domain
    # a cell never observed is filled in each frame from its neighbours
    assert np.isfinite(out[:, 0, 2, 2]).all()
    # beyond a cell's last observation, the last observation persists
    last = observed.copy()
    last[4] = False
    tail = baselines.persistence(np.where(last, truth, 0), last, domain, times)
    assert tail[4, 0, 0, 0] == pytest.approx(truth[2, 0, 0, 0])
    assert tail[4, 0, 1, 1] == pytest.approx(truth[0, 0, 1, 1])
