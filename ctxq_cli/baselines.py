"""Reference gap-fillers that ctxq is measured against (numpy/scipy, no training).

- ``linear``: per frame and variable, piecewise-linear interpolation on the Delaunay
  triangulation of the observed cells, nearest observed value outside their convex hull.

- ``persistence``: per cell, what time alone gives. A hidden cell at time τ takes its nearest
  earlier observation (at τ_p) and its nearest later one (at τ_n), weighted by the inverse of
  their age, ẑ = (z_p/(τ − τ_p) + z_n/(τ_n − τ)) / (1/(τ − τ_p) + 1/(τ_n − τ)), which is
  linear interpolation in time between them; one of them alone past the record's first or last
  observation of the cell. A cell never observed is filled per frame like ``linear``.

- ``dineof``: Data Interpolating Empirical Orthogonal Functions. With X the (cells × frames)
  matrix of standardised anomalies, Ω its observed entries and P_Ω the projection on them,
  iterate to a fixed point

      X ← P_Ω(X_obs) + P_Ω⊥( U_k Σ_k V_kᵀ ),        U_k Σ_k V_kᵀ = best rank-k approximation of X,

  starting from zero anomaly in the gaps, for k = 1, 2, …; k is the one with the lowest RMSE on
  a random, held-out set of observations, and the final fixed point is computed with them put
  back.

- ``optimal_interpolation`` (``oi``): ordinary kriging per frame with a fitted Matérn-3/2
  covariance C(r) = σ² (1 + √3 r/ℓ) exp(−√3 r/ℓ) + τ² 1[r = 0] (r in cells). For a gap x₀ and
  its n nearest observed cells, the weights w and Lagrange multiplier μ solve

      [ C_nn  1 ] [w]   [c_n0]
      [ 1ᵀ    0 ] [μ] = [ 1  ],      ẑ(x₀) = wᵀz,      σ²(x₀) = σ² + τ² − wᵀc_n0 − μ,

  and (σ², ℓ, τ²) are fitted by weighted least squares to the empirical semivariogram
  γ(h) = ½ E[(z(x) − z(x + h))²] pooled over frames.

References:
    Beckers, J.-M. & Rixen, M. (2003). EOF calculations and data filling from incomplete
    oceanographic datasets. J. Atmos. Oceanic Technol. 20, 1839–1856.
    Alvera-Azcárate, A. et al. (2005). Reconstruction of incomplete oceanographic data sets using
    empirical orthogonal functions: application to the Adriatic Sea surface temperature.
    Ocean Modelling 9, 325–346.
    Cressie, N. (1985). Fitting variogram models by weighted least squares. Math. Geol. 17,
    563–586.
    Stein, M. L. (1999). Interpolation of Spatial Data: Some Theory for Kriging. Springer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.interpolate import LinearNDInterpolator, NearestNDInterpolator
from scipy.optimize import least_squares
from scipy.spatial import cKDTree
from threadpoolctl import ThreadpoolController

Seed = int | np.random.Generator


def linear(values: np.ndarray, observed: np.ndarray, domain: np.ndarray) -> np.ndarray:
    """Fill (T, C, H, W) per frame by linear interpolation, nearest outside the hull.

    Observed cells are returned unchanged; cells outside ``domain`` (H, W) are NaN.
    """
    t, c, h, w = values.shape
    yy, xx = np.mgrid[0:h, 0:w]
    grid = np.stack([yy[domain], xx[domain]], axis=1).astype(np.float64)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    for i in range(t):
        for j in range(c):
            seen = observed[i, j] & domain
            if not seen.any():
                continue
            pts = np.stack([yy[seen], xx[seen]], axis=1)
            out[i, j][domain] = _spatial_fill(pts, values[i, j][seen, None], grid)[:, 0]
            out[i, j][seen] = values[i, j][seen]
    return out


@functools.cache
def _thread_pools() -> ThreadpoolController:
    """The process's native thread pools, found once (a search costs ~1.5 ms, a limit ~10 µs)."""
    return ThreadpoolController()


