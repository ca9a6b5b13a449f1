"""Warm starts across nearby LPs: a sequence of perturbed netlib LPs solved cold and warm by `saddle.linprog`.

For each problem, the sequence is LP_0 (the netlib data) and LP_1 ... LP_k, each LP_i made from LP_{i-1} by
multiplying every entry of c and of b (b_ub and b_eq) by ``1 + 0.01 u`` with u uniform in [-1, 1] (1 %
perturbations, seeded). LP_i is solved cold (from x = 0) and warm (``warm_start=`` the warm result of
LP_{i-1}, or of the cold LP_0): the previous primal and dual point and, through `saddle.Solver.warm_state`,
the previous step size and primal weight. The table gives, per problem and tolerance, the mean over LP_1 ...
LP_k of the iterations and seconds of each, and the ratios cold / warm (> 1: the warm start saves).
Every status is checked against HiGHS (a row says how many of the k warm and cold solves ended optimal).

    python benchmarks/warm_start.py                          # the default problems, 5 perturbations, 1e-4 and 1e-8
    python benchmarks/warm_start.py --folder path/to/netlib --problems AFIRO SC50A --steps 3 --tols 1e-6

The netlib files are the ``.npz`` copies of scipy's benchmark suite (``benchmarks/benchmarks/
linprog_benchmark_files`` in scipy's source tree); the default folder is ``../shared/netlib``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.optimize
import torch

import saddle

DEFAULT_FOLDER = Path(__file__).resolve().parents[1].parent / "shared" / "netlib"
DEFAULT_PROBLEMS = ("AFIRO", "SC50A", "SC50B", "ADLITTLE", "KB2", "SC105")


def load(path: Path) -> dict:
    data = np.load(path)
    return {key: data[key] for key in ("c", "A_ub", "b_ub", "A_eq", "b_eq", "bounds")}


def perturbed(lp: dict, rng: np.random.Generator, scale: float = 0.01) -> dict:
    """``lp`` with c, b_ub and b_eq each multiplied entrywise by ``1 + scale u``, u uniform in [-1, 1]."""
    out = dict(lp)
    for key in ("c", "b_ub", "b_eq"):
        out[key] = lp[key] * (1 + scale * rng.uniform(-1, 1, lp[key].shape))
    return out


def timed(lp: dict, tol: float, method: str, warm_start=None):
    start = time.perf_counter()
    res = saddle.linprog(**lp, tol=tol, method=method, warm_start=warm_start, time_limit=120.0)
    return res, time.perf_counter() - start


def run(name: str, lp0: dict, tol: float, steps: int, method: str, seed: int) -> dict:
    """Cold and warm solves of LP_1 ... LP_steps; their iterations, seconds and HiGHS-agreeing statuses."""
    rng = np.random.default_rng(seed)
    previous, _ = timed(lp0, tol, method)
    lp = lp0
    rows = {"cold_nit": [], "warm_nit": [], "cold_s": [], "warm_s": [], "cold_ok": 0, "warm_ok": 0}
    for _ in range(steps):
        lp = perturbed(lp, rng)
        ref = scipy.optimize.linprog(**lp, method="highs")
        cold, cold_s = timed(lp, tol, method)
        warm, warm_s = timed(lp, tol, method, warm_start=previous)
        for kind, res, seconds in (("cold", cold, cold_s), ("warm", warm, warm_s)):
            rows[f"{kind}_nit"].append(int(res.nit))
            rows[f"{kind}_s"].append(seconds)
            rows[f"{kind}_ok"] += int(res.status) == ref.status == 0
        previous = warm
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=DEFAULT_FOLDER, help="folder of netlib .npz files")
    parser.add_argument("--problems", nargs="+", default=list(DEFAULT_PROBLEMS))
    parser.add_argument("--steps", type=int, default=5, help="perturbed LPs per problem")
    parser.add_argument("--tols", type=float, nargs="+", default=[1e-4, 1e-8])
    parser.add_argument("--method", default=saddle.lp.DEFAULT_METHOD, choices=saddle.lp.METHODS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise SystemExit(f"no folder {args.folder}: get the netlib .npz files from scipy's source tree "
                         "(benchmarks/benchmarks/linprog_benchmark_files) and pass --folder")
    torch.set_num_threads(args.threads)
    print(f"saddle.linprog(method={args.method!r}), {args.steps} perturbations of 1 % per problem, "
          f"{args.threads} thread(s); means over the perturbed LPs")
    header = (f"{'problem':10} {'tol':>7} {'iters cold':>10} {'iters warm':>10} {'ratio':>6} "
              f"{'s cold':>8} {'s warm':>8} {'ratio':>6} {'optimal cold/warm':>18}")
    print(header)
    print("-" * len(header))
    for name in args.problems:
        lp0 = load(args.folder / f"{name}.npz")
        for tol in args.tols:
            r = run(name, lp0, tol, args.steps, args.method, args.seed)
            nit_c, nit_w = statistics.mean(r["cold_nit"]), statistics.mean(r["warm_nit"])
            s_c, s_w = statistics.mean(r["cold_s"]), statistics.mean(r["warm_s"])
            print(f"{name:10} {tol:7.0e} {nit_c:10.0f} {nit_w:10.0f} {nit_c / max(nit_w, 1):6.2f} "
                  f"{s_c:8.3f} {s_w:8.3f} {s_c / s_w:6.2f} {r['cold_ok']:>8}/{r['warm_ok']} of {args.steps}")


if __name__ == "__main__":
    main()
