"""Instance selection: which rows of a batch ``select(index)`` keeps, and how one value is cut down.

Sets, terms, couplings, operators and problems all have ``select(index)``: the
same object for the selected instances only, a batch of their own. ``index`` is

- an int i: a batch of one, like ``x[i:i + 1]`` (negative i counts from the end);
- a slice: the instances ``x[index]``;
- a boolean mask of shape ``(B,)``;
- a 1-D integer tensor (or a list of ints) of distinct positions, in any order.

An empty selection is an error (a problem has at least one instance), and so
is a repeated position (a function evaluated on the full batch cannot hold two
copies of one instance).

`as_selection` checks an index once and turns it into a `Selection`; `take`
applies it to one parameter: a per-instance value (a tensor whose first
dimension is B) is indexed, a shared one (a float, a 0-d tensor, a tensor with
a leading 1) is returned as it is, not copied. Ints and slices select by basic
indexing (views, no copy). Values are never rounded: the selected instances'
parameters are exactly the batch's rows.

A function the library cannot see into (an operator or objective written as a
closure over ``(B, ...)`` data) cannot have its data selected: `select_function`
then evaluates it on the full batch with the selected rows in place
(`Embedded`), which is exact because instances do not interact, but costs a
whole batch's evaluation. A function that has its own ``select(index)`` is
selected by it instead.
"""

from __future__ import annotations

import copy
from numbers import Integral
from typing import Any, Callable, NamedTuple

import torch
from torch import Tensor

__all__ = ["Selection", "as_selection", "take", "replace", "select_function", "Embedded"]


class Selection(NamedTuple):
    """A checked instance selection (see the module docstring).

    Attributes:
        index: a ``slice`` (basic indexing) or a 1-D int64 tensor of positions.
        batch_size: B, the size of the batch it selects from (None where unknown).
        base: a point of the full batch whose rows functions that cannot be
            selected see outside the selection (`Embedded`); None: zeros.
    """

    index: slice | Tensor
    batch_size: int | None = None
    base: Any = None

    def positions(self, device=None) -> Tensor:
        """The selected positions as a 1-D int64 tensor (needs ``batch_size`` for slices)."""
        if isinstance(self.index, Tensor):
            return self.index if device is None else self.index.to(device)
        if self.batch_size is None:
            raise ValueError("this selection's batch size is unknown; select through the problem "
                             "(problem.select) or give as_selection(index, batch_size)")
        return torch.arange(self.batch_size, device=device)[self.index]

    def __str__(self) -> str:
        if isinstance(self.index, slice):
            s = self.index
            return f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}" + \
                ("" if s.step in (None, 1) else f":{s.step}")
        return str(self.index.tolist())


def as_selection(index, batch_size: int | None = None) -> Selection:
    """Check ``index`` (an int, a slice, a ``(B,)`` boolean mask or 1-D positions) against ``batch_size``.

    Raises ``TypeError`` for other kinds of index and ``ValueError`` for
    positions out of range or repeated, a mask of the wrong length or an empty selection.
    """
    if isinstance(index, Selection):
        if batch_size is not None and index.batch_size not in (None, batch_size):
            raise ValueError(f"index selects from a batch of {index.batch_size}, not {batch_size}")
        return index if index.batch_size is not None or batch_size is None else index._replace(batch_size=batch_size)
    if isinstance(index, (list, tuple)):
        index = torch.as_tensor(index, dtype=torch.int64) if len(index) else torch.zeros(0, dtype=torch.int64)
    if isinstance(index, Tensor) and index.dim() == 0 and not index.dtype.is_floating_point \
            and index.dtype != torch.bool:
        index = int(index)
    if isinstance(index, bool):
        raise TypeError("index must be an int, a slice, a boolean mask or a tensor of positions, got a bool")
    if isinstance(index, Integral):
        i = int(index)
        if batch_size is not None:
            if not -batch_size <= i < batch_size:
                raise ValueError(f"index {i} is out of range for a batch of {batch_size}")
            i %= batch_size
        return Selection(slice(i, i + 1 if i != -1 else None), batch_size)
    if isinstance(index, slice):
        if batch_size is not None:
            index = slice(*index.indices(batch_size))
            if len(range(index.start, index.stop, index.step)) == 0:
                raise ValueError(f"index {index} selects no instance; a problem has at least one")
        return Selection(index, batch_size)
    if not isinstance(index, Tensor):
        raise TypeError(f"index must be an int, a slice, a boolean mask or a tensor of positions, got "
                        f"{type(index).__name__}")
    if index.dim() != 1:
        raise ValueError(f"index must be 1-D (a (B,) mask or positions), got shape {tuple(index.shape)}")
    if index.dtype == torch.bool:
        if batch_size is not None and index.shape[0] != batch_size:
            raise ValueError(f"a boolean index must have shape (B,) = ({batch_size},), got {tuple(index.shape)}")
        index = index.nonzero().squeeze(-1)
    elif index.dtype.is_floating_point or index.dtype.is_complex:
        raise TypeError(f"index must hold integers or booleans, got {index.dtype}")
    index = index.to(torch.int64)
    if index.numel() == 0:
        raise ValueError("index selects no instance; a problem has at least one")
    if batch_size is not None:
        low, high = int(index.min()), int(index.max())
        if low < -batch_size or high >= batch_size:
            raise ValueError(f"index has positions in [{low}, {high}], out of range for a batch of {batch_size}")
        if low < 0:
            index = index.remainder(batch_size)
    if index.numel() > 1 and torch.unique(index).numel() != index.numel():
        raise ValueError(f"index repeats positions ({index.tolist()}); select each instance at most once")
    return Selection(index, batch_size)


