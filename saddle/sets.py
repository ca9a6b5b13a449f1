"""Convex sets with batched projections, Bregman prox steps and linear minimization oracles.

Every method works on one block of a point: a tensor ``u`` of shape ``(B, n)``,
B independent instances with n coordinates each. Set parameters (bounds, radii)
may be Python floats (shared by all instances), ``(B,)`` tensors (one value per
instance) or, for `Box`, ``(B, n)`` / ``(1, n)`` tensors (one value per
coordinate). A point of a k-player problem lives in a `Product` of k sets.

The operations, for a set C:

- ``project(u)``: the Euclidean projection ``argmin_{v in C} |v - u|``.
- ``prox_step(z, g, step)``: the Bregman prox step
  ``argmin_{u in C} step * <g, u> + D(u, z)``, with D the set's Bregman
  divergence (``1/2 |u - z|^2`` for Euclidean geometry, KL for the entropic
  simplex).
- ``lmo(g)``: a linear minimization oracle ``argmin_{u in C} <g, u>``
  (bounded sets only).
- ``support(v)``: the support function ``sup_{u in C} <v, u>``, shape ``(B,)``,
  ``+inf`` where it is unbounded.
- ``project_jvp(u, v)``: the directional derivative of the projection at u
  along v (where the projection is differentiable; closed forms for `Reals`,
  `Box`, the 2-norm and inf-norm `Ball`, the Euclidean projection onto the
  `Simplex`, `CappedSimplex` and `Product`); ``project_jacobian(u)`` the whole
  ``(B, n, n)`` Jacobian (symmetric, as every projection's).
- ``select(index)``: the set of the selected instances (`saddle.selection`).

Capabilities, which solvers ask for instead of testing set types (a set of
one's own declares them and works wherever they are asked for):

- ``bounded``: linear functions attain their extrema (`lmo` exists).
- ``unconstrained``: the set is the whole space R^n.
- ``separable``: the set is a product of intervals, so its projection acts
  coordinate by coordinate (then separable terms have closed-form prox steps
  and conjugates on it, `saddle.terms`).
- ``diagonal_prox``: for every diagonal metric D,
  ``argmin_{v in C} |v - u|_D^2`` is ``project(u)`` (diagonal preconditioning
  of primal-dual methods keeps its steps exact: `saddle.PDHG`).
- ``geometry``: the Bregman geometry of `prox_step` (``"euclidean"`` or
  ``"entropic"``).

The sets of distributionally robust optimization (`CappedSimplex`,
`ChiSquareBall`, `Permutahedron`) live in `saddle.dro_sets` and are importable
from here.
"""

from __future__ import annotations

import functools
import math
from numbers import Real

import torch
from torch import Tensor

from .point import descend
from .selection import as_selection, check_selectable, replace, take

__all__ = ["ConstraintSet", "Reals", "Box", "Ball", "Simplex", "Product", "CappedSimplex", "ChiSquareBall", "Permutahedron"]


def _check_parameter(value, name: str, *, min_value: float | None = None, allow_inf: bool = False):
    """Validate a set parameter given as a float or a tensor; return it unchanged."""
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{name} must be a float or a tensor, got {type(value).__name__}")
    t = torch.as_tensor(value, dtype=torch.float64) if isinstance(value, Real) else value.detach()
    if t.is_complex():
        raise TypeError(f"{name} must be real, got a complex tensor")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    if not allow_inf and torch.isinf(t).any():
        raise ValueError(f"{name} must be finite, got {value}")
    if min_value is not None and (t < min_value).any():
        raise ValueError(f"{name} must be >= {min_value}, got {value}")
    if t.dim() > 2:
        raise ValueError(f"{name} must be a float, a (B,) tensor or a (B, n) tensor; got shape {tuple(t.shape)}")
    return value


def _as_column(value, like: Tensor) -> Tensor | float:
    """Broadcast a float, ``(B,)`` or ``(B, n)`` parameter against a ``(B, n)`` block."""
    if isinstance(value, Real):
        return float(value)
    value = value.to(device=like.device, dtype=like.dtype)
    return value.unsqueeze(-1) if value.dim() == 1 else value


