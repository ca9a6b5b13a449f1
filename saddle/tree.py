"""`map_tensors`: a copy of an object with a function applied to every tensor it holds.

Problems, sets, terms, couplings and operators keep their data as tensor
attributes (or in tuples, lists and dicts of them, or in an ``nn.Module``).
`map_tensors` walks that structure and rebuilds it around new tensors, which
is how `saddle.VIProblem.to` makes a float64 copy of a problem for the
driver's re-check of low-precision results.

Closures are rebuilt around their mapped cells, so the tensors (and modules,
and objects) a function captured are mapped too. What it cannot see into is
shared, not copied: a function's globals (a module-level tensor keeps its
dtype), builtins, classes, modules, and objects without a ``__dict__`` (torch
generators, process groups, ...).
"""

from __future__ import annotations

import copy
import types
from enum import Enum
from typing import Any, Callable

import torch
from torch import Tensor, nn

__all__ = ["map_tensors"]

_LEAVES = (str, bytes, int, float, complex, bool, type(None), Enum, torch.dtype, torch.device, torch.Generator, type,
           types.BuiltinFunctionType, types.ModuleType)


def map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` rebuilt with ``fn(t)`` in place of every tensor ``t`` it holds.

    Objects with a ``__dict__`` are shallow-copied with their attributes mapped;
    sharing inside ``obj`` is kept (two attributes naming one object name one
    copy), methods bound to a copied object are bound to its copy, and a
    closure whose captured values change is rebuilt around the new values.
    ``nn.Module``\\ s are deep-copied and mapped with ``Module._apply``.
    The input is never modified.
    """
    return _map(obj, fn, {})


def _map(obj: Any, fn: Callable[[Tensor], Tensor], memo: dict[int, Any]) -> Any:
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, Tensor):
        out = fn(obj)
    elif isinstance(obj, _LEAVES):
        return obj
    elif isinstance(obj, nn.Module):
        out = copy.deepcopy(obj)._apply(fn)
    elif isinstance(obj, types.FunctionType):
        memo[key] = obj  # a function that captures itself keeps the original
        out = _map_closure(obj, fn, memo)
    elif isinstance(obj, types.MethodType):
        owner = _map(obj.__self__, fn, memo)
        out = obj if owner is obj.__self__ else types.MethodType(obj.__func__, owner)
    elif isinstance(obj, tuple):
        items = [_map(item, fn, memo) for item in obj]
        out = type(obj)(*items) if hasattr(obj, "_fields") else type(obj)(items)
    elif isinstance(obj, list):
        out = [_map(item, fn, memo) for item in obj]
    elif isinstance(obj, dict):
        out = {k: _map(v, fn, memo) for k, v in obj.items()}
    elif hasattr(obj, "__dict__"):
        out = copy.copy(obj)
        memo[key] = out  # before the attributes: they may refer back to obj
        vars(out).update({name: _map(value, fn, memo) for name, value in vars(obj).items()})
        return out
    else:
        return obj
    memo[key] = out
    return out


def _map_closure(f: types.FunctionType, fn: Callable[[Tensor], Tensor], memo: dict[int, Any]) -> types.FunctionType:
    """``f`` itself if none of the values it captured changes, else a copy of ``f`` closing over the mapped values."""
    cells = f.__closure__ or ()
    values = [_map(cell.cell_contents, fn, memo) if _filled(cell) else cell for cell in cells]
    if all(v is c or (_filled(c) and v is c.cell_contents) for v, c in zip(values, cells)):
        return f
    closure = tuple(v if isinstance(v, types.CellType) and not _filled(v) else types.CellType(v) for v in values)
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__, f.__defaults__, closure)
    g.__kwdefaults__, g.__qualname__, g.__doc__ = f.__kwdefaults__, f.__qualname__, f.__doc__
    g.__dict__.update(f.__dict__)
    return g


def _filled(cell: types.CellType) -> bool:
    try:
        cell.cell_contents
    except ValueError:  # a cell whose variable is not assigned yet
        return False
    return True
