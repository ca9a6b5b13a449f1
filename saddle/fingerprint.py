"""Fingerprints: blake2b digests of the data of problems and settings, to bind a checkpoint to its solve.

A fingerprint is a dict ``{part: hex digest}``. `problem_fingerprint` has one
part per attribute of the problem (``z0``, ``domain``, ``K``, ``operator``,
...) beside its shapes and dtype; `settings_fingerprint` one per setting. Each
digest comes from a walk through the value that hashes

- every tensor's dtype, shape and raw bytes (sparse tensors: their index and
  value tensors), wherever it lives: equal data give equal digests on every
  device and for every thread count (no float sums);
- numbers exactly (``float.hex``), strings, enums, dtypes;
- tuples, lists, dicts and sets item by item, objects by their type and
  attributes, ``nn.Module``\\ s by their state dict;
- functions by their qualified names (code is not data) and their defaults.

What the walk cannot see into is *opaque*: a closure or a lambda that captured
variables, and a function that reads data (anything but modules, classes,
functions and constants) from its module's globals. Their data may change
without changing the digest; `problem_fingerprint` lists them, so that a
resume can say it checked the shapes only, and a problem can carry a
fingerprint of its own (``VIProblem(..., fingerprint="...")``), which is
hashed as one more part.

Caches are skipped: attributes a problem fills lazily (its reference, its
Lipschitz and strong-monotonicity constants, derived operators) would make a
problem that has been solved differ from a fresh copy of itself. So are
torch generators (random states are saved by the checkpoint itself) and
devices (a fingerprint names the data, not where they are).
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import hashlib
import types
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["problem_fingerprint", "settings_fingerprint", "solver_fingerprint", "digest", "differing_parts"]

DIGEST_SIZE = 16

#: Attributes filled lazily by problems, couplings, terms and operators, and running counters (a worker
#: group's traffic): not part of their data.
CACHES = frozenset({"_reference", "_lipschitz", "_mu", "_f_operator", "_phi", "_norm", "_cholesky",
                    "_largest_eigenvalue", "_transpose", "_traffic"})

_CONSTANTS = (type(None), bool, int, float, complex, str, bytes, enum.Enum)


def problem_fingerprint(problem) -> dict:
    """The fingerprint of a `VIProblem`: ``{"summary", "parts", "opaque"}``.

    ``summary`` holds the plain facts resumes compare first, with messages of
    their own (``type``, ``batch_size``, ``dims``, ``dtype``); ``parts`` maps
    every attribute of the problem that is not a cache to its digest;
    ``opaque`` lists the functions whose data the walk could not see (empty
    when the problem carries a fingerprint of its own).
    """
    walk = _Walk()
    parts = {name: walk.digest(value, name) for name, value in sorted(vars(problem).items())
             if name not in CACHES and name != "name"}  # (the name is a label)
    summary = {"type": _qualname(type(problem)), "batch_size": int(problem.batch_size),
               "dims": [int(n) for n in problem.dims], "dtype": str(problem.dtype)}
    given = getattr(problem, "fingerprint", None) is not None
    return {"summary": summary, "parts": parts, "opaque": [] if given else walk.opaque}


def solver_fingerprint(solver) -> dict[str, str]:
    """``{setting: digest}`` of a solver (a dataclass of settings), plus its type under ``"solver"``."""
    settings = {"solver": _qualname(type(solver))}
    if dataclasses.is_dataclass(solver):
        settings.update({f.name: getattr(solver, f.name) for f in dataclasses.fields(solver)})
    else:
        settings.update(vars(solver))
    return settings_fingerprint(settings)


def settings_fingerprint(settings: dict[str, Any]) -> dict[str, str]:
    """``{name: digest(value)}``."""
    return {name: digest(value) for name, value in settings.items()}


def digest(value: Any) -> str:
    """The hex blake2b digest of ``value``'s walk (see the module docstring)."""
    return _Walk().digest(value, "")


