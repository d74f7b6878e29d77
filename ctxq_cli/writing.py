"""Writing outputs that mirror their input: the same dims in the same order, coordinates,
attributes and packing, ensemble members along CF's ``realization`` dimension; one file, or
one per input file of a record, written range by range and atomically
(:mod:`ctxq_cli.safe_output`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import layout, safe_output
from ctxq_cli.cf import PACKING_ATTRS, Encoding, encode
from ctxq_cli.errors import CtxqError
from ctxq_cli.reading import Coordinate, Field

MEMBER_DIM = "realization"     # CF's name for the dimension of ensemble members


@dataclass
class OutputVariable:
    """One variable to write: internal (T, H, W) or (K, T, H, W) values, NaN = fill.

    For :func:`open_output` the values come later; a member variable's leading axis still
    says how many members there are.
    """

    name: str
    values: np.ndarray | None
    attrs: dict[str, Any]
    member_dim: bool = False
    encoding: Encoding = field(default_factory=lambda: Encoding("float32", -9999.0))


def history_line(command: str, version: str) -> str:
    """One CF history entry: UTC time, command line and version."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{stamp}: {command} (ctxq {version})"


def on_disk(fld: Field, values: np.ndarray) -> np.ndarray:
    """Internal (T, H, W) values in the variable's on-disk layout (T frames)."""
    return layout.to_disk(values, fld.shape, fld.time_axis)


def write_output(path: Path | str, template: Field, variables: Sequence[OutputVariable],
                 global_attrs: dict[str, Any], history: str) -> None:
    """Write variables on the template's grid: NPZ for a ``.npz`` path, else NetCDF-4."""
    with open_output(path, template, variables, history) as out:
        out.write(0, {v.name: v.values for v in variables})
        out.attributes(global_attrs)


class OutputWriter:
    """Receives an output's variables range of frames by range of frames (see open_output)."""

    def __init__(self, path: Path, template: Field, variables: Sequence[OutputVariable]) -> None:
        self.path, self.template = path, template
        self.variables = {v.name: v for v in variables}
        self.attrs: dict[str, Any] = {}
        self.pending: dict[str, list[np.ndarray]] = {v.name: [] for v in variables}
        self.dataset: Any = None    # an open netCDF4.Dataset when writing NetCDF

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write internal (n, H, W) or (K, n, H, W) arrays at frames [start, start + n)."""
        for name, values in arrays.items():
            var = self.variables[name]
            if self.dataset is None:
                self.pending[name].append(values)
                continue
            nc = self.dataset.variables[name]
            enc = var.encoding
            members = values if var.member_dim else values[None]
            for i, member in enumerate(members):
                disk = on_disk(self.template, member)
                where: list[Any] = [slice(None)] * disk.ndim
                if self.template.time_axis is not None:
                    where[self.template.time_axis] = slice(start, start + member.shape[0])
                if var.member_dim:
                    where.insert(0, i)
                with safe_output.write_errors(self.path):
                    nc[tuple(where)] = encode(disk, np.isnan(disk), enc)

    def attributes(self, attrs: dict[str, Any]) -> None:
        """Global attributes to add (known, say, only once every frame is written)."""
        self.attrs.update(attrs)
        if self.dataset is not None:
            with safe_output.write_errors(self.path):
                self.dataset.setncatts(attrs)


@contextlib.contextmanager
def open_output(path: Path | str, template: Field, variables: Sequence[OutputVariable],
                history: str) -> Iterator[OutputWriter]:
    """An output file on the template's grid, written range by range, in place atomically.

    NetCDF-4 variables are written as the ranges come, so memory follows the range; an NPZ
    archive is compressed as a whole and so gathers the ranges first. Nothing appears at
    ``path`` unless the block completes.
    """
    path = Path(path)
    writer = OutputWriter(path, template, variables)
    with safe_output.atomic_path(path, writes_only=False) as tmp:
        if path.suffix.lower() == ".npz":
            yield writer
            with safe_output.write_errors(path):
                _write_npz(tmp, template, writer)
        else:
            import netCDF4

            # Each chunk is written once, in order, so HDF5's chunk cache (64 MiB for every
            # variable, filling as the file grows) would only hold memory.
            previous = netCDF4.get_chunk_cache()
            netCDF4.set_chunk_cache(1 << 20, 1, 1.0)
            try:
                with safe_output.write_errors(path):
                    ds = netCDF4.Dataset(tmp, "w", format="NETCDF4")
                    _define_netcdf(ds, template, variables, history)
                writer.dataset = ds
                try:
                    yield writer
                finally:
                    with safe_output.write_errors(path):
                        ds.close()
            finally:
                netCDF4.set_chunk_cache(*previous)


def part_template(template: Field, index: int) -> Field:
    """The template of one input file of a record: its frames, time coordinate and global
    attributes; the rest (grid, variables, other coordinates) the record's."""
    part = template.parts[index]
    start = sum(p.frames for p in template.parts[:index])
    axis = template.time_axis
    time_dim = template.dims[axis] if axis is not None else None
    coords = []
    for coord in template.coords:
        if part.time is not None and coord.name == part.time.name:
            coord = part.time
        elif time_dim in coord.dims:
            where = tuple(slice(start, start + part.frames) if d == time_dim else slice(None)
                          for d in coord.dims)
            coord = Coordinate(coord.name, coord.dims, coord.values[where], coord.attrs)
        coords.append(coord)
    shape = tuple(part.frames if i == axis else n for i, n in enumerate(template.shape))
    return replace(template, path=part.path, shape=shape, coords=coords,
                   global_attrs=dict(part.global_attrs), parts=[part])


