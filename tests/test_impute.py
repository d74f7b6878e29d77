"""Imputation: observed values untouched, domain respected, every frame covered, seeded."""

import dataclasses

import numpy as np
import pytest
import torch

from ctxq_cli import impute
from ctxq_cli.data import Normalization
from ctxq_cli.errors import CtxqError
from ctxq_cli.frames import InMemory
from ctxq_cli.impute import calibrate_spread, impute_field, tile_positions, window_plan
from ctxq_cli.spread import Spread
from ctxq_cli.tiles import Tiling, plan
from ctxq_cli.train import TrainOptions, train_denoiser
from ctxq_cli.withhold import calibration_frames

from conftest import smooth_field


def _model_data():
    """The record the ``model`` fixture trains on: values (0 in gaps), observed, domain."""
    values = smooth_field(30, 16, 16, seed=3)[:, None]
    observed = np.random.default_rng(0).random(values.shape) < 0.5
    domain = np.ones((16, 16), bool)
    domain[:3, :3] = False
    return np.where(observed, values, 0), observed, domain


@pytest.fixture(scope="module")
def model():
    values, observed, domain = _model_data()
    return train_denoiser(InMemory(values, observed), domain, ["sst"],
                          TrainOptions(steps=20, channels=(8, 16), batch_size=4, window=3),
                          torch.device("cpu"), progress=False)


@pytest.mark.parametrize("frames, window", [(10, 3), (3, 3), (2, 5), (7, 1), (11, 4)])
def test_each_frame_comes_from_exactly_one_window(frames, window):
    for offset in range(window):
        supplied = []
        for start, first, stop in window_plan(frames, window, offset):
            assert start >= 0 and (start + window <= frames or frames < window)
            assert 0 <= first < stop <= window
            supplied += range(start + first, start + stop)
        assert sorted(supplied) == list(range(frames))


def test_observed_values_are_bit_identical_and_outside_is_nan(model):
    values = smooth_field(7, 16, 16, seed=9)[:, None]
    observed = np.random.default_rng(1).random(values.shape) < 0.3
    observed[:, :, 8:, 8:] = False  # inside the domain, never observed in this file
    # a first guess's std makes every filled cell uncertain, even where all members agree
    result = impute_field(model, np.where(observed, values, 0), observed, model.domain,
                          ensemble=4, members=True, progress=False, spread=Spread(1.0, 1.0))
    inside = observed & model.domain[None, None]
    assert result.mean[inside].tobytes() == values[inside].tobytes()
    hidden_outside = ~observed[:, :, :3, :3]
    assert np.isnan(result.mean[:, :, :3, :3][hidden_outside]).all()
    assert np.isnan(result.std[:, :, :3, :3][hidden_outside]).all()
    gaps = ~observed & model.domain[None, None]
    assert np.isfinite(result.mean[gaps]).all()
    assert (result.std[gaps] > 0).all() and (result.std[inside] == 0).all()
    assert result.members.shape == (4, 7, 1, 16, 16)
    inside_all = np.broadcast_to(model.domain[None, None], result.mean.shape)
    np.testing.assert_allclose(result.members.mean(axis=0)[inside_all], result.mean[inside_all],
                               atol=1e-5)


def test_same_seed_same_output_whatever_the_batch(model):
    values = smooth_field(5, 16, 16, seed=4)[:, None]
    observed = np.random.default_rng(2).random(values.shape) < 0.3
    v = np.where(observed, values, 0)
    a = impute_field(model, v, observed, model.domain, ensemble=5, seed=1, batch=2,
                     progress=False)
    b = impute_field(model, v, observed, model.domain, ensemble=5, seed=1, batch=64,
                     progress=False)
    c = impute_field(model, v, observed, model.domain, ensemble=5, seed=2, progress=False)
    np.testing.assert_allclose(a.mean, b.mean, rtol=0, atol=1e-6, equal_nan=True)
    assert not np.allclose(a.mean, c.mean, equal_nan=True)
    again = impute_field(model, v, observed, model.domain, ensemble=5, seed=1, batch=2,
                         progress=False)
    assert again.mean.tobytes() == a.mean.tobytes() and again.std.tobytes() == a.std.tobytes()


def test_a_frame_without_observations_is_filled_with_large_spread_and_flagged(model):
    values = smooth_field(6, 16, 16, seed=5)[:, None]
    observed = np.random.default_rng(3).random(values.shape) < 0.4
    observed[2] = False
    result = impute_field(model, np.where(observed, values, 0), observed, model.domain,
                          ensemble=4, progress=False)
    assert result.empty_frames == [2]
    inside = model.domain
    assert np.isfinite(result.mean[2, 0][inside]).all()
    assert (result.std[2, 0][inside] >= np.float32(model.normalization.std[0])).all()
    assert np.median(result.std[1, 0][inside & ~observed[1, 0]]) < model.normalization.std[0]


