"""Single-call methods: optimistic GDA / Popov's past extragradient, and the reflected gradient.

Each iteration evaluates F once, at a point extrapolated with information
from the past, where extragradient evaluates it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import Point, lerp, where
from ..stepsize import adapt, initial_step_size, local_lipschitz_test, step_rule
from .base import Solver, register

__all__ = ["SingleCallState", "Optimistic", "Reflected"]


class SingleCallState(NamedTuple):
    """State of the single-call methods; tensors are ``(B, ...)``.

    Attributes:
        w_prev: the previous point at which F was evaluated.
        Fw_prev: F at ``w_prev``.
        z_prev: the previous iterate (reflected gradient) or None.
        step_size: ``(B,)`` the current (trial) step.
        operator_calls: ``(B,)`` evaluations of F so far.
        steps: ``(B,)`` accepted steps.
    """

    w_prev: Point
    Fw_prev: Point
    z_prev: Point | None
    step_size: Tensor
    operator_calls: Tensor
    steps: Tensor


@register("optimistic", category="first-order", calls_per_step=1, calls_at_init=1, converges_on=("monotone",))
@dataclass(frozen=True)
class Optimistic(Solver):
    """Optimistic GDA / Popov's past extragradient (Popov 1980; Hsieh et al. 2019).

    ``w_k = P_Z(z_k - eta F(w_{k-1}))``,  ``z_{k+1} = P_Z(z_k - eta F(w_k))``,

    one operator call per iteration (``F(w_k)``; ``F(w_{k-1})`` is reused). On
    R^n it is OGDA, ``z_{k+1} = z_k - 2 eta F(z_k) + eta F(z_{k-1})`` in the w's.
    Converges for monotone L-Lipschitz F with ``eta <= 1/(2L)``.

    Args:
        step_size: a float, ``(B,)`` tensor, `Backtracking` (test
            ``eta |F(w_k) - F(w_{k-1})| <= |w_k - w_{k-1}| / 2``) or None
            (``1/(2L)`` if L is known, else backtracking).
    """

    step_size: object = None

    c = 0.5

    def init(self, problem, z0):
        eta, _ = initial_step_size(self.step_size, problem, self.c, solver=self.name)
        B, dev = problem.batch_size, problem.device
        return SingleCallState(z0, problem.F(z0), None, eta, torch.ones(B, dtype=torch.int64, device=dev),
                               torch.zeros(B, dtype=torch.int64, device=dev))

    def step(self, problem, z, state):
        eta, rule = state.step_size, step_rule(self.step_size, problem)
        step = eta.unsqueeze(-1)  # a column, made once for the four prox steps
        w = problem.prox(z, state.Fw_prev, step)
        Fw = problem.F(w)
        z_next = problem.prox(z, Fw, step)
        if rule is None:  # a constant step: nothing to select
            return z_next, SingleCallState(w, Fw, None, eta, state.operator_calls + 1, state.steps + 1)
        accept = local_lipschitz_test(eta, Fw, state.Fw_prev, w, state.w_prev, self.c)
        return where(accept, z_next, z), SingleCallState(
            w_prev=where(accept, w, state.w_prev),
            Fw_prev=where(accept, Fw, state.Fw_prev),
            z_prev=None,
            step_size=adapt(eta, accept, rule),
            operator_calls=state.operator_calls + 1,
            steps=state.steps + accept.long(),
        )


@register("reflected", category="first-order", calls_per_step=1, calls_at_init=0, converges_on=("monotone",))
@dataclass(frozen=True)
class Reflected(Solver):
    """Malitsky's projected reflected gradient method (Malitsky 2015).

    ``z_{k+1} = P_Z(z_k - eta F(2 z_k - z_{k-1}))``, one operator call per
    iteration, for monotone L-Lipschitz F with ``eta < (sqrt(2) - 1) / L``.
    F is evaluated at the reflected point ``2 z_k - z_{k-1}``, which may lie
    outside Z, so F must be defined on the whole space.

    Args:
        step_size: a float, ``(B,)`` tensor, `Backtracking` (test
            ``eta |F(w_k) - F(w_{k-1})| <= (sqrt(2) - 1) |w_k - w_{k-1}|``) or
            None (``0.41 / L`` if L is known, else backtracking).
    """

    step_size: object = None

    c = 0.41

    def init(self, problem, z0):
        eta, _ = initial_step_size(self.step_size, problem, self.c, solver=self.name)
        B, dev = problem.batch_size, problem.device
        zeros = torch.zeros(B, dtype=torch.int64, device=dev)
        return SingleCallState(z0, tuple(torch.zeros_like(b) for b in z0), z0, eta, zeros, zeros)

    def step(self, problem, z, state):
        eta, rule = state.step_size, step_rule(self.step_size, problem)
        w = lerp(state.z_prev, z, 2.0)
        Fw = problem.F(w)
        z_next = problem.prox(z, Fw, eta.unsqueeze(-1))
        if rule is None:  # a constant step: nothing to select
            return z_next, SingleCallState(w, Fw, z, eta, state.operator_calls + 1, state.steps + 1)
        else:
            # The first step has no previous evaluation to compare with.
            accept = (state.steps == 0) | local_lipschitz_test(eta, Fw, state.Fw_prev, w, state.w_prev, self.c)
        return where(accept, z_next, z), SingleCallState(
            w_prev=where(accept, w, state.w_prev),
            Fw_prev=where(accept, Fw, state.Fw_prev),
            z_prev=where(accept, z, state.z_prev),
            step_size=adapt(eta, accept, rule),
            operator_calls=state.operator_calls + 1,
            steps=state.steps + accept.long(),
        )
