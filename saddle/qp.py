"""Quadratic programs in qpth's convention: `quadprog`, batched and differentiable.

``min_x 1/2 x^T P x + q^T x   s.t.   G x <= h,  A x = b``

is the saddle-point problem of its Lagrangian,

    ``min_x max_{nu free, lam >= 0}  1/2 x^T P x + q^T x + <[A; G] x, (nu, lam)> - <(b, h), (nu, lam)>``,

a `BilinearProblem` with a quadratic term, which the interior-point method solves (``method="ipm"``,
the default: one dense KKT factorization per iteration), or the PDHG schemes (each primal step a
linear solve with ``I + tau P``). The solution is then polished by Newton steps and put on the
autograd graph of every argument that requires grad (`saddle.implicit`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .implicit import Implicit, as_differentiation
from .lp import _SCIPY_STATUS
from .problem import BilinearProblem
from .sets import Box, Reals
from .solution import Solution
from .solve import solve
from .solvers.interior_point import MAX_ITERS as IPM_MAX_ITERS
from .terms import Linear, Quadratic

__all__ = ["quadprog", "QuadprogResult", "QuadraticProgram"]


@dataclass
class QuadprogResult:
    """What `quadprog` returns; tensors have the batch as first dimension.

    Attributes:
        x: the solutions, ``(B, n)`` (qpth's output).
        eqlin: multipliers ``nu`` of ``A x = b``, ``(B, p)`` (``d fun / d b = -nu``).
        ineqlin: multipliers ``lam >= 0`` of ``G x <= h``, ``(B, m)``.
        fun: ``1/2 x^T P x + q^T x``, ``(B,)``.
        status: 0 solved, 1 an iteration or time limit, 4 numerical difficulties (a non-finite iterate, or an
            interior-point iteration that stopped moving short of tol), ``(B,)``. There are no certificates of
            infeasibility or unboundedness: such a QP ends with status 1 or 4, never 0.
        success: ``status == 0``.
        nit: iterations per instance.
        solution: the underlying `saddle.Solution` (its ``z = (x, (nu, lam))``).
    """

    x: Tensor
    eqlin: Tensor
    ineqlin: Tensor
    fun: Tensor
    status: Tensor
    success: Tensor
    nit: Tensor
    solution: Solution | None = None
    adjoint: Any = None


class QuadraticProgram(BilinearProblem):
    """The Lagrangian saddle problem of a batch of QPs, with the relative KKT error as the measure ``"kkt"``.

    ``min_x max_y 1/2 x^T P x + q^T x + <K x, y> - <d, y>`` with ``y_i`` free on equality rows and ``>= 0`` on
    inequality rows (`quadprog` builds it). The natural residual alone cannot tell an infeasible QP from a
    solved one once the multipliers grow past the rounding of their steps (a residual of exactly 0 at
    y ~ 1e16); the KKT error, relative to the data, can.
    """

    def extra_measures(self) -> tuple[str, ...]:
        return ("kkt",)

    def measure(self, name, z, Fz):
        if name != "kkt":
            return super().measure(name, z, Fz)
        return _kkt_error(self, z)


def _kkt_error(problem: BilinearProblem, z) -> Tensor:
    """``max(primal, dual, gap)`` relative errors of the QP at ``z = (x, y)``, ``(B,)``.

    primal ``|(K_eq x - d_eq, (K_in x - d_in)_+)| / (1 + |d|)``; dual ``|P x + q + K^T y| / (1 + |q|)``;
    gap ``|x^T P x + q^T x + d^T y| / (1 + |1/2 x^T P x + q^T x| + |1/2 x^T P x + d^T y|)`` (the primal and dual
    objectives ``1/2 x^T P x + q^T x`` and ``-1/2 x^T P x - d^T y``).
    """
    x, y = z
    d, q = problem.h_conj.c, problem.g.c
    Kx, Kty = problem.coupling.mv(x), problem.coupling.rmv(y)
    row = torch.clamp(Kx - d, min=problem.domain[1].lo)
    Px = problem.g.grad(x) - q
    xPx = (x * Px).sum(-1)
    primal_obj, dual_obj = 0.5 * xPx + (q * x).sum(-1), -0.5 * xPx - (d * y).sum(-1)
    primal = row.norm(dim=-1) / (1 + d.norm(dim=-1))
    dual = (Px + q + Kty).norm(dim=-1) / (1 + q.norm(dim=-1))
    gap = (primal_obj - dual_obj).abs() / (1 + primal_obj.abs() + dual_obj.abs())
    return torch.maximum(torch.maximum(primal, dual), gap)


def _given(t) -> bool:
    """qpth's convention: None or an empty tensor means no such constraints."""
    return t is not None and not (isinstance(t, Tensor) and t.numel() == 0)


def _as_tensor(t, name: str, dims: tuple[int, ...], sparse: bool = False) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch tensor, got {type(t).__name__}")
    if t.layout != torch.strided:
        if not sparse:
            raise TypeError(f"{name} must be dense")
        if t.dim() != 2:
            raise ValueError(f"a sparse {name} must be 2-D (one matrix shared by the batch), got {tuple(t.shape)}")
        if t.requires_grad:
            raise ValueError(f"a sparse {name} cannot require grad (gradients flow to dense matrices only)")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
        t = t.coalesce() if t.layout == torch.sparse_coo else t.to_sparse_coo().coalesce()
        if not bool(torch.isfinite(t.values()).all()):
            raise ValueError(f"{name} contains NaN or inf")
        return t
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t.detach()).all()):
        raise ValueError(f"{name} contains NaN or inf")
    return t


