"""Differentiable equilibria (issue 18): gradients of saddle's solutions against independent answers.

Every gradient is checked against something saddle did not compute:

- central finite differences of solutions computed by HiGHS (``scipy.optimize.linprog``: LPs, and matrix
  games in their LP form ``min t  s.t.  K x <= t 1, x in simplex``, the duals being the game's y);
- central finite differences of solutions computed by cvxpy (Clarabel at tight tolerances: QPs);
- closed forms differentiated by autograd (strongly monotone quadratic games: a linear system;
  m-sharpness with quadratic losses), or the envelope theorem (optimal values);
- for DRO, central finite differences of a Newton solve written here (numpy) of the smooth primal
  ``min_theta max_{q in simplex} ...``, started from cvxpy's reference (`problems.dro.dro_reference`).

The points are nondegenerate (unique solutions, strict complementarity, checked on the reference's
solution where it matters), all in float64; relative errors are ``max |g - g_ref| / max |g_ref|``.
"""

from __future__ import annotations

import warnings

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize
import torch

import saddle
from saddle.implicit import AdjointStatus, Implicit, attach, polish
from saddle.linalg import gmres
from saddle.problems.dro import DROProblem, dro_reference, group_shift_data
from saddle.problems.sharpness import SharpnessProblem
from saddle.terms import Quadratic

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")  # cvxpy's, on the DRO reference

F64 = torch.float64
RTOL = 1e-6
#: finite-difference step: the references are exact to rounding (vertices, polished KKT points), so the
#: differences' error is about 1e-16 / H relative (and O(H^2) where the solution map is curved)
H = 1e-6
#: strict complementarity margin asserted on the references
MARGIN = 1e-7


def rel_err(actual, expected) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    return float(np.abs(actual - expected).max() / max(np.abs(expected).max(), 1e-300))


def assert_rel(actual, expected, rtol: float = RTOL, what: str = "") -> None:
    if isinstance(actual, torch.Tensor):
        actual = actual.detach().cpu().numpy()
    if isinstance(expected, torch.Tensor):
        expected = expected.detach().cpu().numpy()
    err = rel_err(actual, expected)
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:g}\nactual   {actual}\nexpected {expected}"


def leaf(a, requires_grad: bool = True) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=F64, requires_grad=requires_grad)


def central_difference(loss, base: np.ndarray, coordinates, h: float = H) -> np.ndarray:
    """``(loss(base + h e_k) - loss(base - h e_k)) / 2h`` at each coordinate k (index tuples of ``base``)."""
    out = []
    for k in coordinates:
        plus, minus = base.copy(), base.copy()
        plus[k] += h
        minus[k] -= h
        out.append((loss(plus) - loss(minus)) / (2 * h))
    return np.array(out)


def all_coordinates(shape) -> list[tuple[int, ...]]:
    return list(np.ndindex(*shape))


# -- references: HiGHS ----------------------------------------------------------------------------------------

def highs_game(K: np.ndarray, check: bool = True) -> tuple[np.ndarray, np.ndarray, float]:
    """``(x*, y*, value)`` of ``min_{x in simplex} max_{y in simplex} y^T K x`` (K ``(m, n)``) by HiGHS.

    The LP ``min t  s.t.  K x - t 1 <= 0,  1^T x = 1,  x >= 0``; y* = -(its inequality marginals). With
    ``check``, asserts the equilibrium is nondegenerate: strict complementarity on every row and every x_j,
    and supports of equal size (then the equilibrium is unique and locally a smooth function of K).
    """
    m, n = K.shape
    cost = np.r_[np.zeros(n), 1.0]
    res = scipy.optimize.linprog(cost, A_ub=np.hstack([K, -np.ones((m, 1))]), b_ub=np.zeros(m),
                                 A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0],
                                 bounds=[(0, None)] * n + [(None, None)], method="highs")
    assert res.status == 0, res.message
    x, t, y = res.x[:n], res.x[n], -res.ineqlin.marginals
    if check:
        slack, reduced = t - K @ x, res.lower.marginals[:n]
        assert np.all((slack > MARGIN) ^ (y > MARGIN)), ("rows not strictly complementary", slack, y)
        assert np.all((x > MARGIN) ^ (reduced > MARGIN)), ("columns not strictly complementary", x, reduced)
        assert (x > MARGIN).sum() == (y > MARGIN).sum()
    return x, y, float(t)


def highs_lp(c, A_ub, b_ub, A_eq, b_eq, check: bool = False):
    """``(x, fun, ineqlin marginals, eqlin marginals)`` by HiGHS with bounds (0, 1); ``check``: nondegenerate."""
    res = scipy.optimize.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=(0, 1), method="highs")
    assert res.status == 0, res.message
    x, ineq = res.x, res.ineqlin.marginals
    if check:
        slack = b_ub - A_ub @ x
        assert np.all((slack > MARGIN) ^ (ineq < -MARGIN)), ("rows not strictly complementary", slack, ineq)
        at_lo, at_hi = x < MARGIN, x > 1 - MARGIN
        inside = ~(at_lo | at_hi)
        assert np.all(res.lower.marginals[at_lo] > MARGIN) and np.all(res.upper.marginals[at_hi] < -MARGIN)
        assert np.all(np.abs(res.lower.marginals[inside]) + np.abs(res.upper.marginals[inside]) < 1e-12)
        active = (slack <= MARGIN).sum() + at_lo.sum() + at_hi.sum() + len(b_eq)
        assert active == len(c), "not a nondegenerate vertex"
    return x, float(res.fun), ineq, res.eqlin.marginals


# -- problems ----------------------------------------------------------------------------------------------------

def random_games(B: int, m: int, n: int, seed: int) -> torch.Tensor:
    """``(B, m, n)`` payoffs uniform in [-1, 1] (the row player y, of m strategies, maximizes ``y^T K x``)."""
    return 2 * torch.rand(B, m, n, dtype=F64, generator=torch.Generator().manual_seed(seed)) - 1


def game(K: torch.Tensor) -> saddle.BilinearProblem:
    B, m, n = K.shape
    dev = K.device
    simplex = saddle.Simplex()
    return saddle.BilinearProblem(K, torch.full((B, n), 1 / n, dtype=F64, device=dev),
                                  torch.full((B, m), 1 / m, dtype=F64, device=dev), X=simplex, Y=simplex)


def game_loss_reference(K: np.ndarray, w: np.ndarray, u: np.ndarray) -> float:
    x, y, _ = highs_game(K, check=False)
    return float(w @ x + u @ y)


