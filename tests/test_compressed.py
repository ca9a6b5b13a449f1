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

from saddle import problems
import saddle
from saddle import Status
from saddle.compress import (
    Identity, NaturalCompression, PermK, RandK, RandomDithering, RandomKey, TopK, get_compressor, index_bits, uniform,
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
    counts = (q != 0).sum(-1)  # 5 full blocks of 4 and one of 3: 6 coordinates for three workers, 5 for one
    assert sorted(counts[0].tolist()) == sorted(counts[1].tolist()) == [5, 6, 6, 6]
    assert [c.bits(d, torch.float64, m, M) for m in range(M)] == [6 * 64] * M  # every payload holds ceil(d / M)
    assert c.omega(d, M) == M - 1
    # each coordinate goes to a uniformly random worker (the omega above): over 400 rounds every
    # worker gets coordinate 0 about 100 times
    owners = torch.stack([(c.compress(x, _key(m=M, round=r))[0, :, 0] != 0).double() for r in range(400)])
    assert ((owners.sum(0) - 100).abs() <= 5 * math.sqrt(400 * 0.25 * 0.75)).all()


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
    assert RandK(k=10, send_indices=True).bits(d, torch.float64) == 10 * (64 + 8)  # uint8 indices on the wire
    assert RandK(k=10).bits(d, torch.float64) == 640  # values only: indices from the shared seed
    assert TopK(k=3).bits(d, torch.float32) == 3 * (32 + 8)
    assert TopK(k=3).bits(1000, torch.float32) == 3 * (32 + 16) and TopK(k=3).bits(10**7, torch.float32) == 3 * 64
    assert RandK(ratio=0.05).bits(d, torch.float64) == 5 * 64
    assert RandomDithering(s=3).bits(d, torch.float64) == 64 + 100 * 3
    assert NaturalCompression().bits(d, torch.float64) == 1200 and NaturalCompression().bits(d, torch.float32) == 900
    key = _key(B=3, m=2)
    assert TopK(k=4).message_bits(torch.zeros(3, 2, 16), key).tolist() == [[4 * (32 + 8)] * 2] * 3
    assert [index_bits(n) for n in (2, 256, 257, 32768, 32769, 2**31, 2**31 + 1)] == [8, 8, 16, 16, 32, 32, 64]


_ALL = [Identity(), RandK(k=3), RandK(ratio=0.3, send_indices=True), TopK(k=2), PermK(), RandomDithering(s=3),
        RandomDithering(s=1), NaturalCompression()]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16])
@pytest.mark.parametrize("compressor", _ALL, ids=lambda c: repr(c))
def test_payloads_hold_the_counted_bits_and_decode_to_the_compressed_messages(compressor, dtype):
    """The wire: ``ceil(bits / 8)`` bytes per message (the documented header: under one byte of
    padding), the same for every worker, and ``decode(encode(x)) == compress(x)`` bit for bit."""
    for (B, m), d in zip([(2, 3), (1, 1), (2, 3), (1, 3)], (3, 7, 300, 40_000)):  # (1, 1): one rank, one instance
        x = torch.randn(B, m, d, dtype=torch.float64).to(dtype)
        key = _key(B=B, m=m)
        payload = compressor.encode(x, key)
        assert payload.dtype == torch.uint8 and payload.shape[:2] == (B, m)
        for worker in range(m):
            bits = compressor.bits(d, dtype, worker, m)
            assert 0 <= 8 * payload.shape[-1] - bits < 8, (d, bits, payload.shape)
        assert torch.equal(compressor.decode(payload, key, d, dtype), compressor.compress(x, key))
        weights = torch.rand(B, m, dtype=torch.float64)
        expected = (compressor.compress(x, key) * weights.to(dtype).unsqueeze(-1)).sum(1)
        torch.testing.assert_close(compressor.decode_sum(payload, key, d, dtype, weights), expected)  # dtype's tolerance


