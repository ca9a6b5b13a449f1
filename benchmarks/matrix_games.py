"""Matrix games: saddle's batched first-order solve vs scipy's HiGHS one game at a time.

Solves B random n x n games (payoffs uniform in [-1, 1]) to duality gap
``--tol`` with one saddle solver on the whole batch, and the same games one by
one with ``scipy.optimize.linprog(method="highs")`` (default tolerances), in
the same run, and prints a table with the seconds and the ratio
HiGHS / saddle. The value error column compares saddle's values with HiGHS's.

    python benchmarks/matrix_games.py                      # B=256, n=50 and B=1, n=1000
    python benchmarks/matrix_games.py --device cuda        # the same on a GPU
    python benchmarks/matrix_games.py --case 64x100 --solver extragradient
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import scipy.optimize
import torch

from saddle import problems
import saddle
from saddle.cli import parse_spec


def highs_value(A: np.ndarray) -> float:
    """The value of min_x max_y x^T A y by HiGHS with its default tolerances."""
    n, m = A.shape
    c = np.zeros(n + 1)
    c[-1] = 1.0
    res = scipy.optimize.linprog(
        c, A_ub=np.hstack([A.T, -np.ones((m, 1))]), b_ub=np.zeros(m),
        A_eq=np.hstack([np.ones((1, n)), np.zeros((1, 1))]), b_eq=[1.0],
        bounds=[(0, None)] * n + [(None, None)], method="highs")
    if res.status != 0:
        raise RuntimeError(res.message)
    return float(res.x[-1])


def run_case(B: int, n: int, args) -> dict:
    problem = problems.get("matrix_game", n=n, batch_size=B, seed=args.seed, device=args.device, dtype=torch.float64)
    A = problem.K.mT.detach().cpu().numpy()

    start = time.perf_counter()
    values = np.array([highs_value(A[i]) for i in range(B)])
    highs_seconds = time.perf_counter() - start

    name, settings = parse_spec(args.solver)
    solver = saddle.get_solver(name, **settings)
    # Warm-up (kernel loading, allocator) so that it is not charged to the solve.
    saddle.solve(problem, solver, max_iters=2, tol=0.0, measure="gap", history=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    sol = saddle.solve(problem, solver, tol=args.tol, measure="gap", max_iters=args.max_iters,
                       check_every=args.check_every, history=False)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    value_error = (problem.objective(sol.z).cpu().numpy() - values)
    return {
        "case": f"B={B}, n={n}",
        "highs": highs_seconds,
        "saddle": sol.wall_time,
        "ratio": highs_seconds / sol.wall_time,
        "status": sol.message,
        "iterations": int(sol.iterations.max()),
        "gap": float(sol.gap.max()),
        "value_error": float(np.abs(value_error).max()),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", default=None, metavar="BxN",
                        help="batch size x game size (repeatable; default: 256x50 and 1x1000)")
    parser.add_argument("--solver", default="pdhg", metavar="NAME[:k=v,...]",
                        help="saddle solver and settings (default: pdhg, restarted PDHG)")
    parser.add_argument("--tol", type=float, default=1e-6, help="duality-gap tolerance (default: 1e-6)")
    parser.add_argument("--max-iters", type=int, default=50_000)
    parser.add_argument("--check-every", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = args.case or ["256x50", "1x1000"]
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or "cpu"
    print(f"# matrix games: saddle ({args.solver}) vs HiGHS loop; tol {args.tol:g} on the duality gap; "
          f"{device}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    header = ("case", "HiGHS loop [s]", "saddle [s]", "HiGHS / saddle", "saddle status", "iterations", "max gap",
              "max |value - HiGHS|")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for case in cases:
        B, n = (int(v) for v in case.lower().split("x"))
        r = run_case(B, n, args)
        print(f"| {r['case']} | {r['highs']:.2f} | {r['saddle']:.2f} | {r['ratio']:.2f}x | {r['status']} | "
              f"{r['iterations']} | {r['gap']:.1e} | {r['value_error']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
