"""saddle's gradients against cvxpylayers' on the same small problems (cvxpylayers: an optional dependency).

`cvxpylayers.torch.CvxpyLayer` (1.2, diffcp backend, ``mode="dense"``: a direct solve of diffcp's derivative
system) differentiates the cone program cvxpy makes of each problem; saddle differentiates the KKT system of
its own, Newton-polished solution. Both are compared on the same float64 tensors, one autograd graph each:

1. LPs ``min c^T x  s.t.  A x <= b,  0 <= x <= 1`` (feasible, bounded, nondegenerate: ``b = A x_f + slack``),
   the loss ``w . x* + fun``, gradients with respect to c, A and b (`saddle.linprog`);
2. strictly convex QPs ``min 1/2 x^T P x + q^T x  s.t.  G x <= h,  A x = b`` with a known nondegenerate
   solution, the loss ``w . x*``, gradients with respect to P, q, G, h, A and b (`saddle.quadprog`). A cvxpy
   ``Parameter`` cannot be the matrix of a DPP quadratic form (``quad_form(x, P)`` with a parameter P is not
   DPP for diffcp, ``psd_wrap`` included), so cvxpylayers gets a factor L with ``P = L L^T`` and the objective
   ``1/2 |L^T x|^2``; saddle gets ``P = L @ L.mT`` formed by autograd, and both gradients are taken with
   respect to the same leaf L (and saddle's dP, symmetric, against the dP that cvxpylayers' dL implies);
3. a batched call (some parameters shared by the batch) against cvxpylayers' batched call and its calls on
   one instance at a time: shapes, solutions and gradients.

Relative errors are those of ``benchmarks/differentiable.py``: per instance, ``max |g - g_ref|`` over all the
parameters' entries divided by ``max |g_ref|``.

The tolerances come from cvxpylayers' own accuracy, measured (scratch scripts, 2 cores, cvxpylayers 1.2.0,
diffcp 1.1.9, Clarabel 0.11.1, SCS 3.3.1) on 30 random batches of each family, 120 LPs and 90 QPs of the
sizes used here:

- LPs, diffcp with Clarabel at ``tol_gap_abs = tol_gap_rel = tol_feas = 1e-12`` (through cvxpy, Clarabel calls
  each of the 120 optimal, none inaccurate): x* within 4.2e-11 of HiGHS's vertex; against central differences
  (h = 1e-6) of the loss computed by HiGHS the gradients' error is at most 7.5e-10 (median 1.8e-10) -- but
  saddle's gradient shows exactly the same error against the same differences, so that is the differences'
  own floor (1e-16 / h rounding plus the curvature in A); against each other the two layers differ by at most
  9.5e-11 (median 2e-13). At Clarabel's 1e-10 (the benchmark's default) the difference grows to 2.3e-8 and
  x* is off by 4e-9, hence the tighter tolerance here. No regularization of the LP is needed with dense
  derivatives at tight tolerances (with diffcp's defaults, SCS at 1e-4 and LSQR, the gradients are off by up
  to 1.3e-4, and by up to 9e-4 with a 1e-6 or 1e-4 ``sum_squares(x)`` term). `LP_RTOL` = 5e-10: 5 times the
  largest difference measured, below the finite differences' floor.
- QPs: Clarabel cannot serve. diffcp takes no quadratic objective in dense mode, so cvxpy rewrites
  ``1/2 |L^T x|^2`` as a second-order cone, and Clarabel on that cone stops short: over 18 QPs, the largest
  error of x* is 6e-6 to 2.4e-5 at each tolerance from 1e-9 to 1e-12 (at 1e-12 "AlmostSolved", which diffcp
  passes on silently; cvxpy's own Clarabel QP path, a quadratic objective, gets 1e-11 at tolerance 1e-11
  where its cone path gets 2.4e-5 "optimal_inaccurate"). SCS (operator splitting) at ``eps_abs = eps_rel =
  1e-12`` takes milliseconds here and gets x* within 1.4e-11 of the known solution; against central
  differences (h = 1e-5) of Clarabel's QP solves (its QP path, at 1e-13) the gradients' error is at most
  3.8e-9 (median 1.8e-10), again the differences' floor (saddle: the same 3.8e-9); saddle and cvxpylayers
  differ by at most 2.6e-10 (median 1.3e-13); at SCS's 1e-10 by 2.3e-9. `QP_RTOL` = 1e-9: 4 times the
  largest difference measured.

A "Solved/Inaccurate" warning of diffcp (SCS stopping at its iteration limit) is an error here.
"""

from __future__ import annotations

import pytest

