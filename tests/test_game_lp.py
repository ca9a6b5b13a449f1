"""The LP form of matrix games (`saddle.problems.matrix_games.as_linear_program`), against HiGHS and the game form."""

from __future__ import annotations

import math

import pytest
import torch

import saddle
from saddle import BilinearProblem, Box, Linear, Simplex, Status, problems
from saddle.problems.matrix_games import MatrixGameLP, as_linear_program

F64 = torch.float64


def _game(B=6, n=7, m=5, seed=3, **kw):
    return problems.get("matrix_game", n=n, m=m, batch_size=B, seed=seed, **kw)


def _in_simplex(u: torch.Tensor) -> bool:
    return bool((u >= 0).all()) and torch.allclose(u.sum(-1), torch.ones(u.shape[0], dtype=u.dtype), atol=1e-12)


def test_the_lp_form_is_the_games_lp():
    game = _game()
    lp = as_linear_program(game)
    A = game.K.mT
    B, n, m = A.shape
    assert isinstance(lp, MatrixGameLP) and lp.game_shape == (n, m) and lp.n_eq == 1
    K = lp.coupling.K
    assert K.shape == (B, m + 1, n + 1)
    assert torch.equal(K[:, 0, :n], torch.ones(B, n, dtype=F64)) and torch.equal(K[:, 0, n], torch.zeros(B, dtype=F64))
    assert torch.equal(K[:, 1:, :n], A.mT) and torch.equal(K[:, 1:, n], -torch.ones(B, m, dtype=F64))
    assert torch.equal(lp.c[:, -1], torch.ones(B, dtype=F64)) and torch.equal(lp.d[:, 0], torch.ones(B, dtype=F64))
    assert (lp.lo[0, :n] == 0).all() and lp.lo[0, n] == -math.inf and (lp.hi == math.inf).all()
    # The start: the game's strategies, v0 = max_j (A^T x0)_j, w0 = -min_i (A y0)_i; its gap is the game's.
    x0, y0 = game.z0
    assert torch.equal(lp.z0[0][:, :n], x0) and torch.equal(lp.z0[1][:, 1:], y0)
    assert torch.allclose(lp.z0[0][:, n], (A.mT @ x0.unsqueeze(-1)).squeeze(-1).amax(-1))
    assert torch.allclose(lp.z0[1][:, 0], -(A @ y0.unsqueeze(-1)).squeeze(-1).amin(-1))
    assert torch.allclose(lp.duality_gap(lp.z0), game.duality_gap(game.z0), rtol=0, atol=1e-14)


def test_the_reference_solves_the_lp():
    game = _game()
    lp = as_linear_program(game)
    ref = lp.reference
    primal, dual = ref.solution
    x, v, w, y = primal[:, :-1], primal[:, -1], dual[:, 0], dual[:, 1:]
    assert torch.equal(x, game.reference.solution[0]) and torch.equal(y, game.reference.solution[1])
    assert torch.equal(v, game.reference.value) and torch.equal(w, -game.reference.value)
    kkt = lp.kkt(ref.solution)
    for name in ("primal_residual", "dual_residual", "gap"):
        assert (kkt[name] <= 1e-9).all(), name
    assert (lp.duality_gap(ref.solution).abs() <= 1e-9).all()


def test_strategies_are_in_the_simplices_and_the_gap_is_the_games():
    game = _game()
    lp = as_linear_program(game)
    B, (n, m) = game.batch_size, lp.game_shape
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(B, n + 1, generator=gen, dtype=F64), torch.randn(B, m + 1, generator=gen, dtype=F64))
    z[0][0, :n] = -1.0  # nothing positive: the uniform strategy
    x, y = lp.strategies(z)
    assert _in_simplex(x) and _in_simplex(y)
    assert torch.equal(x[0], torch.full((n,), 1.0 / n, dtype=F64))
    assert torch.allclose(x[1], z[0][1, :n].clamp_min(0) / z[0][1, :n].clamp_min(0).sum())
    assert torch.allclose(lp.duality_gap(z), game.duality_gap((x, y)), rtol=0, atol=1e-14)


def test_the_lp_form_solves_games_to_the_highs_values_and_strategies():
    game = _game(B=8, n=9, m=6, seed=5)
    lp = as_linear_program(game)
    sol = saddle.solve(lp, "r2hpdhg", tol=1e-9, measure="gap", max_iters=50_000)
    assert (sol.status == Status.CONVERGED).all(), sol.status
    x, y = lp.strategies(sol.z)
    assert _in_simplex(x) and _in_simplex(y)
    assert (game.duality_gap((x, y)) <= 1e-9).all() and (sol.gap <= 1e-9).all()
    ref = game.reference  # HiGHS (scipy.optimize.linprog); random games have a unique equilibrium
    assert (game.objective((x, y)) - ref.value).abs().max() <= 1e-9
    assert (x - ref.solution[0]).abs().max() <= 1e-6 and (y - ref.solution[1]).abs().max() <= 1e-6