def test_multi_step_gives_posterior_samples(model):
    values = smooth_field(4, 16, 16, seed=5)[:, None]
    observed = np.random.default_rng(3).random(values.shape) < 0.4
    result = impute_field(model, np.where(observed, values, 0), observed, model.domain,
                          ensemble=3, steps=3, members=True, progress=False)
    inside = observed & model.domain[None, None]
    assert (result.members[:, inside] == values[inside]).all()
    assert np.isfinite(result.mean[~observed & model.domain[None, None]]).all()


def test_odd_grid_trains_on_patches_and_imputes_whole(tmp_path):
    values = smooth_field(12, 13, 57, seed=6)[:, None]
    observed = np.random.default_rng(4).random(values.shape) < 0.5
    domain = np.ones((13, 57), bool)
    domain[5:8, 20:30] = False  # an island
    model = train_denoiser(InMemory(np.where(observed, values, 0), observed), domain, ["sst"],
                           TrainOptions(steps=3, channels=(8, 16, 16), batch_size=2, window=2,
                                        patch=16), torch.device("cpu"), progress=False)
    result = impute_field(model, np.where(observed, values, 0), observed, domain, ensemble=2,
                          progress=False)
    assert result.mean.shape == values.shape
    assert np.isfinite(result.mean[:, :, domain]).all()
    island = np.broadcast_to(~domain, observed.shape)
    assert np.isnan(result.mean[island & ~observed]).all()
    assert (result.mean[island & observed] == values[island & observed]).all()


def test_observed_values_outside_the_domain_are_kept(model):
    values = smooth_field(3, 16, 16, seed=8)[:, None]
    observed = np.ones(values.shape, bool)
    observed[:, :, 8:] = False
    observed[:, :, 0, 0] = False   # outside the domain and not observed: stays fill
    result = impute_field(model, np.where(observed, values, 0), observed, model.domain,
                          ensemble=2, progress=False)
    kept = observed[:, :, :3, :3]
    assert result.mean[:, :, :3, :3][kept].tobytes() == values[:, :, :3, :3][kept].tobytes()
    assert np.isnan(result.mean[:, :, 0, 0]).all()


@pytest.mark.parametrize("steps", [1, 3])
def test_the_result_does_not_depend_on_the_time_chunk(model, steps):
    values = smooth_field(11, 16, 16, seed=5)[:, None]
    observed = np.random.default_rng(5).random(values.shape) < 0.4
    v = np.where(observed, values, 0)
    whole = impute_field(model, v, observed, model.domain, ensemble=4, steps=steps,
                         members=True, progress=False)
    for chunk in (1, 4):
        part = impute_field(model, v, observed, model.domain, ensemble=4, steps=steps,
                            members=True, progress=False, chunk=chunk)
        assert part.mean.tobytes() == whole.mean.tobytes()
        assert part.members.tobytes() == whole.members.tobytes()


def test_one_tile_larger_than_the_grid_is_the_untiled_imputation(model):
    values = smooth_field(5, 16, 16, seed=6)[:, None]
    observed = np.random.default_rng(6).random(values.shape) < 0.4
    v = np.where(observed, values, 0)
    a = impute_field(model, v, observed, model.domain, ensemble=3, progress=False)
    b = impute_field(model, v, observed, model.domain, ensemble=3, progress=False,
                     tiling=Tiling(size=64, overlap=8))
    assert a.mean.tobytes() == b.mean.tobytes()


@pytest.mark.slow
@pytest.mark.parametrize("temporal", ["none", "smoother"])
def test_tile_borders_are_no_worse_than_tile_interiors(temporal):
    # A model trained on 24×24 patches of a 64×64 field fills the grid with 24×24 tiles. Cut
    # without overlap, the cells by the tile edges were 6 % worse than the rest; blended, better.
    # The smoother's first guess is so good here that the cells' own difficulty outweighs any
    # seam, so with it the tile edges are compared with the same cells filled untiled.
    g = 64
    truth = smooth_field(50, g, g, seed=8)[:, None]
    observed = np.random.default_rng(8).random(truth.shape) < 0.5
    domain = np.ones((g, g), bool)
    trained = train_denoiser(InMemory(np.where(observed, truth, 0), observed), domain, ["u"],
                             TrainOptions(steps=150, channels=(8, 16), batch_size=8, window=1,
                                          patch=24, lr=3e-3, temporal=temporal),
                             torch.device("cpu"), progress=False)
    test = slice(40, 50)
    v, o = np.where(observed, truth, 0)[test], observed[test]
    tiling = Tiling(size=24, overlap=8)
    tiles = plan((g, g), tiling)
    edges = ({int(t.rows[0]) for t in tiles} | {int(t.rows[-1]) + 1 for t in tiles}) - {0, g}
    near = np.zeros(g, bool)            # within 2 cells of a tile edge inside the grid
    for edge in edges:
        near[max(edge - 2, 0):edge + 2] = True
    border = near[:, None] | near[None, :]
    hidden = ~o[:, 0]

    def rmse(tiling: Tiling, cells: np.ndarray) -> float:
        result = impute_field(trained, v, o, domain, ensemble=4, progress=False, tiling=tiling)
        err = (result.mean - truth[test])[:, 0]
        return float(np.sqrt(np.mean(err[cells & hidden] ** 2)))

    border_rmse = rmse(tiling, border)
    if temporal == "none":
        interior_rmse = rmse(tiling, ~border)
        assert border_rmse <= interior_rmse, (border_rmse, interior_rmse)
    else:
        untiled = rmse(Tiling(), border)
        assert border_rmse <= 1.02 * untiled, (border_rmse, untiled)


