"""Conformance checks for solvers: the library's own test suite, for anyone's solver.

In the spirit of scikit-learn's ``check_estimator``::

    from saddle.testing import check_solver
    report = check_solver(MySolver(step_size=0.1))   # AssertionError naming each failed check
    print(report)                                     # which checks hold, which were skipped and why

The checks (`CHECKS`, each a function ``check(solver, family)`` that raises
``AssertionError`` naming what failed, or `SkipCheck` with the reason it does
not apply):

- ``metadata``: the class metadata (`saddle.Solver.category`, ...) is well formed
  and the solver is a frozen dataclass;
- ``converges``: on every family in a class the solver's ``converges_on`` names,
  a solve reaches the family's exact reference (HiGHS values, closed forms,
  linear solves) to the suite's tolerances;
- ``batch_equals_loop``: a batched solve equals the loop of single-instance
  solves (iterates to 1e-12, counts and iterations exactly);
- ``stopped_instances_stay``: an instance that has stopped stays bitwise unchanged
  while the others go on;
- ``exact_counts``: ``operator_calls`` is ``calls_at_init + k calls_per_step``,
  and so is an independent count of F's evaluations;
- ``no_mutation``: ``init`` and ``step`` leave their inputs (and the problem's
  start) untouched;
- ``no_host_syncs``: ``step`` makes no tensor-to-host conversion (unless the
  solver declares ``host_reads``);
- ``resume``: a solve resumed from a checkpoint is bit-identical to an
  uninterrupted one.

Applicability comes from the solver itself: a check is skipped, with the
solver's own message, where ``solver.check(problem)`` or ``solver.init`` raises.
`check_set` does the same for a `saddle.ConstraintSet` (`SET_CHECKS`: the
projection is one, non-expansive, its JVP matches finite differences,
``select`` takes rows, a ``separable`` set acts coordinate by coordinate).
`parametrize_with_checks` turns the checks into pytest cases; `assert_solution`
compares a `saddle.Solution` with a problem's reference, naming the measure
that failed. This module does not import pytest (only `parametrize_with_checks`
does, when called).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import Tensor

from saddle import problems as _problems

from . import compress
from .operator import Operator
from .problem import VIProblem
from .sets import ConstraintSet
from .solvers.base import CATEGORIES, PROBLEM_CLASSES, Solver, get_solver, register, unregister
from .solution import Status

__all__ = [
    "Family", "FAMILIES", "CHECKS", "SETTINGS", "SkipCheck", "CheckResult", "Report",
    "check_solver", "parametrize_with_checks", "assert_solution", "conformance_solver", "registered",
    "applicable_problem", "representative",
    "instance", "CountingOperator", "counting", "count_host_syncs",
    "sharpness_quadratic", "dro_problem", "distributed_problem",
    "SET_CHECKS", "check_set", "set_classes",
]


class SkipCheck(Exception):
    """Raised by a check that does not apply; the message says why."""


# -- single instances and counted operators -------------------------------------------------------

def instance(problem, i: int):
    """Instance i of a batched problem as a problem of batch size 1 (`saddle.VIProblem.select`)."""
    return problem.select(i)


class CountingOperator(Operator):
    """Wraps an operator and counts how many times it is evaluated (``calls``)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.inner(z)

    def lipschitz(self):
        return self.inner.lipschitz()


def counting(problem):
    """The problem with its operator wrapped in a `CountingOperator` (returned as the second value)."""
    op = CountingOperator(problem.operator)
    problem.operator = op
    return problem, op


_CONVERSIONS = ("item", "__bool__", "tolist", "__int__", "__float__", "numpy")


@contextlib.contextmanager
def count_host_syncs():
    """Count tensor-to-host conversions (``.item()``, ``bool(t)``, ``.tolist()``, ...) in the block: ``{"syncs": n}``."""
    counts = {"syncs": 0}
    originals = {name: getattr(torch.Tensor, name) for name in _CONVERSIONS}

    def counted(name):
        def call(self, *args, **kwargs):
            counts["syncs"] += 1
            return originals[name](self, *args, **kwargs)
        return call

    for name in _CONVERSIONS:
        setattr(torch.Tensor, name, counted(name))
    try:
        yield counts
    finally:
        for name, fn in originals.items():
            setattr(torch.Tensor, name, fn)


# -- problem families -----------------------------------------------------------------------------

