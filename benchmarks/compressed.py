"""Compressed distributed solvers against uncompressed distributed extragradient: bits, bytes and wall clock.

Four sections (``--sections``, default all):

- ``bits``: total bits (workers' uplink plus what every worker receives) to
  distance 1e-6 on ``distributed_bilinear`` (the bilinear experiment of
  Beznosikov et al., arXiv 2110.03313; ``d = 2 n``), simulated backend, every
  solver with its own default steps, for every M in ``--workers`` and every
  RandK level in ``--levels``; the saving is ``EG total / method total`` (> 1:
  fewer bits). The measured bytes (``bytes_sent + bytes_received``, what the
  transport handed over) are printed next to the bit counts.
- ``tuned``: the same for M = ``--curve-workers``, with the default step
  multiplied by each factor in ``--factors`` (extragradient's too), at the
  default p and at ``--tuned-p``: how much of the saving the theory's constants leave out.
- ``curve``: distance against total bits for the M = ``--curve-workers`` case,
  a table (and a plot with ``--plot PATH``).
- ``gloo``: seconds per round with ``--gloo P`` torchrun processes against the
  simulated backend on the same small problem.
- ``large``: ``distributed_quadratic`` with d = ``--large-d`` coordinates
  (float32; O(d) workers), ``--gloo P`` gloo processes: seconds per round and
  bytes per rank and round, on loopback and throttled to ``--bandwidth`` Gbit/s
  per rank (`saddle.distributed.TorchDistributedGroup`'s bandwidth model); the
  rounds to ``--large-tol`` (relative distance) from a simulated run of the same
  family at d = ``--large-rounds-d`` (the rate does not depend on d), hence the
  time to that accuracy at each bandwidth, and the bandwidth below which
  MASHA1 reaches it sooner than extragradient.

    python benchmarks/compressed.py                    # everything (about an hour on 2 cores)
    python benchmarks/compressed.py --quick            # small sizes, a few minutes
    python benchmarks/compressed.py --sections large --large-d 10000000
"""

from __future__ import annotations

import argparse
import math
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

SECTIONS = ("bits", "tuned", "curve", "gloo", "large")


def _methods(level: float, M: int) -> list[tuple[str, str, dict]]:
    pct = f"{100 * level:g}%"
    rows = [(f"MASHA1 Rand{pct}", "masha1", {"compressor": RandK(ratio=level)})]
    # A RandK server reply multiplies L_Q by sqrt(1 + omega_s): at 1% (omega_s = 99) over 4 * 10^4 rounds;
    # TopK at 1% needs over 10^5 rounds with its default step (delta / (4 Lbar)). Both only at 10%, M <= 16.
    if level >= 0.1 and M <= 16:
        rows.append((f"MASHA1 Rand{pct}, bidirectional Rand{pct}", "masha1",
                     {"compressor": RandK(ratio=level), "server_compressor": RandK(ratio=level)}))
        rows.append((f"MASHA2 Top{pct}", "masha2", {"compressor": TopK(ratio=level)}))
    return rows


def _solve(problem, solver: str, settings: dict, max_iters: int, record: bool = False) -> dict:
    trace = []

    def callback(progress):
        state = progress.state
        trace.append((float(state.bits_sent.double().mean()), float(progress.measures["distance"].max())))

    start = time.perf_counter()
    sol = saddle.solve(problem, solver, tol=1e-6, measure="distance", max_iters=max_iters, check_every=10,
                       callback=callback if record else None, **settings)
    c = sol.counts
    return dict(ok=bool(sol.success.all()), rounds=sol.iterations.double().mean().item(),
                distance=sol.distance.max().item(), up=c["bits_up"].double().mean().item(),
                total=c["bits_sent"].double().mean().item(),
                measured=8 * (c["bytes_sent"] + c["bytes_received"]).double().mean().item(),
                wall=time.perf_counter() - start, trace=trace, step=float(sol.state.step_size[0]),
                p=1 - float(sol.state.tau[0]))


