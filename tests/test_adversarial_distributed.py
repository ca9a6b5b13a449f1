"""Distributed runs agree or refuse (issue 14): `python -m saddle.distributed` as a careless or hostile user runs it.

- ranks started with different options (or that built different problems) all stop at start-up, before any
  collective whose size depends on the options, with one message naming the option and each rank's value;
  before, they finished with exit 0 and wrong answers (distance 12.6 instead of 1e-8 with --seed 0 / 1) or
  aborted in gloo (SIGABRT, "Received data size doesn't match expected size") with --size 6 / 7;
- a setup error on one rank (its --save folder missing) stops every rank with that rank's message;
- a bad option value, a --backend that cannot work or --simulate 0 is one line on stderr and exit status 2,
  never a traceback, and a run that could not save is refused before solving (no file is written).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from saddle import problems
from saddle.distributed import SHARED_OPTIONS, WorkerGroup, main
from saddle.distributed.agreement import (RankReport, decode, encode, format_ranks, hash64, problem_digest, refusal,
                                          shared_options)
from saddle.distributed.cli import parser
from _helpers import ROOT, worker_env

FLAGS = ["--" + name.replace("_", "-") for name in SHARED_OPTIONS]
PARSER = parser()


class _Rank(WorkerGroup):
    """The view of rank `rank` of `size` (no communication: only what a problem is built from)."""

    def __init__(self, rank: int, size: int, backend: str = "gloo"):
        self.size, self.workers, self.backend = size, (rank,), backend

    def all_sum(self, local):
        return local


def _report(argv: list[str], problem=None, error: str | None = None) -> RankReport:
    """What a rank started with ``argv`` sends to the others (through the fixed-size encoding)."""
    args = PARSER.parse_args(argv)
    options = shared_options(args, _Rank(0, 2, args.backend or "gloo"))
    report = RankReport(hash64(" ".join(options)), 0 if problem is None else problem_digest(problem),
                        tuple(hash64(v) for v in options.values()), options, error)
    encoded = encode(report)
    assert encoded.shape == (8 * 32 + 4096,) and encoded.dtype == torch.uint8  # fixed, whatever the options
    return decode(encoded)


# Two values of every option that must agree.
ALTERNATIVES = {
    "--problem": ("distributed_bilinear", "distributed_matrix_game"), "--size": ("6", "7"), "--samples": ("2", "3"),
    "--batch-size": ("1", "2"), "--seed": ("0", "1"), "--solver": ("masha1", "masha2"),
    "--compressor": ("randk", "topk"), "--keep": ("2", "3"), "--server-compressor": ("topk", "identity"),
    "--step-size": ("0.1", "0.2"), "--sync-prob": ("0.5", "0.25"), "--participation": ("1", "2"),
    "--minibatch": ("1", "2"), "--max-iters": ("100", "200"), "--tol": ("1e-06", "1e-08"),
    "--measure": ("distance", "residual"), "--check-every": ("10", "20"), "--backend": ("gloo", "nccl"),
    "--fail-rank": ("0", "1"), "--fail-at": ("5", "6"), "--fail-mode": ("raise", "exit"),
    "--dtype": ("float64", "float32"), "--transport": ("auto", "server"), "--bandwidth": ("1.0", "2.0"),
}


def test_every_shared_option_has_alternatives():
    assert set(ALTERNATIVES) == set(FLAGS)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from(FLAGS), min_size=1, max_size=4, unique=True), st.integers(2, 5), st.data())
def test_ranks_that_differ_in_any_options_are_all_told_which_and_how(flags, size, data):
    odd = data.draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=size - 1, unique=True), label="odd ranks")
    common = [arg for flag, (value, _) in ALTERNATIVES.items() if flag not in flags for arg in (flag, value)]
    reports = [_report(common + [a for f in flags for a in (f, ALTERNATIVES[f][rank in odd])]) for rank in range(size)]
    message = refusal(reports)
    assert message is not None and message.startswith("the ranks were started with different options: ")
    named = [flag for flag in FLAGS if f"{flag} {ALTERNATIVES[flag][0]} on " in message]
    assert sorted(named) == sorted(flags)
    for flag in flags:
        assert f"{flag} {ALTERNATIVES[flag][1]} on {format_ranks(sorted(odd))}" in message
    assert refusal([reports[0]] * size) is None


def test_unset_and_long_values_are_shown_and_still_compared_in_full():
    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"   # differ after the 60 characters shown
    message = refusal([_report(["--compressor", long_a]), _report(["--compressor", long_b, "--keep", "3"])])
    assert "--compressor " + "x" * 60 + " on rank 0 vs --compressor " in message
    assert "no --keep on rank 0 vs --keep 3 on rank 1" in message


def test_one_rank_failing_at_setup_stops_every_rank_with_its_message():
    ok, bad = _report([]), _report([], error="--save /x/y.pt: the folder '/x' does not exist")
    assert refusal([ok, bad, ok]) == "rank 1: --save /x/y.pt: the folder '/x' does not exist"
    assert refusal([bad, bad]) == "--save /x/y.pt: the folder '/x' does not exist"
    other = _report([], error="masha1: participation (3) must be at most the number of workers (2)")
    assert refusal([bad, other, other]) == ("rank 0: --save /x/y.pt: the folder '/x' does not exist; "
                                             "ranks 1-2: masha1: participation (3) must be at most the number "
                                             "of workers (2)")


def test_problem_digest_is_the_same_on_every_rank_and_changes_with_the_data():
    def held_by(rank, seed=0, **kw):
        return problems.get("distributed_bilinear", n=4, group=_Rank(rank, 3), batch_size=2, seed=seed, **kw)

    digests = {problem_digest(held_by(rank)) for rank in range(3)}      # different shards, the same problem
    assert digests == {problem_digest(problems.get("distributed_bilinear", n=4, workers=3, batch_size=2, seed=0))}
    assert problem_digest(held_by(0, seed=1)) not in digests
    assert problem_digest(held_by(0, lam=0.5)) not in digests           # not an option: only the data differ
    same = [_report([], held_by(0)), _report([], held_by(1)), _report([], held_by(2, lam=0.5))]
    assert refusal(same[:2]) is None
    assert "the ranks built different problems from the same options" in refusal(same)
    assert "ranks 0-1 vs rank 2" in refusal(same)


def test_a_rank_running_another_version_is_refused_by_name():
    report = _report([])
    assert "different versions of saddle.distributed" in refusal([report, report._replace(layout=1)])


def test_rank_lists_are_short():
    assert format_ranks([3]) == "rank 3" and format_ranks([0, 2]) == "ranks 0, 2"
    assert format_ranks([0, 1, 2, 3, 5]) == "ranks 0-3, 5"


# -- real processes ---------------------------------------------------------------------------------------

def _launch(argvs: list[list[str]], timeout: float = 60.0) -> tuple[list[subprocess.CompletedProcess], float]:
    """Start one rank per argv (the environment torchrun would give them, one option list each) and wait."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-m", "saddle.distributed", "--backend", "gloo", "--timeout", "20",
                               *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=worker_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(len(argvs)),
                                             MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)))
             for rank, argv in enumerate(argvs)]
    outs = [subprocess.CompletedProcess(p.args, 0, *p.communicate(timeout=timeout)) for p in procs]
    for out, p in zip(outs, procs):
        out.returncode = p.returncode
    return outs, time.perf_counter() - start


