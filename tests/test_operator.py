"""Operators: autograd saddle operators, linear operators, Jacobian products."""

from __future__ import annotations

import pytest
import torch

from saddle import problems
from saddle import LinearOperator, Operator, SaddleOperator
from saddle.operator import spectral_norm


@pytest.mark.parametrize("name", ["comonotone_linear", "forsaken", "global_forsaken", "quadratic", "bilinear"])
def test_problem_operators_are_the_gradient_fields_of_their_objectives(name):
    # Problems may write F out by hand for speed; it must equal autograd's (grad_x f, -grad_y f).
    problem = problems.get(name, batch_size=3, seed=1)
    z = tuple(torch.randn_like(b) for b in problem.z0)
    auto = SaddleOperator(problem.f)(z)
    for a, b in zip(problem.F(z), auto):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_saddle_operator_matches_closed_form():
    A = torch.randn(4, 3, 5, dtype=torch.float64)
    f = lambda x, y: (x.unsqueeze(-2) @ A @ y.unsqueeze(-1)).reshape(-1) + 0.5 * x.square().sum(-1)
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    gx, gy = SaddleOperator(f)((x, y))
    torch.testing.assert_close(gx, (A @ y.unsqueeze(-1)).squeeze(-1) + x)
    torch.testing.assert_close(gy, -(A.mT @ x.unsqueeze(-1)).squeeze(-1))


def test_linear_operator_dense_jvp_vjp_and_lipschitz():
    B, n, m = 3, 4, 2
    blocks = [[torch.randn(B, n, n, dtype=torch.float64), torch.randn(B, n, m, dtype=torch.float64)],
              [None, torch.randn(1, m, m, dtype=torch.float64)]]
    q = (torch.randn(B, n, dtype=torch.float64), torch.randn(B, m, dtype=torch.float64))
    op = LinearOperator(blocks, q)
    M = op.dense()
    z = (torch.randn(B, n, dtype=torch.float64), torch.randn(B, m, dtype=torch.float64))
    v = (torch.randn(B, n, dtype=torch.float64), torch.randn(B, m, dtype=torch.float64))
    flat = lambda p: torch.cat(p, -1)
    torch.testing.assert_close(flat(op(z)), (M @ flat(z).unsqueeze(-1)).squeeze(-1) + flat(q))
    torch.testing.assert_close(flat(op.jvp(z, v)), (M @ flat(v).unsqueeze(-1)).squeeze(-1))
    # The generic (autograd) vjp of the base class gives M^T v.
    torch.testing.assert_close(flat(Operator.vjp(op, z, v)), (M.mT @ flat(v).unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(op.lipschitz(), torch.linalg.svdvals(M)[:, 0])


def test_spectral_norm_power_iteration_is_an_upper_bound():
    M = torch.randn(2, 60, 50, dtype=torch.float64)
    exact = torch.linalg.svdvals(M)[:, 0]
    approx = spectral_norm(M, exact_below=10, iters=500)
    assert (approx >= exact).all() and (approx <= 1.011 * exact).all()


def test_operator_rejects_non_callables():
    with pytest.raises(TypeError, match="operator"):
        Operator(3)
    with pytest.raises(TypeError, match="f must be callable"):
        SaddleOperator("f")
    with pytest.raises(ValueError, match="blocks"):
        LinearOperator([[torch.zeros(1, 2, 2)], []])
