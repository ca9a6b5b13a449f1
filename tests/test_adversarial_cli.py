"""The ``saddle`` command as a careless user drives it (issue 14).

Every mistake in the command line ends in one line on stderr that names the
option, exit status 2, before any work (nothing printed, no file written);
an error from inside the library still raises. The CLI runs in-process
through `saddle.cli.main` except for one subprocess run (no traceback).
"""

from __future__ import annotations

import math
import os
import stat
import subprocess
import sys

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from saddle import problems
import saddle.comparison
from saddle.cli import _UsageError, build_parser, main, parse_spec
from saddle.comparison import check_comparison

TINY = ["-B", "1"]


def usage_error(argv, capsys) -> str:
    """Run the command; check it is a one-line usage error (status 2) that did no work; return the line."""
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("saddle") and "error: " in err and "Traceback" not in err
    return err


CASES = {
    # malformed specs (the examples), in the positional PROBLEM and in --solver
    "spec without a value": (["solve", "bilinear:n"], ["PROBLEM", "'bilinear:n'", "got item 'n'"]),
    "spec with a trailing comma": (["solve", "bilinear:n=5,"], ["PROBLEM", "got item ''"]),
    "spec with a trailing colon": (["solve", "bilinear:"], ["PROBLEM", "got item ''"]),
    "spec without a name": (["solve", ":n=3"], ["PROBLEM", "the name is missing"]),
    "spec with a list value": (["solve", "bilinear:n=[1,2]", *TINY], ["PROBLEM", "n must be a positive integer, "
                                                                      "got [1, 2]"]),
    "spec with an unclosed bracket": (["solve", "bilinear:n=[1,2"], ["PROBLEM", "not a Python literal"]),
    "spec with a key twice": (["solve", "xy", "-s", "extragradient:step_size=0.1,step_size=0.2"],
                              ["--solver", "'step_size' is given twice"]),
    "spec integer beyond 64 bits": (["solve", f"bilinear:n={10**20}"], ["PROBLEM", "64-bit"]),
    "list step size": (["solve", "xy", *TINY, "-s", "extragradient:step_size=[0.1,0.2]"],
                       ["--solver 'extragradient:step_size=[0.1,0.2]'", "step_size"]),
    "code in a value is not run": (["solve", "xy", *TINY, "-s", "extragradient:step_size=__import__('os').getpid()"],
                                   ["--solver", "step_size", "got str"]),
    # unknown names and settings, values out of range
    "unknown problem": (["compare", "-p", "nope", "--no-plot"], ["--problem 'nope'", "unknown problem"]),
    "unknown solver": (["compare", "-p", "xy", "-s", "nope", "--no-plot"], ["--solver 'nope'", "unknown solver"]),
    "unknown problem setting": (["solve", "bilinear:m=3", *TINY], ["PROBLEM 'bilinear:m=3'", "'m'"]),
    "unknown solver setting": (["solve", "xy", "-s", "extragradient:stepsize=0.1"],
                               ["--solver", "no setting(s) ['stepsize']"]),
    "step_size=abc": (["solve", "xy", *TINY, "-s", "extragradient:step_size=abc"], ["--solver", "step_size"]),
    "step_size=nan": (["solve", "xy", *TINY, "-s", "extragradient:step_size=nan"], ["--solver", "step_size", "nan"]),
    "step_size=-1": (["solve", "xy", *TINY, "-s", "extragradient:step_size=-1"], ["--solver", "step_size"]),
    "n=-3": (["compare", "-p", "matrix_game:n=-3", "--no-plot"], ["--problem", "n must be a positive integer"]),
    "n=0": (["solve", "bilinear:n=0"], ["PROBLEM", "n must be a positive integer"]),
    "B=0": (["solve", "xy", "-B", "0"], ["--batch-size/-B", "positive integer", "'0'"]),
    "B=abc": (["solve", "xy", "-B", "abc"], ["--batch-size/-B", "'abc'"]),
    "B too large for int64": (["solve", "xy", "-B", str(2**63)], ["--batch-size/-B", "below 2**63"]),
    "batch too large for memory": (["solve", "bilinear:n=8388608", *TINY], ["PROBLEM", "too large for this machine"]),
    "seed=-1": (["solve", "xy", "--seed=-1"], ["--seed", "non-negative integer"]),
    "seed beyond 64 bits": (["solve", "xy", "--seed", str(10**30)], ["--seed", "below 2**63"]),
    "seed in the spec": (["solve", "xy:seed=-1"], ["PROBLEM", "seed must be a non-negative integer"]),
    "tol=-1": (["solve", "xy", "--tol=-1"], ["--tol", "non-negative finite number"]),
    "tol=nan": (["solve", "xy", "--tol", "nan"], ["--tol", "'nan'"]),
    "tol=inf": (["solve", "xy", "--tol", "inf"], ["--tol", "'inf'"]),
    "max-iters=-5": (["solve", "xy", "--max-iters=-5"], ["--max-iters", "non-negative integer"]),
    "check-every=0": (["solve", "xy", "--check-every", "0"], ["--check-every", "positive integer"]),
    "huge operator budget": (["solve", "xy", "--max-operator-calls", str(10**30)],
                             ["--max-operator-calls", "below 2**63"]),
    "dtype=float16": (["solve", "xy", "--dtype", "float16"], ["--dtype", "float16"]),
    "dtype in the spec": (["solve", "xy:dtype=int64"], ["PROBLEM", "dtype must be one of"]),
    "measure=kkt": (["solve", "xy", "--measure", "kkt"], ["--measure", "invalid choice"]),
    # devices: the 28-line AssertionError for --device cuda without CUDA
    "device not on this machine": (["solve", "xy", "--device", "cuda:99"], ["--device", "cuda:99"]),
    "device in the spec": (["solve", "xy:device='cuda:99'"], ["PROBLEM", "cuda:99"]),
    "meta device": (["solve", "xy", "--device", "meta"], ["--device", "meta device holds no data"]),
    "no such device": (["solve", "xy", "--device", "gpu0"], ["--device", "expected a torch device"]),
    # a solver that cannot run on the problem, a measure the problem lacks
    "solver for bounded sets only": (["solve", "xy", *TINY, "-s", "sam"], ["--solver 'sam' on PROBLEM 'xy'",
                                                                          "bounded"]),
    "distributed solver on a plain problem": (["compare", "-p", "xy", "-s", "extragradient", "-s", "masha1",
                                               "--no-plot"], ["--solver 'masha1' on --problem 'xy'"]),
    "stochastic solver without a step": (["solve", "xy", *TINY, "-s", "seg"], ["--solver 'seg'", "step_size"]),
    "gap on a problem without one": (["compare", "-p", "bilinear:n=2", *TINY, "--measure", "gap", "--no-plot"],
                                     ["--measure gap", "--problem 'bilinear:n=2'", "--measure residual"]),
    # conflicting or repeated options
    "output with no-plot": (["compare", "-p", "xy", "--no-plot", "-o", "x.png"], ["--output and --no-plot"]),
    "solver twice": (["compare", "-p", "xy", "-s", "gda", "-s", "gda", "--no-plot"], ["--solver", "more than once"]),
    # the command line itself
    "no command": ([], ["command"]),
    "unknown command": (["sovle"], ["invalid choice: 'sovle'"]),
    "unknown option": (["solve", "xy", "--tolerance", "1"], ["unrecognized arguments: --tolerance"]),
    "ambiguous option": (["solve", "xy", "--max", "3"], ["ambiguous option: --max"]),
    "missing problem": (["solve"], ["PROBLEM"]),
    # saddle bench
    "negative timeout": (["bench", "--timeout", "-1"], ["--timeout", "(0, 1e+06]", "-1"]),
    "nan timeout": (["bench", "--timeout", "nan"], ["--timeout", "nan"]),
    "timeout beyond what subprocess can wait": (["bench", "--timeout", "1e300"], ["--timeout"]),
    "bench on a missing folder": (["bench", "--folder", "/nonexistent/benchmarks"], ["--folder", "does not exist"]),
    "bench device": (["bench", "--device", "meta"], ["--device"]),
    "bench unknown script": (["bench", "--only", "nope"], ["--only", "'nope'"]),
}


