"""Partitions on Kolmogorov flow: rule-based (Work I) and learned mask prior (Work II).

For each mask case (pixel 20 %, pixel 5 %, 3×3 blocks with 4 hidden, clouds 30 %, satellite
swaths, swaths under clouds) a denoiser is trained per partition on masked training
trajectories under the same budget, then imputes masked test trajectories (other seeds) with K
members and S sampler steps. The ``prior`` partition first trains a mask prior on the training
masks (its own budget, reported) and prints real vs sampled mask statistics. Scores are on the
hidden cells: RMSE and VRMSE (per-frame RMSE over the truth's spatial std, averaged).

    python examples/bench_partitions.py --minutes 3       # Work I figures quoted in the notes
    python examples/bench_partitions.py --train-steps 1500 --cases cloud30,swath,swathcloud \
        --partitions prior,empirical,pixel,block --ensembles 32 --multistep 0   # Work II
    python examples/bench_partitions.py --minutes 0.5 --cases pixel20 --partitions pixel  # smoke

A fixed ``--train-steps`` budget makes results independent of other load on the machine.
Prints a markdown table; with --json also writes every number.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctxq_cli import baselines  # noqa: E402
from ctxq_cli.frames import InMemory
from ctxq_cli.impute import impute_field  # noqa: E402
from ctxq_cli.metrics import rmse, vrmse  # noqa: E402
from ctxq_cli.model import DenoiserModel, MaskPriorModel  # noqa: E402
from ctxq_cli.train import (  # noqa: E402
    MaskPriorOptions,
    TrainOptions,
    train_denoiser,
    train_mask_prior,
)

from kolmogorov import simulate  # noqa: E402
from masks import MASKS, make_mask  # noqa: E402

CASES = {
    "pixel20": ("pixel", {"observed_fraction": 0.20}),
    "pixel5": ("pixel", {"observed_fraction": 0.05}),
    "block4": ("block", {"grid": 3, "missing_blocks": 4}),
    "cloud30": ("cloud", {"missing_fraction": 0.30}),
    "swath": ("swath", {"swath_width": 24.0, "gap_width": 12.0}),
    # a polar orbiter's view: swaths, and clouds over what they see
    "swathcloud": ("swath+cloud", {"swath_width": 28.0, "gap_width": 10.0,
                                   "missing_fraction": 0.25}),
}


def masked(field: np.ndarray, case: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(T, 1, H, W) values with zeros in the gaps, and the observation mask, for a case."""
    kinds, params = CASES[case]
    rng = np.random.default_rng(seed)
    observed = np.ones(field.shape, bool)
    for kind in kinds.split("+"):
        names = inspect.signature(MASKS[kind]).parameters
        observed &= make_mask(kind, field.shape, rng,
                              **{k: v for k, v in params.items() if k in names})
    return np.where(observed, field, 0)[:, None], observed[:, None]


def prior_for(case: str, observed: np.ndarray, args: argparse.Namespace,
              dev: torch.device) -> MaskPriorModel:
    """Train (or load) the case's mask prior and print its fidelity."""
    path = (args.load_models or args.save_models or Path(".")) / f"{case}_maskprior.safetensors"
    if args.load_models:
        prior = MaskPriorModel.load(path)
    else:
        opts = MaskPriorOptions(window=args.window, steps=args.prior_steps, seed=0)
        t = time.perf_counter()
        prior = train_mask_prior(InMemory(observed, observed), np.ones((64, 64), bool), opts,
                                 dev, progress=False)
        print(f"  mask prior: {opts.steps} steps in {time.perf_counter() - t:.0f} s", flush=True)
    if args.save_models:
        args.save_models.mkdir(parents=True, exist_ok=True)
        prior.save(path)
    real, sampled = prior.fidelity["real"], prior.fidelity["sampled"]
    for key in ("observed_fraction", "autocorrelation", "missing_cluster_size",
                "observed_cluster_size"):
        print(f"    {key:24s} real {real[key]:8.3f}  sampled {sampled[key]:8.3f}", flush=True)
    return prior


def score(estimate: np.ndarray, truth: np.ndarray, observed: np.ndarray) -> tuple[float, float]:
    """RMSE and VRMSE on the hidden cells."""
    gaps = ~observed
    return rmse(estimate, truth, gaps), vrmse(estimate, truth, gaps, np.ones(truth.shape[-2:],
                                                                               bool))


