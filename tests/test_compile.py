"""``torch.compile`` of the PDHG family's steps: traced a few times per shape, not per iteration.

The steps' restart bookkeeping (branches on the Python int ``iteration``) is eager (`finish_step`,
`saddle.solvers.pdhg_map.eager_when_compiled`) so that the compiled arithmetic (`bare_step`) is
traced a few times, not once per iteration. Compiling with the ``eager`` backend traces exactly what
inductor would compile, and takes a second: the recompilation tests use it; the agreement with
inductor's kernels is slow.
"""

from __future__ import annotations

import functools
import math
import subprocess
import sys

import pytest
import torch
from torch._dynamo.utils import counters

import saddle
from saddle import problems

SOLVERS = ["pdhg", "r2hpdhg"]


def lp():
    return problems.get("linear_program", n=12, m_ub=8, m_eq=3, batch_size=3, seed=0)


def games():
    return problems.get("matrix_game", n=8, batch_size=4, seed=1)


@pytest.fixture
def traced_only(monkeypatch):
    """``torch.compile`` with the ``eager`` backend (dynamo's tracing and guards, no code generation), with
    dynamo's caches and counters cleared before and after."""
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", functools.partial(compile_, backend="eager"))
    torch._dynamo.reset()
    counters.clear()
    yield counters
    torch._dynamo.reset()
    counters.clear()


def run(step, solver, problem, z, state, iterations: int):
    """``iterations`` steps by ``step`` and by the eager ``solver.step`` from ``(z, state)``; both ends."""
    z_eager, state_eager = z, state
    for _ in range(iterations):
        z, state = step(z, state)
        z_eager, state_eager = solver.step(problem, z_eager, state_eager)
    assert state.iteration == state_eager.iteration and torch.equal(state.restarts, state_eager.restarts)
    for a, b in zip(z, z_eager):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    return (z, state), (z_eager, state_eager)


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("make", [lp, games], ids=["lp", "games"])
def test_a_compiled_step_is_traced_a_few_times_not_per_iteration(traced_only, solver, make):
    """As ``solve(compile=True)`` compiles it. The traces: the first step (the state's anchor is its point)
    and the steps after restart checks (the tracker holds the reported point) alias inputs differently,
    and each needs its own, in a few frames (the closure, `step`, `finish_step`'s graph break, made at
    the first compiled call). After 130 iterations (four restart checks) 130 more trace nothing."""
    problem = make()
    s = saddle.get_solver(solver)
    step = torch.compile(lambda z, state: s.step(problem, z, state), dynamic=False)
    z = problem.domain.project(problem.z0)
    (z, state), _ = run(step, s, problem, z, s.init(problem, z), 130)
    traces = traced_only["frames"]["total"]
    assert traces <= 20, dict(traced_only["frames"])
    run(step, s, problem, z, state, 130)
    assert traced_only["frames"]["total"] == traces


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("make", [lp, games], ids=["lp", "games"])
def test_a_compiled_bare_step_is_traced_at_most_three_times(traced_only, solver, make):
    """What a driver compiling only `bare_step` (and running `finish_step` eagerly) gets."""
    problem = make()
    s = saddle.get_solver(solver)
    bare = torch.compile(lambda z, state: s.bare_step(problem, z, state), dynamic=False)
    z = problem.domain.project(problem.z0)
    run(lambda z, state: s.finish_step(problem, z, state, bare(z, state)), s, problem, z, s.init(problem, z), 130)
    assert traced_only["frames"]["total"] <= 3, dict(traced_only["frames"])


