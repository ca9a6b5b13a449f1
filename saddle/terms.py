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
