"""`solve`: the one driver loop shared by every solver."""

from __future__ import annotations

import contextlib
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
from .compaction import WorkingSet
from .graphs import GraphedSteps, capture_steps
from .history import History
from .implicit import Implicit, as_differentiation, choose_method, differentiate, polish
from .point import Point, accumulation_dtype, all_finite, detached, where
from .threads import intra_op_threads, solve_threads
from .solution import Solution, SolveError, Status, empty_status
from .solvers.base import Solver, get_solver

__all__ = ["solve", "Progress", "next_check"]

MEASURES = ("residual", "gap", "distance")
NEAR_MISSES = 3  # float64 re-checks an instance may just miss before it is reported as PRECISION_LOSS
STALL_CHECKS = 12  # checks without a new best measure after which a low-precision instance near its floor stops
STALL_FLOOR = 1000  # ... where "near" is a best measure below this many machine epsilons of its dtype
MIN_GRAPH_STEPS = 4  # the fewest steps a CUDA graph replays (shorter runs of steps stay eager)
#: `solve(polish=True)` first tries Newton steps on an instance once its measure is below this ...
POLISH_FROM = 1e-3
#: ... and after a failed try, once it is this fraction of its measure then (about one try per decade).
POLISH_PROGRESS = 0.1


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
    compile: bool | None = None,
    time_limit: float | None = None,
    warm_start: Solution | None = None,
    compaction: float = 0.5,
    threads: int | None = None,
    differentiable: bool | str | Implicit = False,
    polish: bool | None = None,
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
        compile: how the steps between two checks run. None (default): on a
            CUDA device, ``check_every`` steps are captured once as a CUDA
            graph and replayed (one launch for all their kernels; `saddle.graphs`);
            on the CPU, eagerly. True: a CUDA graph on CUDA, and on the CPU each
            step through ``torch.compile`` (fused kernels; the first steps pay
            the compilation). False: eagerly. If capturing or compiling fails,
            the solve warns once and runs eagerly. Graphs replay the eager
            kernels; compiled steps agree with eager ones to rounding, not bit
            for bit. Not with ``max_operator_calls`` (the steps are counted one
            by one) or a problem that keeps a random state of its own.
        time_limit: seconds of wall time (None: no limit). It is checked at every
            check: instances still running once it is exceeded stop as `TIME_LIMIT`.
        compaction: when the running instances fall to this fraction of the batch being stepped
            (or below), the driver gathers them into a smaller batch (``problem.select``) and
            steps only those; the others' results are kept and put back at the end, bitwise. So a
            batch costs the sum of its instances' iterations, not B times the slowest's. 0: never.
            Not with a ``callback``, checkpoints, ``max_operator_calls`` or problems that keep a
            random state of their own (they see or save the whole batch at every check).
        threads: intra-op threads of the solve on the CPU (`torch.set_num_threads` while it runs,
            restored after). None (default): one thread when the largest operation of a step has
            fewer than `saddle.threads.PARALLEL_MIN` elements (on a busy machine a second thread
            made such operations up to 30x slower), else torch's setting.
        warm_start: the `Solution` of a solve of a problem of the same shape (batch size,
            blocks, dtype), e.g. a nearby problem: the solve starts from its point
            ``warm_start.z`` with the state ``solver.warm_state(problem, z, warm_start.state)``
            (PDHG reuses its step size and primal weight). With ``checkpoint`` / ``resume``
            the warm start is part of what a checkpoint binds.
        differentiable: gradients of the solution with respect to the problem's data (the tensors
            requiring grad that its operator, sets and terms hold). True (or ``"implicit"``, or a
            `saddle.implicit.Implicit` of options): ``Solution.z`` (and ``x``, ``y``) carry the
            implicit function theorem's gradient at the solution (`saddle.implicit`: the iterations run
            without autograd, the backward pass solves one linear system per instance; on small
            problems the solution is first polished by Newton steps) and ``Solution.value`` the
            objective's, by the envelope theorem. ``"unroll"``: the iterations are replayed with
            autograd on and differentiated (memory grows with them; for comparison). False: none.
        polish: Newton steps on running instances that are nearly converged (a crossover): at a
            check, an instance whose measure has fallen below `POLISH_FROM` (then `POLISH_PROGRESS`
            times its measure at its last try) gets semismooth Newton steps on its fixed-point residual
            (`saddle.implicit.polish`: one linear solve with the formed Jacobian per step; on
            piecewise-affine problems, LPs, matrix games, QPs, exact once the active set is right);
            where the polished point meets the tolerance the instance stops there, `CONVERGED`.
            None (default): on with ``differentiable`` where the Jacobians are small enough to form
            (`saddle.implicit.DENSE_MAX_ENTRIES`), off otherwise. Float64 problems with
            differentiable operators only; not with ``checkpoint`` / ``resume`` (a checkpoint does not
            hold the polished points).
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
    for name, flag in (("progress", progress), ("throw", throw)):
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool (True or False), got {flag!r}")
    if compile is not None and not isinstance(compile, bool):
        raise TypeError(f"compile must be None (automatic), True or False, got {compile!r}")
    if isinstance(warm_start, bool):  # the competitive solvers' CG setting, now ``cg_warm_start`` (deprecated)
        settings, warm_start = {**settings, "warm_start": warm_start}, None
    solver = get_solver(solver, **settings)
    differentiation = as_differentiation(differentiable)
    if polish is not None and not isinstance(polish, bool):
        raise TypeError(f"polish must be None (automatic), True or False, got {polish!r}")
    if polish and (checkpoint is not None or resume is not None):
        raise ValueError("polish=True cannot be checkpointed (a checkpoint does not hold the polished points): "
                         "give polish=False, or no checkpoint / resume")
    if checkpoint is not None or resume is not None:
        polish = False
    extra = tuple(problem.extra_measures())
    _check_options(max_iters, check_every, measure, max_operator_calls, divergence_factor, extra)
    _check_growth(check_growth)
    if isinstance(compaction, bool) or not isinstance(compaction, Real) or not 0 <= compaction < 1:
        raise ValueError(f"compaction must be a fraction in [0, 1) (0: never), got {compaction!r}")
    _check_time_limit(time_limit)
    solver.check(problem)
    checkpoint_every = _checkpoint_options(checkpoint, checkpoint_every, check_every, resume)
    history_rows = _history_rows(history)
    n_threads = solve_threads(threads, problem)
    tol_64 = _tolerance(tol, problem.batch_size, problem.device, torch.float64)
    gap_available = problem.duality_gap(problem.z0) is not None
    if measure == "gap" and not gap_available:
        raise ValueError(f"measure='gap' is not computable for {problem.name}; use measure='residual'")
    if measure == "distance" and (problem.solution is None or not problem.reference.unique):
        raise ValueError(f"measure='distance' needs a unique reference solution, and {problem.name} has none")
    # Compaction needs the driver alone to see the batch between checks.
    can_compact = (callback is None and checkpoint is None and resume is None and max_operator_calls is None
                   and not hasattr(problem, "rng_state"))
    options = _Options(max_iters=math.inf if max_iters is None else max_iters, tol=tol_64, measure=measure,
                       check_every=check_every, check_growth=check_growth, max_operator_calls=max_operator_calls,
                       divergence_factor=divergence_factor, history_rows=history_rows, callback=callback,
                       time_limit=time_limit, compaction=compaction if can_compact else 0.0,
                       steps=_step_mode(compile, problem, max_operator_calls),
                       polish=_polishes(polish, differentiation, problem))

    with intra_op_threads(n_threads):  # the solver's start-up too (preconditioners, norms)
        z = problem.domain.project(problem.z0 if warm_start is None else _warm_point(problem, solver, warm_start))
        _check_operator_at_start(problem, z)
        state = detached(solver.init(problem, z) if warm_start is None else
                         solver.warm_state(problem, z, warm_start.state))
        loop = _Loop(problem, solver, options, _Measures(problem, measure, gap_available), z, state, start)

        writer = None
        if checkpoint is not None or resume is not None:
            bound = binding(problem, solver, {
                "check_every": check_every, "check_growth": check_growth, "tol": tol_64, "measure": measure,
                "max_operator_calls": max_operator_calls,
                "divergence_factor": divergence_factor, "history": history_rows,
                "compile": options.steps != "eager",
                # (only when given: checkpoints written before warm starts existed stay valid)
                **({} if warm_start is None else {"warm_start": (warm_start.z, warm_start.state)})})
            if checkpoint is not None:
                writer = CheckpointWriter(checkpoint, checkpoint_every, bound, loop.variables())
            if resume is not None:
                loop.load(restore(resume, bound, loop.variables(), map_location=problem.device))  # checks all first
        loop.bar = _progress_bar(options.max_iters, solver) if progress else None
        with torch.no_grad() if differentiation is not None else contextlib.nullcontext():
            loop.run(resumed=resume is not None, writer=writer)
        solution = loop.solution()
        if differentiation is not None:
            solution = differentiate(problem, solver, solution, differentiation)
    if throw and not bool(solution.success.all()):
        raise SolveError(solution)
    return solution