def _spatial_fill(src: np.ndarray, vals: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Values (n_src, m) at points src (n_src, 2) carried to points dst: linear, nearest outside."""
    src = src.astype(np.float64)
    dst = dst.astype(np.float64)
    vals = vals.astype(np.float64)
    if len(src) >= 3 and np.linalg.matrix_rank(src - src.mean(0)) == 2:
        # A Delaunay interpolation makes one tiny LAPACK call per triangle; with a threaded
        # BLAS on a busy machine, waking its threads took minutes for a 64×64 frame, not 20 ms.
        with _thread_pools().limit(limits=1, user_api="blas"):
            # one triangulation serves every column (every frame) at once
            est = LinearNDInterpolator(src, vals)(dst)
        holes = np.isnan(est).any(axis=1)
        if holes.any():
            est[holes] = NearestNDInterpolator(src, vals)(dst[holes])
        return est
    return NearestNDInterpolator(src, vals)(dst)


def persistence(values: np.ndarray, observed: np.ndarray, domain: np.ndarray,
                times: np.ndarray | None = None) -> np.ndarray:
    """Fill (T, C, H, W) from each cell's nearest observations in time (``times``, (T,)).

    Observed cells are returned unchanged; cells outside ``domain`` (H, W) are NaN.
    """
    t = values.shape[0]
    times = np.arange(t, dtype=np.float64) if times is None else np.asarray(times, np.float64)
    seen = observed & domain[None, None]
    shape = values.shape[1:]
    weight_sum = np.zeros(values.shape, np.float64)
    weighted = np.zeros(values.shape, np.float64)
    for order in (range(t), range(t - 1, -1, -1)):        # earlier, then later observations
        last_value = np.zeros(shape, np.float64)
        last_time = np.full(shape, np.nan)
        for i in order:
            age = np.abs(times[i] - last_time)
            w = np.where(np.isfinite(age), 1.0 / np.maximum(age, 1e-12), 0.0)
            weighted[i] += w * last_value
            weight_sum[i] += w
            last_value = np.where(seen[i], values[i], last_value)
            last_time = np.where(seen[i], times[i], last_time)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    ever = weight_sum > 0
    out[ever] = (weighted[ever] / weight_sum[ever]).astype(np.float32)
    never = ~seen.any(axis=0) & domain[None]                     # (C, H, W)
    if never.any() and seen.any():
        spatial = linear(np.where(np.isnan(out), 0, out), ~np.isnan(out), domain)
        out = np.where(never[None], spatial, out)
    out[seen] = values[seen]
    out[:, :, ~domain] = np.nan
    return out


# ---------------------------------------------------------------------------------------------
# DINEOF


@dataclass(frozen=True)
class DineofInfo:
    """What ``dineof`` chose: the number of modes and the held-out RMSE for k = 0, 1, …."""

    modes: int
    validation_rmse: tuple[float, ...]
    validation_points: int
    sweeps: tuple[int, ...] = ()      # fill iterations for k = 1, 2, … and the final one


def _rng(seed: Seed) -> np.random.Generator:
    """A numpy Generator from an int seed (or the Generator itself)."""
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def _svd_impute(x: np.ndarray, gaps: np.ndarray, k: int, basis: np.ndarray, tol: float,
                max_iter: int, scale: float) -> tuple[np.ndarray, int]:
    """Iterate x[gaps] ← rank-k reconstruction of x in place; the right basis (T, p) and sweeps.

    ``gaps`` is a float array, 1 on the entries to fill and 0 elsewhere. The truncated SVD is
    one sweep of subspace iteration per fill, warm-started from the previous right singular
    vectors: the fill itself converges linearly, so an exact SVD every sweep would buy nothing.
    """
    n_gaps = max(float(gaps.sum()), 1.0)
    sweeps = 0
    while sweeps < max_iter:
        sweeps += 1
        q, _ = np.linalg.qr(x @ basis)                            # (N, p)
        ub, s, vt = np.linalg.svd(q.T @ x, full_matrices=False)   # (p, p), (p,), (p, T)
        basis = vt.T
        step = (q @ (ub[:, :k] * s[:k])) @ vt[:k]                 # (N, T) rank-k reconstruction
        step -= x
        step *= gaps
        x += step
        if np.sqrt(np.vdot(step, step) / n_gaps) < tol * scale:
            break
    return basis, sweeps


def dineof(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, *,
           max_modes: int = 40, seed: Seed = 0, validation_fraction: float = 0.03,
           tol: float = 1e-3, max_iter: int = 100, patience: int = 3,
           return_info: bool = False) -> np.ndarray | tuple[np.ndarray, DineofInfo]:
    """Fill (T, C, H, W) with DINEOF; with ``return_info`` also return the chosen modes.

    All variables share one EOF decomposition: each cell's anomaly from its temporal mean (over
    its observations), divided by the variable's anomaly std, is one row of the matrix, so a
    multivariate record can borrow strength across variables and C = 1 is classic DINEOF.
    ``tol`` bounds the RMS change of the filled entries per sweep in units of the observed
    anomalies' RMS; ``patience`` is how many further k are tried after the best one. Held-out
    points are a ``validation_fraction`` of the observations, drawn with ``seed`` in the shape
    of the gaps of other frames (see ``_held_out``), not as scattered pixels: under clouds,
    pixel hold-outs reward modes that only interpolate between nearby observations.

    Fall-backs, so nothing inside the domain is NaN: a frame with no observation gets each
    cell's temporal mean; a domain cell never observed is filled in every frame by linear
    interpolation (nearest outside the hull) of the reconstructed cells of that frame; a single
    frame (T = 1) has no temporal information and reduces to ``linear``; a variable with no
    observation at all is 0. Observed cells are returned unchanged, cells outside ``domain`` NaN.
    """
    t, c, h, w = values.shape
    seen = observed & domain
    ever = seen.any(axis=0)                                          # (C, H, W)
    rows_var = np.concatenate([np.full(int(ever[j].sum()), j) for j in range(c)])
    z = np.concatenate([values[:, j][:, ever[j]].T for j in range(c)]).astype(np.float64)
    m = np.concatenate([seen[:, j][:, ever[j]].T for j in range(c)])  # (N, T)
    n_rows = len(rows_var)
    out = np.full(values.shape, np.nan, dtype=np.float32)
    info = DineofInfo(0, (), 0)
    if n_rows:
        z = np.where(m, z, 0.0)
        counts = m.sum(axis=1)
        mean = z.sum(axis=1) / counts
        x = np.where(m, z - mean[:, None], 0.0)                      # (N, T) anomalies
        std = np.ones(c)
        for j in range(c):
            sel = rows_var == j
            if sel.any():
                s = np.sqrt(np.sum(x[sel] ** 2) / counts[sel].sum())
                std[j] = s if np.isfinite(s) and s > 0 else 1.0
        x /= std[rows_var][:, None]
        # large matrices in float32: twice the speed of float64 here, and the output is float32
        x = x.astype(np.float32 if x.size >= 1 << 20 else np.float64)
        x, info = _dineof_anomalies(x, m, counts, max_modes=max_modes, rng=_rng(seed),
                                    validation_fraction=validation_fraction, tol=tol,
                                    max_iter=max_iter, patience=patience)
        z = mean[:, None] + std[rows_var][:, None] * x
    yy, xx = np.mgrid[0:h, 0:w]
    start = 0
    for j in range(c):
        n_j = int(ever[j].sum())
        rec = z[start:start + n_j]                                   # (n_j, T)
        start += n_j
        band = out[:, j]
        band[:, ever[j]] = rec.T
        hidden = domain & ~ever[j]
        if hidden.any():
            if n_j:
                src = np.stack([yy[ever[j]], xx[ever[j]]], axis=1)
                dst = np.stack([yy[hidden], xx[hidden]], axis=1)
                band[:, hidden] = _spatial_fill(src, rec, dst).T
            else:
                band[:, hidden] = 0.0
    out[seen] = values[seen]
    return (out, info) if return_info else out


def _held_out(m: np.ndarray, counts: np.ndarray, fraction: float,
              rng: np.random.Generator) -> np.ndarray:
    """Flat indices into m (N, T) of about ``fraction`` of its observed entries to hold out.

    Frames in random order lose the observed cells that another random frame misses, so the
    held-out set has the shape of the real gaps (clouds hide clouds, pixels hide pixels) and the
    number of modes is chosen for the gaps it must fill; random observed entries make up the
    rest when other frames' gaps cannot (fixed stations). Only cells observed at least three
    times are held out, so that no cell loses all its observations.
    """
    n, t = m.shape
    eligible = m & (counts >= 3)[:, None]
    target = int(round(fraction * eligible.sum()))
    chosen = np.zeros_like(m)
    total = 0
    if target and t > 1:
        for i in rng.permutation(t):
            hide = eligible[:, i] & ~m[:, (i + rng.integers(1, t)) % t]
            size = int(hide.sum())
            if total + size <= 1.5 * target:
                chosen[:, i] = hide
                total += size
            if total >= target:
                break
    if total < target:
        rest = np.flatnonzero(eligible & ~chosen)
        chosen.flat[rng.choice(rest, min(target - total, len(rest)), replace=False)] = True
    return np.flatnonzero(chosen)


def _dineof_anomalies(x: np.ndarray, m: np.ndarray, counts: np.ndarray, *, max_modes: int,
                      rng: np.random.Generator, validation_fraction: float, tol: float,
                      max_iter: int, patience: int) -> tuple[np.ndarray, DineofInfo]:
    """Fill the zero entries of anomaly matrix x (N, T) where m is False; choose k by hold-out."""
    n, t = x.shape
    cap = max(0, min(max_modes, n - 1, t - 1))
    val = _held_out(m, counts, validation_fraction, rng)
    n_val = len(val)
    truth_val = x.flat[val].copy()
    if cap == 0 or n_val == 0:
        # without hold-out points the number of modes cannot be chosen: keep the mean
        return x, DineofInfo(0, (), n_val)
    x.flat[val] = 0.0
    gaps = (~m).astype(x.dtype)
    gaps.flat[val] = 1.0
    scale = float(np.sqrt(np.vdot(x, x) / max(m.sum() - n_val, 1)))
    scale = scale if scale > 0 else 1.0
    errors = [float(np.sqrt(np.mean(truth_val ** 2)))]
    # a new k must beat the best error by 0.01 % of the k = 0 error: beyond the true rank the
    # held-out error only wanders at the level the iteration converged to, and ties go to the
    # smaller k
    margin = 1e-4 * errors[0]
    best_k, best_x = 0, x.copy()
    oversample = 5
    basis = rng.standard_normal((t, min(1 + oversample, n, t))).astype(x.dtype)
    best_basis = basis
    sweeps: list[int] = []
    for k in range(1, cap + 1):
        p = min(k + oversample, n, t)
        if basis.shape[1] < p:
            extra = rng.standard_normal((t, p - basis.shape[1])).astype(x.dtype)
            basis = np.concatenate([basis, extra], axis=1)
        basis, used = _svd_impute(x, gaps, k, basis, tol, max_iter, scale)
        sweeps.append(used)
        errors.append(float(np.sqrt(np.mean((x.flat[val] - truth_val) ** 2))))
        if errors[-1] < errors[best_k] - margin:
            best_k, best_x, best_basis = k, x.copy(), basis.copy()
        elif k - best_k >= patience:
            break
    x = best_x
    x.flat[val] = truth_val
    if best_k:
        gaps.flat[val] = 0.0
        sweeps.append(_svd_impute(x, gaps, best_k, best_basis, tol, max_iter, scale)[1])
    return x, DineofInfo(best_k, tuple(errors), n_val, tuple(sweeps))


# ---------------------------------------------------------------------------------------------
# Optimal interpolation (kriging)


@dataclass(frozen=True)
class Covariance:
    """Matérn-3/2 covariance σ²(1 + √3 r/ℓ) exp(−√3 r/ℓ) plus nugget τ² at r = 0; r in cells."""

    variance: float       # σ², the sill of the spatially correlated part
    length_scale: float   # ℓ, in grid cells
    nugget: float         # τ², uncorrelated variance: noise and unresolved scales

    def correlation(self, r: np.ndarray) -> np.ndarray:
        """ρ(r) of the correlated part, 1 at r = 0."""
        a = np.sqrt(3.0) * np.asarray(r, dtype=np.float64) / self.length_scale
        return (1.0 + a) * np.exp(-a)

    def semivariogram(self, r: np.ndarray) -> np.ndarray:
        """γ(r) = τ² + σ²(1 − ρ(r)) for r > 0."""
        return self.nugget + self.variance * (1.0 - self.correlation(r))


def _variogram_sums(z: np.ndarray, m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Σ over frames of Σ_x m(x)m(x+h)(z(x) − z(x+h))² and of the pair counts, per lag h.

    z, m are (F, H, W) with z = 0 where m = 0; the results are (2H, 2W) arrays in FFT lag order.
    Every pair is used: each sum is a cross-correlation, computed with zero-padded FFTs.
    """
    h, w = z.shape[-2:]
    shape = (2 * h, 2 * w)

    def corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.fft.irfft2(np.conj(np.fft.rfft2(a, shape)) * np.fft.rfft2(b, shape), shape)

    zz = z * z
    sq = (corr(zz, m) + corr(m, zz) - 2.0 * corr(z, z)).sum(axis=0)
    pairs = corr(m, m).sum(axis=0)
    return sq, pairs


