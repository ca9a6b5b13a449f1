"""`solve`: the one driver loop shared by every solver."""

from __future__ import annotations

import math
import os
import time
import warnings
from numbers import Integral, Real
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from . import merit
from .checkpoint import CheckpointWriter, binding, check_writable, restore, restore_random_states
from .point import Point, accumulation_dtype, all_finite, detached, put_rows, take_rows, where
from .solution import Solution, SolveError, Status, empty_status
from .solvers.base import Solver, get_solver

__all__ = ["solve", "Progress", "next_check"]

MEASURES = ("residual", "gap", "distance")
NEAR_MISSES = 3  # float64 re-checks an instance may just miss before it is reported as PRECISION_LOSS
STALL_CHECKS = 12  # checks without a new best measure after which a low-precision instance near its floor stops
STALL_FLOOR = 1000  # ... where "near" is a best measure below this many machine epsilons of its dtype


class Progress(NamedTuple):
    """What a callback receives at every check.

    Attributes:
        iteration: iterations run so far (the batch's loop counter).
        z: the current output point (averaged for averaging solvers).
        state: the solver state.
        measures: ``{"residual": (B,), "gap": (B,) or None, "distance": (B,) or None}``.
        status: ``(B,)`` status codes (`Status.RUNNING` for active instances).
    """

    iteration: int
    z: Point
    state: Any
    measures: dict
    status: Tensor


