"""The citation file and the licence agree with the package."""

from pathlib import Path

import ctxq_cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_citation_names_the_package_version_and_licence():
    text = (ROOT / "CITATION.cff").read_text()
    assert f'version: "{ctxq_cli.__version__}"' in text
    assert "license: MIT" in text
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
