"""Batched operators F: Z -> R^n, the one interface every solver consumes.

A point ``z`` is a tuple of ``(B, n_i)`` blocks and ``F(z)`` is a tuple of the
same shapes. For a minimax problem ``min_x max_y f(x, y)`` the operator is
``F(x, y) = (grad_x f, -grad_y f)`` (`SaddleOperator`); for an affine VI it is
``F(z) = M z + q`` (`LinearOperator`).

Competitive methods (`saddle.CGD` and its relatives) also need the mixed
second derivatives of f, as products: `SaddleOperator.mixed_xy`,
`SaddleOperator.mixed_yx`, and `SaddleOperator.mixed_products`, which returns
the gradients at a point together with both products there (`MixedProducts`).

``select(index)`` gives the operator of the selected instances
(`saddle.selection`). Operators that hold their data (`LinearOperator`, the
operators of composite problems) index it: ``selectable`` is True and the
selection costs what its instances cost. An operator built on a function
(``Operator(fn)``, `SaddleOperator`) selects it by the function's own
``select`` if it has one; otherwise it cannot see the function's data and
evaluates it on the full batch with the selected rows in place
(`saddle.selection.Embedded`): exact, since instances do not interact, but as
costly as the whole batch (``selectable`` is False).
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .point import Point
from .selection import Embedded, as_selection, select_function, take

__all__ = ["Operator", "SaddleOperator", "LinearOperator", "MixedProducts"]


class Operator:
    """A batched operator ``F(z)``.

    Args:
        fn: a function mapping a point ``tuple[(B, n_i) tensors]`` to a tuple of
            the same shapes. Subclasses override `__call__` instead.

    ``jvp`` and ``vjp`` default to forward- and reverse-mode autodiff of
    ``__call__`` (`torch.func`).
    """

    def __init__(self, fn: Callable[[Point], Point] | None = None):
        if fn is not None and not callable(fn):
            raise TypeError(f"operator must be callable, got {type(fn).__name__}")
        self._fn = fn

    def __call__(self, z: Point) -> Point:
        if self._fn is None:
            raise NotImplementedError("Operator subclasses must implement __call__")
        out = self._fn(z)
        if isinstance(out, Tensor):
            out = (out,)
        return tuple(out)

    def jvp(self, z: Point, v: Point) -> Point:
        """The Jacobian-vector product ``J_F(z) v``."""
        return torch.func.jvp(self.__call__, (tuple(z),), (tuple(v),))[1]

    def vjp(self, z: Point, v: Point) -> Point:
        """The vector-Jacobian product ``J_F(z)^T v``."""
        _, pullback = torch.func.vjp(self.__call__, tuple(z))
        return pullback(tuple(v))[0]

    def lipschitz(self) -> Tensor | None:
        """A Lipschitz constant of F per instance, shape ``(B,)``, or None if unknown."""
        return None

    @property
    def selectable(self) -> bool:
        """Whether `select` indexes the operator's data (else it evaluates the full batch: see the module docstring)."""
        return self._fn is not None and callable(getattr(self._fn, "select", None))

    def select(self, index) -> "Operator":
        """The operator of the selected instances (``index``: see `saddle.selection`).

        Without data of its own to index, the operator (its function, or
        itself for a subclass) is evaluated on the full batch with the
        selected rows in place: the rows of the selection's ``base`` point
        elsewhere (zeros without one). Its Lipschitz constants are the
        selected rows of this operator's.
        """
        sel = as_selection(index)
        if self._fn is not None:
            fn = select_function(self._fn, sel, base=(sel.base,))
        else:  # a subclass: itself on the full batch (its own select, if any, overrides this one)
            fn = Embedded(self, sel.positions(), sel.batch_size, base=(sel.base,))
        return _SelectedOperator(fn, self, sel)


class _SelectedOperator(Operator):
    """``Operator(fn)`` for a selection of ``parent``, whose Lipschitz constants are the parent's rows."""

    def __init__(self, fn, parent: Operator, selection):
        super().__init__(fn)
        self._parent, self._selection = parent, selection

    def lipschitz(self) -> Tensor | None:
        L = self._parent.lipschitz()
        return None if L is None else take(L, self._selection)


