"""Matrix games: saddle's batched first-order solves vs scipy's HiGHS one game at a time.

Solves B random n x n games (payoffs uniform in [-1, 1]) to duality gap
``--tol`` along one or more routes, and the same games one by one with
``scipy.optimize.linprog(method="highs")`` (default tolerances), in the same
run, and prints a table with the seconds and the ratio HiGHS / saddle. A route
is ``FORM:SOLVER[:k=v,...]``:

- ``game``: the game itself, ``min_{x in simplex} max_{y in simplex} x^T A y``
  (the solver projects onto the simplices, sort-based);
- ``lp`` / ``lp32``: its LP form (`saddle.problems.matrix_games.as_linear_program`:
  clamps instead of projections), solved in float64 / float32 iterations (a
  float32 result is re-checked in float64 by the driver). Every route stops
  on the game's duality gap at the strategies.

The solver setting ``step_size=exact`` gives r2hpdhg the step it would
estimate by power iteration, ``0.998 / |D_r K D_c|_2``, from ``eigvalsh`` of
the Gram matrices instead (inside the timing). Each route and the HiGHS loop
run ``--repeat`` times, interleaved; the table has the medians of the wall
time and of the process's CPU time (``time.process_time``: single-threaded,
it is less sensitive than wall time to other processes on a shared machine).
The value error column compares saddle's values with HiGHS's; ``--opcount``
adds the aten operations per iteration (`saddle.opcount`, products apart) of a
solve of ``--opcount-iters`` iterations.

    python benchmarks/matrix_games.py                      # B=256, n=50 and B=1, n=1000
    python benchmarks/matrix_games.py --case 256x50 --threads 1 --opcount
    python benchmarks/matrix_games.py --route lp:r2hpdhg --route game:pdhg --device cuda
"""

from __future__ import annotations

import argparse
import platform
import time
from typing import NamedTuple

import numpy as np
import torch

from saddle import problems
from saddle.problems.reference import matrix_game_lp
import saddle
from saddle.cli import parse_spec
from saddle.opcount import operations_per_iteration
from saddle.problems.matrix_games import as_linear_program
from saddle.solvers.pdhg_map import diagonal_preconditioner, separable

FORMS = {"game": torch.float64, "lp": torch.float64, "lp32": torch.float32}
#: The game form with both PDHG schemes; the LP form with r2hpdhg's defaults, and with the exact step and the
#: primal weight updated at every restart (the fastest on 256 games 50 x 50), in float64 and float32.
DEFAULT_ROUTES = ["game:r2hpdhg", "game:pdhg", "lp:r2hpdhg", "lp:r2hpdhg:step_size=exact,primal_weight_progress=1e9",
                  "lp32:r2hpdhg:step_size=exact,primal_weight_progress=1e9"]


class Route(NamedTuple):
    """How the games are solved: the form (``game``, ``lp``, ``lp32``), the solver's name and settings."""

    form: str
    solver: str
    settings: dict
    text: str


def parse_route(text: str) -> Route:
    """``"FORM:SOLVER[:k=v,...]"`` (a bare ``SOLVER[:k=v,...]`` is the game form) -> `Route`."""
    form, _, rest = text.partition(":")
    if form not in FORMS:
        form, rest = "game", text
    name, settings = parse_spec(rest)
    return Route(form, name, settings, text)


def exact_step_size(problem, solver) -> torch.Tensor:
    """``step_fraction / |D_r K D_c|_2`` ``(B,)`` for r2hpdhg, exactly (``eigvalsh`` of ``(D_r K D_c)^T D_r K D_c``).

    The preconditioner is the solver's (`diagonal_preconditioner`, where it applies); the norm is
    computed in float64 and the step returned in the problem's dtype.
    """
    if not hasattr(type(solver), "step_fraction"):
        raise ValueError(f"step_size=exact is r2hpdhg's step (0.998 / |D_r K D_c|_2), not {solver.name}'s")
    K = problem.coupling.dense().double()
    if solver.precondition is not False and (solver.precondition or separable(problem)):
        col, row = diagonal_preconditioner(problem.coupling, solver.ruiz_iterations)
        K = row.double().unsqueeze(-1) * K * col.double().unsqueeze(-2)
    norm = torch.linalg.eigvalsh(K.mT @ K)[..., -1].clamp_min(0).sqrt()
    step = type(solver).step_fraction / torch.where(norm > 0, norm, torch.ones_like(norm))
    return step.to(problem.dtype).expand(problem.batch_size)


def prepare(route: Route, game):
    """The problem the route solves (its LP form is made here, inside the timing) and its solver."""
    problem = game if route.form == "game" else as_linear_program(game).to(FORMS[route.form])
    settings = dict(route.settings)
    exact = settings.get("step_size") == "exact"
    if exact:
        settings.pop("step_size")
    solver = saddle.get_solver(route.solver, **settings)
    if exact:
        solver = saddle.get_solver(route.solver, step_size=exact_step_size(problem, solver), **settings)
    return problem, solver


