"""The extragradient family: extragradient, mirror-prox, EG+ and anchored extragradient.

All four take the same two-call step from a base point ``b`` (``b = z``, or
``b = z + beta_k (z_0 - z)`` for the anchored method)::

    w    = prox_b(eta F(z))            # extrapolation
    z+   = prox_b(alpha eta F(w))      # update

where ``prox_b(g)`` is the Euclidean projection ``P_Z(b - g)`` (extragradient,
EG+, anchored EG) or the Bregman prox step of the sets' geometry (mirror-prox:
multiplicative weights on entropic simplices). With a `Backtracking` step each
instance accepts or rejects its own trial (see `saddle.stepsize`).

Operator calls: one at ``init`` (``F(z_0)``), then ``F(w)`` at every trial and
``F(z+)`` at every accepted step (it is the next step's ``F(z)``), so an
iteration with a constant step costs exactly 2.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import Point, axpy, dot, lerp, sub, where
from ..stepsize import Backtracking, adapt, initial_step_size, local_lipschitz_test, step_rule
from .base import Solver, register

__all__ = ["ExtragradientState", "Extragradient", "MirrorProx", "EGPlus", "AnchoredEG"]


class ExtragradientState(NamedTuple):
    """State of the extragradient family; tensors are ``(B, ...)``.

    Attributes:
        Fz: ``F(z)`` at the current point.
        step_size: ``(B,)`` the current (trial) step eta.
        operator_calls: ``(B,)`` evaluations of F so far.
        steps: ``(B,)`` accepted steps k.
        anchor: the anchor ``z_0`` (anchored EG) or None.
        weighted_sum: ``sum_i eta_i w_i`` over accepted steps (when averaging) or None.
        weight: ``(B,)`` ``sum_i eta_i`` (when averaging) or None.
    """

    Fz: Point
    step_size: Tensor
    operator_calls: Tensor
    steps: Tensor
    anchor: Point | None = None
    weighted_sum: Point | None = None
    weight: Tensor | None = None


def _init(solver, problem, z0: Point, c: float, *, anchored: bool = False) -> ExtragradientState:
    eta, _ = initial_step_size(_step_setting(solver, problem), problem, c, solver=solver.name)
    B = problem.batch_size
    average = getattr(solver, "average", False)
    return ExtragradientState(
        Fz=problem.F(z0),
        step_size=eta,
        operator_calls=torch.ones(B, dtype=torch.int64, device=problem.device),
        steps=torch.zeros(B, dtype=torch.int64, device=problem.device),
        anchor=z0 if anchored else None,
        weighted_sum=tuple(torch.zeros_like(b) for b in z0) if average else None,
        weight=torch.zeros(B, dtype=z0[0].dtype, device=problem.device) if average else None,
    )


def _step(solver, problem, z: Point, state: ExtragradientState, *, c: float, alpha: float = 1.0,
          bregman: bool = False, descent_test: bool = False) -> tuple[Point, ExtragradientState]:
    """One trial of the shared step; see the module docstring."""
    domain, eta = problem.domain, state.step_size
    rule = step_rule(_step_setting(solver, problem), problem)
    if state.anchor is not None:
        beta = 1.0 / (state.steps + 2).to(eta.dtype)
        base = lerp(z, state.anchor, beta)
    else:
        base = z
    step = eta.unsqueeze(-1)  # a column, made once for the four prox steps
    if bregman:
        w = problem.bregman_prox(base, state.Fz, step)
        Fw = problem.F(w)
        z_next = problem.bregman_prox(base, Fw, alpha * step)
    else:
        w = problem.prox(base, state.Fz, step)
        Fw = problem.F(w)
        z_next = problem.prox(base, Fw, alpha * step if alpha != 1.0 else step)

    if rule is None:  # a constant step: every trial is accepted, nothing to select
        accept = None
    elif descent_test:
        # The mirror-prox descent condition (Nemirovski 2004):
        # eta <F(w) - F(z), w - z+> <= D(w, z) + D(z+, w).
        lhs = eta * dot(sub(Fw, state.Fz), sub(w, z_next))
        accept = lhs <= domain.bregman(w, z) + domain.bregman(z_next, w)
    else:
        accept = local_lipschitz_test(eta, Fw, state.Fz, w, z, c)

    if accept is None:
        F_next, taken, calls, steps = problem.F(z_next), eta, 2, 1
    else:
        z_next = where(accept, z_next, z)
        F_next = where(accept, problem.F(z_next), state.Fz)
        taken, calls, steps = torch.where(accept, eta, torch.zeros_like(eta)), 1 + accept.long(), accept.long()
    weighted_sum, weight = state.weighted_sum, state.weight
    if weighted_sum is not None:
        weighted_sum = axpy(taken, w, weighted_sum)
        weight = weight + taken
    new_state = ExtragradientState(
        Fz=F_next,
        step_size=adapt(eta, accept, rule),
        operator_calls=state.operator_calls + calls,
        steps=state.steps + steps,
        anchor=state.anchor,
        weighted_sum=weighted_sum,
        weight=weight,
    )
    return z_next, new_state


def _step_setting(solver, problem):
    """The solver's step setting; mirror-prox on entropic sets defaults to backtracking."""
    if solver.step_size is None and isinstance(solver, MirrorProx) and any(
        s.geometry != "euclidean" for s in problem.domain
    ):
        return Backtracking()
    return solver.step_size


def _average(z: Point, state: ExtragradientState) -> Point:
    if state.weighted_sum is None:
        return z
    has = (state.weight > 0).unsqueeze(-1)
    denom = state.weight.clamp_min(torch.finfo(state.weight.dtype).tiny).unsqueeze(-1)
    return tuple(torch.where(has, s / denom, zi) for s, zi in zip(state.weighted_sum, z))


