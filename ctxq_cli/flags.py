"""Quality levels and CF flag variables: which observations to trust, which cells are water.

Satellite products say how far to trust each value in a companion variable (GHRSST's
``quality_level``: 0 no data, 1 bad … 5 best) and which cells are land, lake or sea in a CF
flag variable (``flag_values`` or ``flag_masks`` with ``flag_meanings``). ``Quality`` keeps an
observation only where its level is at least a minimum; :func:`cells_meaning` reads a flag
variable by meaning, so that a land/sea ``mask`` (1 water, 2 land) gives a domain of water
cells, not of every non-zero cell.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Meanings that name water in GHRSST and common land/sea masks (GHRSST L3 'mask': water, land,
# optional_lake_surface, sea_ice, optional_river_surface; L4: open_sea, land, open_lake, ...)
WATER_WORDS = ("water", "sea", "ocean", "lake", "river")
NOT_WATER_WORDS = ("land", "ice")


@dataclass(frozen=True)
class Quality:
    """Keep an observation where the flag variable ``variable`` is at least ``minimum``."""

    variable: str
    minimum: float

    def __post_init__(self) -> None:
        if not self.variable:
            raise ValueError("Quality: the quality variable needs a name")
        if not np.isfinite(self.minimum):
            raise ValueError(f"Quality: minimum must be a number, got {self.minimum}")

    def good(self, levels: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """Cells whose level is known and at least the minimum."""
        return ~missing & (levels >= self.minimum)


def is_flag_variable(attrs: dict[str, Any]) -> bool:
    """Whether ``attrs`` describe a CF flag variable (meanings with values or masks)."""
    return "flag_meanings" in attrs and ("flag_values" in attrs or "flag_masks" in attrs)


def water_meaning(meaning: str) -> bool:
    """Whether a flag meaning names open water (GHRSST's and common masks' spellings)."""
    words = meaning.lower()
    return (any(w in words for w in WATER_WORDS)
            and not any(w in words for w in NOT_WATER_WORDS))


def cells_meaning(raw: np.ndarray, attrs: dict[str, Any], wanted: set[str] | None = None
                  ) -> tuple[np.ndarray, list[str]]:
    """Cells of a CF flag variable whose flags include a wanted meaning, and those meanings.

    ``wanted``: the meanings to keep; by default the water ones (:func:`water_meaning`),
    excluding a cell whose flags (with ``flag_masks``) also say land or ice.
    """
    meanings = str(attrs["flag_meanings"]).split()
    keep = set(meanings) & wanted if wanted is not None else {
        m for m in meanings if water_meaning(m)}
    codes = np.atleast_1d(np.asarray(attrs.get("flag_masks", attrs.get("flag_values"))))
    if len(codes) != len(meanings):
        raise ValueError(f"{len(codes)} flag codes for {len(meanings)} meanings")
    raw = np.asarray(raw)
    integer = raw.astype(np.int64) if raw.dtype.kind in "iub" else np.nan_to_num(
        raw).astype(np.int64)
    inside = np.zeros(raw.shape, bool)
    vetoed = np.zeros(raw.shape, bool)
    bits = "flag_masks" in attrs
    for code, meaning in zip(codes.astype(np.int64), meanings):
        has = (integer & code) == code if bits else integer == code
        if meaning in keep:
            inside |= has
        elif bits and wanted is None and not water_meaning(meaning) and any(
                w in meaning.lower() for w in NOT_WATER_WORDS):
            vetoed |= has
    return inside & ~vetoed, sorted(keep)