# ================================================================================================================
# 1. matrix games
# ================================================================================================================

def test_matrix_game_value_and_strategies_gradients_match_envelope_and_highs():
    B, m, n = 2, 4, 3
    K0 = random_games(B, m, n, seed=0)
    K = K0.clone().requires_grad_()
    sol = saddle.solve(game(K), "r2hpdhg", tol=1e-8, differentiable=True)
    assert sol.success.all() and sol.adjoint.method == "dense"
    gen = torch.Generator().manual_seed(1)
    w, u = torch.randn(B, n, dtype=F64, generator=gen), torch.randn(B, m, dtype=F64, generator=gen)
    (g_value,) = torch.autograd.grad(sol.value.sum(), K, retain_graph=True)
    (g,) = torch.autograd.grad((w * sol.x).sum() + (u * sol.y).sum(), K)
    assert (sol.adjoint.status == int(AdjointStatus.SOLVED)).all()
    for b in range(B):
        Kb = K0[b].numpy()
        x, y, value = highs_game(Kb)
        np.testing.assert_allclose(sol.x[b].detach().numpy(), x, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sol.y[b].detach().numpy(), y, rtol=0, atol=1e-12)
        assert abs(float(sol.value[b].detach()) - value) <= 1e-12
        # the envelope theorem: d (y^T K x) / dK = y* x*^T, and the value's differences by HiGHS
        assert_rel(g_value[b], np.outer(y, x), rtol=1e-12, what="value gradient vs y x^T")
        coords = all_coordinates((m, n))
        fd_value = central_difference(lambda k: highs_game(k, check=False)[2], Kb, coords)
        assert_rel(g_value[b].numpy()[tuple(np.array(coords).T)], fd_value, what="value gradient vs HiGHS")
        # the strategies: every entry of K by central differences of HiGHS's equilibria
        fd = central_difference(lambda k: game_loss_reference(k, w[b].numpy(), u[b].numpy()), Kb, coords)
        assert_rel(g[b].numpy()[tuple(np.array(coords).T)], fd, what=f"strategies' gradient, instance {b}")


# ================================================================================================================
# 2. linear programs
# ================================================================================================================

def random_lp(n: int, m: int, p: int, seed: int) -> dict[str, np.ndarray]:
    """``min c^T x, A_ub x <= b_ub, A_eq x = b_eq, 0 <= x <= 1``, feasible at an interior point."""
    rng = np.random.default_rng(seed)
    A_ub, A_eq = rng.standard_normal((m, n)), rng.standard_normal((p, n))
    x_f = rng.uniform(0.1, 0.9, n)
    return {"c": rng.standard_normal(n), "A_ub": A_ub, "b_ub": A_ub @ x_f + rng.uniform(0.1, 1.0, m),
            "A_eq": A_eq, "b_eq": A_eq @ x_f}


LP_NAMES = ("c", "A_ub", "b_ub", "A_eq", "b_eq")


def test_linprog_gradients_match_highs_and_envelope():
    data = random_lp(n=6, m=4, p=2, seed=0)
    x_ref, fun_ref, ineq_ref, eq_ref = highs_lp(*(data[k] for k in LP_NAMES), check=True)
    t = {k: leaf(v) for k, v in data.items()}
    res = saddle.linprog(t["c"], t["A_ub"], t["b_ub"], t["A_eq"], t["b_eq"], bounds=(0, 1), tol=1e-9,
                         differentiable=True)
    assert int(res.status) == 0
    np.testing.assert_allclose(res.x.detach().numpy(), x_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.ineqlin.detach().numpy(), ineq_ref, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res.eqlin.detach().numpy(), eq_ref, rtol=0, atol=1e-12)
    params = tuple(t[k] for k in LP_NAMES)

    # The value by the envelope theorem, in scipy's sign convention (marginals = d fun / d b):
    # d fun/dc = x, d fun/db_ub = ineqlin, d fun/db_eq = eqlin, d fun/dA_ub = -ineqlin x^T, d fun/dA_eq = -eqlin x^T.
    g_fun = dict(zip(LP_NAMES, torch.autograd.grad(res.fun, params, retain_graph=True)))
    envelope = {"c": x_ref, "b_ub": ineq_ref, "b_eq": eq_ref, "A_ub": -np.outer(ineq_ref, x_ref),
                "A_eq": -np.outer(eq_ref, x_ref)}
    for k in LP_NAMES:
        assert_rel(g_fun[k], envelope[k], rtol=1e-10, what=f"d fun / d {k} vs the envelope formula")
        fd = central_difference(lambda v: highs_lp(*(v if j == k else data[j] for j in LP_NAMES))[1], data[k],
                                all_coordinates(data[k].shape))
        assert_rel(g_fun[k].numpy().reshape(-1), fd, what=f"d fun / d {k} vs HiGHS")

    # x*(c) is piecewise constant: no gradient with respect to c.
    rng = np.random.default_rng(1)
    w = rng.standard_normal(6)
    (g_c,) = torch.autograd.grad((leaf(w, False) * res.x).sum(), t["c"], retain_graph=True)
    assert torch.equal(g_c, torch.zeros_like(g_c))

    # The solution and the duals: every entry of every argument by central differences of HiGHS.
    v_ub, v_eq = rng.standard_normal(4), rng.standard_normal(2)
    loss = (leaf(w, False) * res.x).sum() + (leaf(v_ub, False) * res.ineqlin).sum() \
        + (leaf(v_eq, False) * res.eqlin).sum()
    grads = dict(zip(LP_NAMES, torch.autograd.grad(loss, params)))
    assert int(res.adjoint.status[0]) == int(AdjointStatus.SOLVED)

    def reference(k, v):
        x, _, ineq, eq = highs_lp(*(v if j == k else data[j] for j in LP_NAMES))
        return float(w @ x + v_ub @ ineq + v_eq @ eq)

    for k in LP_NAMES:
        fd = central_difference(lambda v: reference(k, v), data[k], all_coordinates(data[k].shape))
        assert_rel(grads[k].numpy().reshape(-1), fd, what=f"d (w x* + v duals) / d {k}")


