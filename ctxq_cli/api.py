"""The Python API: train a denoiser and fill gaps from a notebook, on files, numpy arrays or
xarray objects, through the same code as the command line.

    import xarray as xr
    from ctxq_cli import api

    model = api.load_model("denoiser.safetensors")
    sst = xr.open_dataset("sst_2020.nc")["sst"]
    filled = api.impute(sst, model, ensemble=32)    # Dataset: sst, sst_std, sst_flag

:func:`impute` returns the variables ``ctxq impute`` writes, decoded as
``xarray.open_dataset`` would decode that file: the same values, bit for bit, for the same
input, options and seed. The spread is calibrated unless ``calibrate=False``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import layout, masks, reading, record, writing
from ctxq_cli.cf import encode
from ctxq_cli.errors import CtxqError, OptionError
from ctxq_cli.fill import ImputeOptions, fill_record

log = logging.getLogger(__name__)

__all__ = ["ImputeOptions", "load_model", "open_record", "impute", "train_denoiser"]


def device(name: str = "auto") -> Any:
    """A torch device: 'auto' is CUDA when present, else the CPU."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise CtxqError(f"--device must be auto, cpu or cuda, not '{name}'")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CtxqError(f"--device {name}: no CUDA device is available")
    return torch.device(name)


def load_model(path: str | Path, on: str = "auto") -> Any:
    """A trained denoiser from its safetensors checkpoint."""
    from ctxq_cli.model import DenoiserModel

    return DenoiserModel.load(path, device(on))


def open_record(data: Any, variables: Sequence[str] | None = None, *,
                mask: str | Path | None = None, default: Sequence[str] = (),
                quality: Any = None, selection: record.Selection | None = None
                ) -> reading.FieldSource:
    """A record to read frames from: a file, files, a glob, a directory, a zarr store, an
    xarray DataArray or Dataset, or a numpy array (T, H, W) or (T, C, H, W), NaN = missing."""
    import xarray as xr

    if isinstance(data, np.ndarray):
        data = _from_numpy(data, variables)
    if isinstance(data, (xr.DataArray, xr.Dataset)):
        if selection is not None and selection.group:
            raise ValueError("a group is chosen in files; pass the group's Dataset instead")
        part = record.xarray_part(data)
        source = reading.record_source([part], variables, default, quality, selection)
        if mask is not None:
            source.mask = masks.mask_reader(Path(mask), source.template.names, source.frames,
                                            source.grid)
            source.mask_path = Path(mask)
        return source
    return reading.open_field(data, variables, mask, default, quality, selection)


def _from_numpy(values: np.ndarray, variables: Sequence[str] | None) -> Any:
    """A numpy array as a Dataset with dims (time, y, x) and one variable per channel."""
    import xarray as xr

    if values.ndim == 3:
        values = values[:, None]
    if values.ndim != 4:
        raise ValueError(f"expected an array (T, H, W) or (T, C, H, W), got shape "
                         f"{values.shape}")
    names = list(variables or (["data"] if values.shape[1] == 1 else
                               [f"data{c}" for c in range(values.shape[1])]))
    if len(names) != values.shape[1]:
        raise ValueError(f"{len(names)} variable names for {values.shape[1]} channels")
    return xr.Dataset({n: (("time", "y", "x"), values[:, c]) for c, n in enumerate(names)})


def impute(data: Any, model: Any | str | Path, variables: Sequence[str] | None = None, *,
           mask: str | Path | None = None, domain: np.ndarray | None = None,
           quality: Any = None, selection: record.Selection | None = None,
           options: ImputeOptions | None = None, on: str = "auto", progress: bool = False,
           **fields: Any) -> Any:
    """Fill the gaps of ``data`` (anything :func:`open_record` takes) with ``model`` (loaded,
    or the path of its checkpoint).

    Options are an :class:`ImputeOptions` or its fields as keywords (``ensemble=32``,
    ``seed=0``, ``members=True`` …). Returns an ``xarray.Dataset`` with, per variable, the
    mean, ``VAR_std``, ``VAR_flag`` (0 observed, 1 filled) and with ``members`` the ensemble
    along ``realization``; held in memory, so for records larger than memory use files and
    ``ctxq impute``.
    """
    if options is not None and fields:
        raise TypeError("give options or their fields as keywords, not both")
    options = options or ImputeOptions(**fields)
    checkpoint = ""
    if isinstance(model, (str, Path)):
        checkpoint, model = str(model), load_model(model, on)
    source = open_record(data, variables, mask=mask, default=model.variables,
                         quality=quality, selection=selection)
    sink = DatasetOutput()
    fill_record(model, source, sink.open, options, device(on), domain, progress, checkpoint)
    return sink.dataset


