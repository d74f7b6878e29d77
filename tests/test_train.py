"""Training: the loss falls, the checkpoint rebuilds the same model from the file alone."""

import json
import math

import numpy as np
import pytest
import torch

from ctxq_cli import api, checkpoint, resume
from ctxq_cli.data import Normalization
from ctxq_cli.errors import CtxqError, Interrupted
from ctxq_cli.frames import CachedFrames, InMemory
from ctxq_cli.loop import LoopOptions, RunControl, optimise
from ctxq_cli.model import DenoiserModel
from ctxq_cli.train import MaskPriorOptions, TrainOptions, train_denoiser, train_mask_prior
from ctxq_cli.withhold import calibration_cells

from conftest import smooth_field, write_nc

TINY = dict(channels=(8, 16), batch_size=4, val_every=10, window=3)


def _data(seed=0):
    values = smooth_field(40, 16, 16, seed=seed)[:, None]
    observed = np.random.default_rng(seed).random(values.shape) < 0.5
    return np.where(observed, values, 0), observed, np.ones((16, 16), bool)


def test_training_reduces_the_query_loss(tmp_path):
    values, observed, domain = _data()
    log_path = tmp_path / "log.jsonl"
    with open(log_path, "w") as f:
        model = train_denoiser(InMemory(values, observed), domain, ["sst"],
                               TrainOptions(steps=150, lr=3e-3, temporal="none", patience=0,
                                            **TINY), torch.device("cpu"), f, progress=False)
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert len(records) == 150
    first = np.mean([r["loss"] for r in records[:15]])
    last = np.mean([r["loss"] for r in records[-15:]])
    assert last < 0.7 * first
    assert model.training["val_loss"] is not None
    assert model.partition.name == "pixel"  # i.i.d. masks → pixel partition


