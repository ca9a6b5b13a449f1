"""Step-size rules: constant (float or per-instance ``(B,)`` tensor) and per-instance backtracking.

Every solver states its step condition as ``eta <= c / L`` for a constant c
from its convergence theorem (``c = 0.9`` for extragradient, just inside its
``eta < 1/L``; ``1/2`` for Popov's method; ...). With ``step_size=None`` a solver uses ``c / L`` when the problem
knows its Lipschitz constant L, and `Backtracking` otherwise.

`Backtracking` estimates the local Lipschitz constant instead: a trial step
``eta`` is accepted when ``eta |F(w) - F(w')| <= c |w - w'|`` for the two points
``w, w'`` at which the solver evaluated F (the solver's own test may be
sharper). A rejected instance keeps its point, shrinks ``eta`` and retries at
its next iteration, so every instance backtracks on its own and the batch never
waits: no host synchronization is needed. An accepted step grows ``eta`` by
``growth`` so the estimate can follow L down as well as up.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import torch
from torch import Tensor

__all__ = ["StepSize", "Constant", "Backtracking", "initial_step_size"]


class StepSize:
    """Base class of step-size rules."""


@dataclass(frozen=True)
class Constant(StepSize):
    """A fixed step: a float, or a ``(B,)`` tensor with one step per instance."""

    value: float | Tensor

    def __post_init__(self):
        _check_positive_step("step_size", self.value)


@dataclass(frozen=True)
class Backtracking(StepSize):
    """Per-instance backtracking on the local Lipschitz constant (see the module docstring).

    Args:
        initial: the first trial step (float or ``(B,)``); default ``c / L`` if L
            is known, else 1.
        shrink: factor applied to ``eta`` after a rejected trial, in (0, 1).
        growth: factor applied after an accepted step, >= 1.
    """

    initial: float | Tensor | None = None
    shrink: float = 0.5
    growth: float = 1.2

    def __post_init__(self):
        from .solvers._validate import check_number

        if self.initial is not None:
            _check_positive_step("Backtracking.initial", self.initial)
        check_number("", "Backtracking.shrink", self.shrink, low=0, high=1)
        check_number("", "Backtracking.growth", self.growth, low=1, include_low=True)


def _check_positive_step(name: str, value) -> None:
    # saddle.solvers imports this module: the shared checks are imported when first used.
    from .solvers._validate import STEP, check_positive

    check_positive("", name, value, allow_none=False, expected=STEP)


def initial_step_size(step_size, problem, c: float, *, solver: str) -> tuple[Tensor, Backtracking | None]:
    """Resolve a solver's ``step_size`` setting to a ``(B,)`` tensor of steps.

    Args:
        step_size: None, a float, a ``(B,)`` tensor, `Constant` or `Backtracking`.
        problem: the problem (for B, device, dtype and its Lipschitz constant).
        c: the solver's theoretical constant in ``eta <= c / L``.
        solver: the solver's name, for error messages.

    Returns:
        ``(eta, rule)``: the initial steps ``(B,)`` on the problem's device and
        dtype, and the `Backtracking` rule or None for a constant step.
    """
    L = problem.lipschitz()
    if step_size is None:
        step_size = Constant(c / L) if L is not None else Backtracking()
    if isinstance(step_size, (Real, Tensor)) and not isinstance(step_size, bool):
        step_size = Constant(step_size)
    from .solvers._validate import positive_steps

    if isinstance(step_size, Constant):
        return positive_steps(solver, "step_size", step_size.value, problem), None
    if isinstance(step_size, Backtracking):
        initial = step_size.initial
        if initial is None:
            initial = (c / L) if L is not None else 1.0
        return positive_steps(solver, "Backtracking.initial", initial, problem), step_size
    raise TypeError(f"{solver}: step_size must be None, a positive number, a (B,) tensor, Constant or "
                    f"Backtracking, got {type(step_size).__name__}")


def adapt(eta: Tensor, accept: Tensor, rule: Backtracking | None) -> Tensor:
    """The next trial steps: grown where accepted, shrunk where rejected (constant without a rule)."""
    if rule is None:
        return eta
    return torch.where(accept, eta * rule.growth, eta * rule.shrink)


def step_rule(step_size, problem) -> Backtracking | None:
    """The backtracking rule a ``step_size`` setting implies (None for a constant step)."""
    if isinstance(step_size, Backtracking):
        return step_size
    if step_size is None and problem.lipschitz() is None:
        return Backtracking()
    return None


def local_lipschitz_test(eta: Tensor, Fa, Fb, a, b, c: float) -> Tensor:
    """``eta |F(a) - F(b)| <= c |a - b|`` per instance, shape ``(B,)`` (points as tuples)."""
    dF = torch.sqrt(sum((u - v).square().sum(-1) for u, v in zip(Fa, Fb)))
    dz = torch.sqrt(sum((u - v).square().sum(-1) for u, v in zip(a, b)))
    return eta * dF <= c * dz
