"""Batched conjugate gradients for symmetric positive definite systems given by products.

Competitive methods solve ``(I + eta^2 D_xy D_yx) u = b`` per instance from
Hessian-vector products only; this is the solver they share. Each instance has
its own tolerance and iteration cap and stops on its own: once it stops, its
solution is frozen (bitwise) while the rest of the batch goes on.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient"]


class CGResult(NamedTuple):
    """The result of `conjugate_gradient`; tensors are ``(B, ...)``.

    Attributes:
        x: the solutions, ``(B, n)``.
        iterations: CG iterations per instance (one product each), ``(B,)`` int64. An
            iteration whose product reveals non-positive curvature (or a non-finite
            value) counts: its product was taken, though the instance stops without
            moving.
        matvecs: products per instance: ``iterations``, plus one for the initial
            residual when a warm start was given, ``(B,)`` int64.
        residual: ``|b - A x|`` per instance (the recursively updated residual), ``(B,)``.
        converged: ``residual <= tol * |b|`` per instance, ``(B,)`` bool.
    """

    x: Tensor
    iterations: Tensor
    matvecs: Tensor
    residual: Tensor
    converged: Tensor


def _per_instance(value, name: str, B: int, like: Tensor, pending: list, *, integer: bool = False) -> Tensor:
    """``value`` as a ``(B,)`` tensor; a tensor's values are checked later, with one read (``pending``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or isinstance(value, int)):
        # A plain Python number (the common case): checked on the host, no device round trip.
        if not value >= 0 or (not integer and not math.isfinite(value)):
            raise ValueError(f"conjugate_gradient: {name} must be finite and >= 0, got {value!r}")
        return torch.full((B,), value, dtype=torch.int64 if integer else like.dtype, device=like.device)
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"conjugate_gradient: {name} must be a number or a (B,) tensor, got {type(value).__name__}")
    if integer and (isinstance(value, Real) and not isinstance(value, Integral)
                    or isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()
                                                      or value.dtype == torch.bool)):
        raise TypeError(f"conjugate_gradient: {name} must be an int or a (B,) integer tensor, got {value!r}")
    dtype = torch.int64 if integer else like.dtype
    t = torch.as_tensor(value, dtype=dtype if isinstance(value, Real) else None).to(like.device, dtype)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
        raise ValueError(f"conjugate_gradient: {name} must be a number or a (B,) = ({B},) tensor, "
                         f"got shape {tuple(t.shape)}")
    # The values are checked on the host together with the first convergence test (one read):
    # see `_setup_read`.
    bad = (t < 0).any() if integer else ((t < 0) | ~torch.isfinite(t)).any()
    pending.append((bad, name, value))
    return t.expand(B)


def _setup_read(pending: list, *values: Tensor) -> list:
    """One host read for the setup of a solve: the value checks of tensor arguments and ``values``.

    Raises the argument checks' ``ValueError``; returns the ``values`` as Python numbers.
    """
    flags = [bad for bad, _, _ in pending]
    read = torch.stack([v.to(torch.int64) for v in (*flags, *values)]).tolist()  # flags and counts: integers
    for is_bad, (_, name, value) in zip(read, pending):
        if is_bad:
            raise ValueError(f"conjugate_gradient: {name} must be finite and >= 0, got {value!r}")
    return read[len(flags):]