def main() -> None:
    """Run the benchmark and print the table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=3.0, help="training budget per model")
    p.add_argument("--train-steps", type=int, default=None,
                   help="fixed step budget per denoiser instead of --minutes")
    p.add_argument("--prior-steps", type=int, default=1500, help="mask prior training steps")
    p.add_argument("--cases", default="pixel20,pixel5,block4,cloud30")
    p.add_argument("--partitions", default="pixel,block,empirical")
    p.add_argument("--ensembles", default="1,8,32")
    p.add_argument("--multistep", type=int, default=20, help="S of the multi-step sampler")
    p.add_argument("--multistep-ensemble", type=int, default=8)
    p.add_argument("--train-trajectories", type=int, default=16)
    p.add_argument("--test-trajectories", type=int, default=2)
    p.add_argument("--frames", type=int, default=100)
    p.add_argument("--test-frames", type=int, default=30)
    p.add_argument("--test-seed", type=int, default=1, help="use another seed to tune")
    p.add_argument("--window", type=int, default=3)
    p.add_argument("--context-ratio", type=float, default=0.8)
    p.add_argument("--overlap", type=float, default=0.0)
    p.add_argument("--low-noise", type=float, default=0.8)
    p.add_argument("--channels", default="32,64,96")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--stem-patch", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--save-models", type=Path, default=None)
    p.add_argument("--load-models", type=Path, default=None,
                   help="evaluate models saved by an earlier run instead of training")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    dev = torch.device("cpu")

    t0 = time.perf_counter()
    train = simulate(args.train_trajectories, args.frames, seed=0).reshape(-1, 64, 64)
    test = simulate(args.test_trajectories, args.test_frames, seed=args.test_seed)
    test = test.reshape(-1, 64, 64)
    print(f"data: {len(train)} training and {len(test)} test frames of 64×64 in "
          f"{time.perf_counter() - t0:.0f} s; training budget "
          f"{f'{args.train_steps} steps' if args.train_steps else f'{args.minutes} min'} per "
          f"model on {torch.get_num_threads()} CPU threads", flush=True)

    rows, results = [], []
    truth = test[:, None]
    for case in args.cases.split(","):
        tv, to = masked(train, case, seed=10)
        xv, xo = masked(test, case, seed=20 + args.test_seed)
        t = time.perf_counter()
        lin = baselines.linear(xv, xo, np.ones((64, 64), bool))
        lin_s = (time.perf_counter() - t) / len(test)
        r, v = score(lin, truth, xo)
        rows.append((case, "linear interpolation", "-", "-", r, v, "-", f"{lin_s:.3f}"))
        results.append({"case": case, "method": "linear", "rmse": r, "vrmse": v})
        print(f"{case}: {100 * xo.mean():.1f} % observed; linear RMSE {r:.4f}", flush=True)
        for part in args.partitions.split(","):
            opts = TrainOptions(window=args.window, partition=part,
                                context_ratio=args.context_ratio, overlap=args.overlap,
                                channels=tuple(int(c) for c in args.channels.split(",")),
                                max_minutes=None if args.train_steps else args.minutes,
                                steps=args.train_steps or 10 ** 9,
                                batch_size=args.batch_size, low_noise_fraction=args.low_noise,
                                stem_patch=args.stem_patch, lr=args.lr)
            if args.load_models:
                model = DenoiserModel.load(args.load_models / f"{case}_{part}.safetensors")
            else:
                prior = prior_for(case, to, args, dev) if part == "prior" else None
                model = train_denoiser(InMemory(tv, to), np.ones((64, 64), bool),
                                       ["vorticity"], opts,
                                       dev, progress=False, mask_prior=prior)
            if args.save_models:
                args.save_models.mkdir(parents=True, exist_ok=True)
                model.save(args.save_models / f"{case}_{part}.safetensors")
            info = model.training
            runs = [(k, 1) for k in map(int, args.ensembles.split(","))]
            if args.multistep > 1:
                runs.append((args.multistep_ensemble, args.multistep))
            variants = [(part, True)] if part != "prior" else [("prior guided", True),
                                                                 ("prior pool", False)]
            for label, guided in variants:
                for k, s in runs:
                    t = time.perf_counter()
                    est = impute_field(model, xv, xo, model.domain, ensemble=k, steps=s,
                                       seed=0, progress=False, guided=guided)
                    per_frame = (time.perf_counter() - t) / len(test)
                    r, v = score(est.mean, truth, xo)
                    rows.append((case, label, k, s, r, v, f"{info['samples_per_s']:.0f}",
                                 f"{per_frame:.3f}"))
                    results.append({"case": case, "method": label, "ensemble": k, "steps": s,
                                    "rmse": r, "vrmse": v,
                                    "train_samples_per_s": info["samples_per_s"],
                                    "train_steps": info["steps_done"],
                                    "impute_s_per_frame": per_frame,
                                    "val_loss": info.get("val_loss")})
                    print(f"  {label:12s} K={k:2d} S={s:2d}: RMSE {r:.4f} VRMSE {v:.4f} "
                          f"({per_frame:.3f} s/frame; trained {info['steps_done']} steps at "
                          f"{info['samples_per_s']:.0f} samples/s)", flush=True)

    # Latency of one isolated frame (padded to the window), K = 32, S = 1, median of 5.
    one_v, one_o = xv[:1], xo[:1]
    times = []
    for _ in range(6):
        t = time.perf_counter()
        impute_field(model, one_v, one_o, model.domain, ensemble=32, steps=1, progress=False)
        times.append(time.perf_counter() - t)
    single = float(np.median(times[1:]))
    print("\n| case | method | K | S | RMSE | VRMSE | train samples/s | impute s/frame |")
    print("|---|---|---|---|---|---|---|---|")
    for case, method, k, s, r, v, sps, ipf in rows:
        print(f"| {case} | {method} | {k} | {s} | {r:.4f} | {v:.4f} | {sps} | {ipf} |")
    print(f"\none isolated 64×64 frame, K = 32, S = 1: median {single:.3f} s over 5 runs")
    print(f"total {time.perf_counter() - t0:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results, "single_frame_s": single}, indent=1))


if __name__ == "__main__":
    main()