def bits_section(args) -> list[str]:
    lines = [f"**Total bits to distance 1e-6**, distributed_bilinear n = {args.n} (d = {2 * args.n}), "
             f"{args.batch} instance(s), default steps, simulated backend", "",
             "| M | method | step | p | rounds | uplink bits | total bits | measured bytes x 8 | saving (total) |",
             "|---|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)  # rows as they come: the whole sweep takes a while
    for M in args.workers:
        problem = problems.get("distributed_bilinear", n=args.n, workers=M, batch_size=args.batch, seed=0)
        eg = _solve(problem, "distributed_eg", {}, args.max_iters)
        rows = [("EG (uncompressed)", eg)] + [
            (name, _solve(problem, solver, settings, args.max_iters))
            for level in args.levels for name, solver, settings in _methods(level, M)]
        for name, r in rows:
            if not r["ok"]:
                line = (f"| {M} | {name} | {r['step']:.3g} | {r['p']:.3g} | not converged in "
                        f"{r['rounds']:,.0f} (distance {r['distance']:.1e}) | | | | |")
            else:
                line = (f"| {M} | {name} | {r['step']:.3g} | {r['p']:.3g} | {r['rounds']:,.0f} | {r['up']:,.0f} | "
                        f"{r['total']:,.0f} | {r['measured']:,.0f} | {eg['total'] / r['total']:.2f} |")
            lines.append(line)
            print(line, flush=True)
    return []


def tuned_section(args) -> list[str]:
    M = args.curve_workers
    problem = problems.get("distributed_bilinear", n=args.n, workers=M, batch_size=args.batch, seed=0)
    eg = _solve(problem, "distributed_eg", {}, args.max_iters)
    lines = [f"**Step factors**, distributed_bilinear n = {args.n}, M = {M}: the default step times a factor "
             "(saving: against extragradient at its default step)", "",
             "| method | p | step factor | rounds | total bits | saving (total) |", "|---|---|---|---|---|---|"]
    runs = [("EG (uncompressed)", "distributed_eg", {}, None)]
    for level in args.levels:
        for p in (None, args.tuned_p):
            runs.append((f"MASHA1 Rand{100 * level:g}%", "masha1", {"compressor": RandK(ratio=level)}, p))
    for name, solver, settings, p in runs:
        settings = dict(settings) if p is None else dict(settings, p=p)
        default = saddle.get_solver(solver, **settings).init(problem, problem.z0).step_size
        for factor in args.factors:
            r = _solve(problem, solver, dict(settings, step_size=factor * default), args.max_iters)
            cells = (f"{r['rounds']:,.0f} | {r['total']:,.0f} | {eg['total'] / r['total']:.2f}" if r["ok"] else
                     f"not converged in {r['rounds']:,.0f} (distance {r['distance']:.1e}) | |")
            lines.append(f"| {name} | {r['p']:.3g} | {factor:g} | {cells} |")
            print(f"  tuned: {name}, p {r['p']:.3g}, x{factor:g}: {r['rounds']:.0f} rounds", file=sys.stderr, flush=True)
    return lines


def curve_section(args) -> list[str]:
    M = args.curve_workers
    problem = problems.get("distributed_bilinear", n=args.n, workers=M, batch_size=1, seed=0)
    runs = {"EG (uncompressed)": _solve(problem, "distributed_eg", {}, args.max_iters, record=True)}
    for level in args.levels:
        name, solver, settings = _methods(level, M)[0]
        runs[name] = _solve(problem, solver, settings, args.max_iters, record=True)
    marks = [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6]
    lines = [f"**Total bits to reach each distance**, distributed_bilinear n = {args.n}, M = {M}, default steps", "",
             "| method | " + " | ".join(f"{m:g}" for m in marks) + " |", "|---|" + "---|" * len(marks)]
    for name, r in runs.items():
        cells = []
        for m in marks:
            hit = next((b for b, dist in r["trace"] if dist <= m), None)
            cells.append("-" if hit is None else f"{hit:.3g}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4))
        for name, r in runs.items():
            ax.loglog([b for b, _ in r["trace"]], [dist for _, dist in r["trace"]], label=name)
        ax.axhline(1e-6, color="gray", lw=0.5)
        ax.set_xlabel("total bits (uplink + every worker's downlink)")
        ax.set_ylabel("distance to the solution")
        ax.set_title(f"distributed_bilinear, d = {2 * args.n}, M = {M}, default steps")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=110)
        lines += ["", f"(plot written to {args.plot})"]
    return lines


def _torchrun(nproc: int, args: list[str], timeout: float = 3000) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        save = os.path.join(tmp, "run.pt")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
               "-m", "saddle.distributed", *args, "--backend", "gloo", "--save", save]
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        if out.returncode != 0:
            raise RuntimeError(out.stderr[-3000:])
        return torch.load(save, weights_only=True)