cvxpylayers = pytest.importorskip("cvxpylayers")

import cvxpy as cp  # noqa: E402  (a dependency of cvxpylayers)
import cvxpylayers.torch  # noqa: E402
import numpy as np  # noqa: E402
import scipy.optimize  # noqa: E402
import torch  # noqa: E402

import saddle  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("error:Solved/Inaccurate"),
    # numpy asking torch tensors for copy=..., inside cvxpylayers
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword"),
]

F64 = torch.float64
#: see the module's docstring for the measurements behind the tolerances
LP_RTOL = 5e-10
QP_RTOL = 1e-9
#: |x*_saddle - x*_cvxpylayers|: cvxpylayers' x* was within 4.2e-11 (LPs) and 1.4e-11 (QPs) of the exact one
X_ATOL = 2e-10
#: strict complementarity margin asserted on the LPs' HiGHS solutions
MARGIN = 1e-6

#: diffcp's arguments: the cone solver at tight tolerances, dense derivatives, no thread pools
CLARABEL = {"solve_method": "Clarabel", "mode": "dense", "tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12,
            "tol_feas": 1e-12, "tol_ktratio": 1e-12, "max_iter": 500, "n_jobs_forward": 1, "n_jobs_backward": 1}
SCS = {"solve_method": "SCS", "mode": "dense", "eps_abs": 1e-12, "eps_rel": 1e-12, "max_iters": 200_000,
       "n_jobs_forward": 1, "n_jobs_backward": 1}

LP_NAMES = ("c", "A", "b")
QP_NAMES = ("L", "q", "G", "h", "A", "b")


def rel_err(actual: dict, expected: dict) -> float:
    """``max |actual - expected|`` over all the entries of all the arrays, over ``max |expected|``."""
    diff = max(float(np.abs(np.asarray(actual[k]) - np.asarray(expected[k])).max()) for k in expected)
    return diff / max(max(float(np.abs(np.asarray(expected[k])).max()) for k in expected), 1e-300)


def leaves(data: dict, names, requires_grad: bool = True) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(data[k], dtype=F64, requires_grad=requires_grad) for k in names}


# ================================================================================================================
# problems and layers
# ================================================================================================================

def random_lps(B: int, n: int, m: int, seed: int, shared_A: bool = False) -> dict[str, np.ndarray]:
    """B LPs ``min c^T x, A x <= b, 0 <= x <= 1`` (``b = A x_f + slack``, x_f inside the box) and weights w.

    With ``shared_A``, one ``(m, n)`` A for the whole batch. Each LP's HiGHS solution is asserted to be a
    nondegenerate vertex (exactly n active constraints, every one with a multiplier beyond `MARGIN`).
    """
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, n) if shared_A else (B, m, n))
    AB = np.broadcast_to(A, (B, m, n))
    x_f = rng.uniform(0.05, 0.95, (B, n))
    b = np.einsum("bij,bj->bi", AB, x_f) + rng.uniform(0.1, 1.0, (B, m))
    data = {"c": rng.standard_normal((B, n)), "A": A, "b": b, "w": rng.standard_normal((B, n))}
    for i in range(B):
        res = scipy.optimize.linprog(data["c"][i], AB[i], b[i], bounds=(0, 1), method="highs")
        assert res.status == 0, res.message
        slack, lam = b[i] - AB[i] @ res.x, -res.ineqlin.marginals
        assert np.all((slack > MARGIN) ^ (lam > MARGIN)), ("rows not strictly complementary", slack, lam)
        lo, hi = res.x < MARGIN, res.x > 1 - MARGIN
        assert np.all(res.lower.marginals[lo] > MARGIN) and np.all(res.upper.marginals[hi] < -MARGIN)
        assert (slack <= MARGIN).sum() + lo.sum() + hi.sum() == n, "not a nondegenerate vertex"
    return data