class SplitWriter:
    """Receives a record's frames and writes each input file's frames to its own output.

    An output is created when its first frames arrive and closed when its last are written,
    so only one or two are open at a time; global attributes are added to every output at
    the end, with the frames without observations counted per output.
    """

    def __init__(self, outputs: Sequence[tuple[Path, Path]], template: Field,
                 variables: Sequence[OutputVariable], history: str) -> None:
        self.outputs = list(outputs)          # (path, temporary path) per input file
        self.templates = [part_template(template, i) for i in range(len(template.parts))]
        self.starts = np.cumsum([0] + [p.frames for p in template.parts]).tolist()
        self.variables, self.history = list(variables), history
        self.writers: dict[int, OutputWriter] = {}
        self.written = [0] * len(self.outputs)
        self.attrs: dict[str, Any] = {}

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Write internal (n, H, W) or (K, n, H, W) arrays at record frames [start, start + n)."""
        n = next(iter(arrays.values())).shape[-3]
        for i, (lo, hi) in enumerate(zip(self.starts[:-1], self.starts[1:])):
            a, b = max(start, lo), min(start + n, hi)
            if a >= b:
                continue
            writer = self.writers.get(i) or self._open(i)
            writer.write(a - lo, {k: v[..., a - start:b - start, :, :] for k, v in arrays.items()})
            self.written[i] += b - a
            if self.written[i] == hi - lo:
                self._close(i)

    def attributes(self, attrs: dict[str, Any]) -> None:
        """Global attributes for every output (added when the last frames are written)."""
        self.attrs.update(attrs)

    def _open(self, i: int) -> OutputWriter:
        """Create output ``i`` in its temporary path."""
        import netCDF4

        path, tmp = self.outputs[i]
        writer = OutputWriter(path, self.templates[i], self.variables)
        with safe_output.write_errors(path):
            writer.dataset = netCDF4.Dataset(tmp, "w", format="NETCDF4")
            _define_netcdf(writer.dataset, self.templates[i], self.variables, self.history)
        self.writers[i] = writer
        return writer

    def _close(self, i: int) -> None:
        """Close output ``i``."""
        writer = self.writers.pop(i)
        with safe_output.write_errors(writer.path):
            writer.dataset.close()

    def finish(self) -> None:
        """Add the global attributes to every output, each with its own frames without
        observations (indices counted from its first frame)."""
        import netCDF4

        unwritten = [str(p) for (p, _), w in zip(self.outputs, self.written) if not w]
        if unwritten:
            raise CtxqError(f"{unwritten[0]}: no frame was written")
        empty = np.asarray(self.attrs.get("ctxq_empty_frame_indices", []), dtype=np.int32)
        for (path, tmp), lo, hi in zip(self.outputs, self.starts[:-1], self.starts[1:]):
            attrs = {k: v for k, v in self.attrs.items() if k != "ctxq_empty_frame_indices"}
            own = empty[(empty >= lo) & (empty < hi)] - lo
            attrs["ctxq_frames_without_observations"] = len(own)
            if len(own):
                attrs["ctxq_empty_frame_indices"] = own.astype(np.int32)
            with safe_output.write_errors(path), netCDF4.Dataset(tmp, "a") as ds:
                ds.setncatts(attrs)

    def close(self) -> None:
        """Close whatever is still open (after a failure)."""
        for i in list(self.writers):
            self._close(i)


@contextlib.contextmanager
def open_outputs(paths: Sequence[Path], template: Field, variables: Sequence[OutputVariable],
                 history: str) -> Iterator[SplitWriter]:
    """One NetCDF output per input file of the template's record (``paths`` in the record's
    order), written range by range. Nothing appears at any path unless the block completes."""
    import netCDF4

    if len(paths) != len(template.parts):
        raise ValueError(f"{len(paths)} outputs for {len(template.parts)} input files")
    previous = netCDF4.get_chunk_cache()
    netCDF4.set_chunk_cache(1 << 20, 1, 1.0)    # each chunk is written once (see open_output)
    try:
        with contextlib.ExitStack() as stack:
            outputs = [(Path(p), stack.enter_context(safe_output.atomic_path(p, writes_only=False)))
                       for p in paths]
            writer = SplitWriter(outputs, template, variables, history)
            try:
                yield writer
            finally:
                writer.close()
            writer.finish()
    finally:
        netCDF4.set_chunk_cache(*previous)


def _write_npz(tmp: Path, template: Field, writer: OutputWriter) -> None:
    """Write the gathered arrays (NaN = fill) with a JSON-free, pickle-free layout."""
    arrays: dict[str, np.ndarray] = {}
    for name, parts in writer.pending.items():
        var = writer.variables[name]
        vals = np.concatenate(parts, axis=1 if var.member_dim else 0)
        if var.member_dim:
            arrays[name] = np.stack([on_disk(template, v) for v in vals])
        else:
            arrays[name] = on_disk(template, vals)
    for key, value in writer.attrs.items():
        arrays[f"attr_{key}"] = np.asarray(str(value))
    with open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)


def _define_netcdf(ds: Any, template: Field, variables: Sequence[OutputVariable],
                   history: str) -> None:
    """Dims, coordinates, attributes and empty variables mirroring the template."""
    attrs = dict(template.global_attrs)
    old = str(attrs.pop("history", "")).strip()
    attrs["history"] = history + ("\n" + old if old else "")
    ds.setncatts({k: v for k, v in attrs.items()})
    for dim, size in zip(template.dims, template.shape):
        ds.createDimension(dim, None if dim in template.unlimited else size)
    if any(v.member_dim for v in variables):
        k = next(v.values.shape[0] for v in variables if v.member_dim)
        ds.createDimension(MEMBER_DIM, k)
        mvar = ds.createVariable(MEMBER_DIM, "i4", (MEMBER_DIM,))
        mvar[:] = np.arange(k)
        mvar.setncatts({"standard_name": "realization", "long_name": "ensemble member"})
    for coord in template.coords:
        fill = coord.attrs.get("_FillValue")
        cvar = ds.createVariable(coord.name, coord.values.dtype, coord.dims, fill_value=fill)
        cvar.setncatts({k: v for k, v in coord.attrs.items() if k != "_FillValue"})
        cvar[...] = coord.values
    for var in variables:
        dims = ((MEMBER_DIM,) if var.member_dim else ()) + tuple(template.dims)
        enc = var.encoding
        nc = ds.createVariable(var.name, enc.dtype, dims, zlib=True, complevel=4,
                               fill_value=enc.fill_value)
        nc.set_auto_maskandscale(False)
        nc.setncatts({**{k: v for k, v in enc.attrs.items() if k != "_FillValue"},
                      **{k: v for k, v in var.attrs.items() if k not in PACKING_ATTRS}})
