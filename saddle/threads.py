"""Intra-op threads for a solve: one thread where parallel regions cost more than they save.

A torch operation on the CPU splits its work over the intra-op threads when it has more than
about 32 768 elements, and every such parallel region waits for its slowest thread. On a busy
machine (two cores shared with other processes) a descheduled thread makes that wait a time
slice: on 64 games 50 x 50 each batched product took 1.4 ms with two threads and 47 us with one
(docs/benchmarks.md). Small operations gain little from a second thread even on an idle machine,
so a solve whose largest operation is below `PARALLEL_MIN` elements runs on one thread.
"""

from __future__ import annotations

import contextlib
from numbers import Integral
from typing import Iterator

import torch
from torch import Tensor

__all__ = ["PARALLEL_MIN", "operation_size", "solve_threads", "intra_op_threads"]

PARALLEL_MIN = 2**21  # elements: about 2 ms of float64 arithmetic on one core


def operation_size(problem) -> int:
    """Elements of a step's largest operation on ``problem``: a product with its coupling's
    ``(B, m, n)`` matrix (``B nnz`` when sparse), or an operation on its largest ``(B, n_i)`` block."""
    size = max(t.numel() for t in problem.z0)
    K = getattr(getattr(problem, "coupling", None), "K", None)
    if isinstance(K, Tensor):
        per_instance = K._nnz() if K.layout != torch.strided else K[0].numel()
        size = max(size, problem.batch_size * per_instance)
    return size


def solve_threads(threads, problem) -> int | None:
    """The intra-op threads a solve of ``problem`` runs on (``threads`` checked): ``threads`` if given;
    else one on the CPU for problems below `PARALLEL_MIN`, and torch's setting (None) otherwise."""
    if threads is not None:
        if isinstance(threads, bool) or not isinstance(threads, Integral) or threads < 1:
            raise ValueError(f"threads must be None (automatic) or a positive integer, got {threads!r}")
        return int(threads)
    if problem.device.type == "cpu" and operation_size(problem) < PARALLEL_MIN:
        return 1
    return None


@contextlib.contextmanager
def intra_op_threads(threads: int | None) -> Iterator[None]:
    """``torch.set_num_threads(threads)`` for the block, restored after it (None: unchanged)."""
    before = torch.get_num_threads()
    if threads is None or threads == before:
        yield
        return
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