def random_qps(B: int, n: int, m: int, p: int, active: int, seed: int, shared: tuple = ()) -> dict[str, np.ndarray]:
    """B strictly convex QPs with a known nondegenerate solution x, and weights w.

    ``P = L L^T`` (L the Cholesky factor of ``M M^T / n + I``); the first ``active`` rows of G are active with
    multipliers in [0.5, 1.5], the others have slacks in [0.2, 1]. The names in ``shared`` ("L", "G", "A")
    are one matrix for the whole batch.
    """
    rng = np.random.default_rng(seed)

    def draw(name, make):
        one = make()
        return one if name in shared else np.stack([one] + [make() for _ in range(B - 1)])

    def factor():
        M = rng.standard_normal((n, n))
        return np.linalg.cholesky(M @ M.T / n + np.eye(n))

    L = draw("L", factor)
    G = draw("G", lambda: rng.standard_normal((m, n)))
    A = draw("A", lambda: rng.standard_normal((p, n)))
    LB, GB, AB = (np.broadcast_to(v, (B,) + v.shape[-2:]) for v in (L, G, A))
    x = rng.standard_normal((B, n))
    lam = np.concatenate([rng.uniform(0.5, 1.5, (B, active)), np.zeros((B, m - active))], axis=1)
    nu = rng.standard_normal((B, p))
    P = LB @ LB.transpose(0, 2, 1)
    q = -(np.einsum("bij,bj->bi", P, x) + np.einsum("bji,bj->bi", GB, lam) + np.einsum("bji,bj->bi", AB, nu))
    h = np.einsum("bij,bj->bi", GB, x) + np.concatenate([np.zeros((B, active)), rng.uniform(0.2, 1.0, (B, m - active))],
                                                      axis=1)
    return {"L": L, "q": q, "G": G, "h": h, "A": A, "b": np.einsum("bij,bj->bi", AB, x), "x": x,
            "w": rng.standard_normal((B, n))}


def lp_layer(n: int, m: int) -> cvxpylayers.torch.CvxpyLayer:
    x, c, A, b = cp.Variable(n), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
    problem = cp.Problem(cp.Minimize(c @ x), [A @ x <= b, x >= 0, x <= 1])
    assert problem.is_dpp()
    return cvxpylayers.torch.CvxpyLayer(problem, parameters=[c, A, b], variables=[x], solver_args=CLARABEL)


def qp_layer(n: int, m: int, p: int) -> cvxpylayers.torch.CvxpyLayer:
    x = cp.Variable(n)
    L, q, G, h, A, b = (cp.Parameter(s) for s in ((n, n), n, (m, n), m, (p, n), p))
    problem = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(L.T @ x) + q @ x), [G @ x <= h, A @ x == b])
    assert problem.is_dpp()
    return cvxpylayers.torch.CvxpyLayer(problem, parameters=[L, q, G, h, A, b], variables=[x], solver_args=SCS)


# Each family maps float64 leaves (a dict of the names above) to (x*, loss), the loss summed over the batch.

