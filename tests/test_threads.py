"""Intra-op threads of a solve (`saddle.threads`): one thread for small problems, restored after."""

from __future__ import annotations

import pytest
import torch

import saddle
from saddle import problems
from saddle.threads import PARALLEL_MIN, operation_size


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def _threads_seen(problem, **options) -> set[int]:
    seen = set()

    def callback(progress):
        seen.add(torch.get_num_threads())

    saddle.solve(problem, "extragradient", max_iters=30, tol=0.0, callback=callback, **options)
    return seen


def test_a_small_problem_runs_on_one_thread_and_the_setting_is_restored(two_threads):
    problem = problems.get("matrix_game", n=10, batch_size=4, seed=0)
    assert operation_size(problem) == 4 * 10 * 10 < PARALLEL_MIN
    assert _threads_seen(problem) == {1}
    assert torch.get_num_threads() == 2
    assert _threads_seen(problem, threads=2) == {2}
    assert torch.get_num_threads() == 2


def test_a_large_problem_keeps_torchs_setting(two_threads, monkeypatch):
    monkeypatch.setattr("saddle.threads.PARALLEL_MIN", 100)
    problem = problems.get("matrix_game", n=10, batch_size=4, seed=0)
    assert _threads_seen(problem) == {2}


def test_the_setting_is_restored_when_the_solve_fails(two_threads):
    problem = problems.get("matrix_game", n=10, batch_size=4, seed=0)

    def callback(progress):
        raise KeyError("stop")

    with pytest.raises(KeyError):
        saddle.solve(problem, "extragradient", max_iters=30, callback=callback)
    assert torch.get_num_threads() == 2


def test_a_sparse_coupling_counts_its_nonzeros():
    K = torch.eye(400, dtype=torch.float64).to_sparse()  # 400 nonzeros, 160 000 entries
    c, d = torch.ones(3, 400, dtype=torch.float64), torch.ones(3, 400, dtype=torch.float64)
    lp = saddle.LinearProgram(c, K, d, 400, torch.zeros(3, 400, dtype=torch.float64),
                              torch.full((3, 400), torch.inf, dtype=torch.float64))
    assert operation_size(lp) == 3 * 400  # the blocks (3, 400) and the products 3 x 400 nonzeros


@pytest.mark.parametrize("threads", [0, -1, 1.5, True, "2"])
def test_threads_is_checked(threads):
    with pytest.raises(ValueError, match="threads must be None"):
        saddle.solve(problems.get("matrix_game", n=5), max_iters=5, threads=threads)
