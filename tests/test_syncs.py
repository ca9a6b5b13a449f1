"""No host synchronization in the hot loop: counted by wrapping every tensor-to-host conversion.

``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()`` and ``.numpy()`` on a tensor
force a device-to-host copy (a stall on a GPU). First-order solvers make none per step, and the
driver makes none between checks. Documented exceptions decide a loop length or a branch on the
host: a conjugate-gradient solve (competitive methods) reads once at its start and then tests
convergence every ``check_every`` CG iterations (exactly ``1 + ceil(N / check_every)`` reads for
N iterations, counted below), inexact ALPD takes the length of its inner loop once per step, and
loopless VR-EG reads whether to compute a full pass only where that read is cheap or saves a
full pass on most steps (``host_check``; none with ``host_check=False``).
"""

from __future__ import annotations

import math

import pytest
import torch

from saddle import problems
import saddle
from saddle.linalg import conjugate_gradient
from saddle.testing import count_host_syncs as count_syncs

from _helpers import KNOWN, Counted, dro_problem, problem_for, random_spd, random_vectors

CG_SOLVERS = {"cgd", "acgd", "cgo", "ocgo"}


def test_the_counter_sees_a_sync():
    with count_syncs() as counts:
        t = torch.ones(3)
        bool(t.sum() > 0)
        t.max().item()
    assert counts["syncs"] == 2


@pytest.mark.parametrize("solver", sorted(KNOWN))
def test_steps_do_not_synchronize(solver):
    problem = problem_for(solver)
    s = saddle.get_solver(solver)
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    steps = 10
    with count_syncs() as counts:
        for _ in range(steps):
            z, state = s.step(problem, z, state)
    if solver in CG_SOLVERS:
        # One read at the start of a CG solve, then one every cg_check_every iterations (OCGO: two solves).
        cap = int(state.cg_max_iters.max())
        per_solve = 1 + math.ceil(cap / s.cg_check_every)
        assert counts["syncs"] <= steps * (2 if solver == "ocgo" else 1) * per_solve
    elif solver == "inexact_alpd":
        assert counts["syncs"] == steps  # the inner loop's length, once per step
    else:
        assert counts["syncs"] == 0


@pytest.mark.parametrize("solver", ["extragradient", "pdhg", "sam", "optimistic"])
def test_the_driver_does_not_synchronize_between_checks(solver):
    problem = problem_for(solver)
    with count_syncs() as short:
        saddle.solve(problem, solver, tol=0.0, max_iters=20, check_every=20)
    with count_syncs() as long:
        saddle.solve(problem, solver, tol=0.0, max_iters=200, check_every=200)
    # The same number of checks (at 0 and at the end); ten times the steps.
    assert long["syncs"] == short["syncs"]


# ------------------------------------------------------------------ conjugate gradients
def cg_reads(iterations: int, cap: int, check_every: int) -> int:
    """The host reads of one batched CG solve whose slowest instance takes ``iterations`` iterations.

    One at the start (argument checks, the loop's length, whether any instance needs an iteration),
    then one early-exit test at k = check_every, 2 check_every, ... < cap, up to the first k >= iterations.
    """
    return 1 + len([k for k in range(check_every, cap, check_every) if k - check_every < iterations])


