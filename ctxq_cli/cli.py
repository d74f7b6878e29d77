"""The ``ctxq`` command line: parse, call the core, report. User errors are one line."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer

from ctxq_cli import __version__
from ctxq_cli.errors import EXIT_INTERRUPTED, CtxqError, Interrupted

log = logging.getLogger("ctxq_cli")

app = typer.Typer(
    name="ctxq",
    help="Fill gaps in gridded geophysical fields with a diffusion model trained only on "
         "incomplete data.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",   # docstring paragraphs reflow to the terminal width
    context_settings={"help_option_names": ["--help", "-h"]},
)

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3

DataArg = Annotated[list[Path], typer.Argument(
    help="Field to read: NetCDF, zarr or NPZ. Several files, a quoted glob ('sst/*.nc') or a "
         "directory make one record, joined along time in the order of their times.",
    show_default=False, metavar="DATA")]
SelOpt = Annotated[list[str] | None, typer.Option(
    "--sel", help="Keep one element of an extra dimension, by coordinate value: depth=0 "
    "(repeat for several dimensions).")]
IselOpt = Annotated[list[str] | None, typer.Option(
    "--isel", help="Keep one element of an extra dimension, by index: depth=0.")]
GroupOpt = Annotated[str | None, typer.Option(
    "--group", help="NetCDF-4 group (or zarr group) holding the variables, e.g. data/sst.")]
MaskOpt = Annotated[Path | None, typer.Option(
    "--mask", help="Observation mask file (variable 'mask', 1 = observed), time-varying or 2-D.")]
VarOpt = Annotated[list[str] | None, typer.Option(
    "--var", help="Variable to read; repeat for several (stacked as channels).")]
DomainOpt = Annotated[Path | None, typer.Option(
    "--domain", help="2-D domain mask (nonzero = cells to fill and score, e.g. sea).")]
QualityVarOpt = Annotated[str | None, typer.Option(
    "--quality-var", help="Quality variable of the data file (e.g. GHRSST's quality_level); "
    "observations below --min-quality are treated as missing.")]
MinQualityOpt = Annotated[float | None, typer.Option(
    "--min-quality", help="Lowest quality level kept (with --quality-var; GHRSST: 4 or 5).")]
DomainFlagsOpt = Annotated[str | None, typer.Option(
    "--domain-flags", help="With a CF flag variable as --domain: the flag meanings inside, "
    "comma-separated (default: the water ones, e.g. GHRSST's 'water').")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed; same seed, same result.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="Only warnings and errors.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace an existing output.")]
LogOpt = Annotated[Path | None, typer.Option(
    "--log", help="JSON-lines training log (default: beside the checkpoint, .log.jsonl).",
    show_default=False)]
CheckpointEveryOpt = Annotated[int, typer.Option(
    help="Write a resumable state every N steps (0: only when stopped); the last two are "
         "kept.", min=0)]
StemPatchOpt = Annotated[int, typer.Option(
    help="Fold p×p cells into channels at the network's input (1 = full resolution, about 4× "
         "slower than 2).", min=1, max=4)]
StepsOpt = Annotated[int, typer.Option(help="Optimiser steps at most.", min=1)]
MaxMinutesOpt = Annotated[float | None, typer.Option(
    help="Stop after this many minutes (counted from each start).", min=0.01)]
BatchOpt = Annotated[int, typer.Option(help="Samples per optimiser step.", min=1)]
LrOpt = Annotated[float, typer.Option(help="Peak learning rate (AdamW).", min=0)]
PatchOpt = Annotated[int, typer.Option(
    help="Train on random patches of this size on larger grids.", min=8)]
ValFractionOpt = Annotated[float, typer.Option(
    help="Share of frames held out for validation, in up to 5 blocks spread over the record "
         "(the last at its end); 0: none, train on every frame and keep the last weights.",
    min=0, max=0.5)]
PatienceOpt = Annotated[int, typer.Option(
    help="Stop after this many validations (one every 250 steps) without a new lowest "
         "validation loss (0: never stop early).", min=0)]
CalibrateOpt = Annotated[bool, typer.Option(
    "--calibrate/--no-calibrate",
    help="Scale the ensemble spread to the error on withheld observations (S = 1; costs one "
         "extra imputation of up to 48 frames).")]
ResumeOpt = Annotated[bool, typer.Option(
    help="Continue from the resumable state beside the output, if any (else start afresh).")]
PrecisionOpt = Annotated[str, typer.Option(
    help="auto (bf16 autocast on GPUs, float32 on CPUs), bf16 or fp32.")]
CompileOpt = Annotated[bool, typer.Option(
    "--compile", help="torch.compile the network (GPU; a minute of compiling, then faster "
                      "steps).")]


def _version(value: bool) -> None:
    """Print the version and exit."""
    if value:
        typer.echo(f"ctxq {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Show the version and exit.")] = False
          ) -> None:
    """Fill gaps in gridded geophysical fields with context-query diffusion models."""


@contextlib.contextmanager
def reporting(quiet: bool) -> Iterator[bool]:
    """Configure logging; turn CtxqError into one line and exit 1. Yields show-progress (a bar
    on a terminal, log lines in a batch log)."""
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO,
                        format="ctxq: %(message)s", stream=sys.stderr, force=True)
    try:
        yield not quiet
    except (typer.Exit, typer.Abort):
        raise
    except Interrupted as exc:
        typer.echo(f"ctxq: {exc}", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    except CtxqError as exc:
        typer.echo(f"ctxq: error: {exc}", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except KeyboardInterrupt:
        typer.echo("ctxq: interrupted", err=True)
        raise typer.Exit(130) from None
    except MemoryError:
        typer.echo("ctxq: error: out of memory (try a smaller --batch-size)", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except RuntimeError as exc:
        if "out of memory" not in str(exc).lower():
            raise _internal(exc) from None
        typer.echo("ctxq: error: out of device memory (try a smaller --batch-size or "
                   "--device cpu)", err=True)
        raise typer.Exit(EXIT_USER_ERROR) from None
    except Exception as exc:  # a bug, not a user error: still one line unless asked
        raise _internal(exc) from None


def _internal(exc: BaseException) -> BaseException:
    """Report an unexpected exception in one line (re-raised whole under CTXQ_DEBUG)."""
    if os.environ.get("CTXQ_DEBUG"):
        return exc
    first = str(exc).splitlines()[0] if str(exc) else ""
    typer.echo(f"ctxq: internal error: {type(exc).__name__}: {first} "
               "(set CTXQ_DEBUG=1 for a traceback)", err=True)
    return typer.Exit(EXIT_INTERNAL_ERROR)


def _device(name: str):
    """Resolve --device to a torch device."""
    from ctxq_cli.api import device

    return device(name)


def _command_line() -> str:
    """The command as typed, for provenance."""
    return "ctxq " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _quality(variable: str | None, minimum: float | None):
    """--quality-var and --min-quality, which go together, as a Quality (or None)."""
    from ctxq_cli.flags import Quality

    if (variable is None) != (minimum is None):
        raise CtxqError("--quality-var NAME and --min-quality LEVEL go together")
    return None if variable is None else Quality(variable, minimum)


def _meanings(text: str | None) -> list[str] | None:
    """--domain-flags 'water,open_lake' as a list."""
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


def _load_inputs(data: list[Path], mask: Path | None, var: list[str] | None,
                 domain: Path | None, quality=None, domain_flags: str | None = None,
                 selection=None):
    """Read a field, its mask and its domain; log what was found."""
    from ctxq_cli import io

    fld = io.read_field(data, var, mask, quality=quality, selection=selection)
    log.info("%s: %s", fld.path, fld.describe())
    if not fld.observed.any():
        raise CtxqError(f"{fld.path}: variable '{fld.names[0]}' has no observed value at all; "
                        "nothing to learn from")
    dom = (io.read_domain(domain, fld.grid, _meanings(domain_flags)) if domain
           else io.observed_domain(fld.observed))
    outside = int((~dom).sum())
    if outside:
        log.info("%d of %d grid cells are outside the domain (%s); they stay fill", outside,
                 dom.size, "from --domain" if domain else "never observed")
    return fld, dom


@app.command("train-denoiser")
def train_denoiser(
    data: DataArg,
    mask: MaskOpt = None,
    var: VarOpt = None,
    domain: DomainOpt = None,
    domain_flags: DomainFlagsOpt = None,
    quality_var: QualityVarOpt = None,
    min_quality: MinQualityOpt = None,
    sel: SelOpt = None,
    isel: IselOpt = None,
    group: GroupOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")] = Path(
        "denoiser.safetensors"),
    window: Annotated[int, typer.Option(help="Consecutive frames per sample.", min=1)] = 3,
    temporal: Annotated[str, typer.Option(
        help="First guess from every frame of the record: smoother (a Gauss-Markov smoother "
             "in time, fitted on the record, that the network corrects) or none.")
    ] = "smoother",
    partition: Annotated[str, typer.Option(
        help="Context/query partition: auto (from the masks' structure), pixel, block, "
             "empirical or prior.")] = "auto",
    mask_prior: Annotated[Path | None, typer.Option(
        help="Mask prior (from train-mask-prior) for --partition prior; embedded in the "
             "checkpoint.")] = None,
    context_ratio: Annotated[float, typer.Option(
        help="Share of observed cells kept as context (pixel, block).", min=0.05,
        max=0.99)] = 0.8,
    block_size: Annotated[int | None, typer.Option(
        help="Block side in cells for --partition block (default: from the masks).",
        min=1)] = None,
    channels: Annotated[str, typer.Option(help="U-Net widths per level.")] = "32,64,96",
    normalization: Annotated[str, typer.Option(
        help="cell: remove each cell's temporal mean (its climatology) first, as EOF methods "
             "do; variable: one mean per variable (with --position-channels 0, the model then "
             "fills other grids too).")
    ] = "cell",
    stem_patch: StemPatchOpt = 2,
    attention_heads: Annotated[int, typer.Option(
        help="Self-attention heads over the coarsest level, so gaps are filled from "
             "large-scale patterns (0: none; must divide the last --channels width).",
        min=0)] = 4,
    position_channels: Annotated[int, typer.Option(
        help="Channels of a learned position map of the training grid (0: none; the model "
             "then fills other grids too).", min=0)] = 8,
    calibration_holdout: Annotated[bool, typer.Option(
        "--calibration-holdout/--no-calibration-holdout",
        help="Keep the observations impute calibrates its spread on out of training, so the "
             "spread of this record is calibrated on cells the network never saw.")] = True,
    steps: StepsOpt = 20000,
    max_minutes: MaxMinutesOpt = None,
    batch_size: BatchOpt = 8,
    lr: LrOpt = 2e-3,
    patch: PatchOpt = 128,
    val_fraction: ValFractionOpt = 0.1,
    patience: PatienceOpt = 8,
    log_file: LogOpt = None,
    checkpoint_every: CheckpointEveryOpt = 1000,
    resume: ResumeOpt = False,
    precision: PrecisionOpt = "auto",
    compile_network: CompileOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a denoiser on incomplete fields (context-query diffusion).

    The network starts from a first guess that reaches across the whole record (--temporal
    smoother: each cell's observations before and after, and its neighbours', weighted by a
    Gauss-Markov model of time fitted on the record) and learns what it misses. It keeps the
    weights that did best on the validation frames and stops when they no longer improve.

    A tenth of the observations of the record's middle 48 frames, hidden like its gaps, stay
    out of training (--calibration-holdout): `impute` calibrates its ensemble spread on them.

    On SIGTERM or SIGINT (a batch job's time limit) training writes a resumable state beside
    the output and exits with code 75; the same command with --resume goes on from there.
    Started by torchrun, the processes train one model together (see the README).
    """
    with reporting(quiet) as progress:
        from ctxq_cli import runs
        from ctxq_cli.api import train_field
        from ctxq_cli.train import TrainOptions

        if (partition == "prior") != (mask_prior is not None):
            raise CtxqError("--partition prior and --mask-prior FILE go together")
        widths = _parse_channels(channels)
        if attention_heads and widths[-1] % attention_heads:
            raise CtxqError(f"--attention-heads {attention_heads} must divide the last "
                            f"--channels width {widths[-1]}")
        options = _options(TrainOptions, window=window, temporal=temporal, partition=partition,
                           context_ratio=context_ratio, block_size=block_size,
                           channels=widths, stem_patch=stem_patch,
                           attention_heads=attention_heads,
                           position_channels=position_channels,
                           calibration_holdout=calibration_holdout, steps=steps,
                           max_minutes=max_minutes, batch_size=batch_size, lr=lr,
                           patch=patch, val_fraction=val_fraction, patience=patience,
                           seed=seed, checkpoint_every=checkpoint_every,
                           normalization=normalization, precision=precision,
                           compile=compile_network)
        with runs.training(output, log_file, resume, overwrite,
                       [*_files(data), mask, domain, mask_prior],
                       device, progress) as (control, log_io, dev, progress):
            prior = None
            if mask_prior is not None:
                from ctxq_cli.model import MaskPriorModel

                prior = MaskPriorModel.load(mask_prior)
            fld, dom = _load_inputs(data, mask, var, domain,
                                    _quality(quality_var, min_quality), domain_flags,
                                    _selection(sel, isel, group))
            if fld.frames < window:
                raise CtxqError(f"{fld.path}: {fld.frames} frames, fewer than --window "
                                f"{window}")
            model = train_field(fld, dom, options, dev, log_io, progress, control, prior)
            if control.group.main:
                model.training["command"] = _command_line()
                model.save(output)
                runs.finish(control, output)


