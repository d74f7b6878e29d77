"""The structure of observation masks, measured one way for every use: choosing a partition
and withholding cells like the gaps (:class:`MaskStructure`), and comparing the masks a mask
prior samples with the real ones (:func:`mask_statistics`).

Both rest on the same quantities: the missing (or observed) fraction inside the domain, the
lag-1 correlation of the mask between neighbouring cells (:func:`neighbour_pairs`; the
indicator's correlation is the same for missing and observed cells), and the size of gaps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage
from torch import Tensor


def neighbour_pairs(cells: np.ndarray, inside: np.ndarray) -> tuple[tuple[int, int], ...]:
    """(number of pairs both in ``cells``, number of pairs) of neighbours inside, along x and
    along y; ``cells`` and ``inside`` are (frames, H, W) bool."""
    pairs_x = inside[:, :, 1:] & inside[:, :, :-1]
    pairs_y = inside[:, 1:, :] & inside[:, :-1, :]
    both_x = int((cells[:, :, 1:] & cells[:, :, :-1])[pairs_x].sum())
    both_y = int((cells[:, 1:, :] & cells[:, :-1, :])[pairs_y].sum())
    return (both_x, int(pairs_x.sum())), (both_y, int(pairs_y.sum()))


def lag1_correlation(both: int, pairs: int, p: float) -> float:
    """Correlation of a 0/1 indicator of mean ``p`` between neighbours, from the number of
    neighbour pairs where it is 1 at both ends (NaN when undefined)."""
    var = p * (1 - p)
    if var == 0 or pairs == 0:
        return float("nan")
    return float((both / pairs - p * p) / var)


@dataclass(frozen=True)
class MaskStructure:
    """Measured structure of a set of observation masks."""

    missing_fraction: float
    neighbour_correlation: float   # lag-1 correlation of the missing indicator in space
    temporal_change: float         # fraction of cells whose state changes between frames
    cluster_size: float            # mean length of missing runs along rows, in cells

    @property
    def scattered(self) -> bool:
        """Whether missing cells are nearly independent of their neighbours (pixel dropout)."""
        return self.neighbour_correlation < 0.2

    @property
    def block_size(self) -> int:
        """Block side matching the gaps: the mean missing run, within [2, 32] cells."""
        return int(np.clip(round(self.cluster_size), 2, 32))

    def describe(self) -> str:
        """One line for the log."""
        return (f"missing {100 * self.missing_fraction:.1f} %, neighbour correlation "
                f"{self.neighbour_correlation:.2f}, change between frames "
                f"{100 * self.temporal_change:.1f} %, missing runs {self.cluster_size:.1f} cells")


STRUCTURE_FRAMES = 64   # frames counted at a time: memory follows this, not the record


def mask_structure(observed: np.ndarray, domain: np.ndarray) -> MaskStructure:
    """Measure missing fraction, spatial correlation, temporal change and run length.

    ``observed`` is (T, H, W) bool, ``domain`` (H, W) bool; cells outside the domain are ignored.
    Every quantity is a ratio of counts, summed over ``STRUCTURE_FRAMES`` frames at a time
    (each range with the frame before it, for the change between frames), so a long record
    costs no copy of itself and gives the same numbers as counting it whole.
    """
    counts = np.zeros(8, np.int64)   # missing, inside, x pairs both/all, y pairs, changes, starts
    frames = observed.shape[0]
    for a in range(0, frames, STRUCTURE_FRAMES):
        part = observed[a:a + STRUCTURE_FRAMES]
        missing = ~part & domain
        inside = np.broadcast_to(domain, part.shape)
        (both_x, n_x), (both_y, n_y) = neighbour_pairs(missing, inside)
        with_previous = observed[max(a - 1, 0):a + STRUCTURE_FRAMES]
        changed = np.logical_xor(with_previous[1:], with_previous[:-1]) & domain
        starts = missing & ~np.pad(missing, ((0, 0), (0, 0), (1, 0)))[..., :-1]   # runs along x
        counts += [missing.sum(), inside.sum(), both_x, n_x, both_y, n_y, changed.sum(),
                   starts.sum()]
    n_missing, n_inside, both_x, n_x, both_y, n_y, n_changed, n_starts = counts.tolist()
    p = n_missing / n_inside if n_inside else 0.0
    corr = lag1_correlation(both_x + both_y, n_x + n_y, p)     # x and y pooled
    corr = 0.0 if np.isnan(corr) else corr
    pairs_in_time = int(domain.sum()) * (frames - 1)
    change = n_changed / pairs_in_time if frames > 1 and pairs_in_time else 0.0
    cluster = n_missing / n_starts if n_starts else 0.0
    return MaskStructure(float(p), corr, float(change), float(cluster))


def mask_statistics(masks: Tensor | np.ndarray, domain: Tensor | np.ndarray | None = None,
                    bins: int = 10) -> dict[str, Any]:
    """Structure of a set of masks, to compare real and sampled ones; JSON-able floats/lists.

    masks: (B, F, H, W) or (T, H, W) bool; domain: (H, W), (1, H, W) or (B, 1, H, W) bool or
    None (everywhere). Returns the observed fraction (mean and a histogram per frame over
    ``bins`` equal bins of [0, 1]), the lag-1 spatial autocorrelation of the mask (along x, y
    and their mean; NaN when every cell has the same state) and the mean size of 4-connected
    clusters of missing and of observed cells, in cells.
    """
    m = np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks, dtype=bool)
    if m.ndim == 3:
        m = m[:, None]
    if domain is None:
        dom = np.ones_like(m)
    else:
        d = np.asarray(domain.cpu() if isinstance(domain, Tensor) else domain, dtype=bool)
        dom = np.broadcast_to(d.reshape((1,) * (4 - d.ndim) + d.shape), m.shape)
    h, w = m.shape[-2:]
    m, dom = m.reshape(-1, h, w), dom.reshape(-1, h, w)   # (frames, H, W)
    obs = m & dom
    cells = dom.sum(axis=(1, 2))
    frac = obs.sum(axis=(1, 2))[cells > 0] / cells[cells > 0]
    hist, edges = np.histogram(frac, bins=bins, range=(0.0, 1.0))
    p = obs.sum() / max(dom.sum(), 1)

    (both_x, n_x), (both_y, n_y) = neighbour_pairs(obs, dom)
    corr_x, corr_y = lag1_correlation(both_x, n_x, p), lag1_correlation(both_y, n_y, p)
    cross = np.zeros((3, 3, 3), dtype=bool)
    cross[1] = ndimage.generate_binary_structure(2, 1)   # 4-connected within a frame only

    def cluster_size(cells_of: np.ndarray) -> float:
        """Mean size of the 4-connected clusters of True cells."""
        _, n = ndimage.label(cells_of, structure=cross)
        return float(cells_of.sum() / n) if n else 0.0

    return {
        "frames": int(len(frac)),
        "observed_fraction": float(p),
        "fraction_histogram": (hist / max(len(frac), 1)).tolist(),
        "bin_edges": edges.tolist(),
        "autocorrelation_x": corr_x,
        "autocorrelation_y": corr_y,
        "autocorrelation": float(np.mean([corr_x, corr_y])),
        "missing_cluster_size": cluster_size(~m & dom),
        "observed_cluster_size": cluster_size(obs),
    }


def fidelity_table(fidelity: dict[str, Any]) -> str:
    """Real and sampled mask statistics side by side."""
    rows = [("observed fraction", "observed_fraction"), ("autocorrelation (lag 1)",
                                                          "autocorrelation"),
            ("mean missing cluster (cells)", "missing_cluster_size"),
            ("mean observed cluster (cells)", "observed_cluster_size")]
    real, sampled = fidelity["real"], fidelity["sampled"]
    lines = [f"  {'':<30}{'real':>10}{'sampled':>10}"]
    lines += [f"  {label:<30}{real[key]:>10.3f}{sampled[key]:>10.3f}" for label, key in rows]
    hist = "  ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(real["fraction_histogram"],
                                                       sampled["fraction_histogram"]))
    lines.append(f"  fraction histogram, 10 bins 0→1 (real/sampled): {hist}")
    return "\n".join(lines)
