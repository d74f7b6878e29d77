"""ctxq on slowly evolving daily records, against DINEOF, OI, linear, persistence and the optimum.

Every case is a record of 1300 daily frames of 64×64 cells; ctxq trains on the first 1200 under
a CPU time budget (``--minutes``, 5 by default) and fills

- ``new``: the last 100 frames, given as a file of their own (a model used on new data);
- ``record``: the last 100 frames of the training record itself, every method seeing the whole
  training record (the way DINEOF is used).

Cases:

- ``kolmogorov-clouds75``: Kolmogorov flow sampled every 0.01 time units (frame-to-frame
  correlation 0.999), clouds hiding 75 % of every frame, independent from one day to the next;
- ``kolmogorov-points3``: the same flow, 3 % of the cells observed at random each day;
- ``kolmogorov-persistent``: clouds hiding 75 % that persist for days (e-folding 5 days);
- ``grf-clouds30``: independent frames of a stationary Gaussian random field (Matérn-3/2, length
  scale 6 cells, periodic), clouds hiding 30 %; the optimum is simple kriging with the true
  covariance (``optimum``).

Every method gets the same observations and is scored on the same hidden cells against the
truth; RMSE in units of the truth's standard deviation. ``smoother`` is ctxq's first guess alone
(the network's input, without the network).

    python examples/bench_time.py --out runs/bench_time                 # table, JSON, figures
    python examples/bench_time.py --cases grf-clouds30 --minutes 0.2 --frames 200   # smoke
    python examples/bench_time.py --minutes 0 --steps 1500    # a budget in steps, not time
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
from ctxq_cli.spread import Spread  # noqa: E402
from ctxq_cli.temporal import Smoother  # noqa: E402
from ctxq_cli.train import TrainOptions, train_denoiser  # noqa: E402

from kolmogorov import simulate  # noqa: E402
from masks import make_mask  # noqa: E402

GRID = 64
HELD = 100     # frames filled: the held-out end, and the end of the training record
GRF_LENGTH = 6.0


def kolmogorov(frames: int, seed: int) -> np.ndarray:
    """(T, H, W) vorticity of one slowly sampled trajectory (lag-1 correlation 0.999)."""
    return simulate(1, frames, frame_interval=0.01, seed=seed, threads=2)[0]


def grf_spectrum(n: int, length: float) -> np.ndarray:
    """Spectral density (n, n) of a periodic Matérn-3/2 field with unit variance."""
    k = 2 * np.pi * np.fft.fftfreq(n)
    k2 = k[:, None] ** 2 + k[None, :] ** 2
    density = (3.0 / length ** 2 + k2) ** -2.5          # Matérn ν = 3/2 in two dimensions
    return density / density.sum() * n * n             # unit variance


def grf(frames: int, seed: int) -> np.ndarray:
    """(T, H, W) independent frames of the periodic Matérn-3/2 field."""
    rng = np.random.default_rng(seed)
    amplitude = np.sqrt(grf_spectrum(GRID, GRF_LENGTH))
    noise = rng.standard_normal((frames, GRID, GRID))
    return np.real(np.fft.ifft2(np.fft.fft2(noise) * amplitude)).astype(np.float32)


def kriging_optimum(values: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """Simple kriging of each frame (T, H, W) with the true covariance of :func:`grf`."""
    n = GRID
    cov = np.real(np.fft.ifft2(grf_spectrum(n, GRF_LENGTH)))        # c(Δ) on the torus
    yy, xx = np.divmod(np.arange(n * n), n)
    out = values.astype(np.float64).copy()
    for t in range(len(values)):
        seen = observed[t].ravel()
        o, g = np.flatnonzero(seen), np.flatnonzero(~seen)
        if not len(g):
            continue

        def c(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            return cov[(yy[a][:, None] - yy[b][None]) % n, (xx[a][:, None] - xx[b][None]) % n]

        weights = np.linalg.solve(c(o, o) + 1e-9 * np.eye(len(o)), c(o, g))
        frame = out[t].ravel()
        frame[g] = weights.T @ frame[o]
        out[t] = frame.reshape(n, n)
    return out.astype(np.float32)


CASES = {
    "kolmogorov-clouds75": (kolmogorov, "cloud", {"missing_fraction": 0.75, "persistence": 0}),
    "kolmogorov-points3": (kolmogorov, "pixel", {"observed_fraction": 0.03}),
    "kolmogorov-persistent": (kolmogorov, "cloud", {"missing_fraction": 0.75,
                                                    "persistence": 5}),
    "grf-clouds30": (grf, "cloud", {"missing_fraction": 0.30, "persistence": 0}),
}


def smoother_alone(model: DenoiserModel, values: np.ndarray, observed: np.ndarray,
                   times: np.ndarray) -> np.ndarray:
    """ctxq's first guess without the network: the smoother's mean, in physical units."""
    norm = model.normalization
    normed = torch.from_numpy(norm.apply(values, observed))
    mean, _ = Smoother(model.smoother).smooth(normed, torch.from_numpy(observed),
                                              torch.from_numpy(times))
    out = norm.invert(mean.float().numpy())
    return np.where(observed, values, out)


def fill(model: DenoiserModel, values: np.ndarray, observed: np.ndarray, times: np.ndarray,
         part: slice, args: argparse.Namespace) -> tuple[evaluation.Estimate, Spread]:
    """ctxq's calibrated ensemble over frames ``part`` of a record (every frame in reach)."""
    domain = np.ones(values.shape[-2:], bool)
    start = time.perf_counter()
    result, scale = impute_calibrated(model, values, observed, domain, ensemble=args.ensemble,
                                      times=times, fill=part)
    return evaluation.Estimate("ctxq", result.mean, std=result.std, members=result.members,
                               seconds=time.perf_counter() - start), scale


