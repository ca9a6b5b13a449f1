"""Simple convex terms g(x) for structured problems ``min_x max_y g(x) + <Kx, y> - h*(y)``.

A term acts on one ``(B, n)`` block and knows its value, gradient, the
conjugate-type maximum over a set,

    ``conj(v, C) = sup_{u in C} <v, u> - g(u)``,   shape ``(B,)``,

and the prox step over a set, ``prox(v, t, C) = argmin_{u in C} g(u) + |u - v|^2 / (2t)``,
in closed form where one exists. Duality gaps of bilinear and quadratic games
are built from it. Terms: `Zero`, `Linear` (``c^T x``) and `Quadratic`
(``1/2 x^T P x + c^T x``, with P dense ``(B, n, n)`` or diagonal ``(B, n)``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .sets import Box, ConstraintSet, Reals

__all__ = ["Term", "Zero", "Linear", "Quadratic"]


def _column(step):
    """A float or ``(B,)`` step, shaped to broadcast against ``(B, n)``."""
    return step.unsqueeze(-1) if isinstance(step, Tensor) and step.dim() == 1 else step


class Term:
    """A convex function of one ``(B, n)`` block."""

    def value(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def grad(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        """``sup_{u in domain} <v, u> - self(u)``, shape ``(B,)``.

        Raises ``NotImplementedError`` where no closed form is implemented.
        """
        raise NotImplementedError(f"no closed-form conjugate of {type(self).__name__} over {domain!r}")

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        """``argmin_{u in domain} term(u) + |u - v|^2 / (2 step)``, shape ``(B, n)``.

        ``step`` is a float or a ``(B,)`` tensor. Raises ``NotImplementedError``
        where no closed form is implemented.
        """
        raise NotImplementedError(f"no closed-form prox of {type(self).__name__} over {domain!r}")

    def lipschitz(self) -> Tensor | float:
        """A Lipschitz constant of the gradient: a float or ``(B,)`` tensor."""
        return 0.0

    def strongly_convex(self) -> bool:
        """Whether the term is strongly convex in every instance."""
        return False


class Zero(Term):
    """g(x) = 0."""

    def value(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])

    def grad(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.support(v)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        return domain.project(v)


class Linear(Term):
    """g(x) = <c, x>; ``c`` has shape ``(B, n)`` or ``(1, n)``."""

    def __init__(self, c: Tensor):
        if not isinstance(c, Tensor) or c.dim() != 2:
            raise ValueError("Linear: c must be a (B, n) tensor")
        self.c = c

    def value(self, x: Tensor) -> Tensor:
        return (self.c * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return self.c.expand_as(x)

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.support(v - self.c)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        return domain.project(v - _column(step) * self.c)


class Quadratic(Term):
    """g(x) = 1/2 x^T P x + <c, x> with P symmetric positive semidefinite.

    Args:
        P: ``(B, n, n)`` (dense) or ``(B, n)`` (diagonal); a leading 1 is shared.
        c: ``None`` or ``(B, n)``.
    """

    def __init__(self, P: Tensor, c: Tensor | None = None):
        if not isinstance(P, Tensor) or P.dim() not in (2, 3):
            raise ValueError("Quadratic: P must be a (B, n, n) or (B, n) (diagonal) tensor")
        if P.dim() == 3 and P.shape[-1] != P.shape[-2]:
            raise ValueError(f"Quadratic: P must be square, got shape {tuple(P.shape)}")
        self.P = P
        self.c = c
        self.diagonal = P.dim() == 2
        self._cholesky: Tensor | None = None  # of P, computed on first use by `conj`
        self._largest_eigenvalue: Tensor | None = None  # of P, likewise

    def _Px(self, x: Tensor) -> Tensor:
        if self.diagonal:
            return self.P * x
        return torch.matmul(self.P, x.unsqueeze(-1)).squeeze(-1)

    def value(self, x: Tensor) -> Tensor:
        out = 0.5 * (x * self._Px(x)).sum(-1)
        return out if self.c is None else out + (self.c * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        g = self._Px(x)
        return g if self.c is None else g + self.c

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        q = v if self.c is None else v - self.c
        if self.diagonal and isinstance(domain, (Reals, Box)):
            # Separable: each coordinate maximizes q u - p u^2 / 2 over an interval.
            if (self.P <= 0).any():
                raise NotImplementedError("conjugate of a diagonal quadratic with zero curvature")
            u = domain.project(q / self.P)
            return (q * u - 0.5 * self.P * u * u).sum(-1)
        if not self.diagonal and type(domain) is Reals:
            if self._cholesky is None:
                self._cholesky = torch.linalg.cholesky(self.P)
            w = torch.cholesky_solve(q.unsqueeze(-1), self._cholesky).squeeze(-1)
            return 0.5 * (q * w).sum(-1)
        if not self.diagonal and isinstance(domain, Box) and (domain.bounded or self.strongly_convex()):
            if self._largest_eigenvalue is None:
                self._largest_eigenvalue = torch.linalg.eigvalsh(self.P)[..., -1]
            u = box_concave_qp(self.P, q, domain, self._largest_eigenvalue)
            return (q * u).sum(-1) - 0.5 * (u * self._Px(u)).sum(-1)
        return super().conj(v, domain)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        t = _column(step)
        w = v if self.c is None else v - t * self.c
        if self.diagonal and isinstance(domain, (Reals, Box)):
            # Separable: the box projection of the unconstrained minimizer is exact.
            return domain.project(w / (1 + t * self.P))
        if not self.diagonal and type(domain) is Reals:
            eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
            t3 = t.unsqueeze(-1) if isinstance(t, Tensor) else t
            return torch.linalg.solve(eye + t3 * self.P, w.unsqueeze(-1)).squeeze(-1)
        return super().prox(v, step, domain)

    def strongly_convex(self) -> bool:
        if self.diagonal:
            return bool((self.P > 0).all())
        return bool((torch.linalg.eigvalsh(self.P)[..., 0] > 0).all())

    def lipschitz(self) -> Tensor:
        if self.diagonal:
            return self.P.abs().amax(-1)
        return torch.linalg.eigvalsh(self.P)[..., -1]


def box_concave_qp(P: Tensor, q: Tensor, box: Box, largest_eigenvalue: Tensor, *, max_iters: int = 20_000,
                   check_every: int = 25) -> Tensor:
    """``argmax_{lo <= u <= hi} <q, u> - u^T P u / 2`` per instance, to round-off; ``(B, n)``.

    P is ``(B, n, n)`` (or ``(1, n, n)``) symmetric positive semidefinite,
    ``largest_eigenvalue`` its ``(B,)`` largest eigenvalue. Accelerated
    projected gradient ascent (FISTA with adaptive restarts) runs until the
    fixed-point residual stops decreasing; then the active bounds are fixed and
    the remaining linear system is solved exactly, which is kept per instance
    where it satisfies the KKT conditions (the active set was identified). The
    result is then the exact maximizer up to round-off. Used to evaluate exact
    duality gaps; it synchronizes with the host every ``check_every`` steps.
    """
    step = (1.0 / largest_eigenvalue.clamp_min(torch.finfo(q.dtype).tiny)).reshape(-1, 1).to(q.dtype)

    def ascent(u):
        return q - torch.matmul(P, u.unsqueeze(-1)).squeeze(-1)

    u = box.project(torch.zeros_like(q))
    w, t = u, 1.0
    scale = q.abs().amax().clamp_min(1.0)
    best = torch.inf
    for k in range(1, max_iters + 1):
        u_next = box.project(w + step * ascent(w))
        t_next = 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
        momentum = (t - 1) / t_next
        # Restart the momentum where the objective would decrease (O'Donoghue and Candes 2015).
        up = ((u_next - u) * (w - u_next)).sum(-1, keepdim=True) <= 0
        w = torch.where(up, u_next + momentum * (u_next - u), u_next)
        u, t = u_next, t_next
        if k % check_every == 0:
            res = (u - box.project(u + step * ascent(u))).abs().amax().item()
            if res <= 1e-15 * scale.item() or res >= best:
                break
            best = min(best, res)

    # Polish: fix the bounds that are active and solve the free part exactly.
    lo = box.project(torch.full_like(u, -torch.inf))
    hi = box.project(torch.full_like(u, torch.inf))
    tol = 1e-9 * (1 + u.abs())
    fixed = ((u - lo).abs() <= tol) | ((hi - u).abs() <= tol)
    u_fixed = torch.where((u - lo).abs() <= tol, lo, torch.where(fixed, hi, u))
    free = ~fixed
    n = u.shape[-1]
    pair = free.unsqueeze(-1) & free.unsqueeze(-2)
    eye = torch.eye(n, dtype=u.dtype, device=u.device).expand_as(pair)
    M = torch.where(pair, P.expand(u.shape[0], n, n), torch.zeros((), dtype=u.dtype, device=u.device))
    M = M + torch.where(fixed.unsqueeze(-1), eye, torch.zeros_like(eye))
    coupling = torch.matmul(P, torch.where(fixed, u_fixed, torch.zeros_like(u)).unsqueeze(-1)).squeeze(-1)
    rhs = torch.where(free, q - coupling, u_fixed)
    solved, info = torch.linalg.solve_ex(M, rhs.unsqueeze(-1))
    solved = solved.squeeze(-1)
    g = ascent(solved)
    kkt_tol = 1e-10 * scale
    ok = (info == 0) & torch.isfinite(solved).all(-1)
    ok &= ((solved >= lo - 1e-12) & (solved <= hi + 1e-12)).all(-1)
    ok &= torch.where(free, g.abs() <= kkt_tol, torch.ones_like(free)).all(-1)
    ok &= torch.where(fixed & (u_fixed == lo), g <= kkt_tol, torch.ones_like(free)).all(-1)
    ok &= torch.where(fixed & (u_fixed == hi) & (lo != hi), g >= -kkt_tol, torch.ones_like(free)).all(-1)
    return torch.where(ok.unsqueeze(-1), solved.clamp(min=lo, max=hi), u)
