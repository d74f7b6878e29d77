"""Hostile inputs: ctxq either works or says why in one line; never a traceback, never a NaN."""

import re

import netCDF4
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from ctxq_cli.cli import app
from ctxq_cli.model import DenoiserModel

pytestmark = pytest.mark.slow   # subprocesses and many end-to-end runs

runner = CliRunner()
QUICK = ["--steps", "2", "--channels", "8,8", "--stem-patch", "1", "--batch-size", "2",
         "--quiet"]
SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def hostile_files(draw):
    """A NetCDF variable with a random shape, type, fill, gap pattern, values and names."""
    frames = draw(st.integers(1, 5))
    h, w = draw(st.sampled_from([5, 9, 1, 16])), draw(st.sampled_from([6, 11, 1, 16]))
    dtype = draw(st.sampled_from(["float32", "float64", "int16-packed", "uint8", "int32"]))
    shape = draw(st.sampled_from(["smooth", "constant", "huge", "tiny", "noise"]))
    gaps = draw(st.sampled_from(["random", "all-missing-frame", "single-cell", "none",
                                 "everything"]))
    name = draw(st.sampled_from(["sst", "température", "温度", "t2m-anomaly"]))
    lat_order = draw(st.sampled_from(["increasing", "decreasing", "shuffled"]))
    seed = draw(st.integers(0, 2**16))
    return frames, h, w, dtype, shape, gaps, name, lat_order, seed


def _values(frames, h, w, shape, rng):
    """Physical values of the chosen kind."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([np.sin(0.5 * yy + t) + np.cos(0.4 * xx - t) for t in range(frames)])
    return {"smooth": 290 + 3 * base, "constant": np.full(base.shape, 7.0),
            "huge": 1e30 * base, "tiny": 1e-30 * base,
            "noise": rng.normal(size=base.shape)}[shape]


def _observed(frames, h, w, gaps, rng):
    """The observation mask of the chosen pattern."""
    seen = rng.random((frames, h, w)) < 0.6
    if gaps == "all-missing-frame":
        seen[frames // 2] = False
    elif gaps == "single-cell":
        seen[:] = False
        seen[0, h // 2, w // 2] = True
    elif gaps == "none":
        seen[:] = True
    elif gaps == "everything":
        seen[:] = False
    return seen


def write_hostile(path, frames, h, w, dtype, shape, gaps, name, lat_order, seed):
    """Write the drawn case to ``path``."""
    rng = np.random.default_rng(seed)
    values = _values(frames, h, w, shape, rng)
    seen = _observed(frames, h, w, gaps, rng)
    lat = np.linspace(-30, 30, h)
    if lat_order == "decreasing":
        lat = lat[::-1]
    elif lat_order == "shuffled":
        lat = rng.permutation(lat)
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", frames)
        ds.createDimension("lat", h)
        ds.createDimension("lon", w)
        ds.createVariable("lat", "f8", ("lat",))[:] = lat
        ds.createVariable("lon", "f8", ("lon",))[:] = np.linspace(0, 40, w)
        dims = ("time", "lat", "lon")
        if dtype == "int16-packed":
            var = ds.createVariable(name, "i2", dims, fill_value=np.int16(-32767))
            var.set_auto_maskandscale(False)
            lo, hi = np.nanmin(values), np.nanmax(values)
            scale = (hi - lo) / 60000 if hi > lo else 1.0
            var.scale_factor, var.add_offset = scale, (hi + lo) / 2
            packed = np.round((values - (hi + lo) / 2) / scale).astype(np.int16)
            var[:] = np.where(seen, packed, np.int16(-32767))
        elif dtype in ("uint8", "int32"):
            fill = 255 if dtype == "uint8" else -9999
            var = ds.createVariable(name, dtype, dims, fill_value=fill)
            var.set_auto_maskandscale(False)
            ints = np.clip(np.round(values), 0 if dtype == "uint8" else -2**30,
                           254 if dtype == "uint8" else 2**30)
            var[:] = np.where(seen, ints, fill).astype(dtype)
        else:
            fill = rng.choice([np.nan, -9999.0, 1e20])
            var = ds.createVariable(name, dtype, dims, fill_value=fill)
            var.set_auto_maskandscale(False)
            var[:] = np.where(seen, values, fill).astype(dtype)
    return name


def _one_line_error(result):
    """The command failed the way a user error must: exit 1, one error line, no traceback."""
    lines = result.output.strip().splitlines()
    event(re.sub(r"^ctxq: error: \S+: ", "", lines[-1])[:50] if lines else "no output")
    assert result.exit_code == 1, result.output
    errors = [line for line in lines if line.startswith("ctxq: error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], result.output   # warnings may precede
    assert "Traceback" not in result.output


@SETTINGS
@given(case=hostile_files(), window=st.integers(1, 2))
def test_train_and_impute_work_or_say_why(tmp_path_factory, case, window):
    d = tmp_path_factory.mktemp("hostile")
    name = write_hostile(d / "obs.nc", *case)
    ckpt, out = d / "d.safetensors", d / "filled.nc"
    trained = runner.invoke(app, ["train-denoiser", str(d / "obs.nc"), "-o", str(ckpt),
                                  "--window", str(window), *QUICK])
    if trained.exit_code != 0:
        _one_line_error(trained)
        assert not ckpt.exists()
        return
    imputed = runner.invoke(app, ["impute", str(d / "obs.nc"), "--checkpoint", str(ckpt),
                                  "-o", str(out), "--ensemble", "2", "--quiet"])
    if imputed.exit_code != 0:
        _one_line_error(imputed)
        assert not out.exists()
        return
    event("imputed")
    domain = DenoiserModel.load(ckpt).domain
    with netCDF4.Dataset(out) as ds:
        filled = ds.variables[name][:].filled(np.nan)
        spread = ds.variables[f"{name}_std"][:].filled(np.nan)
    assert np.isfinite(filled[:, domain]).all()
    assert np.isfinite(spread[:, domain]).all() and (spread[:, domain] >= 0).all()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A directory with obs.nc and the bytes of a valid tiny checkpoint trained on it."""
    d = tmp_path_factory.mktemp("ckpt")
    write_hostile(d / "obs.nc", 4, 8, 8, "float32", "smooth", "random", "sst", "increasing", 0)
    result = runner.invoke(app, ["train-denoiser", str(d / "obs.nc"), "-o",
                                 str(d / "d.safetensors"), *QUICK])
    assert result.exit_code == 0, result.output
    return d, (d / "d.safetensors").read_bytes()


@SETTINGS
@given(cut=st.integers(0, 10**6), flips=st.lists(st.tuples(st.integers(0, 10**6),
                                                           st.integers(1, 255)), max_size=4))
def test_damaged_checkpoints_work_or_give_one_line(tmp_path_factory, trained, cut, flips):
    d, good = trained
    data = bytearray(good[: max(1, len(good) - cut % len(good))] if cut % 4 == 0 else good)
    for position, xor in flips:
        data[position % len(data)] ^= xor
    work = tmp_path_factory.mktemp("bad")
    path, out = work / "d.safetensors", work / "filled.nc"
    path.write_bytes(bytes(data))
    result = runner.invoke(app, ["impute", str(d / "obs.nc"), "--checkpoint", str(path),
                                 "-o", str(out), "--ensemble", "2", "--quiet"])
    if result.exit_code != 0:
        _one_line_error(result)
        assert not out.exists()
        return
    event("imputed")
    with netCDF4.Dataset(out) as ds:
        assert np.isfinite(ds.variables["sst"][:].filled(np.nan)).all()