def run_case(name: str, args: argparse.Namespace, out: Path | None) -> list[dict]:
    """Train on the first frames of a case's record, fill both ways, score every method."""
    make, kind, params = CASES[name]
    truth = make(args.frames, args.seed)[:, None]
    rng = np.random.default_rng(1000 + args.seed)
    observed = make_mask(kind, truth[:, 0].shape, rng, **params)[:, None]
    values = np.where(observed, truth, 0).astype(np.float32)
    times = np.arange(len(truth), dtype=np.float64)         # daily
    sd = float(truth.std())
    lag1 = float(np.mean([np.corrcoef(truth[i].ravel(), truth[i + 1].ravel())[0, 1]
                          for i in range(0, len(truth) - 1, 10)]))
    split = len(truth) - HELD
    domain = np.ones(truth.shape[-2:], bool)
    print(f"\n{name}: {len(truth)} frames of {GRID}×{GRID}, lag-1 correlation {lag1:.4f}, "
          f"{100 * observed.mean():.1f} % observed", flush=True)
    saved = args.models / f"{name}_s{args.seed}.safetensors" if args.models else None
    start = time.perf_counter()
    if saved is not None and saved.exists():
        model = DenoiserModel.load(saved)
        print(f"{saved}: trained model reused ({model.step} steps)", flush=True)
    else:
        options = TrainOptions(steps=args.steps, max_minutes=args.minutes or None,
                               seed=args.train_seed, temporal=args.temporal, **args.train)
        model = train_denoiser(InMemory(values[:split], observed[:split]), domain, [name], options,
                               torch.device("cpu"), progress=False, times=times[:split],
                               time_unit="days")
        if saved is not None:
            model.save(saved)
    train_s = time.perf_counter() - start
    rows = []
    for where in ("new", "record"):
        if where == "new":
            v, o, t, part = values[split:], observed[split:], times[split:], slice(0, HELD)
        else:
            v, o, t = values[:split], observed[:split], times[:split]
            part = slice(split - HELD, split)
        ctxq, scale = fill(model, v, o, t, part, args)
        print(f"{name}, {where}: spread {scale.describe()}", flush=True)
        estimates = [ctxq]
        if model.smoother is not None:
            started = time.perf_counter()
            estimates.append(evaluation.Estimate(
                "smoother", smoother_alone(model, v, o, t)[part],
                seconds=time.perf_counter() - started))
        for baseline in args.baselines.split(","):
            per_frame = baseline in ("oi", "linear")       # no use for the other frames
            src = (v[part], o[part], t[part]) if per_frame else (v, o, t)
            est = evaluation.run_baseline(baseline, src[0], src[1], domain, 0, src[2])
            if not per_frame:
                est.mean = est.mean[part]
            estimates.append(est)
        if name.startswith("grf"):
            started = time.perf_counter()
            estimates.append(evaluation.Estimate(
                "optimum", kriging_optimum(v[part][:, 0], o[part][:, 0])[:, None],
                seconds=time.perf_counter() - started))
        reference = truth[split:] if where == "new" else truth[part]
        cells = ~o[part]
        valid = np.ones_like(cells)
        report = evaluation.score(estimates, reference, cells, valid, [name])
        print(f"{name}, {where}:\n{evaluation.table(report)}", flush=True)
        if out is not None:
            case = evaluation.Case(f"{name} ({where})", [name], np.where(o[part], v[part], 0),
                                   o[part], domain, reference, cells, valid, estimates)
            evaluation_figure(out / f"{name}_{where}.png", case, report, None)
        rows.append({"case": name, "fill": where, "frames": len(truth), "lag1": lag1,
                     "observed": float(observed.mean()), "std": sd, "train_s": train_s,
                     "train_steps": model.step, "best_step": model.training.get("best_step"),
                     "stopped_early": model.training.get("stopped_early"),
                     "smoother": None if model.smoother is None else model.smoother.to_dict(),
                     "spread": scale.to_dict(),
                     "scores": report[name]})
    return rows