def _parse_channels(text: str) -> tuple[int, ...]:
    """'32,64,96' → (32, 64, 96)."""
    try:
        widths = tuple(int(c) for c in text.split(","))
    except ValueError:
        raise CtxqError(f"--channels must be comma-separated integers, not '{text}'") from None
    if not widths or min(widths) < 8 or any(w % 8 for w in widths):
        raise CtxqError(f"--channels must be multiples of 8, not '{text}'")
    return widths


@app.command()
def impute(
    data: DataArg,
    mask: MaskOpt = None,
    var: VarOpt = None,
    domain: DomainOpt = None,
    domain_flags: DomainFlagsOpt = None,
    quality_var: QualityVarOpt = None,
    min_quality: MinQualityOpt = None,
    checkpoint: Annotated[Path, typer.Option(help="Denoiser checkpoint.")] = Path(
        "denoiser.safetensors"),
    ensemble: Annotated[int, typer.Option(help="Ensemble members K.", min=1)] = 32,
    steps: Annotated[int, typer.Option(
        help="Sampler steps S: 1 = single-step ensemble mean, >1 = posterior samples.",
        min=1)] = 1,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o",
        help="Output file (default: the input's name with _imputed, as .nc or .npz).")] = None,
    output_dir: Annotated[Path | None, typer.Option(
        "--output-dir", help="Write one output per input file into this directory (created "
        "if missing), named like it with _imputed (daily files in, daily files out).")] = None,
    sel: SelOpt = None,
    isel: IselOpt = None,
    group: GroupOpt = None,
    members: Annotated[bool, typer.Option(help="Also write every ensemble member.")] = False,
    batch_size: Annotated[int, typer.Option(help="Denoiser passes per batch.", min=1)] = 64,
    guided: Annotated[bool, typer.Option(
        "--guided/--no-guided",
        help="With a mask prior: draw each member's context guided towards its observations "
             "(slower) instead of from the stored pool.")] = True,
    guidance_rho: Annotated[float, typer.Option(
        help="Guided prior: share ρ of the observed cells kept in each anchor.", min=0,
        max=1)] = 0.5,
    guidance_weight: Annotated[float, typer.Option(
        help="Guided prior: guidance weight w_g per in-domain cell.", min=0)] = 0.03,
    calibrate: CalibrateOpt = True,
    tile: Annotated[int | None, typer.Option(
        help="Fill the grid by overlapping square tiles of this many cells a side (default: "
             "the whole grid up to 512 cells a side, else 256).", min=8)] = None,
    tile_overlap: Annotated[int, typer.Option(
        help="Cells shared by neighbouring tiles, blended smoothly.", min=0)] = 32,
    wrap_lon: Annotated[bool, typer.Option(
        "--wrap-lon", help="The last axis is a periodic longitude: tiles wrap across it.")
    ] = False,
    allow_other_grid: Annotated[bool, typer.Option(
        "--allow-other-grid", help="Fill a grid whose coordinates differ from the training "
        "grid's (same shape), e.g. another region, knowingly.")] = False,
    chunk: Annotated[int | None, typer.Option(
        help="Frames read, filled and written at a time (default: about 1 GiB of ensemble "
             "arrays).", min=1)] = None,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Fill the gaps of a field with a trained denoiser.

    NetCDF files are read and written a chunk of frames at a time (--chunk) and large grids
    are filled by overlapping tiles (--tile), so memory follows the chunk and the tile, not
    the file. A record of many files is written to one file (--output) or to one file per
    input file (--output-dir); nothing is written unless the whole record is filled.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import io
        from ctxq_cli.fill import ImputeOptions, fill_record
        from ctxq_cli.model import DenoiserModel

        options = _options(ImputeOptions, ensemble=ensemble, steps=steps, seed=seed,
                           members=members, batch_size=batch_size, guided=guided,
                           guidance_rho=guidance_rho, guidance_weight=guidance_weight,
                           calibrate=calibrate, tile=tile, tile_overlap=tile_overlap,
                           wrap_lon=wrap_lon, chunk=chunk, allow_other_grid=allow_other_grid)
        if output is not None and output_dir is not None:
            raise CtxqError("--output and --output-dir exclude each other")
        dev = _device(device)
        model = DenoiserModel.load(checkpoint, dev)
        source = io.open_field(data, var, mask, default=model.variables,
                               quality=_quality(quality_var, min_quality),
                               selection=_selection(sel, isel, group))
        fld = source.template
        inputs = [p.path for p in fld.parts] or [fld.path]
        others = [mask, domain, checkpoint, *inputs]
        if output_dir is not None:
            outputs = _per_file_outputs(output_dir, inputs, overwrite, others)
        else:
            if output is None and len(inputs) > 1:
                raise CtxqError(f"{len(inputs)} input files: name the output with --output "
                                "FILE, or write one per input with --output-dir DIR")
            outputs = [io.check_output(output or _default_output(inputs[0]), overwrite,
                                       others)]
        log.info("%s: %s, %d frames of %d×%d", fld.path, ", ".join(fld.names), source.frames,
                 *fld.grid)
        dom = io.read_domain(domain, fld.grid, _meanings(domain_flags)) if domain else None
        history = io.history_line(_command_line(), __version__)
        if output_dir is not None:
            def open_output(template, variables):
                return io.open_outputs(outputs, template, variables, history)
        else:
            def open_output(template, variables):
                return io.open_output(outputs[0], template, variables, history)
        fill_record(model, source, open_output, options, dev, dom, progress,
                    str(checkpoint))
        log.info("wrote %s", outputs[0] if len(outputs) == 1 else
                 f"{len(outputs)} files to {output_dir}")