def solve(
    problem,
    solver: str | Solver = "extragradient",
    *,
    max_iters: int | None = 10_000,
    tol: float | Tensor = 1e-6,
    measure: str = "residual",
    check_every: int = 10,
    check_growth: float = 0.1,
    max_operator_calls: int | None = None,
    callback: Callable[[Progress], bool | None] | None = None,
    progress: bool = False,
    throw: bool = False,
    history: bool | int = True,
    divergence_factor: float = 1e8,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: str | os.PathLike | None = None,
    compile: bool = False,
    time_limit: float | None = None,
    warm_start: Solution | None = None,
    compaction: float = 0.5,
    **settings,
) -> Solution:
    """Solve a batch of VIs with one solver; every instance stops on its own.

    Args:
        problem: a `VIProblem` (or `SaddleProblem`, `BilinearProblem`) with B instances.
        solver: a registered name (`saddle.solver_names()`) or a solver instance.
        max_iters: iteration limit per instance (None: no limit).
        tol: tolerance on the measure, a float or a ``(B,)`` tensor.
        measure: ``"residual"`` (natural residual, always available), ``"gap"``
            (exact duality gap, where the problem can compute it),
            ``"distance"`` (to the problem's reference solution), or a measure
            of the problem's own (``problem.extra_measures()``, e.g. ``"kkt"``,
            the relative KKT error of a `saddle.LinearProgram`).
        check_every: the measure is evaluated (and instances are stopped) at
            least this many iterations apart, at multiples of it; between
            checks the loop never synchronizes with the host.
        check_growth: the checks grow apart geometrically: after iteration k
            the next is ``max(1, floor(check_growth * k / check_every))``
            multiples of ``check_every`` later (`next_check`), so an instance
            stops at most ``check_growth`` (10%) past the iteration at which
            it met the tolerance, and a long solve checks about
            ``log(k) / log(1 + check_growth)`` times instead of ``k /
            check_every``. 0: every ``check_every`` iterations.
        max_operator_calls: per-instance budget of operator evaluations; an
            instance stops at the first iteration at which its count reaches it.
        callback: called at every check with a `Progress`; return True to stop
            every instance, or a ``(B,)`` bool tensor to stop those instances
            (status `STOPPED`); None or False continues.
        progress: show a tqdm progress bar.
        throw: raise `SolveError` unless every instance converged.
        history: record the measures at every check in ``Solution.history``:
            True (at most 10 000 rows), False, or the most rows to keep. When
            the history is full, every other row is dropped and from then on
            every other check is recorded, so the rows stay evenly spread over
            the run and the memory bounded, ``O(rows * B)``; the last check is
            always the last row.
        divergence_factor: an instance is `DIVERGED` when its iterate is not
            finite, or when its residual exceeds ``divergence_factor *
            max(initial residual, tol)``.
        checkpoint: a file to save the solve's state to (`saddle.checkpoint`),
            written atomically (a temporary file renamed over the target) at
            the end and while solving: every ``checkpoint_every`` iterations,
            or by default at most once per
            `saddle.checkpoint.CHECKPOINT_INTERVAL` seconds (60). A folder, a
            read-only file or a read-only folder is refused before the solve.
        checkpoint_every: iterations between checkpoints, a multiple of
            ``check_every`` (default: by time, as above).
        resume: a checkpoint file to continue from. It must come from a solve
            of the same problem (same shapes, dtype and data: the checkpoint
            carries their fingerprint) with the same solver settings and the
            same ``check_every``, ``check_growth``, ``tol``, ``measure``, ``max_operator_calls``,
            ``divergence_factor``, ``history`` and ``compile``; anything else is
            a ``ValueError`` saying what differs. The iterates are then
            bit-identical to those of an uninterrupted solve (on the same
            device), up to ``max_iters`` iterations in all.
        compile: run the solver's step through ``torch.compile`` (fused kernels
            for the many small operations of a step: worth it for long solves
            of small or medium problems; the first steps pay the compilation).
            If compiling fails, the solve warns once and runs eagerly. The
            iterates agree with the eager ones to rounding, not bit for bit.
        time_limit: seconds of wall time (None: no limit). It is checked at every
            check: instances still running once it is exceeded stop as `TIME_LIMIT`.
        compaction: when the running instances fall to this fraction of the batch being stepped
            (or below), the driver gathers them into a smaller batch (``problem.select``) and
            steps only those; the others' results are kept and put back at the end, bitwise. So a
            batch costs the sum of its instances' iterations, not B times the slowest's. 0: never.
            Not with a ``callback``, checkpoints, ``max_operator_calls`` or problems that keep a
            random state of their own (they see or save the whole batch at every check).
        warm_start: the `Solution` of a solve of a problem of the same shape (batch size,
            blocks, dtype), e.g. a nearby problem: the solve starts from its point
            ``warm_start.z`` with the state ``solver.warm_state(problem, z, warm_start.state)``
            (PDHG reuses its step size and primal weight). With ``checkpoint`` / ``resume``
            the warm start is part of what a checkpoint binds.
        **settings: the solver's settings when ``solver`` is a name, e.g.
            ``step_size=0.1``.

    Returns:
        a `Solution` with per-instance status, counts and measures.

    Instances that converge, diverge or exhaust their budget are frozen: their
    point and solver state stay bitwise unchanged while the others continue.

    Precision: measures accumulate in at least float32. For a problem whose
    dtype is below float64, an instance that meets the tolerance is re-checked
    in float64 at its output point (on ``problem.to(torch.float64)``: one more
    operator evaluation) and reported `CONVERGED` only if it meets the
    tolerance there too. If not, it runs on when the two measures differ by
    at most half the tolerance (a near miss, at most three times), and stops
    as `PRECISION_LOSS` otherwise (the problem's dtype cannot resolve the
    tolerance). The returned measures are the float64 ones (see
    docs/reliability.md).
    """
    start = time.perf_counter()
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable (or None), got {type(callback).__name__}")
    for name, flag in (("progress", progress), ("throw", throw), ("compile", compile)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool (True or False), got {flag!r}")
    if isinstance(warm_start, bool):  # the competitive solvers' CG setting, now ``cg_warm_start`` (deprecated)
        settings, warm_start = {**settings, "warm_start": warm_start}, None
    solver = get_solver(solver, **settings)
    extra = tuple(problem.extra_measures())
    _check_options(max_iters, check_every, measure, max_operator_calls, divergence_factor, extra)
    _check_growth(check_growth)
    if isinstance(compaction, bool) or not isinstance(compaction, Real) or not 0 <= compaction < 1:
        raise ValueError(f"compaction must be a fraction in [0, 1) (0: never), got {compaction!r}")
    _check_time_limit(time_limit)
    max_iters = math.inf if max_iters is None else max_iters
    solver.check(problem)
    checkpoint_every = _checkpoint_options(checkpoint, checkpoint_every, check_every, resume)
    history_rows = _history_rows(history)
    B, device = problem.batch_size, problem.device
    acc = accumulation_dtype(problem.dtype)
    tol_64 = _tolerance(tol, B, problem.device, torch.float64)
    tol_t = tol_64.to(acc)
    gap_available = problem.duality_gap(problem.z0) is not None
    if measure == "gap" and not gap_available:
        raise ValueError(f"measure='gap' is not computable for {problem.name}; use measure='residual'")
    if measure == "distance" and (problem.solution is None or not problem.reference.unique):
        raise ValueError(f"measure='distance' needs a unique reference solution, and {problem.name} has none")

    # Distances need a unique reference that is already at hand (references that
    # cost a solve, such as HiGHS for matrix games, are computed only when asked for).
    track_distance = measure == "distance" or (problem.has_reference and problem.reference is not None
                                               and problem.reference.unique)

    def measures_at(p, out: Point, Fz: Point) -> dict:
        measures = {
            "residual": merit.residual(p, out, Fz),
            "gap": p.duality_gap(out) if gap_available else None,
            "distance": merit.distance(p, out) if track_distance else None,
            **{name: p.measure(name, out, Fz) for name in extra},
        }
        return {name: None if v is None else v.detach() for name, v in measures.items()}

    def evaluate(p, z: Point, state) -> tuple[Point, dict]:
        out = solver.output(p, z, state)
        Fz = p.F(out)
        _check_operator_output(Fz, out, p.dtype)
        return out, measures_at(p, out, Fz)

    recheck = None if problem.dtype == torch.float64 else _Float64Recheck(problem, measures_at)

    z = problem.domain.project(problem.z0 if warm_start is None else _warm_point(problem, solver, warm_start))
    _check_operator_at_start(problem, z)
    state = detached(solver.init(problem, z) if warm_start is None else
                     solver.warm_state(problem, z, warm_start.state))
    status = empty_status(B, device)
    active = torch.ones(B, dtype=torch.bool, device=device)
    iterations = torch.zeros(B, dtype=torch.int64, device=device)
    near_misses = torch.zeros(B, dtype=torch.int64, device=device)  # float64 re-checks just missed
    best = torch.full((B,), math.inf, dtype=acc, device=device)  # the best measure so far (low precision)
    stalled = torch.zeros(B, dtype=torch.int64, device=device)  # checks since it last improved
    stall_floor = STALL_FLOOR * torch.finfo(problem.dtype).eps
    rows: list[dict] = []
    history_state = {"stride": 1, "checks": 0, "last": None}  # see `record`
    floor: Tensor | None = None
    n_active = B
    k = 0

    def loop_variables(k: int) -> dict:
        """What a checkpoint saves: everything the loop carries from one check to the next."""
        return {"z": z, "state": state, "status": status, "active": active, "iterations": iterations,
                "near_misses": near_misses, "best": best, "stalled": stalled, "k": k, "floor": floor, "rows": rows,
                "history_state": history_state,
                "problem_rng": problem.rng_state() if hasattr(problem, "rng_state") else None}

    if checkpoint is not None or resume is not None:
        bound = binding(problem, solver, {
            "check_every": check_every, "check_growth": check_growth, "tol": tol_64, "measure": measure,
            "max_operator_calls": max_operator_calls,
            "divergence_factor": divergence_factor, "history": history_rows, "compile": compile,
            # (only when given: checkpoints written before warm starts existed stay valid)
            **({} if warm_start is None else {"warm_start": (warm_start.z, warm_start.state)})})
    writer = None if checkpoint is None else CheckpointWriter(checkpoint, checkpoint_every, bound, loop_variables(k))
    if resume is not None:
        saved = restore(resume, bound, loop_variables(0), map_location=device)  # checks everything first
        z, state, status, active = saved["z"], saved["state"], saved["status"], saved["active"]
        iterations, near_misses, k, floor = saved["iterations"], saved["near_misses"], saved["k"], saved["floor"]
        best, stalled = saved["best"], saved["stalled"]
        rows, history_state = saved["rows"], saved["history_state"]
        n_active = int(active.sum())
        if saved["problem_rng"] is not None:
            problem.set_rng_state(saved["problem_rng"])
        restore_random_states(saved)
    bar = _progress_bar(max_iters, solver) if progress else None
    # The batch being stepped: all B instances, or after a compaction the rows `working` of the
    # batch, as the problem `stepped` (z and state are then theirs; the full point and state, with
    # the finished instances' final values, are kept in `kept`).
    working: Tensor | None = None
    stepped = problem
    kept: tuple | None = None
    compacting = (compaction > 0 and callback is None and checkpoint is None and resume is None
                  and max_operator_calls is None and not hasattr(problem, "rng_state"))
    last_measures: dict = {}
    calls = None

    def stepper(p):
        return _compiled_step(solver, p) if compile else (lambda z, state: solver.step(p, z, state))

    step = stepper(problem)

    def full(local: Tensor, base: Tensor) -> Tensor:
        """A per-instance ``(B,)`` vector from the stepped rows' values ``local`` and ``base`` elsewhere."""
        return local if working is None else base.index_copy(0, working, local.to(base.dtype))

    def record(row: dict) -> None:
        """Keep the row of every ``stride``-th check; when full, drop every other row and double the stride."""
        h = history_state
        if h["checks"] % h["stride"] == 0:
            if len(rows) >= history_rows:
                del rows[1::2]
                h["stride"] *= 2
            if h["checks"] % h["stride"] == 0:
                rows.append(row)
        h["checks"] += 1
        h["last"] = row

    def check(k: int) -> bool:
        """Stop converged or diverged instances; record; return True to stop the loop."""
        nonlocal status, active, floor, n_active, near_misses, best, stalled, last_measures, calls
        out, measures = evaluate(stepped, z, state)
        if working is not None:  # the finished instances' measures are those of their last check
            measures = {name: None if v is None else full(v, last_measures[name]) for name, v in measures.items()}
        last_measures = measures
        res = measures["residual"]
        if floor is None:
            floor = divergence_factor * torch.maximum(res.detach(), tol_t)
        value = measures[measure]
        converged = active & (value <= tol_t)
        if recheck is not None and bool(converged.any()):
            exact = recheck(out)
            if exact is not None and working is not None:
                exact = {measure: full(exact[measure], value.to(torch.float64))}
            if exact is not None:
                # A near miss (the two measures differ by at most tol / 2) runs on: more iterations may
                # meet the tolerance, up to NEAR_MISSES times; a miss the working precision cannot even
                # resolve stops here.
                missed = converged & ~(exact[measure] <= tol_64)
                near = missed & ((exact[measure] - value.to(torch.float64)).abs() <= 0.5 * tol_64)
                near_misses = near_misses + near
                lost = missed & (~near | (near_misses >= NEAR_MISSES))
                status = torch.where(lost, int(Status.PRECISION_LOSS), status)
                active, converged = active & ~lost, converged & ~missed
        if recheck is not None:
            # In a low precision the measure of a running instance may hover above the tolerance at the
            # dtype's floor, never to meet it: one that has not improved on its best for STALL_CHECKS
            # checks (about 3x the iterations, with the checks' growth) near that floor stops here.
            improved = value < best
            best = torch.where(improved, value, best)
            stalled = torch.where(improved, 0, stalled + 1)
            stuck = active & ~converged & (stalled >= STALL_CHECKS) & (best <= stall_floor + tol_t)
            status = torch.where(stuck, int(Status.PRECISION_LOSS), status)
            active = active & ~stuck
        diverged = active & ~converged & (~torch.isfinite(res) | (res > floor))
        status = torch.where(converged, int(Status.CONVERGED), status)
        status = torch.where(diverged, int(Status.DIVERGED), status)
        active = active & ~converged & ~diverged
        # Solvers that detect other outcomes (certificates of infeasibility) report them here.
        detected = solver.terminal_status(stepped, z, state)
        if detected is not None and working is not None:
            detected = full(detected, torch.full_like(status, int(Status.RUNNING)))
        if detected is not None:
            found = active & (detected != int(Status.RUNNING))
            status = torch.where(found, detected, status)
            active = active & ~found
        calls = state.operator_calls.clone() if working is None else full(state.operator_calls, calls)
        if history_rows:
            record({"iteration": k, "time": time.perf_counter() - start, "operator_calls": calls, **measures})
        if callback is not None:
            asked = _stop_mask(callback(Progress(k, out, state, measures, status)), B, device)
            status = torch.where(active & asked, int(Status.STOPPED), status)
            active = active & ~asked
        if time_limit is not None and time.perf_counter() - start > time_limit:
            status = torch.where(active, int(Status.TIME_LIMIT), status)
            active = torch.zeros_like(active)
        n_active = int(active.sum())
        if bar is not None:
            bar.update(k - bar.n)
            worst = value[active].max().item() if n_active else value.max().item()
            bar.set_postfix(active=n_active, **{measure: f"{worst:.2e}"})
        if compacting and 0 < n_active <= compaction * len(z[0]):
            compact()
        return n_active == 0

    def compact() -> None:
        """Step only the running instances from now on: keep the others' point and state, select the rest."""
        nonlocal z, state, working, stepped, kept, recheck, step, compacting
        stepping = active if working is None else active.index_select(0, working)
        rows = stepping.nonzero().squeeze(-1)
        new_working = rows if working is None else working.index_select(0, rows)
        kept = keep_results()
        try:
            new_problem = problem.select(new_working)
            _check_selection(problem, new_problem, kept[0], new_working)
        except Exception:  # a problem that cannot select its instances (rightly): step the batch as it is
            compacting = False
            return
        z, state = take_rows((z, state), rows, stepping.shape[0])
        working, stepped, step = new_working, new_problem, stepper(new_problem)
        recheck = None if recheck is None or recheck.failed else _Float64Recheck(new_problem, measures_at)

    def keep_results() -> tuple:
        """The full batch's point and state: the stepped rows' current ones, the others' as kept."""
        return (z, state) if working is None else put_rows(kept, working, (z, state), B)

    def guarded_step(z: Point, state) -> tuple[Point, Any]:
        """``step``, with a malformed operator output named clearly, and graphs cut when the data require grad."""
        try:
            z_new, state_new = step(z, state)
        except (RuntimeError, TypeError) as err:
            _blame_the_operator(stepped, z, err)
            raise
        if any(t.requires_grad for t in z_new):  # data that require grad: never grow a graph over iterations
            z_new, state_new = detached((z_new, state_new))
        return z_new, state_new

    def run_chunk(k_end: int) -> None:
        """Iterations ``k .. k_end`` of the whole batch without bookkeeping between them.

        Finished instances step along and are put back afterwards, and an instance that turned
        non-finite goes back to its point at the last check (held by reference: solvers never
        modify their inputs) and is marked DIVERGED: one selection per chunk, not per step.
        """
        nonlocal z, state, iterations, status, active, k
        z_chunk, state_chunk = z, state
        for _ in range(k_end - k):
            z_chunk, state_chunk = guarded_step(z_chunk, state_chunk)
        stepping = active if working is None else active.index_select(0, working)
        moving = stepping & all_finite(z_chunk)
        if n_active == stepping.shape[0] and bool(moving.all()):  # all ran and stayed finite: nothing to put back
            z, state = z_chunk, state_chunk
        else:
            try:  # (non-tensor state fields are shared by the batch: `where` keeps its first argument's)
                z, state = where(moving, (z_chunk, state_chunk), (z, state))
            except (RuntimeError, TypeError) as err:
                _blame_the_operator(stepped, z, err)
                raise
        moving = full(moving, torch.zeros_like(active))
        status = torch.where(active & ~moving, int(Status.DIVERGED), status)
        iterations = iterations + (k_end - k) * moving
        active, k = moving, k_end

    def run_budgeted(k_end: int) -> None:
        """Iterations ``k .. k_end`` freezing instances at every step: each stops at the first
        iteration at which its operator calls reach ``max_operator_calls``."""
        nonlocal z, state, iterations, status, active, k
        for _ in range(k_end - k):
            z_new, state_new = guarded_step(z, state)
            finite = all_finite(z_new)
            status = torch.where(active & ~finite, int(Status.DIVERGED), status)
            moving = active & finite
            z, state = where(moving, (z_new, state_new), (z, state))
            iterations = iterations + moving
            spent = moving & (state.operator_calls >= max_operator_calls)
            status = torch.where(spent, int(Status.BUDGET_EXHAUSTED), status)
            active = moving & ~spent
        k = k_end

    done = check(0) if resume is None else (n_active == 0)
    while not done and k < max_iters:
        k_next = min(next_check(k, check_every, check_growth), max_iters)
        (run_chunk if max_operator_calls is None else run_budgeted)(k_next)
        done = check(k)
        if writer is not None and writer.due(k):
            writer.save(loop_variables(k))
    if bar is not None:
        bar.close()
    if writer is not None:
        writer.save(loop_variables(k))  # the final state: a later solve may resume from it with a larger max_iters
    if working is not None:
        z, state = keep_results()
        recheck = None if recheck is None or recheck.failed else _Float64Recheck(problem, measures_at)

    status = torch.where(status == int(Status.RUNNING), int(Status.MAX_ITERS), status)
    if rows and history_state["last"]["iteration"] != rows[-1]["iteration"]:
        rows[-1 if len(rows) >= history_rows else len(rows):] = [history_state["last"]]
    out, measures = evaluate(problem, z, state)
    exact = None if recheck is None else recheck(out)
    if exact is not None:
        measures = {name: None if v is None else v.to(acc) for name, v in exact.items()}
    solution = Solution(
        z=out,
        status=status,
        iterations=iterations,
        operator_calls=state.operator_calls.clone(),
        residual=measures["residual"],
        gap=measures["gap"],
        distance=measures["distance"],
        history=_stack(rows) if history_rows else {},
        state=state,
        solver=solver,
        wall_time=time.perf_counter() - start,
    )
    if throw and not bool(solution.success.all()):
        raise SolveError(solution)
    return solution


def _check_selection(problem, selected, z: Point, rows: Tensor) -> None:
    """Raise ``ValueError`` unless the operator of ``selected`` (``problem.select(rows)``) is the rows of
    ``problem``'s at z: a user's problem whose ``select`` misses data of its own is not compacted."""
    full = problem.F(z)
    part = selected.F(tuple(t.index_select(0, rows) for t in z))
    for a, b in zip(full, part):
        a = a.index_select(0, rows)
        tol = 1e3 * torch.finfo(a.dtype).eps
        if a.shape != b.shape or not torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max().clamp_min(1))):
            raise ValueError(f"{problem.name}.select does not select its operator's data")


