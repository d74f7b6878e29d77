"""The command line end to end on 16×16 files, and its one-line errors."""

import json
import os
import signal
import subprocess
import sys
import time

import netCDF4
import numpy as np
import pytest
from typer.testing import CliRunner

from ctxq_cli import __version__
from ctxq_cli.cli import app
from ctxq_cli.errors import EXIT_INTERRUPTED
from ctxq_cli.model import DenoiserModel

from conftest import smooth_field, write_mask_nc, write_nc

runner = CliRunner()
TINY = ["--channels", "8,16", "--steps", "4", "--batch-size", "2", "--window", "2", "--quiet"]


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """obs.nc, mask.nc, truth.nc and a trained denoiser.safetensors in one directory."""
    d = tmp_path_factory.mktemp("cli")
    values = smooth_field(12, 16, 16, seed=0)
    observed = np.random.default_rng(0).random(values.shape) < 0.4
    write_nc(d / "obs.nc", values, observed=observed)
    write_mask_nc(d / "mask.nc", observed)
    write_nc(d / "truth.nc", values)
    result = run("train-denoiser", d / "obs.nc", "--mask", d / "mask.nc", "-o",
                 d / "denoiser.safetensors", *TINY)
    assert result.exit_code == 0, result.output
    return d


def test_the_checkpoint_carries_its_smoother_and_how_training_ended(workdir):
    model = DenoiserModel.load(workdir / "denoiser.safetensors")
    assert model.smoother is not None and model.smoother.time_unit == "days"
    assert model.denoiser.first_guess
    summary = model.training
    assert {"best_step", "selected_by", "stopped_early"} <= set(summary)
    assert summary[f"best_{summary['selected_by']}"] is not None