def gloo_section(args) -> list[str]:
    n, rounds, P = args.gloo_n, args.gloo_rounds, args.gloo
    lines = [f"**Seconds per round, M = {P} workers, distributed_bilinear n = {n}, {rounds} rounds**", "",
             f"| solver | gloo, torchrun, {P} processes | simulated, 1 process |", "|---|---|---|"]
    for solver, comp in (("distributed_eg", None), ("masha1", "randk"), ("masha2", "topk")):
        cli = ["--size", str(n), "--solver", solver, "--max-iters", str(rounds), "--tol", "0", "--check-every", "50"]
        if comp:
            cli += ["--compressor", comp]
        gloo = _torchrun(P, cli)["round_time"]
        problem = problems.get("distributed_bilinear", n=n, workers=P)
        settings = {"compressor": RandK() if comp == "randk" else TopK()} if comp else {}
        start = time.perf_counter()
        saddle.solve(problem, solver, max_iters=rounds, tol=0.0, check_every=50, measure="distance", **settings)
        sim = (time.perf_counter() - start) / rounds
        lines.append(f"| {solver} | {gloo * 1e3:.2f} ms | {sim * 1e3:.2f} ms |")
    return lines


def _large_methods(d: int) -> list[tuple[str, str, list[str], dict]]:
    k = max(1, round(0.01 * d))
    return [("EG (uncompressed)", "distributed_eg", [], {}),
            ("MASHA1 Rand1%", "masha1", ["--compressor", "randk", "--keep", str(k)], {"compressor": RandK(ratio=0.01)}),
            ("MASHA2 Top1%", "masha2", ["--compressor", "topk", "--keep", str(k)], {"compressor": TopK(ratio=0.01)})]


