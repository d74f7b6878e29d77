"""The ensemble's calibration: its centre's share of the network and its spread, both fitted on
withheld observations.

With a temporal smoother the network corrects the smoother's estimate (its first guess). Where
the smoother already does nearly all the work (daily clouds, independent frames kriged) a short
training can leave a correction that is a little worse than none; elsewhere it gains 10 %. So
the ensemble's centre is the first guess plus a share c ∈ [0, 1] of the network's correction,
c the least-squares fit to the withheld observations (:func:`fit_correction`), and the members
move with it.

A single-step ensemble varies only through its members' context masks, so the members'
standard deviation σ_K is too narrow, and it is blind where every member agrees: a cell far in
time from its last observation is filled from the same other frames by every member. The
temporal smoother's posterior standard deviation σ_first (:mod:`ctxq_cli.temporal`) knows how
long ago and how near a cell was seen. The uncertainty of a filled cell is

    σ² = (e σ_K)² + (g σ_first)²,

with the share g²/e² the one under which the errors ε of withheld observations are most likely
(Gaussian) and the level the one that makes the mean σ² their mean ε² (a spread/skill ratio of
1 there). The withheld cells are not drawn like the real gaps: they lie in frames that other
frames' gaps have emptied, further in time from an observation, and the ratio of their errors
to σ_first changes with σ_first. So each counts with a weight that gives them the real gaps'
distribution of σ_first (:func:`shift_weights`, a correction for covariate shift); share, level
and tail are fitted on the weighted cells.

Members are their mean plus e times their deviations plus g σ_first ξ, with ξ a
standard normal draw per member and cell (the same for a given seed, member and frame whatever
the chunk), centred over the members so that their mean stays the ensemble mean.

The errors of a gap-filler are rarely Gaussian: most filled cells are nearly right and a few,
far from any observation or in a sudden event, are badly wrong. Gaussian member noise with the
right variance then gives intervals that are too wide for most cells (90 % intervals holding
98 % under independent clouds). So ξ is a Student t with ν degrees of freedom, rescaled to unit
variance, ν the likeliest for the standardised errors ε/σ of the withheld cells (∞, Gaussian,
when they are not heavier-tailed). The variance, and with it the spread/skill ratio, does not
depend on ν; only the shape of the members' distribution, and so their intervals, do.

Tried and not kept, on the tuning seed of ``examples/bench_time.py``: a power law
σ = s σ_first^β σ_K^γ fitted the same way. It described the withheld cells better, but with
β ≈ 1.6 it extrapolated badly to the real gaps, whose σ_first differ (spread/skill 1.64 on
persistent clouds); and members rescaled to it had heavy-tailed quantiles (90 % intervals that
held 74–79 %). Nor tails heavier than ν = 2.5 (2.1–2.3 allowed; seed 1, the same models):
under daily clouds ν = 2.3 took the 90 % coverage of new frames from 0.963 to 0.949, but on
the record under persistent clouds the members' spread/skill fell from 0.86 to 0.80 and the
coverage from 0.854 to 0.816 (CRPS 0.0840 → 0.0847): so near ν = 2 the members' sample
variance is dominated by a few draws and comes out below the model's. Nor the level as the
mean of ε²/σ² over the withheld cells (the Gaussian likelihood's own) instead of the ratio of
their means (seed 0, the same models): under daily clouds it took the 90 % coverage from 0.970
to 0.944 on new frames and from 0.981 to 0.955 on the record, but under persistent clouds it
made the spread far too narrow (spread/skill 0.90 → 0.54 and 0.95 → 0.66, coverage 0.903 →
0.816 and 0.903 → 0.874).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace

import numpy as np

SHARES = np.concatenate([[0.0], 10.0 ** np.linspace(-4, 4, 161)])   # g²/e² tried
SHIFT_BINS = 10    # quantile bins of σ_first that match the withheld cells to the real gaps
TAILS = (2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0, 10.0, 15.0, 20.0, 30.0, 50.0, math.inf)   # ν tried


@dataclass(frozen=True)
class Spread:
    """σ² = (ensemble · σ_K)² + (first_guess · σ_first)², and the centre's share of the
    network's correction; the identity (σ = σ_K, the network's centre) by default."""

    ensemble: float = 1.0       # e, the factor on the members' deviations
    first_guess: float = 0.0    # g, the factor on the first guess's std
    tail: float = math.inf      # ν, the degrees of freedom of the members' added noise
    correction: float = 1.0     # c, the share of the network's correction to the first guess

    def __post_init__(self) -> None:
        if not (self.ensemble >= 0 and self.first_guess >= 0):
            raise ValueError(f"Spread: factors must be ≥ 0, got {self.ensemble}, "
                             f"{self.first_guess}")
        if not 0 <= self.correction <= 1:
            raise ValueError(f"Spread: correction must be in [0, 1], got {self.correction}")
        if not self.tail > 2:
            raise ValueError(f"Spread: tail must be > 2 (a finite variance), got {self.tail}")

    def to_dict(self) -> dict[str, float]:
        """JSON-able form."""
        return asdict(self)

    def describe(self) -> str:
        """'members' deviations ×1.17, first guess's std ×0.59'"""
        return (f"members' deviations ×{self.ensemble:.2f}" + (
            f", first guess's std ×{self.first_guess:.2f}" if self.first_guess else "") + (
            f", Student t noise with ν = {self.tail:g}" if math.isfinite(self.tail) else "") + (
            f"; centre: first guess + {self.correction:.2f} × the network's correction"
            if self.correction < 1 else ""))

    def noise_name(self) -> str:
        """'normal' or 'student-t, ν = 3': the distribution of the members' added noise."""
        return "normal" if math.isinf(self.tail) else f"student-t, ν = {self.tail:g}"

    def noise(self, rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
        """Unit-variance noise ξ of the members: standard normal, or Student t with ν = tail."""
        xi = rng.standard_normal(shape, dtype=np.float32)
        if math.isfinite(self.tail):
            chi2 = 2.0 * rng.standard_gamma(self.tail / 2.0, shape, dtype=np.float32)
            xi = xi * np.sqrt((self.tail - 2.0) / np.maximum(chi2, 1e-30)).astype(np.float32)
        return xi

    def sigma(self, members_std: np.ndarray, first_std: np.ndarray | None) -> np.ndarray:
        """σ of each cell from the members' std and the first guess's std (same shapes)."""
        variance = (self.ensemble * members_std) ** 2
        if first_std is not None and self.first_guess:
            variance = variance + (self.first_guess * first_std) ** 2
        return np.sqrt(variance).astype(np.float32)

    def centre(self, network: np.ndarray, first: np.ndarray | None) -> np.ndarray:
        """The ensemble's centre from the network's mean and the first guess (same shapes)."""
        if first is None or self.correction == 1:
            return network
        return (first + self.correction * (network - first)).astype(np.float32)

    def members(self, deviations: np.ndarray, first_std: np.ndarray | None,
                noise: np.ndarray | None) -> np.ndarray:
        """Members' new deviations (K, …) from their raw ones and unit-variance ``noise``
        (needed only with a first guess's std and a factor on it).

        The noise is centred over the members (and rescaled to unit variance), so that the
        members' mean stays the ensemble mean.
        """
        out = self.ensemble * deviations
        k = len(deviations)
        if first_std is not None and self.first_guess and k > 1:
            centred = (noise - noise.mean(axis=0)) * np.float32(math.sqrt(k / (k - 1)))
            out = out + self.first_guess * first_std * centred
        return out.astype(np.float32)


def fit_spread(errors: np.ndarray, members_std: np.ndarray,
               first_std: np.ndarray | None, correction: float = 1.0,
               weights: np.ndarray | None = None) -> Spread:
    """The spread model of errors ε of withheld cells, with their σ_K and σ_first (1-D), for
    a centre with the share ``correction`` of the network's correction (the errors' own), each
    cell counted with its weight (equal by default; see :func:`shift_weights`)."""
    e2 = np.asarray(errors, np.float64) ** 2
    k2 = np.asarray(members_std, np.float64) ** 2
    g2 = np.zeros_like(k2) if first_std is None else np.asarray(first_std, np.float64) ** 2
    share = _likeliest_share(e2, k2, g2, weights)
    total = float(np.average(k2 + share * g2, weights=weights))
    level = float(np.average(e2, weights=weights)) / total if total > 0 else 1.0
    spread = Spread(ensemble=math.sqrt(level), first_guess=math.sqrt(level * share),
                    correction=correction)
    if not spread.first_guess:
        return spread
    sigma = spread.sigma(np.sqrt(k2), np.sqrt(g2)).astype(np.float64)
    z = np.asarray(errors, np.float64)[sigma > 0] / sigma[sigma > 0]
    return replace(spread, tail=likeliest_tail(
        z, None if weights is None else np.asarray(weights)[sigma > 0]))


def shift_weights(sample: np.ndarray, target: np.ndarray, bins: int = SHIFT_BINS) -> np.ndarray:
    """Weights of the cells of ``sample`` that give them the distribution of ``target`` (1-D
    values of one covariate, here σ_first): the ratio of the two histograms over the sample's
    quantiles, so that every bin holds a share 1/``bins`` of the sample."""
    sample = np.asarray(sample, np.float64)
    edges = np.unique(np.quantile(sample, np.linspace(0, 1, bins + 1)[1:-1]))
    of_sample = np.searchsorted(edges, sample, side="right")
    of_target = np.searchsorted(edges, np.asarray(target, np.float64), side="right")
    counts = np.bincount(of_sample, minlength=len(edges) + 1).astype(np.float64)
    wanted = np.bincount(of_target, minlength=len(edges) + 1) / max(len(target), 1)
    weights = (wanted * len(sample) / np.maximum(counts, 1.0))[of_sample]
    return weights if weights.sum() > 0 else np.ones_like(sample)


def fit_correction(targets: np.ndarray, network: np.ndarray, first: np.ndarray) -> float:
    """The share c ∈ [0, 1] of the network's correction to the first guess that fits withheld
    values ``targets`` best (least squares), from the network's and the first guess's means."""
    step = np.asarray(network, np.float64) - np.asarray(first, np.float64)
    missing = np.asarray(targets, np.float64) - np.asarray(first, np.float64)
    size = float(np.sum(step ** 2))
    return float(np.clip(np.sum(missing * step) / size, 0.0, 1.0)) if size > 0 else 1.0


def likeliest_tail(z: np.ndarray, weights: np.ndarray | None = None) -> float:
    """The ν in TAILS under which standardised errors ``z`` (each with its weight) are
    likeliest (unit-variance t)."""
    z2 = np.asarray(z, np.float64) ** 2
    if z2.size == 0:
        return math.inf
    best, tail = -math.inf, math.inf
    for nu in TAILS:
        if math.isinf(nu):
            ll = -0.5 * float(np.average(z2, weights=weights)) - 0.5 * math.log(2 * math.pi)
        else:   # log density of t_ν scaled by sqrt((ν − 2)/ν) to unit variance
            scale2 = nu - 2.0
            ll = (math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(math.pi * scale2)
                  - (nu + 1) / 2 * float(np.average(np.log1p(z2 / scale2), weights=weights)))
        if ll > best:
            best, tail = ll, nu
    return tail


def _likeliest_share(e2: np.ndarray, k2: np.ndarray, g2: np.ndarray,
                     weights: np.ndarray | None) -> float:
    """The r ≥ 0 under which the errors (each with its weight) are likeliest with Gaussian
    variances s (σ_K² + r σ_first²), s at its best for each r; 0 when there is no first guess."""
    if not g2.any():
        return 0.0
    best, share = math.inf, 0.0
    for r in SHARES:
        shape = np.maximum(k2 + r * g2, 1e-30)
        s = float(np.average(e2 / shape, weights=weights))
        # the NLL, less mean(ε² / σ²), which is 1 at this s
        nll = float(np.average(np.log(s * shape), weights=weights))
        if nll < best:
            best, share = nll, float(r)
    return share
