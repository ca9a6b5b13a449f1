"""Distributed VIs: worker groups (simulated or `torch.distributed`) and problems split over workers.

A distributed VI is ``F(z) = (1/M) sum_m F_m(z)``: worker m holds its own
operator ``F_m`` (its data shard). The solvers of `saddle.solvers.compressed`
are written once against a `WorkerGroup`:

- every worker-indexed tensor has the layout ``(B, m, d)``: B instances, the
  m workers *held by this process*, d coordinates (the point flattened);
- ``group.mean(x)`` / ``group.weighted_sum(x, weights)`` reduce over all M
  workers and return the same ``(B, d)`` result on every process.

Two interchangeable backends:

- `SimulatedGroup` (``backend="simulated"``): all M workers in one process on
  the extra dimension (``m = M``); reductions are sums over it. For tests,
  notebooks and ``saddle.solve`` on a laptop.
- `TorchDistributedGroup` (``backend="gloo"`` or ``"nccl"``): one process
  (rank) per worker (``m = 1``); reductions are ``torch.distributed.all_reduce``
  (collectives only). Start with
  ``torchrun --nproc-per-node M -m saddle.distributed --problem distributed_bilinear --solver masha1``;
  rank 0 prints progress and the final table. At start-up every rank sends the others a fixed-size
  report (a hash of each option that must agree, a digest of its problem, its own setup error), so
  ranks started with different options, or one that cannot set up, stop every rank with one message.

Random decisions (compressor draws, the full-synchronization coin, the
participating workers, the minibatches of finite-sum workers) come from
counter-based hashes of shared seeds (`saddle.compress.uniform`), so every
process makes them identically without communicating, and the two backends
produce the same iterates.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import math
import os
import sys
import time
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .point import Point
from .problem import VIProblem

__all__ = [
    "WorkerGroup", "SimulatedGroup", "TorchDistributedGroup", "DistributedProblem", "AffineWorkers",
    "flatten", "unflatten", "make_group", "main",
]


def flatten(z: Point) -> Tensor:
    """The blocks of a point side by side: ``(B, d)`` with ``d = sum n_i``."""
    return z[0] if len(z) == 1 else torch.cat(z, dim=-1)


def unflatten(v: Tensor, dims: Sequence[int]) -> Point:
    """Split the last dimension of ``v`` into blocks of sizes ``dims``: the inverse of `flatten`."""
    return tuple(torch.split(v, list(dims), dim=-1))


class WorkerGroup:
    """M workers; this process holds the workers `workers` of them.

    Attributes:
        size: the number of workers M.
        workers: the indices of the workers held by this process (all of them when simulated).
        backend: ``"simulated"``, ``"gloo"`` or ``"nccl"``.
    """

    size: int
    workers: tuple[int, ...]
    backend: str

    @property
    def rank(self) -> int:
        """This process's rank (0 when simulated)."""
        return 0

    def worker_index(self, device=None) -> Tensor:
        """``(m,)`` int64 tensor of the workers held here."""
        return torch.tensor(self.workers, dtype=torch.int64, device=device)

    def all_sum(self, local: Tensor) -> Tensor:
        """Sum a per-process partial result over all processes (identity when simulated)."""
        raise NotImplementedError

    def weighted_sum(self, x: Tensor, weights: Tensor) -> Tensor:
        """``sum_m weights[:, m] x[:, m]`` over all M workers.

        Args:
            x: ``(B, m, d)`` the messages of the workers held here.
            weights: ``(B, M)`` a weight per instance and worker (all M workers, on every process).

        Returns:
            ``(B, d)``, the same on every process.
        """
        local_w = weights[:, list(self.workers)].to(x.dtype).unsqueeze(-1)
        return self.all_sum((x * local_w).sum(1))

    def mean(self, x: Tensor) -> Tensor:
        """``(1/M) sum_m x[:, m]``: ``(B, m, d) -> (B, d)``, the same on every process."""
        return self.all_sum(x.sum(1)) / self.size

    def sum_count(self, local: Tensor) -> Tensor:
        """Sum an integer count (e.g. bits, ``(B,)`` int64) over all processes."""
        return self.all_sum(local)

    def check_alive(self) -> None:
        """Raise ``RuntimeError`` if a worker has failed (a no-op when simulated)."""