def sharpness_quadratic(batch_size=3, *, adaptive=False, rho=None, index=None, device=None):
    """L(w) = 1/2 w^T H w with H SPD (eigenvalues in [1, 4]) per instance; instance ``index`` alone if given."""
    gen = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(batch_size, 5, 5, dtype=torch.float64, generator=gen))
    H = Q @ torch.diag_embed(torch.linspace(1.0, 4.0, 5, dtype=torch.float64).expand(batch_size, 5)) @ Q.mT
    w0 = torch.randn(batch_size, 5, dtype=torch.float64, generator=gen)
    rho = torch.tensor([0.05, 0.2, 0.5], dtype=torch.float64)[:batch_size] if rho is None else rho
    if index is not None:
        H, w0, rho = H[index:index + 1], w0[index:index + 1], rho[index:index + 1]
    H, w0, rho = (t.to(device) for t in (H, w0, rho))
    return _problems.get("sharpness", loss=lambda w: 0.5 * (w.unsqueeze(-2) @ H @ w.unsqueeze(-1))[..., 0, 0],
                         w0=w0, rho=rho, adaptive=adaptive)


def dro_problem(**kw):
    """A small batch of spectral-risk DRO problems (a finite sum of 24 samples, three instances)."""
    settings = dict(n=24, d=3, ambiguity="spectral", spectrum="superquantile", alpha=0.5, nu=0.2, mu=0.5,
                    batch_size=3, seed=5)
    settings.update(kw)
    return _problems.get("dro", **settings)


def distributed_problem(batch_size=3, **kw):
    """A bilinear game split over 3 workers, each a finite sum of 4 samples (three instances)."""
    kw.setdefault("samples", 4)
    return _problems.get("distributed_bilinear", n=5, workers=3, lam=1.0, batch_size=batch_size, seed=4, **kw)


@dataclass(frozen=True)
class Family:
    """A small batch of a problem family with an exact reference, and the `PROBLEM_CLASSES` it belongs to.

    Attributes:
        name: e.g. ``"matrix_game"``.
        make: ``make(device=None) -> problem`` (same data on every call).
        classes: the problem classes of the family (matched against ``Solver.converges_on``).
        measure: how the convergence check stops and compares: ``"distance"`` (to the reference
            solution), ``"gap"`` (exact duality gap and value) or ``"kkt"`` (relative KKT error, LP objective).
        checked_for: where set, convergence is checked only for solvers that name this class (first-order
            methods converge on LPs too, but need ~10^4 iterations: too slow to check to 1e-9).
    """

    name: str
    make: Callable[..., VIProblem]
    classes: tuple[str, ...] = ()
    measure: str = "distance"
    checked_for: str | None = None

    def __call__(self, **kw) -> VIProblem:
        return self.make(**kw)



_MONOTONE, _STRONG = ("monotone",), ("monotone", "strongly monotone", "convex-strongly-concave")

FAMILIES: dict[str, Family] = {f.name: f for f in [
    Family("bilinear", functools.partial(_problems.get, "bilinear", n=6, batch_size=4, seed=1),
           _MONOTONE + ("bilinear",)),
    Family("xy", functools.partial(_problems.get, "xy"), _MONOTONE + ("bilinear",)),
    Family("matrix_game", functools.partial(_problems.get, "matrix_game", n=5, m=4, batch_size=4, seed=2),
           _MONOTONE, "gap"),
    Family("matrix_game_entropic", functools.partial(_problems.get, "matrix_game", n=5, m=4, batch_size=4, seed=2,
                                                     geometry="entropic"), _MONOTONE, "gap"),
    Family("rock_paper_scissors", functools.partial(_problems.get, "rock_paper_scissors", batch_size=2, seed=3),
           _MONOTONE, "gap"),
    Family("matching_pennies", functools.partial(_problems.get, "matching_pennies", batch_size=2, seed=4),
           _MONOTONE, "gap"),
    Family("quadratic", functools.partial(_problems.get, "quadratic", n=6, m=4, batch_size=4, seed=3), _STRONG),
    Family("quadratic_box", functools.partial(_problems.get, "quadratic", n=6, m=4, box=0.3, batch_size=3, seed=3),
           _STRONG),
    Family("linear_program", functools.partial(_problems.get, "linear_program", n=8, m_ub=6, m_eq=2, batch_size=3,
                                               seed=2), _MONOTONE + ("linear program",), "kkt", "linear program"),
    # Their guarantees are on finite sums, distributed operators and sharpness penalties: checked in
    # the library's tests (test_dro.py, test_compressed.py, test_sam.py), not against a reference here.
    Family("sharpness", sharpness_quadratic),
    Family("dro", dro_problem),
    Family("distributed", distributed_problem),
]}

