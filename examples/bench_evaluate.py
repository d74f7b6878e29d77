"""ctxq against DINEOF, optimal interpolation and linear interpolation: datasets × masks.

Each case is a gappy record the way a user has one: ctxq trains on the record itself (a fixed
step budget), calibrates its spread on withheld observations and fills it; every baseline gets
the same observations and domain; all are scored on the same hidden cells against the truth.

Datasets: Kolmogorov-flow vorticity (64×64, simulated, ``examples/kolmogorov.py``) and the A1B
near-surface air temperature shipped with ``iris-sample-data`` (240 years × 37×49; skipped when
the package is absent). Masks: clouds hiding 30 %, and 10 % of the cells observed at random.

    python examples/bench_evaluate.py --out runs/bench_evaluate     # table, JSON and figures
    python examples/bench_evaluate.py --steps 50 --cases kolmogorov-cloud30 --frames 60  # smoke
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctxq_cli import evaluation  # noqa: E402
from ctxq_cli.frames import InMemory
from ctxq_cli.impute import impute_calibrated  # noqa: E402
from ctxq_cli.model import DenoiserModel  # noqa: E402
from ctxq_cli.plots import evaluation_figure  # noqa: E402
from ctxq_cli.train import TrainOptions, train_denoiser, validation_frames  # noqa: E402

from kolmogorov import simulate  # noqa: E402
from masks import make_mask  # noqa: E402

MASKS = {"cloud30": ("cloud", {"missing_fraction": 0.30}),
         "pixel10": ("pixel", {"observed_fraction": 0.10})}


def kolmogorov(frames: int) -> np.ndarray:
    """(T, H, W) vorticity in units of its std, from trajectories of 100 frames."""
    return simulate(max(1, frames // 100), min(frames, 100), seed=0).reshape(-1, 64, 64)


def a1b(frames: int) -> np.ndarray | None:
    """(T, H, W) A1B air temperature in K, or None without iris-sample-data."""
    try:
        from convert_real import read_a1b
    except ImportError:
        return None
    try:
        return read_a1b().data[:frames].astype(np.float32)
    except Exception as exc:   # the package is optional: say why and go on
        print(f"a1b: skipped ({exc})", flush=True)
        return None


DATASETS = {"kolmogorov": kolmogorov, "a1b": a1b}


def run_case(name: str, truth: np.ndarray, mask: str, args: argparse.Namespace,
             out: Path | None) -> dict:
    """Train, fill and score one dataset × mask case; returns the report."""
    kind, params = MASKS[mask]
    observed = make_mask(kind, truth.shape, np.random.default_rng(1), **params)[:, None]
    values = np.where(observed, truth[:, None], 0).astype(np.float32)
    domain = np.ones(truth.shape[-2:], bool)
    opts = TrainOptions(steps=args.steps, max_minutes=args.minutes, seed=args.seed,
                        normalization=args.normalization, temporal=args.temporal,
                        window=args.window, context_ratio=args.context_ratio,
                        attention_heads=args.attention_heads,
                        position_channels=args.position_channels, val_fraction=args.val_fraction,
                        calibration_holdout=args.calibration_holdout)
    dev = torch.device("cpu")
    saved = args.models / f"{name}_{mask}.safetensors" if args.models else None
    start = time.perf_counter()
    if saved is not None and saved.exists():
        model = DenoiserModel.load(saved, dev)
        print(f"{saved}: trained model reused ({model.step} steps)", flush=True)
    else:
        model = train_denoiser(InMemory(values, observed), domain, [name], opts, dev,
                               progress=False)
        if saved is not None:
            model.save(saved)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result, scale = impute_calibrated(model, values, observed, domain, ensemble=args.ensemble,
                                      device=dev)
    ctxq = evaluation.Estimate("ctxq", result.mean, std=result.std, members=result.members,
                               seconds=time.perf_counter() - start)
    estimates = [ctxq] + [evaluation.run_baseline(b, values, observed, domain, 0)
                          for b in args.baselines.split(",")]
    cells = ~observed
    reference = truth[:, None]
    report = evaluation.score(estimates, reference, cells, np.ones_like(observed), [name])
    print(evaluation.table(report), flush=True)
    by_frames = rmse_by_frames(model, result.mean, truth, observed)
    print("ctxq RMSE by frames: " + ", ".join(f"{k} {v['rmse']:.4f} ({v['frames']} frames)"
                                              for k, v in by_frames.items()), flush=True)
    if out is not None:
        case = evaluation.Case(f"{name} {mask}", [name], values, observed, domain, reference,
                               cells, np.ones_like(observed), estimates)
        evaluation_figure(out / f"{name}_{mask}.png", case, report, None)
    return {"dataset": name, "mask": mask, "frames": len(truth), "grid": list(truth.shape[1:]),
            "observed": float(observed.mean()), "train_s": train_s,
            "train_steps": model.step, "partition": model.partition.name,
            "spread": scale.to_dict(), "scores": report[name], "ctxq_by_frames": by_frames}


def rmse_by_frames(model: DenoiserModel, mean: np.ndarray, truth: np.ndarray,
                   observed: np.ndarray) -> dict[str, dict[str, float]]:
    """ctxq's RMSE on the gaps of the frames it trained on and of the validation frames that
    no training window touched (a record's fill, and a fill of frames it has not learnt)."""
    val_fraction = model.training.get("options", {}).get("val_fraction", 0.0)
    held = validation_frames(len(truth), model.window, val_fraction)
    error = (mean[:, 0] - truth) ** 2
    gaps = ~observed[:, 0]
    out = {}
    for name, frames in (("trained", ~held), ("validation", held)):
        cells = gaps & frames[:, None, None]
        if cells.any():
            out[name] = {"frames": int(frames.sum()), "rmse": float(np.sqrt(error[cells].mean()))}
    return out


def main() -> None:
    """Run every case and print the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="kolmogorov-cloud30,kolmogorov-pixel10,a1b-cloud30,"
                                      "a1b-pixel10")
    p.add_argument("--frames", type=int, default=800, help="frames per record at most")
    p.add_argument("--steps", type=int, default=10000, help="ctxq training steps per case")
    p.add_argument("--minutes", type=float, default=None,
                   help="ctxq training time budget per case (the steps still cap it)")
    p.add_argument("--temporal", default="smoother", choices=["smoother", "none"])
    p.add_argument("--ensemble", type=int, default=32)
    p.add_argument("--normalization", default="cell", choices=["variable", "cell"])
    p.add_argument("--attention-heads", type=int, default=4)
    p.add_argument("--position-channels", type=int, default=8)
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="frames held out from training (blocks over the record) to keep the "
                        "best weights and stop early")
    p.add_argument("--window", type=int, default=3, help="frames per training window")
    p.add_argument("--context-ratio", type=float, default=0.8,
                   help="share of observed cells kept as context")
    p.add_argument("--seed", type=int, default=0, help="ctxq training seed")
    p.add_argument("--no-calibration-holdout", dest="calibration_holdout",
                   action="store_false",
                   help="train on the cells the spread is calibrated on too")
    p.add_argument("--models", type=Path, default=None,
                   help="folder of trained models: a case's model is reused when there, "
                        "else trained and saved there (to re-score without retraining)")
    p.add_argument("--baselines", default="dineof,oi,linear")
    p.add_argument("--out", type=Path, default=None, help="folder for report.json and PNGs")
    args = p.parse_args()
    for folder in (args.out, args.models):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    budget = f"{args.steps} steps" + (f" or {args.minutes:g} min" if args.minutes else "")
    print(f"CPU budget: {torch.get_num_threads()} threads; ctxq trains {budget} per "
          f"case (batch 8), K = {args.ensemble}", flush=True)
    rows = []
    for case in args.cases.split(","):
        dataset, mask = case.split("-")
        truth = DATASETS[dataset](args.frames)
        if truth is None:
            continue
        print(f"\n{case}: {truth.shape[0]} frames of {truth.shape[1]}×{truth.shape[2]}",
              flush=True)
        rows.append(run_case(dataset, truth, mask, args, args.out))

    print("\n| dataset | mask | method | RMSE | VRMSE | CRPS | spread/skill | cov90 | time s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        for method, s in row["scores"].items():
            def fmt(key: str, s: dict = s) -> str:
                v = s.get(key)
                return "-" if v is None or not np.isfinite(v) else f"{v:.3g}"
            print(f"| {row['dataset']} | {row['mask']} | {method} | {fmt('rmse')} | "
                  f"{fmt('vrmse')} | {fmt('crps')} | {fmt('spread_skill')} | "
                  f"{fmt('coverage_90')} | {fmt('seconds')} |")
    if args.out:
        (args.out / "report.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