def next_check(k: int, check_every: int, check_growth: float) -> int:
    """The iteration of the check after the one at iteration ``k``: the checks' geometric cadence.

    ``k + check_every * max(1, floor(check_growth * k / check_every))``: every ``check_every``
    iterations at first, then gaps of about ``check_growth * k``, always at multiples of
    ``check_every``. A function of k alone, so a resumed solve checks where the uninterrupted one did.
    """
    return k + check_every * max(1, int(check_growth * k) // check_every)


def _check_growth(check_growth) -> None:
    if isinstance(check_growth, bool) or not isinstance(check_growth, Real) or not 0 <= check_growth <= 10:
        raise ValueError(f"check_growth must be a number in [0, 10] (0: a fixed cadence), got {check_growth!r}")


def _compiled_step(solver: Solver, problem) -> Callable:
    """``(z, state) -> solver.step(problem, z, state)`` through ``torch.compile``, eager if that fails."""
    import warnings

    eager = lambda z, state: solver.step(problem, z, state)  # noqa: E731
    try:
        compiled = torch.compile(eager, dynamic=False)
    except Exception as err:  # no compiler backend on this platform, ...
        warnings.warn(f"compile=True: torch.compile is not available ({type(err).__name__}: {err}); "
                      "running eagerly", RuntimeWarning, stacklevel=3)
        return eager
    failed = []

    def step(z, state):
        if failed:
            return eager(z, state)
        try:
            return compiled(z, state)
        except Exception as err:  # a graph break that cannot be handled, a backend error, ...
            failed.append(err)
            warnings.warn(f"compile=True: compiling {solver.name}'s step failed ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}); running eagerly", RuntimeWarning,
                          stacklevel=3)
            return eager(z, state)

    return step


def _check_time_limit(time_limit) -> None:
    if time_limit is not None and (isinstance(time_limit, bool) or not isinstance(time_limit, Real)
                                   or not time_limit > 0):
        raise ValueError(f"time_limit must be None or a positive number of seconds, got {time_limit!r}")


def _warm_point(problem, solver: Solver, warm_start) -> Point:
    """``warm_start.z``, checked against the solver and the problem's blocks (batch size, shapes, dtype)."""
    if not isinstance(warm_start, Solution):
        raise TypeError(f"warm_start must be a saddle.Solution (of a problem of the same shape) or None, "
                        f"got {type(warm_start).__name__}")
    if warm_start.solver is not None and type(warm_start.solver) is not type(solver):
        raise ValueError(f"warm_start comes from a solve by {type(warm_start.solver).__name__}, but this solve "
                         f"uses {type(solver).__name__}: a solver's state only warm-starts the same solver")
    z0 = problem.z0
    shapes = [tuple(t.shape) for t in warm_start.z]
    if len(warm_start.z) != len(z0) or any(shape != tuple(t.shape) for shape, t in zip(shapes, z0)):
        raise ValueError(f"warm_start: its point has blocks of shapes {shapes}, but {problem.name} has "
                         f"{[tuple(t.shape) for t in z0]} (the batch size and every block must match)")
    if any(w.dtype != t.dtype for w, t in zip(warm_start.z, z0)):
        raise ValueError(f"warm_start: its point is {warm_start.z[0].dtype}, but {problem.name} is {problem.dtype}")
    return tuple(w.detach().to(t.device) for w, t in zip(warm_start.z, z0))


def _history_rows(history) -> int:
    """The most history rows to keep (0: none)."""
    if isinstance(history, bool):
        return 10_000 if history else 0
    if not isinstance(history, Integral) or history < 2:
        raise ValueError(f"history must be True, False or an integer >= 2 (the most rows to keep), got {history!r}")
    return int(history)


def _checkpoint_options(checkpoint, checkpoint_every, check_every, resume) -> int | None:
    """Check the checkpoint options (and that the file can be written) before any work; the cadence.

    Returns ``checkpoint_every`` (None: by time, see `saddle.checkpoint.CHECKPOINT_INTERVAL`).
    """
    if resume is not None and not isinstance(resume, (str, os.PathLike)):
        raise TypeError(f"resume must be a path to a checkpoint file, got {type(resume).__name__}")
    if checkpoint is None:
        if checkpoint_every is not None:
            raise ValueError("checkpoint_every needs checkpoint, a file to write to")
        return None
    if not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"checkpoint must be a path, got {type(checkpoint).__name__}")
    every = checkpoint_every
    if every is not None and (isinstance(every, bool) or not isinstance(every, Integral) or every < 1
                              or every % check_every):
        raise ValueError(f"checkpoint_every must be a positive multiple of check_every = {check_every}, "
                         f"got {checkpoint_every!r}")
    check_writable(checkpoint)
    return None if checkpoint_every is None else int(checkpoint_every)


