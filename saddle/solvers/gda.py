"""Gradient descent-ascent: simultaneous and alternating.

Simultaneous GDA is the projected forward step ``z+ = P_Z(z - eta F(z))``. It
converges linearly on mu-strongly monotone L-Lipschitz F for ``eta < 2 mu / L^2``
(fastest near ``mu / L^2``) and diverges on the bilinear ``f = x y`` for every
``eta > 0``: the teaching example of why the extragradient family exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import Point
from ..stepsize import Backtracking, Constant, initial_step_size
from .base import Solver, register

__all__ = ["GDAState", "GDA", "AlternatingGDA"]


class GDAState(NamedTuple):
    """Attributes: ``Fz`` (F at z, or None for alternating GDA), ``step_size`` (B,), ``operator_calls`` (B,)."""

    Fz: Point | None
    step_size: Tensor
    operator_calls: Tensor


def _gda_step_size(solver, problem) -> Tensor:
    if isinstance(solver.step_size, Backtracking):
        raise TypeError(f"{solver.name} has no backtracking rule: its step condition eta < 2 mu / L^2 "
                        "involves the strong monotonicity mu; pass a float or a (B,) tensor")
    step = solver.step_size
    if step is None:
        L, mu = problem.lipschitz(), problem.strong_monotonicity()
        if L is None:
            raise ValueError(f"{solver.name}: step_size is required, since {problem.name} has no known Lipschitz "
                             "constant")
        step = Constant(mu / L**2) if mu is not None else Constant(0.5 / L)
    eta, _ = initial_step_size(step, problem, 1.0, solver=solver.name)
    return eta


@register("gda", category="first-order", calls_per_step=1, calls_at_init=1, converges_on=("strongly monotone",))
@dataclass(frozen=True)
class GDA(Solver):
    """Simultaneous gradient descent-ascent ``z+ = P_Z(z - eta F(z))`` (Arrow, Hurwicz and Uzawa 1958).

    The projected forward step of the VI (the "Arrow-Hurwicz" method of
    *Studies in Linear and Non-Linear Programming*, 1958). Linear convergence
    on mu-strongly monotone L-Lipschitz F for ``eta < 2 mu / L^2``; divergence
    on ``f = x y`` for every ``eta > 0``.

    Args:
        step_size: a float or ``(B,)`` tensor; default ``mu / L^2`` when the
            problem knows mu and L, else ``0.5 / L`` (no guarantee without
            strong monotonicity).

    One operator call per iteration (plus one at ``init``).
    """

    step_size: object = None

    def init(self, problem, z0):
        B = problem.batch_size
        return GDAState(problem.F(z0), _gda_step_size(self, problem),
                        torch.ones(B, dtype=torch.int64, device=problem.device))

    def step(self, problem, z, state):
        z_next = problem.prox(z, state.Fz, state.step_size)
        return z_next, GDAState(problem.F(z_next), state.step_size, state.operator_calls + 1)


@register("alternating_gda", category="first-order", calls_per_step=2, calls_at_init=0,
          converges_on=("strongly monotone",))
@dataclass(frozen=True)
class AlternatingGDA(Solver):
    """Alternating (Gauss-Seidel) gradient descent-ascent (Bailey, Gidel and Piliouras, COLT 2020).

    The blocks move in turn, each against the others' latest values; for a
    saddle problem ``x+ = P_X(x - eta grad_x f(x, y))``, then
    ``y+ = P_Y(y + eta grad_y f(x+, y))``. On ``f = x y`` its iterates stay on a
    bounded orbit (the iteration matrix has determinant 1): it cycles instead of
    diverging, and does not converge (Bailey, Gidel and Piliouras, "Finite
    regret and cycles with fixed step-size via alternating gradient
    descent-ascent", 2020; Gidel et al., "Negative momentum for improved game
    dynamics", 2019).

    Args:
        step_size: as for `GDA`.

    One operator call per block per iteration.
    """

    step_size: object = None

    def init(self, problem, z0):
        B = problem.batch_size
        return GDAState(None, _gda_step_size(self, problem), torch.zeros(B, dtype=torch.int64, device=problem.device))

    def step(self, problem, z, state):
        z = list(z)
        for i in range(len(z)):
            Fi = problem.F(tuple(z))[i]
            z[i] = problem.block_prox(i, z[i], Fi, state.step_size)
        return tuple(z), GDAState(None, state.step_size, state.operator_calls + len(z))
