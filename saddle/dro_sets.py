"""Sets of distributionally robust optimization: the max player's weights q over n samples.

Each is the probability simplex intersected with an ambiguity set, acting on
``(B, n)`` blocks like every `saddle.sets.ConstraintSet`:

- `CappedSimplex`: ``{q : sum q = 1, 0 <= q_i <= cap}`` (CVaR);
- `ChiSquareBall`: ``{q in simplex : (n/2) |q - 1/n|^2 <= rho}``;
- `Permutahedron`: the convex hull of the permutations of a spectrum (spectral risk measures).

All three are also importable from `saddle.sets` and `saddle`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from .selection import as_selection, replace, take
from .sets import ConstraintSet, _check_parameter, _check_parameter_shape, _short

__all__ = ["CappedSimplex", "ChiSquareBall", "Permutahedron"]


def _per_instance_value(value, like: Tensor) -> Tensor:
    """A float or ``(B,)`` parameter as a ``(B, 1)`` tensor (or ``(1, 1)``) on ``like``'s device and dtype."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    return t.reshape(-1, 1)


def _float_midpoint(lo: Tensor, hi: Tensor) -> Tensor:
    """A float between lo <= hi halfway in the order of floats (bisection in at most 8 * itemsize steps).

    Floats map monotonically to signed integers (the bit pattern, negated for negative
    numbers); the midpoint of the integers is strictly between lo and hi unless they are
    adjacent or equal.
    """
    itype = {8: torch.int64, 4: torch.int32, 2: torch.int16}[lo.element_size()]
    smallest = torch.iinfo(itype).min

    def key(x: Tensor) -> Tensor:
        i = x.view(itype)
        return torch.where(i < 0, smallest - i, i)

    a, b = key(lo), key(hi)
    m = (a >> 1) + (b >> 1) + (a & b & 1)  # floor((a + b) / 2) without overflow
    return torch.where(m < 0, smallest - m, m).view(lo.dtype)