class SimulatedGroup(WorkerGroup):
    """M workers on an extra tensor dimension in this one process.

    Args:
        size: the number of workers M.
    """

    backend = "simulated"

    def __init__(self, size: int):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive integer (the number of workers), got {size!r}")
        self.size = size
        self.workers = tuple(range(size))

    def all_sum(self, local: Tensor) -> Tensor:
        return local

    def __repr__(self) -> str:
        return f"SimulatedGroup(size={self.size})"


class TorchDistributedGroup(WorkerGroup):
    """One worker per process of a `torch.distributed` process group (collectives only).

    Initializes the default process group from the ``torchrun`` environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``) unless it is
    already initialized. Every collective has a timeout, so a dead peer makes
    the others fail instead of hanging.

    Args:
        backend: ``"gloo"`` (CPU tensors) or ``"nccl"`` (CUDA tensors); default
            ``"nccl"`` when CUDA is available, else ``"gloo"``.
        timeout: seconds a collective may wait for the other processes.
    """

    def __init__(self, backend: str | None = None, timeout: float = 60.0):
        import torch.distributed as dist

        if not dist.is_available():
            raise RuntimeError("torch.distributed is not available in this build of torch")
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"backend must be 'gloo' or 'nccl', got {backend!r}")
        if backend == "nccl" and not torch.cuda.is_available():
            raise ValueError("backend 'nccl' needs CUDA devices and this process sees none: use 'gloo'")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a positive finite number of seconds, got {timeout!r}")
        if not dist.is_initialized():
            missing = [v for v in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
            if missing:
                raise RuntimeError(f"no process group and no torchrun environment (missing {', '.join(missing)}); "
                                   "start with `torchrun --nproc-per-node M -m saddle.distributed ...`")
            if backend == "nccl":
                torch.cuda.set_device(_local_cuda_device())
            try:
                dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
            except RuntimeError as err:  # e.g. a peer that never came: one line, not gloo's traceback
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise RuntimeError(f"could not start the {backend} process group within {timeout:g} s: "
                                   f"{reason}") from err
        self._dist = dist
        self.backend = backend
        self.size = dist.get_world_size()
        self.workers = (dist.get_rank(),)
        self.device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")

    @property
    def rank(self) -> int:
        return self.workers[0]

    def all_sum(self, local: Tensor) -> Tensor:
        out = local.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out

    def all_gather(self, local: Tensor) -> Tensor:
        """``(size, *local.shape)``: every process's ``local`` by rank (the same shape and dtype on every one)."""
        out = [torch.empty_like(local) for _ in range(self.size)]
        self._dist.all_gather(out, local)
        return torch.stack(out)

    def check_alive(self) -> None:
        self._dist.barrier()

    def close(self) -> None:
        """Destroy the default process group."""
        if self._dist.is_initialized():
            self._dist.destroy_process_group()

    def __repr__(self) -> str:
        return f"TorchDistributedGroup(backend={self.backend!r}, size={self.size}, rank={self.rank})"


def _local_cuda_device() -> int:
    """This process's CUDA device under torchrun (``LOCAL_RANK``), refused if the machine has fewer devices."""
    local = int(os.environ.get("LOCAL_RANK", 0))
    if local >= torch.cuda.device_count():
        raise ValueError(f"backend 'nccl' needs one CUDA device per process: LOCAL_RANK = {local} but this machine "
                         f"has {torch.cuda.device_count()}; start fewer processes per node or use 'gloo'")
    return local


def make_group(group=None, workers: int | None = None) -> WorkerGroup:
    """A `WorkerGroup` from a group, None (simulated with ``workers`` workers), ``"simulated"``, ``"gloo"`` or ``"nccl"``.

    Args:
        group: a `WorkerGroup`, None / ``"simulated"``, or a torch.distributed backend name.
        workers: the number of workers M (needed when simulated; checked against the group otherwise).
    """
    if isinstance(group, WorkerGroup):
        out = group
    elif group is None or group == "simulated":
        if workers is None:
            raise ValueError("workers (the number of workers M) is needed for a simulated group")
        out = SimulatedGroup(workers)
    elif group in ("gloo", "nccl", "torch.distributed"):
        out = TorchDistributedGroup(None if group == "torch.distributed" else group)
    else:
        raise TypeError(f"group must be a WorkerGroup, None, 'simulated', 'gloo' or 'nccl', got {group!r}")
    if workers is not None and out.size != workers:
        raise ValueError(f"workers = {workers} but the group has {out.size} workers")
    return out


class AffineWorkers:
    """Affine local operators ``F_m(z) = A_m z + c_m`` on flattened points (the workers held here).

    Optionally a finite sum per worker, ``F_m = (1/N) sum_j F_{m,j}`` with affine
    components ``F_{m,j}(z) = A_{m,j} z + c_{m,j}`` (N samples per worker), for the
    minibatch variants of the compressed solvers. The full ``F_m`` is always
    computed from ``A_m, c_m`` (the components' average must equal it).

    Args:
        A: ``(B, m, d, d)`` the local matrices of the workers held by this process.
        c: ``(B, m, d)`` the local offsets.
        components: None, or ``(A_j, c_j)`` of shapes ``(B, m, N, d, d)`` and ``(B, m, N, d)``:
            every held worker's N sample operators.
    """

    def __init__(self, A: Tensor, c: Tensor, components: tuple[Tensor, Tensor] | None = None):
        if A.dim() != 4 or c.dim() != 3 or A.shape[:3] != c.shape or A.shape[-1] != A.shape[-2]:
            raise ValueError(f"A must be (B, m, d, d) and c (B, m, d); got {tuple(A.shape)} and {tuple(c.shape)}")
        if components is not None:
            Aj, cj = components
            B, m, d = c.shape
            if Aj.dim() != 5 or cj.dim() != 4 or Aj.shape[:2] != (B, m) or Aj.shape[3:] != (d, d) or \
                    cj.shape != Aj.shape[:4]:
                raise ValueError(f"components must be (B, m, N, d, d) and (B, m, N, d) with (B, m, d) = {(B, m, d)}; "
                                 f"got {tuple(Aj.shape)} and {tuple(cj.shape)}")
        self.A, self.c, self.components = A, c, components

    @property
    def samples(self) -> int:
        """N, the number of samples (components) per worker (1: no finite-sum structure)."""
        return 1 if self.components is None else self.components[0].shape[2]

    def __call__(self, v: Tensor) -> Tensor:
        """``(B, d) -> (B, m, d)``: every held worker's ``F_m`` at the common point ``v``."""
        return (self.A @ v[:, None, :, None]).squeeze(-1) + self.c

    def sample(self, v: Tensor, idx: Tensor) -> Tensor:
        """The held workers' minibatch means ``(1/b) sum_i F_{m, idx[:, m, i]}(v)``: ``(B, m, d)``.

        Args:
            v: ``(B, d)`` the common point.
            idx: ``(B, m, b)`` int64 sample indices in ``[0, N)``, per instance and held worker.
        """
        if self.components is None:
            return self(v)  # N = 1: the only sample is F_m
        Aj, cj = self.components
        B, m = idx.shape[:2]
        bi = torch.arange(B, device=idx.device).view(B, 1, 1)
        mi = torch.arange(m, device=idx.device).view(1, m, 1)
        values = (Aj[bi, mi, idx] @ v[:, None, None, :, None]).squeeze(-1) + cj[bi, mi, idx]  # (B, m, b, d)
        return values.mean(2)

    def select(self, i: int) -> "AffineWorkers":
        """Instance i alone (batch size 1)."""
        comp = None if self.components is None else tuple(t[i:i + 1] for t in self.components)
        return AffineWorkers(self.A[i:i + 1], self.c[i:i + 1], comp)


class DistributedProblem(VIProblem):
    """A VI whose operator is the average of M workers' operators, ``F = (1/M) sum_m F_m``.

    ``F`` (used by the driver's convergence checks) is ``group.mean`` of the
    local operators, so under `torch.distributed` it is a collective: every
    process evaluates it at the same time (they all run the same loop).

    Args:
        local_operator: a function ``(B, d) -> (B, m, d)`` giving the held workers'
            ``F_m`` at a common flattened point (e.g. `AffineWorkers`).
        domain: the set Z, as for `VIProblem`.
        z0: the starting point, as for `VIProblem`.
        group: the `WorkerGroup`.
        local_lipschitz: ``(B, M)`` Lipschitz constants ``L_m`` of every worker's
            operator (known to every process), if known.
        sample_lipschitz: ``(B, M)`` for a finite-sum local operator (one with
            ``samples`` N > 1 and ``sample(v, idx)``, e.g. `AffineWorkers` with
            components): ``Lhat_m = sqrt((1/N) sum_j L_{m,j}^2)``, the mean-square
            Lipschitz constant of worker m's samples, if known.
        **kwargs: passed to `VIProblem` (``lipschitz``, ``strong_monotonicity``,
            ``reference``, ``name``, ...).
    """

    def __init__(self, local_operator: Callable[[Tensor], Tensor], domain, z0, *, group: WorkerGroup,
                 local_lipschitz=None, sample_lipschitz=None, **kwargs):
        if not isinstance(group, WorkerGroup):
            raise TypeError(f"group must be a WorkerGroup, got {type(group).__name__}")
        if not callable(local_operator):
            raise TypeError(f"local_operator must be callable, got {type(local_operator).__name__}")
        self.group = group
        self.local_operator = local_operator
        super().__init__(self._full_operator, domain, z0, **kwargs)
        self._local_lipschitz = self._per_worker(local_lipschitz, "local_lipschitz")
        if self.samples > 1 and not callable(getattr(local_operator, "sample", None)):
            raise TypeError("a local operator with samples > 1 needs a sample(v, idx) method")
        self._sample_lipschitz = self._per_worker(sample_lipschitz, "sample_lipschitz")

    def _per_worker(self, value, name: str) -> Tensor | None:
        """A per-instance, per-worker constant as a ``(B, M)`` float64 CPU tensor (None stays None)."""
        if value is None:
            return None
        value = torch.as_tensor(value, dtype=torch.float64).cpu()
        if value.shape != (self.batch_size, self.group.size):
            raise ValueError(f"{name} must have shape (B, M) = ({self.batch_size}, {self.group.size}), "
                             f"got {tuple(value.shape)}")
        return value

    @property
    def workers(self) -> int:
        """The number of workers M."""
        return self.group.size

    @property
    def dim(self) -> int:
        """The flattened dimension d = sum of the block sizes."""
        return sum(self.dims)

    @property
    def samples(self) -> int:
        """N, the samples per worker of a finite-sum local operator ``F_m = (1/N) sum_j F_{m,j}`` (1 if none)."""
        N = getattr(self.local_operator, "samples", 1)
        return 1 if N is None else int(N)

    def local_F(self, v: Tensor) -> Tensor:
        """The held workers' operators at the flattened point ``v`` ``(B, d)``: ``(B, m, d)``."""
        return self.local_operator(v)

    def local_sample(self, v: Tensor, idx: Tensor) -> Tensor:
        """The held workers' minibatch means ``(1/b) sum_i F_{m, idx[:, m, i]}(v)``, ``(B, m, d)``.

        ``idx`` is ``(B, m, b)`` int64 in ``[0, N)``; with N = 1 the only sample is ``F_m``.
        """
        if self.samples == 1 and not callable(getattr(self.local_operator, "sample", None)):
            return self.local_F(v)
        return self.local_operator.sample(v, idx)

    def _full_operator(self, z: Point) -> Point:
        return unflatten(self.group.mean(self.local_F(flatten(z))), self.dims)

    def local_lipschitz(self) -> Tensor | None:
        """``(B, M)`` the workers' Lipschitz constants (float64, CPU), or None."""
        return self._local_lipschitz

    def mean_square_lipschitz(self) -> Tensor | None:
        """``(B,)`` ``Lbar = sqrt((1/M) sum_m L_m^2)``; the global L when the local ones are unknown."""
        if self._local_lipschitz is not None:
            return self._local_lipschitz.square().mean(-1).sqrt()
        return self.lipschitz()

    def mean_square_sample_lipschitz(self) -> Tensor | None:
        """``(B,)`` ``Lhat = sqrt((1/M) sum_m Lhat_m^2)`` over all workers' samples, or None if unknown.

        With one sample per worker it is `mean_square_lipschitz`.
        """
        if self._sample_lipschitz is not None:
            return self._sample_lipschitz.square().mean(-1).sqrt()
        return self.mean_square_lipschitz() if self.samples == 1 else None

    def select(self, i: int) -> "DistributedProblem":
        """Instance i alone, as a problem of batch size 1 (needs ``local_operator.select``)."""
        if not hasattr(self.local_operator, "select"):
            raise TypeError("the local operator has no select(i) method")
        sol = self.solution
        L, mu = self.lipschitz(), self.strong_monotonicity()
        from .sets import Box, Ball, Product

        def row(s):
            if isinstance(s, Box):
                return Box(_row(s.lo, i), _row(s.hi, i))
            if isinstance(s, Ball):
                return Ball(_row(s.radius, i), s.p)
            return s

        return DistributedProblem(
            self.local_operator.select(i), Product(*[row(s) for s in self.domain]), tuple(b[i:i + 1] for b in self.z0),
            group=self.group, name=self.name,
            local_lipschitz=None if self._local_lipschitz is None else self._local_lipschitz[i:i + 1],
            sample_lipschitz=None if self._sample_lipschitz is None else self._sample_lipschitz[i:i + 1],
            lipschitz=None if L is None else L[i:i + 1], strong_monotonicity=None if mu is None else mu[i:i + 1],
            solution=None if sol is None else tuple(b[i:i + 1] for b in sol))


def _row(t, i):
    if not isinstance(t, Tensor) or t.dim() == 0 or t.shape[0] == 1:
        return t
    return t[i:i + 1]


# -- the torchrun entry point ----------------------------------------------------------------

SOLVERS = ("masha1", "masha2", "distributed_eg", "compressed_eg")

# The options every rank must be started with, in the digest's order: all but --save (only rank 0
# writes), --timeout (a process's own patience) and --simulate (no ranks).
SHARED_OPTIONS = ("problem", "size", "samples", "batch_size", "seed", "solver", "compressor", "keep",
                  "server_compressor", "step_size", "sync_prob", "participation", "minibatch", "max_iters", "tol",
                  "measure", "check_every", "backend", "fail_rank", "fail_at", "fail_mode")
# A rank's report has a fixed size whatever the options, so that ranks which disagree (or run other
# versions of this module) exchange it without a collective mismatch: int64 slots (the options'
# layout, the problem, an error flag, one hash per shared option), then ASCII JSON of the values and
# of the rank's error, zero-padded.
_DIGEST_SLOTS = 32
_TEXT_BYTES = 4096
assert 3 + len(SHARED_OPTIONS) <= _DIGEST_SLOTS


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


def _parser() -> argparse.ArgumentParser:
    import problems.distributed
    from .solve import MEASURES

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
    args = _parser().parse_args(argv)
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
        return TorchDistributedGroup(args.backend, args.timeout)
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
        options = _shared_options(args, group)
        report = _RankReport(layout=_hash64(" ".join(options)),
                             problem=0 if problem is None else _problem_digest(problem),
                             options=tuple(_hash64(v) for v in options.values()), values=options, error=error)
        reports = [_decode(row) for row in group.all_gather(_encode(report).to(group.device)).cpu()]
        refusal = _refusal(reports)
        if refusal is not None:
            raise ValueError(refusal)
    return problem, solver


def _setup(args, group: WorkerGroup):
    """Check what this rank can check alone (the output path, the options against the problem) and build."""
    from .checkpoint import check_writable
    from .solvers.base import get_solver

    if args.save is not None and group.rank == 0:
        try:
            check_writable(args.save)
        except ValueError as err:
            raise ValueError(f"--save {args.save}: {str(err).removeprefix('checkpoint: ')}") from None
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
    from .compress import get_compressor

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
                        ("batch_size", args.minibatch)):
        if value is not None:
            settings[name] = value
    if args.solver in ("masha1", "masha2", "compressed_eg"):
        settings["seed"] = args.seed
    return settings


