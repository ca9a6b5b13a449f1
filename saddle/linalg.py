"""Batched Krylov solvers for linear systems given by products: conjugate gradients and GMRES.

Competitive methods solve ``(I + eta^2 D_xy D_yx) u = b`` per instance from
Hessian-vector products only (`conjugate_gradient`); implicit differentiation
solves the non-symmetric adjoint systems of `saddle.implicit` (`gmres`). Each instance has
its own tolerance and iteration cap and stops on its own: once it stops, its
solution is frozen (bitwise) while the rest of the batch goes on.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Callable, NamedTuple

import torch
from torch import Tensor

__all__ = ["CGResult", "conjugate_gradient", "GMRESResult", "gmres"]


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


def _per_instance(value, name: str, B: int, like: Tensor, pending: list, *, integer: bool = False,
                  who: str = "conjugate_gradient") -> Tensor:
    """``value`` as a ``(B,)`` tensor; a tensor's values are checked later, with one read (``pending``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and (not integer or isinstance(value, int)):
        # A plain Python number (the common case): checked on the host, no device round trip.
        if not value >= 0 or (not integer and not math.isfinite(value)):
            raise ValueError(f"{who}: {name} must be finite and >= 0, got {value!r}")
        return torch.full((B,), value, dtype=torch.int64 if integer else like.dtype, device=like.device)
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{who}: {name} must be a number or a (B,) tensor, got {type(value).__name__}")
    if integer and (isinstance(value, Real) and not isinstance(value, Integral)
                    or isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()
                                                      or value.dtype == torch.bool)):
        raise TypeError(f"{who}: {name} must be an int or a (B,) integer tensor, got {value!r}")
    dtype = torch.int64 if integer else like.dtype
    t = torch.as_tensor(value, dtype=dtype if isinstance(value, Real) else None).to(like.device, dtype)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
        raise ValueError(f"{who}: {name} must be a number or a (B,) = ({B},) tensor, "
                         f"got shape {tuple(t.shape)}")
    # The values are checked on the host together with the first convergence test (one read):
    # see `_setup_read`.
    bad = (t < 0).any() if integer else ((t < 0) | ~torch.isfinite(t)).any()
    pending.append((bad, name, value, who))
    return t.expand(B)


def _setup_read(pending: list, *values: Tensor) -> list:
    """One host read for the setup of a solve: the value checks of tensor arguments and ``values``.

    Raises the argument checks' ``ValueError``; returns the ``values`` as Python numbers.
    """
    flags = [bad for bad, *_ in pending]
    read = torch.stack([v.to(torch.int64) for v in (*flags, *values)]).tolist()  # flags and counts: integers
    for is_bad, (_, name, value, who) in zip(read, pending):
        if is_bad:
            raise ValueError(f"{who}: {name} must be finite and >= 0, got {value!r}")
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


class GMRESResult(NamedTuple):
    """The result of `gmres`; tensors are ``(B, ...)``.

    Attributes:
        x: the solutions, ``(B, n)``.
        iterations: products spent on each instance (those of the restarts' residuals included), ``(B,)`` int64.
        residual: ``|b - A x|`` per instance, computed from a product at the end, ``(B,)``.
        converged: ``residual <= tol * |b|`` per instance, ``(B,)`` bool.
    """

    x: Tensor
    iterations: Tensor
    residual: Tensor
    converged: Tensor