def test_checkpoint_round_trip(tmp_path):
    values, observed, domain = _data()
    domain[:, :2] = False
    model = train_denoiser(InMemory(values, observed), domain, ["sst"],
                           TrainOptions(steps=3, partition="empirical", **TINY),
                           torch.device("cpu"), progress=False)
    path = tmp_path / "d.safetensors"
    model.save(path)
    back = DenoiserModel.load(path)
    assert json.dumps(back.metadata()) == json.dumps(model.metadata())
    np.testing.assert_array_equal(back.domain, domain)
    assert torch.equal(back.partition.pool, model.partition.pool)
    assert back.smoother == model.smoother is not None
    x = torch.randn(1, 3, 16, 16)
    ctx = torch.rand(1, 3, 16, 16) > 0.5
    dom = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    s = torch.tensor([0.1])
    guess = torch.randn(1, 6, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(back.denoiser(x, s, ctx, dom, None, guess),
                                   model.denoiser(x, s, ctx, dom, None, guess))


def test_bad_checkpoints_give_one_line(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CtxqError, match="not a readable safetensors"):
        DenoiserModel.load(bad)
    other = tmp_path / "other.safetensors"
    checkpoint.save(other, {"kind": "mask-prior"}, {"w": torch.zeros(1)})
    with pytest.raises(CtxqError, match="mask-prior model, not a denoiser"):
        DenoiserModel.load(other)
    with pytest.raises(CtxqError, match="no such checkpoint"):
        DenoiserModel.load(tmp_path / "absent.safetensors")


def test_a_diverging_loss_stops_training_with_one_line():
    values, observed, domain = _data()
    values = values.copy()
    values[0, 0, 0, 0] = np.inf   # one poisoned observed value ruins the normalisation
    with pytest.raises(CtxqError, match="training diverged: the loss is .* at step 1"):
        train_denoiser(InMemory(values, observed | True), domain, ["sst"],
                       TrainOptions(steps=3, **TINY), torch.device("cpu"), progress=False)


def _stop_after(n):
    """A should_stop callback that turns true once the loop has asked n times."""
    calls = iter(range(10**9))
    return lambda: next(calls) >= n


def test_a_record_streamed_from_its_file_trains_the_same_weights_as_one_in_memory(tmp_path):
    # A budget smaller than one block of frames: every window is read again from the file and
    # the smoother's states go to scratch files; the calibration cells are held out.
    values, observed, domain = _data()
    path = write_nc(tmp_path / "sst.nc", values[:, 0], observed=observed[:, 0])
    opts = TrainOptions(steps=4, **{**TINY, "val_every": 2})
    cpu = torch.device("cpu")
    in_memory = train_denoiser(InMemory(values, observed), domain, ["sst"], opts, cpu,
                               progress=False, times=np.arange(40.0), time_unit="days")
    rec = api.read_training_record(path, memory_gb=1e-5)
    streamed = api.train_field(rec, opts, cpu)
    assert rec.source.reads > rec.frames / rec.source.block and rec.source._held == 0
    assert in_memory.smoother is not None and streamed.smoother == in_memory.smoother
    assert streamed.training["calibration_holdout"] == in_memory.training["calibration_holdout"]
    assert streamed.normalization == in_memory.normalization
    for name, tensor in in_memory.denoiser.state_dict().items():
        assert torch.equal(tensor, streamed.denoiser.state_dict()[name]), name


def test_a_mask_prior_streamed_through_a_small_cache_learns_the_same_weights():
    values, observed, domain = _data()
    opts = MaskPriorOptions(steps=3, channels=(8, 16), batch_size=4, val_every=2)
    cpu = torch.device("cpu")
    whole = train_mask_prior(InMemory(values, observed), domain, opts, cpu, progress=False)
    streamed = train_mask_prior(CachedFrames(InMemory(values, observed), 5e3), domain, opts, cpu,
                                progress=False)
    for name, tensor in whole.network.state_dict().items():
        assert torch.equal(tensor, streamed.network.state_dict()[name]), name
    assert streamed.fidelity == whole.fidelity


@pytest.mark.slow
@pytest.mark.parametrize("budget", [math.inf, 1e4])
def test_an_interrupted_run_resumes_bit_for_bit(tmp_path, budget):
    values, observed, domain = _data()
    # validations at steps 3 and 6 come before the stop: the best weights survive it
    opts = TrainOptions(steps=12, partition="empirical", checkpoint_every=5,
                        **{**TINY, "val_every": 3})
    cpu = torch.device("cpu")
    straight = train_denoiser(InMemory(values, observed), domain, ["sst"], opts, cpu,
                              progress=False)

    def source():   # with a budget, the interrupted and resumed runs read frames on demand
        record = InMemory(values, observed)
        return record if budget == math.inf else CachedFrames(record, budget)

    state = resume.state_path(tmp_path / "d.safetensors")
    log_path = tmp_path / "log.jsonl"
    with open(log_path, "w") as f, pytest.raises(Interrupted, match="interrupted at step 7 of 12"):
        train_denoiser(source(), domain, ["sst"], opts, cpu, f, progress=False,
                       control=RunControl(state, should_stop=_stop_after(7)), memory=budget)
    assert state.exists() and resume.previous_path(state).exists()  # step 7 and step 5
    with open(log_path, "a") as f:
        resumed = train_denoiser(source(), domain, ["sst"], opts, cpu, f,
                                 progress=False, control=RunControl(state, resume=True),
                                 memory=budget)
    for name, tensor in straight.denoiser.state_dict().items():
        assert torch.equal(tensor, resumed.denoiser.state_dict()[name]), name
    assert resumed.training["best_step"] == straight.training["best_step"]
    steps = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert steps == list(range(1, 13))  # the loss curve goes on where it stopped
    assert resumed.step == 12


@pytest.mark.slow
def test_resume_refuses_other_options_or_data_and_survives_a_torn_state(tmp_path):
    values, observed, domain = _data()
    opts = TrainOptions(steps=6, checkpoint_every=2, **TINY)
    cpu = torch.device("cpu")
    state = resume.state_path(tmp_path / "d.safetensors")
    with pytest.raises(Interrupted):
        train_denoiser(InMemory(values, observed), domain, ["sst"], opts, cpu, progress=False,
                       control=RunControl(state, should_stop=_stop_after(5)))
    with pytest.raises(CtxqError, match="option lr was"):
        train_denoiser(InMemory(values, observed), domain, ["sst"],
                       TrainOptions(**{**vars(opts), "lr": 1.0}),
                       cpu, progress=False, control=RunControl(state, resume=True))
    with pytest.raises(CtxqError, match="the data differ"):
        train_denoiser(InMemory(values * 2, observed), domain, ["sst"], opts, cpu, progress=False,
                       control=RunControl(state, resume=True))
    state.write_bytes(state.read_bytes()[:100])   # a crash mid-copy: the previous state is used
    model = train_denoiser(InMemory(values, observed), domain, ["sst"], opts, cpu, progress=False,
                           control=RunControl(state, resume=True))
    assert model.step == 6


def test_divergence_names_the_step_and_keeps_the_last_good_state(tmp_path):
    values, observed, domain = _data()
    state = resume.state_path(tmp_path / "d.safetensors")
    calls = iter(range(100))

    def poisoned_after_three(net, g):
        poison = float("nan") if next(calls) >= 3 else 1.0
        return net.weight.sum() ** 2 * poison

    net = torch.nn.Linear(2, 2)
    with pytest.raises(CtxqError, match=r"nan at step 4; the resumable state of step 2 is kept"):
        optimise(net, poisoned_after_three, LoopOptions(steps=10, checkpoint_every=2),
                 torch.Generator().manual_seed(0), None, {}, RunControl(state), progress=False)
    assert resume.load_state(state).step == 2


def test_training_keeps_the_best_validation_weights_and_stops_early():
    net = torch.nn.Linear(2, 1)

    def loss_fn(n, g):
        return ((n(torch.ones(1, 2)) - 1.0) ** 2).mean()

    losses = iter([5.0, 3.0, 4.0, 6.0, 7.0, 8.0, 9.0])
    seen = {}

    def validate(ema):
        value = next(losses)
        seen[value] = {k: t.clone() for k, t in ema.state_dict().items()}
        return {"val_loss": value, "other": -value}

    ema, summary = optimise(net, loss_fn, LoopOptions(steps=100, val_every=2, patience=3,
                                                      lr=0.05),
                            torch.Generator().manual_seed(0), validate, {}, RunControl(),
                            progress=False)
    # validations before training, then at steps 2 (best), 4, 6, 8: three without improvement
    # stop the run
    assert summary["stopped_early"] and summary["steps_done"] == 8
    assert summary["best_step"] == 2 and summary["best_val_loss"] == 3.0
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensor, seen[3.0][name]), name


