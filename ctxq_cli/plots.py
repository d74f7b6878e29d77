"""Figures of an evaluation: one frame for every method, and a calibration (reliability) plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli.safe_output import atomic_path


def _field_style(values: np.ndarray) -> dict[str, Any]:
    """Diverging colours centred on 0 for anomalies, sequential ones otherwise."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return {"cmap": "viridis"}
    lo, hi = np.percentile(finite, [1, 99])
    if lo < 0 < hi and abs(finite.mean()) < finite.std():
        bound = max(-lo, hi)
        return {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}
    return {"cmap": "viridis", "vmin": lo, "vmax": hi}


def evaluation_figure(path: Path, case: Any, report: dict[str, Any], frame: int | None,
                      variable: int = 0) -> None:
    """Write a PNG: observations, reference, ctxq mean, spread and error, baselines, calibration.

    ``case`` is an :class:`ctxq_cli.evaluation.Case`; ``frame`` defaults to the frame with the
    most scored cells.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    c = variable
    name = case.variables[c]
    scored = case.cells[:, c].sum(axis=(1, 2))
    t = int(np.argmax(scored)) if frame is None else min(frame, len(scored) - 1)
    outside = ~case.domain
    obs = np.where(case.observed[t, c], case.observed_values[t, c], np.nan)
    ref = np.where(case.valid[t, c], case.reference[t, c], np.nan)
    panels = [("observations given", obs, _field_style(ref)),
              ("reference", ref, _field_style(ref))]
    ctxq = case.estimates[0]
    error_bound = None
    for est in case.estimates:
        mean = np.where(outside, np.nan, est.mean[t, c])
        panels.append((f"{est.method} (RMSE {report[name][est.method]['rmse']:.3g})", mean,
                       _field_style(ref)))
        if est is ctxq:
            if est.std is not None:
                spread = np.where(outside, np.nan, est.std[t, c])
                panels.append(("ctxq spread (std)", spread, {"cmap": "magma", "vmin": 0}))
            err = np.where(case.cells[t, c], est.mean[t, c] - case.reference[t, c], np.nan)
            finite = np.abs(err[np.isfinite(err)])
            error_bound = float(np.percentile(finite, 99)) if finite.size else 1.0
            panels.append(("ctxq error on scored cells", err,
                           {"cmap": "RdBu_r", "vmin": -error_bound, "vmax": error_bound}))
    n = len(panels) + 1
    cols = min(4, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.2 * rows), squeeze=False)
    for ax, (title, image, style) in zip(axes.flat, panels):
        shown = ax.imshow(image, origin="lower", interpolation="nearest", **style)
        ax.set_title(title, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(shown, ax=ax, shrink=0.8)
    ax = axes.flat[len(panels)]
    ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for method, scores in report[name].items():
        if "reliability" in scores:
            rel = scores["reliability"]
            ax.plot(rel["nominal"], rel["observed"], marker="o", label=method)
    ax.set_xlabel("nominal central interval")
    ax.set_ylabel("observed coverage")
    ax.set_title("calibration", fontsize=9)
    ax.legend(fontsize=8)
    for extra in list(axes.flat)[len(panels) + 1:]:
        extra.axis("off")
    fig.suptitle(f"{name}, frame {t}: {int(scored[t])} scored cells", fontsize=10)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