def test_a_model_without_temporal_smoother_still_fills(workdir, tmp_path):
    den, out = tmp_path / "plain.safetensors", tmp_path / "plain.nc"
    assert run("train-denoiser", workdir / "obs.nc", "-o", den, "--temporal", "none",
               *TINY).exit_code == 0
    assert DenoiserModel.load(den).smoother is None
    result = run("impute", workdir / "obs.nc", "--checkpoint", den, "-o", out, "--ensemble",
                 "2", "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds:
        assert ds.ctxq_spread_first_guess == 0.0
        assert ds.ctxq_network_correction_share == 1.0   # no first guess to lean towards


def test_version_and_help():
    assert run("--version").output.strip() == f"ctxq {__version__}"
    out = run("--help").output
    for cmd in ("train-mask-prior", "train-denoiser", "impute", "evaluate"):
        assert cmd in out


def test_users_line_in_the_training_directory(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    result = run("impute", "obs.nc", "--mask", "mask.nc", "--ensemble", "4", "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(workdir / "obs_imputed.nc") as ds:
        filled = ds.variables["sst"][:].filled(np.nan)
        assert "sst_std" in ds.variables
        assert ds.history.splitlines()[0].endswith(f"(ctxq {__version__})")
        assert ds.ctxq_ensemble == 4
        assert 0.0 <= ds.ctxq_network_correction_share <= 1.0   # fitted when calibrating
    with netCDF4.Dataset(workdir / "obs.nc") as ds:
        obs = ds.variables["sst"][:].filled(np.nan)
    seen = np.isfinite(obs)
    assert filled[seen].tobytes() == obs[seen].tobytes()
    domain = seen.any(axis=0)  # the training domain: cells observed at least once
    assert np.isfinite(filled[:, domain]).all() and np.isnan(filled[:, ~domain]).all()
    result = run("evaluate", workdir / "obs_imputed.nc", "--truth", workdir / "truth.nc",
                 "--mask", workdir / "mask.nc")
    assert result.exit_code == 0, result.output
    assert "RMSE" in result.output and "sst" in result.output


def test_scripted_form_and_members(workdir, tmp_path):
    out = tmp_path / "out.nc"
    result = run("impute", workdir / "obs.nc", "--var", "sst", "--checkpoint",
                 workdir / "denoiser.safetensors", "--ensemble", "3", "-o", out, "--members",
                 "--steps", "2", "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds:
        assert {"sst", "sst_std", "sst_members"} <= set(ds.variables)
        assert ds.variables["sst_members"].dimensions == ("realization", "time", "lat", "lon")


def test_npz_in_npz_out(workdir, tmp_path):
    values = smooth_field(4, 16, 16, seed=5)
    observed = np.random.default_rng(5).random(values.shape) < 0.5
    np.savez(tmp_path / "obs.npz", data=np.where(observed, values, np.nan))
    out = tmp_path / "out.npz"
    # The checkpoint's variable is 'sst'; an NPZ's is 'data': refused with one line.
    result = run("impute", tmp_path / "obs.npz", "--checkpoint", workdir / "denoiser.safetensors",
                 "-o", out)
    assert result.exit_code == 1 and "do not match the checkpoint" in result.output
    np.savez(tmp_path / "sst.npz", sst=np.where(observed, values, np.nan))
    result = run("impute", tmp_path / "sst.npz", "--checkpoint", workdir / "denoiser.safetensors",
                 "-o", out, "--ensemble", "2", "--quiet")
    assert result.exit_code == 0, result.output
    assert "no time coordinate; its frames are taken 1 days apart" in result.output
    with np.load(out) as npz:
        assert np.isfinite(npz["sst"]).sum() > 0.9 * npz["sst"].size and "sst_std" in npz.files


@pytest.mark.parametrize("args, message", [
    (["impute", "absent.nc"], "absent.nc: no such file"),
    (["impute", "obs.nc", "--var", "chl", "-o", "new.nc"], "no variable 'chl' (available: sst)"),
    (["impute", "obs.nc", "--mask", "small.nc", "-o", "new.nc"], "does not match"),
    (["impute", "obs.nc", "--checkpoint", "mask.nc", "-o", "new.nc"],
     "not a readable safetensors"),
    (["impute", "obs.nc", "-o", "obs.nc"], "would overwrite an input"),
    (["impute", "obs.nc", "-o", "truth.nc"], "output exists"),
    (["train-denoiser", "obs.nc", "--window", "50", "-o", "new.safetensors"],
     "fewer than --window 50"),
    (["train-denoiser", "obs.nc", "--partition", "magic"], "--partition must be"),
    (["train-denoiser", "obs.nc", "--normalization", "climate"], "--normalization must be"),
    (["train-denoiser", "obs.nc", "--temporal", "kalman"], "--temporal must be"),
    (["train-mask-prior", "obs.nc", "--window", "50", "-o", "p.safetensors"],
     "fewer than --window 50"),
    (["train-denoiser", "obs.nc", "-o", "n.safetensors", "--partition", "prior",
      "--mask-prior", "mask.nc"], "not a readable safetensors"),
    (["train-denoiser", "obs.nc", "-o", "n.safetensors", "--log", "obs.nc"],
     "would overwrite an input"),
])
def test_user_errors_are_one_line(workdir, monkeypatch, args, message):
    monkeypatch.chdir(workdir)
    write_mask_nc(workdir / "small.nc", np.ones((12, 8, 8), bool))
    result = run(*args)
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("ctxq: error:")]
    assert len(errors) == 1 and message in errors[0]
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_sigterm_writes_a_resumable_state_and_resume_goes_on(workdir, tmp_path):
    out = tmp_path / "d.safetensors"
    log_path = tmp_path / "d.log.jsonl"
    command = [sys.executable, "-m", "ctxq_cli", "train-denoiser", str(workdir / "obs.nc"),
               "--mask", str(workdir / "mask.nc"), "-o", str(out), "--channels", "8,16",
               "--batch-size", "2", "--window", "2", "--steps", "100000",
               "--checkpoint-every", "0", "--quiet"]
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 600   # a guard against hangs, not a budget
    while time.monotonic() < deadline and job.poll() is None:
        if log_path.exists() and len(log_path.read_text().splitlines()) >= 5:
            break
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, err = job.communicate(timeout=600)
    assert job.returncode == EXIT_INTERRUPTED, err
    assert "resumable state written" in err and "Traceback" not in err
    state = tmp_path / "d.resume.safetensors"
    assert state.exists() and not out.exists()
    stopped = len(log_path.read_text().splitlines())

    again = run("train-denoiser", workdir / "obs.nc", "-o", out, "--steps", "100000")
    assert again.exit_code == 1 and "--resume" in again.output  # never silently restarted
    more = [a if a != "100000" else str(stopped + 3) for a in command[3:]] + ["--resume"]
    resumed = run(*more)
    assert resumed.exit_code == 0, resumed.output
    steps = [json.loads(line)["step"] for line in log_path.read_text().splitlines()]
    assert steps == list(range(1, stopped + 4))
    assert out.exists() and not state.exists()


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs POSIX resource limits")
def test_a_full_disk_fails_in_one_line_and_leaves_nothing(workdir, tmp_path):
    import resource

    def small_disk():  # writes beyond 20 kB fail as on a full disk (Python ignores SIGXFSZ)
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))

    out = tmp_path / "filled.nc"
    job = subprocess.run([sys.executable, "-m", "ctxq_cli", "impute", str(workdir / "obs.nc"),
                          "--checkpoint", str(workdir / "denoiser.safetensors"), "-o", str(out),
                          "--ensemble", "2", "--quiet"], preexec_fn=small_disk,
                         capture_output=True, text=True, timeout=600)
    assert job.returncode == 1, job.stderr
    assert job.stderr.startswith(f"ctxq: error: {out}: cannot write")
    assert len(job.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["train-denoiser", "train-mask-prior"])
def test_training_on_a_missing_variable_leaves_nothing(workdir, tmp_path, command):
    result = run(command, workdir / "obs.nc", "--var", "chl", "-o", tmp_path / "m.safetensors")
    assert result.exit_code == 1 and "no variable 'chl'" in result.output
    assert result.output.strip().count("\n") == 0      # the error alone, no info line before
    assert os.listdir(tmp_path) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0,
                    reason="permissions do not bind root")
