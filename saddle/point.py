"""Points: tuples of ``(B, n_i)`` blocks, and the few operations solvers need on them.

A point of a k-player problem is ``tuple[Tensor, ...]`` with one block per
player; block i has shape ``(B, n_i)`` (B instances). Per-instance scalars are
``(B,)`` tensors and broadcast over the coordinates of every block.
"""

from __future__ import annotations

from numbers import Real
from typing import Any, Tuple

import torch
from torch import Tensor

from .tree import map_tensors

Point = Tuple[Tensor, ...]

__all__ = ["Point", "as_point", "axpy", "lerp", "sub", "dot", "norm", "all_finite", "where", "column",
           "accumulation_dtype", "detached", "to_dtype"]


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype reductions of ``dtype`` tensors accumulate in: at least float32.

    float16 and bfloat16 sums of squares underflow (``(1e-4)^2`` is below
    float16's smallest subnormal) and lose digits; float32 and float64 are kept.
    """
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def column(s, like: Tensor):
    """A float or ``(B,)`` tensor, shaped to broadcast against a ``(B, n)`` block."""
    if isinstance(s, Tensor) and s.dim() == 1:
        return s.unsqueeze(-1)
    return s


def descend(u: Tensor, grad: Tensor, step) -> Tensor:
    """``u - step * grad`` in one operation; ``step`` is a float, a ``(B,)`` tensor (made a column) or a
    tensor broadcasting against ``u`` (a ``(B, 1)`` column, a diagonal ``(B, n)``)."""
    if isinstance(step, Tensor):
        return torch.addcmul(u, column(step, u), grad, value=-1)
    return torch.add(u, grad, alpha=-step)


def axpy(a, x: Point, y: Point) -> Point:
    """``y + a * x`` blockwise, one operation per block; ``a`` is a float or a ``(B,)`` tensor."""
    if isinstance(a, Tensor):
        return tuple(torch.addcmul(yi, column(a, yi), xi) for xi, yi in zip(x, y))
    return tuple(torch.add(yi, xi, alpha=a) for xi, yi in zip(x, y))


def lerp(x: Point, y: Point, t) -> Point:
    """``x + t * (y - x)`` blockwise, one ``torch.lerp`` per block; ``t`` is a float or a ``(B,)`` tensor."""
    return tuple(torch.lerp(xi, yi, column(t, xi)) for xi, yi in zip(x, y))


def sub(x: Point, y: Point) -> Point:
    """Blockwise difference ``x - y`` of two points with the same ``(B, n_i)`` blocks."""
    return tuple(xi - yi for xi, yi in zip(x, y))


def dot(x: Point, y: Point, dtype: torch.dtype | None = None) -> Tensor:
    """Per-instance inner product summed over blocks, shape ``(B,)``.

    Accumulated in at least float32 (`accumulation_dtype`); returned in ``dtype``
    (default: the blocks' dtype).
    """
    acc = accumulation_dtype(x[0].dtype)
    if acc == x[0].dtype:
        out = sum((xi * yi).sum(-1) for xi, yi in zip(x, y))
    else:
        out = sum((xi.to(acc) * yi.to(acc)).sum(-1) for xi, yi in zip(x, y))
    return _as_dtype(out, dtype or x[0].dtype)


def _as_dtype(t: Tensor, dtype: torch.dtype) -> Tensor:
    return t if t.dtype == dtype else t.to(dtype)


def norm(x: Point, dtype: torch.dtype | None = None) -> Tensor:
    """Per-instance Euclidean norm over all blocks, shape ``(B,)``.

    The squares are summed in at least float32 (`accumulation_dtype`), so small
    float16 norms do not underflow to 0; returned in ``dtype`` (default: the
    blocks' dtype).
    """
    acc = accumulation_dtype(x[0].dtype)
    if acc == x[0].dtype:
        out = torch.sqrt(sum(xi.square().sum(-1) for xi in x))
    else:
        out = torch.sqrt(sum(xi.to(acc).square().sum(-1) for xi in x))
    return _as_dtype(out, dtype or x[0].dtype)


def all_finite(x: Point) -> Tensor:
    """Per-instance: every coordinate of every block finite, shape ``(B,)``."""
    out = None
    for xi in x:
        f = torch.isfinite(xi).flatten(1).all(-1)
        out = f if out is None else out & f
    return out


def where(mask: Tensor, new: Any, old: Any) -> Any:
    """Select ``new`` where ``mask`` (B,) is true and ``old`` elsewhere, through tuples.

    Works on tensors whose first dimension is the batch, on (named) tuples of
    them and on ``None``; this is how the driver freezes finished instances.
    Numbers and strings are shared by the whole batch: ``new``'s are returned.
    """
    if new is None:
        return None
    if new is old:  # unchanged (e.g. constant state fields): nothing to select
        return new
    if isinstance(new, Tensor):
        m = mask.reshape((-1,) + (1,) * (new.dim() - 1))
        return torch.where(m, new, old)
    if isinstance(new, tuple):
        items = [where(mask, n, o) for n, o in zip(new, old)]
        return type(new)(*items) if hasattr(new, "_fields") else tuple(items)
    if isinstance(new, (Real, str)):
        return new
    raise TypeError(f"cannot select through a value of type {type(new).__name__}")


def take_rows(tree: Any, index: Tensor, batch: int) -> Any:
    """The rows ``index`` of every tensor of ``tree`` whose first dimension is the batch ``batch``.

    Tensors of another first dimension (data shared by the batch, such as a ``(1, n)`` scaling) and
    non-tensors are kept: what a solver state holds per instance has the batch first.
    """
    return map_tensors(tree, lambda t: t.index_select(0, index) if t.dim() and t.shape[0] == batch else t)


def put_rows(full: Any, index: Tensor, part: Any, batch: int) -> Any:
    """``full`` (a tree of a batch of ``batch``) with its rows ``index`` replaced by ``part``'s (the inverse
    of `take_rows`); shared tensors and non-tensors are ``part``'s."""
    if isinstance(full, Tensor):
        if full.dim() and full.shape[0] == batch and part.shape[0] == index.shape[0]:
            return full.index_copy(0, index, part)
        return part
    if isinstance(full, tuple):
        items = [put_rows(f, index, p, batch) for f, p in zip(full, part)]
        return type(full)(*items) if hasattr(full, "_fields") else tuple(items)
    return part


def detached(tree: Any) -> Any:
    """``tree`` (a tensor, or (named) tuples of them, numbers, None) with every tensor detached from autograd."""
    if isinstance(tree, Tensor):
        return tree.detach()
    if isinstance(tree, tuple):
        items = [detached(t) for t in tree]
        return type(tree)(*items) if hasattr(tree, "_fields") else tuple(items)
    return tree


def to_dtype(tree: Any, dtype: torch.dtype) -> Any:
    """``tree`` (tensors in (named) tuples, lists, dicts or objects, as `saddle.tree.map_tensors` walks them) with
    its floating-point tensors converted to ``dtype``; integer and bool tensors (counts, statuses, masks) and
    non-tensors are kept. E.g. a float32 solver state made float64, to continue a solve in float64."""
    return map_tensors(tree, lambda t: t.to(dtype) if t.is_floating_point() else t)


def as_point(z, name: str = "z0") -> Point:
    """Validate a point given by the user and return it as a tuple of ``(B, n_i)`` tensors.

    Raises ``TypeError`` / ``ValueError`` naming ``name`` when blocks are not
    floating tensors, not 2-D, disagree on B, device or dtype, or are not finite.
    """
    if isinstance(z, Tensor):
        z = (z,)
    if not isinstance(z, (tuple, list)) or len(z) == 0:
        raise TypeError(f"{name} must be a tuple of (B, n_i) tensors, got {type(z).__name__}")
    blocks = []
    for i, b in enumerate(z):
        if not isinstance(b, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(b).__name__}")
        if not b.is_floating_point():
            raise TypeError(f"{name}[{i}] must have a floating dtype, got {b.dtype}")
        if b.dim() != 2:
            raise ValueError(
                f"{name}[{i}] must have shape (B, n), got {tuple(b.shape)}; "
                "for a single instance add a batch dimension, e.g. x[None]"
            )
        blocks.append(b)
    B, dev, dt = blocks[0].shape[0], blocks[0].device, blocks[0].dtype
    for i, b in enumerate(blocks):
        if b.shape[0] != B:
            raise ValueError(f"{name}[{i}] has batch size {b.shape[0]}, but {name}[0] has {B}")
        if b.device != dev or b.dtype != dt:
            raise ValueError(f"{name}[{i}] is {b.dtype} on {b.device}, but {name}[0] is {dt} on {dev}")
    if B == 0:
        raise ValueError(f"{name} has batch size 0")
    for i, b in enumerate(blocks):
        if not torch.isfinite(b).all():
            raise ValueError(f"{name}[{i}] contains NaN or inf")
    return tuple(blocks)
