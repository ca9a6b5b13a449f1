"""Chunks of steps replayed from a CUDA graph (`saddle.graphs`, the driver's ``compile=``).

On the CPU the capture is simulated by `replaying_capture`, which has a CUDA graph's semantics for
the plumbing under test (fixed input and output buffers, outputs overwritten at every replay); the
tests marked ``cuda`` run the real capture.
"""

from __future__ import annotations

import importlib
import warnings
from typing import NamedTuple

import pytest
import torch

import saddle
from saddle import Status, graphs, problems
from saddle.graphs import GraphedSteps, GraphUnsupported, capture_steps

CUDA = torch.cuda.is_available()
driver = importlib.import_module("saddle.solve")  # (the module: `saddle.solve` is the function)


def replaying_capture(fn):
    """A stand-in for `saddle.graphs.cuda_capture` on the CPU: ``fn``'s outputs are fixed buffers that
    every replay overwrites with a rerun of ``fn`` (which reads the fixed input buffers)."""
    outputs = fn()

    def replay():
        for buffer, value in zip(outputs, fn()):
            buffer.copy_(value)

    return replay, outputs


def _game(batch_size=6, n=7):
    return problems.get("matrix_game", n=n, batch_size=batch_size, seed=3)


def test_replays_are_the_eager_steps_bit_for_bit():
    problem = _game()
    solver = saddle.get_solver("extragradient")
    z = problem.z0
    state = solver.init(problem, z)
    step = lambda z, s: solver.step(problem, z, s)  # noqa: E731
    graph = GraphedSteps(step, 5, z, state, capture=replaying_capture)
    zg, sg = z, state
    ze, se = z, state
    for _ in range(3):
        zg, sg = graph(zg, sg)
        for _ in range(5):
            ze, se = step(ze, se)
    assert all(torch.equal(a, b) for a, b in zip(zg, ze))
    assert torch.equal(sg.operator_calls, se.operator_calls)


def test_a_replay_does_not_overwrite_the_point_the_driver_still_holds():
    problem = _game()
    solver = saddle.get_solver("optimistic")
    step = lambda z, s: solver.step(problem, z, s)  # noqa: E731
    z, state = problem.z0, solver.init(problem, problem.z0)
    graph = GraphedSteps(step, 3, z, state, capture=replaying_capture)
    z1, s1 = graph(z, state)
    kept = [t.clone() for t in z1]
    graph(z1, s1)  # the graph's output buffers change; z1 must not
    assert all(torch.equal(a, b) for a, b in zip(z1, kept))


class _Counting(NamedTuple):
    x: torch.Tensor
    scale: torch.Tensor
    count: int


def test_tensors_a_step_passes_through_are_shared_not_copied():
    def step(z, s):
        return (z[0] * s.scale,), s._replace(x=s.x + 1)

    z, s = (torch.ones(2, 3),), _Counting(torch.zeros(2), torch.full((2, 1), 0.5), 0)
    graph = GraphedSteps(step, 2, z, s, capture=replaying_capture)
    z2, s2 = graph(z, s)
    assert s2.scale is s.scale and s2.count == 0
    assert torch.equal(z2[0], torch.full((2, 3), 0.25)) and torch.equal(s2.x, torch.full((2,), 2.0))
    assert graph.matches(z2, s2) and not graph.matches(z2, s2._replace(scale=s.scale.clone()))
    assert not graph.matches((torch.ones(4, 3),), s)


def test_a_python_counter_in_the_state_is_refused_with_a_warning():
    def step(z, s):
        return z, s._replace(x=s.x + 1, count=s.count + 1)

    z, s = (torch.ones(2, 3),), _Counting(torch.zeros(2), torch.ones(2, 1), 0)
    with pytest.raises(GraphUnsupported, match="Python counter"):
        GraphedSteps(step, 4, z, s, capture=replaying_capture)
    with pytest.warns(RuntimeWarning, match="could not be captured as a CUDA graph.*running eagerly"):
        assert capture_steps(step, 4, z, s, name="counting", capture=replaying_capture) is None
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        GraphedSteps(lambda z, s: (z, s), 0, z, s, capture=replaying_capture)