def test_a_read_only_directory_fails_in_one_line(workdir, tmp_path):
    tmp_path.chmod(0o555)
    try:
        result = run("impute", workdir / "obs.nc", "--checkpoint",
                     workdir / "denoiser.safetensors", "-o", tmp_path / "x.nc", "--quiet")
    finally:
        tmp_path.chmod(0o755)
    assert result.exit_code == 1 and "cannot write" in result.output
    assert os.listdir(tmp_path) == []


def test_a_file_without_observations_trains_nothing_but_is_filled_from_the_prior(workdir,
                                                                                  tmp_path):
    empty = write_nc(tmp_path / "cloudy.nc", smooth_field(3, 16, 16, seed=1),
                     observed=np.zeros((3, 16, 16), bool))
    result = run("train-denoiser", empty, "-o", tmp_path / "d.safetensors", *TINY)
    assert result.exit_code == 1 and "no observed value at all" in result.output
    out = tmp_path / "filled.nc"
    result = run("impute", empty, "--checkpoint", workdir / "denoiser.safetensors", "-o", out,
                 "--ensemble", "2", "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds:
        assert ds.ctxq_frames_without_observations == 3
        assert list(ds.ctxq_empty_frame_indices) == [0, 1, 2]
        filled = ds.variables["sst"][:].filled(np.nan)
    domain = DenoiserModel.load(workdir / "denoiser.safetensors").domain
    assert np.isfinite(filled[:, domain]).all()


def test_mask_prior_end_to_end_and_embedded_in_the_denoiser(workdir, tmp_path):
    prior = tmp_path / "prior.safetensors"
    result = run("train-mask-prior", workdir / "obs.nc", "-o", prior, "--window", "2",
                 "--channels", "8,16", "--steps", "4", "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "sampled" in result.output and "autocorrelation" in result.output
    den = tmp_path / "d.safetensors"
    result = run("train-denoiser", workdir / "obs.nc", "-o", den, "--partition", "prior",
                 "--mask-prior", prior, *TINY)
    assert result.exit_code == 0, result.output
    prior.unlink()   # the denoiser carries its prior
    model = DenoiserModel.load(den)
    assert model.partition.name == "prior" and model.mask_prior is not None
    for guided in ("--guided", "--no-guided"):
        out = tmp_path / f"filled{guided}.nc"
        result = run("impute", workdir / "obs.nc", "--checkpoint", den, "-o", out,
                     "--ensemble", "2", guided, "--quiet")
        assert result.exit_code == 0, result.output
        with netCDF4.Dataset(out) as ds:
            assert np.isfinite(ds.variables["sst"][:].filled(np.nan)[:, model.domain]).all()
    result = run("train-denoiser", workdir / "obs.nc", "-o", den, "--partition", "prior", *TINY)
    assert result.exit_code == 1 and "--mask-prior" in result.output


def test_evaluate_by_cross_validation_with_baselines_json_and_plot(workdir, tmp_path):
    report, figure = tmp_path / "cv.json", tmp_path / "cv.png"
    args = ["evaluate", workdir / "obs.nc", "--checkpoint", workdir / "denoiser.safetensors",
            "--withhold", "0.2", "--withhold-pattern", "pixel", "--ensemble", "4",
            "--baseline", "linear,oi,persistence", "--json", report, "--plot", figure]
    result = run(*args)
    assert result.exit_code == 0, result.output
    assert "cross-validation" in result.output and "oi" in result.output
    scores = json.loads(report.read_text())["scores"]["sst"]
    assert set(scores) == {"ctxq", "linear", "oi", "persistence"}
    cells = {m: s["cells"] for m, s in scores.items()}
    assert len(set(cells.values())) == 1 and cells["ctxq"] > 0   # the same hidden cells
    assert scores["ctxq"]["crps"] > 0 and 0 <= scores["ctxq"]["coverage_90"] <= 1
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = tmp_path / "again.json"
    assert run(*args[:-4], "--json", again).exit_code == 0     # seeded: same hidden cells,
    repeat = json.loads(again.read_text())["scores"]["sst"]["ctxq"]
    assert {k: v for k, v in repeat.items() if k != "seconds"} == {  # and the same scores
        k: v for k, v in scores["ctxq"].items() if k != "seconds"}


def test_evaluate_an_imputed_file_against_the_truth_without_a_mask(workdir, tmp_path):
    out = tmp_path / "filled.nc"
    assert run("impute", workdir / "obs.nc", "--checkpoint", workdir / "denoiser.safetensors",
               "-o", out, "--ensemble", "4", "--quiet").exit_code == 0
    by_flag = run("evaluate", out, "--truth", workdir / "truth.nc", "--baseline", "linear")
    by_mask = run("evaluate", out, "--truth", workdir / "truth.nc", "--mask",
                  workdir / "mask.nc")
    assert by_flag.exit_code == 0 and by_mask.exit_code == 0, by_flag.output + by_mask.output
    def ctxq_row(output):
        return next(line for line in output.splitlines()
                    if line.split()[:1] in (["ctxq"], ["ctxq*"])).split()

    assert ctxq_row(by_flag.output)[1:3] == ctxq_row(by_mask.output)[1:3]
    result = run("evaluate", out)
    assert result.exit_code == 1 and "--truth" in result.output


def test_per_cell_normalisation_trains_imputes_and_keeps_observations(workdir, tmp_path):
    den, out = tmp_path / "cell.safetensors", tmp_path / "filled.nc"
    result = run("train-denoiser", workdir / "obs.nc", "-o", den, "--normalization", "cell",
                 *TINY)
    assert result.exit_code == 0, result.output
    assert DenoiserModel.load(den).normalization.cell_mean.shape == (1, 16, 16)
    result = run("impute", workdir / "obs.nc", "--checkpoint", den, "-o", out, "--ensemble", "2",
                 "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds, netCDF4.Dataset(workdir / "obs.nc") as obs:
        filled, given = ds["sst"][:].filled(np.nan), obs["sst"][:].filled(np.nan)
    seen = np.isfinite(given)
    assert filled[seen].tobytes() == given[seen].tobytes()


def _variables(path):
    with netCDF4.Dataset(path) as ds:
        return {n: np.ma.asarray(ds.variables[n][:]).astype(float).filled(np.nan)
                for n in ds.variables}


@pytest.mark.slow
def test_chunks_and_tiles_stream_the_same_file(workdir):
    base = ["impute", workdir / "obs.nc", "--mask", workdir / "mask.nc", "--ensemble", "3",
            "--checkpoint", workdir / "denoiser.safetensors", "--members", "--tile", "8",
            "--tile-overlap", "2", "--quiet", "--overwrite"]
    whole, chunked = workdir / "whole.nc", workdir / "chunked.nc"
    assert run(*base, "-o", whole).exit_code == 0
    result = run(*base, "--chunk", "2", "-o", chunked)
    assert result.exit_code == 0, result.output
    a, b = _variables(whole), _variables(chunked)
    assert a.keys() == b.keys() and "sst_members" in a
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    wrapped = workdir / "wrapped.nc"
    result = run(*base, "--wrap-lon", "-o", wrapped)
    assert result.exit_code == 0, result.output
    c = _variables(wrapped)
    observed = c["sst_flag"] == 0
    np.testing.assert_array_equal(c["sst"][observed], a["sst"][observed])
    np.testing.assert_array_equal(np.isfinite(c["sst"]), np.isfinite(a["sst"]))
    assert not np.array_equal(c["sst"], a["sst"], equal_nan=True)   # the seam now has context


def test_bad_tiles_are_one_line(workdir):
    result = run("impute", workdir / "obs.nc", "--tile", "8", "--tile-overlap", "4",
                 "--checkpoint", workdir / "denoiser.safetensors", "-o", workdir / "x.nc")
    assert result.exit_code == 1
    assert result.output.strip().splitlines()[-1].startswith("ctxq: error: the tile overlap")
    assert not (workdir / "x.nc").exists()


def test_every_output_variable_is_cf_placed_and_has_a_fill_value(workdir, tmp_path):
    out = tmp_path / "cf.nc"
    result = run("impute", workdir / "obs.nc", "--checkpoint", workdir / "denoiser.safetensors",
                 "--ensemble", "2", "--members", "-o", out, "--quiet")
    assert result.exit_code == 0, result.output
    domain = DenoiserModel.load(workdir / "denoiser.safetensors").domain
    with netCDF4.Dataset(out) as ds:
        for name in ("sst", "sst_std", "sst_flag", "sst_members"):
            var = ds.variables[name]
            assert "_FillValue" in var.ncattrs(), name
            raw = var[:]
            assert raw.mask[..., ~domain].all() and not raw.mask[..., domain].any(), name
        assert ds.variables["sst_std"].standard_name == "sea_surface_temperature standard_error"
        assert ds.variables["realization"].standard_name == "realization"


def test_a_curvilinear_grid_keeps_its_coordinates_and_grid_mapping_on_every_output(tmp_path):
    values = smooth_field(8, 12, 12, seed=7)
    observed = np.random.default_rng(7).random(values.shape) < 0.5
    obs = tmp_path / "nemo.nc"
    with netCDF4.Dataset(obs, "w") as ds:
        for d, n in zip(("time_counter", "y", "x"), values.shape):
            ds.createDimension(d, n)
        t = ds.createVariable("time_counter", "f8", ("time_counter",))
        t[:], t.units = np.arange(8.0), "days since 2020-01-01"
        for name, axis in (("nav_lat", 0), ("nav_lon", 1)):
            c = ds.createVariable(name, "f4", ("y", "x"))
            c[:] = np.indices((12, 12))[axis] * 0.25 + 40.0
            c.units = "degrees_north" if axis == 0 else "degrees_east"
        crs = ds.createVariable("crs", "i4", ())
        crs.grid_mapping_name = "latitude_longitude"
        v = ds.createVariable("thetao", "f4", ("time_counter", "y", "x"), fill_value=1e20)
        v[:] = np.where(observed, values, 1e20)
        v.units, v.coordinates, v.grid_mapping = "degC", "nav_lat nav_lon", "crs"
    den, out = tmp_path / "d.safetensors", tmp_path / "out.nc"
    assert run("train-denoiser", obs, "-o", den, *TINY).exit_code == 0
    result = run("impute", obs, "--checkpoint", den, "--ensemble", "2", "--members", "-o", out,
                 "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds:
        assert {"nav_lat", "nav_lon", "crs"} <= set(ds.variables)
        for name in ("thetao", "thetao_std", "thetao_flag", "thetao_members"):
            var = ds.variables[name]
            assert var.coordinates == "nav_lat nav_lon" and var.grid_mapping == "crs", name


def test_a_model_refuses_other_units_and_another_grid_in_one_line(workdir, tmp_path):
    values = smooth_field(12, 16, 16, seed=0)
    observed = np.random.default_rng(0).random(values.shape) < 0.4
    celsius = write_nc(tmp_path / "celsius.nc", values - 273.15, observed=observed,
                       extra={"units": "degC"})
    moved = write_nc(tmp_path / "moved.nc", values, observed=observed)
    with netCDF4.Dataset(moved, "a") as ds:
        ds.variables["lat"][:] = ds.variables["lat"][:] + 20.0
    den = workdir / "denoiser.safetensors"
    for path, words in ((celsius, "is in 'degC', the model was trained on 'K'"),
                        (moved, "coordinate 'lat' runs 20 to 35")):
        out = tmp_path / f"{path.stem}_out.nc"
        result = run("impute", path, "--checkpoint", den, "-o", out, "--ensemble", "2")
        assert result.exit_code == 1 and words in result.output, result.output
        assert "Traceback" not in result.output and not out.exists()
    out = tmp_path / "anyway.nc"
    result = run("impute", moved, "--checkpoint", den, "-o", out, "--ensemble", "2",
                 "--allow-other-grid", "--quiet")
    assert result.exit_code == 0, result.output


def test_quality_levels_and_a_land_sea_flag_mask_select_what_is_used_and_filled(tmp_path):
    values = 290.0 + smooth_field(10, 12, 12, seed=3)
    rng = np.random.default_rng(3)
    land = np.zeros((12, 12), bool)
    land[:3, :4] = True
    observed = (rng.random(values.shape) < 0.6) & ~land
    levels = rng.integers(2, 6, values.shape).astype(np.int8)        # 2 … 5
    obs = write_nc(tmp_path / "l3.nc", values, observed=observed)
    with netCDF4.Dataset(obs, "a") as ds:
        q = ds.createVariable("quality_level", "i1", ("time", "lat", "lon"), fill_value=-128)
        q[:] = levels
        q.flag_values, q.flag_meanings = np.arange(6, dtype=np.int8), "a b c d e f"
    dom = tmp_path / "landsea.nc"
    with netCDF4.Dataset(dom, "w") as ds:
        ds.createDimension("lat", 12)
        ds.createDimension("lon", 12)
        m = ds.createVariable("mask", "i1", ("lat", "lon"))
        m[:] = np.where(land, 2, 1).astype(np.int8)
        m.flag_values, m.flag_meanings = np.array([1, 2], np.int8), "water land"
    den, out = tmp_path / "d.safetensors", tmp_path / "out.nc"
    select = ["--quality-var", "quality_level", "--min-quality", "4", "--domain", dom]
    result = run("train-denoiser", obs, "-o", den, *select, *TINY[:-1])
    assert result.exit_code == 0, result.output
    failing = int((observed & (levels < 4)).sum())
    assert f"{failing} observations with quality_level below 4 treated as missing" in result.output
    assert "cells flagged water" in result.output
    assert run("impute", obs, "--checkpoint", den, "-o", out, "--ensemble", "2", *select,
               "--quiet").exit_code == 0
    with netCDF4.Dataset(out) as ds:
        filled = ds.variables["sst"][:].filled(np.nan)
        flag = ds.variables["sst_flag"][:]
        assert ds.ctxq_quality == "quality_level >= 4"
    assert np.isnan(filled[:, land]).all() and np.isfinite(filled[:, ~land]).all()
    kept = observed & (levels >= 4)
    assert (flag[kept] == 0).all() and (flag[observed & (levels < 4)] == 1).all()
    assert filled[kept].tobytes() == values[kept].tobytes()
    result = run("impute", obs, "--checkpoint", den, "-o", tmp_path / "x.nc",
                 "--quality-var", "quality_level")
    assert result.exit_code == 1 and "go together" in result.output


def test_one_level_of_a_4d_variable_is_trained_on_and_filled_with_sel(tmp_path):
    values = smooth_field(6, 10, 10, seed=4)
    levels = np.stack([values, values + 1, values + 2], axis=1)       # (time, depth, y, x)
    observed = np.random.default_rng(4).random(levels.shape) < 0.6
    path = write_nc(tmp_path / "model.nc", levels, name="thetao", observed=observed,
                    dims=("time", "depth", "lat", "lon"))
    with netCDF4.Dataset(path, "a") as ds:
        ds.createVariable("depth", "f4", ("depth",))[:] = [0.5, 10.0, 100.0]
    den, out = tmp_path / "d.safetensors", tmp_path / "out.nc"
    result = run("train-denoiser", path, "-o", den, *TINY)
    assert result.exit_code == 1 and "--sel depth=VALUE or --isel depth=INDEX" in result.output
    assert run("train-denoiser", path, "-o", den, "--isel", "depth=1", *TINY).exit_code == 0
    result = run("impute", path, "--checkpoint", den, "-o", out, "--sel", "depth=10",
                 "--ensemble", "2", "--quiet")
    assert result.exit_code == 0, result.output
    with netCDF4.Dataset(out) as ds:
        assert ds["thetao"].dimensions == ("time", "depth", "lat", "lon")
        assert ds["depth"][:].tolist() == [10.0]
        filled = ds["thetao"][:, 0].filled(np.nan)
    assert filled[observed[:, 1]].tobytes() == levels[:, 1][observed[:, 1]].tobytes()


def test_a_record_that_fails_to_read_while_streamed_fails_in_one_line(tmp_path):
    # Compressed frames with bytes overwritten in their data: the file opens, its frames do
    # not read. Training reads frames as it goes (here through a cache smaller than a frame).
    path = tmp_path / "day.nc"
    with netCDF4.Dataset(path, "w") as ds:
        ds.createDimension("time", None)
        ds.createDimension("lat", 16)
        ds.createDimension("lon", 16)
        time = ds.createVariable("time", "f8", ("time",))
        time.units = "days since 2000-01-01"
        time[:] = np.arange(40)
        var = ds.createVariable("sst", "f4", ("time", "lat", "lon"), zlib=True,
                                chunksizes=(1, 16, 16), fill_value=np.float32(-999))
        var.units = "K"
        var[:] = np.random.default_rng(0).standard_normal((40, 16, 16)).astype("f4")
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * 0.6)
    raw[start:start + 600] = b"\x55" * 600
    path.write_bytes(bytes(raw))
    out = tmp_path / "out"
    out.mkdir()
    result = run("train-denoiser", path, "-o", out / "m.safetensors", "--memory-gb", "1e-6",
                 *TINY)
    assert result.exit_code == 1
    assert result.output.strip().count("\n") == 0
    assert "day.nc: variable 'sst' cannot be read" in result.output
    assert os.listdir(out) == []
