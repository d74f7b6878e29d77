"""What ``ctxq evaluate`` scores: a filled file against a truth, or a model's fill of a record
with some observations hidden (cross-validation), as :class:`~ctxq_cli.evaluation.Case`\\ s
that every baseline is then run on with the same observations."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ctxq_cli import evaluation, masks, reading, record
from ctxq_cli.errors import CtxqError

log = logging.getLogger(__name__)


def read_truth(truth: Path, fld: reading.Field, selection: record.Selection | None = None
               ) -> reading.Field:
    """The reference field for ``fld``: its variables, of its shape."""
    ref = reading.read_field(truth, fld.names, selection=selection)
    if ref.values.shape != fld.values.shape:
        raise CtxqError(f"{truth}: shape {ref.values.shape} does not match {fld.path} "
                        f"{fld.values.shape}")
    return ref


def imputed_file(data: Sequence[Path], truth: Path, mask: Path | None,
                 variables: Sequence[str] | None,
                 selection: record.Selection | None = None) -> evaluation.Case:
    """A filled file scored against the truth on its filled (or ``mask``'s missing) cells."""
    written = reading.imputed_variables(record.expand(data)[0])
    est = reading.read_field(data, variables or written or None, selection=selection)
    by_ctxq = all(n in written for n in est.names)
    flags = (reading.read_field(data, [f"{n}_flag" for n in est.names], selection=selection)
             if by_ctxq else None)
    std = (reading.read_field(data, [f"{n}_std" for n in est.names], selection=selection).values
           if by_ctxq else None)
    ref = read_truth(truth, est, selection)
    if mask is not None:
        seen = masks.read_mask(mask, est.names).astype(bool)
        if seen.shape[-2:] != est.grid or seen.shape[0] not in (1, est.frames):
            raise CtxqError(f"{mask}: mask shape {seen.shape} does not match {est.path} "
                            f"{est.values.shape}")
        observed = np.broadcast_to(seen, est.values.shape) & est.observed
    elif flags is not None:
        observed = flags.observed & (flags.values == 0)
    else:
        raise CtxqError(f"{est.path}: no VAR_flag variables (not written by ctxq impute?); "
                        "give --mask MASK, the observation mask of the imputed input")
    dom = (flags.observed if flags is not None else est.observed).any(axis=(0, 1))
    inside = dom[None, None]
    gaps = ~observed & inside & est.observed
    return evaluation.Case(
        description=f"{est.path} against {truth}: scored on the filled cells",
        variables=est.names, observed_values=np.where(observed, est.values, 0),
        observed=observed, domain=dom, reference=ref.values,
        cells=gaps & ref.observed, valid=ref.observed & inside,
        estimates=[evaluation.Estimate("ctxq", est.values, std=std)], times=est.times()[0])


@dataclass(frozen=True)
class Withholding:
    """Which observations cross-validation hides: a share, shaped like the gaps or not."""

    fraction: float = 0.1
    pattern: str = "mask"
    seed: int = 0


def from_checkpoint(data: Sequence[Path], checkpoint: Path, device: Any, options: Any,
                    read: reading.ReadOptions = reading.ReadOptions(), *,
                    truth: Path | None = None, withhold: float | None = None,
                    pattern: str = "mask", progress: bool = False) -> evaluation.Case:
    """Read a record and a model and fill it with ``withhold`` of the observations hidden
    (by default a tenth without ``truth``, none with it); see :func:`cross_validation`."""
    from ctxq_cli.model import DenoiserModel

    model = DenoiserModel.load(checkpoint, device)
    fld = reading.read_field(data, read.variables, read.mask, default=model.variables,
                             quality=read.quality, selection=read.selection)
    log.info("%s: %s", fld.path, fld.describe())
    fraction = withhold if withhold is not None else (0.0 if truth else 0.1)
    return cross_validation(fld, model, checkpoint, read.read_domain(fld.grid), truth,
                            Withholding(fraction, pattern, options.seed), options, device,
                            progress, read.selection)


def cross_validation(fld: reading.Field, model: Any, checkpoint: Path, domain: np.ndarray | None,
                     truth: Path | None, withholding: Withholding, options: Any, device: Any,
                     progress: bool = False, selection: record.Selection | None = None
                     ) -> evaluation.Case:
    """A model's fill of ``fld`` (with :class:`~ctxq_cli.fill.ImputeOptions` ``options``) with
    some observations hidden, scored on them (or on the gaps against ``truth``)."""
    from ctxq_cli.fill import check_record, imputation_domain, model_times
    from ctxq_cli.impute import impute_calibrated
    from ctxq_cli.withhold import withhold as hide

    check_record(fld, model, fld.path, (fld.values, fld.observed), checkpoint=str(checkpoint))
    dom = imputation_domain(fld, model, domain)
    seed, pattern = withholding.seed, withholding.pattern
    hidden = np.zeros_like(fld.observed)
    if withholding.fraction > 0:
        hidden = hide(fld.observed, dom, withholding.fraction, pattern, seed)
        if not hidden.any():
            raise CtxqError(f"{fld.path}: nothing to withhold (too few observations)")
    kept = fld.observed & ~hidden
    inside = dom[None, None]
    if truth is not None:
        ref = read_truth(truth, fld, selection)
        reference, valid = ref.values, ref.observed & inside
        cells = ~kept & inside & ref.observed
        what = f"against {truth} on {'the gaps' if not hidden.any() else 'gaps and hidden cells'}"
    else:
        reference, valid, cells = fld.values, fld.observed & inside, hidden
        what = (f"cross-validation: {100 * hidden.sum() / max(fld.observed.sum(), 1):.1f} % of "
                f"the observations hidden ({pattern} pattern, seed {seed}) and scored")
    values = np.where(kept, fld.values, 0)      # hidden values never reach any method
    times = model_times(fld, model)
    start = time.perf_counter()
    ensemble, steps = options.ensemble, options.steps
    result, _ = impute_calibrated(model, values, kept, dom, ensemble=ensemble, steps=steps,
                                  seed=seed, device=device, batch=options.batch_size,
                                  progress=progress, calibrate=options.calibrate, times=times)
    ctxq = evaluation.Estimate("ctxq", result.mean, std=result.std, members=result.members,
                               seconds=time.perf_counter() - start)
    return evaluation.Case(
        description=f"{fld.path} with {checkpoint} (K = {ensemble}, S = {steps}), {what}",
        variables=fld.names, observed_values=values, observed=kept, domain=dom,
        reference=reference, cells=cells, valid=valid, estimates=[ctxq],
        times=fld.times()[0])
