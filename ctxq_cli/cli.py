"""The ``ctxq`` command line: parse, call the core, report. User errors are one line."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer

from ctxq_cli import __version__
from ctxq_cli import cli_options as opt
from ctxq_cli.errors import CtxqError
from ctxq_cli.reporting import reporting

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


def _device(name: str):
    """Resolve --device to a torch device."""
    from ctxq_cli.api import device

    return device(name)


def _command_line() -> str:
    """The command as typed, for provenance."""
    return "ctxq " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def _read(var: list[str] | None, mask: Path | None, quality_var: str | None,
          min_quality: float | None, sel: list[str] | None, isel: list[str] | None,
          group: str | None, domain: Path | None = None, domain_flags: str | None = None):
    """The record options every command shares ('water,open_lake' flags as meanings)."""
    from ctxq_cli.reading import ReadOptions

    meanings = (None if domain_flags is None else
                tuple(m.strip() for m in domain_flags.split(",") if m.strip()))
    return ReadOptions(variables=tuple(var) if var else None, mask=mask,
                       quality_var=quality_var, min_quality=min_quality, sel=tuple(sel or ()),
                       isel=tuple(isel or ()), group=group, domain=domain,
                       domain_flags=meanings)


@app.command("train-denoiser")
def train_denoiser(
    data: opt.DataArg,
    mask: opt.MaskOpt = None,
    var: opt.VarOpt = None,
    domain: opt.DomainOpt = None,
    domain_flags: opt.DomainFlagsOpt = None,
    quality_var: opt.QualityVarOpt = None,
    min_quality: opt.MinQualityOpt = None,
    sel: opt.SelOpt = None,
    isel: opt.IselOpt = None,
    group: opt.GroupOpt = None,
    output: opt.OutputOpt = Path("denoiser.safetensors"),
    window: opt.WindowOpt = 3,
    temporal: opt.TemporalOpt = "smoother",
    partition: opt.PartitionOpt = "auto",
    mask_prior: opt.MaskPriorOpt = None,
    context_ratio: opt.ContextRatioOpt = 0.8,
    block_size: opt.BlockSizeOpt = None,
    channels: opt.ChannelsOpt = "32,64,96",
    normalization: opt.NormalizationOpt = "cell",
    stem_patch: opt.StemPatchOpt = 2,
    attention_heads: opt.AttentionHeadsOpt = 4,
    position_channels: opt.PositionChannelsOpt = 8,
    calibration_holdout: opt.CalibrationHoldoutOpt = True,
    steps: opt.StepsOpt = 20000,
    max_minutes: opt.MaxMinutesOpt = None,
    batch_size: opt.BatchOpt = 8,
    lr: opt.LrOpt = 2e-3,
    patch: opt.PatchOpt = 128,
    val_fraction: opt.ValFractionOpt = 0.1,
    patience: opt.PatienceOpt = 8,
    select: opt.SelectOpt = "auto",
    log_file: opt.LogOpt = None,
    checkpoint_every: opt.CheckpointEveryOpt = 1000,
    resume: opt.ResumeOpt = False,
    precision: opt.PrecisionOpt = "auto",
    compile_network: opt.CompileOpt = False,
    seed: opt.SeedOpt = 0,
    device: opt.DeviceOpt = "auto",
    memory_gb: opt.MemoryOpt = 4.0,
    overwrite: opt.OverwriteOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Train a denoiser on incomplete fields (context-query diffusion).

    The network starts from a first guess that reaches across the whole record (--temporal
    smoother: each cell's observations before and after, and its neighbours', weighted by a
    Gauss-Markov model of time fitted on the record) and learns what it misses.

    A tenth of the observations of the record's middle 48 frames, hidden like its gaps, stay
    out of training (--calibration-holdout): `impute` calibrates its ensemble spread on them.
    Training keeps the weights that fill them best and stops when that no longer improves
    (--select).

    On SIGTERM or SIGINT (a batch job's time limit) training writes a resumable state beside
    the output and exits with code 75; the same command with --resume goes on from there.
    Started by torchrun, the processes train one model together (see the README).
    """
    with reporting(quiet) as progress:
        from ctxq_cli import runs
        from ctxq_cli.train import TrainOptions

        if (partition == "prior") != (mask_prior is not None):   # before any output check
            raise CtxqError("--partition prior and --mask-prior FILE go together")
        options = TrainOptions(window=window, temporal=temporal, partition=partition,
                               context_ratio=context_ratio, block_size=block_size,
                               channels=_parse_channels(channels), stem_patch=stem_patch,
                               attention_heads=attention_heads,
                               position_channels=position_channels,
                               calibration_holdout=calibration_holdout, steps=steps,
                               max_minutes=max_minutes, batch_size=batch_size, lr=lr,
                               patch=patch, val_fraction=val_fraction, patience=patience,
                               select=select, seed=seed, checkpoint_every=checkpoint_every,
                               normalization=normalization, precision=precision,
                               compile=compile_network)
        read = _read(var, mask, quality_var, min_quality, sel, isel, group, domain,
                     domain_flags)
        runs.train(data, read, options, runs.Run(output, log_file, resume, overwrite, device,
                                                 progress, _command_line(), memory_gb),
                   mask_prior)


