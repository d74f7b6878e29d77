"""Quality levels and CF flag variables."""

import numpy as np
import pytest

from ctxq_cli.flags import Quality, cells_meaning, is_flag_variable, water_meaning

GHRSST_L3 = {"flag_masks": np.array([1, 2, 4, 8, 16], np.int8),
             "flag_meanings": "water land optional_lake_surface sea_ice optional_river_surface"}
BY_VALUE = {"flag_values": np.array([1, 2], np.int8), "flag_meanings": "water land"}


def test_quality_keeps_levels_at_least_the_minimum_and_never_missing_ones():
    levels = np.array([0, 3, 4, 5, 5])
    missing = np.array([False, False, False, False, True])
    assert Quality("quality_level", 4).good(levels, missing).tolist() == [
        False, False, True, True, False]
    with pytest.raises(ValueError, match="minimum"):
        Quality("quality_level", float("nan"))


def test_water_meanings_are_understood_and_land_or_ice_are_not_water():
    assert [water_meaning(m) for m in GHRSST_L3["flag_meanings"].split()] == [
        True, False, True, False, True]
    assert water_meaning("open_sea") and not water_meaning("open_sea_with_ice_in_the_grid")


def test_flag_values_give_the_water_cells_not_every_nonzero_one():
    raw = np.array([[1, 2], [2, 1]], np.int8)
    cells, kept = cells_meaning(raw, BY_VALUE)
    assert cells.tolist() == [[True, False], [False, True]] and kept == ["water"]


def test_flag_masks_are_bits_and_land_or_ice_veto_a_cell():
    raw = np.array([1, 2, 4, 1 | 8, 16, 0], np.int8)   # water, land, lake, water+ice, river, none
    cells, _ = cells_meaning(raw, GHRSST_L3)
    assert cells.tolist() == [True, False, True, False, True, False]


def test_chosen_meanings_replace_the_default():
    raw = np.array([1, 4, 16], np.int8)
    cells, kept = cells_meaning(raw, GHRSST_L3, {"water"})
    assert cells.tolist() == [True, False, False] and kept == ["water"]


def test_a_flag_variable_is_recognised_by_its_meanings():
    assert is_flag_variable(BY_VALUE) and is_flag_variable(GHRSST_L3)
    assert not is_flag_variable({"flag_values": [1]}) and not is_flag_variable({})
    with pytest.raises(ValueError, match="3 flag codes for 2 meanings"):
        cells_meaning(np.array([1]), {"flag_values": [1, 2, 3], "flag_meanings": "a b"})