def _check_parameter_shape(value, name: str, batch_size: int, dim: int) -> None:
    if isinstance(value, Real):
        return
    if value.dim() == 0:
        return
    if value.dim() == 1 and value.shape[0] != batch_size:
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; a 1-D parameter is per instance and must have "
            f"shape (B,) = ({batch_size},)"
        )
    if value.dim() == 2 and (value.shape[0] not in (1, batch_size) or value.shape[1] != dim):
        raise ValueError(
            f"{name} has shape {tuple(value.shape)}; a 2-D parameter must have shape "
            f"(B, n) = ({batch_size}, {dim}) or (1, {dim})"
        )


def _dot(a: Tensor, b: Tensor) -> Tensor:
    return (a * b).sum(-1)


def project_simplex(u: Tensor, total: Tensor | float = 1.0) -> Tensor:
    """Euclidean projection of each row of ``u`` (B, n) onto ``{v >= 0, sum v = total}``.

    Sort-based (Held, Wolfe and Crowder 1974; Duchi et al. 2008): ``v = max(u - theta, 0)`` with
    ``theta = max_j (s_1 + ... + s_j - total) / j`` over the entries s sorted in decreasing order
    (each ``theta_j`` leaves a mass of at least ``total`` above it, so none exceeds the threshold,
    and the one at the support's size is it): six operations.
    """
    s, _ = torch.sort(u, dim=-1, descending=True)
    inverse, negative = _simplex_weights(u.shape[-1], u.dtype, u.device)
    if isinstance(total, Tensor):
        negative = negative * total.reshape(-1, 1)
    elif total != 1:
        negative = negative * float(total)
    theta = torch.addcmul(negative, s.cumsum(-1), inverse).amax(-1, keepdim=True)
    return (u - theta).clamp_min(0)


