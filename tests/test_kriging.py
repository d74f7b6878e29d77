"""Kriging each frame on the grid: the dense solution, its own observations only, the bound."""

import math

import numpy as np
import torch

from ctxq_cli.kriging import (
    TRUNCATION,
    Convolution,
    correlation,
    krige,
    nearest_variance,
    reach,
)


def _grid_field(seed: int, h: int = 10, w: int = 9, scale: float = 3.0):
    """A Matérn-3/2 draw on an (h, w) grid and the dense correlation matrix of its cells."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(float)
    d = np.sqrt(((pts[:, None] - pts[None]) ** 2).sum(-1))
    c = correlation(torch.from_numpy(d), scale).numpy()
    z = np.linalg.cholesky(c + 1e-9 * np.eye(len(c))) @ rng.standard_normal(len(c))
    return z.reshape(h, w), c


def test_enough_iterations_give_the_dense_kriging_mean():
    z, c = _grid_field(0)
    observed = np.random.default_rng(1).random(z.shape) < 0.6
    nugget = 0.05
    o = observed.ravel()
    dense = c[:, o] @ np.linalg.solve(c[np.ix_(o, o)] + nugget * np.eye(o.sum()), z.ravel()[o])
    mean = krige(torch.from_numpy(np.where(observed, z, 0))[None], torch.from_numpy(observed)[None],
                 3.0, nugget, iterations=200, tolerance=1e-12)
    np.testing.assert_allclose(mean[0].numpy().ravel(), dense, atol=1e-8)
    # the default tolerance stops far earlier, within a ten-thousandth of the field's scale
    mean = krige(torch.from_numpy(np.where(observed, z, 0))[None], torch.from_numpy(observed)[None],
                 3.0, nugget)
    np.testing.assert_allclose(mean[0].numpy().ravel(), dense, atol=1e-4)


def test_a_cut_kernel_convolves_on_a_smaller_grid_without_wrapping():
    # the padded grid holds the frame and the kernel's reach, no more; cells a frame apart
    # must not see each other through the FFT's periodicity
    h, w, cut = 40, 33, 6.5
    conv = Convolution.of(lambda d: torch.exp(-d / 2), (h, w), torch.device("cpu"), cut)
    assert conv.padded[0] < 2 * h and conv.padded[1] < 2 * w
    assert all(n >= size + cut for n, size in zip(conv.padded, (h, w)))
    x = torch.randn(2, h, w, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    yy, xx = np.mgrid[0:h, 0:w]
    d = np.hypot(yy.ravel()[:, None] - yy.ravel()[None], xx.ravel()[:, None] - xx.ravel()[None])
    dense = np.where(d <= cut, np.exp(-d / 2), 0.0)
    expected = (x.reshape(2, -1).numpy() @ dense.T).reshape(2, h, w)
    np.testing.assert_allclose(conv(x).numpy(), expected, atol=1e-10)


def test_the_kernel_is_cut_where_the_correlation_is_negligible():
    for scale in (1.3, 2.7, 10.0):
        cut = reach(scale)
        c = float(correlation(torch.tensor(cut, dtype=torch.float64), scale))
        assert math.isclose(c, TRUNCATION, rel_tol=1e-6)


def test_the_mean_depends_on_the_observed_cells_only():
    z, _ = _grid_field(2)
    observed = torch.from_numpy(np.random.default_rng(3).random(z.shape) < 0.5)
    values = torch.from_numpy(z)
    mean = krige(values, observed, 3.0, 0.01)
    poisoned = torch.where(observed, values, torch.full_like(values, 1e6))
    assert torch.equal(krige(poisoned, observed, 3.0, 0.01), mean)
    assert not torch.equal(krige(values + observed, observed, 3.0, 0.01), mean)


def test_frames_are_kriged_independently():
    z, _ = _grid_field(4)
    rng = np.random.default_rng(5)
    values = torch.from_numpy(np.stack([z, -z, 2 * z]))
    observed = torch.from_numpy(rng.random(values.shape) < 0.5)
    both = krige(values, observed, 3.0, 0.01)
    for i in range(3):
        torch.testing.assert_close(krige(values[i], observed[i], 3.0, 0.01), both[i])


def test_a_frame_gets_the_same_bits_alone_or_batched_even_unconverged():
    # white noise under a long length scale: 40 iterations are far from converged, where
    # round-off differences would grow to 1e-4
    g = torch.Generator().manual_seed(0)
    values = torch.randn(5, 16, 16, generator=g, dtype=torch.float64)
    observed = torch.rand(5, 16, 16, generator=g) < 0.3
    together = krige(values, observed, 9.6, 0.01)
    for i in range(5):
        assert torch.equal(krige(values[i], observed[i], 9.6, 0.01), together[i])
        assert torch.equal(krige(values[i:i + 2], observed[i:i + 2], 9.6, 0.01)[0], together[i])


def test_the_nearest_observation_bound():
    observed = torch.zeros(1, 9, 9, dtype=torch.bool)
    observed[0, 4, 4] = True
    var = nearest_variance(observed, 3.0, reach=3)[0]
    assert var[4, 4] == 0
    for d in (1, 2, 3):                 # Chebyshev rings around the one observation
        expected = 1 - float(correlation(torch.tensor(float(d), dtype=torch.float64), 3.0)) ** 2
        assert math.isclose(float(var[4, 4 + d]), expected, rel_tol=1e-12)
        assert math.isclose(float(var[4 - d, 4 - d]), expected, rel_tol=1e-12)
    assert var[0, 0] == 1.0 and var[4, 0] == 1.0          # beyond the reach


def test_forty_iterations_suffice_for_a_long_length_scale_under_a_cloud():
    # long ℓ is ill-conditioned: plain conjugate gradients are far off after 40 iterations,
    # the preconditioned ones are within a thousandth of the dense solution
    for seed in range(3):
        z, c = _grid_field(seed, 16, 15, 8.0)
        rng = np.random.default_rng(seed)
        observed = rng.random(z.shape) < 0.9
        y0, x0 = rng.integers(0, 8, 2)
        observed[y0:y0 + 7, x0:x0 + 8] = False
        o = observed.ravel()
        dense = c[:, o] @ np.linalg.solve(c[np.ix_(o, o)] + 0.01 * np.eye(o.sum()), z.ravel()[o])
        mean = krige(torch.from_numpy(np.where(observed, z, 0)), torch.from_numpy(observed), 8.0,
                     0.01, iterations=40)
        np.testing.assert_allclose(mean.numpy().ravel(), dense, atol=1e-3)


def test_float32_kriging_is_within_a_thousandth_of_float64():
    # the smoother kriges in float32 for speed: its first guess may move by no more than this
    z, _ = _grid_field(4, 24, 21, 5.0)
    rng = np.random.default_rng(4)
    observed = torch.from_numpy(rng.random((3, *z.shape)) < 0.1)
    values = torch.from_numpy(np.where(observed.numpy(), z, 0))
    exact = krige(values, observed, 5.0, 0.1, iterations=200, tolerance=1e-12)
    single = krige(values, observed, 5.0, 0.1, dtype=torch.float32)
    assert single.dtype == torch.float32
    assert float((single.double() - exact).abs().max()) < 1e-3
