"""Linear programs: saddle's restarted PDHG vs scipy's HiGHS vs OR-tools' PDLP, in one run.

Three families of LPs, each solved by every solver in the same run:

  (a) the matrix-game batch of the foundation benchmark: B random n x n games
      (payoffs uniform in [-1, 1], ``problems.get("matrix_game", n, batch_size=B, seed)``);
      HiGHS and PDLP solve the games one by one, saddle the whole batch at once;
  (b) single dense games of size n (default 200, 1000, 2000);
  (c) random sparse LPs with a given number of nonzeros (default 10^4, 3 x 10^4,
      10^5), feasible by construction (``b_eq = A_eq x_f``, ``b_ub = A_ub x_f + slack``
      for a point x_f inside the bounds) and bounded (finite variable bounds),
      with equality and inequality rows.

A game ``min_x max_y x^T A y`` is the LP ``min v  s.t.  A^T x <= v 1, sum x = 1,
x >= 0`` (v free). Solvers and tolerances:

  * ``saddle.linprog`` (``--method``: restarted Halpern PDHG by default, or PDLP's scheme; "saddle LP" rows) with
    ``tol`` = PDLP's relative KKT error (`saddle.LinearProgram.kkt`: L2 primal
    residual / (1 + |b|), dual residual / (1 + |c|), gap / (1 + |primal| + |dual|));
  * for the games also ``saddle.solve(game, "pdhg", measure="gap")`` on the
    simplex form ("saddle game" rows; ``tol`` is the absolute duality gap of the
    game, payoffs in [-1, 1]);
  * OR-tools PDLP with ``eps_optimal_absolute = eps_optimal_relative = tol`` in
    the L2 norm, which is the same criterion as saddle's relative KKT error;
    matrix-vector products are ``2 x cumulative_kkt_matrix_passes`` from its
    solve log (one pass = one product with K and one with K^T);
  * HiGHS (``scipy.optimize.linprog(method="highs")``, default tolerances, one
    time per problem): the reference for the objective error
    ``|f - f_HiGHS| / (1 + |f_HiGHS|)``.

Ratios are ``HiGHS time / saddle time`` and ``PDLP time / saddle time`` at the same
tolerance (> 1: saddle is faster). Times are wall-clock seconds of the whole call
(setup and preconditioning included; the data is converted to each solver's
input format beforehand). Iterations are per instance (median / max over a
batch); matvecs are summed over the instances (a batch moves in lockstep, so
saddle's batched kernels actually do B x max iterations of products).

The second table relates saddle's time per PDHG iteration to the time of the
bare products it must do per iteration (one ``K x`` and one ``K^T y`` with the
same matrix, layout and batch, timed in the same run with the same threads):
"bare" makes the products with the same torch calls as `saddle.coupling.Bilinear`
(batched ``matmul`` / CSR times a dense ``(n, B)`` matrix), "best bare" with the
fastest plain torch call (``torch.mv`` on the 2-D matrix where B = 1);
"step / bare" is ``PDHG.step`` alone (64-step chunks, so restart checks are
included), "solve / bare" the whole ``linprog`` call at the tightest tolerance
divided by its iterations (driver checks, setup and final evaluation included).
PDLP runs with 1 thread below 10^5 nonzeros by default (``--pdlp-threads``).

    python benchmarks/linear_programs.py                 # everything: about 20 min with --threads 1 on 2 cores
    python benchmarks/linear_programs.py --quick         # smoke run, small sizes: 1 to 1.5 min on 2 cores
    python benchmarks/linear_programs.py --cases b --dense-n 1000 --tols 1e-4
    python benchmarks/linear_programs.py --cases c --nnz 100000 --threads 1
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from dataclasses import dataclass, field

import numpy as np
import scipy
import scipy.optimize
import scipy.sparse as sp
import torch

from saddle import problems
import saddle

try:
    import ortools
    from ortools.pdlp import solve_log_pb2, solvers_pb2
    from ortools.pdlp.python import pdlp

    PDLP_MISSING = None
except Exception as err:  # the rest of the benchmark still runs
    PDLP_MISSING = f"OR-tools PDLP could not be imported ({type(err).__name__}: {err})"


# -- problems ------------------------------------------------------------------------------------------
@dataclass
class LP:
    """One LP ``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  lo <= x <= hi`` (numpy / scipy.sparse)."""

    c: np.ndarray
    A_ub: np.ndarray | sp.spmatrix
    b_ub: np.ndarray
    A_eq: np.ndarray | sp.spmatrix
    b_eq: np.ndarray
    lo: np.ndarray
    hi: np.ndarray

    @property
    def bounds(self) -> np.ndarray:
        return np.stack([self.lo, self.hi], -1)


@dataclass
class Case:
    """A family member: a list of LPs (solved one by one by HiGHS and PDLP) and saddle's batched inputs."""

    name: str
    lps: list[LP]
    saddle_args: dict                 # keyword arguments of saddle.linprog for the whole batch
    game: object | None = None        # the BilinearProblem of the games (simplex form), if any
    shape: str = ""
    extra: dict = field(default_factory=dict)


