"""Counting what a solve launches: aten operations per iteration, a machine-independent cost.

Every aten operation is a kernel launch on a GPU and a dispatch of a few
microseconds on a CPU, so operations per iteration bound how fast small problems
and batches can run anywhere. `OperationCounter` is a ``TorchDispatchMode`` that
counts them; `operations_per_iteration` runs a whole `saddle.solve` under it
(checks, restarts and the driver included) and divides by the iterations,
with the products of bilinear couplings (`saddle.coupling.Bilinear`'s ``mv``
and ``rmv``: the operator's own work) counted apart::

    >>> from saddle import problems
    >>> from saddle.opcount import operations_per_iteration
    >>> count = operations_per_iteration(problems.get("matrix_game", n=50, batch_size=256), "r2hpdhg",
    ...                                  max_iters=640)
    >>> count.per_iteration  # besides the products  # doctest: +SKIP

A compiled step is one operation to the counter; count kernels inside compiled
code with ``torch.profiler`` instead.
"""

from __future__ import annotations

import collections
import contextlib
from typing import NamedTuple

from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["OperationCounter", "OperationCount", "operations_per_iteration"]


class OperationCounter(TorchDispatchMode):
    """Counts aten operations by name while active; `excluded` ones (inside `exclude`) go to ``excluded``."""

    def __init__(self):
        super().__init__()
        self.counts: collections.Counter = collections.Counter()
        self.excluded = 0
        self._excluding = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self._excluding:
            self.excluded += 1
        else:
            self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))

    @contextlib.contextmanager
    def exclude(self):
        """Operations run inside this context count in ``excluded``, not in ``counts``."""
        self._excluding += 1
        try:
            yield
        finally:
            self._excluding -= 1

    @property
    def total(self) -> int:
        """All operations counted (the excluded ones apart)."""
        return sum(self.counts.values())


class OperationCount(NamedTuple):
    """What `operations_per_iteration` measured.

    Attributes:
        per_iteration: aten operations per iteration besides the coupling's products.
        products_per_iteration: aten operations inside the products (``mv`` / ``rmv``) per iteration.
        iterations: the iterations of the solve (the most of any instance).
        counts: ``{operation name: count}`` over the whole solve, products excluded.
    """

    per_iteration: float
    products_per_iteration: float
    iterations: int
    counts: dict


@contextlib.contextmanager
def _products_excluded(counter: OperationCounter):
    """Route `Bilinear.mv` / `Bilinear.rmv` through ``counter.exclude()`` for the duration."""
    from .coupling import Bilinear

    originals = {name: getattr(Bilinear, name) for name in ("mv", "rmv")}

    def wrap(method):
        def counted(self, v):
            with counter.exclude():
                return method(self, v)
        return counted

    try:
        for name, method in originals.items():
            setattr(Bilinear, name, wrap(method))
        yield
    finally:
        for name, method in originals.items():
            setattr(Bilinear, name, method)


def operations_per_iteration(problem, solver, **options) -> OperationCount:
    """Run ``saddle.solve(problem, solver, **options)`` counting its aten operations.

    The count covers everything the solve dispatches after the solver is set up
    (the driver's checks, restarts, certificates), divided by the iterations;
    ``init``'s one-off work is included too, so pass ``max_iters`` large enough
    to amortize it (``tol=0.0`` by default, so the solve runs ``max_iters``).
    """
    from .solve import solve

    options.setdefault("tol", 0.0)
    counter = OperationCounter()
    with _products_excluded(counter), counter:
        solution = solve(problem, solver, **options)
    iterations = max(int(solution.iterations.max()), 1)
    return OperationCount(counter.total / iterations, counter.excluded / iterations, iterations,
                          dict(counter.counts))