def test_linprog_gradients_with_respect_to_tensor_bounds_match_highs():
    """Bounds requiring grad: the sets' own parameters (differentiated through the projection)."""
    data = random_lp(n=6, m=4, p=2, seed=0)
    bounds = np.array([[0.0, 1.0]] * 6)
    bounds[1], bounds[4] = [-0.2, 0.8], [0.1, 0.9]

    def highs(bd):
        res = scipy.optimize.linprog(*(data[k] for k in LP_NAMES), bounds=bd, method="highs")
        assert res.status == 0
        return res

    ref = highs(bounds)
    assert np.isclose(ref.x[4], 0.1) and ref.lower.marginals[4] > MARGIN  # a moved bound is active
    bounds_t = leaf(bounds)
    res = saddle.linprog(*(leaf(data[k], False) for k in LP_NAMES), bounds=bounds_t, tol=1e-9, differentiable=True)
    assert int(res.status) == 0
    w = np.random.default_rng(5).standard_normal(6)
    (g,) = torch.autograd.grad((leaf(w, False) * res.x).sum() + res.fun + res.ineqlin.sum(), bounds_t)
    fd = central_difference(lambda bd: (lambda r: w @ r.x + r.fun + r.ineqlin.marginals.sum())(highs(bd)), bounds,
                            all_coordinates(bounds.shape))
    assert_rel(g.numpy().reshape(-1), fd, what="d (w x* + fun + sum ineqlin) / d bounds")


# ================================================================================================================
# 3. quadratic programs
# ================================================================================================================

def random_qp(B: int, n: int, m: int, p: int, active: int, seed: int) -> dict[str, np.ndarray]:
    """B QPs in qpth's convention with a known nondegenerate solution: the first ``active`` rows of G are active
    with multipliers in [0.5, 1.5], the others have slacks in [0.2, 1]; P is positive definite plus a
    nonsymmetric part (the objective only sees P's symmetric part)."""
    rng = np.random.default_rng(seed)
    out = {k: [] for k in ("P", "q", "G", "h", "A", "b", "x")}
    for _ in range(B):
        L = rng.standard_normal((n, n))
        S = rng.standard_normal((n, n))
        P = L @ L.T / n + np.eye(n) + 0.3 * (S - S.T)
        G, A = rng.standard_normal((m, n)), rng.standard_normal((p, n))
        x = rng.standard_normal(n)
        lam = np.r_[rng.uniform(0.5, 1.5, active), np.zeros(m - active)]
        nu = rng.standard_normal(p)
        q = -(0.5 * (P + P.T) @ x + G.T @ lam + A.T @ nu)
        h = G @ x + np.r_[np.zeros(active), rng.uniform(0.2, 1.0, m - active)]
        for k, v in zip(("P", "q", "G", "h", "A", "b", "x"), (P, q, G, h, A, A @ x, x)):
            out[k].append(v)
    return {k: np.stack(v) for k, v in out.items()}


def clarabel_qp(P, q, G, h, A, b) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """``(x, fun, lam, nu)`` of one QP by cvxpy/Clarabel at tight tolerances (P symmetrized as quadprog does)."""
    x = cp.Variable(q.shape[0])
    constraints = [G @ x <= h, A @ x == b]
    problem = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(0.5 * (P + P.T))) + q @ x), constraints)
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-13, tol_gap_rel=1e-13, tol_feas=1e-13, max_iter=500)
    assert problem.status == cp.OPTIMAL, problem.status
    return x.value, float(problem.value), constraints[0].dual_value, constraints[1].dual_value


QP_NAMES = ("P", "q", "G", "h", "A", "b")


def test_quadprog_gradients_match_clarabel():
    B, n, m, p = 2, 5, 4, 2
    data = random_qp(B, n, m, p, active=2, seed=0)
    t = {k: leaf(data[k]) for k in QP_NAMES}
    res = saddle.quadprog(*(t[k] for k in QP_NAMES))  # differentiable by default: its inputs require grad
    assert res.success.all() and res.adjoint is not None
    np.testing.assert_allclose(res.x.detach().numpy(), data["x"], rtol=0, atol=1e-10)
    rng = np.random.default_rng(2)
    w = rng.standard_normal((B, n))
    params = tuple(t[k] for k in QP_NAMES)
    g_fun = dict(zip(QP_NAMES, torch.autograd.grad(res.fun.sum(), params, retain_graph=True)))
    grads = dict(zip(QP_NAMES, torch.autograd.grad((leaf(w, False) * res.x).sum(), params)))
    assert (res.adjoint.status == int(AdjointStatus.SOLVED)).all()
    for b in range(B):
        inst = {k: data[k][b] for k in QP_NAMES}
        x, fun, lam, nu = clarabel_qp(*inst.values())
        np.testing.assert_allclose(res.x[b].detach().numpy(), x, rtol=0, atol=1e-9)
        np.testing.assert_allclose(res.ineqlin[b].detach().numpy(), lam, rtol=0, atol=1e-9)
        np.testing.assert_allclose(res.eqlin[b].detach().numpy(), nu, rtol=0, atol=1e-9)
        # qpth's convention: the gradient with respect to P is symmetric
        torch.testing.assert_close(grads["P"][b], grads["P"][b].mT, rtol=0, atol=1e-14)
        # the value by the envelope theorem: d fun/dq = x, d fun/dh = -lam, d fun/db = -nu, d fun/dP = x x^T / 2
        for k, expected in (("q", x), ("h", -lam), ("b", -nu), ("P", 0.5 * np.outer(x, x)),
                            ("G", np.outer(lam, x)), ("A", np.outer(nu, x))):
            assert_rel(g_fun[k][b], expected, rtol=1e-8, what=f"d fun / d {k}")
        for k in QP_NAMES:  # every entry of the vectors; six of P and A; G: rows of active and inactive constraints
            coords = all_coordinates(inst[k].shape)
            if k == "G":
                coords = [(0, 1), (1, 4), (2, 3), (3, 0), (3, 2), (0, 3)]
            elif len(coords) > 6:
                coords = [coords[i] for i in np.random.default_rng(3 + b).choice(len(coords), 6, replace=False)]

            def loss(v, k=k):
                return float(w[b] @ clarabel_qp(*(v if j == k else inst[j] for j in QP_NAMES))[0])

            fd = central_difference(loss, inst[k], coords, h=1e-5)
            assert_rel(grads[k][b].numpy()[tuple(np.array(coords).T)], fd, what=f"d (w x*) / d {k}[{b}]")


# ================================================================================================================
# 4. strongly monotone quadratic games: the solution of a linear system
# ================================================================================================================

