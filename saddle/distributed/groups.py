"""Worker groups: where the M workers of a distributed VI live and how their messages are reduced.

Every worker-indexed tensor has the layout ``(B, m, d)``: B instances, the m
workers *held by this process*, d coordinates. ``group.mean(x)`` and
``group.weighted_sum(x, weights)`` reduce over all M workers and return the
same ``(B, d)`` on every process; ``group.all_gather(payload)`` and
``group.via_server(payload, reply)`` move compressed payloads (uint8 bytes,
`saddle.compress.Compressor.encode`). Two interchangeable backends:

- `SimulatedGroup`: all M workers in one process on the extra dimension
  (``m = M``); reductions are sums over it.
- `TorchDistributedGroup`: one process (rank) per worker (``m = 1``);
  reductions are ``torch.distributed.all_reduce`` (collectives only).

**Traffic.** Every group counts, in `WorkerGroup.traffic`, the bytes its
workers hand to collectives (``sent``) and the bytes they get back from other
workers (``received``), summed over the workers it holds, in the model of a
worker talking to its peers or to a server:

- ``all_reduce`` (`mean`, `weighted_sum`, `all_sum`) of n bytes per worker:
  n sent (up), n received (down: the reduced vector);
- `all_gather` of n bytes per worker: n sent (up), ``(M - 1) n`` received
  (down: the other workers' payloads);
- `via_server`, n bytes up and an r-byte reply: n sent, r received.

A simulated group counts what its M workers would hand over, so both
backends report the same numbers (a simulated group's count is the sum of
the ranks' counts). An optional ``bandwidth`` (bytes per second per worker)
throttles a `TorchDistributedGroup`: after each collective the rank sleeps
until ``(sent + received) / bandwidth`` seconds have passed since it began, a
model of a link slower than loopback (``None``: no throttle).

`make_group` turns a backend name into a group.
"""

from __future__ import annotations

import datetime
import math
import os
import time
from dataclasses import dataclass

import torch
from torch import Tensor
from typing import Callable

__all__ = ["WorkerGroup", "SimulatedGroup", "TorchDistributedGroup", "Traffic", "make_group"]