def game_lp(K: np.ndarray) -> LP:
    """The LP of ``min_x max_y <K x, y>`` on simplices (K = A^T, m x n): ``min v  s.t.  K x <= v 1, sum x = 1``."""
    m, n = K.shape
    return LP(c=np.r_[np.zeros(n), 1.0], A_ub=np.hstack([K, -np.ones((m, 1))]), b_ub=np.zeros(m),
              A_eq=np.r_[np.ones(n), 0.0][None], b_eq=np.ones(1),
              lo=np.r_[np.zeros(n), -np.inf], hi=np.full(n + 1, np.inf))


def game_case(name: str, n: int, B: int, seed: int) -> Case:
    game = problems.get("matrix_game", n=n, batch_size=B, seed=seed, dtype=torch.float64)
    K = game.coupling.K.detach().cpu().numpy()  # (B, m, n) = A^T
    lps = [game_lp(K[i]) for i in range(B)]
    m = K.shape[1]
    Kt = torch.as_tensor(K)
    A_ub = torch.cat([Kt, -torch.ones(B, m, 1, dtype=torch.float64)], -1)
    args = dict(c=torch.as_tensor(np.stack([lp.c for lp in lps])), A_ub=A_ub, b_ub=torch.zeros(B, m, dtype=torch.float64),
                A_eq=torch.as_tensor(lps[0].A_eq), b_eq=torch.ones(B, 1, dtype=torch.float64),
                bounds=[(0, None)] * n + [(None, None)])
    return Case(name, lps, args, game=game, shape=f"{B} x ({m + 1} x {n + 1}) dense")