def _options(kind, **fields):
    """An options object; an invalid field is a one-line error naming its flag."""
    try:
        return kind(**fields)
    except ValueError as exc:
        text = str(exc)
        for name in fields:
            text = text.replace(f"{kind.__name__}.{name}", "--" + name.replace("_", "-"))
        raise CtxqError(text) from None


def _files(data: list[Path]) -> list[Path]:
    """The files the inputs name (globs and directories expanded)."""
    from ctxq_cli.record import expand

    return expand(data)


def _selection(sel: list[str] | None, isel: list[str] | None, group: str | None):
    """--sel, --isel and --group as a Selection."""
    from ctxq_cli.record import Selection

    return Selection.parse(sel or (), isel or (), group)


def _default_output(data: Path) -> Path:
    """The input's name with _imputed: .npz for NPZ input, else .nc (beside the command)."""
    npz = data.is_file() and data.suffix.lower() == ".npz"
    return Path(data.stem + "_imputed" + (".npz" if npz else ".nc"))


def _per_file_outputs(directory: Path, inputs: list[Path], overwrite: bool,
                      others: list) -> list[Path]:
    """One output per input file in ``directory``, checked before any work."""
    from ctxq_cli import io

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
        io.check_output(out, overwrite, others)
    return outputs


@app.command()
def evaluate(
    data: Annotated[list[Path], typer.Argument(
        help="Imputed field (output of 'ctxq impute'), or observations with --checkpoint; "
             "several files, a glob or a directory make one record.",
        show_default=False, metavar="DATA")],
    truth: Annotated[Path | None, typer.Option(help="Complete reference field.")] = None,
    mask: MaskOpt = None,
    var: VarOpt = None,
    domain: DomainOpt = None,
    domain_flags: DomainFlagsOpt = None,
    quality_var: QualityVarOpt = None,
    min_quality: MinQualityOpt = None,
    sel: SelOpt = None,
    isel: IselOpt = None,
    group: GroupOpt = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="Denoiser: impute DATA here (hiding --withhold of it when there is no truth).")
    ] = None,
    withhold: Annotated[float | None, typer.Option(
        help="Share of the observations to hide and score on (default 0.1 without --truth).",
        min=0, max=0.9)] = None,
    withhold_pattern: Annotated[str, typer.Option(
        help="Shape of the hidden cells: mask (another frame's gaps; scattered cells when the "
             "gaps are scattered), pixel or block.")
    ] = "mask",
    ensemble: Annotated[int, typer.Option(help="Ensemble members K.", min=1)] = 32,
    steps: Annotated[int, typer.Option(help="Sampler steps S.", min=1)] = 1,
    baseline: Annotated[str | None, typer.Option(
        help="Baselines to score beside ctxq: any of dineof, linear, oi and persistence (each "
             "cell's nearest observations in time), comma-separated.")] = None,
    json_file: Annotated[Path | None, typer.Option(
        "--json", help="Write every number (overall and per frame) to this JSON file.")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write a figure (PNG) of one frame for every method and a calibration plot.")
    ] = None,
    frame: Annotated[int | None, typer.Option(
        help="Frame to plot (default: the one with most scored cells).", min=0)] = None,
    batch_size: Annotated[int, typer.Option(help="Denoiser passes per batch.", min=1)] = 64,
    calibrate: CalibrateOpt = True,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Score gap filling against a truth, or by hiding observations (cross-validation).

    Scores the cells missing in the input (or hidden by --withhold) inside the domain, for
    ctxq and the chosen baselines, all given the same observations.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import cases, evaluation, io

        names = evaluation.parse_baselines(baseline)
        for path in (json_file, plot):
            if path is not None:
                io.check_output(path, True, [*_files(data), truth, mask, domain, checkpoint])
        if checkpoint is not None:
            case = _cross_validation(data, truth, mask, var, domain, checkpoint, withhold,
                                     withhold_pattern, ensemble, steps, batch_size, seed,
                                     device, progress, calibrate,
                                     _quality(quality_var, min_quality), domain_flags,
                                     _selection(sel, isel, group))
        else:
            if truth is None:
                raise CtxqError("give --truth TRUTH to score an imputed file, or --checkpoint "
                                "CKPT to cross-validate on the observations")
            if withhold:
                raise CtxqError("--withhold needs --checkpoint (ctxq imputes what it hides)")
            if quality_var or min_quality is not None or domain_flags:
                raise CtxqError("--quality-var, --min-quality and --domain-flags select "
                                "observations to impute: they need --checkpoint")
            case = cases.imputed_file(data, truth, mask, var, _selection(sel, isel, group))
        for name in names:
            case.estimates.append(evaluation.run_baseline(
                name, case.observed_values, case.observed, case.domain, seed, case.times))
        report = evaluation.score(case.estimates, case.reference, case.cells, case.valid,
                                  case.variables)
        typer.echo(case.description)
        typer.echo(evaluation.table(report))
        if json_file is not None:
            evaluation.write_json(json_file, {"description": case.description,
                                              "command": _command_line(), "scores": report})
            log.info("wrote %s", json_file)
        if plot is not None:
            from ctxq_cli.plots import evaluation_figure

            evaluation_figure(plot, case, report, frame)
            log.info("wrote %s", plot)


