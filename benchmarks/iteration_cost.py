"""What an iteration of a whole LP solve costs beyond its two products, on the netlib LPs (issue 17).

For every netlib LP in a folder (scipy's benchmark files, as `benchmarks/netlib.py` reads them) and
each saddle method, in the same run and with the same threads:

  * ``ops / it``: aten operations per iteration of a whole ``saddle.linprog`` solve besides the
    products (`saddle.opcount`, machine-independent: each is a kernel launch on a GPU);
  * ``products``: microseconds of the bare products one iteration needs, one ``K x`` and one
    ``K^T y`` made with the torch calls of `saddle.coupling.Bilinear` (CSR and its CSR transpose);
  * ``iteration``: microseconds per iteration of the whole ``linprog`` call run for a fixed number of
    iterations (``tol=0``: setup, presolve, power iteration, restart and driver checks included),
    the best of three runs;
  * ``overhead`` = iteration - products (the target: at most 15 us) and ``iteration / products``.

A projected-GPU column models one iteration on a GPU as launches x 5 us (eager) against the bytes
the products move / 3 TB/s: a model, labelled as one, until a GPU measures it.

    python benchmarks/iteration_cost.py [FOLDER] [--max-nnz 3000] [--iterations 4000] [--methods r2hpdhg,pdhg]
    python benchmarks/iteration_cost.py --quick          # the five smallest LPs, 1000 iterations
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import saddle  # noqa: E402
from linear_programs import bare_products  # noqa: E402
from netlib import DEFAULT_FOLDER, find_problems, missing_data_message, saddle_arguments  # noqa: E402
from saddle.coupling import Bilinear  # noqa: E402
from saddle.opcount import OperationCounter, _products_excluded  # noqa: E402

LAUNCH_US = 5.0  # an eager kernel launch on a GPU (model)
BANDWIDTH = 3e12  # bytes per second of an H100-class GPU (model)


def coupling_of(args: dict) -> Bilinear:
    """The stacked ``[A_eq; A_ub]`` as saddle multiplies it."""
    blocks = [args[k] for k in ("A_eq", "A_ub") if k in args]
    return Bilinear(torch.cat(blocks, 0).coalesce())


def solve_seconds(args: dict, method: str, iterations: int) -> float:
    best = math.inf
    for _ in range(3):
        start = time.perf_counter()
        res = saddle.linprog(**args, method=method, tol=0.0, max_iters=iterations)
        best = min(best, time.perf_counter() - start)
        assert int(res.nit) == iterations, (method, int(res.nit), res.message)
    return best


def operations(args: dict, method: str, iterations: int) -> float:
    counter = OperationCounter()
    with _products_excluded(counter), counter:
        saddle.linprog(**args, method=method, tol=0.0, max_iters=iterations)
    return counter.total / iterations


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER), help="the netlib .npz files")
    parser.add_argument("--max-nnz", type=int, default=3000, help="only LPs with at most N nonzeros (default 3000)")
    parser.add_argument("--iterations", type=int, default=4000, help="iterations per solve (default 4000)")
    parser.add_argument("--methods", default="r2hpdhg", help="comma-separated saddle methods (default r2hpdhg)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--quick", action="store_true", help="the five smallest LPs, 1000 iterations")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    if not list(folder.glob("*.npz")):
        print(missing_data_message(folder))
        return 1
    torch.set_num_threads(args.threads)
    problems = [p for p in find_problems(folder, None, args.max_nnz, False) if not math.isnan(p.obj)]
    iterations = args.iterations
    if args.quick:
        problems, iterations = problems[:5], 1000
    methods = args.methods.split(",")
    print(f"# Iteration cost: {len(problems)} netlib LPs, {iterations} iterations per solve, "
          f"{args.threads} thread(s), torch {torch.__version__}, {platform.machine()}\n")
    print("| problem | nnz | method | ops / it | products [us] | iteration [us] | overhead [us] | "
          "iteration / products | projected GPU [us]: launches x 5 us / bytes (model) |")
    print("|---|---|---|---|---|---|---|---|---|")
    overheads: dict[str, list[float]] = {m: [] for m in methods}
    ratios: dict[str, list[float]] = {m: [] for m in methods}
    for problem in problems:
        lp_args = saddle_arguments(problem.lp)
        bare = bare_products(coupling_of(lp_args), 1, 0.2)
        nbytes = 2 * 12 * problem.nnz  # two CSR products: 8-byte values and 4-byte indices, once each
        for method in methods:
            ops = operations(lp_args, method, min(iterations, 1000))
            per_iteration = solve_seconds(lp_args, method, iterations) / iterations
            overhead = per_iteration - bare
            overheads[method].append(overhead)
            ratios[method].append(per_iteration / bare)
            gpu = f"{(ops + 4) * LAUNCH_US:.0f} / {1e6 * nbytes / BANDWIDTH:.3f}"
            print(f"| {problem.name} | {problem.nnz} | {method} | {ops:.1f} | {1e6 * bare:.1f} | "
                  f"{1e6 * per_iteration:.1f} | {1e6 * overhead:.1f} | {per_iteration / bare:.2f} | {gpu} |",
                  flush=True)
    print("\n| method | LPs | max overhead [us] | median overhead [us] | geometric mean iteration / products |")
    print("|---|---|---|---|---|")
    for method in methods:
        o = sorted(overheads[method])
        gm = math.exp(sum(math.log(r) for r in ratios[method]) / len(ratios[method]))
        print(f"| {method} | {len(o)} | {1e6 * o[-1]:.1f} | {1e6 * o[len(o) // 2]:.1f} | {gm:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
