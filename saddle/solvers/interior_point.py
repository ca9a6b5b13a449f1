"""A batched primal-dual interior-point method for small dense LPs and convex QPs in Lagrangian form.

The `BilinearProblem` ``min_{lo <= x <= hi} max_y  1/2 x^T P x + c^T x + <K x, y> - <d, y>`` with
each y_i free (an equality row ``K_i x = d_i``) or ``y_i >= 0`` (an inequality row ``K_i x <= d_i``)
is the QP ``min 1/2 x^T P x + c^T x  s.t.  K_eq x = d_eq,  K_in x <= d_in,  lo <= x <= hi``.
Mehrotra's predictor-corrector (Mehrotra 1992; Wright, *Primal-Dual Interior-Point Methods*, 1997,
ch. 10; the same iteration as qpth's and CVXOPT's) on it, with slacks s >= 0 and multipliers w >= 0 of
the inequalities ``G x + s = h`` (the rows ``K_in``, and ``-x <= -lo``, ``x <= hi`` for finite bounds):

    ``(P + G^T W S^{-1} G) dx + K_eq^T dy = -r_d - G^T S^{-1} (W r_p - r_c)``,   ``K_eq dx = -r_eq``,

    ``ds = -r_p - G dx``,   ``dw = -S^{-1} (r_c + W ds)``,

with ``r_d = P x + c + K_eq^T y + G^T w``, ``r_p = G x + s - h``, ``r_eq = K_eq x - d_eq`` and
``r_c = s w`` (predictor), then ``s w + ds_aff dw_aff - sigma mu`` (corrector), ``sigma = (mu_aff /
mu)^3``. Each iteration is two solves with one batched LU of the ``(n + m)``-square KKT matrix, so the
method is for small dense instances (the differentiable layers' regime, `saddle.quadprog`): about 10-30
iterations whatever the conditioning, where first-order methods take hundreds to thousands.

An instance whose relative residuals and complementarity fall below ``tol`` stops moving (its next
steps would divide by slacks near 0); the driver's measure decides convergence as for every solver.
Infeasible and unbounded instances are not detected: their iterates grow, and the driver marks them
`DIVERGED` or stops them at the iteration limit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import Point
from ..problem import BilinearProblem
from ..sets import Box
from ..solution import Status
from ..terms import Linear, Quadratic, Zero
from .base import Solver, register

__all__ = ["InteriorPoint", "InteriorPointState", "MAX_ITERS"]

#: The iteration limit `saddle.linprog` and `saddle.quadprog` give the method when none is given: it solves
#: in 10-30 iterations or not at all (an infeasible or unbounded instance).
MAX_ITERS = 200

#: The fraction of the largest step to the boundary an iteration takes (Mehrotra's eta).
STEP_FRACTION = 0.99
#: Regularization added to the KKT matrix's diagonal (times its scale): free variables of LPs make its
#: primal block singular.
REGULARIZATION = 1e-12


class InteriorPointState(NamedTuple):
    """Per instance: the slacks and multipliers of the rows ``(B, m)`` and bounds ``(B, n)`` (lower, upper),
    the multipliers of the equalities ``(B, m)`` (0 on inequality rows), whether it has stopped, and the
    evaluations of F (one per iteration)."""

    s: Tensor
    w: Tensor
    s_lo: Tensor
    w_lo: Tensor
    s_hi: Tensor
    w_hi: Tensor
    y_eq: Tensor
    done: Tensor
    operator_calls: Tensor


class _QP(NamedTuple):
    """The QP of a problem, batched: P ``(B, n, n)``, c ``(B, n)``, K ``(B, m, n)``, d ``(B, m)``, row and bound masks."""

    P: Tensor
    c: Tensor
    K: Tensor
    d: Tensor
    eq: Tensor  # (B, m) bool: equality rows
    lo: Tensor  # (B, n), 0 where infinite
    hi: Tensor
    has_lo: Tensor  # (B, n) bool
    has_hi: Tensor


@register("ipm", category="primal-dual", calls_per_step=1, calls_at_init=0, converges_on=("linear program",))
@dataclass(frozen=True)
class InteriorPoint(Solver):
    """Mehrotra's predictor-corrector interior-point method for small dense LPs and QPs (Mehrotra 1992, SIAM J.
    Optim. 2(4); Wright 1997, *Primal-Dual Interior-Point Methods*; see the module docstring).

    ``(P + G^T W S^{-1} G) dx + K_eq^T dy = -r_d - G^T S^{-1} (W r_p - r_c)``, twice per iteration (predictor,
    corrector), with one LU factorization.

    Args:
        tol: an instance stops moving once its relative primal and dual residuals and its complementarity
            ``mu`` are below this, or ``mu`` alone is 1000 times below it (the residuals then stall at the
            KKT systems' rounding); the solve's own measure decides convergence, and an instance that stopped
            moving without meeting it is reported `PRECISION_LOSS` (`terminal_status`).

    Problems: `BilinearProblem` with a dense K ``(B or 1, m, n)``, g zero, linear or quadratic (P positive
    semidefinite), h* zero or linear, X a box (or R^n), Y a box whose coordinates are free or ``>= 0``.
    An iteration evaluates F once (its residuals) and factorizes one KKT matrix.
    """

    tol: float = 1e-10

    def __post_init__(self):
        if isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < 1:
            raise ValueError(f"{self.name}: tol must be a float in (0, 1), got {self.tol!r}")

    def check(self, problem) -> None:
        if not isinstance(problem, BilinearProblem):
            raise ValueError(f"{self.name} needs a BilinearProblem (an LP or QP in Lagrangian form), got "
                             f"{type(problem).__name__}")
        if problem.coupling.sparse:
            raise ValueError(f"{self.name} factorizes dense KKT matrices: K must be dense")
        if not isinstance(problem.g, (Zero, Linear, Quadratic)) or not isinstance(problem.h_conj, (Zero, Linear)):
            raise ValueError(f"{self.name} needs g zero, linear or quadratic and h* zero or linear, got "
                             f"{type(problem.g).__name__} and {type(problem.h_conj).__name__}")
        X, Y = problem.domain
        for S, name in ((X, "X"), (Y, "Y")):
            if not (S.unconstrained or isinstance(S, Box)):
                raise ValueError(f"{self.name} needs boxes (or R^n) for X and Y, got {name} = {S!r}")
        if not Y.unconstrained:
            lo, hi = (torch.as_tensor(v, dtype=torch.float64) for v in (Y.lo, Y.hi))
            if not bool(torch.isinf(hi).all() & (hi > 0).all()) or not bool(((lo == 0) | (lo == -math.inf)).all()):
                raise ValueError(f"{self.name}: each y_i must be free or >= 0 (Y = Box(lo in {{-inf, 0}}, inf)), "
                                 f"got Y = {Y!r}")

    def terminal_status(self, problem, z: Point, state: InteriorPointState) -> Tensor:
        """``PRECISION_LOSS`` where an instance has stopped moving (the driver asks only of those it has not
        stopped itself, so: where the solve's tolerance is below what the iteration resolves); ``RUNNING`` elsewhere."""
        return torch.where(state.done, int(Status.PRECISION_LOSS), int(Status.RUNNING))

    def _qp(self, problem) -> _QP:
        x0, y0 = problem.z0
        B, n = x0.shape
        m = y0.shape[1]
        dtype, device = x0.dtype, x0.device
        g, h = problem.g, problem.h_conj
        K = problem.coupling.K.expand(B, m, n)
        if isinstance(g, Quadratic):
            P = torch.diag_embed(g.P) if g.diagonal else g.P
            P = P.to(dtype).expand(B, n, n)
        else:
            P = x0.new_zeros(1, n, n).expand(B, n, n)
        c = g.c if getattr(g, "c", None) is not None else x0.new_zeros(B, n)
        c = c.to(dtype).expand(B, n)
        d = h.c.to(dtype).expand(B, m) if getattr(h, "c", None) is not None else y0.new_zeros(B, m)
        X, Y = problem.domain
        eq = (torch.as_tensor(Y.lo, dtype=dtype, device=device).expand(B, m) == -math.inf) if not Y.unconstrained \
            else torch.ones(B, m, dtype=torch.bool, device=device)
        if X.unconstrained:
            lo = hi = x0.new_zeros(B, n)
            has_lo = has_hi = torch.zeros(B, n, dtype=torch.bool, device=device)
        else:
            lo_t = torch.as_tensor(X.lo, dtype=dtype, device=device)
            hi_t = torch.as_tensor(X.hi, dtype=dtype, device=device)
            lo_t = (lo_t.unsqueeze(-1) if lo_t.dim() == 1 else lo_t).expand(B, n)
            hi_t = (hi_t.unsqueeze(-1) if hi_t.dim() == 1 else hi_t).expand(B, n)
            has_lo, has_hi = torch.isfinite(lo_t), torch.isfinite(hi_t)
            lo, hi = torch.where(has_lo, lo_t, 0.0), torch.where(has_hi, hi_t, 0.0)
        return _QP(P, c, K, d, eq, lo, hi, has_lo, has_hi)

    def init(self, problem, z0: Point) -> InteriorPointState:
        qp = self._qp(problem)
        x, y = z0
        B = x.shape[0]
        ineq = ~qp.eq
        one = torch.ones_like
        s = torch.where(ineq, (qp.d - torch.bmm(qp.K, x.unsqueeze(-1)).squeeze(-1)).clamp_min(1.0), 1.0)
        s_lo = torch.where(qp.has_lo, (x - qp.lo).clamp_min(1.0), 1.0)
        s_hi = torch.where(qp.has_hi, (qp.hi - x).clamp_min(1.0), 1.0)
        w = torch.where(ineq, one(s), 0.0)
        w_lo, w_hi = torch.where(qp.has_lo, 1.0, 0.0).to(x), torch.where(qp.has_hi, 1.0, 0.0).to(x)
        y_eq = torch.where(qp.eq, y, 0.0)
        return InteriorPointState(s, w, s_lo, w_lo, s_hi, w_hi, y_eq, torch.zeros(B, dtype=torch.bool, device=x.device),
                                  torch.zeros(B, dtype=torch.int64, device=x.device))

    def step(self, problem, z: Point, state: InteriorPointState) -> tuple[Point, InteriorPointState]:
        qp = self._qp(problem)
        x = z[0]
        st = state
        B, n = x.shape
        ineq, eq = ~qp.eq, qp.eq
        fl, fh = qp.has_lo.to(x), qp.has_hi.to(x)
        fi = ineq.to(x)
        Kt = lambda v: torch.bmm(qp.K.mT, v.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        # the residuals from F at (x, y): F_x = P x + c + K^T y (the dual residual, less the bounds'
        # multipliers) and F_y = d - K x (the rows' residuals, with the slacks of the inequalities)
        Fx, Fy = problem.F((x, torch.where(eq, st.y_eq, st.w)))
        r_d = Fx - st.w_lo * fl + st.w_hi * fh
        r_row = torch.where(eq, -Fy, (st.s - Fy) * fi)
        r_lo = (-x + st.s_lo + qp.lo) * fl
        r_hi = (x + st.s_hi - qp.hi) * fh
        count = fi.sum(-1) + fl.sum(-1) + fh.sum(-1)
        mu = ((st.s * st.w * fi).sum(-1) + (st.s_lo * st.w_lo * fl).sum(-1)
              + (st.s_hi * st.w_hi * fh).sum(-1)) / count.clamp_min(1)
        # the reduced KKT matrix [[P + G^T D G, K_eq^T], [K_eq, -I on inequality rows]]
        D = torch.where(ineq, st.w / st.s, 0.0)
        D_lo, D_hi = st.w_lo / st.s_lo * fl, st.w_hi / st.s_hi * fh
        H = qp.P + torch.bmm(qp.K.mT * D.unsqueeze(-2), qp.K) + torch.diag_embed(D_lo + D_hi)
        scale = H.diagonal(dim1=-2, dim2=-1).abs().amax(-1).clamp_min(1.0)
        reg = REGULARIZATION * scale
        K_eq = qp.K * eq.unsqueeze(-1).to(x)
        top = torch.cat([H + reg[:, None, None] * torch.eye(n, dtype=x.dtype, device=x.device), K_eq.mT], -1)
        bottom = torch.cat([K_eq, -torch.diag_embed(fi + reg[:, None])], -1)
        lu, pivots, _ = torch.linalg.lu_factor_ex(torch.cat([top, bottom], -2))

        def direction(rc: Tensor, rc_lo: Tensor, rc_hi: Tensor):
            # G^T S^{-1} (W r_p - r_c) over rows (U = K_in), lower bounds (G = -I), upper bounds (G = I)
            v = torch.where(ineq, (st.w * r_row - rc) / st.s, 0.0)
            v_lo = (st.w_lo * r_lo - rc_lo) / st.s_lo * fl
            v_hi = (st.w_hi * r_hi - rc_hi) / st.s_hi * fh
            rhs_x = -r_d - Kt(v) + v_lo - v_hi
            rhs_y = torch.where(eq, -r_row, 0.0)
            sol = torch.linalg.lu_solve(lu, pivots, torch.cat([rhs_x, rhs_y], -1).unsqueeze(-1)).squeeze(-1)
            dx, dy = sol[:, :n], sol[:, n:]
            Kdx = torch.bmm(qp.K, dx.unsqueeze(-1)).squeeze(-1)
            ds = torch.where(ineq, -r_row - Kdx, 0.0)
            ds_lo = (-r_lo + dx) * fl
            ds_hi = (-r_hi - dx) * fh
            dw = torch.where(ineq, -(rc + st.w * ds) / st.s, 0.0)
            dw_lo = -(rc_lo + st.w_lo * ds_lo) / st.s_lo * fl
            dw_hi = -(rc_hi + st.w_hi * ds_hi) / st.s_hi * fh
            return dx, dy, (ds, ds_lo, ds_hi), (dw, dw_lo, dw_hi)

        def longest(values, steps) -> Tensor:
            """The largest alpha <= 1 keeping every value + alpha * step >= 0, ``(B,)``."""
            alpha = torch.ones(B, dtype=x.dtype, device=x.device)
            for v, dv in zip(values, steps):
                ratio = torch.where(dv < 0, -v / dv.clamp_max(-torch.finfo(x.dtype).tiny), math.inf)
                alpha = torch.minimum(alpha, ratio.amin(-1))
            return alpha

        slacks, mults = (st.s, st.s_lo, st.s_hi), (st.w, st.w_lo, st.w_hi)
        # predictor (affine scaling)
        rc, rc_lo, rc_hi = st.s * st.w * fi, st.s_lo * st.w_lo * fl, st.s_hi * st.w_hi * fh
        _, _, ds_a, dw_a = direction(rc, rc_lo, rc_hi)
        a_aff = longest(slacks + mults, ds_a + dw_a)
        after = sum(((s + a_aff[:, None] * ds) * (w + a_aff[:, None] * dw)).sum(-1)
                    for s, w, ds, dw in zip(slacks, mults, ds_a, dw_a))
        sigma = (after / count.clamp_min(1) / mu.clamp_min(torch.finfo(x.dtype).tiny)).clamp(0, 1) ** 3
        target = (sigma * mu).unsqueeze(-1)
        # corrector (Mehrotra's second-order term and the centering target)
        rc = (st.s * st.w + ds_a[0] * dw_a[0] - target) * fi
        rc_lo = (st.s_lo * st.w_lo + ds_a[1] * dw_a[1] - target) * fl
        rc_hi = (st.s_hi * st.w_hi + ds_a[2] * dw_a[2] - target) * fh
        dx, dy, ds, dw = direction(rc, rc_lo, rc_hi)
        alpha = (STEP_FRACTION * longest(slacks + mults, ds + dw)).clamp_max(1.0)
        a = alpha.unsqueeze(-1)
        new = InteriorPointState(
            s=torch.where(ineq, st.s + a * ds[0], 1.0), w=st.w + a * dw[0],
            s_lo=torch.where(qp.has_lo, st.s_lo + a * ds[1], 1.0), w_lo=st.w_lo + a * dw[1],
            s_hi=torch.where(qp.has_hi, st.s_hi + a * ds[2], 1.0), w_hi=st.w_hi + a * dw[2],
            y_eq=torch.where(eq, st.y_eq + a * dy, 0.0), done=st.done, operator_calls=st.operator_calls + 1)
        x_new = x + a * dx
        # an instance stops moving once it has converged, or where the step is not finite
        c_norm, d_norm = 1 + qp.c.norm(dim=-1), 1 + qp.d.norm(dim=-1)
        mu_scale = 1 + (qp.c * x).sum(-1).abs()
        converged = ((r_d.norm(dim=-1) <= self.tol * c_norm)
                     & ((r_row.norm(dim=-1) + r_lo.norm(dim=-1) + r_hi.norm(dim=-1)) <= self.tol * d_norm)
                     & (mu <= self.tol * mu_scale)) | (mu <= 1e-3 * self.tol * mu_scale)
        finite = torch.isfinite(x_new).all(-1) & torch.isfinite(alpha)
        stay = st.done | converged | ~finite
        new = InteriorPointState(*(torch.where(stay.view(-1, *([1] * (o.dim() - 1))), o, nw)
                                   for o, nw in zip(state[:-2], new[:-2])), st.done | converged,
                                 new.operator_calls)
        x_out = torch.where(stay.unsqueeze(-1), x, x_new)
        return (x_out, torch.where(eq, new.y_eq, new.w)), new