def test_a_model_with_a_position_map_refuses_another_grid(model):
    values = smooth_field(4, 16, 24, seed=1)[:, None]
    observed = np.ones(values.shape, bool)
    norm = model.normalization       # a per-variable normalisation would allow another grid
    tied = dataclasses.replace(model, normalization=Normalization(norm.mean, norm.std))
    with pytest.raises(CtxqError, match="position map on grid"):
        impute_field(tied, values, observed, np.ones((16, 24), bool), ensemble=2,
                     progress=False)


def test_a_whole_grid_tile_sees_the_position_map_it_was_trained_with():
    tile = plan((37, 49), Tiling())[0]
    cells = tile_positions(tile, (40, 56), (40, 56))     # padded as training padded the grid
    rows, cols = torch.meshgrid(torch.arange(40), torch.arange(56), indexing="ij")
    assert torch.equal(cells, torch.stack([rows, cols]))
    edge = tile_positions(plan((37, 49), Tiling(size=16, overlap=4))[-1], (16, 16), (40, 56))
    assert int(edge.max()) <= 55 and int(edge[0].min()) == 21


def test_the_spread_is_calibrated_on_cells_training_kept_out(model, caplog):
    values, observed, domain = _model_data()
    with caplog.at_level("INFO", logger="ctxq_cli.impute"):
        scale = calibrate_spread(model, lambda a, b: (values[a:b], observed[a:b]), len(values),
                                 domain, ensemble=4)
    assert scale.ensemble > 0 and scale.first_guess > 0
    assert "(kept out of training)" in caplog.text
    caplog.clear()
    other = np.random.default_rng(1).random(observed.shape) < 0.5   # not the training record
    with caplog.at_level("INFO", logger="ctxq_cli.impute"):
        calibrate_spread(model, lambda a, b: (np.where(other, values, 0)[a:b], other[a:b]),
                         len(values), domain, ensemble=4)
    assert "withheld observations" in caplog.text and "kept out" not in caplog.text


def test_the_calibration_weights_withheld_cells_like_the_real_gaps(model, monkeypatch):
    values, observed, domain = _model_data()
    seen, shift_weights, fit_spread = {}, impute.shift_weights, impute.fit_spread

    def shift(sample, target):
        seen["sample"], seen["target"] = sample, target
        return shift_weights(sample, target)

    def fit(errors, members_std, first_std, correction, weights):
        seen["weights"] = weights
        return fit_spread(errors, members_std, first_std, correction, weights)

    monkeypatch.setattr(impute, "shift_weights", shift)
    monkeypatch.setattr(impute, "fit_spread", fit)
    used = calibration_frames(len(values))
    calibrate_spread(model, lambda a, b: (values[a:b], observed[a:b]), len(values), domain,
                     ensemble=4)
    gaps = int((~observed[used] & domain).sum())
    assert len(seen["target"]) == gaps > 0            # the real gaps of the calibration frames
    assert len(seen["weights"]) == len(seen["sample"]) > 0
    assert np.all(seen["weights"] >= 0) and seen["weights"].std() > 0


def test_a_zero_correction_share_fills_with_the_first_guess_and_members_follow(model):
    values = smooth_field(6, 16, 16, seed=5)[:, None]
    observed = np.random.default_rng(3).random(values.shape) < 0.4
    v = np.where(observed, values, 0)
    common = dict(ensemble=4, members=True, progress=False, seed=3)
    full = impute_field(model, v, observed, model.domain, spread=Spread(1.0, 1.0), **common)
    none = impute_field(model, v, observed, model.domain,
                        spread=Spread(1.0, 1.0, correction=0.0), **common)
    gaps = ~observed & model.domain[None, None]
    assert none.first_guess is not None
    np.testing.assert_allclose(none.mean[gaps], none.first_guess[gaps], atol=1e-5)
    assert not np.allclose(full.mean[gaps], none.mean[gaps], atol=1e-3)
    seen = observed & model.domain[None, None]
    assert none.mean[seen].tobytes() == values[seen].tobytes()
    np.testing.assert_allclose(none.members.mean(axis=0)[gaps], none.mean[gaps], atol=1e-5)
    # the members move with the centre: their spread is the same
    np.testing.assert_allclose(none.std, full.std, rtol=1e-5, equal_nan=True)