RUN = ["--size", "6", "--max-iters", "2000", "--tol", "1e-8", "--check-every", "500"]


@pytest.mark.slow  # two fresh processes importing torch: 3-10 s on a loaded 2-core machine
def test_ranks_that_disagree_or_fail_at_setup_all_stop_at_start_up_with_one_message(tmp_path):
    # Before: --seed 0 / 1 ran 2000 rounds to distance 12.6 with exit 0; --size 6 / 7 aborted in gloo.
    missing = tmp_path / "missing" / "run.pt"
    outs, elapsed = _launch([RUN + ["--seed", "0", "--save", str(missing)], RUN + ["--seed", "1", "--size", "7"]])
    expected = ("python -m saddle.distributed: error: the ranks were started with different options: "
                "--size 6 on rank 0 vs --size 7 on rank 1; --seed 0 on rank 0 vs --seed 1 on rank 1 "
                f"(every rank needs the same options); rank 0: --save {missing}: the folder '{missing.parent}' "
                "does not exist\n")
    for out in outs:
        assert (out.returncode, out.stdout, out.stderr) == (2, "", expected)
    assert not os.listdir(tmp_path) and elapsed < 30


# -- one process: user errors are one line, before any work -------------------------------------------------

BAD = [
    (["--simulate", "0"], "argument --simulate: must be a positive integer, got '0'"),
    (["--simulate", "2", "--backend", "gloo"], "--backend gloo applies to runs under torchrun"),
    (["--backend", "nccl"] if not torch.cuda.is_available() else ["--backend", "mpi"], "--backend" if
     torch.cuda.is_available() else "backend 'nccl' needs CUDA devices"),
    ([], "no torchrun environment (missing RANK"),
    (["--simulate", "2", "--size", "0"], "argument --size: must be a positive integer, got '0'"),
    (["--simulate", "2", "--tol", "nan"], "argument --tol: must be a non-negative finite number, got 'nan'"),
    (["--simulate", "2", "--timeout", "inf"], "argument --timeout: must be a positive finite number, got 'inf'"),
    (["--simulate", "2", "--step-size", "-1"], "argument --step-size: must be a positive finite number"),
    (["--simulate", "2", "--sync-prob", "2"], "argument --sync-prob: must be a probability in (0, 1]"),
    (["--simulate", "2", "--solver", "extragradient"], "argument --solver: invalid choice: 'extragradient'"),
    (["--simulate", "2", "--keep", "3"], "--keep needs --compressor randk or topk"),
    (["--simulate", "2", "--compressor", "permk", "--keep", "3"], "--keep applies to randk and topk, not permk"),
    (["--simulate", "2", "--size", "3", "--compressor", "randk", "--keep", "7"],
     "--keep must be at most the dimension d = 6"),
    (["--simulate", "2", "--compressor", "bogus"], "--compressor must be a Compressor or one of"),
    (["--simulate", "2", "--participation", "3"], "participation (3) must be at most the number of workers (2)"),
    (["--simulate", "2", "--minibatch", "2"], "--minibatch must be at most --samples (N = 1 samples per worker)"),
    (["--simulate", "2", "--problem", "distributed_matrix_game", "--samples", "2"],
     "--samples applies to distributed_bilinear, not distributed_matrix_game"),
    (["--simulate", "2", "--size", "3", "--samples", "4"], "--problem distributed_bilinear: samples must be at most n"),
    (["--simulate", "2", "--problem", "distributed_matrix_game", "--solver", "masha2"],
     "masha2 needs an unconstrained problem"),
    (["--simulate", "2", "--measure", "gap"], "measure='gap' is not computable"),
    (["--simulate", "2", "--bandwidth", "1"], "--bandwidth throttles the collectives of a torchrun"),
    (["--simulate", "2", "--bandwidth", "0"], "argument --bandwidth: must be a positive finite number"),
    (["--simulate", "2", "--solver", "distributed_eg", "--transport", "server"],
     "--transport applies to the compressed solvers, not distributed_eg"),
    (["--simulate", "2", "--transport", "ring"], "argument --transport: invalid choice: 'ring'"),
    (["--simulate", "2", "--dtype", "float16"], "argument --dtype: invalid choice: 'float16'"),
]


