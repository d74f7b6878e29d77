"""Selection of a denoiser's weights by the fill error on withheld observations."""

import math

import numpy as np
import pytest
import torch

from ctxq_cli import selection
from ctxq_cli.data import Holdout, Normalization, TrainingFrames, Windows
from ctxq_cli.diffusion import Denoiser
from ctxq_cli.errors import OptionError
from ctxq_cli.frames import InMemory
from ctxq_cli.partition import PixelPartition
from ctxq_cli.selection import WithheldFill
from ctxq_cli.temporal import Smoother, fit_smoother
from ctxq_cli.train import TrainOptions, train_denoiser
from ctxq_cli.unet import UNetConfig
from ctxq_cli.withhold import calibration_cells

from conftest import smooth_field

TINY = dict(channels=(8, 16), batch_size=4, val_every=10, window=3)
CPU = torch.device("cpu")


def _record(seed=0):
    values = smooth_field(60, 16, 16, seed=seed)[:, None]
    observed = np.random.default_rng(seed).random(values.shape) < 0.5
    return np.where(observed, values, 0).astype(np.float32), observed, np.ones((16, 16), bool)


def _withheld_fill(values, observed, domain):
    """A WithheldFill built as training builds it, and a denoiser whose correction is not 0."""
    holdout = Holdout(*calibration_cells(observed, domain))
    source = InMemory(values, observed)
    training = observed.copy()
    training[holdout.frames] &= ~holdout.hidden
    norm = Normalization.fit(values, training, per_cell=True)    # as training fits it
    frames = TrainingFrames(source, domain, 4, norm, holdout)
    times = np.arange(len(values), dtype=np.float64)
    config = fit_smoother(frames.normalised, len(values), domain, times, "frames")
    windows = Windows(frames, 3, 128, CPU, smoother=Smoother(config), times=times)
    partition = PixelPartition(ratio=0.8)
    fill = WithheldFill(windows, TrainingFrames(source, domain, 4, norm), holdout, partition,
                        0.002, seed=0)
    torch.manual_seed(0)
    denoiser = Denoiser(UNetConfig(Denoiser.input_channels(3, True), 3, (8, 16), patch=2),
                        first_guess=True).eval()
    return fill, denoiser, holdout


@pytest.fixture(scope="module")
def built():
    """A record and its WithheldFill, built once for the tests that only read them."""
    values, observed, domain = _record()
    return (values, observed, domain), _withheld_fill(values, observed, domain)


def test_the_withheld_values_reach_no_input(built):
    (values, observed, domain), (fill, denoiser, holdout) = built
    poisoned = values.copy()
    poisoned[holdout.frames][holdout.hidden] += 100.0
    other, _, _ = _withheld_fill(poisoned, observed, domain)
    # what the network and the first guess make of the cells does not depend on their values...
    assert torch.equal(fill.network(denoiser), other.network(denoiser))
    assert torch.equal(fill.first, other.first)
    # ...which are only the targets
    assert not torch.equal(fill.targets, other.targets)
    assert other(denoiser) > fill(denoiser) + 10


def test_the_score_is_the_fill_error_on_the_withheld_cells(built):
    _, (fill, denoiser, holdout) = built
    assert len(fill.targets) == holdout.hidden.sum()
    # the network's correction starts at zero: the fill is the first guess
    untrained = Denoiser(UNetConfig(Denoiser.input_channels(3, True), 3, (8, 16), patch=2),
                         first_guess=True).eval()
    first = math.sqrt(float(((fill.first.double() - fill.targets) ** 2).mean()))
    assert fill(untrained) == pytest.approx(first, rel=1e-5)
    # a centre that takes the fitted share of the correction is never worse than the guess
    assert fill(denoiser) <= first + 1e-9
    # the same draws at every call: two scores of the same weights are equal
    assert fill(denoiser) == fill(denoiser)


def test_inputs_drawn_again_equal_the_kept_ones(built, monkeypatch):
    (values, observed, domain), (fill, denoiser, _) = built
    kept = fill(denoiser)
    assert fill.drawn and fill.kept > 0
    monkeypatch.setattr(selection, "KEPT_BYTES", 0)    # nothing kept: every score redraws
    again, _, _ = _withheld_fill(values, observed, domain)
    assert again(denoiser) == kept and not again.drawn
    assert again(denoiser) == kept


def test_training_selects_by_the_withheld_cells_unless_told_otherwise():
    values, observed, domain = _record()
    by_default = train_denoiser(InMemory(values, observed), domain, ["sst"],
                                TrainOptions(steps=10, **TINY), CPU, progress=False).training
    assert by_default["selected_by"] == "withheld_rmse"
    assert by_default["best_withheld_rmse"] <= by_default["withheld_rmse"]
    told = train_denoiser(InMemory(values, observed), domain, ["sst"],
                          TrainOptions(steps=10, select="validation", **TINY), CPU,
                          progress=False).training
    assert told["selected_by"] == "val_loss" and "withheld_rmse" not in told


def test_withheld_selection_needs_the_withheld_cells():
    with pytest.raises(OptionError, match="select"):
        TrainOptions(select="withheld", calibration_holdout=False)
