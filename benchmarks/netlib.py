"""Netlib LPs: saddle's ``pdhg`` and ``r2hpdhg`` vs HiGHS vs OR-tools PDLP, one thread each, same time budget.

The problems are the netlib LPs of scipy's benchmark suite as ``.npz`` files
(``c``, ``A_ub``, ``b_ub``, ``A_eq``, ``b_eq``, ``bounds`` (n, 2) and ``obj``,
the known optimum, NaN for an infeasible LP): the feasible ones in the folder
given on the command line (default ``../shared/netlib`` next to this
checkout), the infeasible ones in its ``infeasible/`` subfolder. Without a
copy, take them from scipy's source tree: ``benchmarks/benchmarks/
linprog_benchmark_files`` (the same files; their ``bounds`` may be empty or an
object array holding None, which this script reads as scipy does).

Each problem is solved by

  * HiGHS (``scipy.optimize.linprog(method="highs")``, default tolerances): the
    reference objective ``f_H`` of the objective error ``|f - f_H| / (1 + |f_H|)``
    (the file's ``obj`` where HiGHS does not finish);
  * OR-tools PDLP (optional: skipped with a note when ``ortools`` is missing)
    with PDLP's L2 relative termination at each ``tol``, as
    ``benchmarks/linear_programs.py`` runs it (its code, imported);
  * ``saddle.linprog(..., method=m, tol=tol)`` for each registered method m
    (``pdhg``, ``r2hpdhg``; an unregistered one is skipped with a note), whose
    ``tol`` is the same relative KKT error as PDLP's.

All run with one thread (``torch.set_num_threads(1)``, PDLP ``num_threads=1``,
HiGHS serial) and the same wall-time limit per problem (``--time-limit``);
times are wall-clock seconds of the whole call, setup and preconditioning
included, with the data converted to each solver's input format beforehand.

Per problem the table gives the status, whether it is right (a certificate or
an optimum where the known answer says otherwise is WRONG, and listed again
at the end), the objective error, the largest constraint violation at the
returned x (absolute: rows and bounds), iterations, matrix-vector products
(saddle: ``LinprogResult.matvecs``; PDLP: 2 x its KKT passes, a pass being one
product with A and one with A^T) and the time. The summary gives per method
and tolerance the counts solved within the budget (right status; for the
feasible ones converged at ``tol``) and shifted geometric means
``exp(mean(log(v + s))) - s`` over the problems every method solved at that
tolerance:

  * time, shift s = 10 ms: the runs here last milliseconds to seconds, and 10 ms
    is about the fixed cost of a call (argument checks, preconditioning, the
    first check), below which time differences say nothing about the method;
    Mittelmann's 10 s shift is for runs of minutes to hours and would make
    every ratio about 1 here;
  * matvecs, shift s = 1000: iterative solvers stop only at their checks
    (saddle every 64 iterations, PDLP every 64, r2hpdhg's restart checks every
    200), i.e. in steps of 128 to 400 products, and the smallest netlib LPs
    need a few hundred to a few thousand; the shift keeps that quantization
    from dominating the ratios of the small problems while leaving the ratios
    of the problems that need 10^4 to 10^6 products unchanged.

    python benchmarks/netlib.py                              # everything: 6-8 hours on 2 cores (estimate)
    python benchmarks/netlib.py --quick                      # smoke run: under a minute
    python benchmarks/netlib.py --max-nnz 3000 --time-limit 20
    python benchmarks/netlib.py --problems AFIRO KB2 bgprtr --methods pdhg,r2hpdhg --tols 1e-8
    python benchmarks/netlib.py /path/to/linprog_benchmark_files --json netlib.json
"""

from __future__ import annotations

import argparse
import inspect
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy
import scipy.optimize
import scipy.sparse as sp
import torch

import saddle
from linear_programs import LP, PDLP_MISSING, pdlp_params, pdlp_program, time_limit_callback, torch_sparse

if PDLP_MISSING is None:
    import ortools
    from linear_programs import pdlp, solve_log_pb2

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "netlib"
#: The infeasible LPs scipy's benchmark enables (the others: HiGHS fails on klein3, or they are large).
ENABLED_INFEASIBLE = ("bgdbg1", "bgprtr", "box1", "chemcom", "cplex2", "ex72a", "ex73a", "forest6", "galenet",
                      "itest2", "itest6", "klein1", "refinery", "woodinfe")
