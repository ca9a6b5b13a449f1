"""A small presolve for `saddle.linprog`: what needs no iterations, removed before the solve and restored after.

The LP is ``min c^T x  s.t.  K x [=, <=] d,  lo <= x <= hi`` with ``K = [A_eq; A_ub]`` (the first
``n_eq`` rows equalities), a batch of B instances sharing the sparsity structure of K. Removed are

- **fixed variables** (``lo_j == hi_j``): substituted, ``d <- d - K[:, j] lo_j``;
- **empty rows** (no nonzero left once fixed variables are substituted): dropped when
  ``0 = d_i`` (equality) or ``0 <= d_i`` (inequality) holds, else the instance is infeasible, with the
  unit ray on that row as its Farkas certificate (``y_i = -sign(d_i)`` for an equality, ``y_i = 1`` for
  an inequality: ``K^T y = 0`` on the free columns and ``-<d, y> > 0``);
- **empty columns** (a variable in no constraint): fixed at the bound minimizing ``c_j x_j`` (0 clipped to
  the bounds when ``c_j = 0``). Where that bound is infinite the instance is unbounded *if the rest is
  feasible*, with the primal ray ``-sign(c_j) e_j``: the caller solves the rest and decides.

An LP without constraints is all empty columns: solved here in closed form. Free rows (no bound on
``K_i x``) cannot occur in scipy's form, where every row has a finite right-hand side. A column or row is
removed only where it is removable for every instance of the batch, so the reduced LP is again one batch
with one (sparse or dense) K. Everything is float64.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .lp_certificates import unit

__all__ = ["Presolved", "presolve", "postsolve", "embed", "ROW_TOL"]

#: Relative tolerance of the feasibility test of an empty row: ``|d_i|`` (equality) or ``-d_i``
#: (inequality) above ``ROW_TOL * (1 + |b_i| + sum_j |K_ij x_j|)`` over the fixed variables is infeasible.
ROW_TOL = 1e-9


class Presolved(NamedTuple):
    """The reduced LP and what postsolve needs; tensors are ``(B, ...)`` unless said otherwise.

    Attributes:
        c, K, d, n_eq, lo, hi: the reduced LP (``K`` ``(Bk, m_r, n_r)`` dense or ``(m_r, n_r)`` sparse;
            ``lo``, ``hi`` ``(1 or B, n_r)``).
        rows: ``(m_r,)`` int64, the kept rows among the m rows of the original K.
        cols: ``(n_r,)`` int64, the kept columns among the n.
        x_removed: ``(B, n)`` the values of the removed variables (0 at the kept ones).
        infeasible: ``(B,)`` an empty row no x satisfies.
        dual_ray: ``(B, m)`` its unit Farkas ray (zeros elsewhere).
        unbounded: ``(B,)`` an empty column whose cost decreases toward an infinite bound.
        primal_ray: ``(B, n)`` the unit ray along those columns (zeros elsewhere).
    """

    c: Tensor
    K: Tensor
    d: Tensor
    n_eq: int
    lo: Tensor
    hi: Tensor
    rows: Tensor
    cols: Tensor
    x_removed: Tensor
    infeasible: Tensor
    dual_ray: Tensor
    unbounded: Tensor
    primal_ray: Tensor

    @property
    def empty(self) -> bool:
        """Whether nothing is left to solve (every variable removed)."""
        return self.cols.numel() == 0


def _times(K: Tensor, x: Tensor) -> Tensor:
    """``K x`` per instance, ``(B, m)``, for a dense ``(Bk, m, n)`` or a sparse ``(m, n)`` K and x ``(B, n)``."""
    if K.layout != torch.strided:
        return torch.sparse.mm(K, x.T).T
    return (K @ x.unsqueeze(-1)).squeeze(-1)


def _used(K: Tensor, free: Tensor) -> tuple[Tensor, Tensor]:
    """``(rows, cols)`` bool: which rows have a nonzero in a ``free`` column (in some instance), which columns
    have a nonzero (in some instance)."""
    m, n = K.shape[-2:]
    if K.layout != torch.strided:
        i, j = K.indices()[:, K.values() != 0]
        cols = torch.bincount(j, minlength=n) > 0
        rows = torch.bincount(i[free[j]], minlength=m) > 0
        return rows, cols
    nonzero = (K != 0).any(0)
    return (nonzero & free).any(-1), nonzero.any(0)


def _select(K: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    """The submatrix of K on ``rows`` and ``cols`` (int64 positions), same layout."""
    if K.layout != torch.strided:
        return K.index_select(0, rows).index_select(1, cols).coalesce()
    return K[:, rows][:, :, cols]


def presolve(c: Tensor, K: Tensor, d: Tensor, n_eq: int, lo: Tensor, hi: Tensor) -> Presolved:
    """Remove fixed variables, empty rows and empty columns (see the module docstring).

    Args:
        c: ``(B, n)`` costs. K: ``(Bk, m, n)`` dense (Bk in 1, B) or ``(m, n)`` sparse COO.
        d: ``(B, m)`` right-hand sides, the first ``n_eq`` rows equalities.
        lo, hi: ``(1 or B, n)`` finite or infinite bounds with ``lo <= hi``, ``lo < inf``, ``hi > -inf``.
    """
    B, n = c.shape
    lo_b, hi_b = lo.expand(B, n), hi.expand(B, n)
    fixed = (lo_b == hi_b).all(0)
    x_fixed = torch.where(fixed, lo_b, 0.0)
    d = d - _times(K, x_fixed)
    row_used, col_used = _used(K, ~fixed)
    empty_col = ~col_used & ~fixed

    # empty columns: the bound that minimizes c_j x_j; an infinite one makes the LP unbounded if feasible
    zero_clipped = torch.minimum(torch.maximum(torch.zeros_like(lo_b), lo_b), hi_b)
    best = torch.where(c > 0, lo_b, torch.where(c < 0, hi_b, zero_clipped))
    ray = empty_col & torch.isinf(best) & (c != 0)
    x_removed = torch.where(fixed, x_fixed, torch.where(empty_col, torch.where(ray, zero_clipped, best), 0.0))
    primal_ray = unit(torch.where(ray, -torch.sign(c), 0.0))

    # empty rows: 0 = d_i or 0 <= d_i, to a tolerance relative to the substituted terms
    scale = 1 + d.abs() + _times(K.abs(), x_fixed.abs())
    is_eq = torch.arange(d.shape[1], device=d.device) < n_eq
    violated = torch.where(is_eq, d.abs(), -d) > ROW_TOL * scale
    bad_row = ~row_used & violated
    dual_ray = unit(torch.where(bad_row, torch.where(is_eq, -torch.sign(d), 1.0), 0.0))

    rows, cols = row_used.nonzero().squeeze(-1), (~fixed & ~empty_col).nonzero().squeeze(-1)
    return Presolved(
        c=c[:, cols], K=_select(K, rows, cols), d=d[:, rows], n_eq=int(row_used[:n_eq].sum()),
        lo=lo[:, cols], hi=hi[:, cols], rows=rows, cols=cols, x_removed=x_removed,
        infeasible=bad_row.any(-1), dual_ray=dual_ray, unbounded=ray.any(-1), primal_ray=primal_ray,
    )


def postsolve(pre: Presolved, x: Tensor, y: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The point ``(x, y)`` of the reduced LP, ``(B, n_r)`` and ``(B, m_r)``, in the original LP's coordinates.

    Removed variables take their presolved values (``x_removed``); removed rows get the multiplier 0
    (they are not active: an empty row that holds constrains nothing). The result is ``(B, n)``, ``(B, m)``.
    """
    x_full = pre.x_removed.to(x.dtype).index_copy(1, pre.cols, x)
    y_full = torch.zeros(y.shape[0], m, dtype=y.dtype, device=y.device).index_copy(1, pre.rows, y)
    return x_full, y_full


def embed(pre: Presolved, dual_ray: Tensor, primal_ray: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """Certificates of the reduced LP in the original coordinates (zeros on removed rows and columns).

    A Farkas ray of the reduced LP is one of the original: its ``K^T y`` vanishes on empty columns and is
    absorbed by the bounds of fixed ones, whose contribution ``y^T K x_fixed`` was moved into ``d``. A primal
    ray is one too: removed columns are fixed or decoupled.
    """
    B = dual_ray.shape[0]
    y = torch.zeros(B, m, dtype=dual_ray.dtype, device=dual_ray.device).index_copy(1, pre.rows, dual_ray)
    x = torch.zeros_like(pre.x_removed, dtype=primal_ray.dtype).index_copy(1, pre.cols, primal_ray)
    return y, x