class _Options(NamedTuple):
    """The driver's settings of one solve, checked (see `solve`)."""

    max_iters: float  # math.inf: no limit
    tol: Tensor  # (B,) float64
    measure: str
    check_every: int
    check_growth: float
    max_operator_calls: int | None
    divergence_factor: float
    history_rows: int
    callback: Callable | None
    time_limit: float | None
    compaction: float  # 0: never (also where the solve cannot compact)
    steps: str  # how the steps between checks run: "eager", "compiled" (torch.compile) or "graph" (CUDA graphs)
    polish: bool  # Newton steps on nearly converged instances at the checks


class _Measures:
    """The measures of a problem's points (``residual``, ``gap``, ``distance`` and its own), detached ``(B,)``.

    Distances need a unique reference that is already at hand: references that cost a solve (HiGHS for
    matrix games) are computed only when ``measure="distance"`` asks for them.
    """

    def __init__(self, problem, measure: str, gap_available: bool):
        self.gap_available = gap_available
        self.track_distance = measure == "distance" or (problem.has_reference and problem.reference is not None
                                                        and problem.reference.unique)
        self.extra = tuple(problem.extra_measures())

    def __call__(self, problem, out: Point, Fz: Point) -> dict:
        measures = {
            "residual": merit.residual(problem, out, Fz),
            "gap": problem.duality_gap(out) if self.gap_available else None,
            "distance": merit.distance(problem, out) if self.track_distance else None,
            **{name: problem.measure(name, out, Fz) for name in self.extra},
        }
        return {name: None if v is None else v.detach() for name, v in measures.items()}