def _check_options(max_iters, check_every, measure, max_operator_calls, divergence_factor, extra=()) -> None:
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, Integral) or max_iters < 0):
        raise ValueError(f"max_iters must be a non-negative integer or None (no limit), got {max_iters!r}")
    if isinstance(check_every, bool) or not isinstance(check_every, Integral) or check_every < 1:
        raise ValueError(f"check_every must be a positive integer, got {check_every!r}")
    if measure not in MEASURES + tuple(extra):
        raise ValueError(f"measure must be one of {MEASURES + tuple(extra)}, got {measure!r}")
    if max_operator_calls is not None and (
        isinstance(max_operator_calls, bool) or not isinstance(max_operator_calls, Integral) or max_operator_calls < 1
    ):
        raise ValueError(f"max_operator_calls must be None or a positive integer, got {max_operator_calls!r}")
    if not isinstance(divergence_factor, Real) or not divergence_factor > 1:
        raise ValueError(f"divergence_factor must be a number > 1, got {divergence_factor!r}")


def _tolerance(tol, B: int, device, dtype: torch.dtype) -> Tensor:
    """``tol`` (a float or ``(B,)``) checked and as a ``(B,)`` tensor on ``device``."""
    if isinstance(tol, bool) or not isinstance(tol, (Real, Tensor)):
        raise TypeError(f"tol must be a float or a (B,) tensor, got {type(tol).__name__}")
    if isinstance(tol, Tensor) and (tol.is_complex() or not (tol.is_floating_point() or tol.dtype == torch.int64)):
        raise TypeError(f"tol must be a real floating tensor, got dtype {tol.dtype}")
    t = torch.as_tensor(tol, dtype=torch.float64)  # validated before any rounding to the solve's dtype
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != B):
        raise ValueError(f"tol must be a float or a (B,) = ({B},) tensor, got shape {tuple(t.shape)}")
    if torch.isnan(t).any() or (t < 0).any():
        raise ValueError(f"tol must be non-negative, got {tol}")
    return t.to(device=device, dtype=dtype).expand(B)


