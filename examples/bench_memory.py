"""Peak memory of ``ctxq impute`` and ``ctxq train-denoiser`` on records of 1×, 4× and 16× the
frames: it must stay flat.

impute: a smooth random field on a large grid (default 256×512, 16 frames for 1×) with clouds
hiding 30 % is written to NetCDF frame by frame; a small denoiser is trained on 64×64 patches
of the 1× file; then ``ctxq impute`` runs on each file as its own process, by tiles and time
chunks, and its peak resident memory (``ru_maxrss`` of that process alone) is printed beside
the file size and the wall time.

train: records of ``--train-frames`` frames (1×) and 4× and 16× that, written to disk 64
frames at a time, uncompressed (so that 16× is larger than half the memory of a 23 GB machine
at the defaults); ``ctxq train-denoiser`` trains on each with ``--memory-gb`` of frames held,
and once on the 1× record held whole (the in-memory reference). Samples per second are the
batch over the median step time of the training log (validation steps excluded).

    python examples/bench_memory.py                                   # 256×512, K = 4
    python examples/bench_memory.py --grid 720,1440 --frames 30 --device cuda   # a global 0.25°
    python examples/bench_memory.py --part train --train-frames 1500   # training, 0.8 to 13 GB
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import netCDF4
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from masks import cloud_mask  # noqa: E402


def write_field(path: Path, frames: int, grid: tuple[int, int], seed: int) -> None:
    """A drifting smooth field with cloud gaps, written one frame at a time (NaN = missing)."""
    h, w = grid
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None]
    amp = np.exp(-(kx ** 2 + ky ** 2) * (min(h, w) / 6) ** 2)
    a = (rng.normal(size=grid) + 1j * rng.normal(size=grid)) * amp
    b = (rng.normal(size=grid) + 1j * rng.normal(size=grid)) * amp
    scale = np.fft.ifft2(a).real.std()
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        var = ds.createVariable("sst", "f4", ("time", "lat", "lon"), zlib=True,
                                fill_value=np.float32(-9999), chunksizes=(1, h, w))
        for t in range(frames):
            phase = 2 * np.pi * t / 97
            frame = np.fft.ifft2(np.cos(phase) * a + np.sin(phase) * b).real / scale
            seen = cloud_mask((1, h, w), missing_fraction=0.3, correlation_length=12.0,
                              rng=np.random.default_rng(seed * 100003 + t))[0]
            var[t] = np.where(seen, frame, np.nan).astype(np.float32)


def write_record(path: Path, frames: int, grid: tuple[int, int], seed: int) -> None:
    """A slowly turning smooth field under moving clouds, written 64 frames at a time without
    compression (NaN = missing); cheap to make, so that records of many GB can be."""
    h, w = grid
    rng = np.random.default_rng(seed)
    ky, kx = np.fft.fftfreq(h)[:, None], np.fft.fftfreq(w)[None]
    amp = np.exp(-(kx ** 2 + ky ** 2) * (min(h, w) / 6) ** 2)
    a, b = (np.fft.ifft2((rng.normal(size=grid) + 1j * rng.normal(size=grid)) * amp).real
            for _ in range(2))
    scale = a.std()
    clouds = cloud_mask((32, h, w), missing_fraction=0.3, correlation_length=12.0, rng=rng)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        time = ds.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        var = ds.createVariable("sst", "f4", ("time", "lat", "lon"),
                                fill_value=np.float32(-9999), chunksizes=(1, h, w))
        for start in range(0, frames, 64):
            t = np.arange(start, min(start + 64, frames))
            phase = 2 * np.pi * t / 97
            field = (np.cos(phase)[:, None, None] * a + np.sin(phase)[:, None, None] * b) / scale
            seen = np.stack([np.roll(clouds[i % 32], 7 * (i // 32), axis=1) for i in t])
            var[start:start + len(t)] = np.where(seen, field, np.nan).astype(np.float32)
            time[start:start + len(t)] = t


def samples_per_second(log: Path, batch: int) -> float:
    """The batch over the median time of a training step, from a JSON-lines training log."""
    elapsed = [json.loads(line)["elapsed_s"] for line in log.read_text().splitlines()]
    return batch / float(np.median(np.diff(elapsed)))


def train_table(args: argparse.Namespace, grid: tuple[int, int], work: Path,
                ctxq: list[str]) -> None:
    """Peak RSS and samples/s of train-denoiser on records of 1×, 4× and 16× the frames."""
    sizes = [int(s) for s in args.sizes.split(",")]
    runs = [(sizes[0], 1e3, "in memory")] + [(s, args.memory_gb, "streamed") for s in sizes]
    if args.reference:      # another checkout's train-denoiser, on the 1× record, as it runs
        runs.insert(0, (sizes[0], None, "reference"))
    for s in sizes:
        path = work / f"train_{s}x.nc"
        if not path.exists():
            start = time.perf_counter()
            write_record(path, s * args.train_frames, grid, seed=2)
            print(f"wrote {path.name}: {path.stat().st_size / 2**30:.2f} GiB in "
                  f"{time.perf_counter() - start:.0f} s", flush=True)
    print(f"\nctxq train-denoiser, {args.train_steps} steps, batch {args.batch}, patches of "
          f"{args.patch}, --temporal {args.temporal}, {args.device}\n")
    print("| record | frames | file GiB | frames held | wall s | samples/s | peak RSS GiB |")
    print("|---|---|---|---|---|---|---|")
    for s, memory, how in runs:
        path, log = work / f"train_{s}x.nc", work / f"train_{s}x_{how[:2]}.log.jsonl"
        budget = [] if memory is None else ["--memory-gb", str(memory)]
        rss, secs = peak_rss(ctxq + [
            "train-denoiser", str(path), "-o", str(work / "m.safetensors"), "--log", str(log),
            "--steps", str(args.train_steps), "--batch-size", str(args.batch), "--patch",
            str(args.patch), "--channels", "16,32", "--temporal", args.temporal,
            "--val-fraction", "0", "--checkpoint-every", "0", *budget,
            "--device", args.device, "--overwrite", "--quiet"],
            args.reference if memory is None else None)
        held = ("all" if how == "in memory" else f"all, {args.reference.name}"
                if how == "reference" else f"{memory:g} GB")
        print(f"| {s}× | {s * args.train_frames} | {path.stat().st_size / 2**30:.2f} | {held} | "
              f"{secs:.0f} | {samples_per_second(log, args.batch):.1f} | {rss:.2f} |",
              flush=True)


def peak_rss(command: list[str], cwd: Path | None = None) -> tuple[float, float]:
    """Run a command (in ``cwd``); return its own peak RSS (GiB) and wall seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            cwd=cwd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read() if proc.stderr else ""
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{err}")
    return usage.ru_maxrss / 2**20, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", default="256,512")
    parser.add_argument("--frames", type=int, default=16, help="frames of the 1× file")
    parser.add_argument("--sizes", default="1,4,16")
    parser.add_argument("--ensemble", type=int, default=4)
    parser.add_argument("--tile", type=int, default=128)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--chunk", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--part", choices=("impute", "train", "both"), default="impute")
    parser.add_argument("--train-frames", type=int, default=1500, help="frames of the 1× "
                        "training record")
    parser.add_argument("--train-steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--memory-gb", type=float, default=0.5,
                        help="frames held by the streamed training runs")
    parser.add_argument("--temporal", default="none")
    parser.add_argument("--reference", type=Path, default=None,
                        help="a checkout of another version (git worktree) whose "
                        "train-denoiser runs first on the 1× record, for comparison")
    args = parser.parse_args()
    grid = tuple(int(g) for g in args.grid.split(","))
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ctxq_memory_"))
    work.mkdir(parents=True, exist_ok=True)
    ctxq = [sys.executable, "-m", "ctxq_cli"]

    if args.part in ("train", "both"):
        train_table(args, grid, work, ctxq)
    if args.part == "train":
        return
    sizes = [int(s) for s in args.sizes.split(",")]
    for s in sizes:
        write_field(work / f"obs_{s}x.nc", s * args.frames, grid, seed=1)
    model = work / "denoiser.safetensors"
    rss, secs = peak_rss(ctxq + ["train-denoiser", str(work / "obs_1x.nc"), "-o", str(model),
                                 "--patch", "64", "--steps", "40", "--channels", "16,32",
                                 "--device", args.device, "--overwrite", "--quiet"])
    print(f"trained on {args.frames}×{grid[0]}×{grid[1]} patches: {secs:.0f} s, "
          f"peak RSS {rss:.2f} GiB")

    print(f"\nctxq impute, K = {args.ensemble}, tiles of {args.tile}, {args.chunk} frames per "
          f"chunk, {args.device}\n")
    print("| file | frames | input MiB | output MiB | wall s | peak RSS GiB |")
    print("|---|---|---|---|---|---|")
    for s in sizes:
        src, out = work / f"obs_{s}x.nc", work / f"out_{s}x.nc"
        rss, secs = peak_rss(ctxq + ["impute", str(src), "--checkpoint", str(model), "-o",
                                     str(out), "--ensemble", str(args.ensemble), "--tile",
                                     str(args.tile), "--tile-overlap", str(args.overlap),
                                     "--chunk", str(args.chunk),
                                     "--no-calibrate", "--device", args.device, "--overwrite",
                                     "--quiet"])
        print(f"| {s}× | {s * args.frames} | {src.stat().st_size / 2**20:.0f} | "
              f"{out.stat().st_size / 2**20:.0f} | {secs:.0f} | {rss:.2f} |", flush=True)


if __name__ == "__main__":
    main()
