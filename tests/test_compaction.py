"""The driver's chunks: geometric checks (`next_check`) and active-set compaction (``compaction=``)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import saddle
from saddle import Status, problems
from saddle.solve import next_check


def test_checks_are_at_multiples_of_check_every_and_grow_apart_by_ten_percent():
    ks, k = [0], 0
    while k < 100_000:
        k = next_check(k, 10, 0.1)
        ks.append(k)
    assert ks[:11] == list(range(0, 110, 10))
    assert all(k % 10 == 0 for k in ks)
    gaps = [(b - a) / a for a, b in zip(ks[1:], ks[2:])]
    assert max(gaps) <= 0.1 + 1e-12 or all(b - a == 10 for a, b in zip(ks[1:], ks[2:]) if a < 100)
    assert all(g <= 0.1 for g, a in zip(gaps, ks[1:]) if a >= 100)
    assert len(ks) < 10 + math.log(1000) / math.log(1.1) + 10  # O(log k) checks, not k / 10
    assert [next_check(k, 10, 0.0) for k in (0, 500, 90_000)] == [10, 510, 90_010]


@pytest.mark.parametrize("growth", [-0.1, 11, True, "0.1"])
def test_check_growth_is_checked(growth):
    with pytest.raises(ValueError, match="check_growth"):
        saddle.solve(problems.get("bilinear", n=3), "extragradient", step_size=0.1, check_growth=growth)


def test_an_instance_stops_at_most_ten_percent_late():
    problem = problems.get("bilinear", n=5, batch_size=8, seed=0)
    exact = saddle.solve(problem, "extragradient", tol=1e-9, check_every=1, check_growth=0)
    sparse = saddle.solve(problem, "extragradient", tol=1e-9, check_every=10)
    assert (exact.status == Status.CONVERGED).all() and (sparse.status == Status.CONVERGED).all()
    assert (sparse.iterations >= exact.iterations).all()
    assert (sparse.iterations <= torch.maximum(1.1 * exact.iterations, exact.iterations + 10)).all()


@pytest.mark.parametrize("compaction", [-0.5, 1.0, True])
def test_compaction_is_checked(compaction):
    with pytest.raises(ValueError, match="compaction"):
        saddle.solve(problems.get("bilinear", n=3), "extragradient", step_size=0.1, compaction=compaction)


@pytest.mark.parametrize("solver", ["r2hpdhg", "extragradient", "optimistic"])
def test_compaction_changes_no_result(solver):
    # Tolerances from 1e-3 to 1e-7 make the games stop at many different iterations, so the batch compacts
    # several times; statuses, counts and histories are those of the solve without compaction, and the
    # points agree to the rounding of the batched products.
    problem = problems.get("matrix_game", n=12, batch_size=32, seed=3)
    settings = {} if solver == "r2hpdhg" else {"step_size": 0.1}
    tol = torch.logspace(-3, -7, 32, dtype=torch.float64)
    runs = [saddle.solve(problem, solver, tol=tol, measure="gap", max_iters=5000, compaction=c, **settings)
            for c in (0.0, 0.5)]
    plain, compacted = runs
    assert len(plain.iterations.unique()) > 4  # the instances do stop at many different iterations
    for name in ("status", "iterations", "operator_calls"):
        assert torch.equal(getattr(plain, name), getattr(compacted, name)), name
    for a, b in zip(plain.z, compacted.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(plain.history["iteration"], compacted.history["iteration"])
    assert torch.equal(plain.history["operator_calls"], compacted.history["operator_calls"])
    torch.testing.assert_close(plain.history["gap"], compacted.history["gap"], rtol=0, atol=1e-12)


def test_instances_finished_before_the_first_compaction_are_bitwise_unchanged():
    problem = problems.get("matrix_game", n=12, batch_size=32, seed=3)
    tol = torch.logspace(-3, -7, 32, dtype=torch.float64)
    plain = saddle.solve(problem, "r2hpdhg", tol=tol, measure="gap", compaction=0.0)
    compacted = saddle.solve(problem, "r2hpdhg", tol=tol, measure="gap", compaction=0.5)
    # at the first check with at most half of the batch running, the finished half is put aside
    first = sorted(plain.iterations.tolist())[len(plain.iterations) // 2]
    early = plain.iterations <= first
    assert early.sum() >= 16
    for a, b in zip(plain.z, compacted.z):
        assert torch.equal(a[early], b[early])


def test_a_problem_that_cannot_select_is_stepped_whole():
    class Unselectable(type(problems.get("bilinear", n=3))):
        def select(self, index):
            raise TypeError("no selection here")

    problem = copy.copy(problems.get("bilinear", n=4, batch_size=6, seed=0))
    problem.__class__ = Unselectable
    tol = torch.logspace(-2, -9, 6, dtype=torch.float64)
    sol = saddle.solve(problem, "extragradient", tol=tol)
    assert (sol.status == Status.CONVERGED).all() and len(sol.iterations.unique()) > 1
    plain = saddle.solve(problem, "extragradient", tol=tol, compaction=0.0)
    assert torch.equal(sol.iterations, plain.iterations) and all(torch.equal(a, b) for a, b in zip(sol.z, plain.z))