@pytest.mark.parametrize("check_every", [1, 3, 5, 100])
@pytest.mark.parametrize("B", [1, 4])
def test_conjugate_gradient_reads_once_plus_once_per_check(B, check_every):
    A, b = random_spd(B, 30, seed=B, cond=1e3), random_vectors(B, 30, seed=B + 1)
    tol = torch.tensor([1e-3, 1e-6, 1e-9, 1e-12], dtype=torch.float64)[:B]
    for cap in (10, torch.tensor([0, 50, 7, 200])[:B], 200):
        with count_syncs() as counts:
            res = conjugate_gradient(Counted(A), b, tol=tol, max_iters=cap, check_every=check_every)
        n = int(res.iterations.max())
        cap_max = int(torch.as_tensor(cap).max())
        if B == 1:  # the unmasked CPU loop: one read at the start, then one per iteration
            assert counts["syncs"] == 1 + n
        else:
            assert counts["syncs"] == cg_reads(n, cap_max, check_every)
            # (before: 3 more at the start for tensor arguments, and a test at k = 0)
        # The counts are exact whatever the checks: each instance alone, with a test every iteration.
        for i in range(B):
            one = conjugate_gradient(Counted(A[i:i + 1]), b[i:i + 1], tol=float(tol[i]),
                                     max_iters=int(torch.as_tensor(cap).expand(B)[i]), check_every=1)
            assert one.iterations[0] == res.iterations[i]
            torch.testing.assert_close(one.x[0], res.x[i], rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", ["cgd", "acgd", "cgo"])
@pytest.mark.parametrize("check_every", [1, 2, 5])
def test_competitive_steps_read_once_per_solve_plus_once_per_check(solver, check_every):
    problem = problem_for(solver)  # B = 3
    s = saddle.get_solver(solver, cg_check_every=check_every)
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    cap = int(state.cg_max_iters.max())
    for _ in range(6):
        with count_syncs() as counts:
            z, state = s.step(problem, z, state)
        assert counts["syncs"] == cg_reads(int(state.cg_iterations.max()), cap, check_every)
    # Measured with the default cg_check_every = 5 on this problem: 2 reads per step (6 before).


def test_competitive_steps_on_one_instance_read_once_per_cg_iteration():
    problem = problems.get("quadratic", n=6, m=4, batch_size=1, seed=3)
    s = saddle.get_solver("cgd")
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    for _ in range(4):
        with count_syncs() as counts:
            z, state = s.step(problem, z, state)
        assert counts["syncs"] == 1 + int(state.cg_iterations[0])  # (before: 5 + 2 per iteration)


# ------------------------------------------------------------------ loopless VR-EG
def vr_eg_run(host_check, *, probability=None, steps=12):
    problem = dro_problem(ambiguity="chi2", lam=1.0)  # a projection without host reads
    s = saddle.get_solver("vr_eg", step_size=0.02, minibatch=2, probability=probability, host_check=host_check)
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    with count_syncs() as counts:
        for _ in range(steps):
            z, state = s.step(problem, z, state)
    return counts["syncs"] / steps, z, state


def test_vr_eg_steps_without_host_reads():
    reads, z, state = vr_eg_run(False)
    assert reads == 0
    reads_host, z_host, state_host = vr_eg_run(True)
    assert reads_host == 1  # whether any instance refreshes: one read per step (the default on the CPU)
    assert vr_eg_run(None)[0] == 1
    # The same iterates, snapshots and counts: the full pass is computed every step but kept only by the mask.
    for a, b in zip(z, z_host):
        assert torch.equal(a, b)
    for field in ("snapshot", "F_snapshot"):
        assert all(torch.equal(a, b) for a, b in zip(getattr(state, field), getattr(state_host, field)))
    assert torch.equal(state.operator_calls, state_host.operator_calls)
    assert torch.equal(state.refreshes, state_host.refreshes) and int(state.refreshes.sum()) > 0
    # With p = 1 every step refreshes: nothing to ask, whatever host_check says.
    assert vr_eg_run(None, probability=1.0)[0] == 0
    assert vr_eg_run(True, probability=1.0)[0] == 0


def test_vr_eg_driver_does_not_synchronize_between_checks():
    problem = dro_problem(ambiguity="chi2", lam=1.0)
    settings = dict(step_size=0.02, batch_size=2, host_check=False)
    with count_syncs() as short:
        saddle.solve(problem, "vr_eg", tol=0.0, max_iters=20, check_every=20, **settings)
    with count_syncs() as long:
        saddle.solve(problem, "vr_eg", tol=0.0, max_iters=200, check_every=200, **settings)
    assert long["syncs"] == short["syncs"]


def test_vr_eg_with_and_without_host_reads_stop_alike():
    problem = dro_problem(ambiguity="chi2", lam=1.0)
    r0 = saddle.merit.residual(problem, problem.z0)
    tol = r0 * torch.tensor([0.3, 1e-3, 0.0], dtype=torch.float64)  # frozen early, later, never
    runs = [saddle.solve(problem, "vr_eg", step_size=0.02, minibatch=2, host_check=h, tol=tol, max_iters=200,
                         check_every=10) for h in (True, False)]
    for a, b in zip(runs[0].z, runs[1].z):
        assert torch.equal(a, b)
    assert torch.equal(runs[0].iterations, runs[1].iterations)
    assert torch.equal(runs[0].operator_calls, runs[1].operator_calls)


def test_vr_eg_host_check_must_be_a_bool():
    with pytest.raises(TypeError, match="host_check"):
        saddle.get_solver("vr_eg", step_size=0.1, host_check="yes")