METHODS = ("highs", "pdlp", "pdhg", "r2hpdhg")
TIME_SHIFT = 0.01      # seconds
MATVEC_SHIFT = 1000.0  # matrix-vector products

# Outcomes: what a run ended with, in one vocabulary for all solvers.
OPTIMAL, INFEASIBLE, UNBOUNDED, INF_OR_UNB, LIMIT, NUMERICAL, FAILED = (
    "optimal", "infeasible", "unbounded", "infeasible or unbounded", "limit", "numerical", "error")
_CLAIMS = (OPTIMAL, INFEASIBLE, UNBOUNDED, INF_OR_UNB)  # outcomes that state an answer (right or wrong)
_SCIPY_OUTCOMES = {0: OPTIMAL, 1: LIMIT, 2: INFEASIBLE, 3: UNBOUNDED, 4: NUMERICAL}
_PDLP_OUTCOMES = {"OPTIMAL": OPTIMAL, "PRIMAL_INFEASIBLE": INFEASIBLE, "DUAL_INFEASIBLE": UNBOUNDED,
                  "PRIMAL_OR_DUAL_INFEASIBLE": INF_OR_UNB, "TIME_LIMIT": LIMIT, "ITERATION_LIMIT": LIMIT,
                  "KKT_MATRIX_PASS_LIMIT": LIMIT, "INTERRUPTED_BY_USER": LIMIT}


# -- the problems ---------------------------------------------------------------------------------------------
@dataclass
class Netlib:
    """One netlib LP: its data (dense arrays converted to CSR), the known optimum (NaN: infeasible), nonzeros."""

    name: str
    lp: LP
    obj: float
    nnz: int

    @property
    def expected(self) -> str:
        return INFEASIBLE if math.isnan(self.obj) else OPTIMAL


