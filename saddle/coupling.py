"""Couplings phi(x, y) of ``min_x max_y g(x) + phi(x, y) - h(y)``: bilinear, semi-linear, general.

A coupling gives, batched over B instances (x: ``(B, n)``, y: ``(B, m)``),
its value ``(B,)``, its partial gradients ``grad_x`` ``(B, n)`` and ``grad_y``
``(B, m)``, and Lipschitz constants of those gradients:

- ``L_xx``: of ``grad_x phi(., y)`` in x,
- ``L_xy``: of ``grad_x phi(x, .)`` in y and of ``grad_y phi(., y)`` in x,
- ``L_yy``: of ``grad_y phi(x, .)`` in y,

as ``(B,)`` tensors (or None when unknown).

- `Bilinear`: ``<K x, y>`` with K ``(B, m, n)``, dense or ``torch.sparse``
  (COO or CSR; batched sparse as a list of matrices is not supported: one
  matrix shared by the batch, or dense).
- `SemiLinear`: ``<G(x), y>`` with a smooth map ``G: (B, n) -> (B, m)``,
  linear in y (the coupling of constrained problems written with multipliers).
- `SmoothCoupling`: any differentiable ``phi(x, y) -> (B,)``.

``select(index)`` gives the coupling of the selected instances
(`saddle.selection`): K's rows (a shared K is kept), the Lipschitz constants'
rows; a function G or phi is selected by its own ``select`` if it has one, else
evaluated on the full batch with zeros in the other rows.
"""

from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor

from .operator import spectral_norm
from .selection import as_selection, check_selectable, replace, select_function, take

__all__ = ["Coupling", "Bilinear", "SemiLinear", "SmoothCoupling"]


def _per_instance(value, name: str):
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float64).detach().cpu()
    if t.dim() > 1 or not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be a finite float >= 0 or a (B,) tensor, got {value!r}")
    return t


class Coupling:
    """Base class of couplings (see the module docstring)."""

    #: Whether phi is linear in y (then grad_x phi(x, y) = J_G(x)^T y for some G).
    linear_in_y: bool = False

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        """``phi(x, y)`` per instance: ``(B, n), (B, m) -> (B,)``."""
        raise NotImplementedError

    def grad_x(self, x: Tensor, y: Tensor) -> Tensor:
        """``grad_x phi(x, y)``, shape ``(B, n)``."""
        raise NotImplementedError

    def grad_y(self, x: Tensor, y: Tensor) -> Tensor:
        """``grad_y phi(x, y)``, shape ``(B, m)``."""
        raise NotImplementedError

    def lipschitz(self) -> dict[str, Tensor | None]:
        """``{"xx": L_xx, "xy": L_xy, "yy": L_yy}``, each ``(B,)`` (float64, CPU) or None."""
        return {"xx": None, "xy": None, "yy": None}

    def select(self, index) -> "Coupling":
        """The coupling of the selected instances (``index``: see `saddle.selection`).

        The default returns the coupling itself, right when it holds no
        per-instance data; it raises ``TypeError`` for one holding per-instance
        tensors that does not implement `select`.
        """
        check_selectable(self, as_selection(index))
        return self