def _cross_validation(data: list[Path], truth: Path | None, mask: Path | None,
                      var: list[str] | None, domain: Path | None, checkpoint: Path,
                      withhold: float | None, pattern: str, ensemble: int, steps: int,
                      batch_size: int, seed: int, device: str, progress: bool, calibrate: bool,
                      quality=None, domain_flags: str | None = None, selection=None):
    """Read the record and the model; impute with some observations hidden."""
    from ctxq_cli import cases, io
    from ctxq_cli.model import DenoiserModel

    dev = _device(device)
    model = DenoiserModel.load(checkpoint, dev)
    fld = io.read_field(data, var, mask, default=model.variables, quality=quality,
                        selection=selection)
    log.info("%s: %s", fld.path, fld.describe())
    dom = io.read_domain(domain, fld.grid, _meanings(domain_flags)) if domain else None
    fraction = withhold if withhold is not None else (0.0 if truth else 0.1)
    return cases.cross_validation(fld, model, checkpoint, dom, truth,
                                  cases.Withholding(fraction, pattern, seed), ensemble, steps,
                                  batch_size, dev, progress, calibrate, selection)


@app.command("train-mask-prior")
def train_mask_prior(
    data: DataArg,
    mask: MaskOpt = None,
    var: VarOpt = None,
    domain: DomainOpt = None,
    domain_flags: DomainFlagsOpt = None,
    quality_var: QualityVarOpt = None,
    min_quality: MinQualityOpt = None,
    sel: SelOpt = None,
    isel: IselOpt = None,
    group: GroupOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")] = Path(
        "mask_prior.safetensors"),
    window: Annotated[int, typer.Option(
        help="Consecutive mask frames per sample (use the denoiser's --window).", min=1)] = 3,
    channels: Annotated[str, typer.Option(help="U-Net widths per level.")] = "32,64",
    stem_patch: StemPatchOpt = 2,
    steps: StepsOpt = 4000,
    max_minutes: MaxMinutesOpt = None,
    batch_size: BatchOpt = 16,
    lr: LrOpt = 2e-3,
    patch: PatchOpt = 128,
    val_fraction: ValFractionOpt = 0.1,
    log_file: LogOpt = None,
    checkpoint_every: CheckpointEveryOpt = 1000,
    resume: ResumeOpt = False,
    precision: PrecisionOpt = "auto",
    compile_network: CompileOpt = False,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    overwrite: OverwriteOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Learn the distribution of the observation masks (Bayesian Flow Network prior).

    Prints the observed fraction, spatial autocorrelation and cluster sizes of the real masks
    next to masks sampled from the prior. Stops and resumes like train-denoiser.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import runs
        from ctxq_cli.train import MaskPriorOptions
        from ctxq_cli.train import train_mask_prior as train

        widths = _parse_channels(channels)
        with runs.training(output, log_file, resume, overwrite, [*_files(data), mask, domain],
                       device,
                       progress) as (control, log_io, dev, progress):
            fld, dom = _load_inputs(data, mask, var, domain,
                                    _quality(quality_var, min_quality), domain_flags,
                                    _selection(sel, isel, group))
            if fld.frames < window:
                raise CtxqError(f"{fld.path}: {fld.frames} frames, fewer than --window "
                                f"{window}")
            options = MaskPriorOptions(window=window, channels=widths, stem_patch=stem_patch,
                                       steps=steps, max_minutes=max_minutes,
                                       batch_size=batch_size, lr=lr, patch=patch,
                                       val_fraction=val_fraction, seed=seed,
                                       checkpoint_every=checkpoint_every, precision=precision,
                                       compile=compile_network)
            model = train(fld.observed, dom, options, dev, log_io, progress, control)
            if control.group.main:
                model.training["command"] = _command_line()
                model.training["data"] = str(fld.path)
                log.info("real masks vs masks sampled from the prior (%d windows each):\n%s",
                         model.fidelity["samples"], fidelity_table(model.fidelity))
                model.save(output)
                runs.finish(control, output)


def fidelity_table(fidelity: dict) -> str:
    """Real and sampled mask statistics side by side."""
    rows = [("observed fraction", "observed_fraction"), ("autocorrelation (lag 1)",
                                                          "autocorrelation"),
            ("mean missing cluster (cells)", "missing_cluster_size"),
            ("mean observed cluster (cells)", "observed_cluster_size")]
    real, sampled = fidelity["real"], fidelity["sampled"]
    lines = [f"  {'':<30}{'real':>10}{'sampled':>10}"]
    lines += [f"  {label:<30}{real[key]:>10.3f}{sampled[key]:>10.3f}" for label, key in rows]
    hist = "  ".join(f"{a:.2f}/{b:.2f}" for a, b in zip(real["fraction_histogram"],
                                                       sampled["fraction_histogram"]))
    lines.append(f"  fraction histogram, 10 bins 0→1 (real/sampled): {hist}")
    return "\n".join(lines)


def main() -> None:
    """Console-script entry point."""
    app()
