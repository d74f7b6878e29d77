"""The temporal smoother: exact Gaussian-process smoothing, windows from their context only."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from ctxq_cli.data import TrainingFrames, Windows
from ctxq_cli.frames import InMemory
from ctxq_cli.partition import PixelPartition, query_probability
from ctxq_cli.temporal import (
    KRIGING_DTYPE,
    Smoother,
    SmootherConfig,
    distances,
    filter_record,
    first_guess,
    fit_smoother,
    kernel,
    posterior,
    record_states,
    window_messages,
)

from conftest import smooth_field


def _matern(dt: np.ndarray, scale: float) -> np.ndarray:
    """The Matérn-3/2 correlation at lags dt."""
    a = math.sqrt(3.0) * np.abs(dt) / scale
    return (1 + a) * np.exp(-a)


def _irregular_record(seed: int = 0, frames: int = 30):
    """One cell observed at irregular times, some frames without observation."""
    rng = np.random.default_rng(seed)
    times = np.cumsum(rng.uniform(0.2, 3.0, frames))
    values = rng.standard_normal(frames)
    observed = rng.random(frames) < 0.6
    return times, values, observed


def test_the_transition_keeps_the_stationary_prior():
    sm = Smoother(SmootherConfig(time_scale=4.0))
    prior = sm.prior((3,), torch.device("cpu"))
    for dt in (0.0, 0.3, 5.0, math.inf):
        carried = sm.predict(prior, sm.transition(torch.tensor([dt])))
        torch.testing.assert_close(carried, prior)
    a00, a01, a10, a11, *_ = sm.transition(torch.tensor([0.0]))
    assert (float(a00), float(a01), float(a10), float(a11)) == (1.0, 0.0, 0.0, 1.0)


def test_smoothing_a_cell_is_exact_gaussian_process_regression():
    scale, nugget = 2.5, 0.01
    times, values, observed = _irregular_record()
    sm = Smoother(SmootherConfig(time_scale=scale, nugget=nugget))
    shape = (len(times), 1, 1, 1)
    mean, var = sm.smooth(torch.from_numpy(np.where(observed, values, 0).reshape(shape)),
                          torch.from_numpy(observed.reshape(shape)), torch.from_numpy(times))
    t_obs, y = times[observed], values[observed]
    k_oo = _matern(t_obs[:, None] - t_obs[None], scale) + nugget * np.eye(len(t_obs))
    k_xo = _matern(times[:, None] - t_obs[None], scale)
    expected_mean = k_xo @ np.linalg.solve(k_oo, y)
    expected_var = 1 - np.einsum("ij,ji->i", k_xo, np.linalg.solve(k_oo, k_xo.T))
    # exact up to the float32 the filtered states are kept in
    np.testing.assert_allclose(mean.numpy().ravel(), expected_mean, atol=1e-6)
    np.testing.assert_allclose(var.numpy().ravel(), expected_var, atol=1e-6)


NEIGHBOURS = SmootherConfig(time_scale=3.0, nugget=0.02, radius=1, inflation=2.0,
                            correlation=(0.8,))
ANALYSIS = SmootherConfig(time_scale=3.0, nugget=0.02, analysis_scale=2.0, analysis_nugget=0.1)


@pytest.mark.parametrize("config", [NEIGHBOURS, ANALYSIS], ids=["neighbours", "analysis"])
def test_a_window_with_all_its_observations_is_the_smoothed_record(config, monkeypatch):
    # the messages' algebra is exact: kriging in float64 shows it to float32 precision
    monkeypatch.setattr("ctxq_cli.temporal.KRIGING_DTYPE", torch.float64)
    times, _, _ = _irregular_record(1, 40)
    rng = np.random.default_rng(1)
    values = rng.standard_normal((40, 2, 6, 5))
    observed = rng.random(values.shape) < 0.5
    sm = Smoother(config)
    v = torch.from_numpy(np.where(observed, values, 0))
    o = torch.from_numpy(observed)
    t = torch.from_numpy(times)
    mean, var = sm.smooth(v, o, t)
    states = record_states(sm, v, o, t)
    starts = torch.tensor([0, 17, 37])
    frames = starts[:, None] + torch.arange(3)
    messages = window_messages(sm, states, starts, 3)
    w_mean, w_std = sm.window(v[frames], o[frames], *messages)
    # the record's states are kept in float32
    torch.testing.assert_close(w_mean, mean[frames], atol=2e-5, rtol=0)
    torch.testing.assert_close(w_std ** 2, var[frames], atol=2e-5, rtol=0)


def test_a_record_filtered_in_pieces_gives_the_same_bits():
    times, _, _ = _irregular_record(2, 25)
    rng = np.random.default_rng(2)
    values = torch.from_numpy(rng.standard_normal((25, 1, 4, 4)))
    observed = torch.from_numpy(rng.random((25, 1, 4, 4)) < 0.5)
    t = torch.from_numpy(times)
    sm = Smoother(SmootherConfig(time_scale=2.0, radius=1, correlation=(0.7,)))
    for reverse in (False, True):
        whole = sm.record(values, observed, t, reverse=reverse)
        a, b = (10, 25) if reverse else (0, 10)
        first = sm.record(values[a:b], observed[a:b], t[a:b], reverse=reverse)
        edge = first[0] if reverse else first[-1]
        c, d = (0, 10) if reverse else (10, 25)
        gap = (t[10] - t[9]).reshape(1)
        start = sm.predict(edge.double(), sm.transition(gap))
        second = sm.record(values[c:d], observed[c:d], t[c:d], start, reverse)
        joined = torch.cat([second, first] if reverse else [first, second])
        assert torch.equal(joined, whole)


@pytest.mark.parametrize("analysis", [0.0, 2.0])
def test_the_first_guess_never_sees_the_query(analysis):
    rng = np.random.default_rng(3)
    values = torch.from_numpy(rng.standard_normal((1, 3, 8, 8)))   # a window, F = W·C = 3
    observed = torch.from_numpy(rng.random((1, 3, 8, 8)) < 0.7)
    sm = Smoother(SmootherConfig(time_scale=2.0, nugget=0.01, radius=2, inflation=2.0,
                                 correlation=(0.9, 0.8, 0.6), analysis_scale=analysis))
    prior = sm.prior((1, 1, 8, 8), torch.device("cpu"))
    messages = (prior, prior, torch.ones(1, 2, dtype=torch.float64))
    context, query = PixelPartition(ratio=0.5).sample(observed, torch.Generator().manual_seed(0))
    guess = first_guess(sm, values, context, messages, window=3)
    poisoned = torch.where(query, torch.full_like(values, 1e6), values)
    assert torch.equal(first_guess(sm, poisoned, context, messages, window=3), guess)
    moved = torch.where(context, values + 1, values)
    assert not torch.equal(first_guess(sm, moved, context, messages, window=3), guess)
    assert torch.isfinite(guess).all() and guess[:, 3:].min() >= 0    # the std part


def test_a_query_cell_never_reaches_a_training_window_through_the_other_frames():
    # The frames outside a window come in through messages built from every observation; the
    # window's own frames only through its context. So poisoning one frame's values changes
    # the first guess of windows that do not contain it, never of a window that does.
    values = smooth_field(20, 8, 8, seed=4)[:, None]
    observed = np.random.default_rng(4).random(values.shape) < 0.6
    sm = Smoother(SmootherConfig(time_scale=3.0, nugget=0.01))
    times = np.arange(20.0)

    def guess(v: np.ndarray, start: int) -> torch.Tensor:
        frames = TrainingFrames(InMemory(np.where(observed, v, 0), observed),
                                np.ones((8, 8), bool))
        w = Windows(frames, 3, 64, torch.device("cpu"), smoother=sm, times=times)
        batch = w.batch(torch.tensor([start]), torch.Generator())
        context = torch.zeros_like(batch.observed)
        return first_guess(sm, batch.values, context, batch.messages, 3)

    poisoned = values.copy()
    poisoned[10] += 100.0                      # frame 10, inside the window starting at 9
    assert torch.equal(guess(poisoned, 9), guess(values, 9))
    assert not torch.equal(guess(poisoned, 3), guess(values, 3))


@pytest.mark.parametrize("memory", [math.inf, 0.0])
def test_states_kept_for_some_frames_equal_those_of_the_whole_record(memory):
    # memory 0: the states go to scratch files and come back through them
    values = smooth_field(150, 6, 7, seed=8)[:, None]
    observed = np.random.default_rng(8).random(values.shape) < 0.4
    v, o = torch.from_numpy(np.where(observed, values, 0)), torch.from_numpy(observed)
    sm = Smoother(SmootherConfig(time_scale=5.0, nugget=0.01, radius=1,
                                 correlation=(0.8,)))
    times = torch.arange(150, dtype=torch.float64)
    whole = record_states(sm, v, o, times)
    keep = np.zeros(150, bool)
    keep[[0, 3, 63, 64, 65, 100, 149]] = True
    some = filter_record(sm, lambda a, b: (v[a:b].numpy(), o[a:b].numpy()), 150, times,
                         memory, keep=keep)
    frames = torch.from_numpy(np.flatnonzero(keep))
    assert torch.equal(some.forward[some.index(frames)], whole.forward[frames])
    assert torch.equal(some.backward[some.index(frames)], whole.backward[frames])
    with pytest.raises(ValueError, match="not kept"):
        some.index(torch.tensor([5]))


def test_every_observed_cell_of_a_window_keeps_a_positive_query_probability():
    values = smooth_field(12, 8, 8, seed=5)[:, None]
    observed = np.random.default_rng(5).random(values.shape) < 0.5
    sm = Smoother(SmootherConfig(time_scale=3.0))
    frames = TrainingFrames(InMemory(np.where(observed, values, 0), observed),
                            np.ones((8, 8), bool))
    w = Windows(frames, 3, 64, torch.device("cpu"), smoother=sm, times=np.arange(12.0))
    batch = w.batch(torch.arange(w.count), torch.Generator())
    p = query_probability(PixelPartition(ratio=0.8), batch.observed, 200,
                          torch.Generator().manual_seed(0))
    assert (p[batch.observed] > 0).all() and (p[~batch.observed] == 0).all()


def test_frames_without_observations_fall_back_towards_the_prior():
    times = np.arange(60.0)
    observed = np.zeros((60, 1, 1, 1), bool)
    observed[:10] = True                      # then 50 empty frames
    values = np.where(observed, 1.0, 0.0)
    sm = Smoother(SmootherConfig(time_scale=2.0, nugget=0.01))
    mean, var = sm.smooth(torch.from_numpy(values), torch.from_numpy(observed),
                          torch.from_numpy(times))
    assert torch.isfinite(mean).all()
    assert float(mean[9]) > 0.9 and abs(float(mean[-1])) < 1e-3
    assert float(var[-1]) > 0.999 and float(var[9]) < 0.02


def test_the_neighbour_kernel_weighs_by_distance():
    config = SmootherConfig(time_scale=1.0, nugget=0.01, radius=2, inflation=2.0,
                            correlation=(0.9, 0.8, 0.5))
    k = kernel(config)
    assert distances(2) == [0.0, 1.0, math.sqrt(2.0), 2.0]
    assert k[2, 2] == pytest.approx(100.0)
    assert k[2, 3] == pytest.approx(1 / (2 * (2 * 0.1 + 0.01)))
    assert k[2, 3] > k[3, 3] > k[2, 4] > 0 and k[0, 0] == 0      # corners beyond the radius


@pytest.mark.parametrize("slow", [True, False])
def test_the_fitted_time_scale_follows_the_data(slow):
    rng = np.random.default_rng(6)
    frames = 120
    if slow:
        values = smooth_field(frames, 12, 12, seed=6)[:, None]       # varies over ~60 frames
    else:
        values = rng.standard_normal((frames, 1, 12, 12)).astype(np.float32)
    observed = rng.random(values.shape) < 0.5
    record = InMemory(np.where(observed, values, 0), observed)
    config = fit_smoother(record.read, frames, np.ones((12, 12), bool),
                          np.arange(frames, dtype=float), "days")
    assert config.time_unit == "days" and config.step == 1.0
    assert (config.time_scale > 10) if slow else (config.time_scale < 1)


def test_with_frames_independent_in_time_the_smoother_is_each_frames_kriging():
    from ctxq_cli.kriging import krige

    rng = np.random.default_rng(7)
    values = torch.from_numpy(smooth_field(4, 16, 16, seed=7)[:, None]).double()
    observed = torch.from_numpy(rng.random(values.shape) < 0.6)
    config = SmootherConfig(time_scale=1e-6, nugget=0.01, spatial_scale=3.0, inflation=1.0)
    mean, var = Smoother(config).smooth(values * observed, observed,
                                        torch.arange(4, dtype=torch.float64))
    # frame by frame as the smoother does: batching changes the solves' last bits
    kriged = torch.stack([krige(values[i] * observed[i], observed[i], 3.0, 0.01,
                                dtype=KRIGING_DTYPE) for i in range(4)]).double()
    hidden = ~observed
    torch.testing.assert_close(mean[hidden], kriged[hidden], atol=1e-6, rtol=1e-6)
    assert (var[hidden] > 0).all() and (var[hidden] < 1).all()


def test_independent_smooth_frames_are_fitted_with_kriging():
    rng = np.random.default_rng(8)
    frames = 60
    values = np.concatenate([smooth_field(1, 24, 24, seed=s) for s in range(frames)])[:, None]
    observed = rng.random(values.shape) < 0.5
    record = InMemory(np.where(observed, values, 0), observed)
    config = fit_smoother(record.read, frames, np.ones((24, 24), bool),
                          np.arange(frames, dtype=float), "days")
    assert config.spatial_scale > 0 and config.time_scale < 1


def test_with_frames_independent_in_time_the_analysis_is_each_frames_kriging():
    from ctxq_cli.kriging import krige

    rng = np.random.default_rng(9)
    values = torch.from_numpy(smooth_field(3, 16, 16, seed=9)[:, None]).double()
    observed = torch.from_numpy(rng.random(values.shape) < 0.4)
    config = SmootherConfig(time_scale=1e-6, analysis_scale=3.0, analysis_nugget=0.01)
    times = torch.arange(3, dtype=torch.float64)
    mean, var = Smoother(config).smooth(values * observed, observed, times)
    # the other frames predict nothing: the prediction is the prior, N(0, 1)
    kriged = torch.stack([krige(values[i] * observed[i], observed[i], 3.0, 0.01,
                                dtype=KRIGING_DTYPE) for i in range(3)]).double()
    torch.testing.assert_close(mean, kriged, atol=1e-6, rtol=1e-6)
    hidden = ~observed
    assert (var[hidden] > var[observed].max()).all()


def test_the_analysis_needs_the_frames_it_corrects():
    config = SmootherConfig(time_scale=2.0, analysis_scale=3.0)
    values = torch.zeros(4, 1, 5, 5, dtype=torch.float64)
    observed = torch.ones(4, 1, 5, 5, dtype=torch.bool)
    states = record_states(Smoother(config), values, observed, torch.arange(4.0).double())
    with pytest.raises(ValueError, match="analysis needs"):
        posterior(Smoother(config), states)


def test_a_slow_field_with_weather_of_its_own_each_frame_is_fitted_with_the_analysis():
    # a fixed pattern plus an independent smooth field each frame: time knows the pattern,
    # only the frame's own observations know its weather
    rng = np.random.default_rng(10)
    frames = 40
    pattern = smooth_field(1, 24, 24, seed=100)
    weather = np.concatenate([smooth_field(1, 24, 24, seed=s) for s in range(frames)])
    values = (pattern + 0.7 * weather)[:, None]
    observed = rng.random(values.shape) < 0.3
    record = InMemory(np.where(observed, values, 0), observed)
    times = np.arange(frames, dtype=float)
    config = fit_smoother(record.read, frames, np.ones((24, 24), bool), times, "days")
    assert config.analysis_scale > 0

    def error(c: SmootherConfig) -> float:
        mean, _ = Smoother(c).smooth(*(torch.from_numpy(x) for x in record.read(0, frames)),
                                     torch.from_numpy(times))
        return float(np.sqrt(np.mean((mean.numpy() - values)[~observed] ** 2)))

    assert error(config) < 0.8 * error(replace(config, analysis_scale=0.0))


def test_the_analysis_stays_bounded_over_a_region_never_observed():
    # a fixed pattern that time knows well, weather of each frame's own, and a block of cells
    # that no frame observes (a region always under cloud): there the analysis may only
    # spread the observed cells' departures at their own scale, not blow them up
    pattern = smooth_field(1, 16, 16, seed=3)
    weather = 0.5 * smooth_field(40, 16, 16, seed=4)
    values = torch.from_numpy((pattern + weather)[:, None]).double()
    observed = torch.ones(values.shape, dtype=torch.bool)
    observed[..., 5:11, 5:11] = False
    config = SmootherConfig(time_scale=1000.0, nugget=0.01, analysis_scale=3.0,
                            analysis_nugget=0.1)
    mean, _ = Smoother(config).smooth(values * observed, observed,
                                      torch.arange(40, dtype=torch.float64))
    block = ~observed
    assert mean[observed].abs().max() < 2 * values.abs().max()
    assert mean[block].abs().max() < values.abs().max()
