"""A model refuses data unlike what it was trained on: units, quantity, grid, scale."""

import numpy as np
import pytest

from ctxq_cli.errors import CtxqError
from ctxq_cli.frames import ObservedSums
from ctxq_cli.provenance import TrainingData, check, describe
from ctxq_cli.reading import Coordinate


def facts(shift=0.0, units="K", scale=1.0, offset=0.0, standard_name="sea_surface_temperature",
          lat_units="degrees_north"):
    """Facts of a 4-frame 6×8 field with 1-D lat/lon coordinates."""
    rng = np.random.default_rng(0)
    values = (offset + scale * rng.standard_normal((4, 1, 6, 8))).astype(np.float32)
    observed = rng.random(values.shape) < 0.5
    coords = [Coordinate("lat", ("lat",), np.arange(6) * 0.25 + shift, {"units": lat_units}),
              Coordinate("lon", ("lon",), np.arange(8) * 0.25, {"units": "degrees_east"}),
              Coordinate("time", ("time",), np.arange(4.0), {"units": "days since 2000-01-01"})]
    attrs = [{"units": units, "standard_name": standard_name}]
    sums = ObservedSums()
    sums.add(values, observed)
    return describe(["sst"], attrs, coords, ("lat", "lon"), sums)


def test_the_same_data_passes_and_the_facts_survive_json():
    trained = facts()
    assert TrainingData.from_dict(trained.to_dict()) == trained
    check(trained, facts(), "same.nc")
    check(trained, facts(lat_units="degree_north"), "spelling.nc")   # CF allows both


def test_the_corners_and_step_describe_the_grid():
    lat = next(c for c in facts().grid if c.name == "lat")
    assert lat.corners == (0.0, 1.25) and lat.step == 0.25
    assert [c.name for c in facts().grid] == ["lat", "lon"]           # time is not the grid


@pytest.mark.parametrize("other, words", [
    (dict(units="degC"), "'degC', the model was trained on 'K'"),
    (dict(standard_name="sea_water_salinity"), "'sea_water_salinity'"),
    (dict(units=None, offset=-273.15), "far from the model's training data"),
    (dict(units=None, scale=100.0), "far from the model's training data"),
    (dict(shift=20.0), "coordinate 'lat' runs 20 to 21.25, the model's grid 0 to 1.25"),
    (dict(shift=0.2), "another grid"),
])
def test_a_difference_is_refused_in_one_line_naming_it(other, words):
    with pytest.raises(CtxqError) as err:
        check(facts(), facts(**other), "other.nc")
    message = str(err.value)
    assert message.startswith("other.nc: ") and words in message and "\n" not in message


def test_a_grid_moved_by_less_than_half_a_cell_is_the_same_grid():
    check(facts(), facts(shift=0.1), "rounded.nc")


def test_another_grid_can_be_accepted_knowingly_but_not_other_units():
    check(facts(), facts(shift=20.0), "region.nc", other_grid=True)
    with pytest.raises(CtxqError):
        check(facts(), facts(shift=20.0, units="degC"), "region.nc", other_grid=True)


def test_a_season_of_the_training_record_is_not_refused():
    check(facts(), facts(offset=2.0, scale=0.3), "summer.nc")