def sparse_lp(nnz: int, seed: int) -> LP:
    """A random sparse feasible bounded LP with about ``nnz`` nonzeros: n = nnz / 10, m = n / 2 (1/5 equalities).

    Entries are standard normal at uniformly random positions (every row and
    column gets at least one); c is standard normal; 0 <= x <= u with u uniform
    in [1, 10]; the right-hand sides come from x_f uniform inside the bounds,
    plus a slack uniform in [0, 1] on the inequalities.
    """
    rng = np.random.default_rng(seed)
    n = max(20, nnz // 10)
    m = max(10, n // 2)
    m_eq = max(1, m // 5)
    rows = rng.integers(0, m, nnz)
    cols = rng.integers(0, n, nnz)
    rows[:m] = np.arange(m)                # every row nonempty
    cols[m:m + n] = rng.permutation(n) if nnz >= m + n else cols[m:m + n]  # every column nonempty
    A = sp.coo_matrix((rng.standard_normal(nnz), (rows, cols)), shape=(m, n)).tocsr()
    A.sum_duplicates()
    hi = rng.uniform(1.0, 10.0, n)
    x_f = rng.uniform(0.0, 1.0, n) * hi
    b = A @ x_f
    A_eq, A_ub = A[:m_eq], A[m_eq:]
    return LP(c=rng.standard_normal(n), A_ub=A_ub, b_ub=b[m_eq:] + rng.uniform(0.0, 1.0, m - m_eq),
              A_eq=A_eq, b_eq=b[:m_eq], lo=np.zeros(n), hi=hi)


def torch_sparse(A: sp.spmatrix) -> torch.Tensor:
    A = A.tocoo()
    idx = torch.as_tensor(np.vstack([A.row, A.col]), dtype=torch.int64)
    return torch.sparse_coo_tensor(idx, torch.as_tensor(A.data), A.shape, check_invariants=True).coalesce()


def sparse_case(nnz: int, seed: int) -> Case:
    lp = sparse_lp(nnz, seed)
    args = dict(c=torch.as_tensor(lp.c), A_ub=torch_sparse(lp.A_ub), b_ub=torch.as_tensor(lp.b_ub),
                A_eq=torch_sparse(lp.A_eq), b_eq=torch.as_tensor(lp.b_eq), bounds=torch.as_tensor(lp.bounds))
    m_eq, m_ub, n = lp.A_eq.shape[0], lp.A_ub.shape[0], lp.c.shape[0]
    total = lp.A_eq.nnz + lp.A_ub.nnz
    return Case(f"sparse LP, nnz={total}", [lp], args,
                shape=f"{m_eq}+{m_ub} x {n} sparse, {total} nnz")


# -- solvers ---------------------------------------------------------------------------------------------
@dataclass
class Run:
    solver: str
    tol: float | None
    seconds: float
    iterations: list[int]
    matvecs: list[float]
    statuses: list[str]
    objectives: np.ndarray
    note: str = ""
    per_iteration: float | None = None  # saddle: solve time / loop iterations


def status_summary(statuses: list[str]) -> str:
    counts: dict[str, int] = {}
    for s in statuses:
        counts[s] = counts.get(s, 0) + 1
    return ", ".join(f"{v} {k}" if len(statuses) > 1 else k for k, v in counts.items())


def run_highs(case: Case, time_limit: float) -> Run:
    objectives, iterations, statuses = [], [], []
    start = time.perf_counter()
    for lp in case.lps:
        res = scipy.optimize.linprog(lp.c, lp.A_ub, lp.b_ub, lp.A_eq, lp.b_eq, bounds=lp.bounds, method="highs",
                                     options={"time_limit": time_limit})
        objectives.append(res.fun if res.status == 0 else math.nan)
        iterations.append(int(res.nit))
        statuses.append("optimal" if res.status == 0 else _SCIPY_NAMES.get(res.status, f"status {res.status}"))
    seconds = time.perf_counter() - start
    return Run("HiGHS", None, seconds, iterations, [], statuses, np.array(objectives, dtype=float))


def pdlp_program(lp: LP):
    qp = pdlp.QuadraticProgram()
    A = sp.vstack([sp.csr_matrix(lp.A_eq), sp.csr_matrix(lp.A_ub)]).tocsc()
    qp.objective_vector = lp.c
    qp.constraint_matrix = A
    qp.constraint_lower_bounds = np.r_[lp.b_eq, np.full(lp.b_ub.shape, -np.inf)]
    qp.constraint_upper_bounds = np.r_[lp.b_eq, lp.b_ub]
    qp.variable_lower_bounds = lp.lo
    qp.variable_upper_bounds = lp.hi
    return qp


def pdlp_params(tol: float, threads: int, max_iters: int, time_limit: float):
    params = solvers_pb2.PrimalDualHybridGradientParams()
    crit = params.termination_criteria
    crit.optimality_norm = solvers_pb2.OPTIMALITY_NORM_L2
    crit.simple_optimality_criteria.eps_optimal_absolute = tol
    crit.simple_optimality_criteria.eps_optimal_relative = tol
    crit.iteration_limit = max_iters
    crit.time_sec_limit = time_limit
    params.num_threads = threads
    params.verbosity_level = 0
    return params


def pdlp_threads(case: Case, args) -> int:
    """PDLP's threads: ``--pdlp-threads``, or with "auto" 1 below 10^5 nonzeros (its per-iteration
    thread synchronization costs more than it saves there: 50x slower on 50 x 50 games with 2 threads)."""
    if args.pdlp_threads != "auto":
        return int(args.pdlp_threads)
    nnz = case.lps[0].A_ub.size + case.lps[0].A_eq.size if not sp.issparse(case.lps[0].A_ub) else \
        case.lps[0].A_ub.nnz + case.lps[0].A_eq.nnz
    return 1 if nnz < 100_000 else args.threads


def run_pdlp(case: Case, tol: float, args, programs) -> Run:
    threads = pdlp_threads(case, args)
    params = pdlp_params(tol, threads, args.max_iters, args.time_limit)
    objectives, iterations, matvecs, statuses = [], [], [], []
    start = time.perf_counter()
    for lp, qp in zip(case.lps, programs):
        result = pdlp.primal_dual_hybrid_gradient(qp, params)
        log = result.solve_log
        reason = solve_log_pb2.TerminationReason.Name(log.termination_reason).removeprefix("TERMINATION_REASON_")
        statuses.append(reason.lower())
        iterations.append(int(log.iteration_count))
        matvecs.append(2 * log.solution_stats.cumulative_kkt_matrix_passes)
        objectives.append(float(lp.c @ np.asarray(result.primal_solution)) if reason == "OPTIMAL" else math.nan)
    seconds = time.perf_counter() - start
    return Run(f"PDLP ({threads} thread{'s' if threads > 1 else ''})", tol, seconds, iterations, matvecs, statuses,
               np.array(objectives))


_SCIPY_NAMES = {0: "solved", 1: "iteration/time limit", 2: "infeasible", 3: "unbounded", 4: "diverged"}


def time_limit_callback(limit: float):
    start = time.perf_counter()
    return lambda progress: time.perf_counter() - start > limit


def run_saddle_lp(case: Case, tol: float, args) -> Run:
    start = time.perf_counter()
    res = saddle.linprog(**case.saddle_args, tol=tol, max_iters=args.max_iters, check_every=args.check_every,
                         method=args.method, callback=time_limit_callback(args.time_limit))
    seconds = time.perf_counter() - start
    nit = res.nit.reshape(-1).tolist()
    return Run("saddle LP", tol, seconds, nit, (res.matvecs.reshape(-1).double()).tolist(),
               [_SCIPY_NAMES[int(s)] for s in res.status.reshape(-1)], res.fun.reshape(-1).cpu().numpy(),
               note=f"saddle.linprog({args.method})", per_iteration=seconds / max(1, max(nit)))


def run_saddle_game(case: Case, tol: float, args) -> Run:
    game = case.game
    start = time.perf_counter()
    sol = saddle.solve(game, "pdhg", tol=tol, measure="gap", max_iters=args.max_iters, check_every=args.check_every,
                       history=False, callback=time_limit_callback(args.time_limit))
    seconds = time.perf_counter() - start
    x = sol.x
    value = game.coupling.mv(x).amax(-1)  # max_y <K x, y>: the LP objective of (x, v = max_j (K x)_j)
    nit = sol.iterations.tolist()
    return Run("saddle game", tol, seconds, nit, (2 * sol.operator_calls).double().tolist(),
               [saddle.Status(int(s)).name.lower() for s in sol.status], value.cpu().numpy(),
               note="saddle.solve(pdhg, gap)", per_iteration=seconds / max(1, max(nit)))


# -- the per-iteration floor -------------------------------------------------------------------------------
def _timed(fn, min_seconds: float, min_reps: int) -> float:
    """Seconds per call of ``fn``: the best of 5 rounds, each at least ``min_seconds / 5`` and ``min_reps`` calls
    (interference from other processes only adds time, so the minimum is the robust estimate of a floor)."""
    fn()
    rounds = []
    for _ in range(5):
        reps, start = 0, time.perf_counter()
        while reps < min_reps or time.perf_counter() - start < min_seconds / 5:
            fn()
            reps += 1
        rounds.append((time.perf_counter() - start) / reps)
    return min(rounds)


def bare_products(coupling, B: int, min_seconds: float) -> float:
    """Seconds of one ``K x`` and one ``K^T y`` for a batch of B points, as the plain torch products saddle does."""
    _, m, n = coupling.shape
    x = torch.rand(B, n, dtype=coupling.dtype)
    y = torch.rand(B, m, dtype=coupling.dtype)
    if coupling.sparse:
        K, Kt = coupling.K, coupling._Kt  # CSR and the CSR transpose that saddle multiplies with

        def products():
            (K @ x.mT).mT
            (Kt @ y.mT).mT
    else:
        K = coupling.K

        def products():
            torch.matmul(K, x.unsqueeze(-1))
            torch.matmul(K.mT, y.unsqueeze(-1))
    return _timed(products, min_seconds, 10)


def best_products(coupling, B: int, min_seconds: float) -> float:
    """Seconds of the fastest plain torch way to do the same two products (``torch.mv`` on 2-D matrices
    for B = 1, where saddle's batched calls go through ``bmm`` / sparse-times-dense-matrix kernels)."""
    _, m, n = coupling.shape
    if B > 1:
        return bare_products(coupling, B, min_seconds)
    x = torch.rand(n, dtype=coupling.dtype)
    y = torch.rand(m, dtype=coupling.dtype)
    if coupling.sparse:
        K, Kt = coupling.K, coupling._Kt
    else:
        K = coupling.K[0]
        Kt = K.mT

    def products():
        torch.mv(K, x)
        torch.mv(Kt, y)
    return min(_timed(products, min_seconds, 10), bare_products(coupling, B, min_seconds))


def saddle_lp_problem(case: Case) -> saddle.LinearProgram:
    """The `LinearProgram` that ``saddle.linprog`` builds for the case (same K layout)."""
    a = case.saddle_args
    c = a["c"] if a["c"].dim() == 2 else a["c"].unsqueeze(0)
    B, n = c.shape
    if a["A_ub"].layout != torch.strided:
        K = torch.cat([a["A_eq"], a["A_ub"]], 0).coalesce()
        d = torch.cat([a["b_eq"], a["b_ub"]], -1).reshape(1, -1).expand(B, -1)
        bounds = a["bounds"]
        lo, hi = bounds[:, 0].unsqueeze(0), bounds[:, 1].unsqueeze(0)
    else:
        A_eq = a["A_eq"].expand(B, -1, -1) if a["A_eq"].dim() == 3 else a["A_eq"].unsqueeze(0).expand(B, -1, -1)
        K = torch.cat([A_eq, a["A_ub"]], 1)
        d = torch.cat([a["b_eq"], a["b_ub"]], -1)
        pairs = torch.tensor([[(-math.inf if l is None else l), (math.inf if h is None else h)]
                              for l, h in a["bounds"]], dtype=torch.float64)
        lo, hi = pairs[:, 0].unsqueeze(0), pairs[:, 1].unsqueeze(0)
    return saddle.LinearProgram(c, K, d, a["A_eq"].shape[-2], lo, hi)


def step_seconds(problem, min_seconds: float) -> float:
    """Seconds per ``PDHG.step`` (default settings), in chunks of 64 steps so restart checks are included."""
    solver = saddle.PDHG()
    z = problem.domain.project(problem.z0)
    state0 = solver.init(problem, z)
    carry = {"z": z, "state": state0}

    def chunk():
        zz, st = carry["z"], carry["state"]
        for _ in range(solver.restart_every):
            zz, st = solver.step(problem, zz, st)
        carry["z"], carry["state"] = zz, st

    return _timed(chunk, min_seconds, 1) / solver.restart_every


# -- the report ----------------------------------------------------------------------------------------------
def fmt_iters(it: list[int]) -> str:
    if not it:
        return "-"
    if len(it) == 1:
        return str(it[0])
    return f"{int(statistics.median(it))} / {max(it)}"


def fmt_matvecs(mv: list[float]) -> str:
    if not mv:
        return "-"
    total = sum(mv)
    return f"{total:.3g}" if total >= 1e5 else f"{int(round(total))}"


_FINISHED = ("optimal", "solved", "converged")


def ratio(slow: Run, fast: Run) -> str:
    """``slow.seconds / fast.seconds``, as a bound (> or <) where either did not finish every problem."""
    bound = ""
    if any(s not in _FINISHED for s in slow.statuses):
        bound = ">"
    if any(s not in _FINISHED for s in fast.statuses):
        bound = "?" if bound else "<"
    return f"{bound}{slow.seconds / fast.seconds:.3g}x"


def objective_error(run: Run, reference: np.ndarray) -> str:
    err = np.abs(run.objectives - reference) / (1 + np.abs(reference))
    if np.isnan(err).all():
        return "-"
    worst = np.nanmax(err)
    return f"{worst:.1e}" + (" (some NaN)" if np.isnan(err).any() else "")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", default="a,b,c", help="which families: a (game batch), b (dense games), "
                                                          "c (sparse LPs); comma-separated (default: a,b,c)")
    parser.add_argument("--batch", type=int, default=256, help="(a) number of games B (default 256)")
    parser.add_argument("--game-n", type=int, default=50, help="(a) size n of each game (default 50)")
    parser.add_argument("--dense-n", default="200,1000,2000", help="(b) game sizes n (default 200,1000,2000)")
    parser.add_argument("--nnz", default="10000,30000,100000", help="(c) nonzeros (default 10000,30000,100000)")
    parser.add_argument("--tols", default="1e-4,1e-8", help="relative tolerances (default 1e-4,1e-8)")
    parser.add_argument("--game-form", choices=("a", "ab", "none"), default="a",
                        help="where to also run saddle.solve(game, 'pdhg', measure='gap') on the simplex form "
                             "besides saddle.linprog: case a (default), cases a and b, or nowhere")
    parser.add_argument("--pdlp-threads", default="auto",
                        help="PDLP's threads (default auto: 1 below 10^5 nonzeros, else --threads)")
    parser.add_argument("--no-pdlp", action="store_true", help="skip OR-tools PDLP")
    parser.add_argument("--method", choices=saddle.lp.METHODS, default=saddle.lp.DEFAULT_METHOD,
                        help=f"saddle.linprog's method (default {saddle.lp.DEFAULT_METHOD})")
    parser.add_argument("--max-iters", type=int, default=200_000, help="iteration limit of saddle and PDLP")
    parser.add_argument("--time-limit", type=float, default=300.0,
                        help="seconds per solver and problem (PDLP's and HiGHS's time limit; saddle stops "
                             "at the next check after it), default 300")
    parser.add_argument("--check-every", type=int, default=64, help="saddle's iterations between checks")
    parser.add_argument("--floor-seconds", type=float, default=1.0,
                        help="seconds spent timing the bare products and the PDHG step, per case")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None,
                        help="threads for torch and PDLP (default: torch.get_num_threads())")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run (about a minute): B=16 games of n=50, one dense game n=200, one sparse LP "
                             "with 10^4 nonzeros, tolerances 1e-4 and 1e-6")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    args.threads = torch.get_num_threads()
    if args.quick:
        args.batch, args.dense_n, args.nnz, args.tols = 16, "200", "10000", "1e-4,1e-6"
        args.floor_seconds = min(args.floor_seconds, 0.5)
    cases_wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
    if not cases_wanted <= {"a", "b", "c"}:
        parser.error(f"--cases takes a, b and c, got {args.cases!r}")
    tols = [float(t) for t in args.tols.split(",")]
    use_pdlp = PDLP_MISSING is None and not args.no_pdlp

    cpu = platform.processor() or platform.machine() or "cpu"
    pdlp_text = f"OR-tools {ortools.__version__} PDLP" if use_pdlp else ("PDLP skipped" if args.no_pdlp
                                                                         else PDLP_MISSING)
    print(f"# linear programs: saddle (PDHG) vs HiGHS (scipy {scipy.__version__}) vs {pdlp_text}; "
          f"{cpu}, {args.threads} threads (torch, PDLP; HiGHS serial), torch {torch.__version__}, float64")
    if not use_pdlp and not args.no_pdlp:
        print(f"\n**PDLP is missing**: {PDLP_MISSING}; the PDLP columns are empty.")

    cases: list[Case] = []
    if "a" in cases_wanted:
        cases.append(game_case(f"(a) {args.batch} games n={args.game_n}", args.game_n, args.batch, args.seed))
        cases[-1].extra["game_form"] = args.game_form in ("a", "ab")
    if "b" in cases_wanted:
        for n in (int(v) for v in args.dense_n.split(",") if v):
            cases.append(game_case(f"(b) game n={n}", n, 1, args.seed))
            cases[-1].extra["game_form"] = args.game_form == "ab"
    if "c" in cases_wanted:
        for nnz in (int(v) for v in args.nnz.split(",") if v):
            case = sparse_case(nnz, args.seed)
            case.name = f"(c) {case.shape}"
            cases.append(case)

    # Warm-up: first calls load kernels and allocate; not charged to any solver.
    warm = game_case("warm-up", 5, 2, 1)
    saddle.linprog(**warm.saddle_args, tol=1e-4, max_iters=200)
    saddle.solve(warm.game, "pdhg", tol=1e-4, measure="gap", max_iters=200, history=False)
    warm_sparse = sparse_case(300, 1)
    saddle.linprog(**warm_sparse.saddle_args, tol=1e-4, max_iters=200)
    if use_pdlp:
        pdlp.primal_dual_hybrid_gradient(pdlp_program(warm.lps[0]), pdlp_params(1e-4, args.threads, 200, 10.0))

    header = ("case", "solver", "tol", "time [s]", "iterations (median / max)", "matvecs", "status",
              "obj. error vs HiGHS", "HiGHS / this", "PDLP / this")
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    floors = ["| case | saddle | B x m x n | bare K x + K^T y [ms] | best bare [ms] | PDHG step [ms] | step / bare "
              "| solve / iteration [ms] | solve / bare | solve / best bare |", "|" + "---|" * 10]
    print("\n" + "\n".join(table), flush=True)
    notes: list[str] = []
    for case in cases:
        highs = run_highs(case, args.time_limit)
        rows = [(highs, None)]
        programs = [pdlp_program(lp) for lp in case.lps] if use_pdlp else []
        pdlp_runs = {tol: run_pdlp(case, tol, args, programs) for tol in tols} if use_pdlp else {}
        saddle_runs = []
        game_form = case.game is not None and case.extra.get("game_form", False)
        for tol in tols:
            saddle_runs.append(run_saddle_lp(case, tol, args))
            if game_form:
                saddle_runs.append(run_saddle_game(case, tol, args))
        # The objective reference: HiGHS; where it did not finish, the tightest PDLP (else saddle LP) run.
        reference, marker = highs.objectives, ""
        if np.isnan(reference).any():
            candidates = [pdlp_runs.get(min(tols))] + [r for r in saddle_runs if r.tol == min(tols)]
            finished = [r for r in candidates if r is not None and all(st in _FINISHED for st in r.statuses)]
            fallback = (finished or [r for r in candidates if r is not None])[0]
            reference = np.where(np.isnan(reference), fallback.objectives, reference)
            marker = "*"
            notes.append(f"* {case.name}: HiGHS did not finish ({status_summary(highs.statuses)}; time limit "
                         f"{args.time_limit:g} s): objective errors are against {fallback.solver} at tol "
                         f"{fallback.tol:g}, and HiGHS / this ratios are lower bounds.")
        for tol in tols:
            if tol in pdlp_runs:
                rows.append((pdlp_runs[tol], None))
            rows.extend((r, pdlp_runs.get(tol)) for r in saddle_runs if r.tol == tol)
        lines = []
        for run, pdlp_run in rows:
            is_saddle = run.solver.startswith("saddle")
            highs_ratio = ratio(highs, run) if is_saddle else "-"
            pdlp_ratio = ratio(pdlp_run, run) if (is_saddle and pdlp_run) else "-"
            solver = run.solver + (" (loop)" if not is_saddle and len(case.lps) > 1 else "") + \
                (" (batch)" if is_saddle and len(case.lps) > 1 else "")
            lines.append(f"| {case.name} | {solver} | {'default' if run.tol is None else f'{run.tol:g}'} | "
                         f"{run.seconds:.3g} | {fmt_iters(run.iterations)} | {fmt_matvecs(run.matvecs)} | "
                         f"{status_summary(run.statuses)} | "
                         f"{'-' if run.solver == 'HiGHS' else objective_error(run, reference) + marker} | "
                         f"{highs_ratio} | {pdlp_ratio} |")
        table.extend(lines)
        print("\n".join(lines), flush=True)

        # The floor: bare products vs saddle's step and whole-solve per-iteration time (tightest tolerance run).
        tight = min(tols)
        kinds = [("LP", saddle_lp_problem(case), [r for r in saddle_runs if r.solver == "saddle LP"])]
        if game_form:
            kinds.append(("game", case.game, [r for r in saddle_runs if r.solver == "saddle game"]))
        for label, problem, runs in kinds:
            coupling = problem.coupling
            B, (_, m, n) = problem.batch_size, coupling.shape
            bare = bare_products(coupling, B, args.floor_seconds)
            best = min(bare, best_products(coupling, B, args.floor_seconds))
            step = step_seconds(problem, args.floor_seconds)
            run = next(r for r in runs if r.tol == tight)
            layout = f"{coupling.K._nnz()} nnz CSR" if coupling.sparse else "dense"
            floors.append(f"| {case.name} | {label} | {B} x {m} x {n} {layout} | {1e3 * bare:.3g} | "
                          f"{1e3 * best:.3g} | {1e3 * step:.3g} | {step / bare:.2f}x | "
                          f"{1e3 * run.per_iteration:.3g} | {run.per_iteration / bare:.2f}x | "
                          f"{run.per_iteration / best:.2f}x |")
    if notes:
        print("\n" + "\n".join(notes))
    print("\nPer-iteration cost vs the bare products (one K x and one K^T y per PDHG iteration; "
          f"solve / iteration from the tol={min(tols):g} run; saddle.linprog's problem for LP rows):\n")
    print("\n".join(floors), flush=True)


if __name__ == "__main__":
    main()
