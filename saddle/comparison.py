"""Fair side-by-side comparison of solvers on one batch of problems.

`compare` runs every solver on the same problem with the same tolerance,
measure and budget, and reports per solver the statuses, the operator calls,
the wall time, the final measure and the error against the problem's exact
reference (value error and distance). `format_table` prints the rows; the
``saddle compare`` command (`saddle.cli`) is a thin shell around both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import Tensor

from .point import norm, sub
from .solution import Solution
from .solve import solve
from .solvers.base import Solver, get_solver

__all__ = ["ComparisonRow", "compare", "check_comparison", "format_table", "has_gap", "reference_errors"]


@dataclass
class ComparisonRow:
    """One solver's result in a comparison.

    Attributes:
        solver: the label (solver name, with settings if any).
        solution: the full `Solution`.
        measure: the measure used for stopping (``"gap"`` or ``"residual"``).
        final: ``(B,)`` final values of that measure.
        value_error: ``(B,)`` ``|f(z) - v*|`` against the reference value, or None.
        distance: ``(B,)`` ``|z - z*|`` against the reference solution, or None.
    """

    solver: str
    solution: Solution
    measure: str
    final: Tensor
    value_error: Tensor | None
    distance: Tensor | None


def reference_errors(problem, z) -> tuple[Tensor | None, Tensor | None]:
    """``(value_error, distance)`` of a point against the problem's exact reference, each ``(B,)`` or None.

    The value error needs a reference value and an objective (saddle
    problems); the distance needs a reference solution that is unique.
    """
    ref = problem.reference
    if ref is None:
        return None, None
    value_error = None
    if ref.value is not None and hasattr(problem, "objective"):
        value_error = (problem.objective(z) - ref.value.to(z[0].dtype)).abs()
    distance = None
    if ref.solution is not None and ref.unique:
        distance = norm(sub(z, ref.solution))
    return value_error, distance


def has_gap(problem) -> bool:
    """Whether ``problem`` computes its exact duality gap (a comparison's default measure then; else the residual)."""
    return problem.duality_gap(problem.z0) is not None


def check_comparison(problem, solvers: Mapping[str, Solver], *, tol: float = 1e-6, measure: str | None = None,
                     max_iters: int = 10_000, check_every: int = 10, max_operator_calls: int | None = None) -> str:
    """Check that every solver can run on ``problem`` under these options, running no iteration; return the measure.

    Each solver is started as `compare` starts it and stopped at its first
    check, where `saddle.solve` has checked every option, the solver's
    conditions on the problem and the operator's output; the random states
    (torch's and the problem's) are restored after. So a comparison fails
    before its first solve, not after some.

    Args:
        problem: a batched problem (B instances).
        solvers: ``{label: Solver}``.
        tol, measure, max_iters, check_every, max_operator_calls: as in `compare`.

    Returns:
        the measure the comparison stops on: ``measure``, or by default
        ``"gap"`` where the problem computes it, else ``"residual"``.

    Raises:
        ValueError, TypeError: what `saddle.solve` raises for the first solver that cannot run.
    """
    if measure is None:
        measure = "gap" if has_gap(problem) else "residual"
    device = torch.device(problem.device)
    problem_rng = problem.rng_state() if hasattr(problem, "rng_state") else None
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            for solver in solvers.values():
                solve(problem, solver, tol=tol, measure=measure, max_iters=max_iters, check_every=check_every,
                      max_operator_calls=max_operator_calls, history=False, callback=_stop_at_first_check)
    finally:
        if problem_rng is not None:
            problem.set_rng_state(problem_rng)
    return measure


def _stop_at_first_check(progress) -> bool:
    return True


def compare(problem, solvers: Sequence[str] | Mapping[str, object], *, tol: float = 1e-6, measure: str | None = None,
            max_iters: int = 10_000, check_every: int = 10, max_operator_calls: int | None = None,
            warmup: bool = True, progress: bool = False) -> list[ComparisonRow]:
    """Run each solver on ``problem`` under the same stopping rule and collect a row per solver.

    Every solver and option is checked first (`check_comparison`), so a
    solver that cannot run on the problem fails before any solve.

    Args:
        problem: a batched problem (B instances).
        solvers: registered names, or ``{label: solver name or instance}``.
        tol: tolerance on the measure.
        measure: ``"gap"`` or ``"residual"`` (default: the gap where the
            problem can compute it, else the residual).
        max_iters: iteration limit per instance, as in `saddle.solve`.
        check_every: iterations between checks, as in `saddle.solve`.
        max_operator_calls: per-instance operator-call budget, as in `saddle.solve`.
        warmup: run each solver for two iterations first, so that one-time
            costs (kernel loading, caches) do not count in its wall time.
        progress: show a progress bar per solver.

    Returns:
        one `ComparisonRow` per solver, in order.
    """
    if not isinstance(solvers, Mapping):
        solvers = {name: name for name in solvers}
    solvers = {label: get_solver(spec) for label, spec in solvers.items()}
    stopping = dict(tol=tol, max_iters=max_iters, check_every=check_every, max_operator_calls=max_operator_calls)
    measure = check_comparison(problem, solvers, measure=measure, **stopping)
    rows = []
    for label, solver in solvers.items():
        if warmup:
            solve(problem, solver, max_iters=2, tol=0.0, check_every=1, measure=measure, history=False)
        sol = solve(problem, solver, measure=measure, progress=progress, **stopping)
        final = sol.gap if measure == "gap" else sol.residual
        value_error, distance = reference_errors(problem, sol.z)
        rows.append(ComparisonRow(label, sol, measure, final, value_error, distance))
    return rows


def _fmt(t: Tensor | None) -> str:
    if t is None:
        return "-"
    v = t.double().max().item()
    return f"{v:.2e}"


def format_table(rows: Sequence[ComparisonRow], *, title: str | None = None) -> str:
    """A fixed-width text table of comparison rows (worst instance for every measure).

    Columns: solver, status counts, median and maximum operator calls, wall
    seconds, the final measure, the value error and the distance to the
    reference (``-`` where not available).
    """
    header = ["solver", "status", "calls (median)", "calls (max)", "time [s]",
              f"final {rows[0].measure if rows else 'measure'}", "value error", "distance"]
    body = []
    for r in rows:
        sol = r.solution
        calls = sol.operator_calls.double()
        body.append([
            r.solver,
            ", ".join(f"{n} {name}" for name, n in sol.status_counts().items()),
            f"{calls.median().item():.0f}",
            f"{calls.max().item():.0f}",
            f"{sol.wall_time:.2f}",
            _fmt(r.final),
            _fmt(r.value_error),
            _fmt(r.distance),
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(header)]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths))
    out = [] if title is None else [title]
    out += [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(out)

