"""Where ``torch.compile`` of a PDHG-family step pays: per-iteration time compiled vs eager, compile time apart.

For r2hpdhg (default settings) on each case: ``games`` (256 random 50 x 50 matrix games on simplices),
the netlib LPs ``KB2`` and ``SC50A`` (``tests/data/netlib``, no presolve; K sparse as ``linprog`` keeps a
sparse input, ``-dense`` as one ``(1, m, n)`` tensor) and ``sparse`` (`linear_programs.sparse_case`,
10^5 nonzeros); ``-op`` makes the products custom operations while compiling (`opaque_products`).
In the same run, from the same start point and interleaved (so that load from other processes hits
every variant alike):

  * ``eager``: the solver's ``step``, the reference of the ratios;
  * ``step``: ``torch.compile(lambda z, state: solver.step(problem, z, state), dynamic=False)``, what
    ``saddle.solve(compile=True)`` runs; the restart bookkeeping (`finish_step`) stays eager (a graph
    break);
  * ``bare_step``: only `bare_step` compiled, `finish_step` called eagerly;
  * ``step, MODE``: ``step`` with ``torch.compile(mode=MODE)`` (``--modes``);
  * ``chunk of C``: C `plain_step` calls compiled as one function wherever `plain_iterations` allows
    (a shorter chunk for the rest of a stretch), the steps around a restart check (every
    ``restart_every`` iterations: the check and the step after it) eagerly;
  * ``products``: one ``K x`` and one ``K^T y`` as the eager step makes them (the floor; the best of
    five rounds).

Each variant runs ``--steps`` iterations (a multiple of ``restart_every``, so restart checks count in
proportion) ``--repeats`` times; the table gives the median microseconds per iteration, its ratio to
eager, the compile time (the first run's excess over the median, inductor's caches disabled) and the
largest difference of the final iterate from the eager one. The driver's checks are not included.

    python benchmarks/compiled_step.py                 # DEFAULT_CASES: about 20 minutes on 2 cores
    python benchmarks/compiled_step.py --cases KB2-dense --modes max-autotune-no-cudagraphs reduce-overhead
    python benchmarks/compiled_step.py --cases games-op sparse-op --chunks 8 30 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import saddle  # noqa: E402
from linear_programs import _timed, saddle_lp_problem, sparse_case  # noqa: E402
from netlib import read_problem, saddle_arguments  # noqa: E402
from saddle import problems  # noqa: E402

NETLIB = Path(__file__).resolve().parents[1] / "tests" / "data" / "netlib"
CASES = ("games", "games-op", "KB2", "KB2-dense", "KB2-op", "KB2-dense-op", "SC50A", "SC50A-dense", "sparse",
         "sparse-op")
DEFAULT_CASES = ("games", "games-op", "KB2", "KB2-dense", "SC50A-dense", "sparse", "sparse-op")


@torch.library.custom_op("saddle_benchmarks::csr_mv", mutates_args=())
def csr_mv(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, columns: int,
           x: torch.Tensor) -> torch.Tensor:
    """``A x`` ``(B, m)`` for the CSR matrix ``A`` of the given parts and x ``(B, n)``: opaque to the compiler."""
    A = torch.sparse_csr_tensor(crow, col, values, (crow.numel() - 1, columns))
    return (A @ x.mT).mT.contiguous()


@csr_mv.register_fake
def _(crow, col, values, columns, x):
    return x.new_empty(x.shape[0], crow.numel() - 1)


@torch.library.custom_op("saddle_benchmarks::row_times", mutates_args=())
def row_times(v: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """``v^T M`` ``(B, n)`` for v ``(B, m)`` and M ``(B, m, n)``: opaque to the compiler."""
    return torch.matmul(v.unsqueeze(-2), M).squeeze(-2)


@row_times.register_fake
def _(v, M):
    return v.new_empty(v.shape[0], M.shape[-1])


def opaque_products(problem):
    """Make the products of ``problem``'s coupling custom operations while compiling, the eager ones unchanged:
    torch.compile takes no sparse tensor (each product is a graph break), and inductor writes a batched
    matrix-vector product on the CPU as its own loop (a mul and a sum), slower than the BLAS kernel."""
    coupling = problem.coupling
    mv, rmv = coupling.mv, coupling.rmv
    if coupling.sparse:
        K, Kt = ((M.crow_indices().clone(), M.col_indices().clone(), M.values().clone(), M.shape[1])
                 for M in (coupling.K, coupling._Kt))  # (views of a sparse tensor are sparse to the compiler)
        opaque_mv, opaque_rmv = (lambda x: csr_mv(*K, x)), (lambda y: csr_mv(*Kt, y))
    else:
        K, Kt = coupling.K, coupling.K.mT.contiguous()
        opaque_mv, opaque_rmv = (lambda x: row_times(x, Kt)), (lambda y: row_times(y, K))
    coupling.mv = lambda x: opaque_mv(x) if torch.compiler.is_compiling() else mv(x)
    coupling.rmv = lambda y: opaque_rmv(y) if torch.compiler.is_compiling() else rmv(y)
    return problem


def netlib_problem(name: str, dense: bool) -> saddle.LinearProgram:
    """The netlib LP as a `saddle.LinearProgram` with ``K = [A_eq; A_ub]`` sparse or dense ``(1, m, n)``
    (no presolve)."""
    args = saddle_arguments(read_problem(NETLIB / f"{name}.npz").lp)
    blocks = [(args[f"A_{k}"], args[f"b_{k}"]) for k in ("eq", "ub") if f"A_{k}" in args]
    K = torch.cat([A for A, _ in blocks], 0).coalesce()
    K = K.to_dense().unsqueeze(0) if dense else K
    d = torch.cat([b for _, b in blocks], -1).unsqueeze(0)
    n_eq = args["A_eq"].shape[0] if "A_eq" in args else 0
    bounds = args["bounds"]
    return saddle.LinearProgram(args["c"].unsqueeze(0), K, d, n_eq, bounds[:, 0].unsqueeze(0),
                                bounds[:, 1].unsqueeze(0))


def make_case(name: str):
    """``(label, problem)``."""
    base, *kinds = name.split("-")
    if base == "games":
        label, problem = "256 games 50 x 50", problems.get("matrix_game", n=50, batch_size=256, seed=0,
                                                          dtype=torch.float64)
    elif base == "sparse":
        case = sparse_case(100_000, seed=0)
        label, problem = case.name, saddle_lp_problem(case)
    else:
        problem = netlib_problem(base, "dense" in kinds)
        _, m, n = problem.coupling.shape
        label = f"{base} ({m} x {n}, {'dense' if 'dense' in kinds else 'sparse'})"
    if "op" in kinds:
        return label + ", products opaque", opaque_products(problem)
    return label, problem


def plain_chunk(solver, problem, length: int):
    """``(z, state) -> (z, state)``: ``length`` plain iterations (`plain_step`), the counter left as it is."""
    def chunk(z, state):
        for _ in range(length):
            z, state = solver.plain_step(problem, z, state)
        return z, state
    return chunk


def chunk_runner(solver, problem, size: int, mode: str | None):
    """Advance ``(z, state)`` by n iterations: plain stretches (`plain_iterations`) in compiled chunks of
    ``size`` (and the rest of a stretch in one shorter chunk), the steps with restart bookkeeping eagerly."""
    compiled: dict[int, object] = {}

    def run(z, state, n):
        end = state.iteration + n
        while state.iteration < end:
            length = min(size, solver.plain_iterations(state), end - state.iteration)
            if length == 0:
                z, state = solver.step(problem, z, state)
                continue
            if length not in compiled:
                compiled[length] = torch.compile(plain_chunk(solver, problem, length), dynamic=False, mode=mode)
            z, state = compiled[length](z, state)
            state = solver.advance(state, length)
        return z, state
    return run


def step_runner(step):
    def run(z, state, n):
        for _ in range(n):
            z, state = step(z, state)
        return z, state
    return run


def variants(solver, problem, args) -> dict:
    eager = lambda z, state: solver.step(problem, z, state)  # noqa: E731
    bare = torch.compile(lambda z, state: solver.bare_step(problem, z, state), dynamic=False)
    out = {"eager": step_runner(eager),
           "step": step_runner(torch.compile(eager, dynamic=False)),
           "bare_step": step_runner(lambda z, state: solver.finish_step(problem, z, state, bare(z, state)))}
    for mode in args.modes:
        out[f"step, {mode}"] = step_runner(torch.compile(lambda z, s: solver.step(problem, z, s), dynamic=False,
                                                         mode=mode))
    for size in args.chunks:
        out[f"chunk of {size}"] = chunk_runner(solver, problem, size, None)
    return out


def measure(name: str, args) -> list[dict]:
    label, problem = make_case(name)
    torch._dynamo.reset()  # a fresh recompile budget per case
    solver = saddle.get_solver("r2hpdhg")
    z0 = problem.domain.project(problem.z0)
    state0 = solver.init(problem, z0)
    runs = variants(solver, problem, args)
    first, times, finals = {}, {v: [] for v in runs}, {}
    for v, run in runs.items():  # the first runs: compilation
        start = time.perf_counter()
        finals[v] = run(z0, state0, args.steps)[0]
        first[v] = time.perf_counter() - start
    for _ in range(args.repeats):
        for v, run in runs.items():
            start = time.perf_counter()
            run(z0, state0, args.steps)
            times[v].append((time.perf_counter() - start) / args.steps)
    products = _timed(lambda: (problem.coupling.mv(z0[0]), problem.coupling.rmv(z0[1])), 0.5, 10)
    eager = statistics.median(times["eager"])
    rows = []
    for v in runs:
        per_it = statistics.median(times[v])
        diff = max(float((a - b).abs().max()) for a, b in zip(finals[v], finals["eager"]))
        rows.append(dict(case=label, variant=v, us=1e6 * per_it, ratio=eager / per_it,
                         spread=1e6 * (max(times[v]) - min(times[v])),
                         compile=first[v] - per_it * args.steps, products=1e6 * products, diff=diff))
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES), choices=CASES)
    parser.add_argument("--steps", type=int, default=128, help="iterations per timed run (default 128)")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per variant (default 7; the median)")
    parser.add_argument("--chunks", type=int, nargs="*", default=[8], help="compiled chunk sizes (default 8)")
    parser.add_argument("--modes", nargs="*", default=[], help="torch.compile modes of more ``step`` variants "
                        "(e.g. max-autotune-no-cudagraphs reduce-overhead; default none)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.compiler.config.force_disable_caches = True  # compile times as a first solve pays them
    warnings.filterwarnings("ignore", message="Dynamo detected a call to a `functools.lru_cache`")
    print(f"# Compiled vs eager steps, r2hpdhg: {args.steps} iterations x {args.repeats} runs (median), "
          f"{args.threads} thread(s), torch {torch.__version__}, {platform.machine()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start\n")
    print("| case | variant | us / iteration | eager / variant | spread [us] | compile [s] | "
          "products [us] | max diff from eager |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.cases:
        for r in measure(name, args):
            print(f"| {r['case']} | {r['variant']} | {r['us']:.1f} | {r['ratio']:.2f} | {r['spread']:.1f} | "
                  f"{r['compile']:.1f} | {r['products']:.1f} | {r['diff']:.1e} |", flush=True)
    print(f"\nload average {os.getloadavg()[0]:.1f} at the end (2 cores shared with other jobs: "
          "compare ratios, not absolute times)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