def _check_operator_at_start(problem, z: Point) -> None:
    """Evaluate F once at the start so that a broken operator fails here, clearly (not counted)."""
    try:
        Fz = problem.F(z)
    except Exception as err:  # a user's function: any error is a bad input
        raise ValueError(f"the operator of {problem.name} failed at the starting point with "
                         f"{type(err).__name__}: {err}") from err
    _check_operator_output(Fz, z, problem.dtype)


def _check_operator_output(Fz, z: Point, dtype: torch.dtype, cause: BaseException | None = None) -> None:
    """Raise ``ValueError`` unless ``Fz`` has z's blocks: same shapes, the problem's dtype, z's device."""
    if not isinstance(Fz, tuple) or len(Fz) != len(z):
        raise ValueError(f"the operator must return {len(z)} blocks, got {type(Fz).__name__} "
                         f"of length {len(Fz) if isinstance(Fz, tuple) else '?'}") from cause
    for i, (g, zi) in enumerate(zip(Fz, z)):
        if not isinstance(g, Tensor) or g.shape != zi.shape:
            raise ValueError(f"the operator's block {i} has shape {tuple(getattr(g, 'shape', ()))}, "
                             f"expected {tuple(zi.shape)}") from cause
        if g.dtype != dtype or g.device != zi.device:
            raise ValueError(f"the operator's block {i} is {g.dtype} on {g.device}, expected the problem's "
                             f"{dtype} on {zi.device}" + (" (complex operators are not supported)"
                                                          if g.is_complex() else "")) from cause


