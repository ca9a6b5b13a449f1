"""Names users can install and import (issue 15): `saddle-vi`, `saddle`, `saddle.problems`; `problems` deprecated."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from _helpers import ROOT, worker_env

PYPROJECT = tomllib.loads((Path(ROOT) / "pyproject.toml").read_text())


def _python(code: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always", "-c", code], cwd=cwd, env=worker_env(),
                          capture_output=True, text=True, timeout=120)


def test_the_distribution_name_is_not_the_unrelated_pypi_saddle():
    assert PYPROJECT["project"]["name"] == "saddle-vi"


def test_every_package_folder_is_installed():
    packages = set(PYPROJECT["tool"]["setuptools"]["packages"])
    folders = {".".join(p.parent.relative_to(ROOT).parts) for p in Path(ROOT, "saddle").rglob("__init__.py")}
    assert folders <= packages, sorted(folders - packages)
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"saddle.problems": "problems"}
    assert {"saddle.problems", "problems"} <= packages


def test_a_users_own_problems_module_does_not_shadow_the_library(tmp_path):
    (tmp_path / "problems.py").write_text("raise RuntimeError('the user module was imported')\n")
    out = _python("from saddle import problems; import saddle; "
                  "print(problems.__name__, problems.get('xy').name, saddle.problems is problems)", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["saddle.problems", "xy", "True"]


def test_the_old_top_level_name_is_a_deprecated_alias_of_the_same_modules(tmp_path):
    out = _python("import problems\n"
                  "import problems.gan\n"
                  "import saddle.problems, saddle.problems.gan\n"
                  "print(problems is saddle.problems, problems.gan is saddle.problems.gan, "
                  "problems.get('xy').name)", tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "True", "xy"]
    warnings = [line for line in out.stderr.splitlines() if "DeprecationWarning" in line]
    assert len(warnings) == 1 and "from saddle import problems" in warnings[0]
    assert warnings[0].startswith("<string>:1:")  # attributed to the importing line, not to the library


@pytest.mark.slow
def test_the_wheel_holds_saddle_problems_and_the_alias(tmp_path):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "site", "build", "*.egg-info", "__pycache__",
                                                                 "notebooks", ".hypothesis", ".pytest_cache"))
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                          str(tmp_path / "dist"), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    (wheel,) = (tmp_path / "dist").glob("saddle_vi-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ["saddle/__init__.py", "saddle/distributed/__init__.py", "saddle/problems/__init__.py",
                   "saddle/problems/gan.py", "problems/__init__.py"]:
        assert module in names, module