#: The order in which `check_solver` looks for the family a structural check runs on (the first the
#: solver applies to); the stopped-instances check needs a family no instance solves exactly (not a box).
REPRESENTATIVE = ("quadratic_box", "quadratic", "matrix_game", "sharpness", "dro", "distributed", "linear_program")
PREFERRED = {"stopped_instances_stay": ("quadratic", "sharpness", "dro", "distributed"),
             "resume": ("matrix_game", "quadratic", "quadratic_box", "sharpness", "dro", "distributed",
                        "linear_program")}

#: Settings the registered solvers need on the conformance families (no default step, minibatches).
SETTINGS: dict[str, dict[str, Any]] = {
    "acgd": {"step_size": 0.05},  # the default 1e-3 is meant for GAN training
    "seg": {"step_size": 0.01, "minibatch": 3}, "double_step_seg": {"step_size": 0.05},
    "vr_eg": {"step_size": 0.02, "minibatch": 2}, "prospect": {"step_size": 0.01},
    # The minibatch variants of MASHA and MASHA2's partial participation.
    "masha1": {"compressor": compress.RandK(k=3), "minibatch": 2},
    "masha2": {"compressor": compress.TopK(k=3), "server_compressor": compress.TopK(k=5), "participation": 2,
               "minibatch": 3},
    "compressed_eg": {"compressor": compress.RandK(k=3), "participation": 2},
}


def conformance_solver(solver: str | Solver) -> Solver:
    """A registered solver with the settings it needs on the conformance families (an instance unchanged)."""
    return solver if isinstance(solver, Solver) else get_solver(solver, **SETTINGS.get(solver, {}))


@contextlib.contextmanager
def registered(name: str, cls: type, **metadata):
    """Register ``cls`` as ``name`` (with its ``metadata``, as `saddle.register`) for the duration of a ``with`` block."""
    register(name, **metadata)(cls)
    try:
        yield cls
    finally:
        unregister(name)


# -- the checks -----------------------------------------------------------------------------------

def applicable_problem(solver: Solver, family: Family, **kw):
    """The family's batch, or `SkipCheck` with the solver's own reason (from ``check`` or ``init``) where it does not apply."""
    problem = family(**kw)
    try:
        solver.check(problem)
        solver.init(problem, problem.z0)
    except (TypeError, ValueError) as err:
        raise SkipCheck(f"{family.name}: {err}") from None
    return problem


def _name(solver: Solver) -> str:
    return solver.name or type(solver).__name__


def _points_equal(a, b) -> bool:
    return all(torch.equal(u, v) for u, v in zip(a, b))


def check_metadata(solver: Solver, family: Family | None = None) -> None:
    """The class metadata is well formed and the solver is a frozen dataclass."""
    cls = type(solver)
    assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, \
        f"metadata: {cls.__name__} must be a frozen dataclass (solvers are immutable settings)"
    assert cls.category in CATEGORIES, f"metadata: category {cls.category!r} is not one of {CATEGORIES}"
    unknown = set(cls.converges_on) - set(PROBLEM_CLASSES)
    assert not unknown, f"metadata: converges_on names {sorted(unknown)}, not among {PROBLEM_CLASSES}"
    for attr in ("calls_per_step", "calls_at_init"):
        n = getattr(cls, attr)
        assert n is None or (isinstance(n, int) and n >= 0), f"metadata: {attr} must be None or an int >= 0, got {n!r}"
    assert cls.rate in ("linear", "sublinear"), f"metadata: rate must be 'linear' or 'sublinear', got {cls.rate!r}"
    assert isinstance(cls.averages, bool) and isinstance(cls.host_reads, bool), \
        "metadata: averages and host_reads must be bools"


def assert_solution(solution, problem, *, distance: float | None = None, gap: float | None = None,
                    objective: float | None = None, relative_objective: float | None = None,
                    residual: float | None = None, converged: bool = True) -> None:
    """Compare ``solution`` with ``problem.reference``; the message names the measure and the instances that fail.

    Args:
        distance: bound on ``|z - z*|`` (over all blocks) to the reference solution.
        gap: bound on the exact duality gap ``solution.gap``.
        objective: bound on ``|f(z) - value*|`` (``problem.objective``).
        relative_objective: bound on ``|c^T x - value*| / |value*|`` (linear programs).
        residual: bound on the natural residual ``|z - P_Z(z - F(z))|``.
        converged: every instance's status must be ``CONVERGED``.
    """
    from . import merit

    if converged:
        bad = (solution.status != Status.CONVERGED).nonzero().flatten().tolist()
        assert not bad, f"status: instances {bad} did not converge ({[Status(int(solution.status[i])).name for i in bad]})"
    ref = problem.reference

    def bounded(what: str, values, tol):
        bad = (values > tol).nonzero().flatten().tolist()
        assert not bad, f"{what}: {[float(values[i]) for i in bad]} > {tol:g} at instances {bad}"

    if distance is not None:
        bounded("distance to the reference", torch.sqrt(sum((a - b).square().sum(-1)
                                                             for a, b in zip(solution.z, ref.solution))), distance)
    if gap is not None:
        bounded("duality gap", solution.gap, gap)
    if objective is not None:
        bounded("objective - reference value", (problem.objective(solution.z) - ref.value).abs(), objective)
    if relative_objective is not None:
        values = (problem.c * solution.x).sum(-1)
        bounded("relative objective error", (values - ref.value).abs() / ref.value.abs(), relative_objective)
    if residual is not None:
        bounded("residual", merit.residual(problem, solution.z), residual)


