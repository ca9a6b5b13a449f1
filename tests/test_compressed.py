"""Compressors, MASHA1 / MASHA2 and the baselines on distributed problems (simulated backend).

Answers are independent of the solvers: the exact solution of the bilinear
problem by a linear solve of the averaged operator (rebuilt here from the
workers' data), and bit counts recomputed from k, d, M, the number of rounds
and the full synchronizations observed (the reference point moving).
"""

from __future__ import annotations

import math

import pytest
import torch

import problems
import saddle
from saddle import Status
from saddle.compress import (
    Identity, NaturalCompression, PermK, RandK, RandomDithering, RandomKey, TopK, get_compressor, uniform,
)
from saddle.distributed import DistributedProblem, SimulatedGroup


def _key(B=2, m=3, round=0, stream=1, M=None):
    return RandomKey(torch.arange(B, dtype=torch.int64), torch.full((B,), round, dtype=torch.int64), stream,
                     torch.arange(m), M or m)


# -- compressors ----------------------------------------------------------------------------------

def test_uniform_is_deterministic_in_range_and_independent_of_the_batch():
    seed = torch.tensor([7, 7, 3])
    rnd = torch.tensor([4, 4, 9])
    u = uniform(seed, rnd, 2, torch.arange(3), 50)
    assert u.shape == (3, 3, 50) and u.dtype == torch.float64
    assert (u > 0).all() and (u < 1).all()
    torch.testing.assert_close(u[0], u[1], rtol=0, atol=0)  # same (seed, round): same numbers
    alone = uniform(seed[2:], rnd[2:], 2, torch.arange(3), 50)
    assert torch.equal(alone[0], u[2])
    assert not torch.equal(u[0, 0], u[0, 1])  # workers draw differently
    many = torch.cat([uniform(seed, torch.full((3,), r), 1, torch.arange(2), 100).flatten() for r in range(200)])
    assert abs(many.mean().item() - 0.5) < 0.01 and abs(many.var().item() - 1 / 12) < 0.005


def test_randk_keeps_k_scaled_coordinates_and_is_unbiased_with_omega():
    d, k = 20, 5
    x = torch.randn(2, 3, d, dtype=torch.float64)
    c = RandK(k=k)
    q = c.compress(x, _key())
    kept = q != 0
    assert (kept.sum(-1) == k).all()
    torch.testing.assert_close(q[kept], (d / k) * x[kept], rtol=0, atol=0)
    assert c.omega(d) == d / k - 1
    N = 3000
    draws = torch.stack([c.compress(x, _key(round=r)) for r in range(N)])
    mean, var = draws.mean(0), (draws - x).square().sum(-1).mean(0)
    # E Q(x) = x (per coordinate sd of the mean: |x_i| sqrt((d/k - 1) / N)) and E|Q(x) - x|^2 = omega |x|^2.
    assert ((mean - x).abs() <= 5 * x.abs() * math.sqrt((d / k - 1) / N) + 1e-12).all()
    torch.testing.assert_close(var, (d / k - 1) * x.square().sum(-1), rtol=0.1, atol=0)


def test_topk_is_contractive_with_delta_k_over_d():
    d, k = 30, 6
    x = torch.randn(4, 2, d, dtype=torch.float64)
    c = TopK(k=k)
    q = c.compress(x, _key(B=4, m=2))
    assert ((q != 0).sum(-1) == k).all()
    threshold = x.abs().sort(-1, descending=True).values[..., k - 1:k]
    assert (x.abs()[q != 0] >= threshold.expand_as(x)[q != 0]).all()
    assert c.delta(d) == k / d
    assert ((q - x).square().sum(-1) <= (1 - k / d) * x.square().sum(-1) + 1e-12).all()


def test_permk_splits_the_coordinates_among_workers():
    d, M = 23, 4
    x = torch.randn(2, 1, d, dtype=torch.float64).expand(2, M, d)  # the same vector at every worker
    c = PermK()
    q = c.compress(x, _key(m=M))
    torch.testing.assert_close(q.mean(1), x[:, 0], rtol=0, atol=1e-15)  # the average is exact
    assert ((q != 0).sum(1) == 1).all()  # each coordinate sent by exactly one worker
    counts = (q != 0).sum(-1)
    assert counts.tolist() == [[6, 6, 6, 5]] * 2
    assert [c.bits(d, torch.float64, m, M) for m in range(M)] == [6 * 64, 6 * 64, 6 * 64, 5 * 64]
    assert c.omega(d, M) == M - 1


@pytest.mark.parametrize("compressor", [RandomDithering(s=2), NaturalCompression()], ids=["dithering", "natural"])
def test_quantizers_are_unbiased_within_omega(compressor):
    d = 16
    x = torch.randn(1, 2, d, dtype=torch.float64)
    N = 1500
    draws = torch.stack([compressor.compress(x, _key(B=1, m=2, round=r)) for r in range(N)])
    omega = compressor.omega(d)
    sd = x.square().sum(-1, keepdim=True).sqrt() * math.sqrt(omega / N)
    assert ((draws.mean(0) - x).abs() <= 5 * sd).all()
    assert ((draws - x).square().sum(-1).mean(0) <= 1.1 * omega * x.square().sum(-1)).all()