@pytest.mark.parametrize("solver", SOLVERS)
def test_solve_with_compile_traces_the_step_a_few_times(traced_only, solver):
    problem = lp()
    settings = dict(tol=1e-5, max_iters=2000, measure="kkt", divergence_factor=math.inf)
    eager = saddle.solve(problem, solver, **settings)
    compiled = saddle.solve(problem, solver, compile=True, **settings)
    assert traced_only["frames"]["total"] <= 20, dict(traced_only["frames"])
    assert bool(eager.success.all()) and torch.equal(compiled.status, eager.status)
    assert torch.equal(compiled.iterations, eager.iterations)
    for a, b in zip(compiled.z, eager.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", SOLVERS)
def test_bare_and_finish_step_make_the_step(solver):
    """`step` is `finish_step` of `bare_step`, bit for bit (what a driver compiling only `bare_step` relies on)."""
    problem = games()
    s = saddle.get_solver(solver, restart_every=4)
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    z_split, state_split = z, state
    for _ in range(20):
        z, state = s.step(problem, z, state)
        z_split, state_split = s.finish_step(problem, z_split, state_split, s.bare_step(problem, z_split, state_split))
    assert all(torch.equal(a, b) for a, b in zip(z, z_split))
    assert state_split.iteration == 20 and torch.equal(state.restarts, state_split.restarts)


@pytest.mark.slow
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("make", [lp, games], ids=["lp", "games"])
def test_compiled_solve_agrees_with_the_eager_one(solver, make):
    """With inductor's kernels (sums in another order), the same statuses and iteration counts to a tolerance.

    r2hpdhg's iterates agree to rounding; PDHG's to the tolerance: its adaptive step accepts or rejects on
    a comparison that rounding flips now and then, and its trajectory moves on from there."""
    problem = make()
    settings = dict(tol=1e-6, max_iters=3000, measure="kkt" if make is lp else "gap")
    eager = saddle.solve(problem, solver, **settings)
    torch._dynamo.reset()
    try:
        compiled = saddle.solve(problem, solver, compile=True, **settings)
    finally:
        torch._dynamo.reset()
    assert torch.equal(compiled.status, eager.status) and bool(eager.success.all())
    assert torch.equal(compiled.iterations, eager.iterations)
    for a, b in zip(compiled.z, eager.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-8 if solver == "r2hpdhg" else 1e-5)


def chunked(solver, problem, chunk, size: int, iterations: int):
    """``iterations`` iterations from ``(z, state)``: ``size`` at once by ``chunk`` where that many are plain
    (`plain_iterations`), else one `step`. Returns ``(z, state, plain)``: the end, and how many were plain."""
    def run(z, state):
        plain = 0
        while state.iteration < iterations:
            if solver.plain_iterations(state) >= size:
                z, state = chunk(z, state)
                state, plain = solver.advance(state, size), plain + size
            else:
                z, state = solver.step(problem, z, state)
        return z, state, plain
    return run


def eager_steps(solver, problem, z, state, iterations: int):
    for _ in range(iterations):
        z, state = solver.step(problem, z, state)
    return z, state


@pytest.mark.parametrize("solver,settings,plain", [("r2hpdhg", {}, 30), ("pdhg", {"adaptive_step": False}, 35)])
def test_plain_steps_make_the_steps_between_restart_checks(solver, settings, plain):
    """`plain_step` where `plain_iterations` allows, `step` elsewhere: the same iterates, bit for bit. In 40
    iterations with restart checks every 8, all are plain but the checks (and for r2hpdhg the steps after)."""
    problem = lp()
    s = saddle.get_solver(solver, restart_every=8, **settings)
    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    z_plain, state_plain, n_plain = chunked(s, problem, lambda z, state: s.plain_step(problem, z, state), 1, 40)(
        z, state)
    z, state = eager_steps(s, problem, z, state, 40)
    assert n_plain == plain
    assert state_plain.iteration == 40 and torch.equal(state.restarts, state_plain.restarts)
    assert all(torch.equal(a, b) for a, b in zip(z, z_plain))


def test_adaptive_pdhg_has_no_plain_iterations():
    s = saddle.get_solver("pdhg")
    assert s.plain_iterations(s.init(lp(), lp().z0)) == 0


def test_a_compiled_chunk_of_plain_steps_is_traced_once(traced_only):
    """What a driver compiling (or capturing) chunks of plain steps gets: one trace for all chunks."""
    problem = games()
    s = saddle.get_solver("r2hpdhg", restart_every=16)

    def four(z, state):
        for _ in range(4):
            z, state = s.plain_step(problem, z, state)
        return z, state

    z = problem.domain.project(problem.z0)
    state = s.init(problem, z)
    z_chunked, state_chunked, plain = chunked(s, problem, torch.compile(four, dynamic=False), 4, 96)(z, state)
    z, state = eager_steps(s, problem, z, state, 96)
    assert plain == 72  # 3 chunks of 4 in each period of 16 (14 plain iterations)
    assert traced_only["frames"]["total"] <= 2, dict(traced_only["frames"])
    assert torch.equal(state.restarts, state_chunked.restarts)
    for a, b in zip(z, z_chunked):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_importing_saddle_does_not_import_dynamo():
    """``torch.compiler.disable`` at import would import dynamo: a second more of every ``import saddle``."""
    code = "import sys, saddle; assert 'torch._dynamo' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
