"""Normalisation and training windows."""

import numpy as np
import pytest

from ctxq_cli.data import Normalization


def test_per_cell_normalisation_removes_the_climatology_and_inverts():
    rng = np.random.default_rng(0)
    climatology = np.linspace(250, 300, 6)[:, None] * np.ones((6, 5))   # a latitude gradient
    values = (climatology + rng.normal(scale=2.0, size=(50, 6, 5)))[:, None]
    observed = rng.random(values.shape) < 0.7
    observed[:, :, 0, 0] = False                       # a cell never observed
    norm = Normalization.fit(np.where(observed, values, 0), observed, per_cell=True)
    normed = norm.apply(values, observed)
    assert abs(normed[observed].mean()) < 0.05 and abs(normed[observed].std() - 1) < 0.05
    assert np.isclose(norm.std[0], 2.0, rtol=0.1)      # the anomalies' spread, not the gradient's
    assert np.isfinite(norm.cell_mean).all()
    back = norm.invert(normed)
    np.testing.assert_allclose(back[observed], values[observed], rtol=1e-5)
    plain = Normalization.fit(values, observed)
    assert plain.std[0] > 5 * norm.std[0]              # per variable, the gradient dominates
    norm.check_grid((6, 5))
    with pytest.raises(ValueError, match="grid"):
        norm.check_grid((7, 5))
