"""Write the Kolmogorov-flow example as CF-1.8 NetCDF files: truth, observations and mask.

The complete field ω(t, y, x) comes from `kolmogorov.simulate`; the observations are
y = ω where m = 1 and _FillValue where m = 0, with the mask m from `masks.make_mask`.
Independent trajectories are concatenated along `time`, and the integer variable
`trajectory(time)` tells them apart: a time window spanning a change of trajectory
is not a physical sequence.  The periodic model square is dressed up with
0.25-degree latitude/longitude coordinates over a patch of the North Atlantic and
one frame per day, so that the files look like ordinary gridded ocean data.

    python examples/make_data.py --out-dir data --prefix train_ --seed 0
    python examples/make_data.py --out-dir data --prefix test_ --seed 1 --trajectories 4

writes {prefix}truth.nc, {prefix}obs.nc and {prefix}mask.nc.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import netCDF4
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kolmogorov import VORTICITY_STD, add_physics_arguments, physics_kwargs, simulate
from masks import add_mask_arguments, make_mask, mask_params

FILL_VALUE = np.float32(-999.0)
LAT0, LON0, RESOLUTION = 30.0, -60.0, 0.25  # south-west corner and spacing in degrees


@contextlib.contextmanager
def _atomic_dataset(path: Path) -> Iterator[netCDF4.Dataset]:
    """A new NetCDF-4 dataset that appears at `path` only once it is completely written."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with netCDF4.Dataset(tmp, "w", format="NETCDF4") as ds:
            yield ds
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _write_coordinates(ds: netCDF4.Dataset, trajectory: np.ndarray, ny: int, nx: int) -> None:
    """Define the time, lat and lon dimensions with their coordinate variables and `trajectory`."""
    ds.createDimension("time", None)
    ds.createDimension("lat", ny)
    ds.createDimension("lon", nx)
    specs = {
        "time": ("f8", "time", np.arange(trajectory.size, dtype=np.float64), {
            "standard_name": "time", "long_name": "time", "axis": "T",
            "units": "days since 2000-01-01 00:00:00", "calendar": "standard"}),
        "lat": ("f8", "lat", LAT0 + RESOLUTION * (np.arange(ny) + 0.5), {
            "standard_name": "latitude", "long_name": "latitude", "axis": "Y",
            "units": "degrees_north"}),
        "lon": ("f8", "lon", LON0 + RESOLUTION * (np.arange(nx) + 0.5), {
            "standard_name": "longitude", "long_name": "longitude", "axis": "X",
            "units": "degrees_east"}),
        "trajectory": ("i4", "time", trajectory, {
            "long_name": "index of the independent simulation this frame belongs to",
            "comment": "frames with different values are unrelated; "
                       "time windows must not span a change of trajectory"}),
    }
    for name, (dtype, dim, values, attrs) in specs.items():
        var = ds.createVariable(name, dtype, (dim,))
        var.setncatts(attrs)
        var[:] = values


def _write_file(path: Path, title: str, trajectory: np.ndarray, attrs: dict[str, Any],
                name: str, values: np.ndarray, var_attrs: dict[str, Any]) -> None:
    """Write one (time, lat, lon) variable with coordinates and global attributes, atomically."""
    fill = FILL_VALUE if values.dtype == np.float32 else False
    with _atomic_dataset(path) as ds:
        ds.setncatts({"Conventions": "CF-1.8", "title": title, **attrs})
        _write_coordinates(ds, trajectory, *values.shape[1:])
        var = ds.createVariable(name, values.dtype, ("time", "lat", "lon"), fill_value=fill,
                                zlib=True, complevel=4, chunksizes=(1, *values.shape[1:]))
        var.setncatts(var_attrs)
        var[:] = values


def write_example(
    out_dir: str | Path,
    prefix: str = "",
    mask_kind: str = "cloud",
    mask_params: dict[str, float] | None = None,
    trajectories: int = 32,
    frames: int = 100,
    seed: int = 0,
    **simulation: Any,
) -> dict[str, Path]:
    """Simulate, mask and write {prefix}truth.nc, obs.nc and mask.nc; return their paths by name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mask_params = dict(mask_params or {})
    simulation.setdefault("scale", 1.0 / VORTICITY_STD)
    field = simulate(trajectories, frames, seed=seed, **simulation)
    _, _, ny, nx = field.shape
    field = field.reshape(-1, ny, nx)
    # the mask's random stream is derived from, but independent of, the simulation's
    observed = make_mask(mask_kind, field.shape, np.random.default_rng([seed, 1]), **mask_params)
    trajectory = np.repeat(np.arange(trajectories, dtype=np.int32), frames)

    settings = {"seed": seed, "trajectories": trajectories, "frames_per_trajectory": frames,
                **simulation}
    settings.pop("threads", None)
    attrs = {
        "source": "examples/kolmogorov.py: pseudo-spectral 2-D Kolmogorov flow, "
                  + ", ".join(f"{k}={v}" for k, v in settings.items()),
        "history": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%dT%H:%M:%SZ} "
                   "created by examples/make_data.py",
        "comment": "Synthetic example: the doubly periodic model square is given fictitious "
                   "latitude/longitude coordinates and one frame per day. "
                   f"{trajectories} independent trajectories of {frames} frames are concatenated "
                   "along time; see the variable `trajectory`.",
        "mask_kind": mask_kind,
        "mask_parameters": json.dumps(mask_params),
        "vorticity_scale": np.float64(simulation["scale"]),
    }
    vorticity_attrs = {
        "long_name": "normalised relative vorticity",
        "units": "1",
        "comment": "model vorticity multiplied by the global attribute vorticity_scale "
                   "(about unit standard deviation at the default physics)",
    }

    paths = {name: out_dir / f"{prefix}{name}.nc" for name in ("truth", "obs", "mask")}
    _write_file(paths["truth"], "Kolmogorov flow vorticity, complete field", trajectory, attrs,
                "vorticity", field, vorticity_attrs)
    _write_file(paths["obs"], f"Kolmogorov flow vorticity, observed through a {mask_kind} mask",
                trajectory, attrs, "vorticity", np.where(observed, field, FILL_VALUE),
                vorticity_attrs)
    _write_file(paths["mask"], f"Observation mask ({mask_kind})", trajectory, attrs,
                "mask", observed.astype(np.int8),
                {"long_name": "observation mask", "flag_values": np.array([0, 1], np.int8),
                 "flag_meanings": "missing observed", "valid_range": np.array([0, 1], np.int8)})
    return paths


def main() -> None:
    """Command-line entry point: write one example data set."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", default="kolmogorov_data",
                        help="output folder (default kolmogorov_data)")
    parser.add_argument("--prefix", default="", help="file name prefix, e.g. train_ or test_")
    parser.add_argument("--trajectories", type=int, default=32,
                        help="independent trajectories (default 32)")
    parser.add_argument("--frames", type=int, default=100,
                        help="frames per trajectory (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    add_mask_arguments(parser)
    add_physics_arguments(parser)
    args = parser.parse_args()

    start = time.perf_counter()
    paths = write_example(args.out_dir, args.prefix, args.mask, mask_params(args),
                          args.trajectories, args.frames, args.seed, **physics_kwargs(args))
    with netCDF4.Dataset(paths["mask"]) as ds:
        observed = ds["mask"][:].mean()
    print(f"{args.trajectories * args.frames} frames, observed fraction {observed:.3f}, "
          f"{time.perf_counter() - start:.1f} s")
    for path in paths.values():
        print(f"  {path} ({path.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
