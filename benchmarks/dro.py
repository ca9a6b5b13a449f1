"""Time to relative accuracy 1e-6 on CVaR and chi-square-ball logistic regression: saddle vs cvxpy (Clarabel).

    python benchmarks/dro.py [--sizes 10000 100000] [--d 50]

saddle's method is extragradient on the full-batch operator (float64, backtracking
steps), stopped when the exact primal objective ``P(theta) = max_q f(theta, q)``
(closed form) is within 1e-6 relative of the best value either solver found.
cvxpy solves the Rockafellar-Uryasev (CVaR) and second-order-cone (chi-square) reformulations
(`problems.dro.dro_reference`). The `dro` package from PyPI is timed when importable.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import saddle
from problems.dro import DROProblem, dro_reference, group_shift_data


def run_saddle(problem, target, max_iters=20_000):
    start = time.perf_counter()
    hit = {}

    def cb(p):
        P = problem.primal_objective(p.z[0])
        if ((P - target).abs() <= 1e-6 * target.abs()).all():
            hit["t"] = time.perf_counter() - start
            return True
        return False

    sol = saddle.solve(problem, "extragradient", tol=0.0, max_iters=max_iters, check_every=10, callback=cb,
                       history=False)
    return hit.get("t", float("nan")), int(sol.iterations[0]), float(problem.primal_objective(sol.x)[0])


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--d", type=int, default=50)
    args = parser.parse_args()
    rows = []
    for n in args.sizes:
        A, b, _ = group_shift_data(n, args.d, seed=0, noise=0.0)
        for ambiguity, kw in (("cvar", dict(alpha=0.5)), ("chi2_ball", dict(rho=0.1))):
            t0 = time.perf_counter()
            value, _, _ = dro_reference(A[0].numpy(), b[0].numpy(), loss="logistic", ambiguity=ambiguity, mu=0.1,
                                        **kw)
            t_cvx = time.perf_counter() - t0
            problem = DROProblem(A[0], b[0], loss="logistic", ambiguity=ambiguity, mu=0.1, **kw)
            target = torch.tensor([value], dtype=torch.float64)
            t_saddle, iters, P = run_saddle(problem, target)
            rows.append((ambiguity, n, t_saddle, iters, t_cvx, (P - value) / abs(value)))
            print(f"{ambiguity:10s} n={n:>7d}  saddle EG {t_saddle:8.2f} s ({iters} it)   cvxpy/Clarabel {t_cvx:8.2f} s"
                  f"   speedup {t_cvx / t_saddle:5.1f}x   (P_saddle - P_cvxpy)/P = {rows[-1][-1]:.1e}", flush=True)
    from importlib import metadata

    try:
        metadata.version("dro")
        print("dro (PyPI) is installed but not timed here: see docs/benchmarks.md")
    except metadata.PackageNotFoundError:
        print("dro (PyPI) not installed: not timed")


if __name__ == "__main__":
    main()
