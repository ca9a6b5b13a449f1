"""Exact references from independent solvers: HiGHS (through scipy) and cvxpy, and closed forms.

Nothing here uses saddle's own solvers: these are the answers the tests trust.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch
from torch import Tensor

__all__ = ["matrix_game_lp", "affine_vi_solution", "box_quadratic_saddle", "stationary_point"]


def matrix_game_lp(A: np.ndarray, *, tolerance: float | None = 1e-10) -> tuple[float, np.ndarray, np.ndarray]:
    """Value and equilibrium of ``min_{x in simplex} max_{y in simplex} x^T A y`` by HiGHS.

    Solves the LP ``min v  s.t.  A^T x <= v 1, sum x = 1, x >= 0`` with
    `scipy.optimize.linprog` (method ``"highs"``); the maximizer's strategy y is
    the dual solution of the inequality constraints.

    Args:
        A: ``(n, m)`` payoff matrix (x pays ``x^T A y`` to y).
        tolerance: HiGHS's primal and dual feasibility tolerances, or None for its
            defaults (what a user of HiGHS gets: the benchmarks' timed baseline).

    Returns:
        ``(value, x, y)`` with x of shape ``(n,)`` and y of shape ``(m,)``.
    """
    n, m = A.shape
    c = np.zeros(n + 1)
    c[-1] = 1.0
    A_ub = np.hstack([A.T, -np.ones((m, 1))])
    A_eq = np.hstack([np.ones((1, n)), np.zeros((1, 1))])
    bounds = [(0, None)] * n + [(None, None)]
    options = {} if tolerance is None else {"primal_feasibility_tolerance": tolerance,
                                            "dual_feasibility_tolerance": tolerance}
    res = scipy.optimize.linprog(c, A_ub=A_ub, b_ub=np.zeros(m), A_eq=A_eq, b_eq=[1.0], bounds=bounds,
                                 method="highs", options=options)
    if res.status != 0:
        raise RuntimeError(f"HiGHS failed on a matrix game: {res.message}")
    x = np.clip(res.x[:n], 0, None)
    y = np.clip(-res.ineqlin.marginals, 0, None)
    return float(res.x[-1]), x / x.sum(), y / y.sum()


def affine_vi_solution(M: Tensor, q: Tensor) -> Tensor:
    """The unique zero of ``F(z) = M z + q`` (unconstrained affine VI), batched: ``(B, N)``."""
    return torch.linalg.solve(M, -q.unsqueeze(-1)).squeeze(-1)


def box_quadratic_saddle(P, Q, A, b, c, lo, hi, polish: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Saddle point of ``1/2 x'Px + x'Ay - 1/2 y'Qy + b'x - c'y`` over ``[lo, hi]^n x [lo, hi]^m``.

    The inner maximization over the box is replaced by its Lagrange dual, which
    turns the saddle problem into one convex QP in ``(x, lam, nu)``::

        min  1/2 x'Px + b'x + 1/2 |L^-1 (A'x - c - lam + nu)|^2 + hi'lam - lo'nu
        s.t. lo <= x <= hi,  lam >= 0,  nu >= 0,          (Q = L L')

    solved by cvxpy (Clarabel), with ``y = Q^-1 (A'x - c - lam + nu)``. With
    ``polish`` the active bounds of that solution are fixed and the remaining
    linear KKT system is solved exactly, which is kept if it satisfies the VI
    to 1e-12 (it does whenever the active set was identified).

    Returns:
        ``(x, y)`` as numpy arrays.
    """
    import cvxpy as cp

    n, m = A.shape
    Lq = np.linalg.cholesky(Q)
    Linv = np.linalg.inv(Lq)
    x = cp.Variable(n)
    lam = cp.Variable(m, nonneg=True)
    nu = cp.Variable(m, nonneg=True)
    r = A.T @ x - c - lam + nu
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(P)) + b @ x + 0.5 * cp.sum_squares(Linv @ r) \
        + hi * cp.sum(lam) - lo * cp.sum(nu)
    prob = cp.Problem(cp.Minimize(objective), [x >= lo, x <= hi])
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    if prob.status != cp.OPTIMAL:
        raise RuntimeError(f"cvxpy did not solve the box quadratic saddle problem: {prob.status}")
    xs = x.value
    ys = np.linalg.solve(Q, A.T @ xs - c - lam.value + nu.value)
    if polish:
        polished = _polish(P, Q, A, b, c, lo, hi, xs, ys)
        if polished is not None:
            return polished
    return xs, ys


def _polish(P, Q, A, b, c, lo, hi, x, y, tol=1e-7):
    """Fix the active bounds of an approximate saddle point and solve the KKT system exactly."""
    z = np.concatenate([x, y])
    M = np.block([[P, A], [-A.T, Q]])
    q = np.concatenate([b, c])
    at_lo, at_hi = np.abs(z - lo) < tol, np.abs(z - hi) < tol
    fixed = at_lo | at_hi
    zz = np.where(at_lo, lo, np.where(at_hi, hi, 0.0))
    free = ~fixed
    if free.any():
        rhs = -(q[free] + M[np.ix_(free, fixed)] @ zz[fixed])
        zz[free] = np.linalg.solve(M[np.ix_(free, free)], rhs)
    Fz = M @ zz + q
    if np.abs(zz - np.clip(zz - Fz, lo, hi)).max() > 1e-12 * max(1.0, np.abs(zz).max()):
        return None
    return zz[: len(x)], zz[len(x):]


def stationary_point(F, z0: np.ndarray, tol: float = 1e-14) -> np.ndarray:
    """A zero of ``F: R^N -> R^N`` near ``z0`` by `scipy.optimize.root` (hybrid Powell), checked."""
    res = scipy.optimize.root(F, z0, method="hybr", tol=tol)
    if not res.success or np.abs(F(res.x)).max() > 1e-12:
        raise RuntimeError(f"scipy.optimize.root did not find a zero: {res.message}")
    return res.x
