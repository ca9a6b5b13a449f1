"""The solver protocol and the registry of solvers by name.

A solver is a frozen dataclass of settings with two methods (optimistix style):

- ``init(problem, z0) -> state``: the solver's state, a NamedTuple whose
  tensors all have the batch as first dimension. Every state has a field
  ``operator_calls``, a ``(B,)`` int64 count of evaluations of F so far.
- ``step(problem, z, state) -> (z, state)``: one iteration on every instance.

and optionally ``output(problem, z, state) -> point`` (the point a solve
returns; an average for solvers that average, ``z`` by default).

Only `saddle.solve` loops. It freezes finished instances by selecting the old
``z`` and state with `torch.where`, so ``step`` must be a pure function of its
arguments, must not mutate them, and must not synchronize with the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from torch import Tensor

from ..point import Point

__all__ = ["Solver", "register", "solver_names", "get_solver"]

_REGISTRY: dict[str, type] = {}


class Solver:
    """Base class of solvers (subclasses are frozen dataclasses)."""

    #: The registered name, e.g. ``"extragradient"``.
    name: str = ""

    def init(self, problem, z0: Point) -> Any:
        """The solver's initial state at ``z0`` (blocks ``(B, n_i)``): a NamedTuple of ``(B, ...)`` tensors.

        It has an ``operator_calls`` field, a ``(B,)`` int64 count of the
        evaluations of F made so far (including any made here).
        """
        raise NotImplementedError

    def step(self, problem, z: Point, state: Any) -> tuple[Point, Any]:
        """One iteration on every instance: ``(z, state) -> (z+, state+)``, pure and without host syncs."""
        raise NotImplementedError

    def output(self, problem, z: Point, state: Any) -> Point:
        """The point a solve reports: ``z`` unless the solver averages."""
        return z

    def check(self, problem) -> None:
        """Raise ``ValueError`` if the solver cannot be applied to ``problem``."""

    def terminal_status(self, problem, z: Point, state: Any) -> Tensor | None:
        """Outcomes the solver detects itself, as ``(B,)`` `Status` codes (``RUNNING`` where none).

        Called by the driver at every check (it may synchronize with the host);
        e.g. `PDHG` reports ``INFEASIBLE`` / ``UNBOUNDED`` from certificates.
        None (the default) means nothing to report.
        """
        return None


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a solver available as ``solve(problem, solver=name)``."""

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"solver name {name!r} is already registered")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def solver_names() -> list[str]:
    """Every registered solver name, sorted."""
    return sorted(_REGISTRY)


def get_solver(solver: str | Solver, **settings) -> Solver:
    """A solver instance from a registered name and its settings (or an instance, unchanged)."""
    if isinstance(solver, Solver):
        if settings:
            raise TypeError(f"settings {sorted(settings)} given together with a solver instance; "
                            "pass them to the solver's constructor instead")
        return solver
    if not isinstance(solver, str):
        raise TypeError(f"solver must be a name or a Solver instance, got {type(solver).__name__}")
    if solver not in _REGISTRY:
        raise ValueError(f"unknown solver {solver!r}; registered solvers: {', '.join(solver_names())}")
    cls = _REGISTRY[solver]
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(settings) - fields
    if unknown:
        raise TypeError(f"solver {solver!r} has no setting(s) {sorted(unknown)}; its settings are {sorted(fields)}")
    return cls(**settings)
