"""Distributed problems: an operator split over M workers, ``F = (1/M) sum_m F_m``.

Every process generates all M workers' data from the seed (cheap), keeps the
shards of the workers it holds (`saddle.distributed.WorkerGroup.workers`) and
computes the reference from the whole problem, so a `torch.distributed` run
and a simulated one see the same problem.

- ``distributed_bilinear``: the bilinear experiment of Beznosikov et al.
  (arXiv 2110.03313): ``f(x, y) = (1/M) sum_m f_m(x, y)`` with
  ``f_m(x, y) = x^T A_m y + a_m^T x - b_m^T y + (lam/2) |x|^2 - (lam/2) |y|^2``,
  strongly-convex-strongly-concave; heterogeneity controls how far the
  workers' data are from their average. With ``samples=N`` each worker's
  operator is also a finite sum of N samples (row blocks of its data), for the
  minibatch variants of MASHA.
- ``distributed_matrix_game``: a matrix game whose payoff is the average of
  M workers' payoffs (a data-split game), on simplices; reference by HiGHS.
- ``distributed_quadratic``: a strongly monotone affine VI on R^n whose workers'
  operators are diagonal + 2x2-block skew + low rank (`StructuredWorkers`,
  O(n) data and work per worker, so n can reach 10^7); the solution is chosen
  and known in closed form. Unlike the two above, every process generates only
  the data of the workers it holds, from per-(instance, worker) seeds.
"""

from __future__ import annotations

import hashlib
import math

import torch

from saddle import Product, Reals, Reference, Simplex
from saddle.distributed import AffineWorkers, DistributedProblem, StructuredWorkers, make_group

from . import register
from .batch import check_positive, check_positive_int, make_batch
from .reference import matrix_game_lp

__all__ = ["distributed_bilinear", "distributed_matrix_game", "distributed_quadratic"]


def _workers_and_group(workers, group):
    if group is not None and workers is None:
        group = make_group(group)
        return group.size, group
    workers = check_positive_int(10 if workers is None else workers, "workers")
    return workers, make_group(group, workers)


def _check_nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