class MixedProducts(NamedTuple):
    """The gradients of ``f`` at a point ``(x, y)`` and its mixed second derivatives there, as products.

    With ``D_xy = d^2 f / dx dy`` (per instance an ``n x m`` matrix) and
    ``D_yx = D_xy^T``:

    Attributes:
        grad_x: ``grad_x f(x, y)``, ``(B, n)``.
        grad_y: ``grad_y f(x, y)``, ``(B, m)`` (the gradient, not the operator's ``-grad_y f``).
        xy: ``v -> D_xy v``, ``(B, m) -> (B, n)``, instance by instance.
        yx: ``u -> D_yx u``, ``(B, n) -> (B, m)``, instance by instance.

    The products may be called any number of times; each call is one mixed
    Hessian-vector product (no Hessian is ever formed).
    """

    grad_x: Tensor
    grad_y: Tensor
    xy: Callable[[Tensor], Tensor]
    yx: Callable[[Tensor], Tensor]


def _check_vector(v, name: str, like: Tensor, space: str) -> None:
    if not isinstance(v, Tensor):
        raise TypeError(f"{name} must be a tensor in {space}-space, got {type(v).__name__}")
    if v.shape != like.shape:
        raise ValueError(f"{name} must have the shape of {space}, {tuple(like.shape)}, got {tuple(v.shape)}")


class SaddleOperator(Operator):
    """``F(x, y) = (grad_x f(x, y), -grad_y f(x, y))`` for ``min_x max_y f``.

    Args:
        f: ``f(x, y) -> (B,)``, the objective of each instance; ``x`` is
            ``(B, n)``, ``y`` is ``(B, m)``. Instances must not interact: the
            gradients are those of ``f(x, y).sum()``.

    Second-order access, for competitive methods: with the mixed second
    derivative ``D_xy f = d^2 f / dx dy`` (``n x m`` per instance) and
    ``D_yx f = (D_xy f)^T``, `mixed_xy` is ``v -> D_xy f v`` and `mixed_yx`
    is ``u -> D_yx f u``, batched (each instance with its own matrix), by
    automatic differentiation of the gradient (`torch.func`); no Hessian is
    formed. `mixed_products` computes the gradients once and returns both
    products at that point, for methods that need many products at one point
    (conjugate gradients).
    """

    def __init__(self, f: Callable[[Tensor, Tensor], Tensor]):
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        super().__init__()
        self.f = f
        self._grad = torch.func.grad(lambda x, y: self.f(x, y).sum(), argnums=(0, 1))

    def __call__(self, z: Point) -> Point:
        x, y = z
        gx, gy = self._grad(x, y)
        return gx, -gy

    @property
    def selectable(self) -> bool:
        return callable(getattr(self.f, "select", None))

    def select(self, index) -> "SaddleOperator":
        """The operator of ``f`` for the selected instances (`saddle.selection.select_function`)."""
        sel = as_selection(index)
        return SaddleOperator(select_function(self.f, sel, base=sel.base))

    def mixed_xy(self, z: Point, v: Tensor) -> Tensor:
        """``D_xy f(x, y) v``: ``v`` of shape ``(B, m)`` (y-space) to ``(B, n)`` (x-space).

        ``(D_xy f v)_i = sum_j d^2 f / dx_i dy_j v_j``, the derivative of
        ``grad_x f`` along ``(0, v)`` (forward-over-reverse differentiation).
        """
        x, y = z
        _check_vector(v, "v", y, "y")
        return torch.func.jvp(lambda y_: self._grad(x, y_)[0], (y,), (v,))[1]

    def mixed_yx(self, z: Point, u: Tensor) -> Tensor:
        """``D_yx f(x, y) u``: ``u`` of shape ``(B, n)`` (x-space) to ``(B, m)`` (y-space).

        ``(D_yx f u)_j = sum_i d^2 f / dy_j dx_i u_i``, the derivative of
        ``grad_y f`` along ``(u, 0)``.
        """
        x, y = z
        _check_vector(u, "u", x, "x")
        return torch.func.jvp(lambda x_: self._grad(x_, y)[1], (x,), (u,))[1]

    def mixed_products(self, z: Point, *, transformable: bool = False) -> MixedProducts:
        """The gradients at ``z = (x, y)`` and both mixed products there (`MixedProducts`).

        One evaluation of the gradient, kept with its graph; each product is
        then one reverse pass through it: ``D_xy v`` is the x-part of the
        pullback of ``(0, v)`` through ``(x, y) -> (grad_x f, grad_y f)``, and
        ``D_yx u`` the y-part of the pullback of ``(u, 0)``. Outside ``torch.func``
        transforms the graph is an ordinary ``torch.autograd`` one (``D_xy v =
        grad_x <grad_y f, v>``), which is 2.5 to 3 times faster per product on
        the GAN problems than ``torch.func.vjp`` of ``torch.func.grad``.

        Args:
            z: the point ``(x (B, n), y (B, m))``.
            transformable: use ``torch.func`` throughout, so that the call may
                sit inside ``torch.func`` transforms (``vmap``, ``grad``, ...).
                The default uses ``torch.autograd`` unless the point carries an
                autograd graph or inference mode is on; both give the same
                products, bit for bit.
        """
        x, y = z
        if not transformable and _plain_autograd_applies(x, y):
            return _autograd_products(self.f, x, y)
        (gx, gy), pullback = torch.func.vjp(self._grad, x, y)
        zero_x, zero_y = torch.zeros_like(gx), torch.zeros_like(gy)

        def xy(v: Tensor) -> Tensor:
            return pullback((zero_x, v))[0]

        def yx(u: Tensor) -> Tensor:
            return pullback((u, zero_y))[1]

        return MixedProducts(gx, gy, xy, yx)


