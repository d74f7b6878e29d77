"""Filling a record with a trained denoiser, from reading to writing: the one path that
``ctxq impute`` and the Python API (:mod:`ctxq_cli.api`) share.

:func:`fill_record` checks that the record is what the model was trained on (variables,
units, grid, value range), puts its frames in the model's time unit, calibrates the ensemble
spread on withheld observations, fills the record a chunk of frames at a time (tiles for large
grids) and hands each chunk to an output: a file, one file per input file, or an xarray
Dataset. Observed values are passed through unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import reading, safe_output, writing
from ctxq_cli.errors import CtxqError
from ctxq_cli.frames import ObservedSums
from ctxq_cli.options import Options, option

log = logging.getLogger(__name__)

AUTO_TILE_ABOVE = 512     # grids up to this many cells a side go through the network whole
AUTO_TILE = 256
CHUNK_BYTES = 1 << 28     # rough budget for a chunk's ensemble arrays (256 MiB)
CHECK_FRAMES = 64         # frames whose values are compared with the training data's


@dataclass(frozen=True)
class ImputeOptions(Options):
    """How to fill: ensemble size, sampler steps, seed, batching, guidance, tiling, chunking
    and calibration. Invalid values raise OptionError (a ValueError) naming the field."""

    ensemble: int = option(32, ge=1, integer=True)
    steps: int = option(1, ge=1, integer=True)
    seed: int = option(0, integer=True)
    members: bool = False
    batch_size: int = option(64, ge=1, integer=True)
    guided: bool = True
    guidance_rho: float = option(0.5, ge=0, le=1)
    guidance_weight: float = option(0.03, ge=0)
    calibrate: bool = True
    tile: int | None = option(None, ge=8, integer=True)
    tile_overlap: int = option(32, ge=0, integer=True)
    wrap_lon: bool = False
    chunk: int | None = option(None, ge=1, integer=True)
    allow_other_grid: bool = False


@dataclass
class FillReport:
    """What a fill did, for the log and the output's global attributes."""

    attributes: dict[str, Any] = field(default_factory=dict)
    domain_cells: int = 0
    never_observed: int = 0


Writer = Any     # writing.OutputWriter-like: write(start, arrays), attributes(attrs)
OpenOutput = Callable[[reading.Field, list[writing.OutputVariable]], AbstractContextManager[Writer]]


def fill_record(model: Any, source: reading.FieldSource, open_output: OpenOutput,
                options: ImputeOptions = ImputeOptions(), device: Any = None,
                domain: np.ndarray | None = None, progress: bool = False,
                checkpoint: str = "") -> FillReport:
    """Fill every frame of ``source`` with ``model`` and write it through ``open_output``.

    ``domain`` (H, W) is where cells are filled (default: the model's, on its own grid).
    """
    import torch

    from ctxq_cli import __version__
    from ctxq_cli.impute import calibrate_spread, impute_chunks
    from ctxq_cli.spread import Spread
    from ctxq_cli.tiles import Tiling

    device = device or torch.device("cpu")
    fld = source.template
    label = fld.path
    check_record(fld, model, label, source.read(0, min(source.frames, CHECK_FRAMES)),
                 options.allow_other_grid, checkpoint)
    times = model_times(fld, model)
    dom = imputation_domain(fld, model, domain)
    tiling = Tiling(size=options.tile or (None if max(fld.grid) <= AUTO_TILE_ABOVE
                                          else AUTO_TILE),
                    overlap=options.tile_overlap, wrap_lon=options.wrap_lon)
    chunk = options.chunk or auto_chunk(options.ensemble, len(fld.names), fld.grid,
                                        model.window, options.members)
    log.info("%s, %d frames per chunk", f"tiles of {tiling.size} cells overlapping by "
             f"{tiling.overlap}" if tiling.size else "one tile", chunk)
    run = {"device": device, "batch": options.batch_size, "guided": options.guided,
           "rho": options.guidance_rho, "guidance_weight": options.guidance_weight,
           "tiling": tiling, "times": times}
    scale = Spread()
    if options.calibrate and options.steps == 1:
        scale = calibrate_spread(model, source.read, source.frames, dom, options.ensemble,
                                 options.seed, chunk=chunk, **run)
    specs = output_variables(fld, options.ensemble if options.members else None)
    ever = np.zeros(fld.grid, bool)
    empty: list[int] = []
    with open_output(fld, specs) as writer:
        for a, result in impute_chunks(model, source.read, source.frames, dom,
                                       ensemble=options.ensemble, steps=options.steps,
                                       seed=options.seed, members=options.members,
                                       progress=progress, spread=scale, chunk=chunk, **run):
            writer.write(a, output_arrays(fld.names, result))
            ever |= result.observed.any(axis=(0, 1))
            empty += [a + f for f in result.empty_frames]
        attrs = {"ctxq_version": __version__, "ctxq_checkpoint": checkpoint,
                 "ctxq_ensemble": options.ensemble, "ctxq_steps": options.steps,
                 "ctxq_seed": options.seed, "ctxq_partition": model.partition.name,
                 "ctxq_window": model.window, "ctxq_spread_scale": scale.ensemble,
                 "ctxq_spread_first_guess": scale.first_guess,
                 "ctxq_spread_noise": scale.noise_name(),
                 "ctxq_network_correction_share": scale.correction,
                 "ctxq_frames_without_observations": len(empty)}
        if empty:  # 0-based indices along time, e.g. for masking in analysis
            attrs["ctxq_empty_frame_indices"] = np.asarray(empty, dtype=np.int32)
        if source.quality is not None:
            attrs["ctxq_quality"] = f"{source.quality.variable} >= {source.quality.minimum:g}"
            log.info("%s: %s", label, source.describe_quality())
        writer.attributes(attrs)
    report = FillReport(attrs, int(dom.sum()), int((dom & ~ever).sum()))
    log.info("domain: %d cells, %d never observed in this record and filled from the model",
             report.domain_cells, report.never_observed)
    return report


