"""Warm starts (issue 16): `saddle.solve(..., warm_start=)` and `saddle.linprog(..., warm_start=)` start from a
previous solution of a problem of the same shape (point, and through `Solver.warm_state` the solver's adapted
parameters)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import torch

import saddle
from saddle import problems


def small_lp(seed=0, m=12, n=20):
    """A feasible, bounded LP: b from a point inside the box [0, 2]^n, random costs."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n))
    b = A @ rng.uniform(0, 2, n) + rng.uniform(0.1, 1, m)
    return rng.standard_normal(n), A, b, (0, 2)


def test_a_warm_start_from_the_solution_of_the_same_lp_stops_at_once():
    c, A, b, bounds = small_lp()
    cold = saddle.linprog(c, A, b, bounds=bounds, tol=1e-8)
    assert int(cold.status) == 0 and int(cold.nit) > 100
    warm = saddle.linprog(c, A, b, bounds=bounds, tol=1e-8, warm_start=cold)
    assert int(warm.status) == 0 and int(warm.nit) == 0
    assert torch.equal(warm.x, cold.x)


def test_a_warm_start_from_a_nearby_lp_takes_fewer_iterations():
    c, A, b, bounds = small_lp(seed=1)
    first = saddle.linprog(c, A, b, bounds=bounds, tol=1e-8)
    rng = np.random.default_rng(7)
    c2, b2 = c * (1 + 0.01 * rng.standard_normal(c.shape)), b * (1 + 0.01 * rng.standard_normal(b.shape))
    cold = saddle.linprog(c2, A, b2, bounds=bounds, tol=1e-8)
    warm = saddle.linprog(c2, A, b2, bounds=bounds, tol=1e-8, warm_start=first)
    ref = scipy.optimize.linprog(c2, A, b2, bounds=bounds, method="highs")
    for res in (cold, warm):
        assert int(res.status) == 0 and abs(float(res.fun) - ref.fun) <= 1e-6 * max(1, abs(ref.fun))
    assert int(warm.nit) < int(cold.nit)


def test_warm_start_shapes_must_match():
    c, A, b, bounds = small_lp()
    first = saddle.linprog(c, A, b, bounds=bounds, tol=1e-4)
    with pytest.raises(ValueError, match="^warm_start: its point has blocks of shapes"):
        saddle.linprog(c[:-1], A[:, :-1], b, bounds=bounds, warm_start=first)
    with pytest.raises(ValueError, match="^warm_start: its point has blocks of shapes"):
        saddle.linprog(np.stack([c, c]), A, b, bounds=bounds, warm_start=first)  # a batch of 2
    with pytest.raises(TypeError, match="^warm_start must be None or the LinprogResult"):
        saddle.linprog(c, A, b, bounds=bounds, warm_start=first.solution)
    with pytest.raises(ValueError, match="give x0 or warm_start, not both"):
        saddle.linprog(c, A, b, bounds=bounds, warm_start=first, x0=np.zeros_like(c))


def test_solve_warm_start_checks_the_solver_shapes_and_dtype():
    game = problems.get("matrix_game", batch_size=2, n=5, m=4, seed=0)
    sol = saddle.solve(game, "extragradient", tol=1e-6, max_iters=20_000)
    assert bool(sol.success.all())
    again = saddle.solve(game, "extragradient", tol=1e-6, warm_start=sol)
    assert again.iterations.tolist() == [0, 0]
    with pytest.raises(ValueError, match="^warm_start comes from a solve by Extragradient, but this solve uses"):
        saddle.solve(game, "optimistic", tol=1e-6, warm_start=sol)
    other = problems.get("matrix_game", batch_size=3, n=5, m=4, seed=0)
    with pytest.raises(ValueError, match="^warm_start: its point has blocks of shapes"):
        saddle.solve(other, "extragradient", warm_start=sol)
    with pytest.raises(ValueError, match="^warm_start: its point is torch.float64"):
        saddle.solve(game.to(torch.float32), "extragradient", warm_start=sol)
    with pytest.raises(TypeError, match="^warm_start must be a saddle.Solution"):
        saddle.solve(game, "extragradient", warm_start=sol.z)


def test_a_checkpoint_binds_the_warm_start(tmp_path):
    game = problems.get("matrix_game", batch_size=2, n=5, m=4, seed=1)
    first = saddle.solve(game, "extragradient", max_iters=50)
    path = tmp_path / "warm.pt"
    saddle.solve(game, "extragradient", max_iters=100, warm_start=first, checkpoint=path)
    resumed = saddle.solve(game, "extragradient", max_iters=200, warm_start=first, resume=path)
    straight = saddle.solve(game, "extragradient", max_iters=200, warm_start=first)
    assert all(torch.equal(a, b) for a, b in zip(resumed.z, straight.z))
    with pytest.raises(ValueError, match="warm_start"):
        saddle.solve(game, "extragradient", max_iters=200, resume=path)


def test_time_limit_stops_running_instances():
    c, A, b, bounds = small_lp(seed=2, m=40, n=60)
    res = saddle.linprog(c, A, b, bounds=bounds, tol=1e-12, time_limit=1e-9, check_every=8)
    assert int(res.status) == 1 and res.solution.statuses == [saddle.Status.TIME_LIMIT]
    assert "time limit" in res.message and int(res.nit) == 0  # the limit is checked at the first check, k = 0
    with pytest.raises(ValueError, match="time_limit must be None or a positive number"):
        saddle.linprog(c, A, b, bounds=bounds, time_limit=0)