def _plain_autograd_applies(x: Tensor, y: Tensor) -> bool:
    """Whether `SaddleOperator.mixed_products` may use ``torch.autograd`` instead of ``torch.func``.

    Both differentiate the same operations with the same formulas (the products agree bit for
    bit), but a product through ``torch.func.vjp`` of ``torch.func.grad`` pays the transforms'
    dispatch on every operation of the backward pass: on the vmapped GAN objectives of
    `problems.gan` it took 2.5 to 3 times as long (CPU, B = 1 and 64). Inference-mode tensors
    cannot enter an autograd graph, and points that are part of one need their gradients
    propagated, which the ``torch.func`` path does.
    """
    return not (torch.is_inference_mode_enabled() or x.requires_grad or y.requires_grad)


def _autograd_products(f: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor) -> MixedProducts:
    """`SaddleOperator.mixed_products` by ``torch.autograd``: one graph of the gradients, one backward per product."""
    with torch.enable_grad():
        xg, yg = x.detach().requires_grad_(), y.detach().requires_grad_()
        gx, gy = torch.autograd.grad(f(xg, yg).sum(), (xg, yg), create_graph=True, allow_unused=True)
    gx = torch.zeros_like(x) if gx is None else gx
    gy = torch.zeros_like(y) if gy is None else gy

    def pull(out: Tensor, wrt: Tensor, v: Tensor) -> Tensor:
        """``grad_wrt <out, v>``: zero where ``out`` does not depend on ``wrt``."""
        if not out.requires_grad:
            return torch.zeros_like(wrt)
        with torch.enable_grad():
            (prod,) = torch.autograd.grad(out, wrt, v, retain_graph=True, allow_unused=True)
        return torch.zeros_like(wrt) if prod is None else prod

    def xy(v: Tensor) -> Tensor:
        return pull(gy, xg, v)

    def yx(u: Tensor) -> Tensor:
        return pull(gx, yg, u)

    return MixedProducts(gx.detach(), gy.detach(), xy, yx)


def _batched_matvec(M: Tensor, v: Tensor) -> Tensor:
    """``M v`` for ``M`` of shape (B or 1, m, n) and ``v`` of shape (B, n)."""
    return torch.matmul(M, v.unsqueeze(-1)).squeeze(-1)


