"""Mixed precision: `saddle.linprog(precision="mixed")` against the float64 solve, same run, same machine.

A ``"mixed"`` solve iterates in float32 to a relative KKT error of ``max(tol, MIXED_SWITCH_TOL)`` and
finishes in float64 from there (`saddle.linprog`). This measures whether that pays, on

  * small netlib LPs (the feasible ones of ``FOLDER``, default ``../shared/netlib``, up to
    ``--max-nnz`` nonzeros; ``tests/data/netlib`` holds the ten smallest), one LP per solve, and
  * a batch of ``--games`` random ``n x n`` matrix games (payoffs uniform in [-1, 1],
    ``problems.get("matrix_game")``) written as LPs, ``min v  s.t.  A^T x <= v 1, sum x = 1, x >= 0``:
    one batched `linprog` call with a 2-D ``c`` and 3-D ``A_ub``.

Each LP and tolerance is solved ``--repeats`` times by every variant, the variants interleaved within
a repetition (the machine may be shared: the median of the repetitions is reported). Per row: the
status (for the batch: how many of its LPs ended optimal), iterations (for the batch: the sum over its
LPs, and the largest), seconds, and the ratios double / mixed of the seconds and of the iterations
(> 1: mixed is faster, or takes fewer iterations). ``float32 it`` is the part of the mixed iterations
run in float32; ``us/it`` is the time per iteration of the float64 solve and of the float32 part.

Variants (``--variants``): ``double`` (float64 iterations), ``single`` (float32 iterations checked in
float64: status 4 where float32 cannot resolve tol) and ``mixed``; ``mixed@1e-4`` runs ``mixed`` with
`saddle.lp.MIXED_SWITCH_TOL` set to 1e-4 for that solve. ``--keep-iteration`` adds, for each mixed
variant, one (``+k``) run with the solver's iteration counter carried into the float64 part and the
float32 segments (`PrimalDualScheme.warm_state` patched for that solve: a simulation of a proposed
change to the solvers; their restart rule reads the counter, see docs/benchmarks.md).

    python benchmarks/mixed_precision.py                                   # netlib up to 600 nonzeros + 256 games
    python benchmarks/mixed_precision.py tests/data/netlib --repeats 3 --tols 1e-4,1e-8
    python benchmarks/mixed_precision.py --problems AFIRO KB2 --games 0 --variants double,mixed,mixed@1e-4
    python benchmarks/mixed_precision.py --problems none --games 256 --keep-iteration
"""

from __future__ import annotations

import argparse
import contextlib
import math
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import scipy
import torch

import saddle
from saddle import problems as problem_families
from saddle.solvers.pdhg_map import PrimalDualScheme

from netlib import DEFAULT_FOLDER, find_problems, saddle_arguments


@dataclass
class Case:
    """One LP (or batch of LPs) to solve: its name, size and `linprog` arguments."""

    name: str
    size: str
    args: dict
    batch: int


@dataclass
class Outcome:
    """A variant's solves of a case at one tol: statuses and counts (the same in every repetition), seconds."""

    solved: int
    status: str
    nit: int
    nit_max: int
    nit32: int
    nit32_max: int
    seconds32: float
    seconds: list[float]


def netlib_cases(folder: Path, names: list[str] | None, max_nnz: int) -> list[Case]:
    if names == ["none"]:
        return []
    found = [p for p in find_problems(folder, names, None if names else max_nnz, False) if p.expected == "optimal"]
    return [Case(p.name, f"{p.nnz} nnz", saddle_arguments(p.lp), 1) for p in found]


def game_case(B: int, n: int, seed: int) -> Case:
    """B random n x n games as LPs in the variables (x, v): ``min v, A^T x - v <= 0, sum x = 1, x >= 0``."""
    A = problem_families.get("matrix_game", n=n, batch_size=B, seed=seed, dtype=torch.float64).K.mT  # (B, n, n)
    c = torch.zeros(B, n + 1, dtype=torch.float64)
    c[:, -1] = 1
    A_ub = torch.cat([A.mT, -torch.ones(B, n, 1, dtype=torch.float64)], -1)
    A_eq = torch.cat([torch.ones(1, n, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64)], -1)
    bounds = torch.tensor([[0.0, math.inf]] * n + [[-math.inf, math.inf]], dtype=torch.float64)
    args = dict(c=c, A_ub=A_ub, b_ub=torch.zeros(B, n, dtype=torch.float64), A_eq=A_eq,
                b_eq=torch.ones(1, dtype=torch.float64), bounds=bounds)
    return Case(f"{B} games", f"{n}x{n}", args, B)


@contextlib.contextmanager
def variant_settings(variant: str):
    """The precision of ``variant`` (``double``, ``single``, ``mixed``, ``mixed@TOL``, each maybe ``+k``), with
    `saddle.lp.MIXED_SWITCH_TOL` and the solvers' `warm_state` set for it while the block runs."""
    name, keep = variant.removesuffix("+k"), variant.endswith("+k")
    precision, _, switch = name.partition("@")
    saved_tol, saved_warm = saddle.lp.MIXED_SWITCH_TOL, PrimalDualScheme.warm_state
    if switch:
        saddle.lp.MIXED_SWITCH_TOL = float(switch)
    if keep:
        def warm_state(self, problem, z0, previous_state):
            return saved_warm(self, problem, z0, previous_state)._replace(iteration=previous_state.iteration)
        PrimalDualScheme.warm_state = warm_state
    try:
        yield precision
    finally:
        saddle.lp.MIXED_SWITCH_TOL, PrimalDualScheme.warm_state = saved_tol, saved_warm


