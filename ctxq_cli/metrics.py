"""Scores of an estimate against a reference on selected cells (numpy, scipy.special).

For estimate ``e``, truth ``u`` and scored cells ``S``::

    RMSE  = sqrt(mean_S (e − u)²)          MAE = mean_S |e − u|        bias = mean_S (e − u)
    VRMSE = mean_{t,c} sqrt( mean_{S_tc} (e − u)² / Var_{D_tc}(u) )

where the variance in VRMSE is the spatial variance of the truth over the cells ``D_tc`` of
frame t and variable c where it is known inside the domain, so a score of 1 means "as bad as
predicting the frame mean".

Probabilistic scores, for a predictive distribution F with members X, X' ~ F and truth y::

    CRPS(F, y) = E|X − y| − ½ E|X − X'|               (mean over S; 0 for a perfect point mass)
    CRPS(N(μ, σ²), y) = σ [ z (2Φ(z) − 1) + 2φ(z) − 1/√π ],   z = (y − μ)/σ
    spread/skill = sqrt(mean_S σ²) / RMSE(μ)          (≈ 1 when calibrated)
    coverage(α) = mean_S 1[ q_{(1−α)/2} ≤ y ≤ q_{(1+α)/2} ]   (≈ α when calibrated)

Every score reduces over the selected cells; ``per_frame`` evaluates any of them frame by frame.

References:
    Gneiting, T. & Raftery, A. E. (2007). Strictly proper scoring rules, prediction, and
    estimation. J. Amer. Statist. Assoc. 102, 359–378.
    Ferro, C. A. T. (2014). Fair scores for ensemble forecasts. Q. J. R. Meteorol. Soc. 140,
    1917–1923.
    Fortin, V. et al. (2014). Why should ensemble spread match the RMSE of the ensemble mean?
    J. Hydrometeorol. 15, 1708–1713.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtr, ndtri

LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


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


def crps_ensemble(members: np.ndarray, truth: np.ndarray, cells: np.ndarray, *,
                  fair: bool = False) -> float:
    """CRPS of an ensemble (K, ...) against ``truth`` (...), averaged over ``cells``.

    By default the CRPS of the members' empirical distribution, ½E|X − X'| averaged over all K²
    pairs; ``fair=True`` averages over the K(K − 1) distinct pairs instead, an unbiased estimate
    of the CRPS of the distribution the members are drawn from, comparable across ensemble
    sizes. Either way a one-member (or all-equal) ensemble scores its MAE.
    """
    x = members[:, cells].astype(np.float64)                         # (K, n)
    y = truth[cells].astype(np.float64)
    k = x.shape[0]
    if y.size == 0 or k == 0:
        return float("nan")
    skill = np.mean(np.abs(x - y), axis=0)
    # Σ_ij |x_i − x_j| = 2 Σ_i (2i − K − 1) x_(i) over the sorted members: O(K log K), no K²
    x.sort(axis=0)
    rank = 2.0 * np.arange(1, k + 1) - k - 1
    pairs = 2.0 * (rank @ x)
    spread = 0.5 * pairs / (k * (k - 1) if fair and k > 1 else k * k)
    return float(np.mean(skill - spread))


def crps_gaussian(mean: np.ndarray, std: np.ndarray, truth: np.ndarray,
                  cells: np.ndarray) -> float:
    """CRPS of N(mean, std²) against ``truth``, averaged over ``cells``; std = 0 gives the MAE."""
    mu = np.broadcast_to(mean, truth.shape)[cells].astype(np.float64)
    sd = np.broadcast_to(std, truth.shape)[cells].astype(np.float64)
    y = truth[cells].astype(np.float64)
    if y.size == 0:
        return float("nan")
    err = y - mu
    pos = sd > 0
    z = np.where(pos, err / np.where(pos, sd, 1.0), 0.0)
    pdf = np.exp(-0.5 * z * z) / np.sqrt(2.0 * np.pi)
    gauss = sd * (z * (2.0 * ndtr(z) - 1.0) + 2.0 * pdf - 1.0 / np.sqrt(np.pi))
    return float(np.mean(np.where(pos, gauss, np.abs(err))))


def spread_skill(mean: np.ndarray, std: np.ndarray, truth: np.ndarray, cells: np.ndarray,
                 members: int | None = None) -> float:
    """Ratio of the RMS ``std`` to the RMSE of ``mean`` on ``cells``: 1 when calibrated.

    ``members`` is the ensemble size K when mean and std come from K members: the error of a
    K-member mean has variance (1 + 1/K)σ², so the spread is multiplied by sqrt((K + 1)/K).
    That makes the ratio exactly 1 in expectation when std is the unbiased (ddof = 1) ensemble
    std and truth and members are exchangeable; with ddof = 0 it is low by sqrt(1 − 1/K²).
    """
    var = np.broadcast_to(std, truth.shape)[cells].astype(np.float64) ** 2
    if var.size == 0:
        return float("nan")
    spread = np.sqrt(np.mean(var))
    if members is not None:
        spread *= np.sqrt((members + 1) / members)
    skill = rmse(np.broadcast_to(mean, truth.shape), truth, cells)
    if skill == 0:
        return float("nan") if spread == 0 else float("inf")
    return float(spread / skill)


def coverage(lower: np.ndarray, upper: np.ndarray, truth: np.ndarray, cells: np.ndarray) -> float:
    """Fraction of ``cells`` where lower ≤ truth ≤ upper."""
    y = truth[cells]
    if y.size == 0:
        return float("nan")
    lo = np.broadcast_to(lower, truth.shape)[cells]
    hi = np.broadcast_to(upper, truth.shape)[cells]
    return float(np.mean((lo <= y) & (y <= hi)))


def central_interval(level: float, members: np.ndarray | None = None,
                     mean: np.ndarray | None = None,
                     std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Bounds of the central interval holding probability ``level``, from members or a Gaussian.

    From members (K, ...): the (1 ∓ level)/2 quantiles with the Weibull plotting position
    p(K + 1), under which the truth, if exchangeable with the members, falls inside with
    probability ``level`` (up to the outermost members: at most (K − 1)/(K + 1) for small K).
    Otherwise mean ∓ z·std with z the (1 + level)/2 standard normal quantile.
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), not {level}")
    lo, hi = 0.5 * (1.0 - level), 0.5 * (1.0 + level)
    if members is not None:
        q = np.quantile(members, [lo, hi], axis=0, method="weibull")
        return q[0], q[1]
    if mean is None or std is None:
        raise ValueError("give members, or both mean and std")
    z = float(ndtri(hi))
    return mean - z * std, mean + z * std


def interval_coverage(truth: np.ndarray, cells: np.ndarray, level: float,
                      members: np.ndarray | None = None, mean: np.ndarray | None = None,
                      std: np.ndarray | None = None) -> float:
    """Coverage of the central ``level`` interval from members or from N(mean, std²)."""
    if members is not None:
        # quantiles of the scored cells only: the full (K, ...) quantile would copy every cell
        lower, upper = central_interval(level, members[:, cells])
        y = truth[cells]
        return coverage(lower, upper, y, np.ones(y.shape, bool))
    lower, upper = central_interval(level, None, mean, std)
    return coverage(lower, upper, truth, cells)


def reliability(truth: np.ndarray, cells: np.ndarray, levels: Sequence[float] = LEVELS,
                members: np.ndarray | None = None, mean: np.ndarray | None = None,
                std: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Nominal levels and the observed coverage of their central intervals: a calibration plot.

    A calibrated forecast lies on the diagonal; below it the intervals are too narrow.
    """
    nominal = np.asarray(levels, dtype=np.float64)
    if members is not None:
        # select the scored cells once rather than once per level
        members, truth = members[:, cells], truth[cells]
        cells = np.ones(truth.shape, bool)
    observed = np.array([interval_coverage(truth, cells, lv, members, mean, std)
                         for lv in nominal])
    return nominal, observed


