"""The interior-point method (`saddle.solvers.interior_point`), `quadprog`, and the Newton polish of `solve`.

Answers are checked against HiGHS (scipy.optimize.linprog) for LPs and cvxpy (Clarabel) for QPs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

import saddle
from saddle import problems


def _random_lps(B: int, n: int, m_ub: int, m_eq: int, seed: int):
    """Feasible, bounded LPs with equalities, inequalities, a free variable and an upper-bounded one."""
    rng = np.random.default_rng(seed)
    A_ub, A_eq = rng.standard_normal((B, m_ub, n)), rng.standard_normal((B, m_eq, n))
    x_f = rng.uniform(0.2, 0.8, (B, n))
    b_ub = np.einsum("bmn,bn->bm", A_ub, x_f) + rng.uniform(0.1, 1.0, (B, m_ub))
    b_eq = np.einsum("bmn,bn->bm", A_eq, x_f)
    c = rng.standard_normal((B, n))
    bounds = [(0, 1)] * (n - 2) + [(None, None), (0, None)]
    # the free and the half-bounded variable need a bound from the rows: x_f +- 5 boxes them in
    box = np.concatenate([np.eye(n)[-2:], -np.eye(n)[-2:]])
    A_ub = np.concatenate([A_ub, np.broadcast_to(box, (B, 4, n))], 1)
    b_ub = np.concatenate([b_ub, np.concatenate([x_f[:, -2:] + 5, -(x_f[:, -2:] - 5)], -1)], 1)
    return c, A_ub, b_ub, A_eq, b_eq, bounds


def test_ipm_solves_lps_as_highs_does():
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lps(5, 9, 4, 2, seed=0)
    res = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, method="ipm", tol=1e-10)
    assert (res.status == 0).all()
    for i in range(5):
        ref = scipy.optimize.linprog(c[i], A_ub[i], b_ub[i], A_eq[i], b_eq[i], bounds=bounds, method="highs")
        assert abs(res.fun[i].item() - ref.fun) <= 1e-8 * (1 + abs(ref.fun))
        np.testing.assert_allclose(res.x[i].numpy(), ref.x, atol=1e-6)
    assert int(res.nit.max()) <= 40  # interior-point iterations, not thousands of first-order ones


def test_ipm_batch_equals_loop():
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lps(4, 7, 3, 1, seed=1)
    batched = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, method="ipm", tol=1e-9)
    for i in range(4):
        single = saddle.linprog(c[i], A_ub[i], b_ub[i], A_eq[i], b_eq[i], bounds=bounds, method="ipm", tol=1e-9)
        torch.testing.assert_close(batched.x[i], single.x, rtol=0, atol=1e-12)


def test_ipm_polished_to_the_vertex_by_the_differentiable_solve():
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lps(3, 8, 5, 0, seed=2)
    A = torch.tensor(A_ub, requires_grad=True)
    res = saddle.linprog(c, A, b_ub, bounds=bounds, tol=1e-6, differentiable=True)  # ipm by default here
    assert (res.status == 0).all()
    for i in range(3):
        ref = scipy.optimize.linprog(c[i], A_ub[i], b_ub[i], bounds=bounds, method="highs")
        np.testing.assert_allclose(res.x[i].detach().numpy(), ref.x, atol=1e-12)


def test_ipm_refuses_what_it_cannot_solve():
    game = problems.get("matrix_game", n=4, m=3, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="boxes"):
        saddle.solve(game, "ipm")
    quadratic = problems.get("quadratic", n=4, m=3, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="h\\* zero or linear"):
        saddle.solve(quadratic, "ipm")
    c, A_ub, b_ub, *_ = _random_lps(1, 4, 2, 0, seed=3)
    with pytest.raises(ValueError, match="precision"):
        saddle.linprog(c[0], A_ub[0], b_ub[0], method="ipm", precision="single")
    first = saddle.linprog(c[0], A_ub[0], b_ub[0], bounds=(0, 1))
    with pytest.raises(ValueError, match="warm_start"):
        saddle.linprog(c[0], A_ub[0], b_ub[0], bounds=(0, 1), method="ipm", warm_start=first)
    import scipy.sparse as sp

    with pytest.raises(ValueError, match="dense"):
        saddle.linprog(c[0], sp.csr_matrix(A_ub[0]), b_ub[0], method="ipm")
    with pytest.raises(ValueError, match="tol"):
        saddle.get_solver("ipm", tol=2.0)


def test_ipm_does_not_report_an_infeasible_lp_as_solved():
    # x >= 0, x1 + x2 <= -1: infeasible
    res = saddle.linprog([1.0, 1.0], [[1.0, 1.0]], [-1.0], method="ipm", max_iters=200)
    assert res.status != 0


# -- quadprog -------------------------------------------------------------------------------------------

def _random_qps(B: int, n: int, m: int, p: int, seed: int):
    rng = np.random.default_rng(seed)
    L = rng.standard_normal((B, n, n))
    P = L @ L.transpose(0, 2, 1) + 0.1 * np.eye(n)
    q = rng.standard_normal((B, n))
    G = rng.standard_normal((B, m, n))
    h = rng.uniform(0.1, 1.0, (B, m))
    A = rng.standard_normal((B, p, n))
    b = rng.standard_normal((B, p)) * 0.1
    return P, q, G, h, A, b


def _cvxpy_qp(P, q, G, h, A, b):
    cp = pytest.importorskip("cvxpy")
    x = cp.Variable(q.shape[0])
    ineq, eq = G @ x <= h, A @ x == b
    cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P)) + q @ x), [ineq, eq]).solve(
        solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return x.value, ineq.dual_value, eq.dual_value


@pytest.mark.parametrize("method", ["ipm", "r2hpdhg"])
def test_quadprog_matches_cvxpy(method):
    P, q, G, h, A, b = _random_qps(3, 6, 5, 2, seed=4)
    res = saddle.quadprog(*(torch.tensor(a) for a in (P, q, G, h, A, b)), method=method)
    assert (res.status == 0).all()
    for i in range(3):
        x, lam, nu = _cvxpy_qp(P[i], q[i], G[i], h[i], A[i], b[i])
        np.testing.assert_allclose(res.x[i].numpy(), x, atol=1e-7)
        np.testing.assert_allclose(res.ineqlin[i].numpy(), lam, atol=1e-6)
        np.testing.assert_allclose(res.eqlin[i].numpy(), nu, atol=1e-6)
        fun = 0.5 * x @ P[i] @ x + q[i] @ x
        assert abs(res.fun[i].item() - fun) <= 1e-8 * (1 + abs(fun))


def test_quadprog_shares_unbatched_arguments_and_takes_qpth_empty_tensors():
    P, q, G, h, A, b = _random_qps(4, 5, 3, 1, seed=5)
    shared = saddle.quadprog(torch.tensor(P[0]), torch.tensor(q), torch.tensor(G[0]), torch.tensor(h[0]),
                             torch.Tensor().double(), torch.Tensor().double())
    assert shared.x.shape == (4, 5) and shared.eqlin.shape == (4, 0)
    for i in range(4):
        x, _, _ = _cvxpy_qp(P[0], q[i], G[0], h[0], np.zeros((0, 5)), np.zeros(0))
        np.testing.assert_allclose(shared.x[i].numpy(), x, atol=1e-7)


def test_quadprog_without_constraints_is_the_closed_form():
    P, q, *_ = _random_qps(3, 4, 1, 1, seed=6)
    Pt, qt = torch.tensor(P, requires_grad=True), torch.tensor(q, requires_grad=True)
    res = saddle.quadprog(Pt, qt)
    expected = -np.linalg.solve(P, q[..., None])[..., 0]
    np.testing.assert_allclose(res.x.detach().numpy(), expected, atol=1e-12)
    res.x.sum().backward()  # differentiable through the closed form
    assert torch.isfinite(qt.grad).all()


def test_quadprog_refuses_bad_input():
    P, q, G, h, A, b = (torch.tensor(a) for a in _random_qps(2, 4, 3, 1, seed=7))
    with pytest.raises(ValueError, match="P must be"):
        saddle.quadprog(P[:, :3], q)
    with pytest.raises(ValueError, match="give G and h together"):
        saddle.quadprog(P, q, G, None)
    with pytest.raises(ValueError, match="h must have 3 entries"):
        saddle.quadprog(P, q, G, h[:, :2])
    with pytest.raises(TypeError, match="q must be a torch tensor"):
        saddle.quadprog(P, q.numpy())
    with pytest.raises(ValueError, match="NaN"):
        saddle.quadprog(P, q * math.nan, G, h)


# -- the Newton polish of solve (a crossover) ------------------------------------------------------------

def test_polish_finishes_matrix_games_in_fewer_iterations_at_the_exact_equilibrium():
    game = problems.get("matrix_game", n=8, m=6, batch_size=6, seed=8)
    ref = game.reference
    plain = saddle.solve(game, "r2hpdhg", tol=1e-12, max_iters=50_000)
    polished = saddle.solve(game, "r2hpdhg", tol=1e-12, max_iters=50_000, polish=True)
    assert (polished.status == 0).all()
    assert int(polished.iterations.sum()) < int(plain.iterations.sum())
    # the equilibrium HiGHS certifies (unique for these games), to rounding
    for a, b in zip(polished.z, ref.solution):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_polish_refuses_a_non_bool():
    game = problems.get("matrix_game", n=3, m=3, batch_size=1, seed=0)
    with pytest.raises(TypeError, match="polish"):
        saddle.solve(game, "r2hpdhg", polish="yes")


def test_quadprog_takes_a_sparse_g_with_pdhg_and_differentiates_the_dense_data():
    P, q, G, h, A, b = _random_qps(2, 5, 4, 1, seed=9)
    Pt, qt = torch.tensor(P[0]), torch.tensor(q, requires_grad=True)
    Gs = torch.tensor(G[0]).to_sparse()
    sparse = saddle.quadprog(Pt, qt, Gs, torch.tensor(h[0]), method="r2hpdhg")
    dense = saddle.quadprog(Pt, qt, torch.tensor(G[0]), torch.tensor(h[0]), method="ipm")
    assert (sparse.status == 0).all()
    torch.testing.assert_close(sparse.x, dense.x, rtol=0, atol=1e-9)
    (g_sparse,) = torch.autograd.grad(sparse.x.sum(), qt)
    (g_dense,) = torch.autograd.grad(dense.x.sum(), qt)
    torch.testing.assert_close(g_sparse, g_dense, rtol=0, atol=1e-8)
    with pytest.raises(ValueError, match="dense KKT"):
        saddle.quadprog(Pt, qt, Gs, torch.tensor(h[0]), method="ipm")


@pytest.mark.parametrize("method", ["ipm", "pdhg", "r2hpdhg"])
def test_quadprog_never_reports_an_infeasible_qp_as_solved(method):
    # x1 + x2 <= -1 and x1 + x2 >= 1: the multipliers grow without bound, and once y ~ 1e16 a step of the
    # natural residual rounds to 0; the relative KKT error the solve measures does not
    P, q = torch.eye(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    G, h = torch.tensor([[1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64), torch.tensor([-1.0, -1.0], dtype=torch.float64)
    res = saddle.quadprog(P, q, G, h, method=method, max_iters=2000)
    assert int(res.status) != 0


def test_polish_refuses_checkpoints(tmp_path):
    game = problems.get("matrix_game", n=3, m=3, batch_size=1, seed=0)
    with pytest.raises(ValueError, match="polish=True cannot be checkpointed"):
        saddle.solve(game, "r2hpdhg", polish=True, checkpoint=tmp_path / "c.pt")
    K = game.K.clone().requires_grad_()
    u = torch.full((1, 3), 1 / 3, dtype=torch.float64)
    differentiable = saddle.BilinearProblem(K, u, u, X=saddle.Simplex(), Y=saddle.Simplex())
    sol = saddle.solve(differentiable, "r2hpdhg", tol=1e-10, differentiable=True, checkpoint=tmp_path / "d.pt")
    assert sol.status[0] == 0 and sol.z[0].requires_grad  # (automatic polish off; the gradient still attached)