@pytest.mark.parametrize("argv,expected", CASES.values(), ids=CASES.keys())
def test_a_mistake_is_one_line_naming_the_option(argv, expected, capsys):
    line = usage_error(argv, capsys)
    for text in expected:
        assert text in line


def test_code_in_a_spec_is_never_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    for value in (f"__import__('pathlib').Path({str(marker)!r}).touch()", f"open({str(marker)!r},'w')"):
        usage_error(["solve", "xy", *TINY, "-s", f"extragradient:step_size={value}"], capsys)
        usage_error(["solve", f"xy:x0={value}", *TINY], capsys)
    assert not marker.exists()


def no_work(monkeypatch):
    """Make any comparison fail the test: the command must stop before it."""
    def compare(*args, **kwargs):
        raise AssertionError("a comparison ran before the command line was checked")

    monkeypatch.setattr(saddle.comparison, "compare", compare)


def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
    except PermissionError:
        return folder
    pytest.skip("this user (root) can write into a read-only folder")


@pytest.mark.parametrize("where,expected", [
    (lambda tmp: tmp / "missing" / "plot.png", ["--output", "does not exist"]),
    (lambda tmp: read_only_folder(tmp) / "plot.png", ["--output", "cannot write to the folder"]),
    (lambda tmp: "/proc/plot.png", ["--output", "cannot write to the folder '/proc'"]),
    (lambda tmp: tmp / "plot.xyz", ["--output", "cannot write .xyz files", ".png", ".pdf"]),
    (lambda tmp: tmp, ["--output", "is a folder", "saddle-compare.png"]),
    (lambda tmp: f"{tmp}/sub/", ["--output", "is a folder"]),
], ids=["missing folder", "read-only folder", "unwritable folder", "unknown extension", "a folder", "folder name"])
def test_compare_checks_its_output_before_solving(where, expected, tmp_path, monkeypatch, capsys):
    path = where(tmp_path)
    if str(path).startswith("/proc") and not os.path.isdir("/proc"):
        pytest.skip("no /proc")
    no_work(monkeypatch)
    before = sorted(tmp_path.rglob("*"))
    line = usage_error(["compare", "-p", "xy", "-s", "extragradient", "-o", str(path)], capsys)
    for text in expected:
        assert text in line
    assert sorted(tmp_path.rglob("*")) == before  # no partial file, no created folder


