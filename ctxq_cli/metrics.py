"""Scores of an estimate against a reference on selected cells (pure numpy).

For estimate ``e``, truth ``u`` and scored cells ``S``::

    RMSE  = sqrt(mean_S (e − u)²)          MAE = mean_S |e − u|        bias = mean_S (e − u)
    VRMSE = mean_t sqrt( mean_{S_t} (e − u)² / Var_{D_t}(u) )

where the variance in VRMSE is the spatial variance of the truth over the frame's domain
``D_t``, so a score of 1 means "as bad as predicting the frame mean".
"""

from __future__ import annotations

import numpy as np


def rmse(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray) -> float:
    """Root-mean-square error on ``cells``."""
    d = (estimate - truth)[cells].astype(np.float64)
    return float(np.sqrt(np.mean(d ** 2))) if d.size else float("nan")


def mae(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray) -> float:
    """Mean absolute error on ``cells``."""
    d = (estimate - truth)[cells].astype(np.float64)
    return float(np.mean(np.abs(d))) if d.size else float("nan")


def bias(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray) -> float:
    """Mean error (estimate − truth) on ``cells``."""
    d = (estimate - truth)[cells].astype(np.float64)
    return float(np.mean(d)) if d.size else float("nan")


def vrmse(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray,
          domain: np.ndarray) -> float:
    """Per-frame RMSE over the truth's spatial standard deviation, averaged over frames.

    Arrays are (T, ..., H, W); ``domain`` broadcasts to them. Frames with no scored cell or
    a constant truth are skipped.
    """
    scores = []
    dom = np.broadcast_to(domain, truth.shape)
    for t in range(truth.shape[0]):
        sel, inside = cells[t], dom[t]
        if not sel.any() or inside.sum() < 2:
            continue
        var = float(np.var(truth[t][inside].astype(np.float64)))
        if var <= 0:
            continue
        mse = float(np.mean(((estimate[t] - truth[t])[sel]).astype(np.float64) ** 2))
        scores.append(np.sqrt(mse / var))
    return float(np.mean(scores)) if scores else float("nan")


def scores(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray,
           domain: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, bias and VRMSE on ``cells``, with the number of cells scored."""
    return {"rmse": rmse(estimate, truth, cells), "mae": mae(estimate, truth, cells),
            "bias": bias(estimate, truth, cells), "vrmse": vrmse(estimate, truth, cells, domain),
            "cells": int(cells.sum())}
