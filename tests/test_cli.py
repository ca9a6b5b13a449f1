"""The `saddle` command: compare (the main job) and solve."""

from __future__ import annotations

import subprocess
import sys

import pytest

from saddle.cli import main, parse_spec


def test_parse_spec():
    assert parse_spec("matrix_game") == ("matrix_game", {})
    assert parse_spec("matrix_game:n=5,geometry=entropic,m=None") == (
        "matrix_game", {"n": 5, "geometry": "entropic", "m": None})
    assert parse_spec("extragradient:step_size=0.1,average=True") == (
        "extragradient", {"step_size": 0.1, "average": True})


def test_help_lists_problems_and_solvers():
    out = subprocess.run([sys.executable, "-m", "saddle", "compare", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for word in ("--problem", "--solver", "--batch-size", "--tol", "--device", "--output", "matrix_game",
                 "extragradient", "mirror_prox"):
        assert word in out


@pytest.mark.slow
def test_compare_prints_a_table_with_exact_errors_and_writes_a_plot(tmp_path, capsys):
    out_png = tmp_path / "plot.png"
    code = main(["compare", "--problem", "matrix_game:n=6", "--problem", "bilinear:n=5", "-B", "4",
                 "--solver", "extragradient", "--solver", "optimistic", "--solver", "gda",
                 "--tol", "1e-8", "--max-iters", "12000", "-o", str(out_png)])
    assert code == 0
    text = capsys.readouterr().out
    assert "HiGHS" in text and "closed form" in text
    rows = {}
    for line in text.splitlines():
        parts = line.split()
        if parts and parts[0] in ("extragradient", "optimistic", "gda"):
            rows.setdefault(parts[0], []).append(line)
    assert set(rows) == {"extragradient", "optimistic", "gda"}
    # Converging solvers reach the references (value error and distance <= 1e-6) on both problems.
    for solver in ("extragradient", "optimistic"):
        for line in rows[solver]:
            assert "4 CONVERGED" in line
            value_error, distance = (float(v) for v in line.split()[-2:])
            assert value_error <= 1e-6 and distance <= 1e-6
    # GDA diverges on the unconstrained bilinear game (its second row).
    assert "DIVERGED" in rows["gda"][1]
    assert out_png.stat().st_size > 10_000
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_solve_command(capsys):
    code = main(["solve", "quadratic:n=4", "--solver", "extragradient", "-B", "2", "--tol", "1e-9"])
    assert code == 0
    out = capsys.readouterr().out
    assert "2 CONVERGED" in out and "distance to reference" in out


@pytest.mark.parametrize("argv,match", [
    (["compare", "--problem", "nope", "--no-plot"], "unknown problem"),
    (["compare", "--solver", "nope", "--no-plot"], "unknown solver"),
    (["compare", "--problem", "matrix_game:n=-3", "--no-plot"], "n must be a positive integer"),
    (["solve", "quadratic", "--solver", "extragradient:step_size=-1"], "step_size"),
])
def test_bad_arguments_give_a_clear_error(argv, match, capsys):
    assert main(argv) == 2
    assert match in capsys.readouterr().err