def conjugate_gradient(matvec: Callable[[Tensor], Tensor], b: Tensor, x0: Tensor | None = None, *,
                       tol: float | Tensor = 1e-10, max_iters: int | Tensor = 100,
                       check_every: int = 5) -> CGResult:
    """Solve ``A_i x_i = b_i`` for every instance i by conjugate gradients (Hestenes-Stiefel).

    Args:
        matvec: ``v -> A v``, ``(B, n) -> (B, n)``, each ``A_i`` symmetric positive
            definite; instances must not interact.
        b: right-hand sides, ``(B, n)``.
        x0: warm start, ``(B, n)`` (default 0; a warm start costs one product for
            the initial residual ``b - A x0``).
        tol: relative tolerance, a float or ``(B,)``: instance i stops once
            ``|r_i| <= tol_i |b_i|``.
        max_iters: the iteration cap, an int or ``(B,)`` ints.
        check_every: how often (in iterations) the loop asks the device whether
            every instance has stopped. The host reads are one at the start (the
            checks of tensor-valued ``tol`` and ``max_iters``, the loop's length and
            whether any instance needs an iteration) and one every ``check_every``
            iterations after it: ``1 + ceil(N / check_every)`` at most for a
            solve whose slowest instance takes N iterations. The result does not
            depend on it (a stopped instance is frozen by the masks until the
            loop notices); a larger value trades reads for masked iterations,
            each of which still costs a product. A single instance (B = 1) on
            the CPU, where a read costs nothing, is asked once per iteration and
            runs without the batch's masks (the same result, about half the
            operations per iteration, and no product wasted past its stop).

    Returns:
        `CGResult`. With ``x_{k+1} = x_k + alpha_k p_k``, ``r_{k+1} = r_k - alpha_k A p_k``,
        ``alpha_k = |r_k|^2 / <p_k, A p_k>``, ``p_{k+1} = r_{k+1} + (|r_{k+1}|^2 / |r_k|^2) p_k``.
        An instance whose curvature ``<p, A p>`` is not positive (A not positive
        definite, or an exact solve) stops where it is.
    """
    if not callable(matvec):
        raise TypeError(f"conjugate_gradient: matvec must be callable, got {type(matvec).__name__}")
    if not isinstance(b, Tensor):
        raise TypeError(f"conjugate_gradient: b must be a (B, n) tensor, got {type(b).__name__}")
    if b.dim() != 2:
        raise ValueError(f"conjugate_gradient: b must be a (B, n) tensor, got shape {tuple(b.shape)}")
    if not b.is_floating_point():
        raise TypeError(f"conjugate_gradient: b must have a floating dtype, got {b.dtype}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"conjugate_gradient: check_every must be a positive int, got {check_every!r}")
    B = b.shape[0]
    pending: list = []
    tol = _per_instance(tol, "tol", B, b, pending)
    cap = _per_instance(max_iters, "max_iters", B, b, pending, integer=True)
    zeros = torch.zeros(B, dtype=torch.int64, device=b.device)
    if x0 is None:
        x, r, matvecs = torch.zeros_like(b), b, zeros
    else:
        if not isinstance(x0, Tensor):
            raise TypeError(f"conjugate_gradient: x0 must be None or a tensor, got {type(x0).__name__}")
        if x0.shape != b.shape:
            raise ValueError(f"conjugate_gradient: x0 must have the shape of b {tuple(b.shape)}, got {tuple(x0.shape)}")
        if x0.dtype != b.dtype or x0.device != b.device:
            raise ValueError(f"conjugate_gradient: x0 is {x0.dtype} on {x0.device} but b is {b.dtype} on {b.device}")
        x = x0
        r = b - matvec(x0)
        matvecs = zeros + 1
    threshold = tol * torch.linalg.vector_norm(b, dim=-1)
    rs = (r * r).sum(-1)
    active = (rs.sqrt() > threshold) & (cap > 0)
    # The setup's one host read: the checks of tensor arguments, the loop's length and whether any
    # instance needs an iteration at all (the first convergence test).
    cap_max, any_active = _setup_read(pending, cap.max(), active.any())
    if B == 1 and b.device.type == "cpu":
        return _single(matvec, x, r, rs, threshold, int(cap_max), bool(any_active), matvecs)
    p = r
    iterations = zeros
    for k in range(int(cap_max) if any_active else 0):
        # The early exit is tested every check_every iterations (a host read); in between, the
        # instances that have stopped are frozen by the masks, so testing less often changes no
        # result, only how many masked iterations run before the loop ends.
        if k > 0 and k % check_every == 0 and not bool(active.any()):
            break
        Ap = matvec(p)
        iterations = iterations + active.long()  # the product is spent whether or not the step is taken
        curvature = (p * Ap).sum(-1)
        active = active & (curvature > 0)
        alpha = torch.where(active, rs / torch.where(active, curvature, torch.ones_like(curvature)), 0.0)
        a = alpha.unsqueeze(-1)
        x_new, r_new = x + a * p, r - a * Ap
        rs_new = (r_new * r_new).sum(-1)
        beta = rs_new / torch.where(rs > 0, rs, torch.ones_like(rs))
        p_new = r_new + beta.unsqueeze(-1) * p
        col = active.unsqueeze(-1)
        x, r, p = torch.where(col, x_new, x), torch.where(col, r_new, r), torch.where(col, p_new, p)
        rs = torch.where(active, rs_new, rs)
        active = active & (rs.sqrt() > threshold) & (iterations < cap)
    residual = rs.sqrt()
    return CGResult(x, iterations, matvecs + iterations, residual, residual <= threshold)


def _single(matvec: Callable[[Tensor], Tensor], x: Tensor, r: Tensor, rs: Tensor, threshold: Tensor, cap: int,
            active: bool, matvecs: Tensor) -> CGResult:
    """The loop of `conjugate_gradient` for one instance (B = 1) on the CPU, where a host read is free.

    The same arithmetic on the same ``(1, n)`` tensors as the batched loop, so the same bits, but
    without its masks: the instance's stopping tests (positive curvature, then the residual) are
    read together once per iteration, and the loop ends at the first that holds (the batched loop
    would only freeze the instance there). About half the operations per iteration, which is most
    of CG's own cost on small problems; each masked iteration it saves is a product, which costs
    more than a read on the CPU.
    """
    iterations = 0
    if cap > 0 and active:
        p = r
        while True:
            Ap = matvec(p)
            iterations += 1  # the product is spent whether or not the step is taken
            curvature = (p * Ap).sum(-1)
            a = (rs / curvature).unsqueeze(-1)
            x_new, r_new = x + a * p, r - a * Ap
            rs_new = (r_new * r_new).sum(-1)
            positive, above = torch.cat([curvature > 0, rs_new.sqrt() > threshold]).tolist()  # the one read
            if not positive:  # not positive definite, or not finite: stop where it is
                break
            beta = rs_new / rs  # rs > 0: it was above the threshold
            x, r, rs = x_new, r_new, rs_new
            if iterations >= cap or not above:
                break
            p = r + beta.unsqueeze(-1) * p
    residual = rs.sqrt()
    count = torch.full_like(matvecs, iterations)
    return CGResult(x, count, matvecs + count, residual, residual <= threshold)