def fill_files(data: Any, checkpoint: Path, read: reading.ReadOptions,
               options: ImputeOptions, output: Path | None = None, output_dir: Path | None = None,
               overwrite: bool = False, device: Any = None, progress: bool = False,
               command: str = "ctxq impute") -> list[Path]:
    """Fill a record of files with a checkpoint's model and write the result: to ``output``,
    or one file per input in ``output_dir`` (see :func:`output_paths`); return the paths."""
    import torch

    from ctxq_cli import __version__
    from ctxq_cli.model import DenoiserModel

    one_destination(output, output_dir)     # before any reading
    device = device or torch.device("cpu")
    model = DenoiserModel.load(checkpoint, device)
    source = reading.open_field(data, read.variables, read.mask, default=model.variables,
                                quality=read.quality, selection=read.selection)
    fld = source.template
    inputs = [p.path for p in fld.parts] or [fld.path]
    outputs = output_paths(inputs, output, output_dir, overwrite,
                           [read.mask, read.domain, checkpoint, *inputs])
    log.info("%s: %s, %d frames of %d×%d", fld.path, ", ".join(fld.names), source.frames,
             *fld.grid)
    history = writing.history_line(command, __version__)
    fill_record(model, source, file_outputs(outputs, history, split=output_dir is not None),
                options, device, read.read_domain(fld.grid), progress, str(checkpoint))
    return outputs


def output_paths(inputs: list[Path], output: Path | None, output_dir: Path | None,
                 overwrite: bool, others: list[Any]) -> list[Path]:
    """Where a fill of ``inputs`` is written, checked before any work: ``output``, one file
    per input in ``output_dir`` (created if missing), or the input's name with _imputed."""
    one_destination(output, output_dir)
    if output_dir is not None:
        return per_file_outputs(output_dir, inputs, overwrite, others)
    if output is None and len(inputs) > 1:
        raise CtxqError(f"{len(inputs)} input files: name the output with --output FILE, or "
                        "write one per input with --output-dir DIR")
    return [safe_output.check_output(output or default_output(inputs[0]), overwrite, others)]


def one_destination(output: Path | None, output_dir: Path | None) -> None:
    """An output file or an output directory, not both."""
    if output is not None and output_dir is not None:
        raise CtxqError("--output and --output-dir exclude each other")


def default_output(data: Path) -> Path:
    """The input's name with _imputed: .npz for NPZ input, else .nc (beside the command)."""
    npz = data.is_file() and data.suffix.lower() == ".npz"
    return Path(data.stem + "_imputed" + (".npz" if npz else ".nc"))


def per_file_outputs(directory: Path, inputs: list[Path], overwrite: bool,
                     others: list[Any]) -> list[Path]:
    """One output per input file in ``directory`` (created if missing), checked before any
    work."""
    if directory.exists() and not directory.is_dir():
        raise CtxqError(f"{directory}: --output-dir exists and is not a directory")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CtxqError(f"{directory}: cannot create --output-dir ({exc.strerror})") from None
    outputs = [directory / f"{p.stem}_imputed.nc" for p in inputs]
    seen: dict[Path, Path] = {}
    for out, inp in zip(outputs, inputs):
        if out in seen:
            raise CtxqError(f"{inp}: its output {out} would also be {seen[out]}'s (same name)")
        seen[out] = inp
        safe_output.check_output(out, overwrite, others)
    return outputs


def file_outputs(paths: list[Path], history: str, split: bool) -> OpenOutput:
    """Outputs in files: one per input file of the record (``split``) or one for all."""
    def open_output(template: reading.Field, variables: list[writing.OutputVariable]) -> Any:
        if split:
            return writing.open_outputs(paths, template, variables, history)
        return writing.open_output(paths[0], template, variables, history)
    return open_output


