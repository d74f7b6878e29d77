"""Speed and memory of training and imputation, on CPU and on CUDA when present.

For each device and grid (default 64×64 and 256×256) a smooth random field with 30 % of its
cells hidden in clouds is trained on through the real training loop (``train_denoiser``), and
imputed through ``impute_field`` with K members and S = 1 and S = 20 sampler steps. Printed:

- train samples/s, taken from the training log between the first and last logged steps (so
  start-up, compilation and the first steps do not count);
- on a GPU, the U-Net's FLOPs per training step (forward and backward, counted by
  ``torch.utils.flop_counter``), the achieved FLOP/s and its fraction of the card's dense bf16
  peak;
- impute frames/s and seconds per frame, median of ``--repeats`` runs;
- peak memory: ``torch.cuda.max_memory_allocated`` per case on a GPU; the process's peak RSS on
  a CPU (cumulative, so read it as an upper bound).

    python examples/bench_speed.py                          # CPU (and CUDA if present)
    python examples/bench_speed.py --devices cuda --grids 256 --channels 256,512,768 \\
        --stem-patch 1 --batch 16 --compile                 # a wide network for the FLOP target
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from ctxq_cli.diffusion import NoiseSchedule, context_query_loss  # noqa: E402
from ctxq_cli.frames import InMemory
from ctxq_cli.impute import impute_field  # noqa: E402
from ctxq_cli.loop import precision_dtype  # noqa: E402
from ctxq_cli.partition import BlockPartition  # noqa: E402
from ctxq_cli.train import TrainOptions, train_denoiser  # noqa: E402

from masks import cloud_mask  # noqa: E402

# The default network, and the one before attention and the position map (per-variable
# normalisation), to measure what those cost side by side.
NETWORKS = {"current": {},
            "plain": {"attention_heads": 0, "position_channels": 0, "normalization": "variable"}}

# Dense bf16 tensor-core peaks (FLOP/s) from the vendors' data sheets.
BF16_PEAK = {"H100 SXM": 989e12, "H100 NVL": 835e12, "H100 PCIe": 756e12, "H100": 989e12,
             "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12}


def bf16_peak(name: str) -> float | None:
    """The card's dense bf16 peak, matched on its marketing name (longest key first)."""
    for key in sorted(BF16_PEAK, key=len, reverse=True):
        if all(part in name for part in key.split()):
            return BF16_PEAK[key]
    return None


