"""Cross-validation without truth: hide some observations, fill them, score on what was hidden.

For observation masks M_t (T frames) and a target fraction f, the hidden cells H ⊆ M are drawn
with one of three patterns:

- ``mask`` (default, as DINCAE does): frames in random order take the gaps of another,
  randomly chosen frame, H_t = M_t ∧ ¬M_t', until |H| ≥ f·|M| — hidden cells then look like
  real gaps (clouds stay cloud-shaped). Needs masks that vary in time; a static mask falls back
  to ``block``. Scattered gaps (pixel dropout) fall back to ``pixel``, which hides cells just
  as scattered: another frame's gaps would hide nearly all of a sparse frame (90 % of a frame
  with 10 % observed), a much harder fill than the real one.
- ``pixel``: each observed cell is hidden with probability f.
- ``block``: square blocks of side b (the gaps' typical size) are hidden with the probability
  that hides a fraction f of the observed cells on average.

All variables of a cell are hidden together. Seeded: the same seed hides the same cells.
"""

from __future__ import annotations

import logging

import numpy as np

from ctxq_cli.errors import CtxqError
from ctxq_cli.partition import mask_structure

log = logging.getLogger(__name__)

PATTERNS = ("mask", "pixel", "block")


def withhold(observed: np.ndarray, domain: np.ndarray, fraction: float, pattern: str = "mask",
             seed: int = 0, block: int = 8) -> np.ndarray:
    """Cells to hide, (T, C, H, W) bool ⊆ observed ∧ domain."""
    if not 0 < fraction < 1:
        raise CtxqError(f"--withhold must be between 0 and 1, not {fraction}")
    if pattern not in PATTERNS:
        raise CtxqError(f"--withhold-pattern must be one of {', '.join(PATTERNS)}, "
                        f"not '{pattern}'")
    rng = np.random.default_rng(seed)
    cells = observed.any(axis=1) & domain[None]            # (T, H, W)
    if pattern == "mask" and mask_structure(cells, domain).scattered:
        log.info("the gaps are scattered cells; withholding scattered cells like them")
        pattern = "pixel"
    if pattern == "mask":
        hidden = _like_real_gaps(cells, fraction, rng)
        if hidden is None:
            log.warning("the observation mask does not change in time; withholding blocks "
                        "instead of other frames' gaps")
            pattern = "block"
    if pattern == "pixel":
        hidden = cells & (rng.random(cells.shape) < fraction)
    elif pattern == "block":
        hidden = cells & _blocks(cells.shape, block, fraction, rng)
    return observed & hidden[:, None]


def _like_real_gaps(cells: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray | None:
    """Other frames' gaps laid on frames in random order until the fraction is reached."""
    t = len(cells)
    total = int(cells.sum())
    hidden = np.zeros_like(cells)
    if t < 2:
        return None
    count = 0
    useful = False
    for frame in rng.permutation(t):
        if count >= fraction * total:
            break
        donor = int(rng.integers(t - 1))
        donor += donor >= frame                             # any frame but this one
        new = cells[frame] & ~cells[donor]
        useful |= bool(new.any())
        hidden[frame] = new
        count += int(new.sum())
    return hidden if useful else None


def _blocks(shape: tuple[int, int, int], size: int, fraction: float,
            rng: np.random.Generator) -> np.ndarray:
    """Square blocks of side ``size`` on a random offset, each kept with probability f."""
    t, h, w = shape
    ny, nx = -(-h // size) + 1, -(-w // size) + 1
    chosen = rng.random((t, ny, nx)) < fraction
    tiles = np.repeat(np.repeat(chosen, size, axis=1), size, axis=2)
    oy, ox = rng.integers(size), rng.integers(size)
    return tiles[:, oy:oy + h, ox:ox + w]