class DatasetOutput:
    """An output that gathers a record's frames into an xarray Dataset (see writing.OutputWriter).

    Arrays are encoded as they would be written to NetCDF and then decoded by xarray, so that
    the Dataset equals what ``xarray.open_dataset`` reads from ``ctxq impute``'s file.
    """

    def __init__(self) -> None:
        self.dataset: Any = None
        self.template: reading.Field | None = None
        self.variables: dict[str, writing.OutputVariable] = {}
        self.arrays: dict[str, np.ndarray] = {}
        self.attrs: dict[str, Any] = {}

    @contextlib.contextmanager
    def open(self, template: reading.Field, variables: list[writing.OutputVariable]
             ) -> Iterator[DatasetOutput]:
        """Receive the record's frames; the Dataset is built when the block completes."""
        self.template, self.variables = template, {v.name: v for v in variables}
        for var in variables:
            shape = ((var.values.shape[0],) if var.member_dim else ()) + template.shape
            self.arrays[var.name] = np.empty(shape, np.dtype(var.encoding.dtype))
        yield self
        self.dataset = self._build()

    def write(self, start: int, arrays: dict[str, np.ndarray]) -> None:
        """Store internal (n, H, W) or (K, n, H, W) arrays at frames [start, start + n)."""
        assert self.template is not None
        axis = self.template.time_axis
        for name, values in arrays.items():
            var = self.variables[name]
            members = values if var.member_dim else values[None]
            for i, member in enumerate(members):
                disk = layout.to_disk(member, _with_frames(self.template, len(member)), axis)
                where: list[Any] = [slice(None)] * disk.ndim
                if axis is not None:
                    where[axis] = slice(start, start + member.shape[0])
                target = self.arrays[name][i] if var.member_dim else self.arrays[name]
                target[tuple(where)] = encode(disk, np.isnan(disk), var.encoding)

    def attributes(self, attrs: dict[str, Any]) -> None:
        """Global attributes to add."""
        self.attrs.update(attrs)

    def _build(self) -> Any:
        """The Dataset as on disk, decoded by xarray."""
        import xarray as xr

        from ctxq_cli import __version__
        from ctxq_cli.cf import PACKING_ATTRS

        template = self.template
        assert template is not None
        history = writing.history_line("ctxq_cli.api.impute", __version__)
        out = xr.Dataset(attrs={**template.global_attrs, **self.attrs, "history": history})
        if any(v.member_dim for v in self.variables.values()):
            k = next(len(a) for n, a in self.arrays.items() if self.variables[n].member_dim)
            dim = writing.MEMBER_DIM
            out[dim] = xr.Variable((dim,), np.arange(k, dtype=np.int32),
                                   {"standard_name": "realization", "long_name": "ensemble member"})
        for coord in template.coords:
            out[coord.name] = xr.Variable(coord.dims, coord.values, coord.attrs)
        for name, var in self.variables.items():
            dims = ((writing.MEMBER_DIM,) if var.member_dim else ()) + tuple(template.dims)
            attrs = {**var.encoding.attrs,
                     **{k: v for k, v in var.attrs.items() if k not in PACKING_ATTRS}}
            out[name] = xr.Variable(dims, self.arrays[name], attrs)
        return xr.decode_cf(out)


def _with_frames(template: reading.Field, frames: int) -> tuple[int, ...]:
    """The template's on-disk shape with ``frames`` frames."""
    axis = template.time_axis
    return tuple(frames if i == axis else n for i, n in enumerate(template.shape))


MEMORY_GB = 4.0     # frames (and the smoother's states) held in memory while training


def train_denoiser(data: Any, variables: Sequence[str] | None = None, *,
                   output: str | Path | None = None, mask: str | Path | None = None,
                   domain: np.ndarray | None = None, quality: Any = None,
                   selection: record.Selection | None = None, on: str = "auto",
                   progress: bool = False, memory_gb: float = MEMORY_GB, **options: Any) -> Any:
    """Train a denoiser on ``data`` (anything :func:`open_record` takes); ``options`` are
    :class:`~ctxq_cli.train.TrainOptions` fields (``steps``, ``max_minutes``, ``window`` …).
    At most ``memory_gb`` of frames (and as much of the smoother's states) are held in memory;
    a larger record is read from its files as training needs it (passes over it read about 64
    MiB at a time beyond that). The model is saved to
    ``output`` when given, and returned."""
    from ctxq_cli.train import TrainOptions

    source = open_record(data, variables, mask=mask, quality=quality, selection=selection)
    rec = TrainingRecord.open(source, memory_gb, domain)
    model = train_field(rec, TrainOptions(**options), device(on), progress=progress)
    if output is not None:
        model.save(output)
    return model