def _parse_channels(text: str) -> tuple[int, ...]:
    """'32,64,96' → (32, 64, 96) (checked by the options)."""
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise CtxqError(f"--channels must be comma-separated integers, not '{text}'") from None


@app.command()
def impute(
    data: opt.DataArg,
    mask: opt.MaskOpt = None,
    var: opt.VarOpt = None,
    domain: opt.DomainOpt = None,
    domain_flags: opt.DomainFlagsOpt = None,
    quality_var: opt.QualityVarOpt = None,
    min_quality: opt.MinQualityOpt = None,
    checkpoint: opt.CheckpointOpt = Path(
        "denoiser.safetensors"),
    ensemble: opt.EnsembleOpt = 32,
    steps: opt.SamplerStepsOpt = 1,
    output: opt.ImputeOutputOpt = None,
    output_dir: opt.OutputDirOpt = None,
    sel: opt.SelOpt = None,
    isel: opt.IselOpt = None,
    group: opt.GroupOpt = None,
    members: opt.MembersOpt = False,
    batch_size: opt.BatchSizeOpt = 64,
    guided: opt.GuidedOpt = True,
    guidance_rho: opt.GuidanceRhoOpt = 0.5,
    guidance_weight: opt.GuidanceWeightOpt = 0.03,
    calibrate: opt.CalibrateOpt = True,
    tile: opt.TileOpt = None,
    tile_overlap: opt.TileOverlapOpt = 32,
    wrap_lon: opt.WrapLonOpt = False,
    allow_other_grid: opt.AllowOtherGridOpt = False,
    chunk: opt.ChunkOpt = None,
    seed: opt.SeedOpt = 0,
    device: opt.DeviceOpt = "auto",
    overwrite: opt.OverwriteOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Fill the gaps of a field with a trained denoiser.

    NetCDF files are read and written a chunk of frames at a time (--chunk) and large grids
    are filled by overlapping tiles (--tile), so memory follows the chunk and the tile, not
    the file. A record of many files is written to one file (--output) or to one file per
    input file (--output-dir); nothing is written unless the whole record is filled.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import fill

        options = fill.ImputeOptions(
            ensemble=ensemble, steps=steps, seed=seed, members=members,
            batch_size=batch_size, guided=guided, guidance_rho=guidance_rho,
            guidance_weight=guidance_weight, calibrate=calibrate, tile=tile,
            tile_overlap=tile_overlap, wrap_lon=wrap_lon, chunk=chunk,
            allow_other_grid=allow_other_grid)
        read = _read(var, mask, quality_var, min_quality, sel, isel, group, domain,
                     domain_flags)
        outputs = fill.fill_files(data, checkpoint, read, options, output, output_dir,
                                  overwrite, _device(device), progress, _command_line())
        log.info("wrote %s", outputs[0] if len(outputs) == 1 else
                 f"{len(outputs)} files to {output_dir}")


def _files(data: list[Path]) -> list[Path]:
    """The files the inputs name (globs and directories expanded)."""
    from ctxq_cli.record import expand

    return expand(data)


@app.command()
def evaluate(
    data: opt.DataOpt,
    truth: opt.TruthOpt = None,
    mask: opt.MaskOpt = None,
    var: opt.VarOpt = None,
    domain: opt.DomainOpt = None,
    domain_flags: opt.DomainFlagsOpt = None,
    quality_var: opt.QualityVarOpt = None,
    min_quality: opt.MinQualityOpt = None,
    sel: opt.SelOpt = None,
    isel: opt.IselOpt = None,
    group: opt.GroupOpt = None,
    checkpoint: opt.EvaluateCheckpointOpt = None,
    withhold: opt.WithholdOpt = None,
    withhold_pattern: opt.WithholdPatternOpt = "mask",
    ensemble: opt.EnsembleOpt = 32,
    steps: opt.EvaluateSamplerStepsOpt = 1,
    baseline: opt.BaselineOpt = None,
    json_file: opt.JsonFileOpt = None,
    plot: opt.PlotOpt = None,
    frame: opt.FrameOpt = None,
    batch_size: opt.BatchSizeOpt = 64,
    calibrate: opt.CalibrateOpt = True,
    seed: opt.SeedOpt = 0,
    device: opt.DeviceOpt = "auto",
    quiet: opt.QuietOpt = False,
) -> None:
    """Score gap filling against a truth, or by hiding observations (cross-validation).

    Scores the cells missing in the input (or hidden by --withhold) inside the domain, for
    ctxq and the chosen baselines, all given the same observations.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import cases, evaluation, safe_output
        from ctxq_cli.fill import ImputeOptions

        names = evaluation.parse_baselines(baseline)
        for path in (json_file, plot):
            if path is not None:
                safe_output.check_output(path, True,
                                         [*_files(data), truth, mask, domain, checkpoint])
        read = _read(var, mask, quality_var, min_quality, sel, isel, group, domain,
                     domain_flags)
        if checkpoint is not None:
            options = ImputeOptions(ensemble=ensemble, steps=steps, seed=seed,
                                    batch_size=batch_size, calibrate=calibrate)
            case = cases.from_checkpoint(data, checkpoint, _device(device), options, read,
                                         truth=truth, withhold=withhold,
                                         pattern=withhold_pattern, progress=progress)
        else:
            if truth is None:
                raise CtxqError("give --truth TRUTH to score an imputed file, or --checkpoint "
                                "CKPT to cross-validate on the observations")
            if withhold:
                raise CtxqError("--withhold needs --checkpoint (ctxq imputes what it hides)")
            if quality_var or min_quality is not None or domain_flags:
                raise CtxqError("--quality-var, --min-quality and --domain-flags select "
                                "observations to impute: they need --checkpoint")
            case = cases.imputed_file(data, truth, mask, var, read.selection)
        report = evaluation.evaluate(case, names, seed)
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


@app.command("train-mask-prior")
def train_mask_prior(
    data: opt.DataArg,
    mask: opt.MaskOpt = None,
    var: opt.VarOpt = None,
    domain: opt.DomainOpt = None,
    domain_flags: opt.DomainFlagsOpt = None,
    quality_var: opt.QualityVarOpt = None,
    min_quality: opt.MinQualityOpt = None,
    sel: opt.SelOpt = None,
    isel: opt.IselOpt = None,
    group: opt.GroupOpt = None,
    output: opt.OutputOpt = Path("mask_prior.safetensors"),
    window: opt.PriorWindowOpt = 3,
    channels: opt.ChannelsOpt = "32,64",
    stem_patch: opt.StemPatchOpt = 2,
    steps: opt.StepsOpt = 4000,
    max_minutes: opt.MaxMinutesOpt = None,
    batch_size: opt.BatchOpt = 16,
    lr: opt.LrOpt = 2e-3,
    patch: opt.PatchOpt = 128,
    val_fraction: opt.ValFractionOpt = 0.1,
    log_file: opt.LogOpt = None,
    checkpoint_every: opt.CheckpointEveryOpt = 1000,
    resume: opt.ResumeOpt = False,
    precision: opt.PrecisionOpt = "auto",
    compile_network: opt.CompileOpt = False,
    seed: opt.SeedOpt = 0,
    device: opt.DeviceOpt = "auto",
    memory_gb: opt.MemoryOpt = 4.0,
    overwrite: opt.OverwriteOpt = False,
    quiet: opt.QuietOpt = False,
) -> None:
    """Learn the distribution of the observation masks (Bayesian Flow Network prior).

    Prints the observed fraction, spatial autocorrelation and cluster sizes of the real masks
    next to masks sampled from the prior. Stops and resumes like train-denoiser.
    """
    with reporting(quiet) as progress:
        from ctxq_cli import runs
        from ctxq_cli.train import MaskPriorOptions

        options = MaskPriorOptions(window=window, channels=_parse_channels(channels),
                                   stem_patch=stem_patch, steps=steps, max_minutes=max_minutes,
                                   batch_size=batch_size, lr=lr, patch=patch,
                                   val_fraction=val_fraction, seed=seed,
                                   checkpoint_every=checkpoint_every, precision=precision,
                                   compile=compile_network)
        read = _read(var, mask, quality_var, min_quality, sel, isel, group, domain,
                     domain_flags)
        runs.train(data, read, options, runs.Run(output, log_file, resume, overwrite, device,
                                                 progress, _command_line(), memory_gb))


def main() -> None:
    """Console-script entry point."""
    app()