def check_converges(solver: Solver, family: Family) -> None:
    """Where theory promises convergence on the family, a solve reaches its exact reference.

    Linear-rate solvers: residual 1e-9 and distance 1e-6; matrix games: gap 1e-6 and the value to
    1e-6 (and the gap recomputed from the payoff matrix to 1e-12); LPs: KKT 1e-9 and the objective
    to 1e-7 relative. Averaging sublinear solvers: distance and residual 1e-5.
    """
    from . import solve

    promised = set(family.classes) & set(solver.converges_on)
    if not promised:
        raise SkipCheck(f"{family.name}: theory promises no convergence here (the family is "
                        f"{', '.join(family.classes) or 'in no listed class'}; {_name(solver)} converges on "
                        f"{', '.join(solver.converges_on) or 'none'})")
    if family.checked_for is not None and family.checked_for not in solver.converges_on:
        raise SkipCheck(f"{family.name}: checked only for solvers that converge on {family.checked_for}s "
                        f"(others need ~10^4 iterations)")
    if solver.rate == "sublinear" and not solver.averages:
        raise SkipCheck(f"{family.name}: a sublinear last-iterate rate: check its rate, not 1e-9")
    problem = applicable_problem(solver, family)
    if solver.rate == "sublinear":
        sol = solve(problem, solver, tol=1e-5, measure="distance", max_iters=30_000, check_every=50)
        assert_solution(sol, problem, distance=1e-5, residual=1e-5)
    elif family.measure == "kkt":
        sol = solve(problem, solver, tol=1e-9, measure="kkt", max_iters=30_000)
        assert_solution(sol, problem, relative_objective=1e-7)
    elif family.measure == "gap":
        sol = solve(problem, solver, tol=1e-6, measure="gap", max_iters=30_000)
        assert_solution(sol, problem, objective=1e-6, gap=1e-6)
        # Independent recomputation of the gap from the payoff matrix: max_j (A^T x)_j - min_i (A y)_i.
        A = problem.K.mT
        independent = (A.mT @ sol.x.unsqueeze(-1)).squeeze(-1).amax(-1) - \
            (A @ sol.y.unsqueeze(-1)).squeeze(-1).amin(-1)
        assert torch.allclose(independent, sol.gap, rtol=0, atol=1e-12), \
            f"duality gap: reported {sol.gap.tolist()}, recomputed from the payoff matrix {independent.tolist()}"
    else:
        sol = solve(problem, solver, tol=1e-9, max_iters=30_000)
        assert_solution(sol, problem, distance=1e-6)


def check_batch_equals_loop(solver: Solver, family: Family, *, iterations: int = 150) -> None:
    """A batched solve of ``iterations`` steps equals the loop of single-instance solves (1e-12, counts exactly)."""
    from . import solve

    problem = applicable_problem(solver, family)
    batched = solve(problem, solver, tol=0.0, max_iters=iterations)
    for i in range(problem.batch_size):
        single = solve(instance(problem, i), solver, tol=0.0, max_iters=iterations)
        for block, (a, b) in enumerate(zip(batched.z, single.z)):
            err = float((a[i:i + 1] - b).abs().max())
            assert err <= 1e-12, f"batch_equals_loop: instance {i}, block {block} differs from its single solve " \
                                 f"by {err:.3g} > 1e-12"
        for name, value in batched.counts.items():
            assert value[i] == single.counts[name][0], \
                f"batch_equals_loop: instance {i}: {name} {int(value[i])} batched, {int(single.counts[name][0])} alone"
        assert batched.iterations[i] == single.iterations[0], f"batch_equals_loop: instance {i}: iterations differ"