def _blame_the_operator(problem, z: Point, err: BaseException) -> None:
    """After a torch error in a step: a clear ``ValueError`` if the operator's output at z is malformed."""
    _check_operator_output(problem.F(z), z, problem.dtype, cause=err)


def _stop_mask(answer, B: int, device) -> Tensor:
    """The instances a callback asks to stop: None/False none, True all, or a ``(B,)`` (or 0-d) bool tensor."""
    if answer is None or isinstance(answer, (bool, np.bool_)):
        return torch.full((B,), bool(answer), device=device)
    if isinstance(answer, Tensor) and answer.dtype == torch.bool and answer.shape in ((), (B,)):
        return answer.to(device).expand(B)
    raise TypeError(f"callback must return None, a bool or a (B,) = ({B},) bool tensor of the instances to stop, "
                    f"got {type(answer).__name__}"
                    + (f" of dtype {answer.dtype} and shape {tuple(answer.shape)}" if isinstance(answer, Tensor)
                       else ""))


class _Float64Recheck:
    """The measures at an output point of a low-precision problem, recomputed in float64.

    Works on ``problem.to(torch.float64)``, made on the first call. A problem
    that cannot be evaluated in float64 (a function reading a float32 global,
    an operator that casts to its own dtype) is reported once, with a
    warning, and its results stay unchecked (`__call__` returns None).
    """

    def __init__(self, problem, measures_at: Callable):
        self.problem, self.measures_at = problem, measures_at
        self.copy, self.failed = None, False

    def __call__(self, out: Point) -> dict | None:
        if self.failed:
            return None
        try:
            if self.copy is None:
                self.copy = self.problem.to(torch.float64)
            out64 = tuple(t.to(torch.float64) for t in out)
            F64 = self.copy.F(out64)
            _check_operator_output(F64, out64, torch.float64)  # not silently in the working precision
            return self.measures_at(self.copy, out64, F64)
        except Exception as err:  # a user's operator that only works in its own dtype
            self.failed = True
            warnings.warn(f"{self.problem.name} could not be evaluated in float64 ({type(err).__name__}: "
                          f"{str(err).splitlines()[0] if str(err) else ''}), so its {self.problem.dtype} results are "
                          "reported as converged without the float64 re-check; make the operator accept float64 "
                          "inputs (e.g. x @ A.to(x.dtype)) to have them checked", RuntimeWarning, stacklevel=4)
            return None


def _progress_bar(total: int, solver: Solver):
    from tqdm.auto import tqdm

    return tqdm(total=None if total == math.inf else total, desc=solver.name or type(solver).__name__, unit="it")


def _stack(rows: list[dict]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {
        "iteration": torch.tensor([r["iteration"] for r in rows]),
        "time": torch.tensor([r["time"] for r in rows], dtype=torch.float64),
    }
    keys = [k for k in rows[0] if k not in ("iteration", "time")] if rows else []
    for key in keys:
        values = [r[key] for r in rows]
        if all(v is not None for v in values):
            out[key] = torch.stack([v.detach() for v in values])
    return out