@dataclass
class Traffic:
    """Bytes the workers of a group handed to collectives (``sent``) and got back from others (``received``).

    Counted per collective call over every instance of the batch and every worker held here;
    ``calls`` counts the collectives. See the module docstring for what each collective counts.
    """

    sent: int = 0
    received: int = 0
    calls: int = 0

    def add(self, sent: int, received: int) -> None:
        """Count one collective that handed over ``sent`` bytes and got ``received`` bytes back."""
        self.sent += int(sent)
        self.received += int(received)
        self.calls += 1


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

    @property
    def traffic(self) -> Traffic:
        """The bytes this process's workers handed to the solvers' collectives and got back (module docstring)."""
        if "_traffic" not in self.__dict__:  # created on first use, so a subclass need not call a constructor
            self._traffic = Traffic()
        return self._traffic

    def worker_index(self, device=None) -> Tensor:
        """``(m,)`` int64 tensor of the workers held here."""
        return torch.tensor(self.workers, dtype=torch.int64, device=device)

    def all_sum(self, local: Tensor) -> Tensor:
        """Sum a per-process partial result over all processes (identity when simulated)."""
        raise NotImplementedError

    def weighted_sum(self, x: Tensor, weights: Tensor) -> Tensor:
        """``sum_m weights[:, m] x[:, m]`` over all M workers (an all-reduce of ``(B, d)``).

        Args:
            x: ``(B, m, d)`` the messages of the workers held here.
            weights: ``(B, M)`` a weight per instance and worker (all M workers, on every process).

        Returns:
            ``(B, d)``, the same on every process.
        """
        local_w = weights[:, list(self.workers)].to(x.dtype).unsqueeze(-1)
        return self._reduce(x, (x * local_w).sum(1))

    def mean(self, x: Tensor) -> Tensor:
        """``(1/M) sum_m x[:, m]``: ``(B, m, d) -> (B, d)``, the same on every process (an all-reduce)."""
        return self._reduce(x, x.sum(1)) / self.size

    def _reduce(self, x: Tensor, partial: Tensor) -> Tensor:
        """`all_sum` of this process's partial sum, counting every held worker's ``(B, d)`` message."""
        nbytes = x.numel() * x.element_size()
        self.traffic.add(nbytes, nbytes)
        return self.all_sum(partial)

    def sum_count(self, local: Tensor) -> Tensor:
        """Sum an integer count (e.g. bits, ``(B,)`` int64) over all processes."""
        return self.all_sum(local)

    def all_gather(self, payload: Tensor) -> Tensor:
        """Every worker's payload: ``(B, m, n)`` uint8 here, ``(B, M, n)`` by worker index on every process."""
        raise NotImplementedError

    def via_server(self, payload: Tensor, reply: Callable[[Tensor], Tensor], reply_bytes: int) -> Tensor:
        """Send the payloads to a server and get its reply: ``(B, m, n) -> (B, r)`` uint8 on every process.

        ``reply`` maps all M workers' payloads ``(B, M, n)`` to the server's ``(B, reply_bytes)``;
        it runs once, on the server (rank 0 under `torch.distributed`, which gathers the
        payloads and broadcasts the reply).
        """
        raise NotImplementedError

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

    def all_gather(self, payload: Tensor) -> Tensor:
        n = payload[:, 0].numel()
        self.traffic.add(self.size * n, self.size * (self.size - 1) * n)
        return payload

    def via_server(self, payload: Tensor, reply: Callable[[Tensor], Tensor], reply_bytes: int) -> Tensor:
        out = reply(payload)
        self.traffic.add(payload.numel(), self.size * out.numel())
        return out

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
        bandwidth: throttle each rank to this many bytes per second (sent plus received,
            see the module docstring), or None (loopback speed).
    """

    def __init__(self, backend: str | None = None, timeout: float = 60.0, bandwidth: float | None = None):
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
        if bandwidth is not None and (isinstance(bandwidth, bool) or not isinstance(bandwidth, (int, float))
                                      or not 0 < bandwidth < math.inf):
            raise ValueError(f"bandwidth must be None or a positive finite number of bytes per second, "
                             f"got {bandwidth!r}")
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
        self.bandwidth = None if bandwidth is None else float(bandwidth)

    @property
    def rank(self) -> int:
        return self.workers[0]

    def _throttle(self, start: float, nbytes: int) -> None:
        """Sleep until ``nbytes / bandwidth`` seconds have passed since ``start`` (the bandwidth model)."""
        if self.bandwidth is not None:
            left = start + nbytes / self.bandwidth - time.perf_counter()
            if left > 0:
                time.sleep(left)

    def _reduce(self, x: Tensor, partial: Tensor) -> Tensor:
        start = time.perf_counter()
        out = super()._reduce(x, partial)
        nbytes = x[:, 0].numel() * x.element_size()
        self._throttle(start, 2 * nbytes)
        return out

    def all_sum(self, local: Tensor) -> Tensor:
        out = local.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out

    def all_gather(self, payload: Tensor) -> Tensor:
        start = time.perf_counter()
        local = payload[:, 0].contiguous()
        out = [torch.empty_like(local) for _ in range(self.size)]
        self._dist.all_gather(out, local)
        n = local.numel() * local.element_size()
        self.traffic.add(n, (self.size - 1) * n)
        self._throttle(start, self.size * n)
        return torch.stack(out, 1)

    def via_server(self, payload: Tensor, reply: Callable[[Tensor], Tensor], reply_bytes: int) -> Tensor:
        start = time.perf_counter()
        local = payload[:, 0].contiguous()
        if self.rank == 0:
            parts = [torch.empty_like(local) for _ in range(self.size)]
            self._dist.gather(local, parts, dst=0)
            out = reply(torch.stack(parts, 1)).contiguous()
        else:
            self._dist.gather(local, dst=0)
            out = torch.empty(local.shape[0], reply_bytes, dtype=torch.uint8, device=local.device)
        self._dist.broadcast(out, src=0)
        n = local.numel() * local.element_size()
        self.traffic.add(n, out.numel())
        self._throttle(start, n + out.numel())
        return out

    def gather_objects(self, local: Tensor) -> Tensor:
        """``(size, *local.shape)``: every process's ``local`` by rank (a plain all-gather, not counted as traffic)."""
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
    """A `WorkerGroup` from a group, None / ``"simulated"`` (``workers`` simulated workers), ``"gloo"`` or ``"nccl"``.

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