def test_compare_checks_every_problem_and_solver_before_the_first_solve(monkeypatch, capsys):
    no_work(monkeypatch)
    usage_error(["compare", "-p", "xy", "-p", "bilinear:n=0", "--no-plot"], capsys)
    usage_error(["compare", "-p", "xy", "-p", "bilinear:n=2", "-s", "extragradient", "-s", "sam", "--no-plot"],
                capsys)


def test_bench_checks_its_output_before_running_scripts(tmp_path, capsys):
    folder = tmp_path / "benchmarks"
    folder.mkdir()
    ran = tmp_path / "ran"
    (folder / "toy.py").write_text(f"open({str(ran)!r}, 'w').close()\n")
    line = usage_error(["bench", "--folder", str(folder), "-o", str(tmp_path / "missing" / "r.md")], capsys)
    assert "--output" in line and "does not exist" in line
    line = usage_error(["bench", "--folder", str(tmp_path / "missing")], capsys)
    assert "--folder" in line
    line = usage_error(["bench", "--folder", str(tmp_path)], capsys)  # a folder without scripts
    assert "no benchmark scripts" in line
    assert not ran.exists()


def test_the_plot_gets_the_name_it_is_reported_under(tmp_path, capsys):
    # "-o somedir" used to write somedir.png and report "somedir"; the plot is written whole, nothing else left
    assert main(["compare", "-p", "xy", "-s", "extragradient", "--tol", "1e-6", "-o", str(tmp_path / "plot")]) == 0
    assert capsys.readouterr().out.rstrip().endswith(f"convergence plot written to {tmp_path / 'plot.png'}")
    assert (tmp_path / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((tmp_path / "plot.png").stat().st_mode) == 0o666 & ~umask  # as any new file
    assert main(["compare", "-p", "xy", "-s", "extragradient", "--tol", "1e-6", "-o", str(tmp_path / "p.PDF")]) == 0
    assert (tmp_path / "p.PDF").read_bytes()[:5] == b"%PDF-"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.PDF", "plot.png"]


def test_solve_reaches_the_closed_form_after_the_checks(capsys):
    # the checks run no iteration and leave the random state alone: the answer is the solve's
    state = torch.get_rng_state()
    assert main(["solve", "bilinear:n=3,dtype=float64", "-B", "2", "--tol", "1e-10"]) == 0
    out = capsys.readouterr().out
    assert "2 CONVERGED" in out
    distance = float(out.split("distance to reference:")[1].split()[1])
    assert distance <= 1e-8  # the reference is x* = -A^-T c, y* = -A^-1 b by a linear solve
    assert torch.equal(torch.get_rng_state(), state)


def test_check_comparison_runs_no_iteration_and_keeps_the_random_state():
    problem = problems.get("bilinear", n=3, batch_size=2)
    exact = problem.F
    calls = []

    def noisy(z):  # an operator that draws from torch's random generator
        calls.append(torch.rand(()))
        return exact(z)

    problem.F = noisy
    solvers = {"eg": saddle.get_solver("extragradient"), "ogda": saddle.get_solver("optimistic")}
    state = torch.get_rng_state()
    assert check_comparison(problem, solvers, measure=None) == "residual"
    assert calls and torch.equal(torch.get_rng_state(), state)
    with pytest.raises(ValueError, match="max_iters"):
        check_comparison(problem, solvers, max_iters=-1)


def test_library_compare_fails_before_its_first_solve(monkeypatch):
    solved = []
    real_solve = saddle.comparison.solve

    def solve(*args, callback=None, **kwargs):
        if callback is None:
            solved.append(args[1])
        return real_solve(*args, callback=callback, **kwargs)

    monkeypatch.setattr(saddle.comparison, "solve", solve)
    with pytest.raises(ValueError, match="bounded"):
        saddle.compare(problems.get("xy"), ["extragradient", "sam"])
    assert solved == []


def test_a_library_error_while_solving_is_not_hidden(monkeypatch, capsys):
    solve_module = sys.modules["saddle.solve"]  # (the name saddle.solve is the function)

    def broken(*args, **kwargs):
        raise ValueError("an internal error")

    monkeypatch.setattr(solve_module, "solve", broken)
    with pytest.raises(ValueError, match="an internal error"):
        main(["solve", "xy"])

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB")

    monkeypatch.setattr(solve_module, "solve", out_of_memory)
    line = usage_error(["solve", "xy"], capsys)
    assert "too large for this machine" in line and "80.00 GiB" in line


def test_no_traceback_in_a_real_process(tmp_path):
    # the case: --device cuda without CUDA printed a 28-line AssertionError (cuda:99 fails everywhere)
    out = subprocess.run([sys.executable, "-m", "saddle", "compare", "-p", "xy", "--device", "cuda:99", "-o",
                          str(tmp_path / "plot.png")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert "argument --device" in out.stderr and "cuda:99" in out.stderr
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------- properties

PROPERTY = settings(max_examples=150, deadline=None)


@PROPERTY
@given(st.text(alphabet=st.sampled_from(list("ab_=:,[](){}'\"0123456789.-+ eEnaif")), max_size=30))
def test_parse_spec_returns_or_raises_value_error(text):
    try:
        name, spec = parse_spec(text)
    except ValueError as err:
        assert repr(text) in str(err)
        return
    assert name and name == name.strip() and ":" not in name
    assert all(key.isidentifier() for key in spec)


literals = st.one_of(
    st.integers(-(2**63) + 1, 2**63 - 1), st.floats(allow_nan=False, allow_infinity=False), st.booleans(),
    st.none(), st.text(alphabet="ab ,=:'\"\\[]", max_size=8),
    st.lists(st.integers(-9, 9), max_size=4), st.tuples(st.floats(-1, 1), st.text(alphabet="ab,'", max_size=3)))


@PROPERTY
@given(st.dictionaries(st.sampled_from(["n", "m", "step_size", "geometry", "x0", "_", "if"]), literals, max_size=4))
def test_parse_spec_reads_back_python_literals(settings_):
    text = "name:" + ",".join(f"{k}={v!r}" for k, v in settings_.items())
    assert parse_spec(text if settings_ else "name") == ("name", settings_)


PARSER = build_parser()
NUMBER_OPTIONS = {
    "--batch-size": lambda v: isinstance(v, int) and 1 <= v < 2**63,
    "--seed": lambda v: isinstance(v, int) and 0 <= v < 2**63,
    "--max-iters": lambda v: isinstance(v, int) and 0 <= v < 2**63,
    "--max-operator-calls": lambda v: isinstance(v, int) and 1 <= v < 2**63,
    "--check-every": lambda v: isinstance(v, int) and 1 <= v < 2**63,
    "--tol": lambda v: isinstance(v, float) and math.isfinite(v) and v >= 0,
}
numbers_as_text = st.one_of(st.integers(-(2**70), 2**70).map(str), st.floats().map(repr), st.text(max_size=6),
                            st.sampled_from(["nan", "-inf", "1e400", "0x10", "1_000", " 7 ", "", "-0"]))


@PROPERTY
@given(st.sampled_from(sorted(NUMBER_OPTIONS)), numbers_as_text)
def test_number_options_are_checked_when_parsed(option, text):
    try:
        args = PARSER.parse_args(["solve", "xy", f"{option}={text}"])
    except _UsageError as err:
        assert f"argument {option}" in str(err) and "\n" not in str(err)
        return
    assert NUMBER_OPTIONS[option](getattr(args, option[2:].replace("-", "_")))
