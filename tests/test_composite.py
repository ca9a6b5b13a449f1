"""Composite saddle problems: terms (L1, Indicator, Smooth, Sum), couplings, and solves against cvxpy."""

from __future__ import annotations

import cvxpy as cp
import numpy as np
import pytest
import torch

import saddle
from saddle import (Ball, Bilinear, Box, CompositeSaddleProblem, Indicator, L1, Linear, Quadratic, Reals,
                    SemiLinear, Smooth, SmoothCoupling, Status, Sum, Zero)

OPTS = dict(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)


def _rand(*shape, seed=0):
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("step", [0.7, "per_instance", "per_coordinate"])
def test_l1_prox_on_a_box_matches_cvxpy(step):
    B, n = 3, 6
    v = 2 * _rand(B, n, seed=1)
    w = torch.tensor([0.3, 1.0, 0.0], dtype=torch.float64)
    t = {"per_instance": torch.tensor([0.5, 1.5, 2.0], dtype=torch.float64),
         "per_coordinate": 0.2 + _rand(B, n, seed=2).abs()}.get(step, step)
    box = Box(-0.8, 0.5)
    got = L1(w).prox(v, t, box)
    tt = torch.as_tensor(t, dtype=torch.float64)
    for i in range(B):
        ti = (tt[i] if tt.dim() else tt).numpy() * np.ones(n)
        u = cp.Variable(n)
        obj = float(w[i]) * cp.norm1(u) + cp.sum(cp.multiply(1 / (2 * ti), cp.square(u - v[i].numpy())))
        cp.Problem(cp.Minimize(obj), [u >= -0.8, u <= 0.5]).solve(**OPTS)
        np.testing.assert_allclose(got[i].numpy(), u.value, atol=1e-7)


def test_l1_conjugate_over_a_box_and_over_r_n():
    B, n = 4, 5
    v = 2 * _rand(B, n, seed=3)
    w = 0.7
    box = Box(torch.tensor([-1.0, -2.0, 0.0, -0.5, 0.3], dtype=torch.float64).unsqueeze(0), 1.5)
    got = L1(w).conj(v, box)
    for i in range(B):
        u = cp.Variable(n)
        prob = cp.Problem(cp.Maximize(v[i].numpy() @ u - w * cp.norm1(u)),
                          [u >= box.lo.numpy()[0], u <= 1.5])
        prob.solve(**OPTS)
        assert abs(got[i].item() - prob.value) <= 1e-8
    # Over R^n: 0 inside the dual ball |v|_inf <= w, +inf outside.
    small = torch.tensor([[0.5, -0.7, 0.1]], dtype=torch.float64)
    big = torch.tensor([[0.5, -0.8, 0.1]], dtype=torch.float64)
    assert L1(w).conj(small, Reals()).item() == 0.0 and L1(w).conj(big, Reals()).item() == float("inf")


def test_indicator_smooth_and_sum():
    v = 3 * _rand(2, 4, seed=4)
    ball = Ball(1.0)
    ind = Indicator(ball)
    torch.testing.assert_close(ind.prox(v, 0.3, Reals()), ball.project(v))
    torch.testing.assert_close(ind.conj(v, Reals()), v.norm(dim=-1))
    assert not ind.smooth and ind.value(ball.project(v)).eq(0).all() and ind.value(v).isinf().all()
    with pytest.raises(NotImplementedError):
        ind.prox(v, 0.3, Box(-1, 1))
    # Smooth: log-sum-exp, gradient = softmax.
    lse = Smooth(lambda x: torch.logsumexp(x, -1), lipschitz=1.0)
    torch.testing.assert_close(lse.grad(v), torch.softmax(v, -1))
    # Sum splits into its smooth and prox-friendly parts.
    q, l1 = Quadratic(torch.ones(1, 4, dtype=torch.float64)), L1(0.2)
    s = Sum(q, lse, l1)
    smooth, rough = s.split()
    assert rough is l1 and smooth.smooth
    torch.testing.assert_close(smooth.grad(v), v + torch.softmax(v, -1))
    torch.testing.assert_close(s.value(v), q.value(v) + lse.value(v) + l1.value(v))
    with pytest.raises(ValueError, match="at most one non-smooth"):
        Sum(L1(1.0), Indicator(ball))
    with pytest.raises(ValueError, match="weight"):
        L1(-1.0)


def _huber_game(B=3, n=8, m=6, lam=0.3, mu=0.5, seed=5):
    """min_x max_{|y|_inf <= 1} |x|^2/2 + lam |x|_1 + <A x - b, y> - mu |y|^2 / 2 and its cvxpy solution.

    The inner maximum is separable: sum_i huber(s_i, mu) / (2 mu) with s = A x - b
    (cvxpy's huber(s, M) = s^2 for |s| <= M, 2 M |s| - M^2 otherwise).
    """
    A = _rand(B, m, n, seed=seed)
    b = _rand(B, m, seed=seed + 1)
    xs, ys = [], []
    for i in range(B):
        x = cp.Variable(n)
        s = A[i].numpy() @ x - b[i].numpy()
        prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(x) + lam * cp.norm1(x) + cp.sum(cp.huber(s, mu)) / (2 * mu)))
        prob.solve(**OPTS)
        xs.append(x.value)
        ys.append(np.clip((A[i].numpy() @ x.value - b[i].numpy()) / mu, -1, 1))
    solution = (torch.tensor(np.array(xs)), torch.tensor(np.array(ys)))
    g = Sum(Quadratic(torch.ones(1, n, dtype=torch.float64)), L1(lam))
    h = Sum(Quadratic(mu * torch.ones(1, m, dtype=torch.float64)), Linear(b))  # -h(y) = -mu|y|^2/2 - <b, y>
    x0, y0 = torch.zeros(B, n, dtype=torch.float64), torch.zeros(B, m, dtype=torch.float64)
    return A, g, h, x0, y0, solution