def _batch_of(t: Tensor, unbatched_dims: int) -> int:
    return t.shape[0] if t.dim() > unbatched_dims else 1


def quadprog(P: Tensor, q: Tensor, G: Tensor | None = None, h: Tensor | None = None, A: Tensor | None = None,
             b: Tensor | None = None, *, method: str = "ipm", tol: float = 1e-8, max_iters: int | None = None,
             time_limit: float | None = None, differentiable: bool | Implicit | None = None,
             **settings) -> QuadprogResult:
    """Solve a batch of convex QPs ``min 1/2 x^T P x + q^T x  s.t.  G x <= h,  A x = b`` (qpth's arguments).

    Args:
        P: ``(B, n, n)`` or ``(n, n)`` (shared), positive semidefinite; its symmetric part
            ``(P + P^T) / 2`` is used (so the gradient with respect to P is symmetric, as qpth's).
        q: ``(B, n)`` or ``(n,)``.
        G: ``(B, m, n)`` or ``(m, n)``, or a 2-D sparse ``(m, n)`` tensor shared by the batch (with
            ``"pdhg"`` / ``"r2hpdhg"``; it cannot require grad); None or an empty tensor: no inequalities.
        h: ``(B, m)`` or ``(m,)``, with G.
        A: ``(B, p, n)`` or ``(p, n)``, or sparse as G; None or an empty tensor: no equalities.
        b: ``(B, p)`` or ``(p,)``, with A.
        method: the solver of the Lagrangian's saddle point: ``"ipm"`` (default; Mehrotra's interior-point
            method, `saddle.solvers.interior_point`, 10-30 dense factorizations), ``"pdhg"`` or ``"r2hpdhg"``
            (first-order, matrix-free: for larger QPs).
        tol: the relative KKT error (the largest of the relative primal residual, dual residual and duality
            gap: `QuadraticProgram`) each instance is solved to, before the polish.
        max_iters: the iteration limit per instance (None: 100 000, or
            `saddle.solvers.interior_point.MAX_ITERS` for ``"ipm"``).
        time_limit: seconds of wall time (None: none).
        differentiable: gradients with respect to every argument that requires grad: None (default)
            when one does, True / False, or a `saddle.implicit.Implicit` of options.
        **settings: the solver's settings.

    Returns:
        a `QuadprogResult` (its ``x`` is qpth's output, ``(B, n)``). The batch size B is the largest
        leading dimension of the batched arguments; unbatched ones are shared. Without constraints
        the QP is solved in closed form, ``x = -P^{-1} q`` (P must then be positive definite).
    """
    P, q = _as_tensor(P, "P", (2, 3)), _as_tensor(q, "q", (1, 2))
    n = q.shape[-1]
    if P.shape[-2:] != (n, n):
        raise ValueError(f"P must be (n, n) = ({n}, {n}) to match q {tuple(q.shape)}, got {tuple(P.shape)}")
    rows = []
    for M, r, mname, rname in ((A, b, "A", "b"), (G, h, "G", "h")):
        if _given(M) != _given(r):
            raise ValueError(f"give {mname} and {rname} together (None or empty tensors for neither)")
        if not _given(M):
            rows.append(None)
            continue
        M, r = _as_tensor(M, mname, (2, 3), sparse=True), _as_tensor(r, rname, (1, 2))
        if M.shape[-1] != n:
            raise ValueError(f"{mname} must have n = {n} columns, got shape {tuple(M.shape)}")
        if r.shape[-1] != M.shape[-2]:
            raise ValueError(f"{rname} must have {M.shape[-2]} entries (the rows of {mname}), got {tuple(r.shape)}")
        rows.append((M, r))
    present = [P, q, *(x for pair in rows if pair for x in pair)]
    dtype = q.dtype
    if any(t.dtype != dtype or t.device != q.device for t in present):
        raise ValueError("P, q, G, h, A and b must share one dtype and device")
    B = max([_batch_of(P, 2), _batch_of(q, 1)] + [_batch_of(M, 2) for pair in rows if pair for M in pair[:1]]
            + [_batch_of(r, 1) for pair in rows if pair for r in pair[1:]])
    for t, name, unbatched in ((P, "P", 2), (q, "q", 1)):
        if _batch_of(t, unbatched) not in (1, B):
            raise ValueError(f"{name} has batch size {t.shape[0]}, but another argument has {B}")
    how = as_differentiation(any(t.requires_grad for t in present) if differentiable is None else differentiable)
    P3 = P if P.dim() == 3 else P.unsqueeze(0)
    P3 = 0.5 * (P3 + P3.mT)  # the objective only sees P's symmetric part; so do its gradients (as in qpth)
    q2 = q.expand(B, n) if q.dim() == 2 else q.unsqueeze(0).expand(B, n)
    if rows == [None, None]:
        return _unconstrained(P3, q2, B)
    Ks, ds, n_eq = [], [], 0
    for i, pair in enumerate(rows):
        if pair is None:
            continue
        M, r = pair
        Ks.append(M if M.dim() == 3 or M.layout != torch.strided else M.unsqueeze(0))
        ds.append(r.expand(B, -1) if r.dim() == 2 else r.unsqueeze(0).expand(B, -1))
        n_eq += M.shape[-2] if i == 0 else 0
    if any(K.layout != torch.strided for K in Ks):
        if method == "ipm":
            raise ValueError("method='ipm' factorizes dense KKT matrices: pass G and A dense, or use method='pdhg' "
                             "or 'r2hpdhg' with sparse ones")
        if any(K.layout == torch.strided and K.shape[0] != 1 for K in Ks):
            raise ValueError("a sparse G or A needs the other one shared by the batch (2-D) as well")
        K = torch.cat([K[0].to_sparse_coo() if K.layout == torch.strided else K for K in Ks], 0).coalesce()
    else:
        Bk = max(K.shape[0] for K in Ks)
        for K in Ks:
            if K.shape[0] not in (1, B):
                raise ValueError(f"a constraint matrix has batch size {K.shape[0]}, but another argument has {B}")
        K = torch.cat([K.expand(Bk, -1, -1) for K in Ks], 1)
    d = torch.cat(ds, -1)
    m = d.shape[-1]
    y_lo = torch.cat([torch.full((1, n_eq), -math.inf), torch.zeros(1, m - n_eq)], -1).to(d)
    objective = Quadratic(P3, q2)
    problem = QuadraticProgram(K, torch.zeros(B, n, dtype=dtype, device=q.device),
                              torch.zeros(B, m, dtype=dtype, device=q.device), g=objective, h_conj=Linear(d),
                              X=Reals(), Y=Box(y_lo, math.inf), name=f"quadratic program (m={m}, n={n})")
    if method == "ipm":
        settings.setdefault("check_every", 5)
    if max_iters is None:
        max_iters = IPM_MAX_ITERS if method == "ipm" else 100_000
    sol = solve(problem, method, tol=tol, measure="kkt", max_iters=max_iters, time_limit=time_limit,
                differentiable=how if how is not None else False, **settings)
    x, y = sol.z
    fun = sol.value if sol.value is not None else objective.value(x)  # (= f(x, y) at a solution)
    status = torch.tensor([_SCIPY_STATUS[s] for s in sol.statuses], device=q.device)
    return QuadprogResult(x=x, eqlin=y[:, :n_eq], ineqlin=y[:, n_eq:], fun=fun, status=status, success=status == 0,
                          nit=sol.iterations, solution=sol, adjoint=sol.adjoint)


def _unconstrained(P: Tensor, q: Tensor, B: int) -> QuadprogResult:
    """``x = -P^{-1} q`` (differentiable through torch.linalg.solve); status 4 where P is singular."""
    n = q.shape[-1]
    _, info = torch.linalg.cholesky_ex(P.detach())
    ok = (info == 0).expand(B)
    x = -torch.linalg.solve(P.expand(B, n, n), q.unsqueeze(-1)).squeeze(-1)
    x = torch.where(ok.unsqueeze(-1), x, torch.nan)
    fun = Quadratic(P, q).value(x)
    empty = q.new_zeros(B, 0)
    status = torch.where(ok, 0, 4)
    return QuadprogResult(x=x, eqlin=empty, ineqlin=empty, fun=fun, status=status, success=status == 0,
                          nit=torch.zeros(B, dtype=torch.int64, device=q.device))