class Bilinear(Coupling):
    """``phi(x, y) = <K x, y>``, K of shape ``(B, m, n)`` or ``(1, m, n)``, dense or sparse.

    A sparse K (``torch.sparse_coo`` or ``torch.sparse_csr``) is given as a 2-D
    ``(m, n)`` matrix shared by every instance. Products are ``mv`` (``K x``)
    and ``rmv`` (``K^T y``); ``K^T`` is formed once for sparse matrices, and for dense ones
    that do not require grad (a K being learned in place is read afresh at every product).
    """

    linear_in_y = True

    def __init__(self, K: Tensor):
        if not isinstance(K, Tensor):
            raise TypeError(f"K must be a tensor, got {type(K).__name__}")
        self.sparse = K.layout != torch.strided
        if self.sparse:
            if K.dim() != 2:
                raise ValueError(f"a sparse K must be a 2-D (m, n) matrix shared by the batch, got shape "
                                 f"{tuple(K.shape)}")
            with warnings.catch_warnings():  # "sparse CSR support is in beta": we only multiply
                warnings.simplefilter("ignore", UserWarning)
                K = K.to_sparse_csr() if K.layout != torch.sparse_csr else K
                self._Kt = K.to_sparse_coo().t().coalesce().to_sparse_csr()
            if not torch.isfinite(K.values()).all():
                raise ValueError("K contains NaN or inf")
            self.shape = (1, K.shape[0], K.shape[1])
        else:
            if K.dim() != 3:
                raise ValueError(f"K must be a (B, m, n) tensor, got shape {tuple(K.shape)}")
            if not torch.isfinite(K).all():
                raise ValueError("K contains NaN or inf")
            self.shape = tuple(K.shape)
        self.K = K
        self._norm: Tensor | None = None
        self._transpose: Tensor | None = None  # K^T, contiguous, for `mv` as a row-vector product

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of K."""
        return self.K.dtype

    @property
    def device(self) -> torch.device:
        """The device of K."""
        return self.K.device

    def select(self, index) -> "Bilinear":
        """K's selected rows (a shared or sparse K is kept), with ``|K|_2``'s rows if already computed."""
        if self.sparse or self.shape[0] == 1:
            return self
        sel = as_selection(index)
        K = take(self.K, sel)
        return replace(self, K=K, shape=tuple(K.shape), _norm=take(self._norm, sel),
                       _transpose=take(self._transpose, sel))

    def mv(self, x: Tensor) -> Tensor:
        """``K x`` for x of shape ``(B, n)``: ``(B, m)``."""
        if self.sparse:
            return (self.K @ x.mT).mT
        # (no cached copy of a K that requires grad: the copy would hold a graph that the first
        # backward pass frees)
        if self._row_vector(x) and self.K.numel() <= self.TRANSPOSE_ENTRIES and not self.K.requires_grad:
            if self._transpose is None:
                self._transpose = self.K.mT.contiguous()
            return _row_times(x, self._transpose)
        if self._elementwise(x):
            return (self.K * x.unsqueeze(-2)).sum(-1)
        return torch.matmul(self.K, x.unsqueeze(-1)).squeeze(-1)

    def rmv(self, y: Tensor) -> Tensor:
        """``K^T y`` for y of shape ``(B, m)``: ``(B, n)``."""
        if self.sparse:
            return (self._Kt @ y.mT).mT
        if self._row_vector(y):
            return _row_times(y, self.K)
        if self._elementwise(y):
            return (self.K * y.unsqueeze(-1)).sum(-2)
        return torch.matmul(self.K.mT, y.unsqueeze(-1)).squeeze(-1)

    #: The most entries of one instance's K for which its products are a product and a sum of entries.
    ELEMENTWISE_ENTRIES = 1 << 16
    #: ... and the most entries of the temporary that takes (the products of the whole batch).
    ELEMENTWISE_TEMPORARY = 1 << 24

    #: The fewest entries of one instance's K for which products are row vectors times a matrix.
    ROW_VECTOR_ENTRIES = 256
    #: The most entries of K (the whole batch) for which `mv` keeps a transposed copy of K.
    TRANSPOSE_ENTRIES = 1 << 24

    def _row_vector(self, v: Tensor) -> bool:
        """Whether the products with a dense K are best row vectors times K (``y^T K``) or K^T.

        On a CPU, ``(B, 1, m) @ (B, m, n)`` runs 1.3-1.8x faster than the product and sum of
        entries and 2-5x faster than ``K @ x`` as a batch of matrix-vector products, from 64 games
        of 20 x 20 to one of 2000 x 2000 (docs/benchmarks.md); each row of the result is the same
        bits whatever the batch. For tiny matrices (10 x 10) the others win. ``K x`` takes a
        contiguous copy of K^T (made once): above `TRANSPOSE_ENTRIES` it keeps ``matmul``.
        """
        _, m, n = self.K.shape
        return v.device.type == "cpu" and m * n >= self.ROW_VECTOR_ENTRIES

    def _elementwise(self, v: Tensor) -> bool:
        """Whether the products with a dense K are best a product and a sum over K's entries.

        On a CPU a batch of small matrix-vector products through ``bmm`` costs 2.5-3.7x that (64 to
        256 games of 50 x 50, 8 of 200 x 200; one 200 x 200 costs about the same either way), and
        each row of the result is the same bits whatever the batch, so a batch still equals the
        loop of its single solves. For large matrices ``gemv`` wins and the temporary (K's size
        times the batch for a shared K) would be large: those stay with ``matmul``.
        """
        _, m, n = self.K.shape
        return (v.device.type == "cpu" and m * n <= self.ELEMENTWISE_ENTRIES
                and max(self.K.shape[0], v.shape[0]) * m * n <= self.ELEMENTWISE_TEMPORARY)

    def dense(self) -> Tensor:
        """K as a dense ``(B or 1, m, n)`` tensor."""
        return self.K.to_dense().unsqueeze(0) if self.sparse else self.K

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.mv(x) * y).sum(-1)

    def abs_reduce(self, row_scale: Tensor, col_scale: Tensor, op: str) -> tuple[Tensor, Tensor]:
        """Row and column reductions of ``|diag(row_scale) K diag(col_scale)|``.

        Args:
            row_scale: ``(Bk, m)`` (Bk = K's batch dimension, 1 for shared or sparse K).
            col_scale: ``(Bk, n)``.
            op: ``"max"`` or ``"sum"``.

        Returns:
            ``(rows (Bk, m), cols (Bk, n))``: the reduction of every row and every column.
            Used by diagonal preconditioners (Ruiz, Pock-Chambolle).
        """
        if self.sparse:
            coo = self.K.to_sparse_coo().coalesce()
            i, j = coo.indices()
            v = coo.values().abs() * row_scale[0, i] * col_scale[0, j]
            reduce = "amax" if op == "max" else "sum"
            rows = torch.zeros(self.shape[1], dtype=v.dtype, device=v.device).scatter_reduce(
                0, i, v, reduce, include_self=True)
            cols = torch.zeros(self.shape[2], dtype=v.dtype, device=v.device).scatter_reduce(
                0, j, v, reduce, include_self=True)
            return rows.unsqueeze(0), cols.unsqueeze(0)
        A = self.K.abs() * row_scale.unsqueeze(-1) * col_scale.unsqueeze(-2)
        if op == "max":
            return A.amax(-1), A.amax(-2)
        return A.sum(-1), A.sum(-2)

    def grad_x(self, x: Tensor, y: Tensor) -> Tensor:
        return self.rmv(y)

    def grad_y(self, x: Tensor, y: Tensor) -> Tensor:
        return self.mv(x)

    def norm(self) -> Tensor:
        """``|K|_2`` per instance, ``(B,)`` (or ``(1,)`` when shared); computed once."""
        if self._norm is None:
            if self.sparse:
                self._norm = _sparse_norm(self)
            else:
                self._norm = spectral_norm(self.K)
        return self._norm

    def lipschitz(self):
        L = self.norm().detach().to("cpu", torch.float64)
        return {"xx": torch.zeros_like(L), "xy": L, "yy": torch.zeros_like(L)}


def _take_constants(L: dict, selection) -> dict:
    """The selected rows of a ``{"xx", "xy", "yy"}`` dict of Lipschitz constants (None kept)."""
    return {k: take(v, selection) for k, v in L.items()}


def _row_times(v: Tensor, M: Tensor) -> Tensor:
    """``v^T M`` per instance: ``(B, k)`` rows times ``(B or 1, k, l)`` matrices, ``(B, l)`` (and any
    leading dimensions of v broadcast, through ``matmul``).

    ``bmm`` itself (with a shared M expanded, a view): three operations, where ``matmul`` adds
    five views and reshapes around the same ``bmm`` (the same bits).
    """
    if v.dim() != 2:
        return torch.matmul(v.unsqueeze(-2), M).squeeze(-2)
    rows, B = v.unsqueeze(1), max(v.shape[0], M.shape[0])
    if rows.shape[0] != M.shape[0]:
        rows, M = rows.expand(B, -1, -1), M.expand(B, -1, -1)
    return torch.bmm(rows, M).squeeze(1)


def _sparse_norm(coupling: Bilinear, iters: int = 300) -> Tensor:
    """Power iteration on ``K^T K`` for a sparse K, with a 1% upward margin: ``(1,)``."""
    g = torch.Generator(device=coupling.device).manual_seed(0)
    v = torch.randn(1, coupling.shape[2], generator=g, device=coupling.device, dtype=coupling.dtype)
    for _ in range(iters):
        v = coupling.rmv(coupling.mv(v))
        v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
    return coupling.mv(v).norm(dim=-1) * 1.01


class SemiLinear(Coupling):
    """``phi(x, y) = <G(x), y>``: linear in y, with a smooth map ``G: (B, n) -> (B, m)``.

    Args:
        G: the map (instances must not interact).
        lipschitz_xx: a Lipschitz constant of ``grad_x phi(., y)`` (it grows with |y|;
            give the constant valid on the y-set), float or ``(B,)``.
        lipschitz_xy: a bound on the Jacobian norm of G (float or ``(B,)``).

    ``grad_x`` is the vector-Jacobian product ``J_G(x)^T y``, ``grad_y`` is ``G(x)``.
    """

    linear_in_y = True

    def __init__(self, G: Callable[[Tensor], Tensor], *, lipschitz_xx=None, lipschitz_xy=None):
        if not callable(G):
            raise TypeError(f"G must be callable, got {type(G).__name__}")
        self.G = G
        self._L = {"xx": _per_instance(lipschitz_xx, "lipschitz_xx"), "xy": _per_instance(lipschitz_xy, "lipschitz_xy"),
                   "yy": None}

    def select(self, index) -> "SemiLinear":
        sel = as_selection(index)
        return replace(self, G=select_function(self.G, sel._replace(base=None)), _L=_take_constants(self._L, sel))

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return (self.G(x) * y).sum(-1)

    def grad_x(self, x: Tensor, y: Tensor) -> Tensor:
        _, pullback = torch.func.vjp(self.G, x)
        return pullback(y)[0]

    def grad_y(self, x: Tensor, y: Tensor) -> Tensor:
        return self.G(x)

    def lipschitz(self):
        L = dict(self._L)
        if L["xy"] is not None:
            L["yy"] = torch.zeros_like(L["xy"])
        return L


class SmoothCoupling(Coupling):
    """A general differentiable coupling ``phi(x, y) -> (B,)``; gradients by autograd.

    Args:
        phi: the coupling (instances must not interact).
        lipschitz_xx: a Lipschitz constant of ``grad_x phi(., y)`` (float or ``(B,)``), if known.
        lipschitz_xy: a Lipschitz constant of ``grad_x phi(x, .)`` and ``grad_y phi(., y)``, if known.
        lipschitz_yy: a Lipschitz constant of ``grad_y phi(x, .)``, if known.
    """

    def __init__(self, phi: Callable[[Tensor, Tensor], Tensor], *, lipschitz_xx=None, lipschitz_xy=None,
                 lipschitz_yy=None):
        if not callable(phi):
            raise TypeError(f"phi must be callable, got {type(phi).__name__}")
        self.phi = phi
        self._grad = torch.func.grad(lambda x, y: self.phi(x, y).sum(), argnums=(0, 1))
        self._gx = torch.func.grad(lambda x, y: self.phi(x, y).sum(), argnums=0)
        self._gy = torch.func.grad(lambda x, y: self.phi(x, y).sum(), argnums=1)
        self._L = {"xx": _per_instance(lipschitz_xx, "lipschitz_xx"), "xy": _per_instance(lipschitz_xy, "lipschitz_xy"),
                   "yy": _per_instance(lipschitz_yy, "lipschitz_yy")}

    def select(self, index) -> "SmoothCoupling":
        sel = as_selection(index)
        L = _take_constants(self._L, sel)
        return SmoothCoupling(select_function(self.phi, sel._replace(base=None)), lipschitz_xx=L["xx"],
                              lipschitz_xy=L["xy"], lipschitz_yy=L["yy"])

    def value(self, x: Tensor, y: Tensor) -> Tensor:
        return self.phi(x, y)

    def grad_x(self, x: Tensor, y: Tensor) -> Tensor:
        return self._gx(x, y)

    def grad_y(self, x: Tensor, y: Tensor) -> Tensor:
        return self._gy(x, y)

    def grads(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """Both partial gradients in one backward pass."""
        return self._grad(x, y)

    def lipschitz(self):
        return dict(self._L)
