"""PDHG and the LP front-end, against HiGHS (scipy.optimize.linprog)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

from saddle import problems
import saddle
from saddle import Status
from saddle.problems.reference import matrix_game_lp


def _strategies_vs_highs(problem, sol):
    A = problem.K.mT.cpu().numpy()
    err_x, err_y = [], []
    for i in range(problem.batch_size):
        _, x, y = matrix_game_lp(A[i])
        err_x.append(np.abs(sol.x[i].cpu().numpy() - x).max())
        err_y.append(np.abs(sol.y[i].cpu().numpy() - y).max())
    return max(err_x), max(err_y)


def test_pdhg_solves_matrix_games_to_1e8():
    problem = problems.get("matrix_game", n=12, m=9, batch_size=6, seed=11)
    sol = saddle.solve(problem, "pdhg", measure="gap", tol=1e-10, max_iters=50_000)
    assert (sol.status == Status.CONVERGED).all()
    ref = problem.reference
    assert (problem.objective(sol.z) - ref.value).abs().max() <= 1e-8
    ex, ey = _strategies_vs_highs(problem, sol)
    assert ex <= 1e-8 and ey <= 1e-8


def test_restarts_need_fewer_matrix_vector_products_on_matrix_games():
    problem = problems.get("matrix_game", n=40, batch_size=8, seed=12)
    kw = dict(measure="gap", tol=1e-6, max_iters=40_000, check_every=16)
    restarted = saddle.solve(problem, "pdhg", **kw)
    plain = saddle.solve(problem, "pdhg", restarts=False, **kw)
    assert (restarted.status == Status.CONVERGED).all()
    # Per instance and in total: matrix-vector products are 2 per operator call.
    fewer = restarted.operator_calls < plain.operator_calls
    assert fewer.sum() >= 6
    assert restarted.operator_calls.sum() < 0.5 * plain.operator_calls.sum()


@pytest.mark.parametrize("measure", ["gap", "kkt"])
def test_both_restart_measures_converge(measure):
    problem = problems.get("matrix_game", n=20, batch_size=4, seed=13)
    sol = saddle.solve(problem, "pdhg", restart_measure=measure, measure="gap", tol=1e-9, max_iters=20_000)
    assert (sol.status == Status.CONVERGED).all()
    assert (problem.objective(sol.z) - problem.reference.value).abs().max() <= 1e-9


def test_normalized_duality_gap_matches_a_direct_trust_region_solve():
    # max {<F(z), z - u> : u in Z, |u - z| <= r} / r on simplices, by cvxpy.
    cp = pytest.importorskip("cvxpy")
    problem = problems.get("matrix_game", n=5, m=4, batch_size=3, seed=14)
    pdhg = saddle.PDHG(precondition=False)
    state = pdhg.init(problem, problem.z0)
    state = state._replace(primal_weight=torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    x = torch.softmax(torch.randn(3, 5, generator=g, dtype=torch.float64), -1)
    y = torch.softmax(torch.randn(3, 4, generator=g, dtype=torch.float64), -1)
    K = problem.coupling
    Kx, Kty = K.mv(x), K.rmv(y)
    r = torch.tensor([0.05, 0.3, 2.0], dtype=torch.float64)
    got = pdhg._normalized_gap(problem, x, y, Kx, Kty, r, state, bisections=60)
    for i in range(3):
        w = float(state.primal_weight[i])
        Fx, Fy = Kty[i].numpy(), -Kx[i].numpy()
        u, v = cp.Variable(5), cp.Variable(4)
        obj = Fx @ (x[i].numpy() - u) + Fy @ (y[i].numpy() - v)
        cons = [u >= 0, cp.sum(u) == 1, v >= 0, cp.sum(v) == 1,
                w * cp.sum_squares(u - x[i].numpy()) + cp.sum_squares(v - y[i].numpy()) / w <= float(r[i]) ** 2]
        cp.Problem(cp.Maximize(obj), cons).solve(solver=cp.CLARABEL)
        expected = max(obj.value, 0.0) / float(r[i])
        assert abs(got[i].item() - expected) <= 1e-6 * (1 + expected)


def _random_lp(m_ub, m_eq, n, seed, bounds=(0, 2)):
    """A feasible, bounded LP: feasible by construction (b from a point inside the bounds)."""
    rng = np.random.default_rng(seed)
    x_feas = rng.uniform(0, 1, n)
    A_ub = rng.standard_normal((m_ub, n))
    b_ub = A_ub @ x_feas + rng.uniform(0.0, 1.0, m_ub)
    A_eq = rng.standard_normal((m_eq, n)) if m_eq else None
    b_eq = A_eq @ x_feas if m_eq else None
    return rng.standard_normal(n), A_ub, b_ub, A_eq, b_eq, bounds


@pytest.mark.parametrize("m_ub,m_eq,n", [(10, 0, 15), (25, 8, 30), (40, 15, 60), (5, 12, 40)])
def test_linprog_matches_highs_on_random_lps(m_ub, m_eq, n):
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lp(m_ub, m_eq, n, seed=m_ub + n)
    ref = scipy.optimize.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds, method="highs")
    assert ref.status == 0
    res = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds, tol=1e-9)
    assert res.status == 0 and res.success
    assert abs(res.fun.item() - ref.fun) <= 1e-7 * abs(ref.fun)
    # Feasibility of the returned point, checked directly.
    x = res.x.numpy()
    assert (A_ub @ x - b_ub).max() <= 1e-7 * (1 + np.abs(b_ub).max())
    if m_eq:
        assert np.abs(A_eq @ x - b_eq).max() <= 1e-7 * (1 + np.abs(b_eq).max())
    assert x.min() >= 0 and x.max() <= 2
    # The duals are scipy's marginals.
    np.testing.assert_allclose(res.ineqlin.numpy(), ref.ineqlin.marginals, atol=1e-5)


def test_linprog_with_free_variables_and_equalities():
    rng = np.random.default_rng(3)
    A_eq = rng.standard_normal((6, 15))
    b_eq = A_eq @ rng.standard_normal(15)
    A_ub = rng.standard_normal((10, 15))
    b_ub = A_ub @ rng.standard_normal(15) + 1
    c = -(A_ub.T @ rng.uniform(0, 1, 10) + A_eq.T @ rng.standard_normal(6))  # dual feasible: bounded
    bounds = [(None, None)] * 10 + [(-1, None)] * 3 + [(None, 4)] * 2
    ref = scipy.optimize.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds, method="highs")
    res = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds, tol=1e-9)
    assert ref.status == 0 and res.status == 0
    assert abs(res.fun.item() - ref.fun) <= 1e-7 * abs(ref.fun)


def test_linprog_batch_equals_the_loop_and_highs():
    rng = np.random.default_rng(4)
    B, m, n = 4, 20, 30
    x_feas = rng.uniform(0, 1, (B, n))
    A = rng.standard_normal((B, m, n))
    b = np.einsum("bmn,bn->bm", A, x_feas) + rng.uniform(0, 1, (B, m))
    c = rng.standard_normal((B, n))
    res = saddle.linprog(c, A, b, bounds=(-1, 3), tol=1e-9)
    assert res.x.shape == (B, n) and (res.status == 0).all()
    for i in range(B):
        ref = scipy.optimize.linprog(c[i], A[i], b[i], bounds=(-1, 3), method="highs")
        assert abs(res.fun[i].item() - ref.fun) <= 1e-7 * abs(ref.fun)
        single = saddle.linprog(c[i], A[i], b[i], bounds=(-1, 3), tol=1e-9)
        assert single.status == 0 and abs(single.fun.item() - res.fun[i].item()) <= 1e-7 * abs(ref.fun)
    # Iterate by iterate, a batch and the loop agree as long as no accept/restart decision
    # falls within round-off (batched and single products differ in the last bits, and the
    # adaptive steps amplify that: measured 1.2e-13, 4.5e-13 and 2.0e-12 after 20, 40 and 60
    # iterations with one BLAS build, below 1e-12 at 60 with another). A batching bug moves
    # iterates by far more than 1e-10.
    short = saddle.linprog(c, A, b, bounds=(-1, 3), tol=0.0, max_iters=60)
    for i in range(B):
        single = saddle.linprog(c[i], A[i], b[i], bounds=(-1, 3), tol=0.0, max_iters=60)
        torch.testing.assert_close(single.x, short.x[i], rtol=0, atol=1e-10)


def test_linprog_sparse_equals_dense():
    rng = np.random.default_rng(5)
    S = scipy.sparse.random(60, 90, density=0.1, random_state=5, format="csr")
    b = S @ rng.uniform(0, 1, 90) + 0.1
    c = rng.standard_normal(90)
    ref = scipy.optimize.linprog(c, S, b, bounds=(0, 1), method="highs")
    sparse = saddle.linprog(c, S, b, bounds=(0, 1), tol=1e-9)
    dense = saddle.linprog(c, S.toarray(), b, bounds=(0, 1), tol=1e-9)
    torch_sparse = saddle.linprog(c, torch.tensor(S.toarray()).to_sparse_csr(), b, bounds=(0, 1), tol=1e-9)
    for res in (sparse, dense, torch_sparse):
        assert res.status == 0
        assert abs(res.fun.item() - ref.fun) <= 1e-7 * abs(ref.fun)
    # The same iterates while no decision falls within round-off (products differ in the last bits).
    short_sparse = saddle.linprog(c, S, b, bounds=(0, 1), tol=0.0, max_iters=40)
    short_dense = saddle.linprog(c, S.toarray(), b, bounds=(0, 1), tol=0.0, max_iters=40)
    torch.testing.assert_close(short_sparse.x, short_dense.x, rtol=0, atol=1e-12)


def test_matrix_game_as_an_lp_matches_its_value():
    # min v s.t. A^T x <= v 1, sum x = 1, x >= 0: the game's value (HiGHS reference through problems).
    problem = problems.get("matrix_game", n=8, m=6, batch_size=1, seed=15)
    A = problem.K.mT[0].numpy()
    n, m = A.shape
    c = np.r_[np.zeros(n), 1.0]
    res = saddle.linprog(c, np.hstack([A.T, -np.ones((m, 1))]), np.zeros(m), np.r_[np.ones(n), 0.0][None],
                         [1.0], bounds=[(0, None)] * n + [(None, None)], tol=1e-10)
    assert res.status == 0
    assert abs(res.fun.item() - problem.reference.value.item()) <= 1e-8


def test_preconditioning_is_exact_and_helps_on_badly_scaled_lps():
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lp(30, 10, 40, seed=6)
    rows, cols = np.logspace(-2, 2, 30), np.logspace(-1.5, 1.5, 40)
    # Rows scaled by 1e-2..1e2 and the variables by x = cols * x': the same LP, badly scaled.
    A_s, b_s, A_eq_s = rows[:, None] * A_ub * cols[None, :], rows * b_ub, A_eq * cols[None, :]
    bounds_s, c_s = [(0, 2 / cj) for cj in cols], c * cols
    ref = scipy.optimize.linprog(c_s, A_s, b_s, A_eq_s, b_eq, bounds_s, method="highs")
    res = saddle.linprog(c_s, A_s, b_s, A_eq_s, b_eq, bounds_s, tol=1e-9)
    assert res.status == 0
    assert abs(res.fun.item() - ref.fun) <= 1e-7 * abs(ref.fun)
    # Without the preconditioner, five times the iterations are not enough.
    plain = saddle.linprog(c_s, A_s, b_s, A_eq_s, b_eq, bounds_s, tol=1e-9, max_iters=5 * int(res.nit),
                           precondition=False)
    assert plain.status == 1


def test_infeasible_and_unbounded_lps_report_their_status():
    # x1 + x2 <= 1 and x1 + x2 >= 2: infeasible.
    A, b = np.array([[1.0, 1.0], [-1.0, -1.0]]), np.array([1.0, -2.0])
    res = saddle.linprog([1.0, 1.0], A_ub=A, b_ub=b)
    assert res.status == 2 and not res.success and torch.isnan(res.fun)
    assert scipy.optimize.linprog([1.0, 1.0], A_ub=A, b_ub=b).status == 2
    # The Farkas ray, checked by hand: y >= 0, A^T y >= 0 (absorbed by x >= 0), b^T y < 0.
    y = res.dual_ray.numpy()
    assert (y >= 0).all() and (A.T @ y >= -1e-9).all() and b @ y < -0.1
    # max x1 + x2 s.t. x1 - x2 <= 1, x >= 0: unbounded.
    res = saddle.linprog([-1.0, -1.0], A_ub=[[1.0, -1.0]], b_ub=[1.0])
    assert res.status == 3 and torch.isnan(res.fun)
    s = res.primal_ray.numpy()  # s >= 0, s1 - s2 <= 0, c^T s < 0
    assert (s >= 0).all() and s[0] - s[1] <= 1e-9 and -s.sum() < -0.1
    # Infeasible equality system with free variables.
    res = saddle.linprog([0.0, 1.0], A_eq=[[1.0, 1.0], [1.0, 1.0]], b_eq=[0.0, 1.0], bounds=(None, None))
    assert res.status == 2
    # A batch mixing a feasible, an infeasible and an unbounded LP: each gets its own status.
    c = np.array([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    A = np.array([[[1.0, 1.0], [-1.0, 0.0]], [[1.0, 1.0], [-1.0, -1.0]], [[1.0, -1.0], [0.0, 0.0]]])
    b = np.array([[1.0, -0.5], [1.0, -2.0], [1.0, 0.0]])
    res = saddle.linprog(c, A, b)
    assert res.status.tolist() == [0, 2, 3]
    assert abs(res.fun[0].item() - 0.5) <= 1e-7


def test_pdhg_certificates_do_not_fire_on_feasible_lps():
    for seed in range(5):
        c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lp(15, 5, 20, seed=100 + seed)
        res = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds, tol=1e-10)
        assert res.status == 0


@pytest.mark.parametrize("kwargs,match", [
    (dict(c=[1.0, float("nan")]), "c contains NaN"),
    (dict(c=[1.0, 2.0], A_ub=[[1.0, 2.0, 3.0]], b_ub=[1.0]), "n = 2 columns"),
    (dict(c=[1.0, 2.0], A_ub=[[1.0, 2.0]], b_ub=[1.0, 2.0]), "b_ub must have shape"),
    (dict(c=[1.0, 2.0], A_ub=[[1.0, 2.0]]), "b_ub is required"),
    (dict(c=[1.0, 2.0], bounds=[(0, 1)] * 3), "n = 2 pairs"),
    (dict(c=[1.0, 2.0, 3.0], bounds=[[0.0] * 3, [1.0] * 3]), r"not a \(2, 3\) array"),  # scipy refuses (2, n) too
    (dict(c=[1.0, 2.0], method="simplex"), "method"),
])
def test_linprog_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        saddle.linprog(**kwargs)


def test_pdhg_bad_settings():
    problem = problems.get("matrix_game", n=3)
    with pytest.raises(ValueError, match="precondition=True"):
        saddle.solve(problem, "pdhg", precondition=True)  # simplices are not separable
    with pytest.raises(ValueError, match="restart_measure"):
        saddle.solve(problem, "pdhg", restart_measure="nope")
    with pytest.raises(ValueError, match="restart_every"):
        saddle.solve(problem, "pdhg", restart_every=0)
    with pytest.raises(ValueError, match="restart_measure='gap'"):
        saddle.solve(problems.get("quadratic", n=3), "pdhg", restart_measure="gap")


def test_pdhg_warm_start_keeps_step_and_weight_and_needs_fewer_iterations():
    c, A_ub, b_ub, A_eq, b_eq, bounds = _random_lp(12, 4, 16, seed=21)
    K = np.vstack([A_eq, A_ub])
    d = np.r_[b_eq, b_ub]

    def lp(cost):
        t = torch.tensor
        return saddle.LinearProgram(t(cost)[None], t(K)[None], t(d)[None], 4, torch.zeros(1, 16, dtype=torch.float64),
                                    torch.full((1, 16), 2.0, dtype=torch.float64))

    kw = dict(measure="kkt", tol=1e-8, max_iters=30_000)
    first = saddle.solve(lp(c), "pdhg", **kw)
    nearby = lp(c * (1 + 0.01 * np.random.default_rng(22).standard_normal(16)))
    state = saddle.get_solver("pdhg").warm_state(nearby, first.z, first.state)
    assert torch.equal(state.step_size, first.state.step_size)
    assert torch.equal(state.primal_weight, first.state.primal_weight)
    cold, warm = saddle.solve(nearby, "pdhg", **kw), saddle.solve(nearby, "pdhg", warm_start=first, **kw)
    assert cold.status.item() == warm.status.item() == Status.CONVERGED
    assert warm.iterations.item() < cold.iterations.item()
    with pytest.raises(ValueError, match="warm_state needs a previous state"):
        saddle.get_solver("pdhg").warm_state(nearby, first.z, saddle.get_solver("extragradient").init(nearby, first.z))