def assert_stopped_instances_stay(seen, batch_size: int) -> dict:
    """Check callback snapshots ``(status, z, operator_calls)``: once an instance stops, its point and
    count never change again. Returns ``{instance: (z, calls)}`` at each instance's stop."""
    stopped_at = {}
    for status, z, calls in seen:
        for i in range(batch_size):
            if status[i] != Status.RUNNING and i not in stopped_at:
                stopped_at[i] = (z, calls)
            elif i in stopped_at:
                z_stop, calls_stop = stopped_at[i]
                for a, b in zip(z, z_stop):
                    assert torch.equal(a[i], b[i]), f"stopped_instances_stay: instance {i} moved after it stopped"
                assert calls[i] == calls_stop[i], f"stopped_instances_stay: instance {i} counted calls after it stopped"
    return stopped_at


def check_stopped_instances_stay(solver: Solver, family: Family, *, factors=(0.5, 0.05, 1e-6),
                                 max_iters: int = 400) -> dict:
    """Instances stop at different checks (tolerances ``factors * r0``, the last instance 0); once stopped they
    stay bitwise unchanged, and the solve returns them as they were. Returns ``{instance: (z, calls)}``."""
    from . import merit, solve

    problem = applicable_problem(solver, family)
    B = problem.batch_size
    r0 = merit.residual(problem, problem.z0)
    tol = r0 * torch.tensor(list(factors[:B - 1]) + [0.0], dtype=r0.dtype, device=r0.device)
    seen = []
    sol = solve(problem, solver, tol=tol, max_iters=max_iters, check_every=5,
                callback=lambda p: seen.append((p.status.clone(), tuple(b.clone() for b in p.z),
                                                p.state.operator_calls.clone())))
    stopped_at = assert_stopped_instances_stay(seen, B)
    if not stopped_at:
        raise SkipCheck(f"{family.name}: no instance stopped within {max_iters} iterations")
    for i, (z_stop, _) in stopped_at.items():
        assert _points_equal([a[i] for a in sol.z], [b[i] for b in z_stop]), \
            f"stopped_instances_stay: the solve returned instance {i} other than where it stopped"
    assert sol.status[B - 1] == Status.MAX_ITERS, "stopped_instances_stay: the instance with tol = 0 stopped"
    return stopped_at


def check_exact_counts(solver: Solver, family: Family, *, steps: int = 7) -> None:
    """``operator_calls`` is ``calls_at_init + k calls_per_step`` after k steps, and so is an independent count."""
    if solver.calls_per_step is None or solver.calls_at_init is None:
        raise SkipCheck(f"{_name(solver)} declares no fixed count per step (calls_per_step = None)")
    problem, op = counting(applicable_problem(solver, family))
    state = solver.init(problem, problem.z0)
    z = problem.z0
    assert op.calls == solver.calls_at_init, \
        f"exact_counts: init evaluated F {op.calls} times, calls_at_init = {solver.calls_at_init}"
    for k in range(1, steps + 1):
        z, state = solver.step(problem, z, state)
        expected = solver.calls_at_init + k * solver.calls_per_step
        assert op.calls == expected, f"exact_counts: {op.calls} evaluations of F after {k} steps, expected {expected}"
        assert (state.operator_calls == op.calls).all(), \
            f"exact_counts: operator_calls = {state.operator_calls.tolist()} after {k} steps, F was evaluated {op.calls} times"


def _snapshot(tree):
    """Clones of every tensor in a (nested) tuple / NamedTuple; other leaves as they are."""
    if isinstance(tree, torch.Tensor):
        return tree.clone()
    if isinstance(tree, tuple):
        return tuple(_snapshot(t) for t in tree)
    return tree


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    if isinstance(a, tuple):
        return all(_same(u, v) for u, v in zip(a, b))
    return True


def check_no_mutation(solver: Solver, family: Family, *, steps: int = 5) -> None:
    """``init`` leaves the start untouched and ``step`` leaves ``z`` and ``state`` untouched."""
    problem = applicable_problem(solver, family)
    z0 = _snapshot(problem.z0)
    state = solver.init(problem, problem.z0)
    assert _same(problem.z0, z0), "no_mutation: init modified the starting point"
    z = problem.z0
    for k in range(steps):
        before = _snapshot((z, state))
        z_next, state_next = solver.step(problem, z, state)
        assert _same((z, state), before), f"no_mutation: step {k + 1} modified its input z or state in place"
        z, state = z_next, state_next
    assert _same(problem.z0, z0), "no_mutation: the steps modified the problem's starting point"