def large_section(args) -> list[str]:
    P, d, R = args.gloo, args.large_d, args.large_round_count
    # rounds to the target from a small simulated instance of the same family (the rate does not depend on d)
    small = problems.get("distributed_quadratic", n=args.large_rounds_d, workers=P, seed=0)
    start_distance = small.solution[0].norm().item()
    rounds = {}
    for name, solver, _, settings in _large_methods(args.large_rounds_d):
        sol = saddle.solve(small, solver, tol=args.large_tol * start_distance, measure="distance",
                           max_iters=args.large_max_iters, check_every=10, **settings)
        rounds[name] = sol.iterations.item() if bool(sol.success.all()) else math.inf
        print(f"  large: {name} needs {rounds[name]} rounds at d = {args.large_rounds_d}", file=sys.stderr, flush=True)
    lines = [f"**distributed_quadratic, d = {d:,} (float32), {P} gloo processes on this machine**", "",
             f"Seconds per round (between the checks at rounds {max(1, R // 3)} and {R}) and bytes each rank hands over or receives per round; "
             f"rounds to relative distance {args.large_tol:g} measured on the same family at d = "
             f"{args.large_rounds_d:,} (simulated); time to that accuracy = rounds x seconds per round.", "",
             "| method | bandwidth | s / round | MB per rank and round | rounds to target | time to target |",
             "|---|---|---|---|---|---|"]
    measured = {}
    for bandwidth in (None, args.bandwidth):
        for name, solver, cli, _ in _large_methods(d):
            opts = ["--problem", "distributed_quadratic", "--size", str(d), "--dtype", "float32", "--solver", solver,
                    "--max-iters", str(R), "--tol", "0", "--check-every", str(max(1, R // 3)), *cli]
            if bandwidth is not None:
                opts += ["--bandwidth", str(bandwidth)]
            out = _torchrun(P, opts)
            per_round = out["round_time"]  # between the first and the last check: no init, no final re-check
            traffic = out["traffic"]
            mb = (traffic["sent"] + traffic["received"]) / R / 1e6
            measured[(name, bandwidth)] = (per_round, mb)
            label = "loopback" if bandwidth is None else f"{bandwidth:g} Gbit/s"
            reached = math.isfinite(rounds[name])
            lines.append(f"| {name} | {label} | {per_round:.3f} | {mb:.2f} | "
                         + (f"{rounds[name]:,} | {rounds[name] * per_round:,.0f} s |" if reached else
                            f"not reached in {args.large_max_iters:,} | |"))
            print(f"  large: {name}, {label}: {per_round:.3f} s/round", file=sys.stderr, flush=True)
    # the crossover: rounds_E (c_E + V_E / b) = rounds_M (c_M + V_M / b), c the loopback seconds per round
    (cE, vE), (cM, vM) = measured[("EG (uncompressed)", None)], measured[("MASHA1 Rand1%", None)]
    rE, rM = rounds["EG (uncompressed)"], rounds["MASHA1 Rand1%"]
    lines.append("")
    num, den = rE * vE - rM * vM, rM * cM - rE * cE
    if num <= 0:
        lines.append("MASHA1 Rand1% moves more bytes to the target than extragradient: compression does not pay "
                     "at any bandwidth.")
    elif den <= 0:
        lines.append("MASHA1 Rand1% reaches the target sooner at every bandwidth.")
    else:
        gbit = num / den * 8 / 1e3  # MB/s -> Gbit/s
        lines.append(f"Compression pays in time to the target below about {gbit:.3g} Gbit/s per rank "
                     f"(rounds x (loopback seconds + MB / bandwidth) equal for the two).")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default=",".join(SECTIONS))
    parser.add_argument("--n", type=int, default=500, help="each player's dimension of distributed_bilinear (d = 2n)")
    parser.add_argument("--workers", default="4,16,64", help="the values of M for the bits section")
    parser.add_argument("--levels", default="0.01,0.1", help="RandK / TopK levels k / d")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--max-iters", type=int, default=40_000)
    parser.add_argument("--curve-workers", type=int, default=16)
    parser.add_argument("--factors", default="1,2,4", help="step multipliers of the tuned section")
    parser.add_argument("--tuned-p", type=float, default=0.1, help="the other p of the tuned section")
    parser.add_argument("--plot", default=None, help="write the distance-vs-bits plot here (PNG)")
    parser.add_argument("--gloo", type=int, default=4, help="processes for the gloo sections")
    parser.add_argument("--gloo-n", type=int, default=50)
    parser.add_argument("--gloo-rounds", type=int, default=300)
    parser.add_argument("--large-d", type=int, default=10_000_000)
    parser.add_argument("--large-round-count", type=int, default=60)
    parser.add_argument("--large-rounds-d", type=int, default=10_000)
    parser.add_argument("--large-tol", type=float, default=1e-3)
    parser.add_argument("--large-max-iters", type=int, default=100_000)
    parser.add_argument("--bandwidth", type=float, default=1.0, help="Gbit/s per rank for the throttled runs")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.workers, args.gloo_rounds, args.large_d, args.large_rounds_d = 50, "4,16", 100, 100_000, 2_000
    args.workers = [int(w) for w in str(args.workers).split(",")]
    args.levels = [float(v) for v in str(args.levels).split(",")]
    args.factors = [float(v) for v in str(args.factors).split(",")]
    torch.set_num_threads(1)
    sections = args.sections.split(",")
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"--sections: unknown {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    for name in sections:
        lines = globals()[f"{name}_section"](args)
        if lines:
            print("\n".join(lines))
        print(flush=True)


if __name__ == "__main__":
    main()