def differing_parts(saved: dict[str, str], current: dict[str, str]) -> list[str]:
    """The names whose digests differ, or that only one of two fingerprints has, sorted."""
    return sorted(name for name in saved.keys() | current.keys() if saved.get(name) != current.get(name))


class _Walk:
    """One walk: hashes values into blake2b objects, remembering the opaque functions it met."""

    def __init__(self):
        self.opaque: list[str] = []
        self._path: list[int] = []  # ids of the containers being walked (to cut cycles)
        self._tensors: dict[int, tuple[Tensor, bytes]] = {}  # digests computed (the tensor kept: ids stay unique)

    def digest(self, value: Any, path: str) -> str:
        h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        self._feed(h, value, path)
        return h.hexdigest()

    def _feed(self, h, obj: Any, path: str) -> None:
        if isinstance(obj, enum.Enum):
            _put(h, "enum", _qualname(type(obj)), obj.name)
        elif isinstance(obj, float):
            _put(h, "float", float(obj).hex())
        elif isinstance(obj, _CONSTANTS):
            _put(h, type(obj).__name__, repr(obj))
        elif isinstance(obj, (torch.dtype, torch.layout)):
            _put(h, "dtype", str(obj))
        elif isinstance(obj, (torch.device, torch.Generator)):
            _put(h, type(obj).__name__)
        elif isinstance(obj, Tensor):
            _put(h, "tensor")
            h.update(self._tensor_digest(obj))
        elif isinstance(obj, np.ndarray):
            _put(h, "ndarray", obj.dtype.str, str(obj.shape))
            h.update(memoryview(np.ascontiguousarray(obj)).cast("B"))
        elif isinstance(obj, (types.ModuleType, type)):
            _put(h, "name", getattr(obj, "__module__", ""), getattr(obj, "__qualname__", obj.__name__))
        elif id(obj) in self._path:
            _put(h, "cycle", str(len(self._path) - self._path.index(id(obj))))
        else:
            self._path.append(id(obj))
            try:
                self._feed_composite(h, obj, path)
            finally:
                self._path.pop()

    def _feed_composite(self, h, obj: Any, path: str) -> None:
        if isinstance(obj, (tuple, list)):
            _put(h, _qualname(type(obj)), str(len(obj)))
            for i, item in enumerate(obj):
                self._feed(h, item, f"{path}[{i}]")
        elif isinstance(obj, (dict, set, frozenset)):
            items = obj.items() if isinstance(obj, dict) else ((item, None) for item in obj)
            # Unordered: hash the sorted digests of the items.
            pairs = sorted((self.digest(k, path), self.digest(v, f"{path}[{k!r}]")) for k, v in items)
            _put(h, type(obj).__name__, *(k + v for k, v in pairs))
        elif isinstance(obj, nn.Module):
            _put(h, "module", _qualname(type(obj)))
            self._feed(h, dict(obj.state_dict()), path)
        elif isinstance(obj, types.FunctionType):
            self._feed_function(h, obj, path)
        elif isinstance(obj, types.MethodType):
            _put(h, "method", obj.__func__.__qualname__)
            self._feed(h, obj.__self__, path)
        elif isinstance(obj, types.BuiltinFunctionType):
            _put(h, "builtin", getattr(obj, "__module__", None) or "", obj.__qualname__)
            if not isinstance(obj.__self__, (types.ModuleType, type(None))):
                self._feed(h, obj.__self__, path)
        elif isinstance(obj, functools.partial):
            _put(h, "partial")
            self._feed(h, (obj.func, obj.args, obj.keywords), path)
        elif hasattr(obj, "__wrapped__"):  # functools.lru_cache, ...
            _put(h, "wrapped", _qualname(type(obj)))
            self._feed(h, obj.__wrapped__, path)
        else:
            self._feed_object(h, obj, path)

    def _feed_object(self, h, obj: Any, path: str) -> None:
        _put(h, "object", _qualname(type(obj)))
        attributes = dict(vars(obj)) if hasattr(obj, "__dict__") else {}
        for cls in type(obj).__mro__:
            for slot in getattr(cls, "__slots__", ()):
                if isinstance(slot, str) and slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    attributes[slot] = getattr(obj, slot)
        for name in sorted(attributes):
            if name not in CACHES:
                _put(h, "attribute", name)
                self._feed(h, attributes[name], f"{path}.{name}")

    def _feed_function(self, h, fn: types.FunctionType, path: str) -> None:
        _put(h, "function", fn.__module__ or "", fn.__qualname__)
        self._feed(h, (fn.__defaults__, fn.__kwdefaults__), path)
        cells = [_cell_contents(cell) for cell in fn.__closure__ or ()]
        # A closure's captured code, constants and references back to the objects being walked are
        # visible; captured data (tensors, containers, other objects) and data read from globals are not.
        if all(self._visible(value) for value in cells) and not any(
                _is_data(fn.__globals__[name]) for name in _global_names(fn.__code__) if name in fn.__globals__):
            for i, value in enumerate(cells):
                self._feed(h, value, f"{path}.<cell {i}>")
        else:
            self.opaque.append(f"{path} ({fn.__module__}.{fn.__qualname__})")

    def _visible(self, value: Any) -> bool:
        return not _is_data(value) or isinstance(value, types.MethodType) or id(value) in self._path

    def _tensor_digest(self, t: Tensor) -> bytes:
        key = id(t)
        if key not in self._tensors:
            h = hashlib.blake2b(digest_size=DIGEST_SIZE)
            _put(h, str(t.dtype), str(t.layout), str(tuple(t.shape)))
            for part in _dense_parts(t.detach()) if t.device.type != "meta" else ():
                if part.numel():
                    flat = part.resolve_conj().resolve_neg().cpu().reshape(-1)
                    # a fresh tensor: contiguous() keeps a stride of 0 on a size-1 dimension (a (1,) tensor
                    # expanded from a scalar, such as a batch of one's tolerance), which view() refuses
                    flat = torch.empty(flat.shape, dtype=flat.dtype).copy_(flat)
                    h.update(memoryview(flat.view(torch.uint8).numpy()))
            self._tensors[key] = (t, h.digest())
        return self._tensors[key][1]