def check_no_host_syncs(solver: Solver, family: Family, *, steps: int = 10) -> None:
    """``step`` converts no tensor to a host value (a stall on a GPU), unless the solver declares ``host_reads``."""
    if solver.host_reads:
        raise SkipCheck(f"{_name(solver)} declares host_reads (a documented read in its step)")
    problem = applicable_problem(solver, family)
    z = problem.domain.project(problem.z0)
    state = solver.init(problem, z)
    with count_host_syncs() as counts:
        for _ in range(steps):
            z, state = solver.step(problem, z, state)
    assert counts["syncs"] == 0, f"no_host_syncs: {counts['syncs']} host reads in {steps} steps"


def check_resume(solver: Solver, family: Family, *, directory: str | Path | None = None) -> None:
    """A solve interrupted at 40 iterations and resumed from its checkpoint equals an 80-iteration solve bitwise.

    Instances stop before the interruption, after it, and never (tolerances ``[0.3, 1e-3, ..., 0] r0``).
    """
    from . import merit, solve

    problem = applicable_problem(solver, family)
    r0 = merit.residual(problem, problem.z0)
    factors = [0.3, 1e-3, 1e-2][:problem.batch_size - 1] + [0.0]
    tol = r0 * torch.tensor(factors, dtype=r0.dtype, device=r0.device)
    run = dict(tol=tol, check_every=10)
    full = solve(problem, solver, max_iters=80, **run)
    if int(full.iterations.max()) <= 40:  # (an interior-point method: done in fewer iterations than the cut)
        raise SkipCheck(f"{family.name}: every instance stopped by iteration 40, before the interruption")
    with tempfile.TemporaryDirectory() if directory is None else contextlib.nullcontext(directory) as folder:
        path = Path(folder) / "solve.pt"
        first = solve(problem, solver, max_iters=40, checkpoint=path, checkpoint_every=20, **run)
        assert first.history["iteration"].tolist()[-1] == 40, "resume: the first solve did not run 40 iterations"
        resumed = solve(problem, solver, max_iters=80, resume=path, **run)
    assert _points_equal(full.z, resumed.z), "resume: the resumed iterates differ from the uninterrupted solve"
    for field in ("status", "iterations", "operator_calls"):
        assert torch.equal(getattr(full, field), getattr(resumed, field)), f"resume: {field} differs"
    assert full.history["iteration"].tolist() == resumed.history["iteration"].tolist(), "resume: history differs"
    assert torch.equal(full.history["residual"], resumed.history["residual"]), "resume: residual history differs"


#: Every check by name; ``metadata`` takes no family.
CHECKS: dict[str, Callable] = {
    "metadata": check_metadata,
    "converges": check_converges,
    "batch_equals_loop": check_batch_equals_loop,
    "stopped_instances_stay": check_stopped_instances_stay,
    "exact_counts": check_exact_counts,
    "no_mutation": check_no_mutation,
    "no_host_syncs": check_no_host_syncs,
    "resume": check_resume,
}


# -- running the checks ---------------------------------------------------------------------------

@dataclass(frozen=True)
class CheckResult:
    """One check on one family: ``outcome`` is ``"passed"``, ``"failed"`` or ``"skipped"``; ``message`` says why."""

    check: str
    family: str
    outcome: str
    message: str = ""


@dataclass(frozen=True)
class Report:
    """The results of `check_solver` (or `check_set`): ``failed``, ``passed`` and ``skipped`` select them."""

    solver: str
    results: tuple[CheckResult, ...]
    kind: str = "check_solver"

    def _select(self, outcome: str) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == outcome]

    @property
    def failed(self) -> list[CheckResult]:
        """The failed checks."""
        return self._select("failed")

    @property
    def passed(self) -> list[CheckResult]:
        """The passed checks."""
        return self._select("passed")

    @property
    def skipped(self) -> list[CheckResult]:
        """The skipped checks."""
        return self._select("skipped")

    def __str__(self) -> str:
        lines = [f"{self.kind}({self.solver}): {len(self.passed)} passed, {len(self.failed)} failed, "
                 f"{len(self.skipped)} skipped"]
        lines += [f"  {r.outcome:7s} {r.check} [{r.family}]" + (f": {r.message}" if r.message else "")
                  for r in self.results]
        return "\n".join(lines)


def representative(solver: Solver, families: Iterable[str] = REPRESENTATIVE) -> Family:
    """The first of ``families`` the solver applies to (its checks pass and ``init`` succeeds)."""
    reasons = []
    for name in families:
        try:
            applicable_problem(solver, FAMILIES[name])
            return FAMILIES[name]
        except SkipCheck as skip:
            reasons.append(str(skip))
    raise SkipCheck("applies to none of the families: " + "; ".join(reasons))


def _run(name: str, solver: Solver, family: Family | SkipCheck | None) -> CheckResult:
    label = family.name if isinstance(family, Family) else "-"
    return _outcome(name, label, lambda: _call(name, solver, family))