@pytest.mark.parametrize("solver", ["extragradient", "optimistic", "eg_plus", "gda", "reflected"])
@pytest.mark.parametrize("coupling", ["bilinear", "semilinear", "smooth"])
def test_composite_problem_with_l1_matches_cvxpy(solver, coupling):
    A, g, h, x0, y0, solution = _huber_game()
    phi = {"bilinear": Bilinear(A),
           "semilinear": SemiLinear(lambda x: (A @ x.unsqueeze(-1)).squeeze(-1)),
           "smooth": SmoothCoupling(lambda x, y: ((A @ x.unsqueeze(-1)).squeeze(-1) * y).sum(-1))}[coupling]
    L = torch.linalg.matrix_norm(A, ord=2) + 1.0  # |F| <= |A| + max(1, mu)
    problem = CompositeSaddleProblem(phi, x0, y0, g=g, h=h, Y=Box(-1.0, 1.0), solution=solution, lipschitz=L,
                                     strong_monotonicity=0.5)
    sol = saddle.solve(problem, solver, tol=1e-10, max_iters=20_000)
    assert (sol.status == Status.CONVERGED).all(), sol
    assert sol.distance.max() <= 1e-7
    # The prox-gradient residual vanishes at the cvxpy solution.
    assert saddle.merit.residual(problem, solution).max() <= 1e-7


def test_semilinear_and_smooth_couplings_give_the_bilinear_operator():
    A, g, h, x0, y0, _ = _huber_game(B=2)
    z = (_rand(2, 8, seed=9), _rand(2, 6, seed=10))
    ops = [CompositeSaddleProblem(phi, x0, y0, g=g, h=h).F(z) for phi in (
        Bilinear(A), SemiLinear(lambda x: (A @ x.unsqueeze(-1)).squeeze(-1)),
        lambda x, y: ((A @ x.unsqueeze(-1)).squeeze(-1) * y).sum(-1))]
    for other in ops[1:]:
        for a, b in zip(ops[0], other):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_bilinear_problem_with_an_l1_term_has_an_exact_gap():
    # min_{x in [-1,1]^n} max_{y in simplex} lam |x|_1 + <K x, y>: gap from the L1 conjugate over the box.
    B, n, m, lam = 2, 5, 4, 0.4
    K = _rand(B, m, n, seed=11)
    x0 = torch.zeros(B, n, dtype=torch.float64)
    y0 = torch.full((B, m), 1 / m, dtype=torch.float64)
    problem = saddle.BilinearProblem(K, x0, y0, g=L1(lam), X=Box(-1.0, 1.0), Y=saddle.Simplex())
    x, y = 0.5 * torch.tanh(_rand(B, n, seed=12)), torch.softmax(_rand(B, m, seed=13), -1)
    gap = problem.duality_gap((x, y))
    for i in range(B):
        Kx = K[i].numpy() @ x[i].numpy()
        primal = lam * np.abs(x[i].numpy()).sum() + Kx.max()
        u = cp.Variable(n)
        inner = cp.Problem(cp.Minimize(lam * cp.norm1(u) + (K[i].numpy().T @ y[i].numpy()) @ u), [u >= -1, u <= 1])
        inner.solve(**OPTS)
        assert abs(gap[i].item() - (primal - inner.value)) <= 1e-8
    sol = saddle.solve(problem, "extragradient", measure="gap", tol=1e-8, max_iters=30_000)
    assert (sol.status == Status.CONVERGED).all()


def test_composite_bad_inputs():
    x0, y0 = torch.zeros(2, 3, dtype=torch.float64), torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises(TypeError, match="coupling"):
        CompositeSaddleProblem("phi", x0, y0)
    with pytest.raises(TypeError, match="g must be"):
        CompositeSaddleProblem(lambda x, y: (x.sum(-1) * y.sum(-1)), x0, y0, g=3.0)
    with pytest.raises(ValueError, match="K must be"):
        Bilinear(torch.zeros(3, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match="G must be callable"):
        SemiLinear(None)
    with pytest.raises(ValueError, match="lipschitz_xy"):
        SemiLinear(lambda x: x, lipschitz_xy=-1.0)
    # Mirror-prox needs Euclidean sets when a term is not smooth.
    problem = CompositeSaddleProblem(lambda x, y: (x.sum(-1) * y.sum(-1)), x0, torch.full((2, 2), 0.5, dtype=torch.float64),
                                     g=L1(0.1), Y=saddle.Simplex("entropic"))
    with pytest.raises(ValueError, match="Bregman"):
        saddle.solve(problem, "mirror_prox", step_size=0.1, max_iters=3)
    assert isinstance(Zero().split()[1], Zero)
