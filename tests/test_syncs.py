"""No host synchronization in the hot loop: counted by wrapping every tensor-to-host conversion.

``.item()``, ``bool(t)``, ``int(t)``, ``float(t)``, ``.tolist()`` and ``.numpy()`` on a tensor
force a device-to-host copy (a stall on a GPU). First-order solvers make none per step, and the
driver makes none between checks. Two documented exceptions decide a loop length on the host:
a conjugate-gradient solve (competitive methods) tests convergence every ``check_every`` CG
iterations, and inexact ALPD takes the length of its inner loop once per step.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

import saddle

from test_checkpoint import KNOWN, problem_for

CONVERSIONS = ("item", "__bool__", "tolist", "__int__", "__float__", "numpy")
CG_SOLVERS = {"cgd", "acgd", "cgo", "ocgo"}


@contextlib.contextmanager
def count_syncs():
    counts = {"syncs": 0}
    originals = {name: getattr(torch.Tensor, name) for name in CONVERSIONS}

    def counted(name):
        def call(self, *args, **kwargs):
            counts["syncs"] += 1
            return originals[name](self, *args, **kwargs)
        return call

    for name in CONVERSIONS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


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
        # At most one convergence test per CG iteration and a couple per step (OCGO: two CG solves).
        per_solve = s.cg_max_iters + 2 if getattr(s, "cg_max_iters", None) else 60
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