@pytest.mark.parametrize("solver", ["r2hpdhg", "pdhg"])
def test_the_lp_form_agrees_with_the_game_form(solver):
    game = _game(B=5, n=6, m=8, seed=9)
    lp = as_linear_program(game)
    by_lp = saddle.solve(lp, solver, tol=1e-8, measure="gap", max_iters=50_000)
    by_game = saddle.solve(game, solver, tol=1e-8, measure="gap", max_iters=50_000)
    assert by_lp.success.all() and by_game.success.all()
    values = game.objective(lp.strategies(by_lp.z)), game.objective(by_game.z)
    assert (values[0] - values[1]).abs().max() <= 2e-8


def test_a_batch_equals_the_loop_of_its_games():
    game = _game(B=4, n=6, m=6, seed=2)
    batched = saddle.solve(as_linear_program(game), "r2hpdhg", tol=1e-8, measure="gap", max_iters=50_000)
    assert len(set(batched.iterations.tolist())) > 1  # the instances stop apart (and the batch is compacted)
    for i in range(game.batch_size):
        single_lp = as_linear_program(game.select(i))
        single = saddle.solve(single_lp, "r2hpdhg", tol=1e-8, measure="gap", max_iters=50_000)
        assert single.iterations.item() == batched.iterations[i].item()
        for a, b in zip(single.z, batched.z):
            assert torch.allclose(a[0], b[i], rtol=0, atol=1e-9)


def test_selecting_instances_keeps_the_games():
    game = _game()
    lp = as_linear_program(game)
    rows = torch.tensor([4, 1])
    part = lp.select(rows)
    assert isinstance(part, MatrixGameLP) and part.batch_size == 2
    z = tuple(torch.rand(game.batch_size, k, dtype=F64) for k in lp.dims)
    assert torch.equal(part.duality_gap(tuple(t[rows] for t in z)), lp.duality_gap(z)[rows])
    assert torch.equal(part.reference.value, game.reference.value[rows])


def test_float32_iterations_are_checked_in_float64():
    game = _game(B=4, n=6, m=5, seed=7)
    lp32 = as_linear_program(game).to(torch.float32)
    assert isinstance(lp32, MatrixGameLP) and lp32.dtype == torch.float32
    sol = saddle.solve(lp32, "r2hpdhg", tol=1e-5, measure="gap", max_iters=50_000)
    assert (sol.status == Status.CONVERGED).all(), sol.status
    x, y = lp32.strategies(tuple(t.double() for t in sol.z))
    assert (game.duality_gap((x, y)) <= 1e-5).all()


def test_named_games_and_the_entropic_geometry():
    game = problems.get("rock_paper_scissors", geometry="entropic", batch_size=2, seed=1)
    lp = as_linear_program(game)
    sol = saddle.solve(lp, "r2hpdhg", tol=1e-10, measure="gap", max_iters=20_000)
    x, y = lp.strategies(sol.z)
    assert sol.success.all()
    assert torch.allclose(x, torch.full_like(x, 1 / 3), atol=1e-9) and torch.allclose(y, torch.full_like(y, 1 / 3),
                                                                                          atol=1e-9)


def test_only_bilinear_games_on_simplices_have_this_lp_form():
    K = torch.rand(2, 3, 4, dtype=F64)
    x0, y0 = torch.full((2, 4), 0.25, dtype=F64), torch.full((2, 3), 1 / 3, dtype=F64)
    with pytest.raises(ValueError, match="two simplices"):
        as_linear_program(BilinearProblem(K, x0, y0, X=Box(0.0, 1.0), Y=Simplex()))
    with pytest.raises(ValueError, match="no other terms"):
        as_linear_program(BilinearProblem(K, x0, y0, g=Linear(torch.ones(2, 4, dtype=F64)), X=Simplex(), Y=Simplex()))


def test_the_docs_example_runs():
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[1] / "docs" / "linear_programs.md"
    blocks = [b for b in re.findall(r"```python\n(.*?)```", page.read_text(), re.S) if "as_linear_program" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/linear_programs.md", "exec"), namespace)  # its own assert checks the gap
    assert namespace["solution"].success.all()