class _Loop:
    """One solve's loop: what it carries from check to check, and what it does at and between checks.

    `run` reads: a check at iteration 0, then until every instance has stopped (or ``max_iters``) a
    chunk of bare steps to the next check (`next_check`) and a check. A check stops the instances that
    converged (re-checked in float64 for low precisions), stalled at their dtype's floor, diverged, were
    found infeasible by the solver, were stopped by the callback or ran out of time; records the
    history; and narrows the batch to the running instances when few are left (`WorkingSet`).
    """

    def __init__(self, problem, solver: Solver, options: _Options, measures: _Measures, z: Point, state, start):
        self.problem, self.solver, self.o, self.measures_at, self.start = problem, solver, options, measures, start
        B, device = problem.batch_size, problem.device
        self.acc = accumulation_dtype(problem.dtype)
        self.tol = options.tol.to(self.acc)
        self.recheck = None if problem.dtype == torch.float64 else _Float64Recheck(problem, measures)
        self.stall_floor = STALL_FLOOR * torch.finfo(problem.dtype).eps
        # the loop variables (what a checkpoint saves; see `variables`)
        self.z, self.state, self.k, self.floor = z, state, 0, None
        self.status = empty_status(B, device)
        self.active = torch.ones(B, dtype=torch.bool, device=device)
        self.iterations = torch.zeros(B, dtype=torch.int64, device=device)
        self.near_misses = torch.zeros(B, dtype=torch.int64, device=device)  # float64 re-checks just missed
        self.best = torch.full((B,), math.inf, dtype=self.acc, device=device)  # best measure so far (low precision)
        self.stalled = torch.zeros(B, dtype=torch.int64, device=device)  # checks since it last improved
        self.history = History(options.history_rows)
        # derived from them
        self.n_active = B
        self.working = WorkingSet(problem)
        self.compacting = options.compaction > 0
        self.step = self.stepper(problem)
        self.graph: GraphedSteps | None = None  # the stepped batch's steps as a CUDA graph (graph mode)
        self.plain = hasattr(solver, "plain_step")  # whether the solver's graphs hold its plain steps only
        self.last_measures: dict = {}
        self.calls: Tensor | None = None
        self.bar = None
        self.polisher = _Polisher(problem, self.acc) if options.polish and self.recheck is None else None

    # --- checkpoints ---------------------------------------------------------------------------------

    def variables(self) -> dict:
        """What a checkpoint saves: everything the loop carries from one check to the next."""
        problem = self.problem
        return {"z": self.z, "state": self.state, "status": self.status, "active": self.active,
                "iterations": self.iterations, "near_misses": self.near_misses, "best": self.best,
                "stalled": self.stalled, "k": self.k, "floor": self.floor, "rows": self.history.rows,
                "history_state": self.history.state,
                "problem_rng": problem.rng_state() if hasattr(problem, "rng_state") else None}

    def load(self, saved: dict) -> None:
        """Continue from the loop variables of a checkpoint (`saddle.checkpoint.restore`)."""
        for name in ("z", "state", "status", "active", "iterations", "near_misses", "best", "stalled", "k",
                     "floor"):
            setattr(self, name, saved[name])
        self.history = History(self.o.history_rows, saved["rows"], saved["history_state"])
        self.n_active = int(self.active.sum())
        if saved["problem_rng"] is not None:
            self.problem.set_rng_state(saved["problem_rng"])
        restore_random_states(saved)

    # --- the loop ------------------------------------------------------------------------------------

    def run(self, resumed: bool, writer: CheckpointWriter | None) -> None:
        """Check, then chunks and checks until every instance has stopped or ``max_iters``; checkpoints."""
        o = self.o
        done = self.n_active == 0 if resumed else self.check()
        while not done and self.k < o.max_iters:
            k_next = min(next_check(self.k, o.check_every, o.check_growth), o.max_iters)
            (self.run_chunk if o.max_operator_calls is None else self.run_budgeted)(k_next)
            done = self.check()
            if writer is not None and writer.due(self.k):
                writer.save(self.variables())
        if self.bar is not None:
            self.bar.close()
        if writer is not None:
            writer.save(self.variables())  # the final state: a later solve may resume from it with a larger max_iters

    def stepper(self, problem) -> Callable:
        """``(z, state) -> solver.step(problem, z, state)``, through ``torch.compile`` in the compiled mode."""
        if self.o.steps == "compiled":
            return _compiled_step(self.solver, problem)
        return lambda z, state: self.solver.step(problem, z, state)

    def advance(self, z: Point, state, n: int) -> tuple[Point, Any]:
        """``n`` steps from ``(z, state)``: eager steps, or in the graph mode replays of a CUDA graph.

        A solver with plain iterations (`Solver.plain_iterations`: PDHG's schemes between their restart
        checks) has them replayed from a graph of its `plain_step` and its counter moved on by
        `advance`; its other iterations are eager steps. Any other solver has chunks of
        ``check_every`` steps replayed.
        """
        while n > 0 and self.o.steps == "graph":
            plain = min(n, self.solver.plain_iterations(state)) if self.plain else n
            graph = self.graph_for(z, state, plain)
            if graph is None:
                z, state = self.guarded_step(z, state)
                n -= 1
                continue
            runs = plain // graph.steps
            for _ in range(runs):
                z, state = graph(z, state)
            if self.plain:
                state = self.solver.advance(state, runs * graph.steps)
            n -= runs * graph.steps
        for _ in range(n):
            z, state = self.guarded_step(z, state)
        return z, state

    def graph_for(self, z: Point, state, plain: int) -> GraphedSteps | None:
        """The CUDA graph for the next ``plain`` steps from ``(z, state)`` (captured when first needed,
        or again after a narrowing), or None when fewer steps than it replays are left. Its length is
        ``check_every``, or a solver's first run of plain iterations (of at least `MIN_GRAPH_STEPS`)."""
        graph = self.graph
        if graph is not None and graph.matches(z, state):
            return graph if plain >= graph.steps else None
        steps = plain if self.plain else self.o.check_every
        if plain < max(steps, MIN_GRAPH_STEPS):
            return None
        problem = self.working.stepped
        step = ((lambda z, s: self.solver.plain_step(problem, z, s)) if self.plain else self.step)
        graph = self.graph = capture_steps(step, steps, z, state, name=self.solver.name)
        if graph is None:  # cannot be captured (warned): eager from now on
            self.o = self.o._replace(steps="eager")
        return graph

    def guarded_step(self, z: Point, state) -> tuple[Point, Any]:
        """`step`, with a malformed operator output named clearly, and graphs cut when the data require grad."""
        try:
            z_new, state_new = self.step(z, state)
        except (RuntimeError, TypeError) as err:
            _blame_the_operator(self.working.stepped, z, err)
            raise
        if any(t.requires_grad for t in z_new):  # data that require grad: never grow a graph over iterations
            z_new, state_new = detached((z_new, state_new))
        return z_new, state_new

    def run_chunk(self, k_end: int) -> None:
        """Iterations ``k .. k_end`` of the stepped batch without bookkeeping between them.

        Finished instances step along and are put back afterwards, and an instance that turned
        non-finite goes back to its point at the last check (held by reference: solvers never
        modify their inputs) and is marked DIVERGED: one selection per chunk, not per step.
        """
        z, state = self.advance(self.z, self.state, k_end - self.k)
        stepping = self.working.local(self.active)
        moving = stepping & all_finite(z)
        if self.n_active == stepping.shape[0] and bool(moving.all()):  # all ran and stayed finite: keep all
            self.z, self.state = z, state
        else:
            try:  # (non-tensor state fields are shared by the batch: `where` keeps its first argument's)
                self.z, self.state = where(moving, (z, state), (self.z, self.state))
            except (RuntimeError, TypeError) as err:
                _blame_the_operator(self.working.stepped, self.z, err)
                raise
        moving = self.working.full(moving, torch.zeros_like(self.active))
        self.status = torch.where(self.active & ~moving, int(Status.DIVERGED), self.status)
        self.iterations = self.iterations + (k_end - self.k) * moving
        self.active, self.k = moving, k_end

    def run_budgeted(self, k_end: int) -> None:
        """Iterations ``k .. k_end`` freezing instances at every step: each stops at the first
        iteration at which its operator calls reach ``max_operator_calls``."""
        for _ in range(k_end - self.k):
            z_new, state_new = self.guarded_step(self.z, self.state)
            self.stop(self.active & ~all_finite(z_new), Status.DIVERGED)
            self.z, self.state = where(self.active, (z_new, state_new), (self.z, self.state))
            self.iterations = self.iterations + self.active
            self.stop(self.active & (self.state.operator_calls >= self.o.max_operator_calls),
                      Status.BUDGET_EXHAUSTED)
        self.k = k_end

    def stop(self, mask: Tensor, status: Status) -> None:
        """Stop the instances of the ``(B,)`` bool ``mask`` (running ones) with ``status``."""
        self.status = torch.where(mask, int(status), self.status)
        self.active = self.active & ~mask

    # --- checks --------------------------------------------------------------------------------------

    def check(self) -> bool:
        """Stop the instances that are done; record the history; narrow the batch; True once none runs."""
        o, working = self.o, self.working
        out, measures = self.evaluate(working.stepped, self.z, self.state)
        if working.narrowed:  # the finished instances' measures are those of their last check
            measures = {name: None if v is None else working.full(v, self.last_measures[name])
                        for name, v in measures.items()}
        self.last_measures = measures
        res, value = measures["residual"], measures[o.measure]
        if self.floor is None:
            self.floor = o.divergence_factor * torch.maximum(res, self.tol)
        converged = self.active & (value <= self.tol)
        if self.recheck is not None:
            converged = self.confirmed(converged, value, out)
            self.stop_stalled(value, converged)
        self.stop(converged, Status.CONVERGED)
        self.stop(self.active & (~torch.isfinite(res) | (res > self.floor)), Status.DIVERGED)
        if self.polisher is not None:
            self.stop(self.polisher(working, self.active & (value <= self.polisher.level), out, self.measures_at,
                                    o.measure, self.tol), Status.CONVERGED)
        # Solvers that detect other outcomes (certificates of infeasibility) report them here.
        detected = self.solver.terminal_status(working.stepped, self.z, self.state)
        if detected is not None:
            detected = working.full(detected, torch.full_like(self.status, int(Status.RUNNING)))
            found = self.active & (detected != int(Status.RUNNING))
            self.status = torch.where(found, detected, self.status)
            self.active = self.active & ~found
        calls = self.state.operator_calls
        self.calls = calls.clone() if not working.narrowed else working.full(calls, self.calls)
        if o.history_rows:
            self.history.record({"iteration": self.k, "time": time.perf_counter() - self.start,
                                 "operator_calls": self.calls, **measures})
        if o.callback is not None:
            asked = _stop_mask(o.callback(Progress(self.k, out, self.state, measures, self.status)),
                               self.problem.batch_size, self.problem.device)
            self.stop(self.active & asked, Status.STOPPED)
        if o.time_limit is not None and time.perf_counter() - self.start > o.time_limit:
            self.stop(self.active, Status.TIME_LIMIT)
        self.n_active = int(self.active.sum())
        if self.bar is not None:
            self.bar.update(self.k - self.bar.n)
            worst = value[self.active].max().item() if self.n_active else value.max().item()
            self.bar.set_postfix(active=self.n_active, **{o.measure: f"{worst:.2e}"})
        if self.compacting and 0 < self.n_active <= o.compaction * len(self.z[0]):
            self.narrow()
        return self.n_active == 0

    def evaluate(self, problem, z: Point, state, polished: tuple[Tensor, Point] | None = None) -> tuple[Point, dict]:
        """The solver's output point at ``(z, state)`` (``polished = (mask, points)``: those points where ``mask``)
        and its measures."""
        out = self.solver.output(problem, z, state)
        if polished is not None:
            out = where(polished[0], polished[1], out)
        Fz = problem.F(out)
        _check_operator_output(Fz, out, problem.dtype)
        return out, self.measures_at(problem, out, Fz)

    def confirmed(self, converged: Tensor, value: Tensor, out: Point) -> Tensor:
        """The instances of ``converged`` that also meet the tolerance in float64 (low precisions).

        A near miss (the two measures differ by at most tol / 2) runs on: more iterations may meet the
        tolerance, up to NEAR_MISSES times; a miss the working precision cannot even resolve stops as
        PRECISION_LOSS.
        """
        if not bool(converged.any()):
            return converged
        exact = self.recheck(out)
        if exact is None:  # the problem cannot be evaluated in float64 (warned once)
            return converged
        exact = self.working.full(exact[self.o.measure], value.to(torch.float64))
        tol = self.o.tol
        missed = converged & ~(exact <= tol)
        near = missed & ((exact - value.to(torch.float64)).abs() <= 0.5 * tol)
        self.near_misses = self.near_misses + near
        self.stop(missed & (~near | (self.near_misses >= NEAR_MISSES)), Status.PRECISION_LOSS)
        return converged & ~missed

    def stop_stalled(self, value: Tensor, converged: Tensor) -> None:
        """In a low precision the measure of a running instance may hover above the tolerance at the
        dtype's floor, never to meet it: one that has not improved on its best for STALL_CHECKS checks
        (about 3x the iterations, with the checks' growth) near that floor stops as PRECISION_LOSS."""
        improved = value < self.best
        self.best = torch.where(improved, value, self.best)
        self.stalled = torch.where(improved, 0, self.stalled + 1)
        self.stop(self.active & ~converged & (self.stalled >= STALL_CHECKS)
                  & (self.best <= self.stall_floor + self.tol), Status.PRECISION_LOSS)

    def narrow(self) -> None:
        """Step only the running instances from now on (`WorkingSet.narrow`)."""
        narrowed = self.working.narrow(self.active, self.z, self.state)
        if narrowed is None:  # the problem cannot select its instances: step the batch as it is
            self.compacting = False
            return
        self.z, self.state = narrowed
        self.step, self.graph = self.stepper(self.working.stepped), None
        if self.recheck is not None and not self.recheck.failed:
            self.recheck = _Float64Recheck(self.working.stepped, self.measures_at)

    # --- the result ----------------------------------------------------------------------------------

    def solution(self) -> Solution:
        """The `Solution`: the full batch's results, measured (in float64 for low precisions) at the end."""
        z, state = self.working.results(self.z, self.state)
        recheck = self.recheck
        if self.working.narrowed and recheck is not None and not recheck.failed:
            recheck = _Float64Recheck(self.problem, self.measures_at)
        status = torch.where(self.status == int(Status.RUNNING), int(Status.MAX_ITERS), self.status)
        polished = None if self.polisher is None else self.polisher.points
        out, measures = self.evaluate(self.problem, z, state, polished)
        exact = None if recheck is None else recheck(out)
        if exact is not None:
            measures = {name: None if v is None else v.to(self.acc) for name, v in exact.items()}
        return Solution(
            z=out,
            status=status,
            iterations=self.iterations,
            operator_calls=state.operator_calls.clone(),
            residual=measures["residual"],
            gap=measures["gap"],
            distance=measures["distance"],
            history=self.history.stacked() if self.o.history_rows else {},
            state=state,
            solver=self.solver,
            wall_time=time.perf_counter() - self.start,
        )