@register("distributed_bilinear")
def distributed_bilinear(n: int = 50, *, workers: int | None = None, lam: float = 0.25, heterogeneity: float = 1.0,
                         samples: int | None = None, group=None, batch_size: int = 1, seed: int = 0, device=None,
                         dtype=torch.float64) -> DistributedProblem:
    """The paper's distributed bilinear saddle problem, a sum of M local strongly-convex-strongly-concave games.

    Worker m's operator is ``F_m(x, y) = (A_m y + a_m + lam x, -A_m^T x + b_m + lam y)``
    with ``A_m = A + heterogeneity G_m``, ``a_m = a + heterogeneity g_m``,
    ``b_m = b + heterogeneity h_m``; A and every ``G_m`` have i.i.d. ``N(0, 1/n)``
    entries, a, b, ``g_m``, ``h_m`` standard normal. F is ``lam``-strongly monotone
    with ``L = sqrt(lam^2 + |Abar|_2^2)`` (``Abar`` the workers' average), and
    ``L_m = sqrt(lam^2 + |A_m|_2^2)``. The unique solution ``z* = -Mbar^-1 cbar``
    comes from a linear solve. The start is ``x0 = y0 = 0``.

    **Samples.** With ``samples=N`` worker m's data are also a finite sum
    ``F_m = (1/N) sum_j F_{m,j}``: the n rows of ``(A_m, a_m)`` (the x-equations)
    are split into N contiguous blocks ``I_j`` of nearly equal size, and sample j
    holds block ``I_j`` scaled by N (``P_j`` the 0/1 diagonal selecting ``I_j``)::

        F_{m,j}(x, y) = (N P_j (A_m y + a_m) + lam x,  -(N P_j A_m)^T x + b_m + lam y)

    Every sample is ``lam``-strongly monotone with ``L_{m,j} = sqrt(lam^2 + N^2 |P_j A_m|_2^2)``
    (``sample_lipschitz`` reports ``sqrt((1/N) sum_j L_{m,j}^2)`` per worker); the
    average over j is exactly ``F_m`` (the full operator is still computed from
    ``A_m``), so the solution and the random data are the same as without samples.

    Args:
        n: the dimension of each player (d = 2n coordinates in all).
        workers: the number of workers M (default: the group's size, or 10).
        lam: the regularization, the strong monotonicity constant mu.
        heterogeneity: the scale of the workers' deviations from the average data (0: identical workers).
        samples: N, split each worker's operator into N samples (row blocks; 1 <= N <= n), or None.
        group: a `saddle.distributed.WorkerGroup`, None / ``"simulated"`` (M simulated workers), or ``"gloo"``.
        batch_size: the number of independent instances B.
        seed: the seed of the data (the same on every process).
        device: where the tensors live.
        dtype: their dtype (float64 by default).
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    lam = check_positive(lam, "lam")
    heterogeneity = _check_nonnegative(heterogeneity, "heterogeneity")
    if samples is not None:
        samples = check_positive_int(samples, "samples")
        if samples > n:
            raise ValueError(f"samples must be at most n = {n} (each sample holds at least one row), got {samples}")
    M, group = _workers_and_group(workers, group)
    B, gen = batch.size, batch.generator()
    scale = n ** -0.5
    A = scale * torch.randn(B, 1, n, n, dtype=torch.float64, generator=gen)
    a = torch.randn(B, 1, n, dtype=torch.float64, generator=gen)
    b = torch.randn(B, 1, n, dtype=torch.float64, generator=gen)
    A_m = A + heterogeneity * scale * torch.randn(B, M, n, n, dtype=torch.float64, generator=gen)
    a_m = a + heterogeneity * torch.randn(B, M, n, dtype=torch.float64, generator=gen)
    b_m = b + heterogeneity * torch.randn(B, M, n, dtype=torch.float64, generator=gen)
    eye = lam * torch.eye(n, dtype=torch.float64).expand(B, M, n, n)
    mats = torch.cat([torch.cat([eye, A_m], -1), torch.cat([-A_m.mT, eye], -1)], -2)  # (B, M, 2n, 2n)
    offsets = torch.cat([a_m, b_m], -1)
    M_bar, c_bar = mats.mean(1), offsets.mean(1)
    z_star = -torch.linalg.solve(M_bar, c_bar.unsqueeze(-1)).squeeze(-1) + 0.0
    L = torch.sqrt(lam**2 + torch.linalg.matrix_norm(A_m.mean(1), ord=2) ** 2)
    L_m = torch.sqrt(lam**2 + torch.linalg.matrix_norm(A_m, ord=2) ** 2)
    held = list(group.workers)
    p = batch.place
    components, L_hat, name = None, None, f"distributed_bilinear(n={n}, M={M})"
    if samples is not None:
        N = samples
        rows = torch.zeros(N, n, dtype=torch.float64)
        for j, block in enumerate(torch.arange(n).tensor_split(N)):
            rows[j, block] = float(N)
        A_j = rows.view(1, 1, N, n, 1) * A_m[:, held].unsqueeze(2)            # N P_j A_m: (B, m, N, n, n)
        a_j = rows.view(1, 1, N, n) * a_m[:, held].unsqueeze(2)
        eye_j = lam * torch.eye(n, dtype=torch.float64).expand(*A_j.shape)
        mats_j = torch.cat([torch.cat([eye_j, A_j], -1), torch.cat([-A_j.mT, eye_j], -1)], -2)
        offsets_j = torch.cat([a_j, b_m[:, held].unsqueeze(2).expand(B, len(held), N, n)], -1)
        components = (p(mats_j), p(offsets_j))
        # Lhat_m over every worker (known to every process): sqrt((1/N) sum_j (lam^2 + N^2 |P_j A_m|^2)).
        block_norms = torch.stack([torch.linalg.matrix_norm(A_m[:, :, block], ord=2)
                                   for block in torch.arange(n).tensor_split(N)], -1)   # (B, M, N)
        L_hat = torch.sqrt(lam**2 + (N * block_norms).square().mean(-1))
        name = f"distributed_bilinear(n={n}, M={M}, N={N})"
    zeros = torch.zeros(B, n, dtype=torch.float64)
    return DistributedProblem(
        AffineWorkers(p(mats[:, held]), p(offsets[:, held]), components), Product(Reals(), Reals()),
        (p(zeros), p(zeros)), group=group, local_lipschitz=L_m, sample_lipschitz=L_hat, lipschitz=L,
        strong_monotonicity=torch.full((B,), lam),
        reference=Reference((p(z_star[:, :n]), p(z_star[:, n:])), unique=True,
                            source="closed form (linear solve of the averaged operator)"),
        name=name)


@register("distributed_matrix_game")
def distributed_matrix_game(n: int = 20, m: int | None = None, *, workers: int | None = None,
                            heterogeneity: float = 1.0, group=None, batch_size: int = 1, seed: int = 0, device=None,
                            dtype=torch.float64) -> DistributedProblem:
    """A matrix game ``min_{x in simplex} max_{y in simplex} x^T A y`` with ``A = (1/M) sum_m A_m`` split over workers.

    ``A_m = A + heterogeneity G_m`` with A and ``G_m`` uniform in [-1, 1]; worker
    m's operator is ``F_m(x, y) = (A_m y, -A_m^T x)``. Monotone, not strongly:
    use `saddle.solvers.MASHA1` (prox steps are projections onto the simplices).
    The reference equilibrium of the averaged game is HiGHS's
    (`problems.reference.matrix_game_lp`), computed when first read.

    Args:
        n: the minimizing player's number of pure strategies.
        m: the maximizing player's (default n).
        workers: the number of workers M (default: the group's size, or 10).
        heterogeneity: the scale of the workers' deviations from the average payoff.
        group: a `saddle.distributed.WorkerGroup`, None / ``"simulated"``, or ``"gloo"``.
        batch_size: the number of independent instances B.
        seed: the seed of the data.
        device: where the tensors live.
        dtype: their dtype (float64 by default).
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    m = n if m is None else check_positive_int(m, "m")
    heterogeneity = _check_nonnegative(heterogeneity, "heterogeneity")
    M, group = _workers_and_group(workers, group)
    B, gen = batch.size, batch.generator()
    A = 2 * torch.rand(B, 1, n, m, dtype=torch.float64, generator=gen) - 1
    A_m = A + heterogeneity * (2 * torch.rand(B, M, n, m, dtype=torch.float64, generator=gen) - 1)
    top = torch.cat([torch.zeros(B, M, n, n, dtype=torch.float64), A_m], -1)
    bottom = torch.cat([-A_m.mT, torch.zeros(B, M, m, m, dtype=torch.float64)], -1)
    mats = torch.cat([top, bottom], -2)
    A_bar = A_m.mean(1)
    L = torch.linalg.matrix_norm(A_bar, ord=2)
    L_m = torch.linalg.matrix_norm(A_m, ord=2)
    held = list(group.workers)
    p = batch.place

    def reference():
        values, xs, ys = [], [], []
        for Ai in A_bar.numpy():
            v, x, y = matrix_game_lp(Ai)
            values.append(v)
            xs.append(torch.from_numpy(x))
            ys.append(torch.from_numpy(y))
        return Reference((p(torch.stack(xs)), p(torch.stack(ys))), p(torch.tensor(values, dtype=torch.float64)),
                         unique=True, source="HiGHS (scipy.optimize.linprog) on the averaged payoff")

    x0 = torch.full((B, n), 1.0 / n, dtype=torch.float64)
    y0 = torch.full((B, m), 1.0 / m, dtype=torch.float64)
    return DistributedProblem(
        AffineWorkers(p(mats[:, held]), p(torch.zeros(B, len(held), n + m, dtype=torch.float64))),
        Product(Simplex(), Simplex()), (p(x0), p(y0)), group=group, local_lipschitz=L_m, lipschitz=L,
        reference=reference, name=f"distributed_matrix_game({n}x{m}, M={M})")


def _stream(instance_seed: int, key) -> torch.Generator:
    """A CPU generator seeded from ``(instance_seed, key)`` by a hash: the same in every process and platform."""
    text = f"distributed_quadratic/{instance_seed}/{key}".encode()
    return torch.Generator().manual_seed(int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1)


@register("distributed_quadratic")
def distributed_quadratic(n: int = 1000, *, workers: int | None = None, rank: int = 2, heterogeneity: float = 1.0,
                          mu: float = 0.1, skew: float = 1.0, lowrank: float = 1.0, group=None, batch_size: int = 1,
                          seed: int = 0, device=None, dtype=torch.float64) -> DistributedProblem:
    """A strongly monotone affine VI on R^n split over M workers with O(n) data each, its solution known exactly.

    Worker m's operator is ``F_m(z) = A_m (z - z*) + e_m`` with
    ``A_m = diag(a_m) + K_m + U_m U_m^T`` (`saddle.distributed.StructuredWorkers`):

    - ``a_m`` uniform in ``[mu, mu + 1)``, the diagonal;
    - ``K_m`` skew-symmetric, 2x2 blocks on the coordinate pairs ``(0, 1), (2, 3), ...``
      with coefficients ``s_{m,i}`` uniform in ``[-skew, skew)`` (n odd: the last coordinate has none);
    - ``U_m`` ``(n, rank)``, standard normal columns rescaled to norm ``lowrank / sqrt(rank)``,
      so ``|U_m|_F^2 = lowrank^2``;
    - ``e_m = heterogeneity (g_m - g_{(m+1) mod M})`` with ``g_m`` standard normal: the
      offsets average to zero over the M workers (and vanish for M = 1), so
      ``F(z*) = (1/M) sum_m F_m(z*) = 0`` and the standard normal ``z*`` is the
      unique solution (closed form, no solve). The workers' matrices differ too,
      whatever ``heterogeneity``.

    The constants are data-independent bounds, the same on every process: the
    symmetric part of every ``A_m`` is ``diag(a_m) + U_m U_m^T >= mu I``, so
    ``strong_monotonicity = mu`` (a lower bound); ``|A_m|_2 <= max a_m + max |s_m| +
    |U_m|_F^2``, so ``local_lipschitz = lipschitz = mu + 1 + skew + lowrank^2`` (upper
    bounds, also of the average's norm by the triangle inequality). The start is ``z0 = 0``.

    **Seeds.** Instance b of a batch is the instance of seed ``seed + b`` (solved alone,
    ``distributed_quadratic(seed=seed + b)`` gives it). Its ``z*`` comes from a generator
    seeded by a hash of ``(seed + b, "solution")``, and worker m's data
    (``g_m``, ``a_m``, ``s_m``, ``U_m``, in this order) from one seeded by a hash of
    ``(seed + b, m)``; worker m also draws ``g_{m+1}``, the first draw of worker m + 1's
    generator. So each process generates only the data of the workers it holds
    (``group.workers``, one after another: about ``(6 + rank) n`` float64 numbers at a
    time while generating, ``(2.5 + rank) n`` kept per held worker in ``dtype``), and a
    worker's data are the same whether it is simulated with the others or alone in its
    rank's process.

    Args:
        n: the dimension d (one block of n coordinates, unconstrained).
        workers: the number of workers M (default: the group's size, or 10).
        rank: r, the rank of each ``U_m U_m^T``.
        heterogeneity: the scale of the offsets ``e_m`` (0: ``F_m(z*) = 0`` for every worker).
        mu: the lower end of the diagonals, the strong monotonicity constant.
        skew: the bound on the skew coefficients (0: no skew part).
        lowrank: ``|U_m|_F`` (0: no low-rank part).
        group: a `saddle.distributed.WorkerGroup`, None / ``"simulated"`` (M simulated workers), or ``"gloo"``.
        batch_size: the number of independent instances B.
        seed: the seed of the data (the same on every process).
        device: where the tensors live.
        dtype: their dtype (float64 by default); the data are drawn in float64 on the CPU, then cast and moved.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    rank = check_positive_int(rank, "rank")
    heterogeneity = _check_nonnegative(heterogeneity, "heterogeneity")
    mu = check_positive(mu, "mu")
    skew = _check_nonnegative(skew, "skew")
    lowrank = _check_nonnegative(lowrank, "lowrank")
    M, group = _workers_and_group(workers, group)
    B, held, h = batch.size, list(group.workers), n // 2
    f64 = dict(dtype=torch.float64)
    out = dict(dtype=batch.dtype, device=batch.device)
    a = torch.empty(B, len(held), n, **out)
    s = torch.empty(B, len(held), h, **out)
    U = torch.empty(B, len(held), n, rank, **out)
    c = torch.empty(B, len(held), n, **out)
    z_star = torch.empty(B, n, **out)
    for b in range(B):
        instance = batch.seed + b
        zb = torch.randn(1, n, **f64, generator=_stream(instance, "solution"))
        for j, m in enumerate(held):
            gen = _stream(instance, m)
            g = torch.randn(n, **f64, generator=gen)
            a_m = mu + torch.rand(n, **f64, generator=gen)
            s_m = skew * (2 * torch.rand(h, **f64, generator=gen) - 1)
            U_m = torch.randn(n, rank, **f64, generator=gen)
            U_m *= (lowrank / math.sqrt(rank)) / torch.linalg.vector_norm(U_m, dim=0)
            if M > 1 and heterogeneity > 0:
                g -= torch.randn(n, **f64, generator=_stream(instance, (m + 1) % M))
                g *= heterogeneity
            else:
                g.zero_()
            one = StructuredWorkers(a_m.view(1, 1, n), s_m.view(1, 1, h), U_m.view(1, 1, n, rank), g.view(1, 1, n), zb)
            a[b, j], s[b, j], U[b, j], c[b, j] = a_m, s_m, U_m, one.c[0, 0]
            del g, a_m, s_m, U_m, one
        z_star[b] = zb[0]
    bound = mu + 1.0 + skew + lowrank ** 2
    zeros = torch.zeros(B, n, **out)
    return DistributedProblem(
        StructuredWorkers(a, s, U, c), Product(Reals()), (zeros,), group=group,
        local_lipschitz=torch.full((B, M), bound, **f64), lipschitz=torch.full((B,), bound, **f64),
        strong_monotonicity=torch.full((B,), mu, **f64),
        reference=Reference((z_star,), unique=True,
                            source="closed form (z* chosen, offsets averaging to zero over the workers)"),
        name=f"distributed_quadratic(n={n}, M={M})")
