"""The documentation site builds with ``mkdocs build --strict`` (every page, notebook and docstring)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(shutil.which("mkdocs") is None, reason="mkdocs is not installed (pip install -e '.[docs]')")
def test_mkdocs_build_strict(tmp_path):
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    for page in ["index.html", "api/index.html", "benchmarks/index.html",
                 "notebooks/04_sam_as_a_saddle_problem/index.html"]:
        assert (tmp_path / "site" / page).is_file(), page