@pytest.mark.parametrize("form", ["closure", "terms"])
def test_quadratic_game_gradients_match_the_closed_form(form):
    """``f = x^T P x / 2 + q^T x + y^T K x - y^T Q y / 2 - r^T y`` on R^n x R^m: z* solves
    ``[P K^T; K -Q] z = (-q, r)``; autograd through ``torch.linalg.solve`` is the reference."""
    B, n, m = 2, 4, 3
    gen = torch.Generator().manual_seed(0)

    def spd(k):
        L = torch.randn(B, k, k, dtype=F64, generator=gen)
        return L @ L.mT / k + torch.eye(k, dtype=F64)

    P, Q = spd(n).requires_grad_(), spd(m).requires_grad_()
    K = torch.randn(B, m, n, dtype=F64, generator=gen).requires_grad_()
    q, r = torch.randn(B, n, dtype=F64, generator=gen).requires_grad_(), \
        torch.randn(B, m, dtype=F64, generator=gen).requires_grad_()
    params = (P, Q, K, q, r)
    mv = lambda M, v: (M @ v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
    x0, y0 = torch.zeros(B, n, dtype=F64), torch.zeros(B, m, dtype=F64)
    if form == "closure":  # parameters closed over by f; f only sees P's and Q's symmetric parts
        def f(x, y):
            return 0.5 * (x * mv(P, x)).sum(-1) + (q * x).sum(-1) + (y * mv(K, x)).sum(-1) \
                - 0.5 * (y * mv(Q, y)).sum(-1) - (r * y).sum(-1)

        sol = saddle.solve(saddle.SaddleProblem(f, x0, y0), "extragradient", tol=1e-10, differentiable=True)
        Pm, Qm = 0.5 * (P + P.mT), 0.5 * (Q + Q.mT)
    else:  # Quadratic terms: grad = P x, P as given
        problem = saddle.BilinearProblem(K, x0, y0, g=Quadratic(P, q), h_conj=Quadratic(Q, r))
        sol = saddle.solve(problem, "pdhg", tol=1e-10, differentiable=True)
        Pm, Qm = P, Q
    assert sol.success.all()
    system = torch.cat([torch.cat([Pm, K.mT], -1), torch.cat([K, -Qm], -1)], -2)
    z = torch.linalg.solve(system, torch.cat([-q, r], -1))
    x, y = z[:, :n], z[:, n:]
    torch.testing.assert_close(sol.x.detach(), x.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.y.detach(), y.detach(), rtol=0, atol=1e-12)
    wx, wy = torch.randn(B, n, dtype=F64, generator=gen), torch.randn(B, m, dtype=F64, generator=gen)
    got = torch.autograd.grad((wx * sol.x).sum() + (wy * sol.y).sum(), params, retain_graph=True)
    want = torch.autograd.grad((wx * x).sum() + (wy * y).sum(), params, retain_graph=True)
    for name, a, b in zip("PQKqr", got, want):
        assert_rel(a, b, rtol=1e-10, what=f"d (w z*) / d {name}")
    # the value f(z*) with envelope-theorem gradients equals the closed form's value differentiated through z*
    value = 0.5 * (x * mv(Pm, x)).sum(-1) + (q * x).sum(-1) + (y * mv(K, x)).sum(-1) \
        - 0.5 * (y * mv(Qm, y)).sum(-1) - (r * y).sum(-1)
    torch.testing.assert_close(sol.value.detach(), value.detach(), rtol=0, atol=1e-12)
    got, want = torch.autograd.grad(sol.value.sum(), params), torch.autograd.grad(value.sum(), params)
    for name, a, b in zip("PQKqr", got, want):
        assert_rel(a, b, rtol=1e-10, what=f"d value / d {name}")


# ================================================================================================================
# 5. distributionally robust learning (chi-square penalty)
# ================================================================================================================

def _simplex_projection(u: np.ndarray) -> tuple[np.ndarray, float]:
    s = np.sort(u)[::-1]
    cssv = np.cumsum(s) - 1
    k = np.nonzero(s - cssv / np.arange(1, len(u) + 1) > 0)[0][-1]
    tau = cssv[k] / (k + 1)
    return np.maximum(u - tau, 0), tau


def dro_newton(A: np.ndarray, b: np.ndarray, lam: float, mu: float, theta: np.ndarray):
    """The chi-square-penalized logistic DRO ``min_theta max_{q in simplex} sum q_i l_i - lam n/2 |q - 1/n|^2
    + mu/2 |theta|^2`` by Newton's method on the smooth primal (Danskin's gradient, the simplex projection's
    Jacobian on its support), from ``theta``. Returns ``(theta*, q*, the smallest |u_i - tau|)`` (> 0: no
    sample on the edge of the support)."""
    n = len(b)
    for _ in range(30):
        margin = b * (A @ theta)
        losses = np.logaddexp(0, -margin)
        sig = 1 / (1 + np.exp(margin))  # sigmoid(-b m)
        slope, curvature = -b * sig, sig * (1 - sig)
        u = 1 / n + losses / (lam * n)
        q, tau = _simplex_projection(u)
        grad = A.T @ (q * slope) + mu * theta
        support = q > 0
        dq = (np.diag(support) - np.outer(support, support) / support.sum()) / (lam * n)
        J = slope[:, None] * A
        hess = A.T @ (q[:, None] * curvature[:, None] * A) + J.T @ dq @ J + mu * np.eye(len(theta))
        step = np.linalg.solve(hess, grad)
        theta = theta - step
        if np.abs(step).max() < 1e-15:
            break
    margin = b * (A @ theta)
    u = 1 / n + np.logaddexp(0, -margin) / (lam * n)
    q, tau = _simplex_projection(u)
    return theta, q, float(np.abs(u - tau).min())


def test_dro_chi2_gradients_match_a_newton_reference():
    n, d, lam, mu = 8, 3, 0.05, 0.1
    A0, labels, _ = group_shift_data(n, d, batch_size=2, seed=0, noise=0.2)
    A0, labels = A0.double(), labels.double()
    features = A0.clone().requires_grad_()
    problem = DROProblem(features, labels, loss="logistic", ambiguity="chi2", lam=lam, mu=mu)
    sol = saddle.solve(problem, "extragradient", tol=1e-10, differentiable=True)
    assert sol.success.all()
    gen = torch.Generator().manual_seed(4)
    w, v = torch.randn(2, n, dtype=F64, generator=gen), torch.randn(2, d, dtype=F64, generator=gen)
    (g,) = torch.autograd.grad((w * sol.y).sum() + (v * sol.x).sum(), features)
    assert (sol.adjoint.status == int(AdjointStatus.SOLVED)).all()
    for i in range(2):
        A, b = A0[i].numpy(), labels[i].numpy()
        _, theta_cvx, _ = dro_reference(A, b, loss="logistic", ambiguity="chi2", lam=lam, mu=mu)
        theta, q, edge = dro_newton(A, b, lam, mu, theta_cvx)
        assert edge > 1e-4 and (q == 0).any() and (q > 0).sum() > 1  # both kinds of weights, none on the edge
        np.testing.assert_allclose(theta, theta_cvx, rtol=0, atol=1e-4)  # Newton refined cvxpy's answer
        np.testing.assert_allclose(sol.x[i].detach().numpy(), theta, rtol=0, atol=1e-12)
        np.testing.assert_allclose(sol.y[i].detach().numpy(), q, rtol=0, atol=1e-12)

        def loss(features_i):
            t, qq, _ = dro_newton(features_i, b, lam, mu, theta)
            return float(w[i].numpy() @ qq + v[i].numpy() @ t)

        coords = all_coordinates((n, d))
        fd = central_difference(loss, A, coords)
        assert_rel(g[i].numpy()[tuple(np.array(coords).T)], fd, what=f"d (w q* + v theta*) / d features[{i}]")


# ================================================================================================================
# 6. sharpness (m-sharpness: two micro-batches, each with its own perturbation)
# ================================================================================================================

def test_m_sharpness_gradients_match_the_closed_form():
    """``min_w max_{|e_g| <= rho} (1/2) sum_g a_g |w + e_g - c_g|^2 / 2`` over two groups has the solution
    (w on the segment c_1 c_2, d its direction, D its length) ``e_1 = rho d``, ``e_2 = -rho d``,
    ``w = c_1 + t d`` with ``t = (a_2 (D + rho) - a_1 rho) / (a_1 + a_2)``: the inner maxima of the
    convex losses are on the spheres, away from the other center. (With one group the saddle points
    ``w + e = argmin L, |e| <= rho`` are not isolated, so M would be singular.) The data c, the weights
    a and the radii rho (a parameter of the ball) require grad."""
    B, G, n = 2, 2, 3
    gen = torch.Generator().manual_seed(0)
    c = torch.randn(B, G, n, dtype=F64, generator=gen).requires_grad_()
    a = torch.tensor([[1.0, 2.0], [1.5, 0.7]], dtype=F64).requires_grad_()
    rho = torch.tensor([0.3, 0.2], dtype=F64).requires_grad_()

    def group_loss(W):  # (B, G, n) -> (B, G)
        return 0.5 * a * (W - c).square().sum(-1)

    def loss(w):
        return group_loss(w.unsqueeze(1).expand(-1, G, -1)).mean(-1)

    problem = SharpnessProblem(loss, torch.zeros(B, n, dtype=F64), rho, group_loss=group_loss, groups=G)
    sol = saddle.solve(problem, "extragradient", tol=1e-10, differentiable=True)
    assert sol.success.all()
    c1, c2 = c[:, 0], c[:, 1]
    D = (c2 - c1).norm(dim=-1, keepdim=True)
    d = (c2 - c1) / D
    a1, a2, r = a[:, :1], a[:, 1:], rho[:, None]
    t = (a2 * (D + r) - a1 * r) / (a1 + a2)
    assert bool(((t > 0) & (t < D)).all())
    w_star, e_star = c1 + t * d, torch.cat([r * d, -r * d], -1)
    torch.testing.assert_close(sol.x.detach(), w_star.detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(sol.y.detach(), e_star.detach(), rtol=0, atol=1e-12)
    wx, we = torch.randn(B, n, dtype=F64, generator=gen), torch.randn(B, G * n, dtype=F64, generator=gen)
    got = torch.autograd.grad((wx * sol.x).sum() + (we * sol.y).sum(), (c, a, rho))
    want = torch.autograd.grad((wx * w_star).sum() + (we * e_star).sum(), (c, a, rho), retain_graph=True)
    for name, x, y in zip(("c", "a", "rho"), got, want):
        assert_rel(x, y, rtol=1e-10, what=f"d (w z*) / d {name}")
    # and the closed form itself against central differences in one direction of c
    direction = torch.randn(B, G, n, dtype=F64, generator=gen)

    def closed(cc):
        dd = (cc[:, 1] - cc[:, 0]) / (cc[:, 1] - cc[:, 0]).norm(dim=-1, keepdim=True)
        DD = (cc[:, 1] - cc[:, 0]).norm(dim=-1, keepdim=True)
        tt = (a2 * (DD + r) - a1 * r) / (a1 + a2)
        return float((wx * (cc[:, 0] + tt * dd)).sum() + (we * torch.cat([r * dd, -r * dd], -1)).sum())

    with torch.no_grad():
        fd = (closed(c + H * direction) - closed(c - H * direction)) / (2 * H)
    assert abs(float((got[0] * direction).sum()) - fd) <= RTOL * abs(fd)


# ================================================================================================================
# 7. a batch is its instances
# ================================================================================================================

def test_batched_gradients_equal_those_of_each_instance_alone():
    B, m, n = 3, 4, 3
    K = random_games(B, m, n, seed=5).requires_grad_()
    gen = torch.Generator().manual_seed(6)
    w, u = torch.randn(B, n, dtype=F64, generator=gen), torch.randn(B, m, dtype=F64, generator=gen)
    problem = game(K)
    sol = saddle.solve(problem, "r2hpdhg", tol=1e-8, differentiable=True)
    g_value, g = (torch.autograd.grad(sol.value.sum(), K, retain_graph=True)[0],
                  torch.autograd.grad((w * sol.x).sum() + (u * sol.y).sum(), K)[0])
    for i in range(B):
        one = saddle.solve(problem.select(i), "r2hpdhg", tol=1e-8, differentiable=True)
        gv_i = torch.autograd.grad(one.value.sum(), K, retain_graph=True)[0]
        g_i = torch.autograd.grad((w[i] * one.x).sum() + (u[i] * one.y).sum(), K)[0]
        others = [j for j in range(B) if j != i]
        assert torch.equal(g_i[others], torch.zeros_like(g_i[others]))  # instance i sees K[i] only
        torch.testing.assert_close(g_i[i], g[i], rtol=0, atol=1e-10)
        torch.testing.assert_close(gv_i[i], g_value[i], rtol=0, atol=1e-10)

    datas = [random_lp(n=6, m=4, p=2, seed=s) for s in range(B)]
    lp = {k: np.stack([d[k] for d in datas]) for k in LP_NAMES}
    t = {k: leaf(v) for k, v in lp.items()}
    res = saddle.linprog(*t.values(), bounds=(0, 1), tol=1e-9, differentiable=True)
    wl = torch.randn(B, 6, dtype=F64, generator=gen)
    grads = torch.autograd.grad((wl * res.x).sum() + res.fun.sum() + res.ineqlin.sum(), tuple(t.values()))
    for i in range(B):
        ti = {k: leaf(v[i]) for k, v in lp.items()}
        res_i = saddle.linprog(*ti.values(), bounds=(0, 1), tol=1e-9, differentiable=True)
        grads_i = torch.autograd.grad((wl[i] * res_i.x).sum() + res_i.fun + res_i.ineqlin.sum(), tuple(ti.values()))
        for name, gb, gi in zip(LP_NAMES, grads, grads_i):
            torch.testing.assert_close(gb[i], gi, rtol=0, atol=1e-10, msg=f"linprog d/d {name}, instance {i}")

    data = random_qp(B, 4, 3, 1, active=1, seed=7)
    t = {k: leaf(data[k]) for k in QP_NAMES}
    res = saddle.quadprog(*(t[k] for k in QP_NAMES))
    wq = torch.randn(B, 4, dtype=F64, generator=gen)
    grads = torch.autograd.grad((wq * res.x).sum(), tuple(t.values()))
    for i in range(B):
        ti = {k: leaf(data[k][i]) for k in QP_NAMES}
        res_i = saddle.quadprog(*(ti[k] for k in QP_NAMES))
        grads_i = torch.autograd.grad((wq[i] * res_i.x).sum(), tuple(ti.values()))
        for name, gb, gi in zip(QP_NAMES, grads, grads_i):
            torch.testing.assert_close(gb[i], gi, rtol=0, atol=1e-10, msg=f"quadprog d/d {name}, instance {i}")


# ================================================================================================================
# 8. GMRES and the dense factorization
# ================================================================================================================

def test_gmres_solves_nonsymmetric_systems():
    gen = torch.Generator().manual_seed(8)
    A = torch.eye(12, dtype=F64) * 4 + torch.randn(4, 12, 12, dtype=F64, generator=gen) / 12 ** 0.5
    b = torch.randn(4, 12, dtype=F64, generator=gen)
    res = gmres(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, tol=1e-12, max_iters=200, restart=5)
    assert res.converged.all()
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b), rtol=0, atol=1e-9)
    assert (res.residual <= 1e-12 * b.norm(dim=-1)).all()
    short = gmres(lambda v: (A @ v.unsqueeze(-1)).squeeze(-1), b, tol=1e-12, max_iters=3, restart=5)
    assert not short.converged.any()


