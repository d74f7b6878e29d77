"""Training: the loss falls, the checkpoint rebuilds the same model from the file alone."""

import json

import numpy as np
import pytest
import torch

from ctxq_cli import checkpoint
from ctxq_cli.errors import CtxqError
from ctxq_cli.model import DenoiserModel
from ctxq_cli.train import TrainOptions, train_denoiser

from conftest import smooth_field

TINY = dict(channels=(8, 16), batch_size=4, val_every=10, window=3)


def _data(seed=0):
    values = smooth_field(40, 16, 16, seed=seed)[:, None]
    observed = np.random.default_rng(seed).random(values.shape) < 0.5
    return np.where(observed, values, 0), observed, np.ones((16, 16), bool)


def test_training_reduces_the_query_loss(tmp_path):
    values, observed, domain = _data()
    log_path = tmp_path / "log.jsonl"
    with open(log_path, "w") as f:
        model = train_denoiser(values, observed, domain, ["sst"],
                               TrainOptions(steps=150, lr=3e-3, **TINY), torch.device("cpu"),
                               f, progress=False)
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
    model = train_denoiser(values, observed, domain, ["sst"],
                           TrainOptions(steps=3, partition="empirical", **TINY),
                           torch.device("cpu"), progress=False)
    path = tmp_path / "d.safetensors"
    model.save(path)
    back = DenoiserModel.load(path)
    assert json.dumps(back.metadata()) == json.dumps(model.metadata())
    np.testing.assert_array_equal(back.domain, domain)
    assert torch.equal(back.partition.pool, model.partition.pool)
    x = torch.randn(1, 3, 16, 16)
    ctx = torch.rand(1, 3, 16, 16) > 0.5
    dom = torch.ones(1, 1, 16, 16, dtype=torch.bool)
    s = torch.tensor([0.1])
    with torch.no_grad():
        torch.testing.assert_close(back.denoiser(x, s, ctx, dom), model.denoiser(x, s, ctx, dom))


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
        train_denoiser(values, observed | True, domain, ["sst"],
                       TrainOptions(steps=3, **TINY), torch.device("cpu"), progress=False)
