"""Scale: peak memory against the batch size B, a batch of 10^5 small games, one problem with 10^7 variables.

Each case runs in a fresh subprocess so that its peak resident memory
(``ru_maxrss``) is its own. The baseline is the same process doing nothing
but importing saddle and making the problem (the "idle" column), measured in
the same run; the table shows the solve's extra peak memory and that memory
per instance, which is flat when memory grows linearly with B.

- ``games``: B random 5 x 5 matrix games, restarted PDHG, 500 iterations,
  check every 50 (history on), for B = 10^3, 10^4, 10^5;
- ``large``: one unconstrained quadratic game with n = m = 5 x 10^6
  (10^7 variables), ``f = sum(a x^2 / 2 + c x + x y - b y^2 / 2)``
  coordinate-wise (so F is elementwise and the solution is known in closed
  form), extragradient to residual 1e-8; the error against the closed form
  is reported.

    python benchmarks/scale.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, resource, sys, time
import torch
import saddle
from saddle import problems
torch.set_num_threads(2)
case, size, solve = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
if case == "games":
    problem = problems.get("matrix_game", n=5, m=5, batch_size=size, seed=0)
    if solve:
        t = time.perf_counter()
        sol = saddle.solve(problem, "pdhg", tol=0.0, max_iters=500, check_every=50)
        seconds = time.perf_counter() - t
        extra = {"max_gap": float(sol.gap.max()), "median_gap": float(sol.gap.median())}
else:
    n = size // 2
    gen = torch.Generator().manual_seed(0)
    a = 1.0 + torch.rand(1, n, dtype=torch.float64, generator=gen)
    b = 1.0 + torch.rand(1, n, dtype=torch.float64, generator=gen)
    c = torch.randn(1, n, dtype=torch.float64, generator=gen)
    f = lambda x, y: (0.5 * a * x * x + c * x + x * y - 0.5 * b * y * y).sum(-1)
    # grad_x = a x + c + y = 0, grad_y = x - b y = 0  =>  x = b y, y = -c / (a b + 1)
    y_star = -c / (a * b + 1)
    x_star = b * y_star
    problem = saddle.SaddleProblem(f, torch.zeros(1, n, dtype=torch.float64), torch.zeros(1, n, dtype=torch.float64),
                                   lipschitz=torch.tensor([3.0], dtype=torch.float64))
    if solve:
        t = time.perf_counter()
        sol = saddle.solve(problem, "extragradient", tol=1e-8, max_iters=5000, check_every=25)
        seconds = time.perf_counter() - t
        err = max(float((sol.x - x_star).abs().max()), float((sol.y - y_star).abs().max()))
        extra = {"status": str(sol.status.tolist()), "iterations": int(sol.iterations[0]), "max_error": err}
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  **({"seconds": seconds, **extra} if solve else {})}))
"""


def run(case: str, size: int, solve: bool) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, case, str(size), "1" if solve else "0"], capture_output=True,
                         text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="B up to 10^4 and 10^6 variables")
    args = parser.parse_args(argv)
    sizes = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    large = 1_000_000 if args.quick else 10_000_000
    print("| case | size | idle peak (MB) | solve peak (MB) | solve - idle (MB) | per instance (kB) | seconds "
          "| result |")
    print("|---|---|---|---|---|---|---|---|")
    for B in sizes:
        idle, busy = run("games", B, False), run("games", B, True)
        extra = busy["peak_mb"] - idle["peak_mb"]
        print(f"| {B} matrix games 5 x 5, pdhg, 500 it. | B = {B:,} | {idle['peak_mb']:.0f} | {busy['peak_mb']:.0f} | "
              f"{extra:.0f} | {1024 * extra / B:.2f} | {busy['seconds']:.1f} | max gap {busy['max_gap']:.1e}, "
              f"median {busy['median_gap']:.1e} |", flush=True)
    idle, busy = run("large", large, False), run("large", large, True)
    print(f"| one quadratic game, extragradient to 1e-8 | {large:,} variables | {idle['peak_mb']:.0f} | "
          f"{busy['peak_mb']:.0f} | {busy['peak_mb'] - idle['peak_mb']:.0f} | - | {busy['seconds']:.1f} | "
          f"{busy['status']}, {busy['iterations']} it., max error {busy['max_error']:.1e} |", flush=True)


if __name__ == "__main__":
    main()