def scipy_bounds(bounds, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``(lo, hi)`` (n,) from the ``bounds`` of a file: an (n, 2) array, or as scipy's copies hold them (an
    empty array: scipy's default x >= 0; an object array with None for an infinite side)."""
    bounds = np.asarray(bounds, dtype=object)
    if bounds.size == 0:
        return np.zeros(n), np.full(n, np.inf)
    pairs = np.array([[-np.inf if lo is None else lo, np.inf if hi is None else hi]
                      for lo, hi in bounds.reshape(-1, 2)], dtype=float)
    pairs = np.broadcast_to(pairs, (n, 2))
    return pairs[:, 0].copy(), pairs[:, 1].copy()


def dense(value) -> np.ndarray:
    """A float array from a file's entry; None (an object array holding it) is an empty one."""
    value = np.asarray(value)
    return np.zeros(0) if value.dtype == object and value.size == 1 and value.item() is None else \
        np.asarray(value, dtype=float)


def read_problem(path: Path) -> Netlib:
    """The LP in ``path`` (an ``.npz`` of scipy.optimize.linprog's arguments and ``obj``)."""
    with np.load(path, allow_pickle=True) as d:
        c = np.asarray(d["c"], dtype=float).reshape(-1)
        n = c.shape[0]
        A_ub, A_eq = (sp.csr_matrix(dense(d[k]).reshape(-1, n)) for k in ("A_ub", "A_eq"))
        b_ub, b_eq = (dense(d[k]).reshape(-1) for k in ("b_ub", "b_eq"))
        lo, hi = scipy_bounds(np.squeeze(d["bounds"]), n)
        obj = float(np.asarray(d["obj"]).reshape(-1)[0]) if "obj" in d else math.nan
    return Netlib(path.stem, LP(c, A_ub, b_ub, A_eq, b_eq, lo, hi), obj, A_ub.nnz + A_eq.nnz)


def find_problems(folder: Path, names: list[str] | None, max_nnz: int | None, all_infeasible: bool) -> list[Netlib]:
    """The feasible LPs of ``folder`` and the infeasible ones of ``folder/infeasible``, smallest first.

    ``names`` (case-insensitive) picks some; without it the infeasible ones are those of
    `ENABLED_INFEASIBLE` unless ``all_infeasible``. ``max_nnz`` drops the larger ones.
    """
    paths = sorted(folder.glob("*.npz"))
    paths += [p for p in sorted((folder / "infeasible").glob("*.npz")) if all_infeasible or names or
              p.stem in ENABLED_INFEASIBLE]
    if names:
        wanted = {n.lower() for n in names}
        unknown = wanted - {p.stem.lower() for p in paths}
        if unknown:
            raise SystemExit(f"--problems: no file for {sorted(unknown)} in {folder} or {folder / 'infeasible'}")
        paths = [p for p in paths if p.stem.lower() in wanted]
    problems = [read_problem(p) for p in paths]
    if max_nnz is not None:
        problems = [p for p in problems if p.nnz <= max_nnz]
    return sorted(problems, key=lambda p: (p.nnz, p.name))


def missing_data_message(folder: Path) -> str:
    return (f"no netlib .npz files in {folder}. They are the LPs of scipy's benchmark suite: copy "
            "benchmarks/benchmarks/linprog_benchmark_files/*.npz from scipy's source tree "
            "(git clone https://github.com/scipy/scipy) into a folder, the infeasible ones into its infeasible/ "
            "subfolder, and pass the folder: python benchmarks/netlib.py FOLDER")


# -- the solvers ----------------------------------------------------------------------------------------------
@dataclass
class Run:
    """One solve: the outcome, the objective at x (NaN without an optimum), the largest violation, the counts."""

    problem: str
    method: str
    tol: float | None
    outcome: str
    objective: float
    violation: float
    iterations: int
    matvecs: float | None
    seconds: float


def max_violation(lp: LP, x: np.ndarray | None) -> float:
    """``max`` of ``(A_ub x - b_ub)_+``, ``|A_eq x - b_eq|``, ``(lo - x)_+`` and ``(x - hi)_+`` (NaN without x)."""
    if x is None or not np.isfinite(x).all():
        return math.nan
    parts = [(lp.A_ub @ x - lp.b_ub).clip(min=0), np.abs(lp.A_eq @ x - lp.b_eq), (lp.lo - x).clip(min=0),
             (x - lp.hi).clip(min=0)]
    return float(max((p.max() for p in parts if p.size), default=0.0))


def finish(problem: Netlib, method: str, tol: float | None, outcome: str, x, iterations: int, matvecs, start: float
           ) -> Run:
    seconds = time.perf_counter() - start
    x = None if x is None else np.asarray(x, dtype=float)
    objective = float(problem.lp.c @ x) if outcome == OPTIMAL and x is not None else math.nan
    violation = max_violation(problem.lp, x) if outcome == OPTIMAL else math.nan
    return Run(problem.name, method, tol, outcome, objective, violation, int(iterations), matvecs, seconds)


def run_highs(problem: Netlib, time_limit: float) -> Run:
    lp = problem.lp
    start = time.perf_counter()
    res = scipy.optimize.linprog(lp.c, lp.A_ub, lp.b_ub, lp.A_eq, lp.b_eq, bounds=lp.bounds, method="highs",
                                 options={"time_limit": time_limit})
    return finish(problem, "highs", None, _SCIPY_OUTCOMES.get(res.status, NUMERICAL), res.x, res.nit, None, start)


def run_pdlp(problem: Netlib, program, tol: float, time_limit: float, max_iters: int | None) -> Run:
    params = pdlp_params(tol, 1, max_iters or 2**31 - 1, time_limit)
    start = time.perf_counter()
    result = pdlp.primal_dual_hybrid_gradient(program, params)
    log = result.solve_log
    reason = solve_log_pb2.TerminationReason.Name(log.termination_reason).removeprefix("TERMINATION_REASON_")
    return finish(problem, "pdlp", tol, _PDLP_OUTCOMES.get(reason, NUMERICAL), result.primal_solution,
                  log.iteration_count, 2.0 * log.solution_stats.cumulative_kkt_matrix_passes, start)


def saddle_arguments(lp: LP) -> dict:
    """``saddle.linprog``'s arguments as torch tensors (sparse COO matrices); blocks without rows left out."""
    args = dict(c=torch.as_tensor(lp.c), bounds=torch.as_tensor(lp.bounds))
    for A, b, name in ((lp.A_ub, lp.b_ub, "ub"), (lp.A_eq, lp.b_eq, "eq")):
        if A.shape[0]:
            args[f"A_{name}"], args[f"b_{name}"] = torch_sparse(A), torch.as_tensor(b)
    return args


_HAS_TIME_LIMIT = "time_limit" in inspect.signature(saddle.linprog).parameters


def run_saddle(problem: Netlib, args: dict, method: str, tol: float, time_limit: float, max_iters: int | None) -> Run:
    limits = dict(time_limit=time_limit) if _HAS_TIME_LIMIT else dict(callback=time_limit_callback(time_limit))
    if max_iters is not None:
        limits["max_iters"] = max_iters
    start = time.perf_counter()
    res = saddle.linprog(**args, method=method, tol=tol, **limits)
    return finish(problem, method, tol, _SCIPY_OUTCOMES[int(res.status)], res.x.numpy(), int(res.nit),
                  float(res.matvecs), start)


def attempt(run, problem: Netlib, method: str, tol: float | None, *args) -> Run:
    """``run(problem, *args)``; an exception is reported (on stderr) and recorded as the outcome `FAILED`."""
    start = time.perf_counter()
    try:
        return run(problem, *args)
    except Exception as err:  # one failing solve must not end the benchmark
        print(f"{method} tol={fmt(tol, 'g')} on {problem.name}: {type(err).__name__}: {err}", file=sys.stderr)
        return finish(problem, method, tol, FAILED, None, 0, None, start)


# -- the report -----------------------------------------------------------------------------------------------
def is_right(run: Run, problem: Netlib) -> bool:
    """The outcome is the known answer (PDLP's "infeasible or unbounded" counts for an infeasible LP)."""
    return run.outcome == problem.expected or (problem.expected == INFEASIBLE and run.outcome == INF_OR_UNB)


def is_wrong(run: Run, problem: Netlib) -> bool:
    """An answer that contradicts the known one: a false certificate, or an "optimum" of an infeasible LP."""
    return run.outcome in _CLAIMS and not is_right(run, problem)


def objective_error(run: Run, reference: float) -> float:
    return abs(run.objective - reference) / (1 + abs(reference))


def without_nan(value):
    """``value`` with every NaN float replaced by None (JSON has no NaN)."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: without_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [without_nan(v) for v in value]
    return value


def shifted_geomean(values, shift: float) -> float:
    """``exp(mean(log(v + shift))) - shift``."""
    values = np.asarray(values, dtype=float)
    return float(np.exp(np.log(values + shift).mean()) - shift) if values.size else math.nan


def fmt(value, spec: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


ROW_HEADER = ("problem", "nnz", "known", "method", "tol", "status", "right", "obj. error vs HiGHS",
              "max violation", "iterations", "matvecs", "time [s]")


def row(problem: Netlib, run: Run, reference: float) -> str:
    verdict = "yes" if is_right(run, problem) else ("**WRONG**" if is_wrong(run, problem) else "no")
    cells = (problem.name, problem.nnz, problem.expected, run.method, fmt(run.tol, "g"), run.outcome, verdict,
             fmt(objective_error(run, reference), ".1e"), fmt(run.violation, ".1e"), run.iterations,
             fmt(run.matvecs, ".0f"), f"{run.seconds:.3g}")
    return "| " + " | ".join(map(str, cells)) + " |"


def summary(problems: list[Netlib], runs: list[Run], methods: list[str], tols: list[float]) -> list[str]:
    """Per method and tol: solved / certified counts, wrong statuses, shifted geometric means over the
    problems all methods solved at that tol, and ratios against PDLP and pdhg on those."""
    by = {(r.problem, r.method, r.tol): r for r in runs}
    header = ("method", "tol", "solved (feasible)", "certified (infeasible)", "wrong statuses", "common problems",
              "time sgm [s]", "matvecs sgm", "PDLP / this time", "PDLP / this matvecs", "pdhg / this matvecs")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    n_feasible = sum(p.expected == OPTIMAL for p in problems)
    for tol in tols:
        keys = [(m, None if m == "highs" else tol) for m in methods]
        solved = [p for p in problems if all(is_right(by[(p.name, m, t)], p) for m, t in keys)]
        means = {}
        for m, t in keys:
            chosen = [by[(p.name, m, t)] for p in solved]
            mv = [r.matvecs for r in chosen]
            means[m] = (shifted_geomean([r.seconds for r in chosen], TIME_SHIFT),
                        shifted_geomean(mv, MATVEC_SHIFT) if m not in ("highs",) else math.nan)

        def ratio(base: str, m: str, i: int) -> str:
            if base not in means or m in (base, "highs", "pdlp") or math.isnan(means[m][i]) or not solved:
                return "-"
            return f"{means[base][i] / means[m][i]:.3g}x"

        for m, t in keys:
            mine = [(p, by[(p.name, m, t)]) for p in problems]
            feasible = sum(is_right(r, p) for p, r in mine if p.expected == OPTIMAL)
            certified = sum(is_right(r, p) for p, r in mine if p.expected == INFEASIBLE)
            wrong = sum(is_wrong(r, p) for p, r in mine)
            cells = (m, f"{tol:g}" if t is not None else f"({tol:g} set)", f"{feasible}/{n_feasible}",
                     f"{certified}/{len(problems) - n_feasible}", f"**{wrong}**" if wrong else "0", len(solved),
                     fmt(means[m][0]), fmt(means[m][1], ".4g"), ratio("pdlp", m, 0), ratio("pdlp", m, 1),
                     ratio("pdhg", m, 1))
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return lines


def available_methods(wanted: list[str], notes: list[str]) -> list[str]:
    """The methods of ``wanted`` that can run here, with a note for each one skipped."""
    methods = []
    for m in wanted:
        if m == "pdlp" and PDLP_MISSING is not None:
            notes.append(f"pdlp skipped: {PDLP_MISSING} (pip install ortools, or the 'bench' extra)")
        elif m not in ("highs", "pdlp") and m not in saddle.solver_names():
            notes.append(f"{m} skipped: not a registered saddle solver in this checkout")
        else:
            methods.append(m)
    return methods


def warm_up(problem: Netlib, methods: list[str]) -> None:
    """First calls load kernels and allocate; not charged to any problem."""
    args = saddle_arguments(problem.lp)
    for m in methods:
        if m == "highs":
            run_highs(problem, 10.0)
        elif m == "pdlp":
            run_pdlp(problem, pdlp_program(problem.lp), 1e-4, 10.0, 1000)
        else:
            run_saddle(problem, args, m, 1e-4, 10.0, 1000)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER),
                        help=f"folder of the netlib .npz files, infeasible ones in its infeasible/ subfolder "
                             f"(default: {DEFAULT_FOLDER})")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="only these problems (file names, any case)")
    parser.add_argument("--max-nnz", type=int, default=None, help="only problems with at most N nonzeros")
    parser.add_argument("--all-infeasible", action="store_true",
                        help=f"all of infeasible/ (default: the {len(ENABLED_INFEASIBLE)} scipy's benchmark enables)")
    parser.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated (default: {','.join(METHODS)})")
    parser.add_argument("--tols", default="1e-4,1e-8", help="relative KKT tolerances (default: 1e-4,1e-8)")
    parser.add_argument("--time-limit", type=float, default=120.0, help="seconds per solver and problem (default 120)")
    parser.add_argument("--max-iters", type=int, default=None,
                        help="iteration limit of PDLP and saddle (default: none for PDLP, linprog's default)")
    parser.add_argument("--json", metavar="PATH", help="also write every run and the summary to this JSON file")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (under a minute): problems with at most 300 nonzeros, tol 1e-4, 5 s per "
                             "problem")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_nnz = 300 if args.max_nnz is None else args.max_nnz
        args.tols, args.time_limit = "1e-4", min(args.time_limit, 5.0)
    args.methods = [m.strip().lower() for m in args.methods.split(",") if m.strip()]
    unknown = set(args.methods) - set(METHODS)
    if unknown:
        parser.error(f"--methods takes {', '.join(METHODS)}, got {sorted(unknown)}")
    try:
        args.tols = [float(t) for t in args.tols.split(",") if t.strip()]
    except ValueError:
        parser.error(f"--tols takes comma-separated numbers, got {args.tols!r}")
    if not args.time_limit > 0:
        parser.error(f"--time-limit must be positive, got {args.time_limit}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    folder = Path(args.folder)
    if not any(folder.glob("*.npz")):
        print(missing_data_message(folder), file=sys.stderr)
        return 1
    problems = find_problems(folder, args.problems, args.max_nnz, args.all_infeasible)
    notes: list[str] = []
    methods = available_methods(args.methods, notes)
    if not _HAS_TIME_LIMIT:
        notes.append("saddle.linprog has no time_limit here: saddle stops by a callback at the first check "
                     "after the limit")
    pdlp_text = f"OR-tools {ortools.__version__} PDLP" if PDLP_MISSING is None else "no PDLP"
    print(f"# netlib: {len(problems)} LPs from {folder}; methods {', '.join(methods)}; tols "
          f"{', '.join(f'{t:g}' for t in args.tols)}; {args.time_limit:g} s per problem; one thread each; "
          f"{platform.processor() or platform.machine()}, torch {torch.__version__}, scipy {scipy.__version__}, "
          f"{pdlp_text}, saddle.linprog default method {getattr(saddle.lp, 'DEFAULT_METHOD', 'pdhg')}")
    for note in notes:
        print(f"\nNote: {note}")
    if not problems:
        print("\nno problem left after the filters")
        return 0
    warm_up(min(problems, key=lambda p: p.nnz), methods)

    begin = time.perf_counter()
    print("\n| " + " | ".join(ROW_HEADER) + " |\n|" + "---|" * len(ROW_HEADER), flush=True)
    runs: list[Run] = []
    for problem in problems:
        program = pdlp_program(problem.lp) if "pdlp" in methods else None
        saddle_args = saddle_arguments(problem.lp)
        mine = [attempt(run_highs, problem, "highs", None, args.time_limit)] if "highs" in methods else []
        for tol in args.tols:
            for m in methods:
                if m == "pdlp":
                    mine.append(attempt(run_pdlp, problem, m, tol, program, tol, args.time_limit, args.max_iters))
                elif m != "highs":
                    mine.append(attempt(run_saddle, problem, m, tol, saddle_args, m, tol, args.time_limit,
                                        args.max_iters))
        highs = next((r for r in mine if r.method == "highs" and r.outcome == OPTIMAL), None)
        reference = highs.objective if highs else problem.obj
        print("\n".join(row(problem, r, reference) for r in mine), flush=True)
        runs.extend(mine)
    elapsed = time.perf_counter() - begin

    by_name = {p.name: p for p in problems}
    wrong = [r for r in runs if is_wrong(r, by_name[r.problem])]
    table = summary(problems, runs, methods, args.tols)
    print(f"\nSummary: solved = right status within {args.time_limit:g} s (feasible: converged at tol; infeasible: "
          f"a certificate); sgm = shifted geometric mean (time shift {1e3 * TIME_SHIFT:g} ms, matvecs shift "
          f"{MATVEC_SHIFT:g}) over the common problems, those every method solved at that tol; "
          "ratios > 1: this method is faster.\n")
    print("\n".join(table))
    if wrong:
        print(f"\n!!! {len(wrong)} WRONG STATUS(ES) (a false certificate or a false optimum):")
        for r in wrong:
            print(f"!!!   {r.method} tol={fmt(r.tol, 'g')} on {r.problem}: {r.outcome}, "
                  f"known: {by_name[r.problem].expected}")
    else:
        print("\nNo wrong status.")
    print(f"\n{len(runs)} runs in {elapsed:.0f} s (warm-up excluded).")
    if args.json:
        Path(args.json).write_text(json.dumps(without_nan({
            "problems": [dict(name=p.name, nnz=p.nnz, obj=None if math.isnan(p.obj) else p.obj) for p in problems],
            "runs": [asdict(r) for r in runs], "summary": table, "wrong": [asdict(r) for r in wrong],
            "time_limit": args.time_limit, "tols": args.tols, "methods": methods, "notes": notes,
        }), indent=1, allow_nan=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
