"""Filling files from a script, as the command line does: one call to train, one to fill."""

from pathlib import Path

import netCDF4
import numpy as np
import pytest

from ctxq_cli import fill, runs
from ctxq_cli.errors import CtxqError
from ctxq_cli.fill import ImputeOptions
from ctxq_cli.reading import ReadOptions
from ctxq_cli.train import TrainOptions

from conftest import write_nc


def test_a_script_trains_and_fills_daily_files_like_the_command_line(tmp_path, small_field):
    values, observed = small_field
    days = tmp_path / "days"
    days.mkdir()
    for d in range(0, 24, 8):    # three files of 8 frames, one after the other in time
        path = write_nc(days / f"day{d:02d}.nc", values[d:d + 8], observed=observed[d:d + 8])
        with netCDF4.Dataset(path, "a") as ds:
            ds["time"][:] = np.arange(d, d + 8)
    model = tmp_path / "m.safetensors"
    runs.train([days], ReadOptions(), TrainOptions(steps=3, channels=(8, 16), window=2,
                                                   batch_size=2, attention_heads=2),
               runs.Run(model, progress=False))
    assert model.exists() and not (tmp_path / "m.resume.safetensors").exists()

    outputs = fill.fill_files([days], model, ReadOptions(), ImputeOptions(ensemble=2),
                              output_dir=tmp_path / "filled")   # no device given: the CPU
    assert [p.name for p in outputs] == ["day00_imputed.nc", "day08_imputed.nc",
                                         "day16_imputed.nc"]
    with netCDF4.Dataset(outputs[1]) as ds:
        sst = ds["sst"][:].filled(np.nan)
    seen = observed[8:16]
    assert np.array_equal(sst[seen], values[8:16][seen])    # observed values unchanged
    assert np.isfinite(sst).all()

    with pytest.raises(CtxqError, match="exclude each other"):
        fill.fill_files([days], model, ReadOptions(), ImputeOptions(),
                        output=Path("x.nc"), output_dir=tmp_path / "filled")
