"""Side-by-side scoring: same cells for every method, probabilistic scores when available."""

import json

import numpy as np
import pytest

from ctxq_cli.errors import CtxqError
from ctxq_cli.evaluation import Estimate, parse_baselines, run_baseline, score, table, write_json

from conftest import smooth_field


def test_every_method_is_scored_on_the_same_cells_overall_and_per_frame(tmp_path):
    centre = smooth_field(4, 12, 12, seed=0)[:, None]
    rng = np.random.default_rng(0)
    truth = centre + rng.normal(scale=0.1, size=centre.shape)     # truth and members drawn
    members = centre[None] + rng.normal(scale=0.1, size=(16, *centre.shape))   # alike
    observed = rng.random(truth.shape) < 0.5
    cells = ~observed
    valid = np.ones(truth.shape, bool)
    estimates = [Estimate("perfect", truth), Estimate("ens", members.mean(axis=0),
                                                      std=members.std(axis=0), members=members),
                 run_baseline("linear", np.where(observed, truth, 0), observed,
                              np.ones((12, 12), bool))]
    report = score(estimates, truth, cells, valid, ["sst"])["sst"]
    assert report["perfect"]["rmse"] == 0 and report["perfect"]["cells"] == cells.sum()
    assert "crps" not in report["linear"] and report["linear"]["rmse"] > 0
    assert 0.7 < report["ens"]["spread_skill"] < 1.3
    assert [f["frame"] for f in report["ens"]["frames"]] == [0, 1, 2, 3]
    per_frame = np.sqrt(np.mean([f["rmse"] ** 2 * f["cells"] for f in report["ens"]["frames"]])
                        / np.mean([f["cells"] for f in report["ens"]["frames"]]))
    assert np.isclose(per_frame, report["ens"]["rmse"])
    rel = report["ens"]["reliability"]
    assert len(rel["nominal"]) == len(rel["observed"])
    text = table({"sst": report})
    assert "perfect*" in text and "linear" in text
    write_json(tmp_path / "r.json", {"scores": {"sst": report}})
    back = json.loads((tmp_path / "r.json").read_text())["scores"]["sst"]
    assert back["ens"]["crps"] == pytest.approx(report["ens"]["crps"])


def test_baseline_names_are_checked():
    assert parse_baselines("dineof, oi") == ["dineof", "oi"]
    assert parse_baselines(None) == []
    with pytest.raises(CtxqError, match="unknown method 'kriging'"):
        parse_baselines("linear,kriging")
