"""Unconstrained bilinear games ``min_x max_y x^T A y + b^T x + c^T y``.

The operator ``F(x, y) = (A y + b, -(A^T x + c))`` is monotone (skew) and
L-Lipschitz with ``L = |A|_2``; for invertible A the unique saddle point is
``x* = -A^-T c``, ``y* = -A^-1 b`` (the reference, by a linear solve). Simultaneous
GDA diverges on every such game; the extragradient family converges linearly
(Daskalakis, Ilyas, Syrgkanis and Zeng 2018, arXiv 1711.00141; Gidel et al. 2019,
arXiv 1802.10551).
"""

from __future__ import annotations

import torch

from saddle import BilinearProblem, Linear, Reference

from . import register
from .batch import check_positive, check_positive_int, make_batch

__all__ = ["bilinear", "xy"]


def _orthogonal(B: int, n: int, gen: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(B, n, n, dtype=torch.float64, generator=gen))
    return q * torch.sign(torch.diagonal(r, dim1=-2, dim2=-1)).unsqueeze(-2)


def _game(A, b, c, x0, y0, batch, name) -> BilinearProblem:
    """The bilinear game with data in float64 on the CPU; reference by linear solves."""
    # (+ 0.0 turns the -0.0 of a zero right-hand side into 0.0)
    x_star = torch.linalg.solve(A.mT, -c.unsqueeze(-1)).squeeze(-1) + 0.0
    y_star = torch.linalg.solve(A, -b.unsqueeze(-1)).squeeze(-1) + 0.0
    value = (x_star.unsqueeze(-2) @ A @ y_star.unsqueeze(-1)).reshape(-1) + (b * x_star).sum(-1) + (c * y_star).sum(-1)
    p = batch.place
    return BilinearProblem(
        p(A.mT), p(x0), p(y0), g=Linear(p(b)), h_conj=Linear(p(-c)),
        reference=Reference((p(x_star), p(y_star)), p(value), unique=True, source="closed form (linear solve)"),
        lipschitz=torch.linalg.matrix_norm(A, ord=2), name=name,
    )


@register("bilinear")
def bilinear(n: int = 20, *, sigma_min: float = 0.5, sigma_max: float = 1.0, batch_size: int = 1, seed: int = 0,
             device=None, dtype=torch.float64) -> BilinearProblem:
    """A batch of random unconstrained bilinear games with square A.

    ``A = U diag(s) V^T`` with Haar-random orthogonal U, V and singular values
    s uniform in ``[sigma_min, sigma_max]``, so ``L = max s`` and the linear
    rate of extragradient is governed by ``sigma_min / sigma_max``; b and c are
    standard normal; the start is ``x0 = y0 = 0``.

    Args:
        n: dimension of each player.
        sigma_min: the smallest possible singular value of A.
        sigma_max: the largest possible singular value of A (the Lipschitz constant L).
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    sigma_min, sigma_max = check_positive(sigma_min, "sigma_min"), check_positive(sigma_max, "sigma_max")
    if sigma_min > sigma_max:
        raise ValueError(f"sigma_min ({sigma_min}) must be <= sigma_max ({sigma_max})")
    B, gen = batch.size, batch.generator()
    s = sigma_min + (sigma_max - sigma_min) * torch.rand(B, n, dtype=torch.float64, generator=gen)
    A = _orthogonal(B, n, gen) @ torch.diag_embed(s) @ _orthogonal(B, n, gen).mT
    b = torch.randn(B, n, dtype=torch.float64, generator=gen)
    c = torch.randn(B, n, dtype=torch.float64, generator=gen)
    zeros = torch.zeros(B, n, dtype=torch.float64)
    return _game(A, b, c, zeros, zeros, batch, f"bilinear(n={n})")


@register("xy")
def xy(*, x0: float = 1.0, y0: float = 1.0, batch_size: int = 1, seed: int = 0, device=None,
       dtype=torch.float64) -> BilinearProblem:
    """The scalar game ``min_x max_y x y`` from ``(x0, y0)``: the teaching example.

    Its only saddle point is (0, 0). Simultaneous GDA spirals out for every
    step (the iteration matrix has eigenvalues ``1 +- i eta`` of modulus
    ``sqrt(1 + eta^2) > 1``); alternating GDA cycles on a bounded orbit
    (determinant 1); extragradient and optimistic methods converge linearly.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    B = batch.size
    A = torch.ones(B, 1, 1, dtype=torch.float64)
    zeros = torch.zeros(B, 1, dtype=torch.float64)
    return _game(A, zeros, zeros, torch.full((B, 1), float(x0), dtype=torch.float64),
                 torch.full((B, 1), float(y0), dtype=torch.float64), batch, "xy")
