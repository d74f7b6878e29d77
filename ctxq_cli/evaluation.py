"""Side-by-side scores of gap-fillers on the same cells, overall and per frame.

Every method receives the same observations and domain and is scored on the same cells ``S``
against the same reference, with the metrics of :mod:`ctxq_cli.metrics`; probabilistic scores
(CRPS, spread/skill, interval coverage) are added for methods that give members or a spread.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import baselines, metrics
from ctxq_cli.errors import CtxqError
from ctxq_cli.safe_output import atomic_path

log = logging.getLogger(__name__)


@dataclass
class Estimate:
    """One method's filled field (T, C, H, W), with its spread or members when it has them."""

    method: str
    mean: np.ndarray
    std: np.ndarray | None = None
    members: np.ndarray | None = None      # (K, T, C, H, W)
    seconds: float = math.nan


@dataclass
class Case:
    """What every method sees and where it is scored; arrays (T, C, H, W), domain (H, W)."""

    description: str
    variables: list[str]
    observed_values: np.ndarray     # the observations given to every method (0 elsewhere)
    observed: np.ndarray
    domain: np.ndarray
    reference: np.ndarray           # the truth, or the observations before hiding
    cells: np.ndarray               # scored cells
    valid: np.ndarray               # where the reference is known inside the domain
    estimates: list[Estimate]
    times: np.ndarray | None = None   # (T,) the frames' times, for methods that use time


def _dineof(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, seed: int,
            times: np.ndarray | None) -> Estimate:
    """DINEOF reconstruction."""
    return Estimate("dineof", baselines.dineof(values, observed, domain, seed=seed))


def _linear(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, seed: int,
            times: np.ndarray | None) -> Estimate:
    """Per-frame linear interpolation."""
    return Estimate("linear", baselines.linear(values, observed, domain))


def _oi(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, seed: int,
        times: np.ndarray | None) -> Estimate:
    """Optimal interpolation with a fitted covariance, and its error standard deviation."""
    mean, std = baselines.optimal_interpolation(values, observed, domain, seed=seed,
                                                return_std=True)
    return Estimate("oi", mean, std=std)


def _persistence(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, seed: int,
                 times: np.ndarray | None) -> Estimate:
    """Each cell's nearest observations in time, weighted by the inverse of their age."""
    return Estimate("persistence", baselines.persistence(values, observed, domain, times))


Baseline = Callable[[np.ndarray, np.ndarray, np.ndarray, int, "np.ndarray | None"], Estimate]
BASELINES: dict[str, Baseline] = {"dineof": _dineof, "linear": _linear, "oi": _oi,
                                  "persistence": _persistence}


def parse_baselines(text: str | None) -> list[str]:
    """'dineof,linear' → ['dineof', 'linear'], refusing unknown names."""
    if not text:
        return []
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BASELINES]
    if unknown:
        raise CtxqError(f"--baseline: unknown method '{unknown[0]}' (available: "
                        f"{', '.join(BASELINES)})")
    return names


def run_baseline(name: str, values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                 seed: int = 0, times: np.ndarray | None = None) -> Estimate:
    """Fill with a named baseline, timed; ``times`` (T,) for the methods that use time."""
    start = time.perf_counter()
    estimate = BASELINES[name](values, observed, domain, seed, times)
    estimate.seconds = time.perf_counter() - start
    log.info("%s: %.1f s", name, estimate.seconds)
    return estimate


def evaluate(case: Case, baseline_names: list[str], seed: int = 0) -> dict[str, Any]:
    """Run the baselines on the case's observations and score every method on its cells."""
    for name in baseline_names:
        case.estimates.append(run_baseline(name, case.observed_values, case.observed,
                                           case.domain, seed, case.times))
    return score(case.estimates, case.reference, case.cells, case.valid, case.variables)


def _scores(estimate: Estimate, truth: np.ndarray, cells: np.ndarray, valid: np.ndarray,
            index: tuple) -> dict[str, float]:
    """All metrics of one estimate on the cells selected by ``index`` (a (t, c) slice)."""
    members = None if estimate.members is None else estimate.members[(slice(None), *index)]
    std = None if estimate.std is None else estimate.std[index]
    return metrics.scores(estimate.mean[index], truth[index], cells[index], valid[index],
                          members=members, std=std)


def score(estimates: list[Estimate], truth: np.ndarray, cells: np.ndarray, valid: np.ndarray,
          variables: list[str]) -> dict[str, Any]:
    """Scores per variable and method, overall and per frame with scored cells.

    truth, cells, valid: (T, C, H, W); ``cells`` are the scored cells, ``valid`` where the
    truth is known inside the domain (the spatial variance of VRMSE is taken there).
    """
    report: dict[str, Any] = {}
    for c, name in enumerate(variables):
        methods = {}
        frames = [int(t) for t in np.flatnonzero(cells[:, c].any(axis=(1, 2)))]
        for est in estimates:
            overall = _scores(est, truth, cells, valid, (slice(None), c))
            per_frame = [{"frame": t, **_scores(est, truth, cells, valid,
                                                (slice(t, t + 1), c))} for t in frames]
            methods[est.method] = {**overall, "seconds": est.seconds, "frames": per_frame}
            if est.members is not None or est.std is not None:
                nominal, observed = metrics.reliability(
                    truth[:, c], cells[:, c], mean=est.mean[:, c],
                    std=None if est.std is None else est.std[:, c],
                    members=None if est.members is None else est.members[:, :, c])
                methods[est.method]["reliability"] = {"nominal": nominal.tolist(),
                                                      "observed": observed.tolist()}
        report[name] = methods
    return report


def table(report: dict[str, Any]) -> str:
    """The overall scores as a plain-text table, one block per variable."""
    lines = []
    heads = ("RMSE", "MAE", "bias", "VRMSE", "CRPS", "spread/skill", "cov50", "cov90", "time s")
    for name, methods in report.items():
        cells = next(iter(methods.values()))["cells"] if methods else 0
        lines.append(f"{name}: {cells} cells scored")
        lines.append(f"{'method':<10}" + "".join(f"{h:>13}" for h in heads))
        best = min(methods, key=lambda m: _finite(methods[m]["rmse"]))
        for method, r in methods.items():
            values = [r["rmse"], r["mae"], r["bias"], r["vrmse"], r.get("crps"),
                      r.get("spread_skill"), r.get("coverage_50"), r.get("coverage_90"),
                      r["seconds"]]
            mark = "*" if method == best and len(methods) > 1 else ""
            lines.append(f"{method + mark:<10}" + "".join(_cell(v) for v in values))
    return "\n".join(lines)


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write a report atomically, NaN as null."""
    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (float, np.floating)):
            return float(value) if np.isfinite(value) else None
        if isinstance(value, np.integer):
            return int(value)
        return value

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(document), indent=1), encoding="utf-8")


def _finite(x: float) -> float:
    """NaN sorts last."""
    return x if np.isfinite(x) else math.inf


def _cell(value: float | None) -> str:
    """A right-aligned number, or a dash when the method has no such score."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return f"{'-':>13}"
    return f"{value:>13.4g}"