def per_frame(metric: Callable[..., float], *args: object, **kwargs: object) -> np.ndarray:
    """``metric`` evaluated frame by frame: a (T,) array.

    The call is ``metric(*args, **kwargs)``, with every array argument cut along its frame
    axis: the first axis of arrays shaped like ``truth``, the second of ensembles (K, T, ...),
    and in general axis ``a.ndim − truth.ndim``. Arrays with fewer dimensions than ``truth``
    (a (H, W) domain, say) are passed whole to every frame. ``metric`` must have a ``truth``
    argument, as every score here has.
    """
    bound = inspect.signature(metric).bind(*args, **kwargs)
    ref = np.asarray(bound.arguments["truth"]).ndim
    frames = np.asarray(bound.arguments["truth"]).shape[0]

    def cut(value: object, t: int) -> object:
        if isinstance(value, np.ndarray) and value.ndim >= ref:
            return value[(slice(None),) * (value.ndim - ref) + (t,)]
        return value

    out = np.empty(frames)
    for t in range(frames):
        sliced = {name: cut(value, t) for name, value in bound.arguments.items()}
        out[t] = metric(**sliced)
    return out


def scores(estimate: np.ndarray, truth: np.ndarray, cells: np.ndarray,
           valid: np.ndarray, *, members: np.ndarray | None = None,
           std: np.ndarray | None = None) -> dict[str, float]:
    """RMSE, MAE, bias and VRMSE on ``cells``, with the number of cells scored.

    With ``members`` (K, ...) or a Gaussian ``std`` around ``estimate``, also CRPS, the
    spread/skill ratio and the coverage of the central 50 % and 90 % intervals. Members take
    precedence over std: their CRPS is that of the empirical distribution, their spread is the
    ddof = 1 std around the members' mean with the K-member correction.
    """
    out = {"rmse": rmse(estimate, truth, cells), "mae": mae(estimate, truth, cells),
           "bias": bias(estimate, truth, cells), "vrmse": vrmse(estimate, truth, cells, valid),
           "cells": int(cells.sum())}
    if members is not None:
        x = members[:, cells]                                       # (K, n) scored cells only
        y = truth[cells]
        every = np.ones(y.shape, bool)
        k = x.shape[0]
        spread = x.std(axis=0, ddof=1) if k > 1 else np.zeros(y.shape)
        out["crps"] = crps_ensemble(x, y, every)
        out["spread_skill"] = spread_skill(x.mean(axis=0), spread, y, every, k)
        out["coverage_50"] = interval_coverage(y, every, 0.5, members=x)
        out["coverage_90"] = interval_coverage(y, every, 0.9, members=x)
    elif std is not None:
        out["crps"] = crps_gaussian(estimate, std, truth, cells)
        out["spread_skill"] = spread_skill(estimate, std, truth, cells)
        out["coverage_50"] = interval_coverage(truth, cells, 0.5, mean=estimate, std=std)
        out["coverage_90"] = interval_coverage(truth, cells, 0.9, mean=estimate, std=std)
    return out