def _outcome(name: str, label: str, call: Callable[[], Any]) -> CheckResult:
    """``call()``'s outcome as a `CheckResult`: passed, skipped (`SkipCheck`) or failed (any other error)."""
    try:
        call()
    except SkipCheck as skip:
        return CheckResult(name, label, "skipped", str(skip))
    except AssertionError as err:
        return CheckResult(name, label, "failed", str(err))
    except Exception as err:  # an error is a failure of the check, reported with its type
        return CheckResult(name, label, "failed", f"{type(err).__name__}: {err}")
    return CheckResult(name, label, "passed")


def _cases(solver: Solver, families: Iterable[str] | None, checks: Iterable[str] | None):
    """``(check, family or None)`` pairs: convergence on every family, the rest on the given or representative ones."""
    checks = list(CHECKS) if checks is None else list(checks)
    unknown = set(checks) - set(CHECKS)
    if unknown:
        raise ValueError(f"checks: unknown {sorted(unknown)}; the checks are {list(CHECKS)}")
    if families is not None:
        unknown = set(families) - set(FAMILIES)
        if unknown:
            raise ValueError(f"families: unknown {sorted(unknown)}; the families are {list(FAMILIES)}")
    for check in checks:
        if check == "metadata":
            yield check, None
        elif families is not None or check == "converges":
            yield from ((check, FAMILIES[f]) for f in (families or FAMILIES))
        else:
            try:
                yield check, representative(solver, PREFERRED.get(check, REPRESENTATIVE))
            except SkipCheck as skip:
                yield check, skip


def check_solver(solver: str | Solver, *, families: Iterable[str] | None = None,
                 checks: Iterable[str] | None = None, raise_on_failure: bool = True) -> Report:
    """Run every applicable conformance check on ``solver`` (a registered name or an instance).

    Convergence is checked on every family (skipped where theory promises none); the other checks run
    on ``families`` if given, else on the first family the solver applies to (`REPRESENTATIVE`).

    Raises:
        AssertionError: where a check fails (unless ``raise_on_failure=False``), naming each failed
            check, the family and what failed.
    """
    solver = conformance_solver(solver)
    results = tuple(_run(check, solver, family) for check, family in _cases(solver, families, checks))
    report = Report(_name(solver), results)
    if raise_on_failure and report.failed:
        raise AssertionError("\n".join(f"{r.check} [{r.family}]: {r.message}" for r in report.failed) +
                             "\n\n" + str(report))
    return report


def parametrize_with_checks(solvers: Iterable[str | Solver], *, families: Iterable[str] | None = None,
                            checks: Iterable[str] | None = None):
    """A ``pytest.mark.parametrize`` over (solver, check): the test calls ``check(solver)``.

    ::

        @parametrize_with_checks(["extragradient", MySolver(step_size=0.1)])
        def test_conformance(solver, check):
            check(solver)

    Cases are listed as in `check_solver`; a check that does not apply calls ``pytest.skip`` with its reason.
    """
    import pytest

    params, ids = [], []
    for s in solvers:
        solver = conformance_solver(s)
        for check, family in _cases(solver, families, checks):
            params.append((solver, functools.partial(_pytest_check, check, family)))
            ids.append(f"{_name(solver)}-{check}" + (f"-{family.name}" if isinstance(family, Family) else ""))
    return pytest.mark.parametrize("solver,check", params, ids=ids)


def _call(name: str, solver: Solver, family: Family | SkipCheck | None):
    """``CHECKS[name](solver, family)``; ``family`` is the `SkipCheck` to raise where no family applies."""
    if isinstance(family, SkipCheck):
        raise family
    return CHECKS[name](solver, family)


def _pytest_check(name: str, family: Family | SkipCheck | None, solver: Solver):
    import pytest

    try:
        return _call(name, solver, family)
    except SkipCheck as skip:
        pytest.skip(str(skip))


# -- sets: the same idea for a ConstraintSet ------------------------------------------------------

def set_classes() -> list[type]:
    """Every `saddle.ConstraintSet` subclass the library defines (the set conformance suite checks each)."""
    found, todo = [], [ConstraintSet]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("saddle."):
                found.append(sub)
    return sorted(set(found), key=lambda c: c.__name__)