@pytest.fixture
def simulated_graphs(monkeypatch):
    """The driver in its CUDA mode on the CPU: chunks replayed from simulated graphs (captures counted)."""
    captures = []

    def capture(fn):
        captures.append(fn)
        return replaying_capture(fn)

    monkeypatch.setattr(driver, "_step_mode", lambda compile, problem, calls: "eager" if compile is False else "graph")
    monkeypatch.setattr(graphs, "cuda_capture", capture)
    return captures


@pytest.mark.parametrize("solver", ["extragradient", "optimistic", "mirror_prox"])
def test_a_solve_from_graphs_is_the_eager_solve(simulated_graphs, solver):
    problem = _game(batch_size=16)
    settings = dict(tol=1e-5, max_iters=3000, check_every=8, measure="gap")
    eager = saddle.solve(problem, solver, compile=False, **settings)
    graphed = saddle.solve(problem, solver, **settings)
    assert simulated_graphs, "no chunk was replayed from a graph"
    assert len(simulated_graphs) <= 1 + 8  # one capture per stepped batch: at the start and after narrowings
    assert torch.equal(eager.status, graphed.status) and torch.equal(eager.iterations, graphed.iterations)
    assert all(torch.equal(a, b) for a, b in zip(eager.z, graphed.z))
    assert (graphed.status == Status.CONVERGED).sum() > 0


@pytest.mark.parametrize("problem, measure", [("matrix_game", "gap"), ("linear_program", "residual")])
def test_pdhg_schemes_replay_their_plain_iterations_and_step_eagerly_at_restart_checks(simulated_graphs, problem,
                                                                                      measure):
    problem = problems.get(problem, batch_size=8, seed=2)
    settings = dict(tol=1e-7, max_iters=4000, check_every=64, check_growth=0, measure=measure)
    eager = saddle.solve(problem, "r2hpdhg", compile=False, **settings)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing falls back
        graphed = saddle.solve(problem, "r2hpdhg", **settings)
    assert simulated_graphs
    assert torch.equal(eager.status, graphed.status) and torch.equal(eager.iterations, graphed.iterations)
    assert torch.equal(eager.operator_calls, graphed.operator_calls)
    assert all(torch.equal(a, b) for a, b in zip(eager.z, graphed.z))
    assert (graphed.status == Status.CONVERGED).all()


def test_pdhg_with_adaptive_steps_has_no_plain_iterations_and_runs_eagerly(simulated_graphs):
    problem = _game(batch_size=4)
    eager = saddle.solve(problem, "pdhg", compile=False, tol=1e-6, max_iters=400, measure="gap")
    graphed = saddle.solve(problem, "pdhg", tol=1e-6, max_iters=400, measure="gap")
    assert not simulated_graphs
    assert torch.equal(eager.iterations, graphed.iterations)
    assert all(torch.equal(a, b) for a, b in zip(eager.z, graphed.z))


def test_compile_takes_none_true_or_false():
    with pytest.raises(TypeError, match="compile must be None"):
        saddle.solve(_game(), max_iters=5, compile="yes")


@pytest.mark.cuda
@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("solver", ["extragradient", "optimistic", "r2hpdhg"])
def test_cuda_graphs_replay_the_eager_steps(solver, monkeypatch):
    captures = []
    real = graphs.cuda_capture

    def counted(fn):
        captures.append(fn)
        return real(fn)

    monkeypatch.setattr(graphs, "cuda_capture", counted)
    problem = problems.get("matrix_game", n=20, batch_size=64, seed=1, device="cuda")
    settings = dict(tol=1e-6, max_iters=5000, check_every=16, measure="gap")
    eager = saddle.solve(problem, solver, compile=False, **settings)
    graphed = saddle.solve(problem, solver, **settings)  # the default on CUDA: graphs
    assert captures
    assert torch.equal(eager.status, graphed.status)
    assert (eager.iterations - graphed.iterations).abs().max() <= 16
    assert all(torch.allclose(a, b, atol=1e-9) for a, b in zip(eager.z, graphed.z))