class _Polisher:
    """The crossover of `solve(polish=True)`: Newton steps on nearly converged instances at the checks.

    An instance is tried when its measure falls below ``level`` (`POLISH_FROM` at first, then
    `POLISH_PROGRESS` times its measure at each failed try, so a slow instance is tried about once per
    two orders of magnitude); the polished points of the instances it finishes are kept (``points``)
    and reported by the solution in place of the solver's output.
    """

    def __init__(self, problem, dtype: torch.dtype):
        B, device = problem.batch_size, problem.device
        self.level = torch.full((B,), POLISH_FROM, dtype=dtype, device=device)
        self.done = torch.zeros(B, dtype=torch.bool, device=device)
        self.z: Point | None = None
        self.failed = False

    @property
    def points(self) -> tuple[Tensor, Point] | None:
        """``(mask (B,), points)``: the polished points of the instances a polish finished, or None."""
        return None if self.z is None else (self.done, self.z)

    def __call__(self, working: WorkingSet, tried: Tensor, out: Point, measures_at, measure: str,
                 tol: Tensor) -> Tensor:
        """Polish the ``tried`` ``(B,)`` instances (of the stepped batch's output ``out``); the ``(B,)`` mask of
        those whose polished point meets ``tol``."""
        finished = torch.zeros_like(tried)
        if self.failed or not bool(tried.any()):
            return finished
        local = working.local(tried).nonzero().squeeze(-1)
        rows = local if working.rows is None else working.rows.index_select(0, local)
        try:
            part = working.stepped.select(local)
            z, _ = polish(part, tuple(b.index_select(0, local) for b in out), steps=1)
            value = measures_at(part, z, part.F(z))[measure].to(tol.dtype)
        except (RuntimeError, TypeError, NotImplementedError) as err:  # an operator autograd cannot differentiate
            warnings.warn(f"solve(polish=True): the Newton polish failed ({type(err).__name__}: {err}); the solve "
                          "goes on without it", RuntimeWarning, stacklevel=4)
            self.failed = True
            return finished
        met = value <= tol.index_select(0, rows)
        if self.z is None:
            self.z = tuple(torch.zeros(len(self.done), b.shape[-1], dtype=b.dtype, device=b.device) for b in out)
        self.z = tuple(full.index_copy(0, rows, part_z) for full, part_z in zip(self.z, z))
        self.done = self.done.index_fill(0, rows[met], True)
        self.level = self.level.index_copy(0, rows, torch.where(met, self.level.index_select(0, rows),
                                                                  POLISH_PROGRESS * value))
        return finished.index_fill(0, rows[met], True)


