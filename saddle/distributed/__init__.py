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

The package has one module per part:

- `saddle.distributed.groups`: `WorkerGroup`, `SimulatedGroup`, `TorchDistributedGroup`, `make_group`;
- `saddle.distributed.problem`: `DistributedProblem`, `AffineWorkers`, `StructuredWorkers`, `flatten`, `unflatten`;
- `saddle.distributed.cli`: `main`, the ``python -m saddle.distributed`` entry point;
- `saddle.distributed.agreement`: how the ranks of a torchrun agree on their options or refuse together.
"""

from .agreement import SHARED_OPTIONS
from .cli import SOLVERS, main
from .groups import SimulatedGroup, TorchDistributedGroup, WorkerGroup, make_group
from .problem import AffineWorkers, DistributedProblem, StructuredWorkers, flatten, unflatten

__all__ = [
    "WorkerGroup", "SimulatedGroup", "TorchDistributedGroup", "DistributedProblem", "AffineWorkers",
    "StructuredWorkers", "flatten", "unflatten", "make_group", "main", "SOLVERS", "SHARED_OPTIONS",
]
