"""Cross-validation without truth: hide some observations, fill them, score on what was hidden.

For observation masks M_t (T frames) and a target fraction f, the hidden cells H ⊆ M are drawn
with one of three patterns:

- ``mask`` (default, after DINCAE): runs of ``RUN`` consecutive frames take the gaps of the
  frames a random offset Δ away, H_t = M_t ∧ ¬M_(t+Δ mod T), until |H| ≥ f·|M| — hidden cells
  then look like real gaps in space (clouds stay cloud-shaped) and in time (a cloud hidden at t
  is hidden at t + 1 about as often as a real one is missing). Frame-by-frame donors would leave a
  hidden cell visible in the neighbouring frames of a window, an easier fill than the real gaps:
  on Kolmogorov flow under clouds it had 0.36 RMSE against 0.50 on the real gaps. Needs masks
  that vary in time; a static mask falls back to ``block``. Scattered gaps (pixel dropout) fall
  back to ``pixel``, which hides cells just as scattered: another frame's gaps would hide
  nearly all of a sparse frame (90 % of a frame with 10 % observed), a much harder fill than
  the real one.
- ``pixel``: each observed cell is hidden with probability f.
- ``block``: square blocks of side b (the gaps' typical size) are hidden with the probability
  that hides a fraction f of the observed cells on average.

All variables of a cell are hidden together. Seeded: the same seed hides the same cells.

The spread calibration of ``impute`` hides cells of the middle frames of its input
(:func:`calibration_cells`); ``train-denoiser`` keeps the same cells of its record out of
training. A network that had trained on them would fill them better than real gaps, and the
calibrated spread would come out too narrow (on 240 frames of A1B temperature with 10 % of
cells observed: a factor of 1.36 where the real gaps asked for 1.94).

Under clouds hiding 75 % every day, the donor frames empty a few whole frames: the spread is
calibrated on about 7 consecutive frames of the 48 that lose 94 % of their cells, whose errors
are 1.4–2.0× those of the real gaps. Tried and not kept (``examples/bench_time.py --seed 1``,
Kolmogorov flow): the donors' gaps only inside square patches of the gaps' size that hide a
tenth of every frame. With persistent clouds it did better (0.603× and 0.418× DINEOF against
0.612× and 0.436×, spread/skill 1.00 and 1.08 against 0.90 and 0.86); under daily clouds
worse (0.803× against 0.778× DINEOF on new frames, spread/skill 1.21 and 1.20 against 1.11 and
0.93, 90 % coverage 0.966 and 0.963 against 0.963 and 0.945), where the smoother's
cross-validation, which hides cells the same way, then chose its neighbours over kriging.
"""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from ctxq_cli.errors import CtxqError
from ctxq_cli.mask_structure import mask_structure

log = logging.getLogger(__name__)

PATTERNS = ("mask", "pixel", "block")
RUN = 16   # consecutive frames that take their gaps from frames at one offset
CALIBRATION_FRAMES = 48      # frames of the middle of a record the spread is calibrated on
CALIBRATION_FRACTION = 0.1   # share of their observations hidden
CALIBRATION_SEED = 7919
MIN_CALIBRATION_CELLS = 50   # fewer hidden cells than this calibrate nothing


def withhold(observed: np.ndarray, domain: np.ndarray, fraction: float, pattern: str = "mask",
             seed: int = 0, block: int | None = None) -> np.ndarray:
    """Cells to hide, (T, C, H, W) bool ⊆ observed ∧ domain (blocks sized like the gaps)."""
    if not 0 < fraction < 1:
        raise CtxqError(f"--withhold must be between 0 and 1, not {fraction}")
    if pattern not in PATTERNS:
        raise CtxqError(f"--withhold-pattern must be one of {', '.join(PATTERNS)}, "
                        f"not '{pattern}'")
    rng = np.random.default_rng(seed)
    cells = observed.any(axis=1) & domain[None]            # (T, H, W)
    structure = mask_structure(cells, domain)
    if pattern == "mask" and structure.scattered:
        log.info("the gaps are scattered cells; withholding scattered cells like them")
        pattern = "pixel"
    if pattern == "mask":
        hidden = _like_real_gaps(cells, fraction, rng)
        if hidden is None:
            log.info("the observation mask does not change in time; withholding blocks "
                     "instead of other frames' gaps")
            pattern = "block"
    if pattern == "pixel":
        hidden = cells & (rng.random(cells.shape) < fraction)
    elif pattern == "block":
        hidden = cells & _blocks(cells.shape, block or structure.block_size, fraction, rng)
    return observed & hidden[:, None]


def calibration_frames(frames: int) -> slice:
    """The frames of a record of ``frames`` that the spread is calibrated on: its middle."""
    lo = max(0, (frames - CALIBRATION_FRAMES) // 2)
    return slice(lo, min(frames, lo + CALIBRATION_FRAMES))


def calibration_cells(observed: np.ndarray, domain: np.ndarray
                      ) -> tuple[slice, np.ndarray | None]:
    """The frames the spread is calibrated on and the cells hidden there (None: too few)."""
    frames = calibration_frames(len(observed))
    return frames, calibration_hidden(observed[frames], domain)


def calibration_hidden(observed: np.ndarray, domain: np.ndarray) -> np.ndarray | None:
    """The cells hidden in the calibration frames' observations ``observed`` (None: too few)."""
    hidden = withhold(observed, domain, CALIBRATION_FRACTION, "mask", CALIBRATION_SEED)
    return hidden if hidden.sum() >= MIN_CALIBRATION_CELLS else None


def mask_fingerprint(observed: np.ndarray, domain: np.ndarray) -> str:
    """A short hash of a mask inside a domain: equal hashes hide equal calibration cells."""
    digest = hashlib.sha256()
    for part in (np.asarray(observed.shape), np.packbits(observed & domain),
                 np.packbits(domain)):
        digest.update(np.ascontiguousarray(part).tobytes())
    return digest.hexdigest()[:16]


def _like_real_gaps(cells: np.ndarray, fraction: float,
                    rng: np.random.Generator) -> np.ndarray | None:
    """Runs of frames take the gaps of the frames a random offset away, until the fraction."""
    t = len(cells)
    if t < 2:
        return None
    target = fraction * int(cells.sum())
    hidden = np.zeros_like(cells)
    taken = np.zeros(t, bool)
    count = 0
    useful = False
    for start in rng.permutation(t):
        if count >= target:
            break
        offset = 1 + int(rng.integers(t - 1))               # any frame but this one
        for frame in range(start, min(start + RUN, t)):
            if count >= target:
                break
            if taken[frame]:
                continue
            new = cells[frame] & ~cells[(frame + offset) % t]
            useful |= bool(new.any())
            hidden[frame] = new
            taken[frame] = True
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