def test_bits_are_exact_formulas():
    d = 100
    assert Identity().bits(d, torch.float64) == 6400 and Identity().bits(d, torch.float32) == 3200
    assert RandK(k=10).bits(d, torch.float64) == 10 * (64 + 7)
    assert RandK(k=10, send_indices=False).bits(d, torch.float64) == 640
    assert TopK(k=3).bits(d, torch.float32) == 3 * (32 + 7)
    assert RandK(ratio=0.05).bits(d, torch.float64) == 5 * 71
    assert RandomDithering(s=3).bits(d, torch.float64) == 64 + 100 * 3
    assert NaturalCompression().bits(d, torch.float64) == 1200 and NaturalCompression().bits(d, torch.float32) == 900
    key = _key(B=3, m=2)
    assert RandK(k=4).message_bits(torch.zeros(3, 2, 16), key).tolist() == [[4 * (32 + 4)] * 2] * 3


def test_compressors_reject_bad_settings():
    with pytest.raises(ValueError, match="k must be"):
        RandK(k=0)
    with pytest.raises(ValueError, match="ratio must be"):
        TopK(ratio=1.5)
    with pytest.raises(ValueError, match="s must be"):
        RandomDithering(s=0)
    with pytest.raises(ValueError, match="larger than the dimension"):
        RandK(k=11).compress(torch.zeros(1, 1, 10), _key(B=1, m=1))
    with pytest.raises(TypeError, match="compressor must be"):
        get_compressor("gzip")
    with pytest.raises(TypeError, match="send_indices"):
        RandK(k=1, send_indices=1)
    assert isinstance(get_compressor(None), Identity) and isinstance(get_compressor("topk"), TopK)


# -- solvers on distributed_bilinear ------------------------------------------------------------

def _problem(**kw):
    base = dict(n=8, workers=4, lam=1.0, batch_size=2, seed=5)
    base.update(kw)
    return problems.get("distributed_bilinear", **base)


def _exact_solution(problem):
    """``z* = -Mbar^-1 cbar`` from the workers' data (all workers are held: simulated)."""
    A = problem.local_operator.A.mean(1)
    c = problem.local_operator.c.mean(1)
    return torch.linalg.solve(A, -c.unsqueeze(-1)).squeeze(-1)


def _distance(z, z_star):
    return (torch.cat(z, -1) - z_star).norm(dim=-1)


@pytest.mark.parametrize("solver,compressor", [("masha1", RandK(k=2)), ("masha2", TopK(k=2)),
                                               ("masha1", PermK()), ("distributed_eg", None)])
