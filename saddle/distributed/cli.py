"""The torchrun entry point: ``python -m saddle.distributed`` solves a distributed VI, one process per worker.

Start with ``torchrun --nproc-per-node M -m saddle.distributed --problem distributed_bilinear --solver masha1``
(or add ``--simulate M`` to run the M workers in this one process); rank 0 prints progress and the final
table. Before any work every rank checks what it can alone (the options, the ``--save`` path) and the ranks
agree on their options and problems (`saddle.distributed.agreement`), so a user error ends every rank with
one line on stderr and exit status 2. `main` is also a function: ``main(["--simulate", "4", ...])``.
"""

from __future__ import annotations

import argparse
import inspect
import math
import os
import sys
import time
from typing import Callable, Sequence

import torch

from .agreement import require_agreement
from .groups import SimulatedGroup, TorchDistributedGroup, WorkerGroup
from .problem import DistributedProblem

__all__ = ["main", "parser", "SOLVERS"]

SOLVERS = ("masha1", "masha2", "distributed_eg", "compressed_eg")



def _argument_type(convert: Callable, accept: Callable, expected: str) -> Callable[[str], object]:
    """An argparse ``type``: ``convert(text)`` if ``accept`` takes it, else the error "must be {expected}"."""
    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"must be {expected}, got {text!r}")
        return value
    return parse