def _main(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as stop:  # argparse
        return stop.code


@pytest.mark.parametrize("argv,message", BAD)
def test_bad_options_are_one_line_and_exit_2(argv, message, capsys, monkeypatch):
    for variable in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(variable, raising=False)
    assert _main(argv + ["--max-iters", "5"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("python -m saddle.distributed: error: ") and message in last, err


def test_simulate_inside_a_torchrun_job_is_refused(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _main(["--simulate", "2"]) == 2
    assert "but this process is one of WORLD_SIZE = 4 started by torchrun" in capsys.readouterr().err


@pytest.mark.parametrize("target", ["missing/run.pt", "."])
def test_an_unwritable_save_path_is_refused_before_solving(tmp_path, target, capsys):
    start = time.perf_counter()
    assert _main(["--simulate", "2", "--max-iters", "1000000", "--tol", "0", "--save", str(tmp_path / target)]) == 2
    assert time.perf_counter() - start < 5 and capsys.readouterr().out == ""   # no solving, no progress lines
    assert not os.listdir(tmp_path)


# -- property: random (often bad) options get the right answer or one named error ---------------------------

def _solution(n: int, workers: int, seed: int, samples) -> np.ndarray:
    """z* of distributed_bilinear by an independent linear solve: F(z) = Mbar z + cbar = 0 (numpy)."""
    p = problems.get("distributed_bilinear", n=n, workers=workers, seed=seed, samples=samples)
    ops = p.local_operator
    Mbar, cbar = ops.A.mean(1)[0].numpy(), ops.c.mean(1)[0].numpy()
    return np.linalg.solve(Mbar, -cbar)


OPTION_VALUES = {
    "--solver": ["masha1", "masha2", "distributed_eg", "compressed_eg"], "--compressor": ["randk", "topk", "bogus"],
    "--keep": ["0", "1", "3", "50"], "--participation": ["0", "1", "2", "3"], "--minibatch": ["1", "2", "9"],
    "--samples": ["1", "2", "9"], "--size": ["-1", "3", "4"], "--sync-prob": ["0", "0.5", "1.5"],
    "--step-size": ["nan", "0.3"], "--measure": ["distance", "residual", "gap", "kkt"], "--seed": ["-1", "0", "2"],
}
# Where a message may name an option by the library's name for it.
NAMES = {"--keep": ("--keep", "k must", "k ="), "--participation": ("--participation", "participation"),
         "--minibatch": ("--minibatch", "batch_size"), "--samples": ("--samples", "samples"),
         "--sync-prob": ("--sync-prob", " p "), "--step-size": ("--step-size", "step_size"),
         "--compressor": ("--compressor", "compressor"), "--measure": ("--measure", "measure"),
         "--solver": ("--solver", "masha", "compressed_eg", "distributed_eg"), "--size": ("--size", " n "),
         "--seed": ("--seed",)}


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.dictionaries(st.sampled_from(sorted(OPTION_VALUES)), st.none(), max_size=5).flatmap(
    lambda keys: st.fixed_dictionaries({k: st.sampled_from(OPTION_VALUES[k]) for k in keys})))
def test_random_options_solve_correctly_or_fail_naming_an_option(options, tmp_path_factory, capsys):
    folder = tmp_path_factory.mktemp("run")
    save = folder / "run.pt"
    tol, max_iters = 1e-4, 100
    argv = ["--simulate", "2", "--max-iters", str(max_iters), "--tol", str(tol), "--check-every", "50",
            "--save", str(save)] + [a for kv in options.items() for a in kv]
    if "--size" not in options:
        argv += ["--size", "3"]
    code = _main(argv)
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    if code != 0:
        assert code == 2 and not os.listdir(folder)
        last = err.strip().splitlines()[-1]
        assert last.startswith("python -m saddle.distributed: error: ")
        assert any(name in last for flag in options for name in NAMES[flag]), last
        event("refused")
        return
    result = torch.load(save)
    n = int(options.get("--size", "3"))
    samples = None if options.get("--samples", "1") == "1" else int(options["--samples"])
    distance = np.linalg.norm(torch.cat(result["z"], -1)[0].numpy()
                              - _solution(n, 2, int(options.get("--seed", "0")), samples))
    row = out.strip().splitlines()[-1].split()                      # the table: status ... distance (%.3e)
    assert float(row[5]) == pytest.approx(distance, rel=1e-3, abs=1e-300)
    event(row[0])
    if row[0] == "CONVERGED":
        # |F(z)| <= tol bounds the distance by tol / mu (mu = lam = 0.25) on this unconstrained problem
        assert distance <= (tol if options.get("--measure", "distance") == "distance" else tol / 0.25)


@pytest.mark.parametrize("argv", [
    ["--solver", "distributed_eg"],
    ["--solver", "masha1", "--compressor", "randk", "--keep", "3", "--step-size", "0.4"],
    ["--solver", "masha2", "--compressor", "topk", "--keep", "3", "--step-size", "0.3"],
])
def test_valid_options_reach_the_independent_solution(argv, tmp_path, capsys):
    save = tmp_path / "run.pt"
    assert main(["--simulate", "2", "--size", "3", "--seed", "4", "--tol", "1e-8", "--max-iters", "3000",
                 "--check-every", "50", "--save", str(save), *argv]) == 0
    z = torch.cat(torch.load(save)["z"], -1)[0].numpy()
    assert np.linalg.norm(z - _solution(3, 2, 4, None)) <= 1e-8
    assert "CONVERGED" in capsys.readouterr().out