def auto_chunk(ensemble: int, channels: int, grid: tuple[int, int], window: int,
               members: bool) -> int:
    """Frames per chunk that keep the ensemble's arrays of a chunk near CHUNK_BYTES."""
    # About eight float32 arrays of the ensemble's size per frame (members, their mean and
    # spread, the smoother's states, the network's inputs), measured on a record of daily files.
    per_frame = ensemble * channels * grid[0] * grid[1] * 4 * (9 if members else 8)
    return max(4 * window, CHUNK_BYTES // per_frame)


def check_record(fld: reading.Field, model: Any, label: Any,
                 sample: tuple[np.ndarray, np.ndarray], other_grid: bool = False,
                 checkpoint: str = "") -> None:
    """The record must hold the model's variables, in its units, on its grid, at its scale
    (judged on ``sample``, values and observed cells of some of its frames)."""
    from ctxq_cli import provenance

    if fld.names != model.variables:
        raise CtxqError(f"{label}: variables {fld.names} do not match the checkpoint's "
                        f"{model.variables}" + (f" ({checkpoint})" if checkpoint else ""))
    if model.data is not None:
        sums = ObservedSums()
        sums.add(*sample)
        provenance.check(model.data, provenance.describe(
            fld.names, fld.var_attrs, fld.coords, fld.grid_dims, sums), label, other_grid)


def model_times(fld: reading.Field, model: Any) -> np.ndarray | None:
    """The record's times in the unit the model's temporal smoother measures time in."""
    if model.smoother is None:
        return None
    times, unit = fld.times()
    wanted, step = model.smoother.time_unit, model.smoother.step
    if wanted == "frames":
        times, unit = None, "frames"   # trained without a time coordinate: frames apart
    elif times is None:
        log.warning("%s: no time coordinate; its frames are taken %g %s apart, the training "
                    "record's step", fld.path, step, wanted)
        return step * np.arange(fld.frames, dtype=np.float64)
    log.info("%s: %s", fld.path, reading.describe_times(times, unit))
    return times


def imputation_domain(fld: reading.Field, model: Any, domain: np.ndarray | None) -> np.ndarray:
    """The domain given, or the model's when the grids agree."""
    if domain is not None:
        if domain.shape != fld.grid:
            raise CtxqError(f"{fld.path}: the domain has shape {domain.shape}, the grid "
                            f"{fld.grid}")
        return domain.astype(bool)
    if fld.grid == model.grid:
        return model.domain
    raise CtxqError(f"{fld.path}: grid {fld.grid} differs from the model's {model.grid}; "
                    "give a domain for this grid (--domain)")


def output_variables(fld: reading.Field, members: int | None) -> list[writing.OutputVariable]:
    """Mean, spread, flag (and members) per variable, mirroring the input's attributes.

    Every variable has a ``_FillValue`` (NetCDF's default for floats, which no observation
    takes, so that observed values are never turned into fill) and the input's
    ``coordinates`` and ``grid_mapping``, so that CF tools place each on the grid.
    """
    from ctxq_cli.cf import DEFAULT_FILL, Encoding

    kind = "f8" if fld.values.dtype == np.float64 else "f4"
    floats = Encoding("float64" if kind == "f8" else "float32", DEFAULT_FILL[kind])
    variables = []
    for c, name in enumerate(fld.names):
        attrs = dict(fld.var_attrs[c])
        label = attrs.get("long_name", name)
        place = {k: attrs[k] for k in ("coordinates", "grid_mapping") if k in attrs}
        attrs["ancillary_variables"] = f"{name}_std {name}_flag" + (
            f" {name}_members" if members else "")
        variables.append(writing.OutputVariable(name, None, attrs, encoding=floats))
        std_attrs = {k: attrs[k] for k in ("units",) if k in attrs}
        if "standard_name" in attrs:
            std_attrs["standard_name"] = f"{attrs['standard_name']} standard_error"
        std_attrs["long_name"] = f"ensemble spread (standard deviation) of {label}"
        variables.append(writing.OutputVariable(f"{name}_std", None, {**std_attrs, **place},
                                           encoding=floats))
        variables.append(writing.OutputVariable(
            f"{name}_flag", None, {"long_name": f"origin of {label}",
                                   "flag_values": np.array([0, 1], np.int8),
                                   "flag_meanings": "observed filled_by_ctxq", **place},
            encoding=Encoding("int8", -127)))
        if members:
            variables.append(writing.OutputVariable(
                f"{name}_members", np.empty((members, 0)),
                {**{k: attrs[k] for k in ("units", "standard_name") if k in attrs},
                 "long_name": f"ensemble members of {label}", **place}, member_dim=True,
                encoding=floats))
    return variables


def output_arrays(names: list[str], result: Any) -> dict[str, np.ndarray]:
    """One chunk's arrays for the variables of :func:`output_variables`."""
    arrays = {}
    for c, name in enumerate(names):
        arrays[name] = result.mean[:, c]
        arrays[f"{name}_std"] = result.std[:, c]
        arrays[f"{name}_flag"] = np.where(result.observed[:, c], 0.0,
                                          np.where(np.isfinite(result.mean[:, c]), 1.0, np.nan))
        if result.members is not None:
            arrays[f"{name}_members"] = result.members[:, :, c]
    return arrays