class LinearOperator(Operator):
    """The affine operator ``F(z)_i = sum_j M_ij z_j + q_i`` given by blocks.

    Args:
        blocks: a k x k nested sequence; ``blocks[i][j]`` is ``None`` (zero) or a
            ``(B, n_i, n_j)`` tensor (``(1, n_i, n_j)`` is shared by all instances).
        offset: ``None`` or a tuple of k ``(B, n_i)`` tensors q_i.

    F is monotone iff the symmetric part of M is positive semidefinite; its
    Lipschitz constant is the spectral norm of M (`lipschitz`).
    """

    def __init__(self, blocks: Sequence[Sequence[Tensor | None]], offset: Sequence[Tensor] | None = None):
        super().__init__()
        k = len(blocks)
        if k == 0 or any(len(row) != k for row in blocks):
            raise ValueError("blocks must be a square k x k nested sequence")
        for i, row in enumerate(blocks):
            for j, M in enumerate(row):
                if M is not None and (not isinstance(M, Tensor) or M.dim() != 3):
                    raise ValueError(f"blocks[{i}][{j}] must be None or a (B, n_i, n_j) tensor")
        if offset is not None and len(offset) != k:
            raise ValueError(f"offset must have {k} blocks, got {len(offset)}")
        self.blocks = tuple(tuple(row) for row in blocks)
        self.offset = None if offset is None else tuple(offset)
        self._lipschitz: Tensor | None = None

    selectable = True

    def select(self, index) -> "LinearOperator":
        """The blocks' and offsets' selected rows (shared ``(1, ...)`` blocks kept), ``|M|_2``'s if computed."""
        sel = as_selection(index)
        out = LinearOperator([[take(M, sel) for M in row] for row in self.blocks],
                             None if self.offset is None else [take(q, sel) for q in self.offset])
        out._lipschitz = take(self._lipschitz, sel)
        return out

    def __call__(self, z: Point) -> Point:
        out = []
        for i, row in enumerate(self.blocks):
            acc = None if self.offset is None else self.offset[i]
            for M, zj in zip(row, z):
                if M is not None:
                    term = _batched_matvec(M, zj)
                    acc = term if acc is None else acc + term
            out.append(acc if acc is not None else torch.zeros_like(z[i]))
        return tuple(out)

    def matvec(self, z: Point) -> Point:
        """``M z`` without the offset (the Jacobian-vector product)."""
        return LinearOperator(self.blocks)(z)

    def jvp(self, z: Point, v: Point) -> Point:
        return self.matvec(v)

    def dense(self) -> Tensor:
        """The assembled matrix M, shape ``(B, N, N)`` with ``N = sum n_i``."""
        sizes = self._block_sizes()
        B = max(M.shape[0] for row in self.blocks for M in row if M is not None)
        ref = next(M for row in self.blocks for M in row if M is not None)
        rows = []
        for i, row in enumerate(self.blocks):
            cols = []
            for j, M in enumerate(row):
                if M is None:
                    cols.append(ref.new_zeros(B, sizes[i], sizes[j]))
                else:
                    cols.append(M.expand(B, -1, -1))
            rows.append(torch.cat(cols, dim=-1))
        return torch.cat(rows, dim=-2)

    def _block_sizes(self) -> list[int]:
        k = len(self.blocks)
        sizes = [None] * k
        for i, row in enumerate(self.blocks):
            for j, M in enumerate(row):
                if M is not None:
                    sizes[i], sizes[j] = M.shape[-2], M.shape[-1]
        if any(s is None for s in sizes):
            raise ValueError("cannot infer block sizes: a block row and column are entirely None")
        return sizes

    def lipschitz(self) -> Tensor:
        """The spectral norm ``|M|_2`` per instance, shape ``(B,)`` (computed once, cached)."""
        if self._lipschitz is None:
            self._lipschitz = spectral_norm(self.dense())
        return self._lipschitz

    def strong_monotonicity(self) -> Tensor:
        """``lambda_min((M + M^T) / 2)`` per instance, shape ``(B,)``; > 0 iff strongly monotone."""
        M = self.dense()
        return torch.linalg.eigvalsh(0.5 * (M + M.mT))[..., 0]


def spectral_norm(M: Tensor, *, exact_below: int = 2048, iters: int = 200) -> Tensor:
    """The largest singular value of each matrix in ``M`` (B, m, n), shape ``(B,)``.

    Exact (singular values) when ``min(m, n) <= exact_below``; otherwise power
    iteration on ``M^T M`` with a 1% upward margin, since power iteration
    approaches the norm from below and step sizes need an upper bound.
    """
    if min(M.shape[-2:]) <= exact_below:
        return torch.linalg.matrix_norm(M, ord=2)
    g = torch.Generator(device=M.device).manual_seed(0)
    v = torch.randn(M.shape[0], M.shape[-1], 1, device=M.device, dtype=M.dtype, generator=g)
    for _ in range(iters):
        v = M.mT @ (M @ v)
        v = v / v.norm(dim=-2, keepdim=True)
    return (M @ v).norm(dim=(-2, -1)) * 1.01