def smooth_field(frames: int, size: int, seed: int) -> np.ndarray:
    """(T, 1, H, W) smooth random frames drifting in time (Gaussian spectrum)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(size)[:, None] ** 2 + np.fft.fftfreq(size)[None] ** 2
    amp = np.exp(-k * (size / 8) ** 2)
    base = rng.normal(size=(2, size, size)) + 1j * rng.normal(size=(2, size, size))
    t = np.linspace(0, 1, frames)[:, None, None]
    spec = (np.cos(np.pi * t / 2) * base[0] + np.sin(np.pi * t / 2) * base[1]) * amp
    out = np.fft.ifft2(spec).real
    return (out / out.std()).astype(np.float32)[:, None]


def data(frames: int, size: int, seed: int = 0):
    """Values (zeros in gaps), observed mask and domain."""
    truth = smooth_field(frames, size, seed)
    observed = cloud_mask((frames, size, size), missing_fraction=0.3,
                          rng=np.random.default_rng(seed + 1))[:, None]
    return np.where(observed, truth, 0).astype(np.float32), observed, np.ones((size, size), bool)


def sync(device: torch.device) -> None:
    """Wait for the device."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_rate(values, observed, domain, options: TrainOptions, device) -> tuple[float, object]:
    """Samples/s of the training loop between its first and last logged steps."""
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "log.jsonl"
        with open(log_path, "w") as f:
            model = train_denoiser(InMemory(values, observed), domain, ["u"], options, device, f,
                                   progress=False)
        records = [json.loads(line) for line in log_path.read_text().splitlines()]
    times = sorted({(r["elapsed_s"], r["step"]) for r in records})
    skip = min(len(times) - 2, max(1, len(times) // 5))   # drop warm-up (and compilation)
    (t0, s0), (t1, s1) = times[skip], times[-1]
    return (s1 - s0) * options.batch_size / max(t1 - t0, 1e-9), model


def step_flops(model, options: TrainOptions, size: int, device) -> float:
    """FLOPs of one training step's forward and backward pass."""
    from torch.utils.flop_counter import FlopCounterMode

    net = model.denoiser.train().requires_grad_(True)
    f = options.window
    g = torch.Generator(device=device).manual_seed(0)
    v = torch.randn(options.batch_size, f, size, size, device=device)
    o = torch.rand(options.batch_size, f, size, size, device=device) < 0.7
    d = torch.ones(options.batch_size, 1, size, size, dtype=torch.bool, device=device)
    part = BlockPartition(size=8, ratio=0.8)
    dtype = precision_dtype(options.precision, device)
    with FlopCounterMode(display=False) as counter:
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = context_query_loss(net, v, o, d, part, NoiseSchedule(), g)
        loss.backward()
    net.eval().requires_grad_(False)
    return float(counter.get_total_flops())


def impute_rate(model, values, observed, domain, ensemble, steps, device, repeats):
    """Median seconds per frame of impute_field, and the frames/s it makes."""
    times = []
    for r in range(repeats + 1):          # the first run warms up (and is dropped)
        sync(device)
        start = time.perf_counter()
        impute_field(model, values, observed, domain, ensemble=ensemble, steps=steps, seed=r,
                     device=device,
                     progress=False)
        sync(device)
        times.append(time.perf_counter() - start)
    per_frame = statistics.median(times[1:]) / len(values)
    return per_frame, 1 / per_frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--grids", default="64,256")
    parser.add_argument("--networks", default="current",
                        help="comma-separated: current (the defaults), plain (no attention, "
                             "no position map)")
    parser.add_argument("--channels", default="32,64,96")
    parser.add_argument("--stem-patch", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--train-steps", type=int, default=None,
                        help="default: 60 on CPU, 400 on CUDA")
    parser.add_argument("--frames", type=int, default=12, help="frames imputed per run")
    parser.add_argument("--ensemble", type=int, default=32)
    parser.add_argument("--sampler-steps", default="1,20")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    channels = tuple(int(c) for c in args.channels.split(","))
    rows, results = [], []
    for name in args.devices.split(","):
        if name == "cuda" and not torch.cuda.is_available():
            print("(no CUDA device: GPU rows skipped)")
            continue
        device = torch.device(name)
        label = torch.cuda.get_device_name(device) if name == "cuda" else \
            f"CPU, {torch.get_num_threads()} threads"
        cases = [(size, net) for size in (int(g) for g in args.grids.split(","))
                 for net in args.networks.split(",")]
        for size, network in cases:
            steps = args.train_steps or (400 if name == "cuda" else 60)
            values, observed, domain = data(max(64, args.frames + 8), size)
            options = TrainOptions(steps=steps, channels=channels, stem_patch=args.stem_patch,
                                   batch_size=args.batch, patch=size, partition="block",
                                   val_every=10**9, checkpoint_every=0, warmup=5,
                                   precision=args.precision, compile=args.compile,
                                   **NETWORKS[network])
            if name == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            rate, model = train_rate(values, observed, domain, options, device)
            train_mem = (torch.cuda.max_memory_allocated(device) / 2**30
                         if name == "cuda" else None)
            flops = step_flops(model, options, size, device) if name == "cuda" else None
            peak = bf16_peak(label) if name == "cuda" else None
            achieved = flops * rate / args.batch if flops else None
            row = {"device": label, "grid": size, "network": network,
                   "channels": list(channels),
                   "batch": args.batch, "train_samples_per_s": rate,
                   "train_gib": train_mem, "step_gflop": flops and flops / 1e9,
                   "achieved_tflops": achieved and achieved / 1e12,
                   "bf16_peak_fraction": achieved / peak if achieved and peak else None}
            v, o = values[: args.frames], observed[: args.frames]
            for s in (int(x) for x in args.sampler_steps.split(",")):
                if name == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                per_frame, fps = impute_rate(model, v, o, domain, args.ensemble, s, device,
                                             args.repeats)
                row[f"impute_s{s}_s_per_frame"] = per_frame
                row[f"impute_s{s}_frames_per_s"] = fps
                row[f"impute_s{s}_gib"] = (torch.cuda.max_memory_allocated(device) / 2**30
                                           if name == "cuda" else None)
            row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
            results.append(row)
            rows.append(row)
            print(json.dumps(row), flush=True)

    sampler = [int(x) for x in args.sampler_steps.split(",")]
    head = ["device", "grid", "network", "train samples/s", "TFLOP/s (bf16 peak)"]
    head += [f"impute S={s}: s/frame (frames/s)" for s in sampler]
    head += ["peak GiB train / impute", "peak RSS GiB"]
    print(f"\nK = {args.ensemble}, {args.frames} frames per imputation, median of "
          f"{args.repeats}; U-Net {args.channels}, stem patch {args.stem_patch}, batch "
          f"{args.batch}, precision {args.precision}{', compiled' if args.compile else ''}\n")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        flop = ("–" if r["achieved_tflops"] is None else
                f"{r['achieved_tflops']:.1f} ({100 * (r['bf16_peak_fraction'] or 0):.1f} %)")
        cells = [r["device"], f"{r['grid']}×{r['grid']}", r["network"],
                 f"{r['train_samples_per_s']:.0f}", flop]
        cells += [f"{r[f'impute_s{s}_s_per_frame']:.3f} ({r[f'impute_s{s}_frames_per_s']:.1f})"
                  for s in sampler]
        mem = [r["train_gib"]] + [r[f"impute_s{s}_gib"] for s in sampler]
        cells.append(" / ".join("–" if m is None else f"{m:.2f}" for m in mem))
        cells.append(f"{r['peak_rss_gib']:.2f}")
        print("| " + " | ".join(cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