def solve_route(route: Route, game, args):
    """One timed solve: ``(wall seconds, CPU seconds, problem, solution)``."""
    wall, cpu = time.perf_counter(), time.process_time()
    problem, solver = prepare(route, game)
    sol = saddle.solve(problem, solver, tol=args.tol, measure="gap", max_iters=args.max_iters,
                       check_every=args.check_every, history=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - wall, time.process_time() - cpu, problem, sol


def game_values(game, problem, sol) -> np.ndarray:
    """The games' values ``x^T A y`` (float64) at the solution's strategies (an LP point's `strategies`)."""
    z = tuple(t.double() for t in sol.z)
    return game.objective(problem.strategies(z) if problem is not game else z).cpu().numpy()


def highs_loop(A: np.ndarray) -> tuple[float, float, np.ndarray]:
    """``(wall seconds, CPU seconds, values)`` of HiGHS solving the games one by one."""
    wall, cpu = time.perf_counter(), time.process_time()
    values = np.array([matrix_game_lp(A[i], tolerance=None)[0] for i in range(A.shape[0])])  # HiGHS's defaults
    return time.perf_counter() - wall, time.process_time() - cpu, values


def operation_count(route: Route, game, args) -> str:
    """Aten operations per iteration besides the products, and in the products, of an ``--opcount-iters`` solve."""
    problem, solver = prepare(route, game)
    count = operations_per_iteration(problem, solver, max_iters=args.opcount_iters, measure="gap",
                                     check_every=args.check_every, history=False)
    return f"{count.per_iteration:.1f} + {count.products_per_iteration:.1f}"


def run_case(B: int, n: int, routes: list[Route], args) -> list[dict]:
    """Time the HiGHS loop and every route ``--repeat`` times, interleaved; one row per route."""
    game = problems.get("matrix_game", n=n, batch_size=B, seed=args.seed, device=args.device, dtype=torch.float64)
    A = game.K.mT.detach().cpu().numpy()
    for route in routes:  # warm-up (kernel loading, allocator) so that it is not charged to a solve
        problem, solver = prepare(route, game)
        saddle.solve(problem, solver, max_iters=2, tol=0.0, measure="gap", history=False)
    highs, times, last = [], {r.text: [] for r in routes}, {}
    for _ in range(args.repeat):
        wall, cpu, values = highs_loop(A)
        highs.append((wall, cpu))
        for route in routes:
            wall, cpu, problem, sol = solve_route(route, game, args)
            times[route.text].append((wall, cpu))
            last[route.text] = (problem, sol)
    highs_wall, highs_cpu = np.median(highs, 0)
    rows = []
    for route in routes:
        problem, sol = last[route.text]
        wall, cpu = np.median(times[route.text], 0)
        iterations = sol.iterations.double()
        rows.append({
            "case": f"B={B}, n={n}", "route": route.text, "highs": highs_wall, "highs_cpu": highs_cpu,
            "saddle": wall, "saddle_cpu": cpu, "ratio": highs_wall / wall, "ratio_cpu": highs_cpu / cpu,
            "status": sol.message, "iterations": f"{int(iterations.median())} / {int(iterations.max())}",
            "gap": float(sol.gap.max()),
            "value_error": float(np.abs(game_values(game, problem, sol) - values).max()),
            "ops": operation_count(route, game, args) if args.opcount else "-",
        })
    return rows


HEADER = ("case", "route", "HiGHS loop [s]", "saddle [s]", "HiGHS / saddle", "CPU: HiGHS [s]", "CPU: saddle [s]",
          "CPU: HiGHS / saddle", "saddle status", "iterations (median / max)", "max gap", "max |value - HiGHS|",
          "ops / iteration (+ products)")


def format_row(r: dict) -> str:
    cells = (r["case"], f"`{r['route']}`", f"{r['highs']:.2f}", f"{r['saddle']:.2f}", f"{r['ratio']:.2f}x",
             f"{r['highs_cpu']:.2f}", f"{r['saddle_cpu']:.2f}", f"{r['ratio_cpu']:.2f}x", r["status"],
             r["iterations"], f"{r['gap']:.1e}", f"{r['value_error']:.1e}", r["ops"])
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=None, metavar="BxN",
                        help="batch size x game size (repeatable; default: 256x50 and 1x1000)")
    parser.add_argument("--route", action="append", default=None, metavar="FORM:NAME[:k=v,...]",
                        help=f"form (game, lp, lp32), solver and settings (repeatable; default: {DEFAULT_ROUTES})")
    parser.add_argument("--solver", action="append", default=None, metavar="NAME[:k=v,...]",
                        help="a game-form route, the same as --route game:NAME[:k=v,...] (repeatable)")
    parser.add_argument("--tol", type=float, default=1e-6, help="duality-gap tolerance (default: 1e-6)")
    parser.add_argument("--max-iters", type=int, default=50_000)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs of each route and of HiGHS (median)")
    parser.add_argument("--opcount", action="store_true", help="count aten operations per iteration")
    parser.add_argument("--opcount-iters", type=int, default=4096)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    texts = (args.route or []) + [f"game:{s}" for s in args.solver or []]
    routes = [parse_route(t) for t in texts or DEFAULT_ROUTES]
    cases = args.case or ["256x50", "1x1000"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# matrix games: saddle vs HiGHS loop; tol {args.tol:g} on the duality gap; {device}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}; medians of {args.repeat} runs")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    for case in cases:
        B, n = (int(v) for v in case.lower().split("x"))
        for row in run_case(B, n, routes, args):
            print(format_row(row), flush=True)


if __name__ == "__main__":
    main()
