"""The command line's arguments and options: their flags, help texts and bounds, shared by
the commands in :mod:`ctxq_cli.cli`. A flag is its options field's name with dashes
(``max_minutes``: ``--max-minutes``), but for ``--var`` (``ReadOptions.variables``); see
:func:`ctxq_cli.reporting.as_flags`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

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
MemoryOpt = Annotated[float, typer.Option(
    "--memory-gb", help="Frames held in memory while training, in GB (and as much again of "
    "the temporal smoother's states), per process; a larger record is read from its files as "
    "training needs it (about 64 MiB at a time besides), the states go to scratch files in "
    "$TMPDIR.", min=0)]
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
    help="Stop after this many validations (one every 250 steps) without a new best "
         "score (see --select; 0: never stop early).", min=0)]
SelectOpt = Annotated[str, typer.Option(
    help="What keeps the weights and stops early: withheld (the fill error on the "
         "observations kept out by --calibration-holdout, filled as impute fills them), "
         "validation (the denoising loss on the validation frames), or auto (withheld when "
         "there are such observations).")]
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
OutputOpt = Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write.")]
WindowOpt = Annotated[int, typer.Option(help="Consecutive frames per sample.", min=1)]
TemporalOpt = Annotated[str, typer.Option(
    help="First guess from every frame of the record: smoother (a Gauss-Markov smoother "
         "in time, fitted on the record, that the network corrects) or none.")
]
PartitionOpt = Annotated[str, typer.Option(
    help="Context/query partition: auto (from the masks' structure), pixel, block, "
         "empirical or prior.")]
MaskPriorOpt = Annotated[Path | None, typer.Option(
    help="Mask prior (from train-mask-prior) for --partition prior; embedded in the "
         "checkpoint.")]
ContextRatioOpt = Annotated[float, typer.Option(
    help="Share of observed cells kept as context (pixel, block).", min=0.05,
    max=0.99)]
BlockSizeOpt = Annotated[int | None, typer.Option(
    help="Block side in cells for --partition block (default: from the masks).",
    min=1)]
ChannelsOpt = Annotated[str, typer.Option(help="U-Net widths per level.")]
NormalizationOpt = Annotated[str, typer.Option(
    help="cell: remove each cell's temporal mean (its climatology) first, as EOF methods "
         "do; variable: one mean per variable (with --position-channels 0, the model then "
         "fills other grids too).")
]
AttentionHeadsOpt = Annotated[int, typer.Option(
    help="Self-attention heads over the coarsest level, so gaps are filled from "
         "large-scale patterns (0: none; must divide the last --channels width).",
    min=0)]
PositionChannelsOpt = Annotated[int, typer.Option(
    help="Channels of a learned position map of the training grid (0: none; the model "
         "then fills other grids too).", min=0)]
CalibrationHoldoutOpt = Annotated[bool, typer.Option(
    "--calibration-holdout/--no-calibration-holdout",
    help="Keep the observations impute calibrates its spread on out of training, so the "
         "spread of this record is calibrated on cells the network never saw.")]
CheckpointOpt = Annotated[Path, typer.Option(help="Denoiser checkpoint.")]
EnsembleOpt = Annotated[int, typer.Option(help="Ensemble members K.", min=1)]
SamplerStepsOpt = Annotated[int, typer.Option(
    help="Sampler steps S: 1 = single-step ensemble mean, >1 = posterior samples.",
    min=1)]
ImputeOutputOpt = Annotated[Path | None, typer.Option(
    "--output", "-o",
    help="Output file (default: the input's name with _imputed, as .nc or .npz).")]
OutputDirOpt = Annotated[Path | None, typer.Option(
    "--output-dir", help="Write one output per input file into this directory (created "
    "if missing), named like it with _imputed (daily files in, daily files out).")]
MembersOpt = Annotated[bool, typer.Option(help="Also write every ensemble member.")]
BatchSizeOpt = Annotated[int, typer.Option(help="Denoiser passes per batch.", min=1)]
GuidedOpt = Annotated[bool, typer.Option(
    "--guided/--no-guided",
    help="With a mask prior: draw each member's context guided towards its observations "
         "(slower) instead of from the stored pool.")]
GuidanceRhoOpt = Annotated[float, typer.Option(
    help="Guided prior: share ρ of the observed cells kept in each anchor.", min=0,
    max=1)]
GuidanceWeightOpt = Annotated[float, typer.Option(
    help="Guided prior: guidance weight w_g per in-domain cell.", min=0)]
TileOpt = Annotated[int | None, typer.Option(
    help="Fill the grid by overlapping square tiles of this many cells a side (default: "
         "the whole grid up to 512 cells a side, else 256).", min=8)]
TileOverlapOpt = Annotated[int, typer.Option(
    help="Cells shared by neighbouring tiles, blended smoothly.", min=0)]
WrapLonOpt = Annotated[bool, typer.Option(
    "--wrap-lon", help="The last axis is a periodic longitude: tiles wrap across it.")
]
AllowOtherGridOpt = Annotated[bool, typer.Option(
    "--allow-other-grid", help="Fill a grid whose coordinates differ from the training "
    "grid's (same shape), e.g. another region, knowingly.")]
ChunkOpt = Annotated[int | None, typer.Option(
    help="Frames read, filled and written at a time (default: about 1 GiB of ensemble "
         "arrays).", min=1)]
DataOpt = Annotated[list[Path], typer.Argument(
    help="Imputed field (output of 'ctxq impute'), or observations with --checkpoint; "
         "several files, a glob or a directory make one record.",
    show_default=False, metavar="DATA")]
TruthOpt = Annotated[Path | None, typer.Option(help="Complete reference field.")]
EvaluateCheckpointOpt = Annotated[Path | None, typer.Option(
    help="Denoiser: impute DATA here (hiding --withhold of it when there is no truth).")
]
WithholdOpt = Annotated[float | None, typer.Option(
    help="Share of the observations to hide and score on (default 0.1 without --truth).",
    min=0, max=0.9)]
WithholdPatternOpt = Annotated[str, typer.Option(
    help="Shape of the hidden cells: mask (another frame's gaps; scattered cells when the "
         "gaps are scattered), pixel or block.")
]
EvaluateSamplerStepsOpt = Annotated[int, typer.Option(help="Sampler steps S.", min=1)]
BaselineOpt = Annotated[str | None, typer.Option(
    help="Baselines to score beside ctxq: any of dineof, linear, oi and persistence (each "
         "cell's nearest observations in time), comma-separated.")]
JsonFileOpt = Annotated[Path | None, typer.Option(
    "--json", help="Write every number (overall and per frame) to this JSON file.")]
PlotOpt = Annotated[Path | None, typer.Option(
    help="Write a figure (PNG) of one frame for every method and a calibration plot.")
]
FrameOpt = Annotated[int | None, typer.Option(
    help="Frame to plot (default: the one with most scored cells).", min=0)]
PriorWindowOpt = Annotated[int, typer.Option(
    help="Consecutive mask frames per sample (use the denoiser's --window).", min=1)]