@functools.lru_cache(maxsize=64)
def _simplex_weights(n: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
    """``1 / j`` and ``-1 / j`` for j = 1..n ``(n,)``, made once per shape, dtype and device."""
    inverse = 1.0 / torch.arange(1, n + 1, dtype=torch.float64)
    return inverse.to(device=device, dtype=dtype), (-inverse).to(device=device, dtype=dtype)


class ConstraintSet:
    """A closed convex set acting on one ``(B, n)`` block; see the module docstring."""

    #: Whether the set is bounded (then `lmo` exists and linear functions attain their extrema).
    bounded: bool = False
    #: The geometry `prox_step` uses: ``"euclidean"`` or ``"entropic"``.
    geometry: str = "euclidean"
    #: Whether the set is all of R^n.
    unconstrained: bool = False
    #: Whether the set is a product of intervals (its projection acts coordinate by coordinate).
    separable: bool = False
    #: Whether the projection in every diagonal metric D, ``argmin_{v in C} |v - u|_D``, is `project`.
    diagonal_prox: bool = False

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["ConstraintSet"]:
        """Instances for ``(batch_size, dim)`` float64 blocks that `saddle.testing.check_set` checks: ``[cls()]``.

        A set whose constructor needs arguments overrides this (the set conformance
        suite checks every `ConstraintSet` subclass of the library through it).
        """
        return [cls()]

    def project(self, u: Tensor) -> Tensor:
        """The Euclidean projection ``argmin_{v in C} |v - u|`` of each row of ``u``: ``(B, n) -> (B, n)``."""
        raise NotImplementedError

    def prox_step(self, z: Tensor, g: Tensor, step: Tensor | float) -> Tensor:
        """``argmin_{u in C} step * <g, u> + D(u, z)``; Euclidean: ``project(z - step * g)``.

        ``step`` is a float or a ``(B,)`` tensor.
        """
        return self.project(descend(z, g, step))

    def bregman(self, u: Tensor, z: Tensor) -> Tensor:
        """The Bregman divergence ``D(u, z)`` of the set's geometry, shape ``(B,)``."""
        return 0.5 * (u - z).square().sum(-1)

    def lmo(self, g: Tensor) -> Tensor:
        """The linear minimization oracle ``argmin_{u in C} <g, u>``: ``(B, n) -> (B, n)`` (bounded sets only)."""
        raise ValueError(f"{type(self).__name__} is unbounded: it has no linear minimization oracle")

    def support(self, v: Tensor) -> Tensor:
        """``sup_{u in C} <v, u>`` per instance, shape ``(B,)``."""
        return _dot(v, self.lmo(-v))

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        """Whether each instance of ``u`` lies in the set up to ``atol``, shape ``(B,)``."""
        return (u - self.project(u)).abs().amax(-1) <= atol

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        """The directional derivative ``lim_{t -> 0} (P(u + t v) - P(u)) / t`` of `project` at ``u`` along ``v``.

        ``(B, n), (B, n) -> (B, n)``; at points where the projection is not
        differentiable, the derivative of the piece the point lies on (the
        interior of an interval, the support of a simplex point). Sets without
        a closed form raise ``NotImplementedError``.
        """
        raise NotImplementedError(f"{type(self).__name__} has no closed-form Jacobian-vector product of its "
                                  "projection; implement project_jvp(u, v)")

    def project_jacobian(self, u: Tensor) -> Tensor:
        """The Jacobian of `project` at ``u``, ``(B, n) -> (B, n, n)`` (symmetric; see `project_jvp`).

        The default applies `project_jvp` to the n unit vectors; sets with a simpler closed form override it.
        """
        B, n = u.shape
        eye = torch.eye(n, dtype=u.dtype, device=u.device)
        columns = [self.project_jvp(u, eye[j].expand(B, n)) for j in range(n)]
        return torch.stack(columns, -1)

    def select(self, index) -> "ConstraintSet":
        """The set of the selected instances (``index``: see `saddle.selection`).

        Per-instance parameters are indexed, shared ones kept. The default
        returns the set itself, which is right for sets without per-instance
        parameters; it raises ``TypeError`` for a set holding per-instance
        tensors that does not implement `select`.
        """
        check_selectable(self, as_selection(index))
        return self

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        """Raise ``ValueError`` if the set's parameters do not fit a ``(batch_size, dim)`` block."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Reals(ConstraintSet):
    """The whole space R^n: no constraint."""

    unconstrained = True
    separable = True
    diagonal_prox = True

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        return v

    def project_jacobian(self, u: Tensor) -> Tensor:
        return torch.eye(u.shape[-1], dtype=u.dtype, device=u.device).expand(u.shape[0], -1, -1)

    def project(self, u: Tensor) -> Tensor:
        return u

    def prox_step(self, z: Tensor, g: Tensor, step) -> Tensor:
        return descend(z, g, step)

    def support(self, v: Tensor) -> Tensor:
        nonzero = (v != 0).any(-1)
        return torch.where(nonzero, torch.full_like(v[..., 0], math.inf), torch.zeros_like(v[..., 0]))

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        return torch.isfinite(u).all(-1)


class Box(ConstraintSet):
    """The box ``{u : lo <= u <= hi}``; bounds may be infinite (then the box is unbounded).

    Args:
        lo: the lower bounds: a float, a ``(B,)`` tensor (per instance) or a
            ``(B, n)`` / ``(1, n)`` tensor (per coordinate); may be ``-inf``.
        hi: the upper bounds, shaped like ``lo``; ``lo <= hi`` everywhere, else
            the box is empty.
    """

    separable = True
    diagonal_prox = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["Box"]:
        """A box, per-instance lower bounds, and a half-line (``hi = inf``)."""
        lo = torch.linspace(-2.0, -0.5, batch_size, dtype=torch.float64)
        return [cls(-1.0, 2.0), cls(lo, 1.0), cls(0.0, math.inf)]

    def __init__(self, lo=-1.0, hi=1.0):
        self.lo = _check_parameter(lo, "lo", allow_inf=True)
        self.hi = _check_parameter(hi, "hi", allow_inf=True)
        lo_t = torch.as_tensor(lo, dtype=torch.float64) if isinstance(lo, Real) else lo.detach().double().cpu()
        hi_t = torch.as_tensor(hi, dtype=torch.float64) if isinstance(hi, Real) else hi.detach().double().cpu()
        try:
            a, b = (lo_t.unsqueeze(-1) if lo_t.dim() == 1 else lo_t), (hi_t.unsqueeze(-1) if hi_t.dim() == 1 else hi_t)
            empty = (a > b).any()
        except RuntimeError as err:
            raise ValueError(f"lo and hi have incompatible shapes {tuple(lo_t.shape)} and {tuple(hi_t.shape)}") from err
        if empty:
            raise ValueError("Box is empty: lo > hi in some coordinate")
        if (lo_t == math.inf).any() or (hi_t == -math.inf).any():
            raise ValueError("Box is empty: lo = +inf or hi = -inf")
        self.bounded = bool(torch.isfinite(lo_t).all() and torch.isfinite(hi_t).all())

    def project(self, u: Tensor) -> Tensor:
        """``min(max(u, lo), hi)``: one ``clamp`` (an infinite float bound is no bound)."""
        lo, hi = _as_column(self.lo, u), _as_column(self.hi, u)
        if isinstance(lo, float) and isinstance(hi, float):
            return u.clamp(lo, hi)
        # clamp takes two tensor bounds or two numbers: an infinite number is None, a finite one a tensor
        lo, hi = (None if isinstance(v, float) and math.isinf(v) else
                  torch.as_tensor(v, dtype=u.dtype, device=u.device) for v in (lo, hi))
        return torch.clamp(u, lo, hi)

    def lmo(self, g: Tensor) -> Tensor:
        if not self.bounded:
            super().lmo(g)
        lo, hi = _as_column(self.lo, g), _as_column(self.hi, g)
        lo = torch.as_tensor(lo, dtype=g.dtype, device=g.device).expand_as(g)
        hi = torch.as_tensor(hi, dtype=g.dtype, device=g.device).expand_as(g)
        return torch.where(g > 0, lo, hi)

    def support(self, v: Tensor) -> Tensor:
        lo = torch.as_tensor(_as_column(self.lo, v), dtype=v.dtype, device=v.device)
        hi = torch.as_tensor(_as_column(self.hi, v), dtype=v.dtype, device=v.device)
        zero = torch.zeros((), dtype=v.dtype, device=v.device)
        # Written with where so that 0 * inf never appears.
        terms = torch.where(v > 0, v * hi, torch.where(v < 0, v * lo, zero))
        return terms.sum(-1)

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        """``v`` on the coordinates strictly inside ``(lo, hi)``, 0 on the others."""
        lo = torch.as_tensor(_as_column(self.lo, u), dtype=u.dtype, device=u.device)
        hi = torch.as_tensor(_as_column(self.hi, u), dtype=u.dtype, device=u.device)
        return torch.where((u > lo) & (u < hi), v, torch.zeros_like(v))

    def project_jacobian(self, u: Tensor) -> Tensor:
        """``diag(lo < u < hi)``."""
        return torch.diag_embed(self.project_jvp(u, torch.ones_like(u)))

    def select(self, index) -> "Box":
        sel = as_selection(index)
        return replace(self, lo=take(self.lo, sel), hi=take(self.hi, sel))

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        _check_parameter_shape(self.lo, f"{name}.lo", batch_size, dim)
        _check_parameter_shape(self.hi, f"{name}.hi", batch_size, dim)

    def __repr__(self) -> str:
        return f"Box(lo={_short(self.lo)}, hi={_short(self.hi)})"


class Ball(ConstraintSet):
    """The norm ball ``{u : |u|_p <= radius}`` centred at 0, for p in {1, 2, inf}.

    With ``groups = G > 1`` the set is the product of G such balls, one on each
    of G equal consecutive slices of the block: ``u`` of shape ``(B, G k)`` is
    in the set when ``|u_g|_p <= radius`` for every slice ``u_g`` of ``k``
    coordinates (per-micro-batch perturbations of m-sharpness, for example).

    Args:
        radius: a float >= 0 or a ``(B,)`` tensor (per instance).
        p: the norm: 1, 2 or ``math.inf``.
        groups: G >= 1, the number of balls; the block's size must be a multiple of G.
    """

    bounded = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["Ball"]:
        """Balls in the 1-, 2- and inf-norms, per-instance radii, and two groups when ``dim`` is even."""
        radii = torch.linspace(0.5, 2.0, batch_size, dtype=torch.float64)
        out = [cls(1.5), cls(1.0, p=1), cls(0.7, p=math.inf), cls(radii)]
        return out + ([cls(1.0, groups=2)] if dim % 2 == 0 else [])

    def __init__(self, radius=1.0, p: float = 2, *, groups: int = 1):
        self.radius = _check_parameter(radius, "radius", min_value=0.0)
        if isinstance(radius, Tensor) and radius.dim() > 1:
            raise ValueError(f"radius must be a float or a (B,) tensor, got shape {tuple(radius.shape)}")
        if p not in (1, 2, math.inf):
            raise ValueError(f"p must be 1, 2 or math.inf, got {p!r}")
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
            raise ValueError(f"groups must be a positive int, got {groups!r}")
        self.p = p
        self.groups = groups

    def _r(self, like: Tensor):
        r = _as_column(self.radius, like)
        if self.groups > 1 and isinstance(r, Tensor):
            r = r.unsqueeze(-1)  # (B, 1, 1) against the (B, G, k) view
        return r

    def _split(self, u: Tensor) -> Tensor:
        """``(B, G k)`` viewed as ``(B, G, k)`` (the block itself when G = 1)."""
        if self.groups == 1:
            return u
        if u.shape[-1] % self.groups:
            raise ValueError(f"a Ball with groups={self.groups} needs a block size that is a multiple of "
                             f"{self.groups}, got {u.shape[-1]}")
        return u.unflatten(-1, (self.groups, u.shape[-1] // self.groups))

    def project(self, u: Tensor) -> Tensor:
        v = self._split(u)
        return self._project(v).reshape(u.shape)

    def _project(self, u: Tensor) -> Tensor:
        r = self._r(u)
        if self.p == 2:
            norm = u.norm(dim=-1, keepdim=True)
            scale = torch.where(norm > r, r / norm.clamp_min(torch.finfo(u.dtype).tiny), torch.ones_like(norm))
            return u * scale
        if self.p == math.inf:
            return torch.maximum(torch.minimum(u, torch.as_tensor(r, dtype=u.dtype, device=u.device)),
                                 -torch.as_tensor(r, dtype=u.dtype, device=u.device))
        inside = u.abs().sum(-1, keepdim=True) <= r
        total = r if isinstance(r, float) else r.squeeze(-1)
        projected = u.sign() * project_simplex(u.abs(), total)
        return torch.where(inside, u, projected)

    def lmo(self, g: Tensor) -> Tensor:
        v = self._split(g)
        return self._lmo(v).reshape(g.shape)

    def _lmo(self, g: Tensor) -> Tensor:
        r = self._r(g)
        if self.p == 2:
            norm = g.norm(dim=-1, keepdim=True)
            direction = torch.where(norm > 0, g / norm.clamp_min(torch.finfo(g.dtype).tiny), torch.zeros_like(g))
            return -r * direction
        if self.p == math.inf:
            return -r * torch.sign(g)
        idx = g.abs().argmax(-1, keepdim=True)
        out = torch.zeros_like(g)
        return out.scatter(-1, idx, -torch.sign(g.gather(-1, idx))) * r

    def support(self, v: Tensor) -> Tensor:
        dual = {2: 2, math.inf: 1, 1: math.inf}[self.p]
        r = self.radius if isinstance(self.radius, Real) else self.radius.to(device=v.device, dtype=v.dtype)
        norms = torch.linalg.vector_norm(self._split(v), ord=dual, dim=-1)
        return r * (norms.sum(-1) if self.groups > 1 else norms)

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        """2-norm: ``v`` inside the ball, ``(r / |u|) (v - <u, v> u / |u|^2)`` outside; inf-norm: a box's.

        Per group with ``groups > 1``. The 1-norm ball raises ``NotImplementedError``.
        """
        if self.p == 1:
            return super().project_jvp(u, v)
        uu, vv, r = self._split(u), self._split(v), self._r(u)
        if self.p == math.inf:
            r = torch.as_tensor(r, dtype=u.dtype, device=u.device)
            return torch.where(uu.abs() < r, vv, torch.zeros_like(vv)).reshape(u.shape)
        norm = uu.norm(dim=-1, keepdim=True)
        safe = norm.clamp_min(torch.finfo(u.dtype).tiny)
        radial = (uu * vv).sum(-1, keepdim=True) / safe.square()
        outside = (r / safe) * (vv - radial * uu)
        return torch.where(norm > r, outside, vv).reshape(u.shape)

    def select(self, index) -> "Ball":
        return replace(self, radius=take(self.radius, as_selection(index)))

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        _check_parameter_shape(self.radius, f"{name}.radius", batch_size, dim)
        if dim % self.groups:
            raise ValueError(f"{name} is a Ball with groups={self.groups}; the block size {dim} is not a multiple "
                             f"of {self.groups}")

    def __repr__(self) -> str:
        groups = f", groups={self.groups}" if self.groups > 1 else ""
        return f"Ball(radius={_short(self.radius)}, p={self.p}{groups})"


class Simplex(ConstraintSet):
    """The probability simplex ``{u >= 0 : sum u = 1}``.

    Args:
        geometry: ``"euclidean"`` (prox step = projection) or ``"entropic"``
            (prox step = multiplicative weights ``u ∝ z * exp(-step * g)``, D = KL).
    """

    bounded = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["Simplex"]:
        """The simplex in both geometries."""
        return [cls(), cls("entropic")]

    def __init__(self, geometry: str = "euclidean"):
        if geometry not in ("euclidean", "entropic"):
            raise ValueError(f"geometry must be 'euclidean' or 'entropic', got {geometry!r}")
        self.geometry = geometry

    def project(self, u: Tensor) -> Tensor:
        return project_simplex(u)

    def prox_step(self, z: Tensor, g: Tensor, step) -> Tensor:
        if self.geometry == "euclidean":
            return project_simplex(descend(z, g, step))
        # A softmax written out: torch.softmax runs a parallel region even on
        # tiny inputs, which costs milliseconds per call on a loaded CPU.
        v = descend(torch.log(z), g, step)
        u = torch.exp(v - v.amax(-1, keepdim=True))
        u = u / u.sum(-1, keepdim=True)
        # Multiplicative weights drive losing strategies towards 0; subnormal
        # floats are orders of magnitude slower on CPUs, so flush them to 0
        # (where underflow would take them a few steps later anyway).
        return torch.where(u < torch.finfo(u.dtype).tiny, torch.zeros_like(u), u)

    def bregman(self, u: Tensor, z: Tensor) -> Tensor:
        if self.geometry == "euclidean":
            return super().bregman(u, z)
        return (torch.xlogy(u, u) - torch.xlogy(u, z)).sum(-1)

    def lmo(self, g: Tensor) -> Tensor:
        idx = g.argmin(-1, keepdim=True)
        return torch.zeros_like(g).scatter(-1, idx, 1.0)

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        """Of the Euclidean projection ``P(u) = max(u - theta, 0)``: on its support S, ``v - mean_S(v)``; 0 off S."""
        on = (self.project(u) > 0).to(v.dtype)
        mean = (on * v).sum(-1, keepdim=True) / on.sum(-1, keepdim=True)
        return on * (v - mean)

    def project_jacobian(self, u: Tensor) -> Tensor:
        """``diag(s) - s s^T / |S|`` with s the indicator of the support S of ``P(u)``."""
        on = (self.project(u) > 0).to(u.dtype)
        return torch.diag_embed(on) - on.unsqueeze(-1) * on.unsqueeze(-2) / on.sum(-1)[:, None, None]

    def support(self, v: Tensor) -> Tensor:
        return v.amax(-1)

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        return (u.amin(-1) >= -atol) & ((u.sum(-1) - 1).abs() <= atol)

    def __repr__(self) -> str:
        return f"Simplex(geometry={self.geometry!r})"


class Product:
    """The product ``C_1 x ... x C_k`` of k sets, acting on points ``tuple[(B, n_i) tensors]``.

    Each operation applies blockwise; ``bregman`` and ``support`` sum over blocks.
    """

    def __init__(self, *sets: ConstraintSet):
        if len(sets) == 1 and isinstance(sets[0], (tuple, list)):
            sets = tuple(sets[0])
        for i, s in enumerate(sets):
            if not isinstance(s, ConstraintSet):
                raise TypeError(f"Product: block {i} must be a ConstraintSet, got {type(s).__name__}")
        if not sets:
            raise ValueError("Product needs at least one set")
        self.sets = tuple(sets)

    def __len__(self) -> int:
        return len(self.sets)

    def __getitem__(self, i: int) -> ConstraintSet:
        return self.sets[i]

    def __iter__(self):
        return iter(self.sets)

    @property
    def bounded(self) -> bool:
        """Whether every factor is bounded."""
        return all(s.bounded for s in self.sets)

    def project(self, z: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        """The Euclidean projection, block by block."""
        return tuple(s.project(u) for s, u in zip(self.sets, z))

    def prox_step(self, z, g, step) -> tuple[Tensor, ...]:
        """Each factor's `ConstraintSet.prox_step` (in its own geometry) on its block."""
        return tuple(s.prox_step(zi, gi, step) for s, zi, gi in zip(self.sets, z, g))

    def bregman(self, u, z) -> Tensor:
        """The sum over blocks of the factors' Bregman divergences ``D_i(u_i, z_i)``, shape ``(B,)``."""
        return sum(s.bregman(ui, zi) for s, ui, zi in zip(self.sets, u, z))

    def lmo(self, g) -> tuple[Tensor, ...]:
        """``argmin_{u in C_1 x ... x C_k} <g, u>``, block by block (every factor bounded)."""
        return tuple(s.lmo(gi) for s, gi in zip(self.sets, g))

    def support(self, v) -> Tensor:
        """``sup_{u in C_1 x ... x C_k} <v, u>``: the sum of the factors' support functions, shape ``(B,)``."""
        return sum(s.support(vi) for s, vi in zip(self.sets, v))

    def contains(self, z, atol: float = 1e-9) -> Tensor:
        """Whether every block of each instance lies in its set up to ``atol``, shape ``(B,)``."""
        out = None
        for s, u in zip(self.sets, z):
            c = s.contains(u, atol)
            out = c if out is None else out & c
        return out

    def project_jvp(self, z, v) -> tuple[Tensor, ...]:
        """The directional derivative of the projection, block by block (`ConstraintSet.project_jvp`)."""
        return tuple(s.project_jvp(u, vi) for s, u, vi in zip(self.sets, z, v))

    def select(self, index) -> "Product":
        """The product of the factors' selections (`ConstraintSet.select`)."""
        sel = as_selection(index)
        return Product(*(s.select(sel) for s in self.sets))

    def check(self, batch_size: int, dims: tuple[int, ...]) -> None:
        """Raise ``ValueError`` unless there is one set per block and each fits its ``(batch_size, n_i)`` block."""
        if len(dims) != len(self.sets):
            raise ValueError(f"domain has {len(self.sets)} blocks but the point has {len(dims)}")
        for i, (s, n) in enumerate(zip(self.sets, dims)):
            s.check(batch_size, n, name=f"domain[{i}]")

    def __repr__(self) -> str:
        return "Product(" + ", ".join(map(repr, self.sets)) + ")"


def _short(value) -> str:
    if isinstance(value, Tensor):
        return f"tensor{tuple(value.shape)}"
    return repr(value)


from .dro_sets import CappedSimplex, ChiSquareBall, Permutahedron  # noqa: E402  (re-exported: defined on ConstraintSet)