def test_randk_draws_one_coordinate_per_block_from_the_seed():
    d, k = 103, 10  # blocks of 10 and 11 coordinates
    c = RandK(k=k)
    x = torch.randn(2, 3, d, dtype=torch.float64)
    q = c.compress(x, _key())
    kept = (q != 0).nonzero()[:, -1].view(2, 3, k)
    starts = torch.arange(k + 1) * d // k
    assert ((kept >= starts[:-1]) & (kept < starts[1:])).all()  # one per block
    torch.testing.assert_close(q.gather(-1, kept), x.gather(-1, kept) * (starts[1:] - starts[:-1]), rtol=0, atol=0)
    assert c.omega(d) == 10  # ceil(103 / 10) - 1
    # the payload is the k values: a receiver with the seed rebuilds the message
    assert c.encode(x, _key()).shape[-1] == k * 8


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
    sol = saddle.solve(problem, solver, tol=1e-7, measure="distance", max_iters=20_000, check_every=20,
                       check_growth=0, **kw)  # evenly spaced history rows: the halves below
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
    d, vb = 2 * n, 64
    problem = _problem(n=n, workers=M, batch_size=3)
    solver = saddle.get_solver("masha1", compressor=RandK(k=k), server_compressor=RandK(k=5) if bidirectional else None,
                               seed=torch.tensor([0, 1, 2]))
    state, syncs = _run(problem, solver, N)
    assert torch.equal(state.syncs, syncs)
    # the default p balances the synchronizations' bits (2 M d values each) with a round's exchange: M k values
    # up, then (M - 1) k to every worker, or the server's 5 values to every worker (bidirectional); at least
    # 1 / (1 + omega) = 1 / ceil(d / k)
    exchange = M * k + (M * 5 if bidirectional else M * (M - 1) * k)
    p = max(1 / math.ceil(d / k), exchange / (2 * M * d))
    assert p == pytest.approx(1 - float(state.tau[0]), rel=1e-12)
    assert (syncs - N * p).abs().max() <= 4 * math.sqrt(N * p * (1 - p))
    full = M * d * vb
    # RandK sends its k values (the indices come from the seed). Unidirectional: every worker receives the
    # other M - 1 payloads (an all-gather: (M - 1) k < d values). Bidirectional: the server's RandK(5) reply.
    up = full + N * M * k * vb + syncs * full
    down = full + N * M * (5 * vb if bidirectional else (M - 1) * k * vb) + syncs * full
    assert torch.equal(state.bits_up, up) and torch.equal(state.bits_down, down)
    assert torch.equal(state.bits_sent, up + down)
    assert torch.equal(state.operator_calls, 1 + N + syncs)
    # the measured payloads are the bits to the byte (values of 8 bytes: no padding)
    assert torch.equal(8 * state.bytes_sent, up) and torch.equal(8 * state.bytes_received, down)


def test_masha1_partial_participation_counts_participants_only():
    M, n, k, r, N = 5, 6, 2, 2, 200
    d, vb = 2 * n, 64
    problem = _problem(n=n, workers=M, batch_size=1)
    solver = saddle.get_solver("masha1", compressor=RandK(k=k), participation=r, p=0.25)
    state, syncs = _run(problem, solver, N)
    full = M * d * vb
    assert torch.equal(state.bits_up, full + N * r * k * vb + syncs * full)
    assert torch.equal(state.bits_down, full + N * (M - 1) * r * k * vb + syncs * full)  # the participants' payloads
    # the all-gather is symmetric: every worker hands over a payload, the others' weighted 0
    assert torch.equal(8 * state.bytes_sent, full + N * M * k * vb + syncs * full)
    assert torch.equal(8 * state.bytes_received, full + N * M * (M - 1) * k * vb + syncs * full)
    sol = saddle.solve(problem, solver, tol=1e-6, measure="distance", max_iters=40_000)
    assert sol.status[0] == Status.CONVERGED, sol
    assert _distance(sol.z, _exact_solution(problem))[0] <= 1e-6


def test_masha2_and_baselines_count_bits_exactly():
    M, n, k, N = 4, 8, 3, 200
    d, vb, ib = 2 * n, 64, 8  # indices below 256 travel as uint8
    problem = _problem(n=n, workers=M, batch_size=2)
    full = M * d * vb
    # MASHA2's server compressor keeps its error feedback on every rank, so the payloads are all-gathered
    state, syncs = _run(problem, saddle.get_solver("masha2", compressor=TopK(k=k), server_compressor=TopK(k=4)), N)
    assert torch.equal(state.syncs, syncs) and (syncs > 0).all()
    assert torch.equal(state.bits_up, full + N * M * k * (vb + ib) + syncs * full)
    assert torch.equal(state.bits_down, full + N * M * (M - 1) * k * (vb + ib) + syncs * full)
    assert torch.equal(state.operator_calls, 1 + N + syncs)
    assert torch.equal(8 * state.bytes_sent, state.bits_up) and torch.equal(8 * state.bytes_received, state.bits_down)
    state, _ = _run(problem, saddle.get_solver("distributed_eg"), N)
    assert (state.bits_up == (1 + 2 * N) * full).all() and (state.bits_down == (1 + 2 * N) * full).all()
    assert (8 * state.bytes_sent == (1 + 2 * N) * full).all() and (8 * state.bytes_received == (1 + 2 * N) * full).all()
    assert (state.operator_calls == 1 + 2 * N).all()
    state, _ = _run(problem, saddle.get_solver("compressed_eg", compressor=RandK(k=k)), N)
    assert (state.bits_up == 2 * N * M * k * vb).all() and (state.bits_down == 2 * N * M * (M - 1) * k * vb).all()
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