@dataclass
class TrainingRecord:
    """A record opened for training: its frames (read on demand, at most ``memory`` bytes of
    them held), metadata, domain and the sums of its observations, from a first pass over it
    (training makes a few more: :mod:`ctxq_cli.frames`)."""

    source: Any                  # a CachedFrames over the record's FieldSource
    template: reading.Field      # names, attributes, coordinates; no frames
    domain: np.ndarray           # (H, W)
    sums: Any                    # frames.ObservedSums of every observation
    memory: float                # bytes

    @classmethod
    def open(cls, source: reading.FieldSource, memory_gb: float = MEMORY_GB,
             domain: np.ndarray | None = None) -> TrainingRecord:
        """Read a record once, a range of frames at a time: the domain (``domain``, or the cells
        observed at least once) and the sums of the observations."""
        from ctxq_cli.frames import CachedFrames, ObservedSums, chunks

        memory = memory_gb * 1e9
        cached = CachedFrames(source, memory)
        sums = ObservedSums()
        seen = np.zeros(source.grid, bool)
        for _, _, values, observed in chunks(cached.read, cached.frames):
            sums.add(values, observed)
            seen |= observed.any(axis=(0, 1))
        if source.quality is not None:
            log.info("%s: %s", source.template.path, source.describe_quality())
        return cls(cached, source.template, seen if domain is None else np.asarray(domain, bool),
                   sums, memory)

    @property
    def frames(self) -> int:
        """Number of frames."""
        return self.source.frames

    def describe(self) -> str:
        """'sst: 365 frames of 100×120, 43.1 % observed'."""
        h, w = self.domain.shape
        cells = self.frames * len(self.template.names) * h * w
        frac = int(self.sums.count.sum()) / cells if cells else 0.0
        return (f"{', '.join(self.template.names)}: {self.frames} frames of {h}×{w}, "
                f"{100 * frac:.1f} % observed")


def read_training_record(data: Any, read: reading.ReadOptions = reading.ReadOptions(),
                         memory_gb: float = MEMORY_GB) -> TrainingRecord:
    """A record opened for training, and its domain: the domain file's, or the cells observed
    at least once."""
    source = reading.open_field(data, read.variables, read.mask, quality=read.quality,
                                selection=read.selection)
    rec = TrainingRecord.open(source, memory_gb, read.read_domain(source.grid))
    log.info("%s: %s", rec.template.path, rec.describe())
    outside = int((~rec.domain).sum())
    if outside:
        log.info("%d of %d grid cells are outside the domain (%s); they stay fill", outside,
                 rec.domain.size, "from the domain file" if read.domain else "never observed")
    return rec


def check_trainable(rec: TrainingRecord, options: Any) -> None:
    """A record to train on has observations and at least a window's frames."""
    path = rec.template.path
    if not rec.sums.count.sum():
        raise CtxqError(f"{path}: variable '{rec.template.names[0]}' has no observed value at "
                        "all; nothing to learn from")
    if rec.frames < options.window:
        raise OptionError(f"{path}: {rec.frames} frames, fewer than "
                          f"{type(options).__name__}.window {options.window}")


def train_mask_prior_field(rec: TrainingRecord, options: Any, on: Any, log_file: Any = None,
                           progress: bool = False, control: Any = None) -> Any:
    """A mask prior trained on a record's observation masks."""
    from ctxq_cli.mask_structure import fidelity_table
    from ctxq_cli.train import train_mask_prior

    check_trainable(rec, options)
    model = train_mask_prior(rec.source, rec.domain, options, on, log_file, progress, control)
    model.training["data"] = str(rec.template.path)
    log.info("real masks vs masks sampled from the prior (%d windows each):\n%s",
             model.fidelity["samples"], fidelity_table(model.fidelity))
    return model


def train_field(rec: TrainingRecord, options: Any, on: Any, log_file: Any = None,
                progress: bool = False, control: Any = None, prior: Any = None) -> Any:
    """A denoiser trained on an opened record, knowing what data it was trained on."""
    from ctxq_cli import provenance
    from ctxq_cli.train import train_denoiser as train

    check_trainable(rec, options)
    if (options.partition == "prior") != (prior is not None):
        raise OptionError("TrainOptions.partition 'prior' and a mask prior go together")
    fld = rec.template
    times, unit = fld.times()
    log.info("%s: %s", fld.path, reading.describe_times(times, unit))
    model = train(rec.source, rec.domain, fld.names, options, on, log_file, progress, control,
                  prior, times=times, time_unit=unit, memory=rec.memory)
    model.training["data"] = str(fld.path)
    model.data = provenance.describe(fld.names, fld.var_attrs, fld.coords, fld.grid_dims,
                                     rec.sums)
    return model