def _polishes(polish: bool | None, differentiation, problem) -> bool:
    """Whether the solve polishes (`solve`'s ``polish``): None is on for a differentiable solve of a small float64
    problem (one whose Jacobians `saddle.implicit` forms)."""
    if polish is not None:
        return polish
    if differentiation is None or differentiation == "unroll" or problem.dtype != torch.float64:
        return False
    return choose_method(differentiation, problem) == "dense" and differentiation.polish is not False


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


def _step_mode(compile: bool | None, problem, max_operator_calls) -> str:
    """How the steps between checks run (see ``compile`` in `solve`)."""
    if compile is False:
        return "eager"
    if problem.device.type == "cuda" and max_operator_calls is None and not hasattr(problem, "rng_state"):
        return "graph"
    return "compiled" if compile else "eager"


def _compiled_step(solver: Solver, problem) -> Callable:
    """``(z, state) -> solver.step(problem, z, state)`` through ``torch.compile``, eager if that fails.

    A solver whose step splits into ``bare_step`` (the arithmetic) and ``finish_step`` (Python-level
    bookkeeping: PDHG's schemes) has only its arithmetic compiled: compiling the whole step was
    0.4-0.8x eager, the arithmetic alone 1.24-1.38x on small dense LPs (docs/benchmarks.md).
    """
    eager = lambda z, state: solver.step(problem, z, state)  # noqa: E731
    split = hasattr(solver, "bare_step")
    target = (lambda z, state: solver.bare_step(problem, z, state)) if split else eager
    try:
        compiled = torch.compile(target, dynamic=False)
    except Exception as err:  # no compiler backend on this platform, ...
        warnings.warn(f"compile=True: torch.compile is not available ({type(err).__name__}: {err}); "
                      "running eagerly", RuntimeWarning, stacklevel=3)
        return eager
    failed = []

    def step(z, state):
        if failed:
            return eager(z, state)
        try:
            return solver.finish_step(problem, z, state, compiled(z, state)) if split else compiled(z, state)
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


def _check_max_iters(max_iters) -> None:
    if max_iters is not None and (isinstance(max_iters, bool) or not isinstance(max_iters, Integral) or max_iters < 0):
        raise ValueError(f"max_iters must be a non-negative integer or None (no limit), got {max_iters!r}")


def _check_options(max_iters, check_every, measure, max_operator_calls, divergence_factor, extra=()) -> None:
    _check_max_iters(max_iters)
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