def _put(h, *tokens: str) -> None:
    """Hash tokens unambiguously (each one length-prefixed)."""
    for token in tokens:
        data = token.encode("utf-8", "surrogatepass")
        h.update(len(data).to_bytes(8, "little"))
        h.update(data)


def _qualname(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _dense_parts(t: Tensor) -> tuple[Tensor, ...]:
    """The strided tensors that hold ``t``'s data: itself, or a sparse tensor's indices and values."""
    if t.layout == torch.strided:
        return (t,)
    if t.layout == torch.sparse_coo:
        t = t.coalesce()
        return t.indices(), t.values()
    if t.layout in (torch.sparse_csr, torch.sparse_bsr):
        return t.crow_indices(), t.col_indices(), t.values()
    if t.layout in (torch.sparse_csc, torch.sparse_bsc):
        return t.ccol_indices(), t.row_indices(), t.values()
    return (t.to_dense(),)


def _global_names(code: types.CodeType) -> set[str]:
    """The names a code object (and the code nested in it: lambdas, comprehensions) may read as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


def _cell_contents(cell) -> Any:
    try:
        return cell.cell_contents
    except ValueError:  # an empty cell
        return None


def _is_data(value: Any) -> bool:
    """Whether a global a function reads is data (what a fingerprint of the function cannot see)."""
    if isinstance(value, (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, _CONSTANTS,
                          functools.partial, np.ufunc, torch.dtype)):
        return False
    if isinstance(value, (tuple, frozenset)):
        return any(_is_data(v) for v in value)
    return True
