"""Scores of an estimate against a reference on selected cells (pure numpy).

For estimate ``e``, truth ``u`` and scored cells ``S``::

    RMSE  = sqrt(mean_S (e − u)²)          MAE = mean_S |e − u|        bias = mean_S (e − u)
    VRMSE = mean_{t,c} sqrt( mean_{S_tc} (e − u)² / Var_{D_tc}(u) )

where the variance in VRMSE is the spatial variance of the truth over the cells ``D_tc`` of
frame t and variable c where it is known inside the domain, so a score of 1 means "as bad as
predicting the frame mean".
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
          valid: np.ndarray) -> float:
    """Per-frame, per-variable RMSE over the truth's spatial std, averaged.

    Arrays are (T, ..., H, W); ``valid`` (broadcastable) marks where the truth is known inside
    the domain, over which the variance is taken. Frames with no scored cell or a constant
    truth are skipped.
    """
    scores_ = []
    lead = truth.shape[:-2]
    val = np.broadcast_to(valid, truth.shape)
    for idx in np.ndindex(*lead):
        sel, inside = cells[idx], val[idx]
        if not sel.any() or inside.sum() < 2:
            continue
        var = float(np.var(truth[idx][inside].astype(np.float64)))
        if var <= 0:
            continue
        mse = float(np.mean(((estimate[idx] - truth[idx])[sel]).astype(np.float64) ** 2))
        scores_.append(np.sqrt(mse / var))
    return float(np.mean(scores_)) if scores_ else float("nan")


def scores(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray,
           valid: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, bias and VRMSE on ``cells``, with the number of cells scored."""
    return {"rmse": rmse(estimate, truth, cells), "mae": mae(estimate, truth, cells),
            "bias": bias(estimate, truth, cells), "vrmse": vrmse(estimate, truth, cells, valid),
            "cells": int(cells.sum())}
