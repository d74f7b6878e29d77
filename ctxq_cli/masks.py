"""Observation masks and domains.

The observation mask is the data's own missing cells (CF fill values, NaN, inf, out of the
valid range; see :mod:`ctxq_cli.cf`), intersected with ``--mask FILE`` when given: a 0/1
``mask`` variable (static or one frame per time step) or the named variables' non-missing
cells. The domain is the set of grid cells that may be filled and scored: ``--domain FILE``
when given (a 0/1 variable, or a CF flag variable read by meaning), else every cell observed at
least once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ctxq_cli import flags, layout, record, stored
from ctxq_cli.errors import CtxqError
from ctxq_cli.record import file_format

log = logging.getLogger(__name__)


MASK_VARIABLE = record.MASK_VARIABLE
DOMAIN_VARIABLES = ("domain", "mask", "lsm", "land_sea_mask", "sea_mask", "valid")


def mask_reader(path: Path, names: Sequence[str], frames: int, grid: tuple[int, int]
                ) -> Callable[[int, int], np.ndarray]:
    """Frames [a, b) of a mask file for a record of ``frames`` frames of variables ``names``
    on ``grid`` (or its single static frame), as read_mask shapes them."""
    if file_format(path) == "netcdf":
        with stored.open_netcdf(path) as ds:
            var = ds.variables.get(MASK_VARIABLE)
            if var is not None:
                dims, shape = tuple(var.dimensions), tuple(var.shape)
                time_axis = layout.time_axis_of(path, MASK_VARIABLE, dims, shape, {
                    d: stored.nc_attrs(ds.variables[d]) for d in dims if d in ds.variables})
                if time_axis is not None and shape[time_axis] == frames > 1:
                    attrs = stored.nc_attrs(var)

                    def read(a: int, b: int) -> np.ndarray:
                        with stored.open_netcdf(path) as ds:
                            where = tuple(slice(a, b) if i == time_axis else slice(None)
                                          for i in range(len(dims)))
                            values = stored.read_values(path, ds.variables[MASK_VARIABLE],
                                                        where)
                        raw = stored.RawVariable(values, attrs, dims, True)
                        return mask_to_internal(path, MASK_VARIABLE,
                                                 mask_values(path, MASK_VARIABLE, raw), dims)

                    return read
    whole = read_mask(path, names)
    if whole.shape[0] not in (1, frames) or whole.shape[-2:] != grid:
        raise CtxqError(f"{path}: mask shape ({whole.shape[0]}, {whole.shape[-2]}, "
                        f"{whole.shape[-1]}) does not match data '{names[0]}' shape "
                        f"({frames}, {grid[0]}, {grid[1]})")
    return lambda a, b: whole if whole.shape[0] == 1 else whole[a:b]


def mask_values(path: Path, name: str, var: stored.RawVariable) -> np.ndarray:
    """A 0/1/NaN mask variable as booleans (True = observed)."""
    if getattr(var.values.dtype, "kind", "O") == "b":
        return var.values.astype(bool)
    dec = stored.decode_variable(path, name, var.values, var.attrs, var.default_fill)
    good = dec.values[~dec.missing]
    bad = good[(good != 0) & (good != 1)]
    if bad.size:
        raise CtxqError(f"{path}: variable '{name}' has values other than 0/1/NaN "
                        f"(e.g. {bad.flat[0]:g})")
    return (dec.values == 1) & ~dec.missing


def read_mask(path: Path, names: Sequence[str]) -> np.ndarray:
    """Read an observation mask: variable ``mask``, or the named variables' non-missing cells.

    Returns booleans of shape (T, 1, H, W), (T, C, H, W) or (1, 1, H, W) for a static mask.
    """
    found, available = stored.read_raw(path, [MASK_VARIABLE, *names])
    if MASK_VARIABLE in found:
        var = found[MASK_VARIABLE]
        return mask_to_internal(path, MASK_VARIABLE, mask_values(path, MASK_VARIABLE, var),
                                 var.dims)
    if not all(n in found for n in names):
        raise CtxqError(f"{path}: no variable 'mask' or '{names[0]}' (available: "
                        f"{', '.join(available) or 'none'})")
    per = []
    for n in names:
        var = found[n]
        seen = ~stored.decode_variable(path, n, var.values, var.attrs, var.default_fill).missing
        per.append(mask_to_internal(path, n, seen, var.dims)[:, 0])
    if len({p.shape for p in per}) > 1:
        raise CtxqError(f"{path}: variables {', '.join(names)} differ in shape")
    return np.stack(per, axis=1)


def mask_to_internal(path: Path, name: str, mask: np.ndarray,
                      dims: tuple[str, ...]) -> np.ndarray:
    """A mask array as (T, 1, H, W); a 2-D mask becomes one static frame."""
    time_axis = layout.time_axis_of(path, name, dims, mask.shape)
    return layout.to_internal(mask, time_axis)[:, None]


def apply_mask(values: np.ndarray, observed: np.ndarray, mask: np.ndarray, mask_path: Path,
               data_path: Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Values and observed cells (T, C, H, W) of variable ``name`` of ``data_path``
    intersected with a mask file's (broadcast over time and variables)."""
    t, c, h, w = values.shape
    mt, mc, mh, mw = mask.shape
    if (mh, mw) != (h, w) or mt not in (1, t) or mc not in (1, c):
        raise CtxqError(f"{mask_path}: mask shape ({mt}, {mh}, {mw}) does not match data "
                        f"'{name}' shape ({t}, {h}, {w})")
    mask = np.broadcast_to(mask, observed.shape)
    absent = (mask & ~observed).sum()
    if absent:
        log.warning("%s: %d cells marked observed have no value in %s; treated as missing",
                    mask_path, int(absent), data_path)
    observed = observed & mask
    return np.where(observed, values, 0).astype(values.dtype), observed


