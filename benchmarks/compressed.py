"""Bits to reach distance 1e-6: MASHA1 (RandK), MASHA2 (TopK) and uncompressed distributed extragradient.

On ``problems.get("distributed_bilinear")`` (the bilinear experiment of
Beznosikov et al., arXiv 2110.03313: ``M`` workers, ``d = 2n`` coordinates,
strongly-convex-strongly-concave local games with heterogeneous data), the
script solves ``--batch`` instances (different data) with the simulated
backend, every instance stopping when its distance to the exact solution
(a linear solve) is ``<= 1e-6``, and prints a markdown table per step-size rule:

- ``theory``: each solver's default step (`saddle.solvers.compressed`);
- ``tuned``: the default times the factor in ``--factors`` that reaches the
  tolerance with the fewest uplink bits (the comparison papers usually show).

Columns: rounds, uplink bits per worker (what each worker sends to the
server), total bits (both directions, all workers), and the ratios
``EG / method`` of both (the communication saving; > 1 means fewer bits).

With ``--gloo P`` it also times rounds with P `torch.distributed` (gloo)
processes started by torchrun, against the simulated backend on the same
``M = P`` problem (seconds per round, including the checks every 50 rounds).

    python benchmarks/compressed.py                 # n = 50 (d = 100), M = 10, 2 instances, --gloo 4
    python benchmarks/compressed.py --quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from saddle import problems  # noqa: E402
import saddle  # noqa: E402
from saddle.compress import RandK, TopK  # noqa: E402


def methods(d: int) -> list[tuple[str, str, dict]]:
    k10, k1 = max(1, round(0.1 * d)), max(1, round(0.01 * d))
    return [
        ("EG (uncompressed)", "distributed_eg", {}),
        (f"MASHA1 Rand10% (k={k10})", "masha1", {"compressor": RandK(ratio=0.1)}),
        (f"MASHA1 Rand1% (k={k1})", "masha1", {"compressor": RandK(ratio=0.01)}),
        ("MASHA1 Rand10%, bidirectional", "masha1", {"compressor": RandK(ratio=0.1),
                                                     "server_compressor": RandK(ratio=0.1)}),
        (f"MASHA2 Top10% (k={k10})", "masha2", {"compressor": TopK(ratio=0.1)}),
        (f"MASHA2 Top1% (k={k1})", "masha2", {"compressor": TopK(ratio=0.01)}),
        ("compressed EG Rand10%, no VR", "compressed_eg", {"compressor": RandK(ratio=0.1)}),
    ]


def run(problem, solver: str, settings: dict, factor: float, max_iters: int) -> dict:
    if solver == "compressed_eg":
        max_iters = min(max_iters, 3000)  # it stalls at a noise floor: report where
    s = saddle.get_solver(solver, **settings)
    step = s.init(problem, problem.z0).step_size * factor
    s = saddle.get_solver(solver, **settings, step_size=step)
    start = time.perf_counter()
    sol = saddle.solve(problem, s, tol=1e-6, measure="distance", max_iters=max_iters, check_every=10)
    wall = time.perf_counter() - start
    c, M = sol.counts, problem.workers
    return dict(ok=bool(sol.success.all()), distance=sol.distance.max().item(),
                rounds=sol.iterations.double().mean().item(), up=(c["bits_up"].double() / M).mean().item(),
                total=c["bits_sent"].double().mean().item(), wall=wall, factor=factor)


def table(rows: list[tuple[str, dict]], title: str) -> str:
    eg = rows[0][1]
    lines = [f"**{title}**", "",
             "| method | step factor | rounds | uplink bits / worker | total bits | saving (uplink) | saving (total) |",
             "|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if not r["ok"]:
            lines.append(f"| {name} | {r['factor']:g} | not converged in {int(r['rounds'])} rounds "
                         f"(distance {r['distance']:.1e}) | | | | |")
            continue
        lines.append(f"| {name} | {r['factor']:g} | {r['rounds']:,.0f} | {r['up']:,.0f} | {r['total']:,.0f} | "
                     f"{eg['up'] / r['up']:.2f} | {eg['total'] / r['total']:.2f} |")
    return "\n".join(lines)


def gloo_timing(nproc: int, n: int, rounds: int) -> list[str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    lines = [f"**Seconds per round, M = {nproc} workers, n = {n}, {rounds} rounds**", "",
             f"| solver | gloo, torchrun, {nproc} processes | simulated, 1 process |", "|---|---|---|"]
    for solver, comp in (("distributed_eg", None), ("masha1", "randk"), ("masha2", "topk")):
        with tempfile.TemporaryDirectory() as tmp:
            save = os.path.join(tmp, "run.pt")
            args = ["--size", str(n), "--solver", solver, "--max-iters", str(rounds), "--tol", "0",
                    "--check-every", "50", "--backend", "gloo", "--save", save]
            if comp:
                args += ["--compressor", comp]
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "saddle.distributed", *args]
            out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            gloo = torch.load(save)["wall_time"] / rounds
        problem = problems.get("distributed_bilinear", n=n, workers=nproc)
        settings = {"compressor": RandK() if comp == "randk" else TopK()} if comp else {}
        start = time.perf_counter()
        saddle.solve(problem, solver, max_iters=rounds, tol=0.0, check_every=50, measure="distance", **settings)
        sim = (time.perf_counter() - start) / rounds
        lines.append(f"| {solver} | {gloo * 1e3:.2f} ms | {sim * 1e3:.2f} ms |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50, help="each player's dimension (d = 2n)")
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2, help="instances (data seeds)")
    parser.add_argument("--factors", default="1,2,4,8", help="step-size multipliers tried for 'tuned'")
    parser.add_argument("--max-iters", type=int, default=60_000)
    parser.add_argument("--gloo", type=int, default=4, help="processes for the timing (0: skip)")
    parser.add_argument("--gloo-rounds", type=int, default=300)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.workers, args.batch, args.factors, args.gloo_rounds = 10, 4, 1, "1,4", 100
    torch.set_num_threads(1)
    problem = problems.get("distributed_bilinear", n=args.n, workers=args.workers, batch_size=args.batch, seed=0)
    d = problem.dim
    print(f"distributed_bilinear: n = {args.n} (d = {d}), M = {args.workers}, lam = 0.25, heterogeneity 1, "
          f"{args.batch} instances; tolerance: distance 1e-6; means over instances\n")
    factors = [float(f) for f in args.factors.split(",")]
    theory, tuned = [], []
    for name, solver, settings in methods(d):
        r = run(problem, solver, settings, 1.0, args.max_iters)
        theory.append((name, r))
        best = r if r["ok"] else None
        for f in factors:
            if f == 1.0 or solver == "compressed_eg":
                continue
            rf = run(problem, solver, settings, f, args.max_iters)
            if rf["ok"] and (best is None or rf["up"] < best["up"]):
                best = rf
        tuned.append((name, best if best is not None else r))
        print(f"  done: {name} ({r['wall']:.1f} s at the theory step)", file=sys.stderr, flush=True)
    print(table(theory, "Theory step sizes"))
    print()
    print(table(tuned, "Tuned step sizes (best factor in " + args.factors + ")"))
    print()
    if args.gloo:
        print("\n".join(gloo_timing(args.gloo, args.n, args.gloo_rounds)))


if __name__ == "__main__":
    main()
