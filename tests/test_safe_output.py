"""Safe outputs: checked before work, atomic, ordinary permissions."""

import os

import pytest

from ctxq_cli import safe_output
from ctxq_cli.errors import CtxqError


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.nc"
    target.write_text("previous")
    with pytest.raises(CtxqError, match="out.nc: cannot write .boom.; nothing was written"):
        with safe_output.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")  # what netCDF4 raises on a full disk
    assert target.read_text() == "previous"
    assert os.listdir(tmp_path) == ["out.nc"]


def test_check_output_refuses_existing_and_inputs(tmp_path):
    inp = tmp_path / "obs.nc"
    inp.write_text("x")
    with pytest.raises(CtxqError, match="overwrite an input"):
        safe_output.check_output(inp, True, [inp])
    with pytest.raises(CtxqError, match="exists"):
        safe_output.check_output(inp, False, [])
    with pytest.raises(CtxqError, match="does not exist"):
        safe_output.check_output(tmp_path / "nodir" / "o.nc", False, [])
    assert safe_output.check_output(tmp_path / "new.nc", False, [inp]) == tmp_path / "new.nc"


def test_outputs_get_ordinary_permissions(tmp_path):
    target = tmp_path / "out.txt"
    old = os.umask(0o022)
    try:
        with safe_output.atomic_path(target) as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert (target.stat().st_mode & 0o777) == 0o644