def read_domain(path: Path | str, grid: tuple[int, int],
                meanings: Sequence[str] | None = None) -> np.ndarray:
    """Read a 2-D domain mask (nonzero = inside, to be filled and scored) of the given grid.

    A CF flag variable (a land/sea ``mask`` with ``flag_meanings``) is read by meaning: the
    cells flagged with one of ``meanings``, by default the water ones (:mod:`ctxq_cli.flags`).
    """
    path = Path(path)
    found, available = stored.read_raw(path, DOMAIN_VARIABLES)
    if not found and file_format(path) == "netcdf":
        candidates = list(record.data_variables(record.open_dataset(path)))
        if len(candidates) == 1:
            found, _ = stored.read_raw(path, candidates)
    if not found:
        raise CtxqError(f"{path}: name the domain variable 'domain' (found: "
                        f"{', '.join(available) or 'none'})")
    name, var = next(iter(found.items()))
    dec = stored.decode_variable(path, name, var.values, var.attrs, var.default_fill)
    squeezed = dec.values.reshape([n for n in dec.values.shape if n > 1] or [1])
    if squeezed.shape != tuple(grid):
        raise CtxqError(f"{path}: domain '{name}' has shape {dec.values.shape}, data grid is "
                        f"{tuple(grid)}")
    if not flags.is_flag_variable(var.attrs):
        if meanings:
            raise CtxqError(f"{path}: domain '{name}' is not a CF flag variable (no "
                            "flag_meanings); --domain-flags needs one")
        inside = (squeezed != 0) & ~dec.missing.reshape(squeezed.shape)
    else:
        try:
            cells, kept = flags.cells_meaning(var.values, var.attrs,
                                              None if meanings is None else set(meanings))
        except ValueError as exc:
            raise CtxqError(f"{path}: flag variable '{name}': {exc}") from None
        if not kept:
            raise CtxqError(f"{path}: flag variable '{name}' has none of the meanings "
                            f"{', '.join(meanings or ['of water'])} (it has: "
                            f"{var.attrs['flag_meanings']})")
        inside = cells.reshape(squeezed.shape) & ~dec.missing.reshape(squeezed.shape)
        log.info("%s: domain from flag variable '%s': cells flagged %s", path, name,
                 " or ".join(kept))
    if not inside.any():
        raise CtxqError(f"{path}: domain '{name}' has no cell inside")
    return inside


def observed_domain(observed: np.ndarray) -> np.ndarray:
    """Cells observed at least once (any time, any variable): the default domain, (H, W)."""
    return observed.any(axis=(0, 1))