def gmres(matvec: Callable[[Tensor], Tensor], b: Tensor, *, tol: float | Tensor = 1e-10,
          max_iters: int | Tensor = 1000, restart: int = 50) -> GMRESResult:
    """Solve ``A_i x_i = b_i`` for every instance i by restarted GMRES (any nonsingular A_i).

    Args:
        matvec: ``v -> A v``, ``(B, n) -> (B, n)``; instances must not interact.
        b: right-hand sides, ``(B, n)``.
        tol: relative tolerance, a float or ``(B,)``: instance i has converged once ``|b_i - A_i x_i| <= tol_i |b_i|``.
        max_iters: the most products per instance (those of its Krylov vectors and of its residuals), an
            int or ``(B,)`` ints.
        restart: the Krylov basis kept between restarts (memory ``B * restart * n``).

    Returns:
        `GMRESResult`. Each cycle builds an orthonormal basis ``V`` of the Krylov space of the residual
        r (Arnoldi with classical Gram-Schmidt applied twice), with ``A V_k = V_{k+1} H``, and moves x by
        ``V_k y``, ``y = argmin |beta e_1 - H y|`` (``beta = |r|``, a pseudo-inverse, so an exact
        breakdown is harmless). Every instance is stepped until all have stopped, but an instance that
        has stopped keeps its x.
    """
    if not callable(matvec):
        raise TypeError(f"gmres: matvec must be callable, got {type(matvec).__name__}")
    if not isinstance(b, Tensor) or b.dim() != 2 or not b.is_floating_point():
        raise ValueError(f"gmres: b must be a floating (B, n) tensor, got {getattr(b, 'shape', type(b).__name__)}")
    if isinstance(restart, bool) or not isinstance(restart, int) or restart < 1:
        raise ValueError(f"gmres: restart must be a positive int, got {restart!r}")
    B, n = b.shape
    pending: list = []
    tol = _per_instance(tol, "tol", B, b, pending, who="gmres")
    cap = _per_instance(max_iters, "max_iters", B, b, pending, integer=True, who="gmres")
    tiny = torch.finfo(b.dtype).tiny
    x = torch.zeros_like(b)
    threshold = tol * torch.linalg.vector_norm(b, dim=-1)
    r, rnorm = b, torch.linalg.vector_norm(b, dim=-1)
    iterations = torch.zeros(B, dtype=torch.int64, device=b.device)
    done = (rnorm <= threshold) | (cap <= 0)
    (cap_max,) = _setup_read(pending, cap.max())
    cap_max = int(cap_max)
    spent = 0
    while spent < cap_max and not bool(done.all()):
        k = min(restart, n, cap_max - spent)
        V = b.new_zeros(B, k + 1, n)
        H = b.new_zeros(B, k + 1, k)
        V[:, 0] = r / rnorm.clamp_min(tiny).unsqueeze(-1)
        for j in range(k):
            w = matvec(V[:, j])
            basis = V[:, :j + 1]
            h = torch.bmm(basis, w.unsqueeze(-1))
            w = w - torch.bmm(basis.mT, h).squeeze(-1)
            h2 = torch.bmm(basis, w.unsqueeze(-1))  # the second pass restores orthogonality lost to rounding
            w = w - torch.bmm(basis.mT, h2).squeeze(-1)
            H[:, :j + 1, j] = (h + h2).squeeze(-1)
            wn = torch.linalg.vector_norm(w, dim=-1)
            H[:, j + 1, j] = wn
            V[:, j + 1] = torch.where((wn > tiny).unsqueeze(-1), w / wn.clamp_min(tiny).unsqueeze(-1), 0.0)
        # an instance whose cap falls inside the cycle uses only the products it may spend (the rest of the
        # columns of H are zeroed, so the least-squares coefficients of their vectors are 0)
        used = torch.minimum((cap - iterations - 1).clamp_min(0), torch.full_like(cap, k))
        H = H * (torch.arange(k, device=b.device) < used.unsqueeze(-1)).unsqueeze(-2)
        rhs = torch.zeros(B, k + 1, 1, dtype=b.dtype, device=b.device)
        rhs[:, 0, 0] = rnorm
        y = torch.linalg.pinv(H) @ rhs
        x = torch.where(done.unsqueeze(-1), x, x + torch.bmm(V[:, :k].mT, y).squeeze(-1))
        r = b - matvec(x)
        rnorm = torch.where(done, rnorm, torch.linalg.vector_norm(r, dim=-1))
        iterations = iterations + torch.where(done, 0, used + 1)
        spent += k + 1
        done = done | (rnorm <= threshold) | (iterations >= cap)
    return GMRESResult(x, iterations, rnorm, rnorm <= threshold)