def _set_points(batch_size: int, dim: int, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return tuple(3 * torch.randn(batch_size, dim, dtype=torch.float64, generator=g) for _ in range(3))


def check_projection_is_a_projection(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """``P(u)`` lies in the set, ``P(P(u)) = P(u)``, and ``<u - P(u), w - P(u)> <= 0`` for points w of the set."""
    u, v, _ = _set_points(batch_size, dim)
    p, w = s.project(u), s.project(v)
    assert bool(s.contains(p, atol=1e-9).all()), "project(u) is not in the set (contains says so)"
    torch.testing.assert_close(s.project(p), p, rtol=1e-12, atol=1e-12, msg="project is not idempotent")
    angle = ((u - p) * (w - p)).sum(-1)
    assert bool((angle <= 1e-9 * (1 + (u - p).norm(dim=-1) * (w - p).norm(dim=-1))).all()), \
        f"project(u) is not the nearest point: <u - P(u), w - P(u)> = {angle.max().item():.3g} > 0 for w in the set"


def check_projection_is_nonexpansive(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """``|P(u) - P(v)| <= |u - v|``."""
    u, v, _ = _set_points(batch_size, dim)
    lhs, rhs = (s.project(u) - s.project(v)).norm(dim=-1), (u - v).norm(dim=-1)
    assert bool((lhs <= rhs * (1 + 1e-12)).all()), f"|P(u) - P(v)| = {lhs.max().item():.6g} > |u - v|"


def _project_jvp(s: ConstraintSet, u: Tensor, v: Tensor) -> Tensor:
    """``s.project_jvp(u, v)``, or `SkipCheck` for a set without one."""
    try:
        return s.project_jvp(u, v)
    except NotImplementedError as err:
        raise SkipCheck(f"no project_jvp: {err}") from None


def check_project_jvp(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """``project_jvp(u, v)`` equals the central difference ``(P(u + h v) - P(u - h v)) / 2h`` (h = 1e-6)."""
    u, v, _ = _set_points(batch_size, dim)
    jvp = _project_jvp(s, u, v)
    h = 1e-6
    fd = (s.project(u + h * v) - s.project(u - h * v)) / (2 * h)
    torch.testing.assert_close(jvp, fd, rtol=1e-5, atol=1e-5, msg="project_jvp differs from central differences")


def check_project_jacobian(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """``project_jacobian(u) @ v`` equals ``project_jvp(u, v)``, and the Jacobian is symmetric (a projection's is)."""
    u, v, _ = _set_points(batch_size, dim)
    jvp = _project_jvp(s, u, v)
    J = s.project_jacobian(u)
    torch.testing.assert_close(torch.bmm(J, v.unsqueeze(-1)).squeeze(-1), jvp, rtol=1e-12, atol=1e-12,
                               msg="project_jacobian(u) v differs from project_jvp(u, v)")
    torch.testing.assert_close(J, J.mT, rtol=1e-12, atol=1e-12, msg="the projection's Jacobian is not symmetric")


def check_select_takes_rows(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """``s.select(i).project(u[i:i+1])`` is row i of ``s.project(u)``, bit for bit."""
    u, _, _ = _set_points(batch_size, dim)
    full = s.project(u)
    for i in range(batch_size):
        assert torch.equal(s.select(i).project(u[i:i + 1]), full[i:i + 1]), f"select({i}) projects differently"


def check_separable(s: ConstraintSet, batch_size: int, dim: int) -> None:
    """A set that declares ``separable`` projects coordinate by coordinate: moving u_j moves only P(u)_j."""
    if not getattr(s, "separable", False):
        raise SkipCheck("the set does not declare separable")
    u, v, _ = _set_points(batch_size, dim)
    moved = u.clone()
    moved[:, 0] = v[:, 0]
    assert torch.equal(s.project(moved)[:, 1:], s.project(u)[:, 1:]), "a separable set's projection mixes coordinates"


#: Every check of a set by name.
SET_CHECKS: dict[str, Callable] = {
    "projection": check_projection_is_a_projection,
    "nonexpansive": check_projection_is_nonexpansive,
    "project_jvp": check_project_jvp,
    "project_jacobian": check_project_jacobian,
    "select": check_select_takes_rows,
    "separable": check_separable,
}


def check_set(s: ConstraintSet, *, batch_size: int = 3, dim: int = 6, raise_on_failure: bool = True) -> Report:
    """Run every check of `SET_CHECKS` on the set ``s`` for ``(batch_size, dim)`` float64 blocks.

    Raises:
        AssertionError: where a check fails (unless ``raise_on_failure=False``), naming the check.
    """
    s.check(batch_size, dim)
    results = tuple(_outcome(name, "-", functools.partial(check, s, batch_size, dim))
                    for name, check in SET_CHECKS.items())
    report = Report(repr(s), results, kind="check_set")
    if raise_on_failure and report.failed:
        raise AssertionError("\n".join(f"{r.check}: {r.message}" for r in report.failed) + "\n\n" + str(report))
    return report