@pytest.mark.parametrize("family", ["game", "quadratic"])
def test_gmres_and_dense_adjoints_give_the_same_gradient(family):
    gen = torch.Generator().manual_seed(9)
    if family == "game":
        K = random_games(3, 5, 4, seed=9).requires_grad_()
        problem, params, solver = game(K), (K,), "r2hpdhg"
    else:
        B, n, m = 3, 4, 3
        P = torch.randn(B, n, n, dtype=F64, generator=gen)
        P = (P @ P.mT / n + torch.eye(n, dtype=F64)).requires_grad_()
        K = torch.randn(B, m, n, dtype=F64, generator=gen).requires_grad_()
        q = torch.randn(B, n, dtype=F64, generator=gen).requires_grad_()
        problem = saddle.BilinearProblem(K, torch.zeros(B, n, dtype=F64), torch.zeros(B, m, dtype=F64),
                                         g=Quadratic(P, q), h_conj=Quadratic(torch.ones(B, m, dtype=F64)),
                                         X=saddle.Box(-0.3, 0.3))
        params, solver = (P, K, q), "extragradient"
    B, n = problem.z0[0].shape
    m = problem.z0[1].shape[1]
    w, u = torch.randn(B, n, dtype=F64, generator=gen), torch.randn(B, m, dtype=F64, generator=gen)

    def gradient(z):
        return torch.autograd.grad((w * z[0]).sum() + (u * z[1]).sum(), params)

    # the same polished point attached both ways
    with torch.no_grad():
        rough = saddle.solve(problem, solver, tol=1e-8)
    z, residual = polish(problem, rough.z)
    assert (residual <= 1e-13).all()
    dense, adj_dense = attach(problem, z, options=Implicit(method="dense"))
    iterative, adj_gmres = attach(problem, z, options=Implicit(method="gmres", tol=1e-12))
    assert (adj_dense.method, adj_gmres.method) == ("dense", "gmres")
    for a, b in zip(gradient(dense), gradient(iterative)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert (adj_gmres.status == int(AdjointStatus.SOLVED)).all()
    # through solve: GMRES (no polish) on a tight solve, dense (polished) on a loose one
    tight = saddle.solve(problem, solver, tol=1e-12, differentiable=Implicit(method="gmres", tol=1e-12))
    loose = saddle.solve(problem, solver, tol=1e-8, differentiable=Implicit(method="dense"))
    assert (tight.adjoint.method, loose.adjoint.method) == ("gmres", "dense")
    for a, b in zip(gradient(tight.z), gradient(loose.z)):
        assert_rel(a, b, rtol=1e-8)


# ================================================================================================================
# 9-10. degenerate points and failed solves
# ================================================================================================================

def test_tied_game_is_singular_with_finite_gradients():
    K0 = random_games(2, 4, 3, seed=0)
    K0[1, 3] = K0[1, 2]  # two identical strategies of y: y2 + y3 is determined, not the split
    K = K0.clone().requires_grad_()
    sol = saddle.solve(game(K), "r2hpdhg", tol=1e-9, differentiable=True)
    assert sol.success.all()
    with pytest.warns(RuntimeWarning, match="singular") as record:
        (g,) = torch.autograd.grad(sol.x.sum() + sol.y[:, 2].sum() + sol.value.sum(), K)
    assert any("[1]" in str(r.message) for r in record)
    assert sol.adjoint.status.tolist() == [int(AdjointStatus.SOLVED), int(AdjointStatus.SINGULAR)]
    assert torch.isfinite(g).all()
    # the other instance is unaffected: it equals a solve of its own
    K1 = K0[:1].clone().requires_grad_()
    one = saddle.solve(game(K1), "r2hpdhg", tol=1e-9, differentiable=True)
    (g1,) = torch.autograd.grad(one.x.sum() + one.y[:, 2].sum() + one.value.sum(), K1)
    torch.testing.assert_close(g[:1], g1, rtol=0, atol=1e-10)


def test_unconverged_instance_gets_nan_gradients_alone():
    K0 = random_games(3, 4, 3, seed=10)
    K = K0.clone().requires_grad_()
    tol = torch.tensor([1e-9, 1e-300, 1e-9], dtype=F64)  # instance 1 cannot get there
    sol = saddle.solve(game(K), "r2hpdhg", tol=tol, max_iters=2000, differentiable=True)
    assert sol.success.tolist() == [True, False, True]
    assert sol.adjoint.status.tolist()[1] == int(AdjointStatus.NO_SOLUTION)
    with pytest.warns(RuntimeWarning, match=r"instances \[1\]: the solve did not converge"):
        (g,) = torch.autograd.grad(sol.x.sum() + sol.y[:, 0].sum(), K)
    assert sol.adjoint.status.tolist() == [int(AdjointStatus.SOLVED), int(AdjointStatus.NO_SOLUTION),
                                           int(AdjointStatus.SOLVED)]
    assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2]]).all()
    # the others are those of a solve without it
    K2 = K0[[0, 2]].clone().requires_grad_()
    alone = saddle.solve(game(K2), "r2hpdhg", tol=1e-9, max_iters=2000, differentiable=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        (g2,) = torch.autograd.grad(alone.x.sum() + alone.y[:, 0].sum(), K2)
    torch.testing.assert_close(g[[0, 2]], g2, rtol=0, atol=1e-10)


# ================================================================================================================
# 11. sensitivity
# ================================================================================================================

def test_sensitivity_jacobian_directional_derivative_and_highs_agree():
    B, m, n = 2, 4, 3
    K0 = random_games(B, m, n, seed=0)
    gen = torch.Generator().manual_seed(11)
    D = torch.randn(B, m, n, dtype=F64, generator=gen)
    K = K0.clone().requires_grad_()
    sol = saddle.solve(game(K), "r2hpdhg", tol=1e-8, differentiable=True)
    Jx, Jy = saddle.sensitivity(sol, K)
    assert Jx.shape == (B, n, m, n) and Jy.shape == (B, m, m, n)
    dx, dy = saddle.sensitivity(sol, K, D)
    assert dx.shape == (B, n) and dy.shape == (B, m)
    torch.testing.assert_close(torch.einsum("bjkl,bkl->bj", Jx, D), dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.einsum("bjkl,bkl->bj", Jy, D), dy, rtol=0, atol=1e-12)
    for b in range(B):
        Kb, Db = K0[b].numpy(), D[b].numpy()
        highs_game(Kb)  # nondegenerate
        plus, minus = highs_game(Kb + H * Db, check=False), highs_game(Kb - H * Db, check=False)
        assert_rel(dx[b], (plus[0] - minus[0]) / (2 * H), what="dx* along D")
        assert_rel(dy[b], (plus[1] - minus[1]) / (2 * H), what="dy* along D")

    # a parameter shared by the batch (its first dimension is not B): Jacobians (B, n_i, *shape)
    theta = (0.3 * torch.randn(5, n, dtype=F64, generator=gen)).requires_grad_()
    offsets = random_games(B, 5, n, seed=12)
    shared = saddle.solve(game(offsets + theta), "r2hpdhg", tol=1e-8, differentiable=True)
    E = torch.randn(5, n, dtype=F64, generator=gen)
    Jx, Jy = saddle.sensitivity(shared, theta)
    assert Jx.shape == (B, n, 5, n) and Jy.shape == (B, 5, 5, n)
    dx, dy = saddle.sensitivity(shared, theta, E)
    torch.testing.assert_close(torch.einsum("bjkl,kl->bj", Jx, E), dx, rtol=0, atol=1e-12)
    torch.testing.assert_close(torch.einsum("bjkl,kl->bj", Jy, E), dy, rtol=0, atol=1e-12)
    for b in range(B):
        Kb = (offsets[b] + theta.detach()).numpy()
        highs_game(Kb)
        plus, minus = highs_game(Kb + H * E.numpy(), check=False), highs_game(Kb - H * E.numpy(), check=False)
        assert_rel(dx[b], (plus[0] - minus[0]) / (2 * H), what="dx* along E (shared parameter)")


def test_sensitivity_of_a_shared_parameter_whose_first_dimension_is_the_batch_size():
    # shape[0] == B reads as per-instance by default: per_instance=False says it is shared
    B, m, n = 4, 4, 3
    gen = torch.Generator().manual_seed(13)
    theta = (0.3 * torch.randn(m, n, dtype=F64, generator=gen)).requires_grad_()  # shared, m == B
    sol = saddle.solve(game(random_games(B, m, n, seed=14) + theta), "r2hpdhg", tol=1e-8, differentiable=True)
    E = torch.randn(m, n, dtype=F64, generator=gen)
    dx, _ = saddle.sensitivity(sol, theta, E)
    Jx, _ = saddle.sensitivity(sol, theta, per_instance=False)
    assert Jx.shape == (B, n, m, n)
    torch.testing.assert_close(torch.einsum("bjkl,kl->bj", Jx, E), dx, rtol=0, atol=1e-12)


# ================================================================================================================
# 12. unrolled differentiation
# ================================================================================================================

@pytest.mark.parametrize("solver", ["r2hpdhg", "extragradient"])
def test_unrolled_gradient_is_close_to_the_implicit_one(solver):
    K = random_games(2, 4, 3, seed=0).requires_grad_()
    gen = torch.Generator().manual_seed(15)
    w, u = torch.randn(2, 3, dtype=F64, generator=gen), torch.randn(2, 4, dtype=F64, generator=gen)
    implicit = saddle.solve(game(K), solver, tol=1e-12, differentiable=True)
    unrolled = saddle.solve(game(K), solver, tol=1e-12, differentiable="unroll")
    assert unrolled.success.all() and unrolled.adjoint is None
    torch.testing.assert_close(unrolled.x.detach(), implicit.x.detach(), rtol=0, atol=1e-10)
    (g_implicit,) = torch.autograd.grad((w * implicit.x).sum() + (u * implicit.y).sum(), K)
    (g_unrolled,) = torch.autograd.grad((w * unrolled.x).sum() + (u * unrolled.y).sum(), K, retain_graph=True)
    assert_rel(g_unrolled, g_implicit, rtol=1e-4, what="unrolled vs implicit")
    (gv,) = torch.autograd.grad(unrolled.value.sum(), K)
    assert_rel(gv, unrolled.y.detach().unsqueeze(-1) * unrolled.x.detach().unsqueeze(-2), rtol=1e-4,
               what="unrolled value gradient vs y x^T")


def test_unrolled_pdhg_gradient_is_finite():
    # PDHG's adaptive step divided 0 / 0 in the branch torch.where did not take, which made its gradient NaN
    K = random_games(4, 4, 3, seed=1).requires_grad_()
    sol = saddle.solve(game(K), "pdhg", differentiable="unroll")
    assert sol.success.all()
    (g,) = torch.autograd.grad(sol.x[:, 0].sum(), K)
    assert torch.isfinite(g).all()


# ================================================================================================================
# 13. bad input
# ================================================================================================================

def test_bad_input_is_refused():
    K = random_games(1, 3, 2, seed=0).requires_grad_()
    with pytest.raises(TypeError, match="differentiable"):
        saddle.solve(game(K), "pdhg", differentiable="foo")
    with pytest.raises(ValueError, match="method"):
        Implicit(method="x")
    with pytest.raises(ValueError, match="polish"):
        saddle.solve(game(K), "pdhg", differentiable=Implicit(method="gmres", polish=True))
    with warnings.catch_warnings():
        # torch's, from saddle/compaction.py (float() of a tensor requiring grad) in a solve of such data
        warnings.filterwarnings("ignore", "Converting a tensor with requires_grad=True", UserWarning)
        plain = saddle.solve(game(K), "pdhg", tol=1e-8)
    with pytest.raises(ValueError, match="differentiable"):
        saddle.sensitivity(plain, K)
    sol = saddle.solve(game(K), "pdhg", tol=1e-8, differentiable=True)
    with pytest.raises(ValueError, match="direction"):
        saddle.sensitivity(sol, K, torch.ones(3, dtype=F64))

    P, q = torch.eye(3, dtype=F64), torch.ones(3, dtype=F64)
    G, h = torch.ones(2, 3, dtype=F64), torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match="P must"):
        saddle.quadprog(torch.eye(4, dtype=F64), q, G, h)
    with pytest.raises(ValueError, match="h must"):
        saddle.quadprog(P, q, G, torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="G must"):
        saddle.quadprog(P, q, torch.ones(2, 4, dtype=F64), h)
    with pytest.raises(ValueError, match="A must"):
        saddle.quadprog(P, q, G, h, torch.ones(1, 2, dtype=F64), torch.ones(1, dtype=F64))
    with pytest.raises(ValueError, match="give G and h together"):
        saddle.quadprog(P, q, G, None)
    with pytest.raises(TypeError, match="differentiable"):
        saddle.quadprog(P, q, G, h, differentiable="foo")

    index, values = torch.tensor([[0, 1, 1], [0, 1, 2]]), torch.ones(3, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's "sparse tensor support is in beta"
        A_sparse = torch.sparse_coo_tensor(index, values, (2, 3)).requires_grad_()
    c = torch.tensor([-1.0, -1.0, -2.0], dtype=F64, requires_grad=True)
    with pytest.raises(ValueError, match="dense"):
        saddle.linprog(c, A_sparse, torch.ones(2, dtype=F64), bounds=(0, 1), differentiable=True)
    with pytest.raises(ValueError, match="unroll"):
        saddle.linprog(c, A_sparse.detach(), torch.ones(2, dtype=F64), bounds=(0, 1), differentiable="unroll")
    # a sparse matrix that does not require grad is fine
    res = saddle.linprog(c, A_sparse.detach(), torch.ones(2, dtype=F64), bounds=(0, 1), differentiable=True)
    assert int(res.status) == 0 and torch.equal(res.x.detach(), torch.tensor([1.0, 0.0, 1.0], dtype=F64))
    (gc,) = torch.autograd.grad(res.fun, c)
    torch.testing.assert_close(gc, torch.tensor([1.0, 0.0, 1.0], dtype=F64), rtol=0, atol=1e-12)


# ================================================================================================================
# 14. CUDA
# ================================================================================================================

@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_game_gradient_on_cuda_matches_cpu():
    K0 = random_games(3, 5, 4, seed=16)
    gen = torch.Generator().manual_seed(17)
    w, u = torch.randn(3, 4, dtype=F64, generator=gen), torch.randn(3, 5, dtype=F64, generator=gen)
    grads = []
    for device in ("cpu", "cuda"):
        K = K0.to(device).requires_grad_()
        sol = saddle.solve(game(K), "r2hpdhg", tol=1e-8, differentiable=True)
        assert sol.success.all()
        loss = (w.to(device) * sol.x).sum() + (u.to(device) * sol.y).sum() + sol.value.sum()
        grads.append(torch.autograd.grad(loss, K)[0].cpu())
        assert (sol.adjoint.status.cpu() == int(AdjointStatus.SOLVED)).all()
    torch.testing.assert_close(grads[1], grads[0], rtol=0, atol=1e-10)


def test_sensitivity_names_a_freed_graph_and_a_parameter_that_is_not_per_instance():
    K = random_games(3, 4, 3, seed=21).requires_grad_()
    sol = saddle.solve(game(K), "r2hpdhg", tol=1e-8, differentiable=True)
    with pytest.raises(ValueError, match="first dimension is the batch size"):
        saddle.sensitivity(sol, torch.zeros(2, dtype=F64, requires_grad=True), per_instance=True)
    sol.x.sum().backward()
    with pytest.raises(ValueError, match="freed"):
        saddle.sensitivity(sol, K)


def test_gmres_per_instance_caps_give_nan_and_a_status_only_where_the_cap_is_too_small():
    from saddle.implicit import AdjointStatus, Implicit, polish

    K = random_games(3, 5, 4, seed=22).requires_grad_()
    problem = game(K)
    found = saddle.solve(game(K.detach()), "r2hpdhg", tol=1e-10)
    z, _ = polish(problem, found.z)
    caps = torch.tensor([200, 1, 200])
    z_att, adjoint = saddle.implicit.attach(problem, z, options=Implicit(method="gmres", tol=1e-12, max_iters=caps))
    with pytest.warns(RuntimeWarning, match="GMRES did not solve"):
        (g,) = torch.autograd.grad(z_att[0][:, 0].sum(), K)
    assert adjoint.status.tolist() == [AdjointStatus.SOLVED, AdjointStatus.NOT_CONVERGED, AdjointStatus.SOLVED]
    assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2]]).all()
    dense, _ = saddle.implicit.attach(problem, z, options=Implicit(method="dense"))
    (g_dense,) = torch.autograd.grad(dense[0][:, 0].sum(), K)
    torch.testing.assert_close(g[[0, 2]], g_dense[[0, 2]], rtol=0, atol=1e-10)