def markdown(rows: list[dict]) -> str:
    """One line per case, fill and method; RMSE over the truth's std and the ratio to DINEOF."""
    lines = ["| case | fill | method | RMSE/σ | ×DINEOF | CRPS/σ | spread/skill | cov90 |",
             "|---|---|---|---|---|---|---|---|"]
    for row in rows:
        scores, sd = row["scores"], row["std"]
        dineof = scores.get("dineof", {}).get("rmse")
        for method, s in scores.items():
            def fmt(value: float | None, scale: float = 1.0) -> str:
                return "-" if value is None or not np.isfinite(value) else f"{value / scale:.3f}"
            ratio = s["rmse"] / dineof if dineof else None
            lines.append(f"| {row['case']} | {row['fill']} | {method} | {fmt(s['rmse'], sd)} | "
                         f"{fmt(ratio)} | {fmt(s.get('crps'), sd)} | "
                         f"{fmt(s.get('spread_skill'))} | {fmt(s.get('coverage_90'))} |")
    return "\n".join(lines)


def _option(text: str) -> tuple[str, object]:
    """'weight_decay=0.05' → ('weight_decay', 0.05), typed like the TrainOptions default."""
    name, _, value = text.partition("=")
    default = getattr(TrainOptions(), name)
    return name, type(default)(value) if default is not None else float(value)


def main() -> None:
    """Run every case and print the markdown table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default=",".join(CASES))
    p.add_argument("--frames", type=int, default=1300, help="frames per record")
    p.add_argument("--minutes", type=float, default=5.0,
                   help="ctxq training budget per case (0: none, for a step budget)")
    p.add_argument("--steps", type=int, default=10 ** 7,
                   help="ctxq training steps per case at most: a budget that does not move "
                        "with the machine (with --minutes 0)")
    p.add_argument("--temporal", default="smoother", choices=["smoother", "none"])
    p.add_argument("--ensemble", type=int, default=32)
    p.add_argument("--seed", type=int, default=1, help="seed of the simulated data and masks")
    p.add_argument("--train-seed", type=int, default=0, help="ctxq training seed")
    p.add_argument("--train", action="append", default=[], metavar="OPTION=VALUE",
                   help="another training option, e.g. weight_decay=0.05 (repeatable)")
    p.add_argument("--baselines", default="dineof,oi,linear,persistence")
    p.add_argument("--models", type=Path, default=None,
                   help="folder of trained models, reused when there, else saved there")
    p.add_argument("--out", type=Path, default=None, help="folder for report.json and PNGs")
    args = p.parse_args()
    args.train = dict(_option(text) for text in args.train)
    for folder in (args.out, args.models):
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
    budget = f"{args.steps} steps" + (f" or {args.minutes:g} min" if args.minutes else "")
    extra = "".join(f", {k} {v}" for k, v in args.train.items())
    print(f"CPU budget: {torch.get_num_threads()} threads; ctxq trains {budget} per case "
          f"(temporal: {args.temporal}{extra}), K = {args.ensemble}, data seed {args.seed}",
          flush=True)
    rows = []
    for name in args.cases.split(","):
        rows += run_case(name, args, args.out)
    print("\n" + markdown(rows))
    if args.out:
        (args.out / "report.json").write_text(json.dumps(rows, indent=1, default=float))


if __name__ == "__main__":
    main()
