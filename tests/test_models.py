"""Shipped checkpoints load with this version, have a model card and fill a field."""

from pathlib import Path

import numpy as np
import pytest

from ctxq_cli.impute import impute_field
from ctxq_cli.model import DenoiserModel

MODELS = sorted((Path(__file__).resolve().parent.parent / "models").glob("*.safetensors"))


def test_models_are_shipped():
    assert MODELS, "no checkpoint in models/"


@pytest.mark.parametrize("path", MODELS, ids=lambda p: p.name)
def test_shipped_model_loads_and_imputes(path):
    assert path.with_suffix(".md").is_file(), f"{path.name} has no model card"
    model = DenoiserModel.load(path)
    h, w = model.grid
    rng = np.random.default_rng(0)
    values = rng.normal(size=(2, len(model.variables), h, w)).astype(np.float32)
    observed = rng.random(values.shape) < 0.5
    result = impute_field(model, np.where(observed, values, 0), observed, model.domain,
                          ensemble=2, progress=False)
    inside = np.broadcast_to(model.domain, result.mean.shape)
    assert np.isfinite(result.mean[inside]).all()
