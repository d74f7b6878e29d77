"""What a model was trained on, so that it refuses data it was not trained for.

A model applied to another variable, to other units or to another grid still produces numbers:
plausible-looking and wrong (a field in °C filled with values learned in K). A checkpoint
therefore records, for each variable, its name, units, standard name and the mean and standard
deviation of its observed values, and for each horizontal coordinate its name, units and its
values at the grid's corners. Before filling, the file's are compared with them and any
difference is refused in one line that names it.

Values are compared loosely, since a file to fill may be one season of the training record:
its mean must lie within ``MEAN_TOLERANCE`` training standard deviations of the training mean,
and its standard deviation within a factor ``STD_TOLERANCE``. Grids are compared to half a
cell: a grid moved by a cell or more is another grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli.errors import CtxqError
from ctxq_cli.frames import ObservedSums

MEAN_TOLERANCE = 5.0      # training standard deviations
STD_TOLERANCE = 10.0      # ratio either way


@dataclass(frozen=True)
class VariableFacts:
    """A variable's identity and the scale of its observed values."""

    name: str
    units: str | None
    standard_name: str | None
    mean: float
    std: float


@dataclass(frozen=True)
class CoordinateFacts:
    """A horizontal coordinate: name, units, values at the grid's corners, a typical step."""

    name: str
    units: str | None
    corners: tuple[float, ...]
    step: float


@dataclass(frozen=True)
class TrainingData:
    """The variables and the horizontal grid of the data a model was trained on."""

    variables: tuple[VariableFacts, ...]
    grid: tuple[CoordinateFacts, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the checkpoint's metadata."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainingData:
        """Inverse of :meth:`to_dict`."""
        return cls(variables=tuple(VariableFacts(**v) for v in d["variables"]),
                   grid=tuple(CoordinateFacts(**{**c, "corners": tuple(c["corners"])})
                              for c in d.get("grid", ())))


def describe(names: list[str], var_attrs: list[dict[str, Any]], coords: list[Any],
             grid_dims: tuple[str, ...], sums: ObservedSums) -> TrainingData:
    """The facts of variables ``names`` whose observations were summed in ``sums`` on a grid
    whose horizontal dims are ``grid_dims``; ``coords`` have ``name``, ``dims``, ``values``,
    ``attrs``."""
    variables = []
    for name, attrs, (_, mean, std) in zip(names, var_attrs, sums.moments()):
        variables.append(VariableFacts(
            name=name, units=_text(attrs.get("units")),
            standard_name=_text(attrs.get("standard_name")), mean=mean, std=std))
    grid = []
    for coord in sorted(coords, key=lambda c: c.name):
        dims = tuple(coord.dims)
        if not dims or not set(dims) <= set(grid_dims):
            continue
        v = np.asarray(coord.values, np.float64)
        if v.size == 0 or not np.isfinite(v).all():
            continue
        corners = v[np.ix_(*[[0, n - 1] for n in v.shape])].ravel()
        steps = np.concatenate([np.abs(np.diff(v, axis=a)).ravel() for a in range(v.ndim)
                                if v.shape[a] > 1] or [np.zeros(0)])
        grid.append(CoordinateFacts(coord.name, _text(coord.attrs.get("units")),
                                    tuple(float(x) for x in corners),
                                    float(np.median(steps)) if steps.size else 0.0))
    return TrainingData(tuple(variables), tuple(grid))


def check(trained: TrainingData, data: TrainingData, path: Path | str,
          other_grid: bool = False) -> None:
    """Refuse, in one line naming the difference, data unlike what the model was trained on.

    ``other_grid`` accepts horizontal coordinates other than the training grid's (a model used
    on another region of the same shape, knowingly).
    """
    for want, have in zip(trained.variables, data.variables):
        where = f"{path}: variable '{have.name}'"
        if want.units and have.units and not _same_units(want.units, have.units):
            raise CtxqError(f"{where} is in '{have.units}', the model was trained on "
                            f"'{want.units}'; convert the data or train a model on it")
        if (want.standard_name and have.standard_name
                and want.standard_name != have.standard_name):
            raise CtxqError(f"{where} is '{have.standard_name}', the model was trained on "
                            f"'{want.standard_name}'")
        if want.std > 0 and have.std > 0 and (
                abs(have.mean - want.mean) > MEAN_TOLERANCE * want.std
                or not 1 / STD_TOLERANCE <= have.std / want.std <= STD_TOLERANCE):
            raise CtxqError(f"{where} has values of mean {have.mean:.4g} and standard deviation "
                            f"{have.std:.4g}, far from the model's training data ({want.mean:.4g}"
                            f", {want.std:.4g}); other units or another quantity?")
    if other_grid or not trained.grid or not data.grid:
        return
    for want, have in _pairs(trained.grid, data.grid):
        if want.units and have.units and not _same_units(want.units, have.units):
            raise CtxqError(f"{path}: coordinate '{have.name}' is in '{have.units}', the "
                            f"model's grid in '{want.units}'")
        tolerance = 0.5 * max(want.step, 1e-12)
        if len(want.corners) != len(have.corners) or np.max(np.abs(
                np.subtract(want.corners, have.corners))) > tolerance:
            raise CtxqError(f"{path}: coordinate '{have.name}' runs {_span(have)}, the model's "
                            f"grid {_span(want)}; another grid (--allow-other-grid to fill it "
                            "anyway)")


def _pairs(trained: tuple[CoordinateFacts, ...], data: tuple[CoordinateFacts, ...]
           ) -> list[tuple[CoordinateFacts, CoordinateFacts]]:
    """Coordinates paired by name, else (renamed, as lat and latitude) in order of name."""
    by_name = {c.name: c for c in data}
    if all(c.name in by_name for c in trained):
        return [(c, by_name[c.name]) for c in trained]
    return list(zip(trained, data)) if len(trained) == len(data) else []


def _same_units(a: str, b: str) -> bool:
    """Equal up to spacing and CF's spellings of degrees (degrees_north = degree_north)."""
    def norm(u: str) -> str:
        return " ".join(u.replace("degrees", "degree").split())
    return norm(a) == norm(b)


def _span(c: CoordinateFacts) -> str:
    """'20 to 35.75' from the corners."""
    return f"{min(c.corners):.6g} to {max(c.corners):.6g}"


def _text(value: Any) -> str | None:
    """An attribute as text, None when absent or empty."""
    if value is None:
        return None
    text = str(value).strip()
    return text or None
