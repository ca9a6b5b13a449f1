"""The solver protocol and the registry of solvers by name.

A solver is a frozen dataclass of settings with two methods (optimistix style):

- ``init(problem, z0) -> state``: the solver's state, a NamedTuple whose
  tensors all have the batch as first dimension. Every state has a field
  ``operator_calls``, a ``(B,)`` int64 count of evaluations of F so far.
- ``step(problem, z, state) -> (z, state)``: one iteration on every instance.

and optionally ``output(problem, z, state) -> point`` (the point a solve
returns; an average for solvers that average, ``z`` by default).

What a solver is, and what theory promises for it, is class-level metadata
(`Solver.category`, `Solver.converges_on`, `Solver.calls_per_step`, ...): the
conformance checks (`saddle.testing.check_solver`), the docs' solver table
(`solver_table`) and the API page read it from there, so a new solver is one
class with its metadata and nothing else to edit.

Only `saddle.solve` loops. It freezes finished instances by selecting the old
``z`` and state with `torch.where`, so ``step`` must be a pure function of its
arguments, must not mutate them, and must not synchronize with the host.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

from torch import Tensor

from ..point import Point

__all__ = ["Solver", "register", "solver_names", "get_solver", "unregister", "CATEGORIES", "PROBLEM_CLASSES",
           "METADATA", "solver_table"]

#: The values of `Solver.category`.
CATEGORIES = ("first-order", "primal-dual", "competitive", "sharpness", "stochastic", "distributed")

#: The problem classes `Solver.converges_on` names (a problem family lists those it belongs to):
#: monotone Lipschitz VIs; strongly monotone ones; convex-strongly-concave composite problems
#: ``g(x) + phi(x, y) - h(y)`` with h strongly convex; unconstrained bilinear games; linear programs.
PROBLEM_CLASSES = ("monotone", "strongly monotone", "convex-strongly-concave", "bilinear", "linear program")

_REGISTRY: dict[str, type] = {}


class Solver:
    """Base class of solvers (subclasses are frozen dataclasses)."""

    #: The registered name, e.g. ``"extragradient"``.
    name: str = ""

    # -- metadata: what the solver is and what theory promises (read by saddle.testing and the docs)

    #: One of `CATEGORIES`, e.g. ``"first-order"``.
    category: ClassVar[str] = ""
    #: Evaluations of F per ``step`` (what ``operator_calls`` adds each iteration), or None where the
    #: count is not a constant (restart checks, per-sample or per-round counts, gradients of parts).
    calls_per_step: ClassVar[int | None] = None
    #: Evaluations of F made by ``init``, or None as for `calls_per_step`.
    calls_at_init: ClassVar[int | None] = None
    #: Whether ``output`` reports an average of the iterates (with the default settings).
    averages: ClassVar[bool] = False
    #: The `PROBLEM_CLASSES` on which theory promises convergence to a solution (the conformance
    #: suite checks it against the exact reference there); empty when the method has no VI guarantee.
    converges_on: ClassVar[tuple[str, ...]] = ()
    #: ``"linear"`` where the promised convergence reaches 1e-9 in a few thousand iterations on the
    #: conformance problems, ``"sublinear"`` where it is O(1/k) or O(1/k^2) (then the suite checks an
    #: averaging solver's distance to 1e-5 and leaves a last-iterate one to its rate test).
    rate: ClassVar[str] = "linear"
    #: Whether ``step`` reads tensors on the host (a documented exception, such as a conjugate-gradient
    #: loop's early exit or a sampled index): the no-host-sync check is skipped.
    host_reads: ClassVar[bool] = False

    def init(self, problem, z0: Point) -> Any:
        """The solver's initial state at ``z0`` (blocks ``(B, n_i)``): a NamedTuple of ``(B, ...)`` tensors.

        It has an ``operator_calls`` field, a ``(B,)`` int64 count of the
        evaluations of F made so far (including any made here).
        """
        raise NotImplementedError

    def step(self, problem, z: Point, state: Any) -> tuple[Point, Any]:
        """One iteration on every instance: ``(z, state) -> (z+, state+)``, pure and without host syncs."""
        raise NotImplementedError

    def warm_state(self, problem, z0: Point, previous_state: Any) -> Any:
        """The state to start from at ``z0`` given the final state of a solve of a nearby problem of the same shape.

        `saddle.solve(..., warm_start=solution)` calls it with ``solution.z`` and
        ``solution.state``. The default ignores ``previous_state`` (``init(problem, z0)``);
        solvers with adapted parameters (PDHG's step size and primal weight) reuse them.
        """
        return self.init(problem, z0)

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


#: The metadata `register` may set: the class attributes of `Solver` under "metadata".
METADATA = ("category", "calls_per_step", "calls_at_init", "averages", "converges_on", "rate", "host_reads")


def register(name: str, **metadata) -> Callable[[type], type]:
    """Class decorator: make a solver available as ``solve(problem, solver=name)``, with its metadata.

    ``metadata`` sets the class attributes `Solver` documents (``category``,
    ``calls_per_step``, ``calls_at_init``, ``averages``, ``converges_on``,
    ``rate``, ``host_reads``); what is not given is inherited. For example
    ``@register("optimistic", category="first-order", calls_per_step=1,
    calls_at_init=1, converges_on=("monotone",))``.
    """
    _check_metadata(name, metadata)

    def wrap(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"solver name {name!r} is already registered")
        for key, value in metadata.items():
            setattr(cls, key, value)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def _check_metadata(name: str, metadata: dict) -> None:
    unknown = set(metadata) - set(METADATA)
    if unknown:
        raise TypeError(f"register({name!r}): unknown metadata {sorted(unknown)}; the metadata are {list(METADATA)}")
    if "category" in metadata and metadata["category"] not in CATEGORIES:
        raise ValueError(f"register({name!r}): category must be one of {CATEGORIES}, got {metadata['category']!r}")
    if not set(metadata.get("converges_on", ())) <= set(PROBLEM_CLASSES):
        raise ValueError(f"register({name!r}): converges_on must name classes of {PROBLEM_CLASSES}, "
                         f"got {metadata['converges_on']!r}")
    if metadata.get("rate", "linear") not in ("linear", "sublinear"):
        raise ValueError(f"register({name!r}): rate must be 'linear' or 'sublinear', got {metadata['rate']!r}")


def unregister(name: str) -> None:
    """Remove a registered solver (e.g. one a test registered for its duration); unknown names raise ``ValueError``."""
    if name not in _REGISTRY:
        raise ValueError(f"unregister: no solver is registered as {name!r}")
    del _REGISTRY[name]


def solver_table() -> str:
    """A Markdown table of every registered solver's metadata, one row per name (the docs render it)."""
    def count(n):
        return "varies" if n is None else str(n)

    rows = ["| name | class | category | calls per step | calls at init | averages | converges on |",
            "|---|---|---|---|---|---|---|"]
    for name in solver_names():
        cls = _REGISTRY[name]
        rows.append(f"| `{name}` | `{cls.__name__}` | {cls.category} | {count(cls.calls_per_step)} | "
                    f"{count(cls.calls_at_init)} | {'yes' if cls.averages else 'no'} | "
                    f"{', '.join(cls.converges_on) or '-'} |")
    return "\n".join(rows)


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