# -- minibatch variants and MASHA2 partial participation -----------------------------------------

def _samples_problem(**kw):
    base = dict(n=6, workers=3, lam=1.0, batch_size=2, seed=5, samples=4)
    base.update(kw)
    return problems.get("distributed_bilinear", **base)


class _RecordingWorkers:
    """Wraps a local operator and records every minibatch index tensor it is asked for."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []
        self.samples = inner.samples

    def __call__(self, v):
        return self.inner(v)

    def sample(self, v, idx):
        self.calls.append(idx.clone())
        return self.inner.sample(v, idx)


def test_samples_split_each_worker_operator_exactly():
    n, M, N = 6, 3, 4
    plain = problems.get("distributed_bilinear", n=n, workers=M, batch_size=2, seed=5)
    split = problems.get("distributed_bilinear", n=n, workers=M, batch_size=2, seed=5, samples=N)
    # Same data, same full operator, same exact solution.
    assert torch.equal(plain.local_operator.A, split.local_operator.A)
    assert torch.equal(plain.local_operator.c, split.local_operator.c)
    for a, b in zip(plain.reference.solution, split.reference.solution):
        assert torch.equal(a, b)
    assert plain.samples == 1 and split.samples == N
    A_j, c_j = split.local_operator.components
    A, c = split.local_operator.A, split.local_operator.c
    torch.testing.assert_close(A_j.mean(2), A, rtol=0, atol=1e-14)
    torch.testing.assert_close(c_j.mean(2), c, rtol=0, atol=1e-14)
    # Sample j holds rows (n/N blocks) of the x-equations, scaled by N; lam and b_m are shared.
    block = torch.arange(n).tensor_split(N)[1]
    others = torch.tensor([i for i in range(n) if i not in block.tolist()])
    torch.testing.assert_close(A_j[:, :, 1, block, n:], N * A[:, :, block, n:], rtol=0, atol=1e-14)
    assert (A_j[:, :, 1, others, n:] == 0).all()
    torch.testing.assert_close(A_j[:, :, 1, :n, :n], A[:, :, :n, :n], rtol=0, atol=0)
    torch.testing.assert_close(c_j[:, :, 1, n:], c[:, :, n:], rtol=0, atol=0)
    # The minibatch mean of all samples is F_m; the samples' mean-square Lipschitz constant.
    v = torch.randn(2, 2 * n, dtype=torch.float64)
    everything = torch.arange(N).expand(2, M, N)
    torch.testing.assert_close(split.local_sample(v, everything), split.local_F(v), rtol=0, atol=1e-13)
    L_j = torch.linalg.matrix_norm(A_j, ord=2)  # (B, M, N), from the component matrices themselves
    torch.testing.assert_close(split.mean_square_sample_lipschitz(), L_j.square().mean((1, 2)).sqrt(),
                               rtol=1e-12, atol=0)
    assert "N=4" in split.name


@pytest.mark.parametrize("solver,compressor", [("masha1", RandK(k=3)), ("masha2", TopK(k=6))])
def test_minibatch_masha_converges_linearly_to_the_exact_solution(solver, compressor):
    problem = _samples_problem()
    z_star = _exact_solution(problem)
    sol = saddle.solve(problem, solver, compressor=compressor, minibatch=1, tol=1e-7, measure="distance",
                       max_iters=5000, check_every=20)
    assert (sol.status == Status.CONVERGED).all(), sol
    assert _distance(sol.z, z_star).max() <= 1e-6
    # A linear rate: per-round contraction factors over the first and second halves of the run are
    # both well below 1 and agree (a sublinear method slows down in the second half).
    dist = sol.history["distance"]
    its = sol.history["iteration"].to(torch.float64)
    T = len(its) - 1
    rate1 = (dist[T // 2] / dist[0]) ** (1 / (its[T // 2] - its[0]))
    rate2 = (dist[T] / dist[T // 2]) ** (1 / (its[T] - its[T // 2]))
    assert (rate1 < 0.995).all() and (rate2 < 0.995).all(), (rate1, rate2)
    assert ((rate2.log() / rate1.log() - 1).abs() < 0.5).all(), (rate1, rate2)
    # Defaults: p = min(compressor's p, b / N) = 1/4 here, every round costs 2 b = 2 sample evaluations.
    assert torch.equal(sol.counts["sample_calls"], 4 + 2 * sol.iterations + 4 * sol.state.syncs)


@pytest.mark.parametrize("solver", ["masha1", "masha2"])
def test_minibatch_counts_bits_and_samples_exactly(solver):
    M, n, N, b, k, R = 3, 6, 4, 2, 3, 200
    d, vb = 2 * n, 64
    ib = 0 if solver == "masha1" else 8  # RandK's indices come from the seed, TopK's travel as uint8
    problem = _samples_problem(n=n, workers=M, samples=N, batch_size=3)
    recorder = _RecordingWorkers(problem.local_operator)
    problem.local_operator = recorder
    r = M if solver == "masha1" else 2
    kw = {"compressor": RandK(k=k)} if solver == "masha1" else {"compressor": TopK(k=k), "participation": r}
    s = saddle.get_solver(solver, minibatch=b, seed=torch.tensor([0, 1, 2]), **kw)
    state, syncs = _run(problem, s, R)
    assert torch.equal(state.syncs, syncs)
    # the default: the balanced p (test_masha1_counts_bits_exactly) for masha1, TopK's delta = k / d for
    # masha2, capped by b / N
    exchange = r * k * M  # r payloads up, every worker receives the r - (itself) others: r k (M - 1) + r k
    p = min(max(k / d, exchange / (2 * M * d)) if solver == "masha1" else k / d, b / N)
    assert p == pytest.approx(1 - float(state.tau[0]), rel=1e-12)
    assert (syncs - R * p).abs().max() <= 4 * math.sqrt(R * p * (1 - p))
    full = M * d * vb
    assert torch.equal(state.bits_up, full + R * r * k * (vb + ib) + syncs * full)
    # (M - 1) payloads of k values (and indices) are fewer bytes than d values: an all-gather
    assert torch.equal(state.bits_down, full + R * (M - 1) * r * k * (vb + ib) + syncs * full)
    assert torch.equal(state.bits_sent, state.bits_up + state.bits_down)
    assert torch.equal(state.operator_calls, 1 + R + syncs)
    assert torch.equal(state.sample_calls, N + 2 * b * R + N * syncs)
    # The minibatches: per round one draw at z_half and the same one at w, b distinct samples per worker.
    assert len(recorder.calls) == 2 * R
    for first, second in zip(recorder.calls[::2], recorder.calls[1::2]):
        assert torch.equal(first, second) and first.shape == (3, M, b)
        assert (first >= 0).all() and (first < N).all() and (first[..., 0] != first[..., 1]).all()
    drawn = torch.stack(recorder.calls[::2])
    assert not torch.equal(drawn[0], drawn[1])  # fresh every round
    assert not torch.equal(drawn[:, :, 0], drawn[:, :, 1])  # different workers draw differently
    freq = torch.stack([(drawn == j).sum() for j in range(N)]).double() / drawn.numel()
    assert ((freq - 1 / N).abs() < 0.03).all(), freq  # uniform over the samples


@pytest.mark.parametrize("solver,kw", [("masha1", {"compressor": RandK(k=3), "participation": 2}),
                                       ("masha2", {"compressor": TopK(k=4), "server_compressor": TopK(k=8)})])
def test_full_batch_reproduces_the_full_operator_iterates(solver, kw):
    # b = N: the minibatch is every sample, so the estimate is F_m(z_half) - F_m(w) (computed as the mean of
    # the samples: equal up to rounding), with the same default step and p and the same random draws.
    N, R = 4, 150
    problem = _samples_problem(samples=N)
    full_s, mini_s = saddle.get_solver(solver, **kw), saddle.get_solver(solver, minibatch=N, **kw)
    z_full, z_mini = problem.z0, problem.z0
    full, mini = full_s.init(problem, z_full), mini_s.init(problem, z_mini)
    assert torch.equal(full.step_size, mini.step_size) and torch.equal(full.tau, mini.tau)
    for _ in range(R):
        z_full, full = full_s.step(problem, z_full, full)
        z_mini, mini = mini_s.step(problem, z_mini, mini)
    z_star = _exact_solution(problem)
    assert _distance(z_full, z_star).max() < 0.5 * _distance(problem.z0, z_star).min()  # it moved
    for a, b in zip(z_full, z_mini):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    for name in ("bits_up", "bits_down", "syncs", "operator_calls"):
        assert torch.equal(getattr(full, name), getattr(mini, name)), name
    # The minibatch variant evaluates the samples at w again each round: 2 N instead of N.
    assert torch.equal(mini.sample_calls - full.sample_calls, torch.full((2,), N * R))


def test_masha2_partial_participation_converges_and_counts_participants_only():
    M, n, k, r, R = 5, 6, 6, 2, 150
    d, vb, ib = 2 * n, 64, 8
    problem = _problem(n=n, workers=M, batch_size=1)
    solver = saddle.get_solver("masha2", compressor=TopK(k=k), participation=r, p=0.25)
    # Only the r participants update their error buffers each round; the others keep theirs.
    z, state = problem.z0, solver.init(problem, problem.z0)
    changed = []
    for _ in range(R):
        before = state.error
        z, state = solver.step(problem, z, state)
        changed.append(int((state.error != before).any(-1).sum()))
    assert changed == [r] * R
    syncs = state.syncs
    assert torch.equal(state.bits_up, M * d * vb + R * r * k * (vb + ib) + syncs * M * d * vb)
    # (M - 1) payloads of 6 values and indices exceed d values: the server replies in full
    assert torch.equal(state.bits_down, M * d * vb + R * M * d * vb + syncs * M * d * vb)
    sol = saddle.solve(problem, solver, tol=1e-7, measure="distance", max_iters=20_000, check_every=20)
    assert sol.status[0] == Status.CONVERGED, sol
    assert _distance(sol.z, _exact_solution(problem))[0] <= 1e-6


@pytest.mark.parametrize("solver,kw", [("masha1", {"compressor": RandK(k=3)}),
                                       ("masha2", {"compressor": TopK(k=3), "server_compressor": TopK(k=5)})])
def test_full_operator_masha_batched_solve_equals_loop_of_single_solves(solver, kw):
    # (the conformance suite runs MASHA with minibatches; this is the full-operator variant)
    problem = _problem(n=5, workers=3, batch_size=3, seed=4)
    steps = 0.05 * torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    seeds = torch.tensor([3, 0, 7])
    batched = saddle.solve(problem, solver, step_size=steps, seed=seeds, tol=0.0, max_iters=100, **kw)
    for i in range(3):
        single = saddle.solve(problem.select(i), solver, step_size=float(steps[i]), seed=int(seeds[i]), tol=0.0,
                              max_iters=100, **kw)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        for name, value in batched.counts.items():
            assert value[i] == single.counts[name][0], name


@pytest.mark.parametrize("solver", ["masha1", "masha2"])
def test_minibatch_and_participation_settings_are_checked(solver):
    problem = _samples_problem(samples=4)
    for bad in (0, -2):
        with pytest.raises(ValueError, match=f"{solver}: minibatch must be a positive integer"):
            saddle.get_solver(solver, minibatch=bad)
    for bad in (2.0, "2", True):
        with pytest.raises(TypeError, match=f"{solver}: minibatch must be a positive integer"):
            saddle.get_solver(solver, minibatch=bad)
    with pytest.raises(ValueError, match=r"minibatch \(5\) must be at most the number of samples per worker N = 4"):
        saddle.solve(problem, solver, minibatch=5)
    with pytest.raises(ValueError, match=r"minibatch \(2\) must be at most .* N = 1"):
        saddle.solve(_problem(), solver, minibatch=2)
    with pytest.raises(ValueError, match=r"participation \(4\) must be at most the number of workers \(3\)"):
        saddle.solve(problem, solver, participation=4)
    with pytest.raises(ValueError, match="participation must be a positive integer"):
        saddle.get_solver(solver, participation=0)
    # A finite-sum problem without the samples' Lipschitz constants: the default step cannot be set.
    bare = DistributedProblem(problem.local_operator, problem.domain, problem.z0, group=problem.group,
                              lipschitz=problem.lipschitz(), local_lipschitz=problem.local_lipschitz())
    with pytest.raises(ValueError, match="needs the samples' mean-square Lipschitz constant"):
        saddle.solve(bare, solver, minibatch=2)
    saddle.solve(bare, solver, minibatch=2, step_size=0.01, max_iters=5)  # fine with a step size
    saddle.solve(bare, solver, minibatch=4, max_iters=5)  # b = N: no sampling variance, no Lhat needed


def test_samples_are_checked():
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="samples must be"):
            problems.get("distributed_bilinear", n=4, samples=bad)
    with pytest.raises(ValueError, match="samples must be at most n = 4"):
        problems.get("distributed_bilinear", n=4, samples=5)


# batch_size means the number of instances B everywhere else; the solvers' minibatch setting took its
# name until this release. The old keyword still works for one release: warned, and the same solver.
@pytest.mark.parametrize("solver,problem,settings", [
    ("masha1", lambda: _samples_problem(), {"compressor": RandK(k=3)}),
    ("masha2", lambda: _samples_problem(), {"compressor": TopK(k=3), "participation": 2}),
    ("seg", lambda: problems.get("dro", n=12, d=3, batch_size=2, seed=1), {"step_size": 0.01}),
    ("double_step_seg", lambda: problems.get("dro", n=12, d=3, batch_size=2, seed=1), {"step_size": 0.01}),
    ("vr_eg", lambda: problems.get("dro", n=12, d=3, batch_size=2, seed=1), {"step_size": 0.01}),
])
def test_the_deprecated_batch_size_keyword_still_sets_the_minibatch(solver, problem, settings):
    problem = problem()
    with pytest.warns(DeprecationWarning, match=f"{solver}: batch_size is deprecated .* use minibatch"):
        old = saddle.get_solver(solver, batch_size=2, **settings)
    new = saddle.get_solver(solver, minibatch=2, **settings)
    assert old == new and old.minibatch == 2 and old.batch_size is None
    with pytest.warns(DeprecationWarning) as caught:  # through solve(), attributed to the caller's line
        by_old = saddle.solve(problem, solver, batch_size=2, max_iters=30, tol=0.0, **settings)
    assert caught[0].filename == __file__
    by_new = saddle.solve(problem, new, max_iters=30, tol=0.0)
    for a, b in zip(by_old.z, by_new.z):
        assert torch.equal(a, b)
    assert torch.equal(by_old.operator_calls, by_new.operator_calls)
    with pytest.raises(TypeError, match=f"{solver}: give minibatch only"):
        saddle.get_solver(solver, batch_size=2, minibatch=3, **settings)


# -- the wire: measured bytes against the bit formulas ---------------------------------------------

_WIRE_CASES = [("masha1", {"compressor": RandK(k=3)}), ("masha1", {"compressor": RandK(k=3, send_indices=True)}),
               ("masha1", {"compressor": PermK()}), ("masha1", {"compressor": RandomDithering(s=2)}),
               ("masha1", {"compressor": NaturalCompression()}), ("masha1", {"compressor": Identity()}),
               ("masha1", {"compressor": RandK(k=3), "server_compressor": RandK(k=5)}),
               ("masha1", {"compressor": RandK(k=3), "transport": "server"}),
               ("masha2", {"compressor": TopK(k=3)}), ("masha2", {"compressor": TopK(k=3), "server_compressor": TopK(k=4)}),
               ("compressed_eg", {"compressor": RandK(k=3)}), ("compressed_eg", {"compressor": RandomDithering(s=1)}),
               ("distributed_eg", {})]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("solver,kw", _WIRE_CASES, ids=[f"{s}-{i}" for i, (s, _) in enumerate(_WIRE_CASES)])
def test_measured_bytes_are_the_bit_formulas_and_the_groups_count(solver, kw, dtype):
    """Every message's payload is its bits to the byte (the one header: packed codes pad their last byte),
    and the group's own count of what its collectives moved is the state's."""
    M, n, N = 4, 7, 60  # d = 14: packed codes do not fill whole bytes
    problem = problems.get("distributed_bilinear", n=n, workers=M, batch_size=2, seed=1, dtype=dtype)
    s = saddle.get_solver(solver, **kw)
    before = (problem.group.traffic.sent, problem.group.traffic.received)
    state, syncs = _run(problem, s, N)
    traffic = problem.group.traffic
    assert traffic.sent - before[0] == int(state.bytes_sent.sum()) and \
        traffic.received - before[1] == int(state.bytes_received.sum())
    d = 2 * n
    comp = s._worker_compressor()
    exchanges = {"masha1": N, "masha2": N, "compressed_eg": 2 * N, "distributed_eg": 0}[solver]
    pad = 8 * comp.payload_bytes(d, dtype, M) - comp.bits(d, dtype, 0, M)  # under a byte per message
    assert 0 <= pad < 8
    assert torch.equal(8 * state.bytes_sent - state.bits_up, torch.full((2,), exchanges * M * pad))
    if solver != "distributed_eg":
        route_server = s._route(problem) == "server"
        reply = s._server_compressor() if route_server and s._server_compressor() is not None else Identity()
        down_pad = (8 * reply.payload_bytes(d, dtype) - reply.bits(d, dtype, -1, 1)) if route_server else \
            (M - 1) * pad
        assert torch.equal(8 * state.bytes_received - state.bits_down, torch.full((2,), exchanges * M * down_pad))
    else:
        assert torch.equal(8 * state.bytes_received, state.bits_down)


def test_the_transport_setting_picks_the_route_and_is_checked():
    problem = _problem(n=50, workers=16)  # d = 100
    route = lambda **kw: saddle.get_solver("masha1", **kw)._route(problem)  # noqa: E731
    assert route(compressor=RandK(ratio=0.01)) == "all_gather"  # 15 payloads of 1 value < 100 values
    assert route(compressor=RandK(ratio=0.1)) == "server"  # 15 x 10 values > 100: the server replies in full
    assert route(compressor=RandK(ratio=0.01), server_compressor=RandK(k=5)) == "server"  # bidirectional
    assert route(compressor=RandK(ratio=0.1), transport="all_gather") == "all_gather"
    with pytest.raises(ValueError, match="transport must be one of"):
        saddle.get_solver("masha1", transport="ring")
    # both routes give the same iterates up to rounding (the same messages, summed in another order)
    # (with the same p: the default p depends on the route's bits)
    a = saddle.solve(problem, "masha1", compressor=RandK(ratio=0.1), transport="all_gather", p=0.2, max_iters=50, tol=0)
    b = saddle.solve(problem, "masha1", compressor=RandK(ratio=0.1), transport="server", p=0.2, max_iters=50, tol=0)
    for x, y in zip(a.z, b.z):
        torch.testing.assert_close(x, y, rtol=0, atol=1e-12)
    assert (a.counts["bytes_received"] > b.counts["bytes_received"]).all()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("compressor", _ALL, ids=lambda c: repr(c))
def test_payloads_on_cuda_are_the_cpu_payloads(compressor):
    """The wire is device-independent: the same seed gives the same bytes on a GPU, decoded alike."""
    x = torch.randn(2, 3, 300, dtype=torch.float64)
    key = _key(m=3)
    cuda_key = RandomKey(key.seed.cuda(), key.round.cuda(), key.stream, key.workers.cuda(), key.size)
    cpu, gpu = compressor.encode(x, key), compressor.encode(x.cuda(), cuda_key)
    assert torch.equal(cpu, gpu.cpu())
    weights = torch.rand(2, 3, dtype=torch.float64)
    torch.testing.assert_close(compressor.decode_sum(gpu, cuda_key, 300, torch.float64, weights.cuda()).cpu(),
                               compressor.decode_sum(cpu, key, 300, torch.float64, weights))


def test_a_users_own_group_counts_its_traffic_without_a_constructor_call():
    from saddle.distributed import WorkerGroup

    class TwoWorkers(WorkerGroup):  # a minimal group: what docs/distributed.md asks of one
        size, workers, backend = 2, (0, 1), "mine"

        def all_sum(self, local):
            return local

    group = TwoWorkers()
    x = torch.ones(3, 2, 5, dtype=torch.float32)
    torch.testing.assert_close(group.mean(x), torch.ones(3, 5))
    # an all-reduce of (3, 5) float32 per worker, two workers: 120 bytes each way
    assert (group.traffic.sent, group.traffic.received, group.traffic.calls) == (120, 120, 1)