def take(value, selection: Selection):
    """The selected rows of a per-instance ``value``; a shared value (float, 0-d, leading 1) as it is."""
    if not isinstance(value, Tensor) or value.dim() == 0 or value.shape[0] == 1:
        return value
    index = selection.index
    if isinstance(index, Tensor) and index.device != value.device:
        index = index.to(value.device)
    return value[index]


def replace(obj, **fields):
    """A shallow copy of ``obj`` with ``fields`` set: how objects select their data without re-validating it."""
    new = copy.copy(obj)
    vars(new).update(fields)
    return new


class Embedded:
    """A function of full-batch arguments restricted to selected instances.

    ``Embedded(fn, positions, batch_size, base)(*args)`` places each argument's
    rows (tensors or tuples of tensors with ``len(positions)`` rows) at
    ``positions`` of a full batch (``base``'s rows elsewhere, zeros where
    ``base`` is None), evaluates ``fn`` on it and returns the rows at
    ``positions`` of its result (a tensor or a tuple of tensors). Exact when
    instances do not interact; each call costs an evaluation on the whole batch.
    """

    def __init__(self, fn: Callable, positions: Tensor, batch_size: int, base: tuple | None = None):
        self.fn, self.positions, self.batch_size, self.base = fn, positions, batch_size, base

    def _fill(self, value, base):
        if isinstance(value, (tuple, list)):
            bases = base if base is not None else (None,) * len(value)
            return type(value)(self._fill(v, b) for v, b in zip(value, bases))
        if not isinstance(value, Tensor):
            return value
        if base is None:
            base = value.new_zeros((self.batch_size,) + tuple(value.shape[1:]))
        return base.index_copy(0, self.positions.to(value.device), value)

    def _rows(self, out):
        if isinstance(out, (tuple, list)):
            return type(out)(self._rows(o) for o in out)
        return out.index_select(0, self.positions.to(out.device))

    def __call__(self, *args):
        bases = self.base if self.base is not None else (None,) * len(args)
        return self._rows(self.fn(*(self._fill(a, b) for a, b in zip(args, bases))))

    def select(self, index) -> "Embedded":
        """The function of a sub-selection: positions composed, still one evaluation of the full batch."""
        sel = as_selection(index, len(self.positions))
        return Embedded(self.fn, take(self.positions, sel), self.batch_size, self.base)


def select_function(fn: Callable, selection: Selection, base: tuple | None = None) -> Callable:
    """``fn`` for the selected instances: ``fn.select(selection)`` if it has one, else `Embedded`.

    ``base``: one full-batch value per argument of ``fn`` (None: zeros).
    """
    if callable(getattr(fn, "select", None)):
        return fn.select(selection)
    if selection.batch_size is None:
        raise ValueError(f"{getattr(fn, '__name__', type(fn).__name__)} cannot select its data, so it is evaluated "
                         "on the full batch, whose size this selection does not know; select through the problem")
    return Embedded(fn, selection.positions(), selection.batch_size, base)


def check_selectable(obj, selection: Selection) -> None:
    """Raise ``TypeError`` if ``obj`` holds per-instance tensors (first dimension > 1) it cannot select.

    The default `select` of sets, terms and couplings returns the object itself,
    which is right only when all its parameters are shared.
    """
    for name, value in vars(obj).items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] > 1 and \
                selection.batch_size in (None, value.shape[0]):
            raise TypeError(f"{type(obj).__name__} holds the per-instance tensor {name.lstrip('_')} "
                            f"{tuple(value.shape)} but does not implement select(index); define it (see "
                            f"saddle.selection) to select its instances")