def _breakpoint_inside(u: Tensor, c: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Whether some breakpoint u_i or u_i - c of the capped simplex's threshold lies in (lo, hi), ``(B, 1)``."""
    low = u - c
    return (((u > lo) & (u < hi)) | ((low > lo) & (low < hi))).any(-1, keepdim=True)


class CappedSimplex(ConstraintSet):
    """The capped simplex ``{q : sum q = 1, 0 <= q_i <= cap}``: CVaR's ambiguity set.

    With ``cap = 1 / (alpha n)`` it is the set of reweightings of n samples
    whose worst case is the conditional value-at-risk at level alpha (the
    average of the ``alpha n`` largest losses).

    Args:
        cap: the upper bound, a float or a ``(B,)`` tensor; ``cap * n >= 1``
            (else the set is empty).

    ``project(u)`` is exact: ``q = clamp(u - tau, 0, cap)`` with the threshold
    tau found without sorting. ``g(tau) = sum_i clamp(u_i - tau, 0, cap)`` is
    nonincreasing and piecewise linear with breakpoints ``u_i`` and ``u_i - cap``;
    tau is bracketed by bisection in the order of the floats (one O(n) pass per
    step, at most 64 steps in float64, so that no breakpoint is left strictly inside
    the bracket), then solved from ``g(tau) = 1`` on the bracket's linear piece.
    On the CPU the bisection stops as soon as the bracket holds no breakpoint
    (checked every 4 steps); on other devices it runs all steps (no host
    synchronization). ``lmo(g)`` puts ``cap`` on the smallest entries of g.
    """

    bounded = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["CappedSimplex"]:
        """A shared cap of ``2 / dim`` and per-instance caps from ``1 / dim`` to 1."""
        return [cls(2.0 / dim), cls(torch.linspace(1.0 / dim, 1.0, batch_size, dtype=torch.float64))]

    def __init__(self, cap):
        self.cap = _check_parameter(cap, "cap", min_value=0.0)
        if isinstance(cap, Tensor) and cap.dim() > 1:
            raise ValueError(f"cap must be a float or a (B,) tensor, got shape {tuple(cap.shape)}")
        if (torch.as_tensor(cap) <= 0).any():
            raise ValueError(f"cap must be positive, got {cap}")

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        _check_parameter_shape(self.cap, f"{name}.cap", batch_size, dim)
        if (torch.as_tensor(self.cap, dtype=torch.float64) * dim < 1 - 1e-12).any():
            raise ValueError(f"{name} is a CappedSimplex with cap {self.cap} < 1/n = 1/{dim}: it is empty")

    def project(self, u: Tensor) -> Tensor:
        c = _per_instance_value(self.cap, u)
        lo = u.amin(-1, keepdim=True) - c  # g(lo) = n cap >= 1
        hi = u.amax(-1, keepdim=True)      # g(hi) = 0 <= 1
        # Bisection on the bit patterns of the floats: after 8 * itemsize steps lo and hi are adjacent.
        steps = 8 * u.element_size()
        check = u.device.type == "cpu"  # an early exit costs a host synchronization: on the CPU only
        zero, buf = torch.zeros((), dtype=u.dtype, device=u.device), torch.empty_like(u)
        for k in range(steps):
            t = _float_midpoint(lo, hi)
            above = torch.clamp(torch.sub(u, t, out=buf), zero, c, out=buf).sum(-1, keepdim=True) >= 1
            lo, hi = torch.where(above, t, lo), torch.where(above, hi, t)
            if check and k % 4 == 3 and not _breakpoint_inside(u, c, lo, hi).any():
                break
        # No breakpoint u_i or u_i - cap lies strictly between lo and hi: g is linear on [lo, hi] with
        # slope -(number of u_i in the middle), and tau solves sum q = 1 there.
        top = (u - c >= hi).to(u.dtype)
        mid = ((u - c <= lo) & (u >= hi)).to(u.dtype)
        count = mid.sum(-1, keepdim=True)
        total = (mid * u).sum(-1, keepdim=True) + c * top.sum(-1, keepdim=True) - 1
        tau = torch.where(count > 0, total / count.clamp_min(1), lo)
        tau = torch.minimum(torch.maximum(tau, lo), hi)
        return torch.minimum((u - tau).clamp_min(0), c)

    def project_jvp(self, u: Tensor, v: Tensor) -> Tensor:
        """On the coordinates F of ``P(u)`` strictly between 0 and cap, ``v - mean_F(v)``; 0 on the others
        (tau moves with the mean of u over F)."""
        q, c = self.project(u), _per_instance_value(self.cap, u)
        free = ((q > 0) & (q < c)).to(v.dtype)
        mean = (free * v).sum(-1, keepdim=True) / free.sum(-1, keepdim=True).clamp_min(1)
        return free * (v - mean)

    def lmo(self, g: Tensor) -> Tensor:
        n = g.shape[-1]
        c = _per_instance_value(self.cap, g)
        order = torch.argsort(g, dim=-1)
        k = torch.arange(n, device=g.device, dtype=g.dtype)
        sorted_q = torch.minimum((1 - c * k).clamp_min(0), c).expand(g.shape[0], n)
        return torch.zeros_like(g).scatter(-1, order, sorted_q)

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        c = _per_instance_value(self.cap, u)
        return (u.amin(-1) >= -atol) & ((u - c).amax(-1) <= atol) & ((u.sum(-1) - 1).abs() <= atol)

    def select(self, index) -> "CappedSimplex":
        return replace(self, cap=take(self.cap, as_selection(index)))

    def __repr__(self) -> str:
        return f"CappedSimplex(cap={_short(self.cap)})"


def _scaled_simplex_on_chi2_ball(u: Tensor, rho: Tensor, s_max: float) -> Tensor:
    """``proj_simplex(s u)`` for the largest ``s <= s_max`` with ``(n/2) |proj_simplex(s u) - 1/n|^2 <= rho``.

    Both the Euclidean projection onto the chi-square ball ``{q in simplex : (n/2)|q - 1/n|^2 <= rho}``
    (``s_max = 1``: the KKT conditions give ``proj_simplex(u / (1 + gamma n))`` for the ball's
    multiplier gamma) and its linear maximizer (``u = -g``, ``s_max = inf``) have this form. After one
    sort, the support size k of ``proj_simplex(s u)`` is a step function of s with breakpoints
    ``1 / (C_k - k u_(k))`` (C_k: sum of the k largest); on each piece
    ``|v - 1/n|^2 = s^2 S_k + 1/k - 1/n`` with ``S_k`` the spread of the k largest entries, so the
    piece where the divergence crosses rho is found by counting and s solved in closed form.
    """
    n = u.shape[-1]
    srt, order = torch.sort(u, dim=-1, descending=True)
    a = srt - srt[..., :1]  # <= 0; the simplex projection ignores constant shifts
    k = torch.arange(1, n + 1, device=u.device, dtype=u.dtype)
    C = a.cumsum(-1)
    m = C / k
    S = (a.square().cumsum(-1) - C * m).clamp_min(0)
    gap = (C - k * a).clamp_min(0)  # nondecreasing in k; support size at s is #{k : s gap_k < 1}
    gap_next = torch.nn.functional.pad(gap[..., 1:], (0, 1), value=math.inf)  # gap_{k+1}; s -> 0 for k = n
    inv = torch.where(gap_next > 0, 1.0 / gap_next, torch.full_like(gap_next, math.inf))
    D_left = torch.where(torch.isinf(inv), torch.full_like(inv, math.inf), 0.5 * n * (inv.square() * S + 1 / k - 1 / n))
    D_left = torch.where(gap_next == math.inf, torch.zeros_like(D_left), D_left)
    kstar = (D_left > rho).sum(-1, keepdim=True).clamp(max=n - 1)  # index of k* (0-based)
    S_k = S.gather(-1, kstar)
    kk = (kstar + 1).to(u.dtype)
    num = (2 * rho / n - 1 / kk + 1 / n).clamp_min(0)
    s = torch.where(S_k > 0, torch.sqrt(num / S_k.clamp_min(torch.finfo(u.dtype).tiny)),
                    torch.full_like(S_k, math.inf))
    s = s.clamp(max=s_max)
    # The support at s and the projection there.
    size = (s * gap < 1).sum(-1, keepdim=True).clamp_min(1)
    m_size = m.gather(-1, size - 1)
    diff = a - m_size
    scaled = torch.where(diff == 0, torch.zeros_like(diff), s * diff)
    v = (scaled + 1 / size.to(u.dtype)).clamp_min(0)
    return torch.zeros_like(u).scatter(-1, order, v)


class ChiSquareBall(ConstraintSet):
    """The chi-square ball ``{q in simplex : (n/2) |q - 1/n|^2 <= rho}`` around the uniform weights.

    ``(n/2) |q - 1/n|^2`` is half the chi-square divergence ``chi2(q || 1/n) = n |q - 1/n|^2``.
    For ``rho >= (n - 1)/2`` it is the whole simplex.

    Args:
        rho: the radius, a float >= 0 or a ``(B,)`` tensor.

    ``project`` and ``lmo`` are exact (one sort and a closed form; see
    `_scaled_simplex_on_chi2_ball`).
    """

    bounded = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["ChiSquareBall"]:
        """A shared radius and per-instance radii from 0.1 to 5."""
        return [cls(0.5), cls(torch.linspace(0.1, 5.0, batch_size, dtype=torch.float64))]

    def __init__(self, rho):
        self.rho = _check_parameter(rho, "rho", min_value=0.0)
        if isinstance(rho, Tensor) and rho.dim() > 1:
            raise ValueError(f"rho must be a float or a (B,) tensor, got shape {tuple(rho.shape)}")

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        _check_parameter_shape(self.rho, f"{name}.rho", batch_size, dim)

    def project(self, u: Tensor) -> Tensor:
        return _scaled_simplex_on_chi2_ball(u, _per_instance_value(self.rho, u), 1.0)

    def lmo(self, g: Tensor) -> Tensor:
        return _scaled_simplex_on_chi2_ball(-g, _per_instance_value(self.rho, g), math.inf)

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        n = u.shape[-1]
        rho = _per_instance_value(self.rho, u).squeeze(-1)
        div = 0.5 * n * (u - 1.0 / n).square().sum(-1)
        return (u.amin(-1) >= -atol) & ((u.sum(-1) - 1).abs() <= atol) & (div <= rho + atol)

    def select(self, index) -> "ChiSquareBall":
        return replace(self, rho=take(self.rho, as_selection(index)))

    def __repr__(self) -> str:
        return f"ChiSquareBall(rho={_short(self.rho)})"


class Permutahedron(ConstraintSet):
    """The permutahedron of a spectrum: the convex hull of the permutations of ``sigma``.

    The ambiguity set of a spectral risk measure: ``max_{q in P(sigma)} <q, l> =
    sum_i sigma_(i) l_(i)`` (both sorted ascending). CVaR, extremiles and
    exponential spectral risk measures are spectra (see `problems.dro`).

    Args:
        sigma: the spectrum, ``(n,)`` (shared) or ``(B, n)``, nonnegative, summing to 1.

    ``project(u)`` is exact by isotonic regression (Blondel et al. 2020): with
    ``s = u`` sorted descending and ``w = sigma`` sorted descending,
    ``project(u)`` is ``s - v`` unsorted, where v is the nonincreasing least-squares
    fit of ``s - w``. The fit is the pool-adjacent-violators algorithm of
    `scipy.optimize.isotonic_regression`, run on the host one instance at a
    time (a host synchronization per call). ``lmo(g)`` assigns the largest
    weights to the smallest entries of g.
    """

    bounded = True

    @classmethod
    def examples(cls, batch_size: int, dim: int) -> list["Permutahedron"]:
        """A shared spectrum (a softmax) and a per-instance one."""
        shared = torch.softmax(torch.arange(dim, dtype=torch.float64), 0)
        per_instance = torch.softmax(torch.arange(batch_size * dim, dtype=torch.float64).reshape(batch_size, dim)
                                     .cos(), -1)
        return [cls(shared), cls(per_instance)]

    def __init__(self, sigma: Tensor):
        if not isinstance(sigma, Tensor) or sigma.dim() not in (1, 2):
            raise TypeError(f"sigma must be an (n,) or (B, n) tensor, got {type(sigma).__name__}")
        if not torch.isfinite(sigma).all() or (sigma < 0).any():
            raise ValueError("sigma must be finite and nonnegative")
        if ((sigma.sum(-1) - 1).abs() > 1e-9).any():
            raise ValueError(f"sigma must sum to 1, got sums {sigma.sum(-1)}")
        self.sigma = torch.sort(sigma.detach(), dim=-1, descending=True).values.reshape(-1, sigma.shape[-1])

    def check(self, batch_size: int, dim: int, name: str = "set") -> None:
        if self.sigma.shape[-1] != dim or self.sigma.shape[0] not in (1, batch_size):
            raise ValueError(f"{name}.sigma has shape {tuple(self.sigma.shape)}; expected ({dim},) or "
                             f"({batch_size}, {dim})")

    def _w(self, like: Tensor) -> Tensor:
        return self.sigma.to(device=like.device, dtype=like.dtype).expand(like.shape[0], -1)

    def project(self, u: Tensor) -> Tensor:
        from scipy.optimize import isotonic_regression

        s, order = torch.sort(u, dim=-1, descending=True)
        target = (s - self._w(u)).detach().cpu().double().numpy()
        v = torch.stack([torch.from_numpy(np.ascontiguousarray(isotonic_regression(row, increasing=False).x)) for row in target])
        v = v.to(device=u.device, dtype=u.dtype)
        return torch.zeros_like(u).scatter(-1, order, s - v)

    def lmo(self, g: Tensor) -> Tensor:
        order = torch.argsort(g, dim=-1)
        return torch.zeros_like(g).scatter(-1, order, self._w(g))

    def support(self, v: Tensor) -> Tensor:
        s, _ = torch.sort(v, dim=-1, descending=True)
        return (s * self._w(v)).sum(-1)

    def contains(self, u: Tensor, atol: float = 1e-9) -> Tensor:
        # Majorization: partial sums of the sorted u below those of the sorted sigma, equal totals.
        s, _ = torch.sort(u, dim=-1, descending=True)
        excess = (s.cumsum(-1) - self._w(u).cumsum(-1)).amax(-1)
        return (excess <= atol) & ((u.sum(-1) - 1).abs() <= atol)

    def select(self, index) -> "Permutahedron":
        return replace(self, sigma=take(self.sigma, as_selection(index)))

    def __repr__(self) -> str:
        return f"Permutahedron(n={self.sigma.shape[-1]})"