def empirical_variogram(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, *,
                        max_lag: float | None = None, max_frames: int = 256,
                        seed: Seed = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Isotropic semivariogram of frames (..., H, W) of one variable: (lag, γ, pairs) per bin.

    Bins are one cell wide, centred on whole distances 1, 2, … up to ``max_lag`` (half the
    shorter side by default); ``lag`` is the pair-weighted mean distance in the bin. At most
    ``max_frames`` frames, drawn with ``seed``, are pooled.
    """
    h, w = values.shape[-2:]
    vals = values.reshape(-1, h, w)
    seen = (observed & domain).reshape(-1, h, w)
    keep = np.flatnonzero(seen.sum(axis=(1, 2)) >= 2)
    if len(keep) > max_frames:
        keep = np.sort(_rng(seed).choice(keep, max_frames, replace=False))
    max_lag = 0.5 * min(h, w) if max_lag is None else max_lag
    sq = np.zeros((2 * h, 2 * w))
    pairs = np.zeros((2 * h, 2 * w))
    for start in range(0, len(keep), 32):
        idx = keep[start:start + 32]
        mk = seen[idx].astype(np.float64)
        zk = np.where(seen[idx], vals[idx], 0.0).astype(np.float64)
        # the frame mean does not change γ but keeps the squares small and the sums accurate
        zk -= mk * (zk.sum(axis=(1, 2)) / mk.sum(axis=(1, 2)))[:, None, None]
        s, p = _variogram_sums(zk, mk)
        sq += s
        pairs += p
    dy = np.fft.fftfreq(2 * h, 1.0 / (2 * h))[:, None]
    dx = np.fft.fftfreq(2 * w, 1.0 / (2 * w))[None, :]
    r = np.sqrt(dy ** 2 + dx ** 2)
    pairs = np.rint(pairs)                      # counts are integers; FFT leaves round-off
    use = (r >= 0.5) & (r < max_lag + 0.5) & (pairs > 0)
    b = np.rint(r[use]).astype(int)
    nb = int(np.ceil(max_lag)) + 1
    n_pairs = np.bincount(b, pairs[use], nb)
    lag_sum = np.bincount(b, pairs[use] * r[use], nb)
    sq_sum = np.bincount(b, sq[use], nb)
    ok = n_pairs > 0
    n_pairs, lag_sum, sq_sum = n_pairs[ok], lag_sum[ok], sq_sum[ok]
    return lag_sum / n_pairs, sq_sum / (2.0 * n_pairs), n_pairs


def fit_covariance(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, *,
                   length_scale: float | None = None, max_frames: int = 256,
                   seed: Seed = 0) -> Covariance:
    """Fit a Matérn-3/2 covariance to frames (..., H, W) of one variable.

    Weighted least squares on the pooled semivariogram with Cressie's weights N(h)/γ(h)², which
    favour the short lags that kriging weights depend on most. ``length_scale`` fixes ℓ and
    fits only σ² and τ². With fewer than three lag bins the fit falls back to σ² = the variance
    of the observations, τ² = 0 and ℓ = a tenth of the longer side (or the given one).
    """
    h, w = values.shape[-2:]
    lag, gamma, n_pairs = empirical_variogram(values, observed, domain, max_frames=max_frames,
                                              seed=seed)
    good = n_pairs >= 10
    lag, gamma, n_pairs = lag[good], gamma[good], n_pairs[good]
    obs = values[observed & np.broadcast_to(domain, values.shape)].astype(np.float64)
    var = float(np.var(obs)) if obs.size >= 2 else 1.0
    var = var if var > 0 else 1.0
    if len(lag) < 3 or not np.all(np.isfinite(gamma)):
        return Covariance(var, float(length_scale or 0.1 * max(h, w)), 0.0)
    scale = float(max(np.max(gamma), 1e-12))
    g = gamma / scale
    sill0 = float(np.mean(g[-max(1, len(g) // 4):]))
    cross = np.flatnonzero(g >= 0.6 * sill0)
    ell0 = float(length_scale or max(lag[cross[0]] if len(cross) else lag[-1] / 3, 0.5))
    nug0 = 0.3 * float(g[0])
    lo_ell, hi_ell = 0.1, 10.0 * max(h, w)
    weight = np.sqrt(n_pairs)

    def unpack(p: np.ndarray) -> tuple[float, float, float]:
        sill, nug = p[0], p[1]
        ell = length_scale if length_scale is not None else p[2]
        return sill, ell, nug

    def residual(p: np.ndarray) -> np.ndarray:
        sill, ell, nug = unpack(p)
        model = Covariance(sill, ell, nug).semivariogram(lag)
        return weight * (g - model) / np.maximum(model, 1e-9)

    p0 = [max(sill0 - nug0, 1e-3), nug0]
    lower, upper = [1e-6, 0.0], [10.0, 10.0]
    if length_scale is None:
        p0.append(min(max(ell0, lo_ell), hi_ell))
        lower.append(lo_ell)
        upper.append(hi_ell)
    fit = least_squares(residual, np.array(p0), bounds=(lower, upper), x_scale="jac")
    sill, ell, nug = unpack(fit.x)
    return Covariance(float(sill * scale), float(ell), float(nug * scale))


def _krige_frame(z: np.ndarray, pts: np.ndarray, targets: np.ndarray, rho: np.ndarray,
                 nugget: float, neighbours: int,
                 chunk: int = 2048) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary-kriging estimate and variance (in units of σ²) at integer targets (m, 2).

    ``z`` (n,) are the observations at integer points ``pts`` (n, 2); ``rho[d²]`` is the
    correlation at squared distance d²; ``nugget`` is τ²/σ².
    """
    k = min(neighbours, len(pts))
    _, idx = cKDTree(pts).query(targets, k=k)
    idx = idx.reshape(len(targets), k)
    est = np.empty(len(targets))
    var = np.empty(len(targets))
    for s in range(0, len(targets), chunk):
        nb = idx[s:s + chunk]                                        # (b, k)
        p = pts[nb]                                                  # (b, k, 2)
        dy = p[:, :, None, 0] - p[:, None, :, 0]
        dx = p[:, :, None, 1] - p[:, None, :, 1]
        lhs = np.ones((len(nb), k + 1, k + 1))
        lhs[:, :k, :k] = rho[dy * dy + dx * dx]
        lhs[:, :k, :k] += nugget * np.eye(k)
        lhs[:, k, k] = 0.0
        d0 = p - targets[s:s + chunk, None, :]
        c0 = rho[(d0 * d0).sum(axis=-1)]                             # (b, k)
        rhs = np.concatenate([c0, np.ones((len(nb), 1))], axis=1)
        sol = np.linalg.solve(lhs, rhs[:, :, None])[:, :, 0]         # (b, k + 1): w, μ
        wts = sol[:, :k]
        est[s:s + chunk] = np.einsum("bk,bk->b", wts, z[nb])
        var[s:s + chunk] = 1.0 + nugget - np.einsum("bk,bk->b", wts, c0) - sol[:, k]
    return est, np.maximum(var, 0.0)


def optimal_interpolation(values: np.ndarray, observed: np.ndarray, domain: np.ndarray, *,
                          length_scale: float | None = None, neighbours: int = 32,
                          seed: Seed = 0,
                          covariance: Covariance | Sequence[Covariance] | None = None,
                          return_std: bool = False) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Fill (T, C, H, W) by ordinary kriging per frame; with ``return_std`` also its std.

    Each variable gets one covariance fitted to all its frames (``fit_covariance`` with ``seed``
    and ``length_scale``) unless ``covariance`` gives one for all variables or one per variable.
    Each gap is estimated from its ``neighbours`` nearest observed cells in the domain; the
    weights sum to one, so each neighbourhood's own mean is used and no frame mean has to be
    removed. Matérn-3/2 rather than a Gaussian covariance: geophysical fields are rougher than
    the Gaussian model's infinitely smooth paths, whose nearly singular kriging systems give
    oscillating weights. The std is that of the value a gap would be observed with (τ²
    included), 0 on observed cells. A frame with no observation gets the variable's mean over all
    frames and the prior std; a variable never observed is 0 with NaN std. Cells outside
    ``domain`` are NaN in both outputs.
    """
    t, c, h, w = values.shape
    if isinstance(covariance, Covariance):
        covariance = [covariance] * c
    out = np.full(values.shape, np.nan, dtype=np.float32)
    std = np.full(values.shape, np.nan, dtype=np.float32)
    seen = observed & domain
    yy, xx = np.mgrid[0:h, 0:w]
    d2 = np.arange((h - 1) ** 2 + (w - 1) ** 2 + 1)
    for j in range(c):
        obs_j = values[:, j][seen[:, j]].astype(np.float64)
        if obs_j.size == 0:
            out[:, j][:, domain] = 0.0
            continue
        cov = (covariance[j] if covariance is not None else
               fit_covariance(values[:, j], observed[:, j], domain, length_scale=length_scale,
                              seed=seed))
        rho = cov.correlation(np.sqrt(d2))
        nugget = max(cov.nugget / cov.variance, 1e-6)  # a floor keeps the systems well posed
        for i in range(t):
            frame, spread = out[i, j], std[i, j]
            known = seen[i, j]
            gaps = domain & ~known
            if not known.any():
                frame[domain] = obs_j.mean()
                spread[domain] = np.sqrt(cov.variance + cov.nugget)
                continue
            if gaps.any():
                pts = np.stack([yy[known], xx[known]], axis=1)
                tgt = np.stack([yy[gaps], xx[gaps]], axis=1)
                z = values[i, j][known].astype(np.float64)
                est, var = _krige_frame(z, pts, tgt, rho, nugget, neighbours)
                frame[gaps] = est
                spread[gaps] = np.sqrt(cov.variance * var)
            frame[known] = values[i, j][known]
            spread[known] = 0.0
    return (out, std) if return_std else out


oi = optimal_interpolation
