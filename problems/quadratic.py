"""Strongly-convex-strongly-concave quadratic games, unconstrained or on boxes.

``f(x, y) = 1/2 x^T P x + x^T A y - 1/2 y^T Q y + b^T x - c^T y`` with P, Q
symmetric positive definite, i.e. a `saddle.BilinearProblem` with
``K = A^T``, ``g = Quadratic(P, b)``, ``h* = Quadratic(Q, c)``. The operator
``F(z) = M z + q``, ``M = [[P, A], [-A^T, Q]]``, is mu-strongly monotone with
``mu = min(lambda_min(P), lambda_min(Q))``.

References: unconstrained, the linear solve ``M z* = -q``; on a box, cvxpy
(Clarabel) on the dual reformulation of the inner maximization, polished on
its active set (`problems.reference.box_quadratic_saddle`). Linear convergence of
gradient methods on this class: Facchinei and Pang 2003 (the VI book, Ch. 12);
Mokhtari, Ozdaglar and Pattathil 2020 (arXiv 1901.08511).
"""

from __future__ import annotations

import torch

from saddle import BilinearProblem, Box, Quadratic, Reference

from . import register
from .batch import check_positive, check_positive_int, make_batch
from .bilinear import _orthogonal
from .reference import affine_vi_solution, box_quadratic_saddle

__all__ = ["quadratic"]


@register("quadratic")
def quadratic(n: int = 10, m: int | None = None, *, mu: float = 0.1, smoothness: float = 1.0, coupling: float = 1.0,
              box: float | None = None, batch_size: int = 1, seed: int = 0, device=None,
              dtype=torch.float64) -> BilinearProblem:
    """A batch of random strongly-convex-strongly-concave quadratic games.

    Args:
        n: the dimension of x.
        m: the dimension of y (default n).
        mu: the smallest eigenvalue of P and of Q: the problem is mu-strongly monotone.
        smoothness: the largest possible eigenvalue of P and Q (eigenvalues are
            uniform in ``[mu, smoothness]``).
        coupling: A has i.i.d. normal entries scaled to spectral norm ``coupling``.
        box: None (unconstrained) or r > 0 for the boxes ``[-r, r]^n`` and ``[-r, r]^m``.

    The start is ``x0 = y0 = 0``; b and c are standard normal, so with a small
    box the solution has active bounds.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    m = n if m is None else check_positive_int(m, "m")
    mu, smoothness = check_positive(mu, "mu"), check_positive(smoothness, "smoothness")
    coupling = check_positive(coupling, "coupling")
    if mu > smoothness:
        raise ValueError(f"mu ({mu}) must be <= smoothness ({smoothness})")
    if box is not None:
        box = check_positive(box, "box")
    B, gen = batch.size, batch.generator()

    def spd(k: int) -> torch.Tensor:
        eig = mu + (smoothness - mu) * torch.rand(B, k, dtype=torch.float64, generator=gen)
        eig[:, 0] = mu
        U = _orthogonal(B, k, gen)
        S = U @ torch.diag_embed(eig) @ U.mT
        return 0.5 * (S + S.mT)

    P, Q = spd(n), spd(m)
    A = torch.randn(B, n, m, dtype=torch.float64, generator=gen)
    A = A * (coupling / torch.linalg.matrix_norm(A, ord=2)).reshape(B, 1, 1)
    b = torch.randn(B, n, dtype=torch.float64, generator=gen)
    c = torch.randn(B, m, dtype=torch.float64, generator=gen)
    M = torch.cat([torch.cat([P, A], -1), torch.cat([-A.mT, Q], -1)], -2)
    q = torch.cat([b, c], -1)

    if box is None:
        def reference():
            z = affine_vi_solution(M, q)
            return Reference((batch.place(z[:, :n]), batch.place(z[:, n:])), unique=True,
                             source="closed form (linear solve)")
        X = Y = None
    else:
        def reference():
            xs, ys = [], []
            for i in range(B):
                x, y = box_quadratic_saddle(P[i].numpy(), Q[i].numpy(), A[i].numpy(), b[i].numpy(), c[i].numpy(),
                                            -box, box)
                xs.append(torch.from_numpy(x))
                ys.append(torch.from_numpy(y))
            return Reference((batch.place(torch.stack(xs)), batch.place(torch.stack(ys))), unique=True,
                             source="cvxpy (Clarabel), active-set polished")
        X, Y = Box(-box, box), Box(-box, box)

    zeros_x, zeros_y = torch.zeros(B, n, dtype=torch.float64), torch.zeros(B, m, dtype=torch.float64)
    place = batch.place
    return BilinearProblem(
        place(A.mT), place(zeros_x), place(zeros_y), g=Quadratic(place(P), place(b)), h_conj=Quadratic(place(Q), place(c)),
        X=X, Y=Y, reference=reference if box is not None else reference(),
        lipschitz=torch.linalg.matrix_norm(M, ord=2), strong_monotonicity=torch.full((B,), mu, dtype=torch.float64),
        name=f"quadratic(n={n}, m={m}{'' if box is None else f', box={box}'})",
    )