def test_training_that_only_hurts_keeps_the_untrained_weights():
    net = torch.nn.Linear(2, 1)
    start = {k: t.clone() for k, t in net.state_dict().items()}
    losses = iter(float(v) for v in range(1, 100))      # every validation worse than the last
    ema, summary = optimise(net, lambda n, g: (n(torch.ones(1, 2)) ** 2).mean(),
                            LoopOptions(steps=20, val_every=2, patience=0, lr=0.05),
                            torch.Generator().manual_seed(0),
                            lambda ema: {"val_loss": next(losses)}, {}, RunControl(),
                            progress=False)
    assert summary["steps_done"] == 20 and summary["best_step"] == 0
    for name, tensor in ema.state_dict().items():
        assert torch.equal(tensor, start[name]), name


def test_no_patience_trains_to_the_end_and_keeps_the_best():
    values, observed, domain = _data()
    model = train_denoiser(InMemory(values, observed), domain, ["sst"],
                           TrainOptions(steps=30, patience=0, **TINY), torch.device("cpu"),
                           progress=False)
    summary = model.training
    assert summary["steps_done"] == 30 and not summary["stopped_early"]
    # the calibration cells are withheld here, so the fill error on them selects the weights
    assert summary["selected_by"] == "withheld_rmse" and summary["val_loss"] is not None
    assert summary["best_step"] in (0, 10, 20, 30)
    assert summary["best_withheld_rmse"] <= summary["withheld_rmse"]


def test_the_cells_impute_calibrates_on_never_reach_training():
    values, observed, domain = _data()
    frames, hidden = calibration_cells(observed, domain)
    poisoned = values.copy()
    poisoned[frames][hidden] = 1e6
    # the poison would dominate statistics fitted on every observation...
    assert Normalization.fit(poisoned, observed, per_cell=True).std[0] > 1e3
    model = train_denoiser(InMemory(poisoned, observed), domain, ["sst"],
                           TrainOptions(steps=2, **TINY),
                           torch.device("cpu"), progress=False)
    # ...but training never saw it
    assert model.normalization.std[0] < 10
    held = model.training["calibration_holdout"]
    assert held["cells"] == hidden.sum() and held["frames"] == [frames.start, frames.stop]
    everything = train_denoiser(InMemory(poisoned, observed), domain, ["sst"],
                                TrainOptions(steps=2, calibration_holdout=False, **TINY),
                                torch.device("cpu"), progress=False)
    assert everything.normalization.std[0] > 1e3               # asked for: all observations
    assert "calibration_holdout" not in everything.training
