"""Convex terms g(x) of structured problems ``min_x max_y g(x) + phi(x, y) - h(y)``.

A term acts on one ``(B, n)`` block and knows, where it has them, its value,
its gradient (smooth terms), the conjugate-type maximum over a set,

    ``conj(v, C) = sup_{u in C} <v, u> - g(u)``,   shape ``(B,)``,

and the prox step over a set, ``prox(v, t, C) = argmin_{u in C} g(u) + |u - v|^2 / (2t)``,
in closed form where one exists. Duality gaps of bilinear and quadratic games
are built from ``conj``; primal-dual and proximal-gradient steps from ``prox``
and ``grad``.

Terms: `Zero`, `Linear` (``c^T x``), `Quadratic` (``1/2 x^T P x + c^T x``,
P dense ``(B, n, n)`` or diagonal ``(B, n)``), `L1` (``sum_i w_i |x_i|``),
`Indicator` (0 on a set, +inf outside), `Smooth` (any differentiable
function, gradients by autograd) and `Sum` of terms. `Term.split` separates
the smooth part (used through its gradient) from the prox-friendly part.

Closed forms are chosen by the capabilities of the set (`ConstraintSet.separable`,
``unconstrained``), never by its type, so a set of one's own that declares them
gets them. Terms declare their own: ``smooth``, ``separable`` (a sum of
functions of single coordinates, so its prox in a diagonal metric acts
coordinate by coordinate: diagonal preconditioning keeps primal-dual steps
exact) and ``linear`` (``<c, x>`` or 0: `linear_coefficient` gives c).
``select(index)`` gives the term of the selected instances (`saddle.selection`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .point import column
from .selection import as_selection, check_selectable, replace, select_function, take
from .sets import Box, ConstraintSet

__all__ = ["Term", "Zero", "Linear", "Quadratic", "L1", "Indicator", "Smooth", "Sum", "box_concave_qp"]


class Term:
    """A convex function of one ``(B, n)`` block."""

    #: Whether the term is differentiable with a Lipschitz gradient (`grad` exists).
    smooth: bool = True
    #: Whether the term is a sum of functions of single coordinates (its prox in a diagonal metric is coordinatewise).
    separable: bool = False
    #: Whether the term is linear, ``<c, x>`` (`linear_coefficient` gives c).
    linear: bool = False

    def linear_coefficient(self, like: Tensor) -> Tensor:
        """c of a linear term ``<c, x>``, broadcast to ``like`` ``(B, n)`` (linear terms only)."""
        raise TypeError(f"{type(self).__name__} is not a linear term")

    def select(self, index) -> "Term":
        """The term of the selected instances (``index``: see `saddle.selection`).

        Per-instance data are indexed, shared data kept. The default returns
        the term itself, right for terms without per-instance data; it raises
        ``TypeError`` for a term holding per-instance tensors that does not
        implement `select`.
        """
        check_selectable(self, as_selection(index))
        return self

    def value(self, x: Tensor) -> Tensor:
        """The term ``g(x)`` per instance: ``(B, n) -> (B,)``."""
        raise NotImplementedError

    def grad(self, x: Tensor) -> Tensor:
        """The gradient ``grad g(x)``: ``(B, n) -> (B, n)`` (smooth terms only)."""
        raise NotImplementedError(f"{type(self).__name__} is not differentiable")

    def split(self) -> tuple["Term", "Term"]:
        """``(smooth part, prox-friendly part)``: the term is their sum.

        Methods that linearize smooth parts and take prox steps on the rest
        (LPD, ALPD) use this; smooth terms return ``(self, Zero())``.
        """
        return (self, Zero()) if self.smooth else (Zero(), self)

    def strong_convexity(self) -> Tensor | float:
        """A strong-convexity modulus: a float or ``(B,)`` tensor (0 if none)."""
        return 0.0

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

    def prox_step(self, v: Tensor, grad: Tensor, step: Tensor, domain: ConstraintSet) -> Tensor:
        """The forward-backward step ``prox_{step term, domain}(v - step grad)``, shape ``(B, n)``.

        ``step`` is a tensor broadcasting against ``v``: ``(B, 1)`` or a diagonal ``(B, n)``.
        Linear terms fold their c into the gradient: one fused ``addcmul`` and the projection.
        """
        return self.prox(torch.addcmul(v, step, grad, value=-1), step, domain)

    def lipschitz(self) -> Tensor | float:
        """A Lipschitz constant of the gradient: a float or ``(B,)`` tensor."""
        return 0.0

    def strongly_convex(self) -> bool:
        """Whether the term is strongly convex in every instance."""
        mu = self.strong_convexity()
        return bool((torch.as_tensor(mu) > 0).all())


class Zero(Term):
    """The zero term ``g(x) = 0``: no regularization; its prox is the projection onto the domain."""

    separable = True
    linear = True

    def linear_coefficient(self, like: Tensor) -> Tensor:
        return torch.zeros_like(like)

    def value(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0])

    def grad(self, x: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.support(v)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        return domain.project(v)

    def prox_step(self, v: Tensor, grad: Tensor, step: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.project(torch.addcmul(v, step, grad, value=-1))


class Linear(Term):
    """g(x) = <c, x>; ``c`` has shape ``(B, n)`` or ``(1, n)``."""

    separable = True
    linear = True

    def __init__(self, c: Tensor):
        if not isinstance(c, Tensor) or c.dim() != 2:
            raise ValueError("Linear: c must be a (B, n) tensor")
        self.c = c

    def linear_coefficient(self, like: Tensor) -> Tensor:
        return self.c.expand_as(like)

    def select(self, index) -> "Linear":
        return replace(self, c=take(self.c, as_selection(index)))

    def value(self, x: Tensor) -> Tensor:
        return (self.c * x).sum(-1)

    def grad(self, x: Tensor) -> Tensor:
        return self.c.expand_as(x)

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.support(v - self.c)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        return domain.project(v - column(step, v) * self.c)

    def prox_step(self, v: Tensor, grad: Tensor, step: Tensor, domain: ConstraintSet) -> Tensor:
        return domain.project(torch.addcmul(v, step, grad + self.c, value=-1))


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

    @property
    def separable(self) -> bool:
        """Whether P is diagonal."""
        return self.diagonal

    def select(self, index) -> "Quadratic":
        sel = as_selection(index)
        rows = {name: take(getattr(self, name), sel) for name in ("P", "c", "_cholesky", "_largest_eigenvalue")}
        return replace(self, **rows)

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
        if self.diagonal and domain.separable:
            # Separable: each coordinate maximizes q u - p u^2 / 2 over an interval.
            if (self.P <= 0).any():
                raise NotImplementedError("conjugate of a diagonal quadratic with zero curvature")
            u = domain.project(q / self.P)
            return (q * u - 0.5 * self.P * u * u).sum(-1)
        if not self.diagonal and domain.unconstrained:
            if self._cholesky is None:
                self._cholesky = torch.linalg.cholesky(self.P)
            w = torch.cholesky_solve(q.unsqueeze(-1), self._cholesky).squeeze(-1)
            return 0.5 * (q * w).sum(-1)
        if not self.diagonal and domain.separable and (domain.bounded or self.strongly_convex()):
            if self._largest_eigenvalue is None:
                self._largest_eigenvalue = torch.linalg.eigvalsh(self.P)[..., -1]
            u = box_concave_qp(self.P, q, domain, self._largest_eigenvalue)
            return (q * u).sum(-1) - 0.5 * (u * self._Px(u)).sum(-1)
        return super().conj(v, domain)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        t = column(step, v)
        w = v if self.c is None else v - t * self.c
        if self.diagonal and domain.separable:
            # Separable: the box projection of the unconstrained minimizer is exact.
            return domain.project(w / (1 + t * self.P))
        if not self.diagonal and domain.unconstrained:
            eye = torch.eye(v.shape[-1], dtype=v.dtype, device=v.device)
            t3 = t.unsqueeze(-1) if isinstance(t, Tensor) else t
            return torch.linalg.solve(eye + t3 * self.P, w.unsqueeze(-1)).squeeze(-1)
        return super().prox(v, step, domain)

    def strong_convexity(self) -> Tensor:
        """The smallest eigenvalue of P per instance, ``(B,)``."""
        if self.diagonal:
            return self.P.amin(-1)
        return torch.linalg.eigvalsh(self.P)[..., 0]

    def lipschitz(self) -> Tensor:
        if self.diagonal:
            return self.P.abs().amax(-1)
        return torch.linalg.eigvalsh(self.P)[..., -1]


class L1(Term):
    """g(x) = sum_i w_i |x_i| with weights ``w >= 0``: a float, ``(B,)`` or ``(B, n)``.

    Not smooth; its prox on a box is soft-thresholding followed by clipping
    (exact, the problem being separable).
    """

    smooth = False
    separable = True

    def __init__(self, weight=1.0):
        if isinstance(weight, bool) or not isinstance(weight, (int, float, Tensor)):
            raise TypeError(f"L1: weight must be a float or a tensor, got {type(weight).__name__}")
        w = torch.as_tensor(weight)
        if w.dim() > 2 or not torch.isfinite(w).all() or (w < 0).any():
            raise ValueError(f"L1: weight must be finite and >= 0, a float, (B,) or (B, n) tensor; got {weight!r}")
        self.weight = weight

    def select(self, index) -> "L1":
        return replace(self, weight=take(self.weight, as_selection(index)))

    def _w(self, like: Tensor):
        if isinstance(self.weight, Tensor):
            w = self.weight.to(device=like.device, dtype=like.dtype)
            return w.unsqueeze(-1) if w.dim() == 1 else w
        return float(self.weight)

    def value(self, x: Tensor) -> Tensor:
        return (self._w(x) * x.abs()).sum(-1)

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        if not domain.separable:
            return super().prox(v, step, domain)
        t = column(step, v) * self._w(v)
        return domain.project(torch.sign(v) * (v.abs() - t).clamp_min(0))

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        if not domain.separable:
            return super().conj(v, domain)
        w = self._w(v)
        w = torch.as_tensor(w, dtype=v.dtype, device=v.device).expand_as(v)
        lo = domain.project(torch.full_like(v, -torch.inf))
        hi = domain.project(torch.full_like(v, torch.inf))
        # Each coordinate maximizes v u - w |u| (concave, piecewise linear) over [lo, hi]:
        # the maximum is at 0 (clipped into the interval) or at an end point.
        def f(u):
            return torch.where(torch.isinf(u), torch.where((v - w * u.sign()) * u > 0,
                                                           torch.full_like(u, torch.inf), torch.full_like(u, -torch.inf)),
                               v * u - w * u.abs())

        zero = torch.zeros_like(v).clamp(lo, hi)
        return torch.maximum(torch.maximum(f(lo), f(hi)), f(zero)).sum(-1)


class Indicator(Term):
    """The indicator of a set: 0 on ``C``, +inf outside (use it to add a constraint to a term).

    Its prox on an unconstrained block is the projection onto ``C``; on a
    constrained block, use the block's set instead.
    """

    smooth = False

    def __init__(self, set: ConstraintSet):
        if not isinstance(set, ConstraintSet):
            raise TypeError(f"Indicator: set must be a ConstraintSet, got {type(set).__name__}")
        self.set = set

    def select(self, index) -> "Indicator":
        return replace(self, set=self.set.select(index))

    def value(self, x: Tensor) -> Tensor:
        inside = self.set.contains(x, atol=1e-9)
        return torch.where(inside, torch.zeros_like(x[..., 0]), torch.full_like(x[..., 0], torch.inf))

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        if not domain.unconstrained:
            return super().prox(v, step, domain)
        return self.set.project(v)

    def conj(self, v: Tensor, domain: ConstraintSet) -> Tensor:
        if not domain.unconstrained:
            return super().conj(v, domain)
        return self.set.support(v)


class Smooth(Term):
    """A differentiable convex function ``fn(x) -> (B,)``, its gradient by autograd.

    Args:
        fn: the function of a ``(B, n)`` block, one value per instance
            (instances must not interact: the gradient is that of ``fn(x).sum()``).
        lipschitz: a Lipschitz constant of the gradient (float or ``(B,)``), if known.
        strong_convexity: a strong-convexity modulus (float or ``(B,)``), if known.
    """

    def __init__(self, fn, *, lipschitz=None, strong_convexity=0.0):
        if not callable(fn):
            raise TypeError(f"Smooth: fn must be callable, got {type(fn).__name__}")
        for name, val in (("lipschitz", lipschitz), ("strong_convexity", strong_convexity)):
            if val is not None and (not torch.isfinite(torch.as_tensor(val)).all() or (torch.as_tensor(val) < 0).any()):
                raise ValueError(f"Smooth: {name} must be finite and >= 0, got {val!r}")
        self.fn = fn
        self._lipschitz = lipschitz
        self._mu = strong_convexity
        self._grad = torch.func.grad(lambda x: self.fn(x).sum())

    def select(self, index) -> "Smooth":
        """The term of the selected instances: ``fn.select`` if ``fn`` has one, else ``fn`` on the full batch
        with zeros in the other rows (`saddle.selection.Embedded`; needs the selection's batch size)."""
        sel = as_selection(index)
        return Smooth(select_function(self.fn, sel._replace(base=None)), lipschitz=take(self._lipschitz, sel),
                      strong_convexity=take(self._mu, sel))

    def value(self, x: Tensor) -> Tensor:
        return self.fn(x)

    def grad(self, x: Tensor) -> Tensor:
        return self._grad(x)

    def lipschitz(self):
        if self._lipschitz is None:
            raise ValueError("Smooth: this term's gradient Lipschitz constant is unknown; pass lipschitz=...")
        return self._lipschitz

    def strong_convexity(self):
        return self._mu


class Sum(Term):
    """The sum of terms; smooth if every part is. `split` gathers the smooth and the prox-friendly parts.

    A sum has at most one part that is not smooth (its prox is then the
    part's prox after a gradient step on the rest, in methods that linearize).
    """

    def __init__(self, *terms: Term):
        if not terms or not all(isinstance(t, Term) for t in terms):
            raise TypeError("Sum: every argument must be a saddle.terms.Term")
        if sum(not t.smooth for t in terms) > 1:
            raise ValueError("Sum: at most one non-smooth term (its prox is used as is)")
        self.terms = tuple(terms)
        self.smooth = all(t.smooth for t in terms)
        self.separable = all(t.separable for t in terms)

    def select(self, index) -> "Sum":
        sel = as_selection(index)
        return replace(self, terms=tuple(t.select(sel) for t in self.terms))

    def value(self, x: Tensor) -> Tensor:
        return sum(t.value(x) for t in self.terms)

    def grad(self, x: Tensor) -> Tensor:
        if not self.smooth:
            raise NotImplementedError("Sum: a non-smooth part has no gradient; use split()")
        return sum(t.grad(x) for t in self.terms)

    def split(self) -> tuple[Term, Term]:
        smooth = [t for t in self.terms if t.smooth]
        rough = [t for t in self.terms if not t.smooth]
        smooth_part = Zero() if not smooth else smooth[0] if len(smooth) == 1 else Sum(*smooth)
        return smooth_part, rough[0] if rough else Zero()

    def prox(self, v: Tensor, step, domain: ConstraintSet) -> Tensor:
        if len(self.terms) == 1:
            return self.terms[0].prox(v, step, domain)
        return super().prox(v, step, domain)

    def lipschitz(self):
        return sum(t.lipschitz() for t in self.terms if t.smooth)

    def strong_convexity(self):
        return sum(t.strong_convexity() for t in self.terms)


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