def saddle_lp(t: dict, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = saddle.linprog(t["c"], t["A"], t["b"], bounds=(0, 1), differentiable=True)
    assert (res.status == 0).all()
    return res.x, (w * res.x).sum() + res.fun.sum()


def cvxpylayers_lp(layer, t: dict, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (x,) = layer(t["c"], t["A"], t["b"])
    return x, (w * x).sum() + (t["c"] * x).sum()


def saddle_qp(t: dict, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = saddle.quadprog(t["L"] @ t["L"].mT, t["q"], t["G"], t["h"], t["A"], t["b"])
    assert res.success.all()
    return res.x, (w * res.x).sum()


def cvxpylayers_qp(layer, t: dict, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    (x,) = layer(*(t[k] for k in QP_NAMES))
    return x, (w * x).sum()


def gradients(solve, t: dict, w: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    x, loss = solve(t, w)
    return x.detach(), dict(zip(t, torch.autograd.grad(loss, tuple(t.values()))))


# ================================================================================================================
# 1. linear programs
# ================================================================================================================

def test_linprog_gradients_match_cvxpylayers():
    B, n, m = 4, 6, 4
    data = random_lps(B, n, m, seed=0)
    w = torch.tensor(data["w"])
    layer = lp_layer(n, m)
    x_s, g_s = gradients(saddle_lp, leaves(data, LP_NAMES), w)
    x_c, g_c = gradients(lambda t, w: cvxpylayers_lp(layer, t, w), leaves(data, LP_NAMES), w)
    torch.testing.assert_close(x_s, x_c, rtol=0, atol=X_ATOL)
    assert not torch.equal(g_s["A"], torch.zeros_like(g_s["A"]))
    for i in range(B):
        err = rel_err({k: g_s[k][i] for k in LP_NAMES}, {k: g_c[k][i] for k in LP_NAMES})
        assert err <= LP_RTOL, f"instance {i}: relative error {err:.2e} > {LP_RTOL:g}\n{g_s}\n{g_c}"
        # d fun / dc = x*, and x*(c) is piecewise constant: d loss / dc is the vertex itself
        torch.testing.assert_close(g_s["c"][i], x_s[i], rtol=0, atol=1e-12)


# ================================================================================================================
# 2. quadratic programs
# ================================================================================================================

def test_quadprog_gradients_match_cvxpylayers():
    B, n, m, p = 3, 5, 4, 2
    data = random_qps(B, n, m, p, active=2, seed=0)
    w = torch.tensor(data["w"])
    layer = qp_layer(n, m, p)
    t = leaves(data, QP_NAMES)
    P = t["L"] @ t["L"].mT
    P.retain_grad()
    res = saddle.quadprog(P, t["q"], t["G"], t["h"], t["A"], t["b"])
    assert res.success.all()
    (w * res.x).sum().backward()
    x_s, g_s, dP = res.x.detach(), {k: v.grad for k, v in t.items()}, P.grad
    x_c, g_c = gradients(lambda t, w: cvxpylayers_qp(layer, t, w), leaves(data, QP_NAMES), w)
    torch.testing.assert_close(x_s, torch.tensor(data["x"]), rtol=0, atol=1e-12)
    torch.testing.assert_close(x_c, torch.tensor(data["x"]), rtol=0, atol=X_ATOL)
    # cvxpylayers' dL is 2 dP L for the symmetric dP of P = L L^T: the dP it implies is dL L^-1 / 2
    dP_c = 0.5 * torch.linalg.solve_triangular(torch.tensor(data["L"]), g_c["L"], upper=False, left=False)
    for i in range(B):
        err = rel_err({k: g_s[k][i] for k in QP_NAMES}, {k: g_c[k][i] for k in QP_NAMES})
        assert err <= QP_RTOL, f"instance {i}: relative error {err:.2e} > {QP_RTOL:g}\n{g_s}\n{g_c}"
        torch.testing.assert_close(dP[i], dP[i].mT, rtol=0, atol=1e-14)  # the symmetric part of P is used
        err = rel_err({"P": dP[i]}, {"P": dP_c[i]})
        assert err <= QP_RTOL, f"instance {i}: dP relative error {err:.2e} > {QP_RTOL:g}\n{dP[i]}\n{dP_c[i]}"


# ================================================================================================================
# 3. a batch, instance by instance
# ================================================================================================================

@pytest.mark.parametrize("family", ["lp", "qp"])
def test_batched_call_matches_cvxpylayers_instance_by_instance(family):
    """Shared parameters (the LPs' A; the QPs' L and G) are broadcast by both; their gradient is the sum of
    the instances'. saddle's batched call is checked against cvxpylayers' batched call and against its calls
    on one instance at a time (the shared parameters as they are, the others their row)."""
    B = 4
    if family == "lp":
        n, names, shared, rtol = 5, LP_NAMES, ("A",), LP_RTOL
        data = random_lps(B, n, 3, seed=3, shared_A=True)
        layer = lp_layer(n, 3)
        solve_s, solve_c = saddle_lp, lambda t, w: cvxpylayers_lp(layer, t, w)
    else:
        n, names, shared, rtol = 4, QP_NAMES, ("L", "G"), QP_RTOL
        data = random_qps(B, n, 3, 1, active=1, seed=4, shared=shared)
        layer = qp_layer(n, 3, 1)
        solve_s, solve_c = saddle_qp, lambda t, w: cvxpylayers_qp(layer, t, w)
    w = torch.tensor(data["w"])
    x_s, g_s = gradients(solve_s, leaves(data, names), w)
    x_c, g_c = gradients(solve_c, leaves(data, names), w)
    assert x_s.shape == x_c.shape == (B, n)
    for k in names:
        assert g_s[k].shape == g_c[k].shape == data[k].shape, k
    torch.testing.assert_close(x_s, x_c, rtol=0, atol=X_ATOL)
    summed = {k: torch.zeros_like(g_s[k]) for k in shared}
    for i in range(B):
        one = {k: data[k] if k in shared else data[k][i] for k in names}
        x_i, g_i = gradients(solve_c, leaves(one, names), w[i])
        assert x_i.shape == (n,)
        assert all(g_i[k].shape == one[k].shape for k in names)
        torch.testing.assert_close(x_s[i], x_i, rtol=0, atol=X_ATOL)
        torch.testing.assert_close(x_c[i], x_i, rtol=0, atol=X_ATOL)
        rows = [k for k in names if k not in shared]
        for g in (g_s, g_c):  # the per-instance parameters' rows, cvxpylayers' batched call included
            err = rel_err({k: g[k][i] for k in rows}, {k: g_i[k] for k in rows})
            assert err <= rtol, f"instance {i}: relative error {err:.2e} > {rtol:g}"
        for k in shared:
            summed[k] += g_i[k]
    for g in (g_s, g_c):
        err = rel_err({k: g[k] for k in shared}, summed)
        assert err <= rtol, f"shared {shared}: relative error {err:.2e} > {rtol:g}"