def solve_once(case: Case, variant: str, tol: float, time_limit: float) -> tuple[saddle.lp.LinprogResult, float]:
    with variant_settings(variant) as precision:
        start = time.perf_counter()
        res = saddle.linprog(**case.args, tol=tol, precision=precision, time_limit=time_limit)
        return res, time.perf_counter() - start


def measure(case: Case, variants: list[str], tol: float, repeats: int, time_limit: float) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    for _ in range(repeats):
        for variant in variants:
            res, seconds = solve_once(case, variant, tol, time_limit)
            if variant in outcomes:
                outcomes[variant].seconds.append(seconds)
                continue
            status = res.status.reshape(-1)
            nit = res.nit.reshape(-1)
            single = [p for p in res.phases if p.dtype == torch.float32]
            outcomes[variant] = Outcome(
                solved=int((status == 0).sum()),
                status=str(int(status[0])) if case.batch == 1 else f"{int((status == 0).sum())}/{case.batch}",
                nit=int(nit.sum()), nit_max=int(nit.max()),
                nit32=int(single[0].nit.sum()) if single else 0, nit32_max=int(single[0].nit.max()) if single else 0,
                seconds32=single[0].seconds if single else 0.0,
                seconds=[seconds])
    return outcomes


def fmt(value: float, spec: str = ".3g") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def rows(case: Case, tol: float, outcomes: dict[str, Outcome], base: str) -> list[str]:
    ref = outcomes.get(base)
    lines = []
    for variant, out in outcomes.items():
        seconds = statistics.median(out.seconds)
        time_ratio = statistics.median(ref.seconds) / seconds if ref else math.nan
        nit_ratio = ref.nit / out.nit if ref and out.nit else math.nan
        # per iteration of the batch (it steps its slowest LP's count, fewer instances once some have stopped)
        per_it = 1e6 * seconds / out.nit_max if out.nit_max else math.nan
        per_it32 = 1e6 * out.seconds32 / out.nit32_max if out.nit32_max else math.nan
        both = f"{out.nit} ({out.nit32})" if variant != "double" else str(out.nit)
        lines.append(f"| {case.name} | {case.size} | {tol:.0e} | {variant} | {out.status} | {both} | {out.nit_max} | "
                     f"{seconds:.3f} | {fmt(time_ratio, '.2f')} | {fmt(nit_ratio, '.2f')} | "
                     f"{fmt(per_it, '.0f')} | {fmt(per_it32, '.0f')} |")
    return lines


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default=str(DEFAULT_FOLDER), help="folder of netlib .npz files")
    parser.add_argument("--problems", nargs="+", metavar="NAME", help="only these netlib LPs ('none': no netlib LP)")
    parser.add_argument("--max-nnz", type=int, default=600, help="netlib LPs up to this many nonzeros (600)")
    parser.add_argument("--games", type=int, default=256, help="batch size of the games (0: none; default 256)")
    parser.add_argument("--n", type=int, default=50, help="size of each game (50)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tols", default="1e-4,1e-8", help="relative KKT tolerances (1e-4,1e-8)")
    parser.add_argument("--variants", default="double,mixed", help="comma-separated, the first is the baseline")
    parser.add_argument("--keep-iteration", action="store_true",
                        help="also run each mixed variant with the iteration counter kept across its parts (+k)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--time-limit", type=float, default=60.0, help="seconds per solve (60)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    args.tols = [float(t) for t in args.tols.split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if args.keep_iteration:
        args.variants += [f"{v}+k" for v in args.variants if v.startswith("mixed")]
    for v in args.variants:
        precision = v.removesuffix("+k").partition("@")[0]
        if precision not in saddle.lp.PRECISIONS:
            parser.error(f"--variants: {v!r} is not one of {saddle.lp.PRECISIONS} (optionally @SWITCH_TOL, +k)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cases = netlib_cases(Path(args.folder), args.problems, args.max_nnz)
    if args.games:
        cases.append(game_case(args.games, args.n, args.seed))
    print(f"# mixed precision: {len(cases)} cases, tols {args.tols}, variants {args.variants}, median of "
          f"{args.repeats}, {args.threads} thread(s); {platform.machine()}, torch {torch.__version__}, "
          f"scipy {scipy.__version__}; MIXED_SWITCH_TOL {saddle.lp.MIXED_SWITCH_TOL:g}, "
          f"MIXED_SEGMENT {saddle.lp.MIXED_SEGMENT}, MIXED_PROGRESS {saddle.lp.MIXED_PROGRESS:g}")
    print("| problem | size | tol | variant | status | nit (float32) | max nit | seconds | time ratio | nit ratio "
          "| us/it | float32 us/it |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        saddle.linprog(**case.args, tol=1e-2, max_iters=64)  # warm-up: kernels, allocator
        for tol in args.tols:
            outcomes = measure(case, args.variants, tol, args.repeats, args.time_limit)
            print("\n".join(rows(case, tol, outcomes, args.variants[0])), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
