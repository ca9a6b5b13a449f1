"""The result of a solve: `Solution`, the per-instance `Status`, and `SolveError`."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor

from .point import Point

__all__ = ["Status", "Solution", "SolveError"]


class Status(IntEnum):
    """Why an instance stopped. ``Status.CONVERGED == 0`` like scipy's success code."""

    RUNNING = -1
    CONVERGED = 0
    MAX_ITERS = 1
    BUDGET_EXHAUSTED = 2
    DIVERGED = 3
    STOPPED = 4
    INFEASIBLE = 5
    UNBOUNDED = 6
    PRECISION_LOSS = 7
    TIME_LIMIT = 8

    @property
    def message(self) -> str:
        """A sentence saying what the status means, e.g. "the convergence measure reached the tolerance"."""
        return _MESSAGES[self]


_MESSAGES = {
    Status.RUNNING: "still running",
    Status.CONVERGED: "the convergence measure reached the tolerance",
    Status.MAX_ITERS: "the iteration limit was reached before the tolerance",
    Status.BUDGET_EXHAUSTED: "the operator-call budget was used up before the tolerance",
    Status.DIVERGED: "the iterates became non-finite or the residual grew without bound",
    Status.STOPPED: "the callback asked to stop",
    Status.INFEASIBLE: "a certificate of (primal) infeasibility was found",
    Status.UNBOUNDED: "a certificate of unboundedness (dual infeasibility) was found",
    Status.PRECISION_LOSS: ("the problem's dtype cannot resolve the tolerance: the measure met it but not when "
                            "re-checked in float64 at the returned point, or it stalled near the dtype's floor; "
                            "solve in a higher precision or loosen the tolerance"),
    Status.TIME_LIMIT: "the time limit was reached before the tolerance",
}


@dataclass
class Solution:
    """What `saddle.solve` returns: the final points and how each instance ended.

    Attributes:
        z: the solution point, a tuple of ``(B, n_i)`` tensors: the last iterate,
            or the average for solvers that average (see each solver).
        status: ``(B,)`` int64 tensor of `Status` codes.
        iterations: ``(B,)`` int64, iterations each instance ran.
        operator_calls: ``(B,)`` int64, evaluations of F each instance used
            (measure evaluations at checks are not counted).
        residual: ``(B,)`` natural residual ``|z - P_Z(z - F(z))|`` at ``z``.
        gap: ``(B,)`` exact duality gap at ``z``, or None if not computable.
        distance: ``(B,)`` distance to the reference solution, or None. It is
            tracked when the problem's reference is unique and already at hand
            (read ``problem.reference`` before solving to compute a lazy one,
            such as the HiGHS solutions of matrix games), or with
            ``measure="distance"``.
        history: dict of tensors recorded at every check: ``"iteration"`` (T,),
            ``"time"`` (T,), and (T, B) rows of ``"operator_calls"``,
            ``"residual"`` and, when available, ``"gap"`` and ``"distance"``.
        state: the solver's final state.
        solver: the solver instance that ran.
        wall_time: seconds spent in the solve.
        value: with ``solve(..., differentiable=...)``, the objective ``f(x, y)`` of a saddle problem at
            ``z``, ``(B,)``, on the autograd graph of the problem's data (by the envelope theorem,
            ``d value / d theta = df/dtheta`` at the solution, without a linear solve, unless the sets'
            own parameters require grad); None otherwise.
        adjoint: with ``differentiable=True``, the `saddle.implicit.Adjoint` record of the implicit
            differentiation (its per-instance ``status``, the method); None otherwise.
    """

    z: Point
    status: Tensor
    iterations: Tensor
    operator_calls: Tensor
    residual: Tensor
    gap: Tensor | None = None
    distance: Tensor | None = None
    history: dict[str, Tensor] = field(default_factory=dict)
    state: Any = None
    solver: Any = None
    wall_time: float = 0.0
    value: Tensor | None = None
    adjoint: Any = None

    @property
    def x(self) -> Tensor:
        """The first block (the minimizing player of a saddle problem)."""
        return self.z[0]

    @property
    def y(self) -> Tensor:
        """The second block (the maximizing player of a saddle problem)."""
        if len(self.z) < 2:
            raise AttributeError("this solution has a single block; use .z[0] or .x")
        return self.z[1]

    @property
    def counts(self) -> dict[str, Tensor]:
        """Every per-instance count the solver keeps, ``{name: (B,) int64}``.

        The state fields whose names end in ``_calls`` (``operator_calls``,
        and e.g. ``primal_gradient_calls`` or ``coupling_gradient_calls`` for
        solvers that count oracles separately), and those whose names start
        with ``bits_`` or ``bytes_`` (the bits the compressed distributed solvers send, and the
        bytes their transport measured).
        """
        fields = getattr(self.state, "_fields", ())
        return {f: getattr(self.state, f) for f in fields
                if f.endswith("_calls") or f.startswith("bits_") or f.startswith("bytes_")}

    @property
    def success(self) -> Tensor:
        """``(B,)`` bool: which instances converged."""
        return self.status == Status.CONVERGED

    @property
    def statuses(self) -> list[Status]:
        """The status of each instance as a `Status` member."""
        return [Status(int(s)) for s in self.status.tolist()]

    def status_counts(self) -> dict[str, int]:
        """How many instances ended with each status, e.g. ``{"CONVERGED": 63, "MAX_ITERS": 1}``."""
        counts: dict[str, int] = {}
        for s in self.statuses:
            counts[s.name] = counts.get(s.name, 0) + 1
        return counts

    @property
    def message(self) -> str:
        """The count of instances per status, e.g. ``"62 CONVERGED, 2 MAX_ITERS"``."""
        return ", ".join(f"{n} {name}" for name, n in self.status_counts().items())

    def __repr__(self) -> str:
        def rng(t: Tensor | None) -> str:
            if t is None:
                return "n/a"
            fmt = "d" if not t.is_floating_point() else ".3g"
            lo, hi = t.min().item(), t.max().item()
            return f"{lo:{fmt}}" if lo == hi else f"[{lo:{fmt}}, {hi:{fmt}}]"

        solver = type(self.solver).__name__ if self.solver is not None else "?"
        return (
            f"Solution(solver={solver}, batch={self.status.numel()}, status: {self.message};\n"
            f"         iterations {rng(self.iterations)}, operator calls {rng(self.operator_calls)},\n"
            f"         residual {rng(self.residual)}, gap {rng(self.gap)}, distance {rng(self.distance)}, "
            f"{self.wall_time:.3g} s)"
        )


class SolveError(RuntimeError):
    """Raised by ``solve(..., throw=True)`` when an instance did not converge; ``.solution`` holds the result."""

    def __init__(self, solution: Solution):
        self.solution = solution
        super().__init__(f"not every instance converged: {solution.message}")


def empty_status(batch_size: int, device) -> Tensor:
    return torch.full((batch_size,), int(Status.RUNNING), dtype=torch.int64, device=device)