@register("extragradient", category="first-order", calls_per_step=2, calls_at_init=1, converges_on=("monotone",))
@dataclass(frozen=True)
class Extragradient(Solver):
    """Extragradient (Korpelevich 1976) with Euclidean projections.

    ``w = P_Z(z - eta F(z))``,  ``z+ = P_Z(z - eta F(w))``.

    Converges for monotone Lipschitz F with ``eta < 1/L``; the eta-weighted
    average of the ``w`` iterates has duality gap O(1/k) on compact sets; linear
    convergence on strongly monotone F.

    Args:
        step_size: a float, a ``(B,)`` tensor, a `Backtracking` rule, or None
            (``0.9 / L`` if L is known, else backtracking on the descent
            condition ``eta <F(w) - F(z), w - z+> <= |w - z|^2/2 + |z+ - w|^2/2``).
        average: report the eta-weighted average of the extrapolated points
            (the ergodic iterate of the O(1/k) gap bound) instead of the last iterate.
    """

    step_size: object = None
    average: bool = False

    #: eta <= c / L.
    c = 0.9

    def init(self, problem, z0):
        return _init(self, problem, z0, self.c)

    def step(self, problem, z, state):
        return _step(self, problem, z, state, c=self.c, descent_test=True)

    def output(self, problem, z, state):
        return _average(z, state)


@register("mirror_prox", category="first-order", calls_per_step=2, calls_at_init=1, converges_on=("monotone",))
@dataclass(frozen=True)
class MirrorProx(Solver):
    """Mirror-prox (Nemirovski 2004): extragradient with Bregman prox steps.

    ``w = argmin_u eta <F(z), u> + D(u, z)``,  ``z+ = argmin_u eta <F(w), u> + D(u, z)``,
    with D the Bregman divergence of each set's geometry: on a
    ``Simplex(geometry="entropic")`` the steps are multiplicative weights
    ``u ∝ z exp(-eta g)`` and D is the KL divergence, which makes the O(1/k) gap
    bound depend on log n instead of n. On Euclidean sets it is `Extragradient`.

    Args:
        step_size: as for `Extragradient`; with entropic sets the default is
            backtracking (starting from ``0.9 / L``), because the Lipschitz
            constant that matters is the one in the l1/l-inf norms.
        average: report the eta-weighted average of the ``w`` iterates.
    """

    step_size: object = None
    average: bool = False

    c = 0.9

    def init(self, problem, z0):
        return _init(self, problem, z0, self.c)

    def step(self, problem, z, state):
        return _step(self, problem, z, state, c=self.c, bregman=True, descent_test=True)

    def output(self, problem, z, state):
        return _average(z, state)


@register("eg_plus", category="first-order", calls_per_step=2, calls_at_init=1, converges_on=("monotone",))
@dataclass(frozen=True)
class EGPlus(Solver):
    """EG+ (Diakonikolas, Daskalakis and Jordan 2021) for weak-MVI / negatively comonotone F.

    ``w = P_Z(z - eta F(z))``,  ``z+ = P_Z(z - alpha eta F(w))``, alpha in (0, 1].

    Under the weak Minty condition ``<F(z), z - z*> >= rho |F(z)|^2`` with
    ``rho > -1/(8L)``, ``eta = 1/L`` and ``alpha = 1/2`` give
    ``min_i |F(w_i)|^2 = O(1/k)``. The smaller update step is what lets it
    converge where extragradient (alpha = 1) spirals out.

    Args:
        step_size: extrapolation step eta (default ``1 / L``, or backtracking on
            ``eta |F(w) - F(z)| <= |w - z|``).
        alpha: the update step as a fraction of eta.
    """

    step_size: object = None
    alpha: float = 0.5

    c = 1.0

    def check(self, problem):
        if not (0 < self.alpha <= 1):
            raise ValueError(f"eg_plus: alpha must be in (0, 1], got {self.alpha!r}")

    def init(self, problem, z0):
        return _init(self, problem, z0, self.c)

    def step(self, problem, z, state):
        return _step(self, problem, z, state, c=self.c, alpha=self.alpha)


@register("anchored_eg", category="first-order", calls_per_step=2, calls_at_init=1, converges_on=("monotone",),
          rate="sublinear")
@dataclass(frozen=True)
class AnchoredEG(Solver):
    """Extra anchored gradient, EAG-C (Yoon and Ryu 2021, arXiv 2102.07922).

    With ``beta_k = 1 / (k + 2)`` and the anchor ``z_0``::

        w    = P_Z(z_k + beta_k (z_0 - z_k) - eta F(z_k))
        z+   = P_Z(z_k + beta_k (z_0 - z_k) - eta F(w))

    For monotone L-Lipschitz F on R^n and ``eta <= 1/(8L)``,
    ``|F(z_k)|^2 <= 4 (1 + eta L + eta^2 L^2) / (eta^2 (1 + eta L)) |z_0 - z*|^2 / (k + 1)^2``
    (260 L^2 |z_0 - z*|^2 / (k + 1)^2 at eta = 1/(8L)): an O(1/k) last-iterate
    residual, optimal among first-order methods. On constrained sets the steps
    are projected (no rate is claimed there).

    Args:
        step_size: eta (default ``1/(8L)``, or backtracking on
            ``eta |F(w) - F(z)| <= |w - z| / 8``).
    """

    step_size: object = None

    c = 1.0 / 8.0

    def init(self, problem, z0):
        return _init(self, problem, z0, self.c, anchored=True)

    def step(self, problem, z, state):
        return _step(self, problem, z, state, c=self.c)
