"""Run every benchmark script and gather their ratios into one markdown report (``saddle bench``).

Each script in ``benchmarks/`` prints markdown tables in which some columns
are ratios against a named baseline measured in the same run (a header with
``/`` in it, e.g. ``HiGHS / saddle`` or ``saddle / (2 x base)``, or with
``ratio``). `run_benchmarks` runs the scripts one after another in
subprocesses (``--quick`` where a script has it, ``--device`` where it takes
one), keeps their full output, and `ratio_rows` pulls every ratio cell out
of the tables, so the report starts with one table: script, row, baseline
column, value.
"""

from __future__ import annotations

import datetime
import platform
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["BenchmarkRun", "check_timeout", "find_scripts", "run_benchmarks", "ratio_rows", "markdown_tables",
           "report"]

MAX_TIMEOUT = 1e6  # seconds (11.6 days); subprocess cannot wait much longer (OverflowError near 2**31 ms)


@dataclass
class BenchmarkRun:
    """One script's run: its name, the command, exit code, seconds, and what it printed."""

    name: str
    command: list[str]
    returncode: int
    seconds: float
    stdout: str
    stderr: str


def find_scripts(folder: str | Path) -> list[Path]:
    """The benchmark scripts in ``folder`` (every ``*.py`` but ``run_all.py`` and private ones), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"benchmark folder {str(folder)!r} does not exist (saddle bench needs a source checkout "
                         "with its benchmarks/ folder; pass --folder)")
    return sorted(p for p in folder.glob("*.py") if p.name != "run_all.py" and not p.name.startswith("_"))


def check_timeout(timeout) -> float:
    """``timeout`` as seconds per script: a number in ``(0, MAX_TIMEOUT]`` (``ValueError`` otherwise)."""
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= MAX_TIMEOUT:
        raise ValueError(f"timeout must be a number of seconds in (0, {MAX_TIMEOUT:g}], got {timeout!r}")
    return float(timeout)


def _options(script: Path) -> str:
    """The script's ``--help`` text (to see which options it takes); empty if it does not answer in 2 minutes."""
    try:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        return ""
    return out.stdout


def run_benchmarks(scripts: list[Path], *, quick: bool = True, device: str | None = None,
                   timeout: float = 3600.0, echo: bool = True) -> list[BenchmarkRun]:
    """Run the scripts one by one; a script that fails or times out is reported, not raised.

    Args:
        scripts: the scripts to run (see `find_scripts`).
        quick: pass ``--quick`` to the scripts that accept it.
        device: pass ``--device DEVICE`` to the scripts that accept it.
        timeout: seconds allowed per script.
        echo: print each script's output as it finishes.
    """
    timeout = check_timeout(timeout)
    runs = []
    for script in scripts:
        options = _options(script)
        command = [sys.executable, str(script)]
        if quick and "--quick" in options:
            command.append("--quick")
        if device is not None and "--device" in options:
            command += ["--device", device]
        start = time.perf_counter()
        try:
            out = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
            run = BenchmarkRun(script.stem, command, out.returncode, time.perf_counter() - start, out.stdout,
                               out.stderr)
        except subprocess.TimeoutExpired as err:
            run = BenchmarkRun(script.stem, command, -1, time.perf_counter() - start,
                               (err.stdout or b"").decode() if isinstance(err.stdout, bytes) else (err.stdout or ""),
                               f"timed out after {timeout:.0f} s")
        if echo:
            status = "ok" if run.returncode == 0 else f"FAILED ({run.returncode})"
            print(f"== {run.name}: {status}, {run.seconds:.0f} s", flush=True)
        runs.append(run)
    return runs


def markdown_tables(text: str) -> list[list[list[str]]]:
    """The markdown tables in ``text``: each a list of rows (header first), cells stripped, separator dropped."""
    tables, current = [], []
    for line in text.splitlines() + [""]:
        stripped = line.strip()
        if stripped.startswith("|") and stripped.endswith("|"):
            cells = [c.strip() for c in stripped[1:-1].split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", c) for c in cells):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


_NUMBER = re.compile(r"^([-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?)x?$", re.IGNORECASE)


def _is_ratio(header: str) -> bool:
    h = header.lower()
    return "/" in h or "ratio" in h or h.endswith(" x") or "speed-up" in h or "speedup" in h


def ratio_rows(run: BenchmarkRun) -> list[tuple[str, str, str, float]]:
    """``(script, row label, ratio column, value)`` for every numeric ratio cell of the run's tables.

    The row label joins the cells of the leading columns that are not numbers (case, model, method ...).
    """
    rows = []
    for table in markdown_tables(run.stdout):
        header, body = table[0], table[1:]
        ratio_cols = [j for j, h in enumerate(header) if _is_ratio(h)]
        for cells in body:
            label_cells = []
            for c in cells:
                if _NUMBER.match(c.replace(",", "")):
                    break
                label_cells.append(c)
            label = ", ".join(c for c in label_cells[:3] if c) or "-"
            for j in ratio_cols:
                if j < len(cells):
                    m = _NUMBER.match(cells[j].replace(",", ""))
                    if m:
                        rows.append((run.name, label, header[j], float(m.group(1))))
    return rows


def report(runs: list[BenchmarkRun], *, device: str | None = None) -> str:
    """The markdown report: date, machine, a table of every ratio, then each script's output."""
    now = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} ({torch.cuda.get_device_name(0)})"
    lines = [f"# saddle benchmarks, {now}", "",
             f"Machine: {platform.machine()}, {platform.system()}, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads, device {dev}, Python {platform.python_version()}.", "",
             "## Ratios against the named baselines", "",
             "| script | row | ratio | value |", "|---|---|---|---|"]
    for run in runs:
        found = ratio_rows(run)
        if run.returncode != 0:
            lines.append(f"| {run.name} | (failed: exit {run.returncode}) | - | - |")
        for script, label, column, value in found:
            lines.append(f"| {script} | {label} | {column} | {value:g} |")
    lines += ["", "## Script outputs", ""]
    for run in runs:
        lines += [f"### {run.name} ({run.seconds:.0f} s, `{' '.join(Path(c).name if i < 2 else c for i, c in enumerate(run.command))}`)", ""]
        lines += [run.stdout.rstrip(), ""]
        if run.returncode != 0:
            lines += ["```", run.stderr.strip()[-3000:], "```", ""]
    return "\n".join(lines) + "\n"
