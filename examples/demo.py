"""Demo: make cloudy Kolmogorov-flow observations, fill them with the shipped model, score them.

Runs the ctxq command line exactly as a user would:

    ctxq impute obs.nc --mask mask.nc --checkpoint models/kolmogorov_clouds.safetensors \
        --ensemble 32 -o obs_imputed.nc
    ctxq evaluate obs_imputed.nc --truth truth.nc --mask mask.nc --baseline linear

so the table puts per-frame linear interpolation of the same observations beside ctxq.
Takes about a minute on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from make_data import write_example  # noqa: E402

MODEL = HERE.parent / "models" / "kolmogorov_clouds.safetensors"


def ctxq(*args: str) -> None:
    """Run one ctxq command, echoing it; stop the demo if it fails."""
    print("$ ctxq " + " ".join(args), flush=True)
    done = subprocess.run([sys.executable, "-m", "ctxq_cli", *args])
    if done.returncode:
        sys.exit(done.returncode)


def main() -> None:
    """Generate data, impute, evaluate."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", type=Path, default=None, help="keep the files here")
    p.add_argument("--ensemble", type=int, default=32)
    p.add_argument("--seed", type=int, default=123, help="seed of the example trajectory")
    args = p.parse_args()
    out = args.out_dir or Path(tempfile.mkdtemp(prefix="ctxq-demo-"))
    out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    paths = write_example(out, mask_kind="cloud", mask_params={"missing_fraction": 0.3},
                          trajectories=1, frames=30, seed=args.seed)
    print(f"example data in {out}: 30 frames of 64×64 vorticity, 30 % under clouds", flush=True)
    result = out / "obs_imputed.nc"
    ctxq("impute", str(paths["obs"]), "--mask", str(paths["mask"]), "--checkpoint", str(MODEL),
         "--ensemble", str(args.ensemble), "-o", str(result), "--overwrite", "--quiet")
    ctxq("evaluate", str(result), "--truth", str(paths["truth"]), "--mask", str(paths["mask"]),
         "--baseline", "linear")
    print(f"done in {time.perf_counter() - start:.0f} s; files in {out}")


if __name__ == "__main__":
    main()