_positive_int = _argument_type(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _argument_type(int, lambda v: v >= 0, "a non-negative integer")
_positive_float = _argument_type(float, lambda v: 0 < v < math.inf, "a positive finite number")
_nonnegative_float = _argument_type(float, lambda v: 0 <= v < math.inf, "a non-negative finite number")
_probability = _argument_type(float, lambda v: 0 < v <= 1, "a probability in (0, 1]")


def parser() -> argparse.ArgumentParser:
    """The options of ``python -m saddle.distributed`` (``--help`` lists them)."""
    from saddle import problems
    from ..solve import MEASURES

    p = argparse.ArgumentParser(
        prog="python -m saddle.distributed",
        description="Solve a distributed VI with one process per worker. Start with "
                    "`torchrun --nproc-per-node M -m saddle.distributed --problem distributed_bilinear "
                    "--solver masha1`, or add --simulate M to run the M workers in this one process. "
                    "Every rank must get the same options (all but --save and --timeout): they are compared "
                    "at start-up and a difference ends every rank with a message naming the option.")
    p.add_argument("--problem", default="distributed_bilinear", choices=problems.distributed.__all__)
    p.add_argument("--solver", default="masha1", choices=SOLVERS)
    p.add_argument("--compressor", default=None, help="randk, topk, permk, identity, dithering, natural")
    p.add_argument("--keep", type=_positive_int, default=None, help="coordinates kept by randk / topk (k)")
    p.add_argument("--server-compressor", default=None, help="compress the server's messages too")
    p.add_argument("--step-size", type=_positive_float, default=None)
    p.add_argument("--sync-prob", type=_probability, default=None, help="full-synchronization probability p")
    p.add_argument("--participation", type=_positive_int, default=None,
                   help="workers per round (partial participation)")
    p.add_argument("--minibatch", type=_positive_int, default=None, metavar="b",
                   help="samples per worker per round (the minibatch variants of masha1 / masha2; needs --samples)")
    p.add_argument("--samples", type=_positive_int, default=None, metavar="N",
                   help="split each worker's operator into N samples (distributed_bilinear)")
    p.add_argument("--size", type=_positive_int, default=None, help="the problem's size parameter n")
    p.add_argument("--batch-size", type=_positive_int, default=1)
    p.add_argument("--dtype", default="float64", choices=("float64", "float32"), help="the problem's dtype")
    p.add_argument("--transport", default="auto", choices=("auto", "all_gather", "server"),
                   help="how compressed messages travel: an all-gather of the payloads, or a server (rank 0) that "
                        "gathers them and broadcasts its reply; auto: the fewer bytes")
    p.add_argument("--bandwidth", type=_positive_float, default=None, metavar="GBIT/S",
                   help="throttle each rank to this many Gbit/s (a model of a slower network than loopback)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="problem and solver seed")
    p.add_argument("--max-iters", type=_nonnegative_int, default=5000)
    p.add_argument("--tol", type=_nonnegative_float, default=1e-6)
    p.add_argument("--measure", default="distance", choices=MEASURES)
    p.add_argument("--check-every", type=_positive_int, default=10)
    p.add_argument("--backend", default=None, choices=("gloo", "nccl"),
                   help="default: nccl with CUDA, else gloo (not with --simulate)")
    p.add_argument("--timeout", type=_positive_float, default=60.0, help="seconds a collective may wait")
    p.add_argument("--simulate", type=_positive_int, default=None, metavar="M",
                   help="run M simulated workers in this process instead of torch.distributed")
    p.add_argument("--save", default=None,
                   help="rank 0 saves the final point and counts here (torch.save, written atomically)")
    p.add_argument("--fail-rank", type=_nonnegative_int, default=None, help=argparse.SUPPRESS)  # fault injection
    p.add_argument("--fail-at", type=_nonnegative_int, default=None, help=argparse.SUPPRESS)    # (tests)
    p.add_argument("--fail-mode", default="raise", choices=["raise", "exit", "hang"], help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m saddle.distributed`` (under ``torchrun``): solve and print a table on rank 0.

    A user error (a bad option value, a ``--save`` path in a missing folder, ranks started with
    different options) ends every rank before any work with one line on stderr and exit status 2.
    """
    args = parser().parse_args(argv)
    torch.set_num_threads(1)
    try:
        group = _start_group(args)
    except (ValueError, RuntimeError) as err:
        return _refuse(err)
    try:
        problem, solver = _agreed_setup(args, group)
        _run(args, group, problem, solver)
    except (ValueError, TypeError) as err:
        return _refuse(err)
    finally:
        if isinstance(group, TorchDistributedGroup):
            group.close()
    return 0


def _refuse(err: Exception) -> int:
    print(f"python -m saddle.distributed: error: {err}", file=sys.stderr, flush=True)
    return 2


def _start_group(args) -> WorkerGroup:
    """The worker group the options ask for, refusing combinations that cannot work before starting one."""
    if args.simulate is None:
        bandwidth = None if args.bandwidth is None else args.bandwidth * 1e9 / 8
        return TorchDistributedGroup(args.backend, args.timeout, bandwidth=bandwidth)
    if args.bandwidth is not None:
        raise ValueError("--bandwidth throttles the collectives of a torchrun; --simulate has none: drop one")
    if args.backend is not None:
        raise ValueError(f"--backend {args.backend} applies to runs under torchrun; --simulate runs every worker "
                         "in this one process: give one of them")
    world = os.environ.get("WORLD_SIZE", "1")
    if world != "1":
        raise ValueError(f"--simulate {args.simulate} runs every worker in one process, but this process is one of "
                         f"WORLD_SIZE = {world} started by torchrun: drop --simulate, or run without torchrun")
    return SimulatedGroup(args.simulate)


def _agreed_setup(args, group: WorkerGroup):
    """The problem and the solver; under torch.distributed, only once every rank has them and agrees.

    Every rank exchanges a fixed-size report (its shared options, a digest of its problem, its own
    setup error) before any collective whose size depends on the options, and all of them raise the
    same `ValueError` unless the options and the problems agree and no rank failed.
    """
    distributed = isinstance(group, TorchDistributedGroup)
    problem = solver = error = None
    try:
        problem, solver = _setup(args, group)
    except (ValueError, TypeError) as err:
        if not distributed:
            raise
        error = str(err)
    if distributed:
        require_agreement(args, group, problem, error)
    return problem, solver


def _setup(args, group: WorkerGroup):
    """Check what this rank can check alone (the output path, the options against the problem) and build."""
    from ..checkpoint import check_writable
    from ..solvers.base import get_solver

    if args.save is not None and group.rank == 0:
        check_writable(args.save, what=f"--save {args.save}")
    settings = _solver_settings(args)
    problem = _make_problem(args, group)
    if args.keep is not None and args.keep > problem.dim:
        raise ValueError(f"--keep must be at most the dimension d = {problem.dim} of {problem.name}, got {args.keep}")
    if args.minibatch is not None and args.minibatch > problem.samples:
        raise ValueError(f"--minibatch must be at most --samples (N = {problem.samples} samples per worker), "
                         f"got {args.minibatch}")
    solver = get_solver(args.solver, **settings)
    solver.check(problem)
    return problem, solver


def _solver_settings(args) -> dict:
    """The solver's settings from the options (compressors built, ``--keep`` applied)."""
    from ..compress import get_compressor

    settings = {}
    if args.compressor is not None:
        comp = get_compressor(args.compressor, "--compressor")
        if args.keep is not None:
            if not hasattr(comp, "k"):
                raise ValueError(f"--keep applies to randk and topk, not {args.compressor}")
            comp = type(comp)(k=args.keep)
        settings["compressor"] = comp
    elif args.keep is not None:
        raise ValueError("--keep needs --compressor randk or topk (the solver's default compressor keeps 10%)")
    if args.server_compressor is not None:
        settings["server_compressor"] = get_compressor(args.server_compressor, "--server-compressor")
    for name, value in (("step_size", args.step_size), ("p", args.sync_prob), ("participation", args.participation),
                        ("minibatch", args.minibatch)):
        if value is not None:
            settings[name] = value
    if args.solver in ("masha1", "masha2", "compressed_eg"):
        settings["seed"] = args.seed
        settings["transport"] = args.transport
    elif args.transport != "auto":
        raise ValueError(f"--transport applies to the compressed solvers, not {args.solver}")
    return settings


def _make_problem(args, group: WorkerGroup) -> DistributedProblem:
    """The ``--problem`` with the workers of ``group`` (no communication)."""
    from saddle import problems

    kw = dict(group=group, workers=group.size, seed=args.seed, batch_size=args.batch_size,
              device=getattr(group, "device", torch.device("cpu")), dtype=getattr(torch, args.dtype))
    if args.size is not None:
        kw["n"] = args.size
    if args.samples is not None:
        if "samples" not in inspect.signature(getattr(problems.distributed, args.problem)).parameters:
            raise ValueError(f"--samples applies to distributed_bilinear, not {args.problem}")
        kw["samples"] = args.samples
    try:
        return problems.get(args.problem, **kw)
    except ValueError as err:  # e.g. samples > n: say which problem the --size / --samples went to
        raise ValueError(f"--problem {args.problem}: {err}") from err

def _run(args, group: WorkerGroup, problem: DistributedProblem, solver) -> None:
    """Solve, print the table on rank 0 and save there (atomically) if asked."""
    from ..checkpoint import save_checkpoint
    from ..solve import solve

    rank = group.rank
    marks = []  # (iteration, time) at every check: the seconds per round between checks, without init and the end

    def callback(progress):
        marks.append((progress.iteration, time.perf_counter()))
        if args.fail_rank is not None and rank == args.fail_rank and progress.iteration >= (args.fail_at or 0):
            if args.fail_mode == "exit":
                os._exit(3)
            if args.fail_mode == "hang":
                time.sleep(3600)
            raise RuntimeError(f"injected failure on rank {rank} at iteration {progress.iteration}")
        if rank == 0:
            worst = progress.measures[args.measure].max().item()
            print(f"[rank 0] iteration {progress.iteration:6d}  {args.measure} {worst:.3e}", flush=True)

    start = time.perf_counter()
    sol = solve(problem, solver, max_iters=args.max_iters, tol=args.tol, measure=args.measure,
                check_every=args.check_every, callback=callback)
    wall = time.perf_counter() - start
    if rank != 0:
        return
    counts = sol.counts
    rounds = sol.iterations.max().item()
    print(f"\n{args.solver} on {problem.name}: {group!r}")
    print(f"{'status':<12}{'rounds':>8}{'op calls':>10}{'bits sent':>14}{'bits up':>14}{'distance':>12}"
          f"{'s/round':>10}")
    for i in range(problem.batch_size):
        dist = sol.distance[i].item() if sol.distance is not None else float("nan")
        print(f"{sol.statuses[i].name:<12}{sol.iterations[i].item():>8}{sol.operator_calls[i].item():>10}"
              f"{counts['bits_sent'][i].item():>14}{counts['bits_up'][i].item():>14}{dist:>12.3e}"
              f"{wall / max(rounds, 1):>10.2e}")
    if args.save:
        traffic = group.traffic
        per_round = wall / max(rounds, 1) if len(marks) < 2 else \
            (marks[-1][1] - marks[0][1]) / max(marks[-1][0] - marks[0][0], 1)
        save_checkpoint(args.save, {"z": tuple(b.cpu() for b in sol.z), "round_time": per_round,
                                    "counts": {k: v.cpu() for k, v in counts.items()},
                                    "iterations": sol.iterations.cpu(), "wall_time": wall, "rounds": rounds,
                                    "distance": None if sol.distance is None else sol.distance.cpu(),
                                    "traffic": {"sent": traffic.sent, "received": traffic.received,
                                                "calls": traffic.calls}})

