"""Finite-sum operators with seeded minibatch oracles: the input of the stochastic solvers.

A finite-sum VI has ``F(z) = (1/n) sum_i F_i(z)``. A `StochasticOperator`
evaluates the full F (``__call__``, n component evaluations) and unbiased
minibatch estimates ``(1/m) sum_{j} F_{i_j}(z)`` for index tensors
``idx (B, m)`` (`sample`), one row of indices per instance.

Randomness is counter-based: `draw` maps ``(seed_b, key_b, j)`` through an
integer hash to an index, so a draw is a pure function of the instance's
seed and the solver's per-instance counter. A batched solve therefore equals
the loop of single-instance solves (with the same seeds), a frozen instance
draws nothing, and no generator state needs to live outside the solver's
state. The hash is not cryptographic; its 32-bit outputs are uniform enough
for sampling indices (``n < 2^24``).

**Accounting.** Stochastic solvers count their oracle calls in *per-sample
evaluations* (one ``F_i``): a minibatch of m costs m, a full pass costs n.
Deterministic solvers on the same problem count full passes (one call of F);
multiply by ``n`` to compare (`saddle.solvers.stochastic`).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from .operator import Operator
from .point import Point
from .selection import as_selection, select_function, take

__all__ = ["StochasticOperator", "draw", "uniform"]

_MASK = 0xFFFFFFFF


def _mix(x: Tensor) -> Tensor:
    """A 32-bit integer hash (xorshift-multiply rounds) on int64 tensors holding values < 2^32."""
    x = x & _MASK
    x = ((x ^ (x >> 16)) * 0x7FEB352D) & _MASK
    x = ((x ^ (x >> 15)) * 0x46C8A68B) & _MASK
    x = ((x ^ (x >> 16)) * 0x2C1B3C6D) & _MASK
    return x ^ (x >> 16)


def _bits(seed: Tensor, key: Tensor, m: int, stream: int) -> Tensor:
    """``(B, m)`` 32-bit hashes of ``(seed, key, stream, j)``, j < m."""
    j = torch.arange(m, device=seed.device, dtype=torch.int64)
    h = _mix(seed.unsqueeze(-1) * 0x9E3779B1 + stream * 0x85EBCA6B)
    h = _mix(h ^ (key.unsqueeze(-1) & _MASK))
    h = _mix(h ^ ((key.unsqueeze(-1) >> 32) & _MASK) * 0x27D4EB2F)
    return _mix(h + j * 0x165667B1)


def draw(seed: Tensor, key: Tensor, n: int, m: int, *, stream: int = 0) -> Tensor:
    """``m`` indices uniform in ``[0, n)`` per instance, shape ``(B, m)`` int64.

    Args:
        seed: ``(B,)`` int64, the instances' seeds.
        key: ``(B,)`` int64, a per-instance counter (the solver's step count).
        n: the number of components.
        m: the minibatch size.
        stream: a small integer separating independent draws at the same key.
    """
    return (_bits(seed, key, m, stream) * n) >> 32


def uniform(seed: Tensor, key: Tensor, *, stream: int = 0, dtype=torch.float64) -> Tensor:
    """One number uniform in ``[0, 1)`` per instance, shape ``(B,)`` (a coin for loopless methods)."""
    return _bits(seed, key, 1, stream).squeeze(-1).to(dtype) / 2.0**32


class StochasticOperator(Operator):
    """A finite sum ``F(z) = (1/n) sum_i F_i(z)`` with seeded minibatch estimates.

    Args:
        component: ``component(z, idx) -> point``: the minibatch mean
            ``(1/m) sum_j F_{idx[b, j]}(z)`` per instance b, for ``idx`` of
            shape ``(B, m)`` (int64, entries in ``[0, n)``, repeats allowed).
        n: the number of components.
        seed: an int (instance b gets ``seed + b``) or a ``(B,)`` int64 tensor of per-instance seeds.
        full: ``full(z) -> point``, the exact F (default: ``component`` on all indices).
        lipschitz: a Lipschitz constant of the full F, float or ``(B,)``, if known.
    """

    def __init__(self, component: Callable[[Point, Tensor], Point], n: int, seed: int | Tensor = 0, *,
                 full: Callable[[Point], Point] | None = None, lipschitz=None):
        super().__init__()
        if not callable(component):
            raise TypeError(f"component must be callable, got {type(component).__name__}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, Tensor)):
            raise TypeError(f"seed must be an int or a (B,) int64 tensor, got {type(seed).__name__}")
        if isinstance(seed, Tensor) and (seed.dim() != 1 or seed.dtype != torch.int64):
            raise ValueError(f"seed must be a (B,) int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
        if isinstance(seed, int) and seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        self.component, self.n, self._seed, self._full, self._lip = component, n, seed, full, lipschitz

    def seeds(self, batch_size: int, device) -> Tensor:
        """The per-instance seeds, ``(B,)`` int64 on ``device``."""
        if isinstance(self._seed, int):
            return torch.arange(batch_size, device=device, dtype=torch.int64) + self._seed
        if self._seed.shape[0] != batch_size:
            raise ValueError(f"seed has shape {tuple(self._seed.shape)}; expected ({batch_size},)")
        return self._seed.to(device)

    def __call__(self, z: Point) -> Point:
        if self._full is not None:
            return tuple(self._full(z))
        B = z[0].shape[0]
        idx = torch.arange(self.n, device=z[0].device).expand(B, self.n)
        return tuple(self.component(z, idx))

    @property
    def selectable(self) -> bool:
        return all(f is None or callable(getattr(f, "select", None)) for f in (self.component, self._full))

    def select(self, index) -> "StochasticOperator":
        """The operator of the selected instances (`saddle.selection`), with their seeds.

        The functions are selected by their own ``select``, or evaluated on the
        full batch with the selected rows in place (the selection's ``base``
        point, and sample 0, elsewhere); the seeds are the selected instances'
        (needs the selection's batch size for an int seed), so the selection
        draws the same samples as its instances do in the batch.
        """
        sel = as_selection(index)
        if sel.batch_size is None and isinstance(self._seed, int):
            raise ValueError("select the problem (problem.select), or give as_selection(index, batch_size): "
                             "the instances' seeds depend on the batch size")
        B = sel.batch_size if sel.batch_size is not None else self._seed.shape[0]
        seeds = take(self.seeds(B, "cpu" if isinstance(self._seed, int) else self._seed.device), sel)
        component = select_function(self.component, sel, base=(sel.base, None))
        full = None if self._full is None else select_function(self._full, sel, base=(sel.base,))
        return StochasticOperator(component, self.n, seeds, full=full, lipschitz=take(self._lip, sel))

    def sample(self, z: Point, idx: Tensor) -> Point:
        """The minibatch estimate ``(1/m) sum_j F_{idx[:, j]}(z)``; ``idx`` is ``(B, m)``."""
        return tuple(self.component(z, idx))

    def lipschitz(self) -> Tensor | None:
        if self._lip is None:
            return None
        return torch.as_tensor(self._lip, dtype=torch.float64)