def test_converges_linearly_to_the_exact_solution(solver, compressor):
    problem = _problem()
    z_star = _exact_solution(problem)
    torch.testing.assert_close(torch.cat(problem.reference.solution, -1), z_star, rtol=0, atol=1e-12)
    kw = {} if compressor is None else {"compressor": compressor}
    sol = saddle.solve(problem, solver, tol=1e-7, measure="distance", max_iters=20_000, check_every=20, **kw)
    assert (sol.status == Status.CONVERGED).all(), sol
    assert _distance(sol.z, z_star).max() <= 1e-6
    # Linear: the distance falls by comparable factors over the first and second halves of the run.
    dist = sol.history["distance"][:, 0]
    T = len(dist) - 1
    first, second = dist[T // 2] / dist[0], dist[T] / dist[T // 2]
    assert first < 1e-2 and second < 1e-2, (first, second)
    assert (sol.counts["bits_sent"] == sol.counts["bits_up"] + sol.counts["bits_down"]).all()


def test_compressed_eg_without_variance_reduction_stalls_where_masha1_converges():
    problem = _problem(batch_size=1)
    z_star = _exact_solution(problem)
    plain = saddle.solve(problem, "compressed_eg", compressor=RandK(k=2), tol=1e-6, measure="distance",
                         max_iters=2000, check_every=100)
    assert plain.status[0] == Status.MAX_ITERS and _distance(plain.z, z_star)[0] > 1e-3
    vr = saddle.solve(problem, "masha1", compressor=RandK(k=2), tol=1e-6, measure="distance", max_iters=20_000)
    assert vr.status[0] == Status.CONVERGED


def _run(problem, solver, steps):
    """``steps`` rounds by hand; returns the state and the full synchronizations seen (w moving)."""
    z = problem.z0
    state = solver.init(problem, z)
    syncs = torch.zeros(problem.batch_size, dtype=torch.int64)
    for _ in range(steps):
        w_old = state.w
        z, state = solver.step(problem, z, state)
        if w_old is not None:
            syncs += torch.stack([(a != b).any(-1) for a, b in zip(state.w, w_old)]).any(0).long()
    return state, syncs


@pytest.mark.parametrize("bidirectional", [False, True])
def test_masha1_counts_bits_exactly(bidirectional):
    M, n, k, N = 4, 8, 3, 300
    d, vb, ib = 2 * n, 64, math.ceil(math.log2(2 * n))
    problem = _problem(n=n, workers=M, batch_size=3)
    solver = saddle.get_solver("masha1", compressor=RandK(k=k), server_compressor=RandK(k=5) if bidirectional else None,
                               seed=torch.tensor([0, 1, 2]))
    state, syncs = _run(problem, solver, N)
    assert torch.equal(state.syncs, syncs)
    p = k / d  # the default: 1 / (1 + omega)
    assert (syncs - N * p).abs().max() <= 4 * math.sqrt(N * p * (1 - p))
    full = M * d * vb
    up = full + N * M * k * (vb + ib) + syncs * full
    down = full + N * M * (5 * (vb + ib) if bidirectional else d * vb) + syncs * full
    assert torch.equal(state.bits_up, up) and torch.equal(state.bits_down, down)
    assert torch.equal(state.bits_sent, up + down)
    assert torch.equal(state.operator_calls, 1 + N + syncs)


def test_masha1_partial_participation_counts_participants_only():
    M, n, k, r, N = 5, 6, 2, 2, 200
    d, vb, ib = 2 * n, 64, math.ceil(math.log2(2 * n))
    problem = _problem(n=n, workers=M, batch_size=1)
    solver = saddle.get_solver("masha1", compressor=RandK(k=k), participation=r, p=0.25)
    state, syncs = _run(problem, solver, N)
    assert torch.equal(state.bits_up, M * d * vb + N * r * k * (vb + ib) + syncs * M * d * vb)
    sol = saddle.solve(problem, solver, tol=1e-6, measure="distance", max_iters=40_000)
    assert sol.status[0] == Status.CONVERGED, sol
    assert _distance(sol.z, _exact_solution(problem))[0] <= 1e-6


def test_masha2_and_baselines_count_bits_exactly():
    M, n, k, N = 4, 8, 3, 200
    d, vb, ib = 2 * n, 64, math.ceil(math.log2(2 * n))
    problem = _problem(n=n, workers=M, batch_size=2)
    full = M * d * vb
    state, syncs = _run(problem, saddle.get_solver("masha2", compressor=TopK(k=k), server_compressor=TopK(k=4)), N)
    assert torch.equal(state.syncs, syncs) and (syncs > 0).all()
    assert torch.equal(state.bits_up, full + N * M * k * (vb + ib) + syncs * full)
    assert torch.equal(state.bits_down, full + N * M * 4 * (vb + ib) + syncs * full)
    assert torch.equal(state.operator_calls, 1 + N + syncs)
    state, _ = _run(problem, saddle.get_solver("distributed_eg"), N)
    assert (state.bits_up == (1 + 2 * N) * full).all() and (state.bits_down == (1 + 2 * N) * full).all()
    assert (state.operator_calls == 1 + 2 * N).all()
    state, _ = _run(problem, saddle.get_solver("compressed_eg", compressor=RandK(k=k)), N)
    assert (state.bits_up == 2 * N * M * k * (vb + ib)).all() and (state.bits_down == 2 * N * full).all()
    assert (state.operator_calls == 2 * N).all()


def test_masha1_on_a_data_split_matrix_game_approaches_the_highs_equilibrium():
    problem = problems.get("distributed_matrix_game", n=5, m=4, workers=3, batch_size=2, seed=1)
    assert problem.reference is not None
    sol = saddle.solve(problem, "masha1", compressor=RandK(k=3), tol=1e-4, measure="distance", max_iters=20_000,
                       check_every=50)
    assert (sol.status == Status.CONVERGED).all(), sol
    with pytest.raises(ValueError, match="masha2 needs an unconstrained problem"):
        saddle.solve(problem, "masha2")


def test_distributed_problem_checks_its_arguments():
    with pytest.raises(ValueError, match="workers must be"):
        problems.get("distributed_bilinear", workers=0)
    with pytest.raises(ValueError, match="lam must be"):
        problems.get("distributed_bilinear", lam=-1.0)
    with pytest.raises(ValueError, match="heterogeneity must be"):
        problems.get("distributed_bilinear", heterogeneity=float("nan"))
    with pytest.raises(ValueError, match="workers = 3 but the group has 2"):
        problems.get("distributed_bilinear", workers=3, group=SimulatedGroup(2))
    with pytest.raises(ValueError, match="size must be"):
        SimulatedGroup(0)
    with pytest.raises(TypeError, match="group must be a WorkerGroup"):
        DistributedProblem(lambda v: v[:, None], saddle.Reals(), torch.zeros(1, 2), group="x")
    # Heterogeneity 0: every worker holds the same operator.
    same = problems.get("distributed_bilinear", n=3, workers=3, heterogeneity=0.0)
    F = same.local_F(torch.randn(1, 6, dtype=torch.float64))
    torch.testing.assert_close(F[:, 0], F[:, 2], rtol=0, atol=0)