def _make_problem(args, group: WorkerGroup) -> DistributedProblem:
    """The ``--problem`` with the workers of ``group`` (no communication)."""
    import problems.distributed

    kw = dict(group=group, workers=group.size, seed=args.seed, batch_size=args.batch_size,
              device=getattr(group, "device", torch.device("cpu")))
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


def _shared_options(args, group: WorkerGroup) -> dict[str, str]:
    """``{"--flag": value}`` of every option in `SHARED_OPTIONS` (the backend as resolved)."""
    value = dict(vars(args), backend=group.backend)
    return {"--" + name.replace("_", "-"): str(value[name]) for name in SHARED_OPTIONS}


class _RankReport(NamedTuple):
    """What a rank tells the others at start-up (``values`` is None if its text could not be read)."""

    layout: int
    problem: int
    options: tuple[int, ...]
    values: dict[str, str] | None
    error: str | None


def _hash64(text: str) -> int:
    return _int64(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _int64(digest: bytes) -> int:
    return int.from_bytes(digest, "little", signed=True)


def _problem_digest(problem: DistributedProblem) -> int:
    """A 64-bit hash of what every rank knows of the whole problem: name, shapes, start and constants.

    The constants come from every worker's data, so ranks that generated different data (another
    torch version, say) differ here. They are rounded to float32 first, so that last-bit differences
    between machines' linear algebra libraries do not count.
    """
    h = hashlib.blake2b(f"{problem.name} {problem.dims} {problem.batch_size}".encode(), digest_size=8)
    for t in (*problem.z0, problem.lipschitz(), problem.strong_monotonicity(), problem.local_lipschitz(),
              problem.mean_square_sample_lipschitz()):
        if t is not None:
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return _int64(h.digest())


def _encode(report: _RankReport) -> Tensor:
    """A report as ``(8 * _DIGEST_SLOTS + _TEXT_BYTES,)`` uint8: the int64 slots, then the JSON text."""
    slots = torch.zeros(_DIGEST_SLOTS, dtype=torch.int64)
    head = [report.layout, report.problem, int(report.error is not None), *report.options]
    slots[:len(head)] = torch.tensor(head, dtype=torch.int64)
    text = json.dumps({"values": {k: v[:60] for k, v in (report.values or {}).items()},
                       "error": None if report.error is None else report.error[:1000]}).encode()[:_TEXT_BYTES]
    buffer = torch.zeros(_TEXT_BYTES, dtype=torch.uint8)
    buffer[:len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return torch.cat([slots.view(torch.uint8), buffer])


def _decode(row: Tensor) -> _RankReport:
    """The inverse of `_encode` (a text cut short or unreadable gives ``values=None``)."""
    slots = row[:8 * _DIGEST_SLOTS].clone().view(torch.int64).tolist()
    failed = slots[2] != 0
    try:
        payload = json.loads(bytes(row[8 * _DIGEST_SLOTS:].tolist()).rstrip(b"\0").decode("ascii"))
        values, error = payload["values"], payload["error"]
    except (ValueError, KeyError, TypeError):
        values, error = None, None
    if failed and error is None:
        error = "(its message could not be read)"
    return _RankReport(slots[0], slots[1], tuple(slots[3:3 + len(SHARED_OPTIONS)]), values, error)


def _refusal(reports: Sequence[_RankReport]) -> str | None:
    """The one message that ends every rank, or None when every rank agrees and none failed."""
    if len({r.layout for r in reports}) > 1:
        return ("the ranks run different versions of saddle.distributed (they compare different options): "
                "install the same version on every machine")
    parts = []
    flags = ["--" + name.replace("_", "-") for name in SHARED_OPTIONS]
    differing = [_describe_option(reports, i, flag) for i, flag in enumerate(flags)
                 if len({r.options[i] for r in reports}) > 1]
    if differing:
        parts.append("the ranks were started with different options: " + "; ".join(differing)
                     + " (every rank needs the same options)")
    failed = [(rank, r.error) for rank, r in enumerate(reports) if r.error is not None]
    if failed:
        messages = {message for _, message in failed}
        if len(failed) == len(reports) and len(messages) == 1:
            parts.append(messages.pop())
        else:
            parts.extend(f"{_ranks([rank for rank, m in failed if m == message])}: {message}"
                         for message in dict.fromkeys(m for _, m in failed))
    elif not differing and len({r.problem for r in reports}) > 1:
        groups = _by_value([r.problem for r in reports])
        parts.append("the ranks built different problems from the same options (their starting points or "
                     f"constants differ: {' vs '.join(_ranks(g) for g in groups)}); are torch and saddle the "
                     "same versions on every machine?")
    return "; ".join(parts) if parts else None


def _describe_option(reports: Sequence[_RankReport], i: int, flag: str) -> str:
    """E.g. ``"--seed 0 on rank 0 vs --seed 1 on ranks 1-3"``."""
    described = []
    for ranks in _by_value([r.options[i] for r in reports]):
        values = reports[ranks[0]].values
        value = "?" if values is None else values.get(flag, "?")
        described.append(f"{'no ' + flag if value == 'None' else flag + ' ' + value} on {_ranks(ranks)}")
    return " vs ".join(described)


def _by_value(values: Sequence) -> list[list[int]]:
    """The indices of equal values, grouped, in order of first appearance."""
    groups: dict = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    return list(groups.values())


def _ranks(ranks: Sequence[int]) -> str:
    """``"rank 3"``, ``"ranks 0, 2"``, ``"ranks 0-5, 7"``."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


def _run(args, group: WorkerGroup, problem: DistributedProblem, solver) -> None:
    """Solve, print the table on rank 0 and save there (atomically) if asked."""
    from .checkpoint import save_checkpoint
    from .solve import solve

    rank = group.rank

    def callback(progress):
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
        save_checkpoint(args.save, {"z": tuple(b.cpu() for b in sol.z),
                                    "counts": {k: v.cpu() for k, v in counts.items()},
                                    "iterations": sol.iterations.cpu(), "wall_time": wall, "rounds": rounds})


if __name__ == "__main__":
    # (run as a script, this file is `__main__`; use the package's module so that classes are the same)
    from saddle.distributed import main as _main

    sys.exit(_main())
