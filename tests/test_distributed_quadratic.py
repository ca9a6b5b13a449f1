"""The `distributed_quadratic` family and its `StructuredWorkers` local operator.

The operator is checked against an independent dense construction (the matrices
built entry by entry from the stored parts, against columns ``F_m(e_j) - F_m(0)``),
the solution against a dense linear solve, the constants against eigenvalues and
spectral norms, and the per-worker generation against a group holding one worker.
"""

from __future__ import annotations

import math

import pytest
import torch

import saddle
from saddle import problems
from saddle.distributed import StructuredWorkers, WorkerGroup

F64 = torch.float64


class OneWorker(WorkerGroup):
    """A group of M workers of which this process holds only worker j (reductions: the identity)."""

    backend = "simulated"

    def __init__(self, size: int, j: int):
        self.size, self.workers = size, (j,)

    def all_sum(self, local):
        return local


def dense(op: StructuredWorkers) -> torch.Tensor:
    """``(B, m, d, d)`` the matrices ``diag(a) + K + U U^T``, entry by entry from the stored parts."""
    B, m, d = op.a.shape
    A = torch.zeros(B, m, d, d, dtype=F64)
    a, s, U = op.a.double(), op.s.double(), op.U.double()
    for i in range(d):
        A[:, :, i, i] = a[:, :, i]
    for i in range(d // 2):
        A[:, :, 2 * i, 2 * i + 1] = s[:, :, i]
        A[:, :, 2 * i + 1, 2 * i] = -s[:, :, i]
    return A + U @ U.mT


def columns(problem) -> torch.Tensor:
    """``(B, m, d, d)`` the held workers' Jacobians from the local operator: column j is ``F_m(e_j) - F_m(0)``."""
    B, d = problem.batch_size, problem.dim
    zero = torch.zeros(B, d, dtype=problem.dtype)
    base = problem.local_F(zero)
    cols = []
    for j in range(d):
        e = zero.clone()
        e[:, j] = 1
        cols.append(problem.local_F(e) - base)
    return torch.stack(cols, -1)


@pytest.mark.parametrize("n", [7, 8])
def test_operator_matches_a_dense_construction_and_the_solution_a_linear_solve(n):
    mu, skew, lowrank = 0.3, 2.0, 1.5
    p = problems.get("distributed_quadratic", n=n, workers=3, rank=2, mu=mu, skew=skew, lowrank=lowrank,
                     batch_size=2, seed=4)
    op, (z_star,) = p.local_operator, p.reference.solution
    assert p.dims == (n,) and p.workers == 3 and z_star.shape == (2, n) and p.reference.unique
    assert p.name == f"distributed_quadratic(n={n}, M=3)"
    # the data have the documented ranges
    assert (op.a >= mu).all() and (op.a < mu + 1).all() and (op.s.abs() <= skew).all()
    torch.testing.assert_close(op.U.square().sum((-2, -1)), torch.full((2, 3), lowrank ** 2, dtype=F64))
    # F(z*) = 0, and every F_m(z*) = e_m with the e_m averaging to zero
    (Fz,) = p.F((z_star,))
    assert Fz.abs().max() < 1e-13
    # the local operator is the dense affine map
    A = dense(op)
    torch.testing.assert_close(columns(p), A, rtol=0, atol=1e-14)
    c = p.local_F(torch.zeros(2, n, dtype=F64))
    v = torch.randn(2, n, dtype=F64, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(p.local_F(v), (A @ v[:, None, :, None]).squeeze(-1) + c, rtol=0, atol=1e-13)
    # an independent solve of the averaged dense operator gives z*
    z = torch.linalg.solve(A.mean(1), -c.mean(1))
    torch.testing.assert_close(z, z_star, rtol=0, atol=1e-12)
    # the constants are bounds
    A_bar = A.mean(1)
    assert (torch.linalg.eigvalsh(0.5 * (A_bar + A_bar.mT))[:, 0] >= p.strong_monotonicity() - 1e-12).all()
    assert (torch.linalg.eigvalsh(0.5 * (A + A.mT))[..., 0] >= mu - 1e-12).all()  # every worker, too
    assert (torch.linalg.matrix_norm(A_bar, ord=2) <= p.lipschitz()).all()
    assert (torch.linalg.matrix_norm(A, ord=2) <= p.local_lipschitz()).all()
    torch.testing.assert_close(p.lipschitz(), torch.full((2,), mu + 1 + skew + lowrank ** 2, dtype=F64))
    assert p.local_lipschitz().shape == (2, 3) and p.strong_monotonicity().tolist() == [mu, mu]


def test_offsets_vanish_without_heterogeneity_or_with_one_worker():
    for kw in (dict(workers=3, heterogeneity=0.0), dict(workers=1)):
        p = problems.get("distributed_quadratic", n=6, **kw)
        assert p.local_F(p.reference.solution[0]).abs().max() < 1e-14, kw


def test_a_worker_generated_alone_has_the_data_it_has_among_all():
    M, n, B = 4, 9, 2
    full = problems.get("distributed_quadratic", n=n, workers=M, batch_size=B, seed=3)
    v = torch.randn(B, n, dtype=F64, generator=torch.Generator().manual_seed(0))
    total = torch.zeros(B, n, dtype=F64)
    for j in range(M):
        alone = problems.get("distributed_quadratic", n=n, group=OneWorker(M, j), batch_size=B, seed=3)
        assert alone.workers == M and alone.local_operator.a.shape == (B, 1, n)
        for name in ("a", "s", "U", "c"):
            assert torch.equal(getattr(alone.local_operator, name), getattr(full.local_operator, name)[:, j:j + 1])
        assert torch.equal(alone.reference.solution[0], full.reference.solution[0])
        assert torch.equal(alone.local_F(v), full.local_F(v)[:, j:j + 1])
        for name in ("lipschitz", "strong_monotonicity", "local_lipschitz"):
            assert torch.equal(getattr(alone, name)(), getattr(full, name)())
        total += alone.local_F(v)[:, 0]
    torch.testing.assert_close(total / M, full.F((v,))[0], rtol=0, atol=1e-14)


def test_instance_b_of_a_batch_is_the_instance_of_seed_plus_b():
    batch = problems.get("distributed_quadratic", n=5, workers=3, batch_size=3, seed=7)
    for b in range(3):
        alone = problems.get("distributed_quadratic", n=5, workers=3, seed=7 + b)
        for name in ("a", "s", "U", "c"):
            assert torch.equal(getattr(alone.local_operator, name), getattr(batch.local_operator, name)[b:b + 1])
        assert torch.equal(alone.reference.solution[0], batch.reference.solution[0][b:b + 1])
    other = problems.get("distributed_quadratic", n=5, workers=3, seed=8)
    assert torch.equal(other.local_operator.a, batch.local_operator.a[1:2])
    assert not torch.equal(batch.local_operator.a[0], batch.local_operator.a[1])


@pytest.mark.parametrize("index", [1, slice(0, 2), torch.tensor([True, False, True]), torch.tensor([2, 0])])
def test_selection_keeps_the_rows_of_the_batch(index):
    p = problems.get("distributed_quadratic", n=6, workers=2, batch_size=3, seed=1)
    rows = torch.arange(3)[index] if not isinstance(index, int) else torch.tensor([index])
    z = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    picked = p.select(index)
    assert isinstance(picked.local_operator, StructuredWorkers) and picked.batch_size == len(rows)
    assert torch.equal(picked.F((z[rows],))[0], p.F((z,))[0][rows])
    assert torch.equal(picked.reference.solution[0], p.reference.solution[0][rows])
    assert torch.equal(picked.local_lipschitz(), p.local_lipschitz()[rows])


@pytest.mark.parametrize("solver", ["distributed_eg", "masha1"])
def test_solvers_converge_to_the_known_solution(solver):
    p = problems.get("distributed_quadratic", n=8, workers=3, mu=1.0, batch_size=2, seed=0)
    sol = saddle.solve(p, solver, tol=1e-8, measure="distance", max_iters=20000)
    assert sol.success.all(), sol.status
    z_star = p.reference.solution[0]
    assert ((sol.z[0] - z_star).norm(dim=-1) <= 1e-6 * (1 + z_star.norm(dim=-1))).all()


def test_float32_at_a_large_dimension():
    n = 10 ** 5
    p = problems.get("distributed_quadratic", n=n, workers=2, dtype=torch.float32)
    op, (z_star,) = p.local_operator, p.reference.solution
    for t in (op.a, op.s, op.U, op.c, z_star, p.z0[0]):
        assert t.dtype == torch.float32
    out = p.local_F(z_star)
    assert out.shape == (1, 2, n) and out.dtype == torch.float32
    (Fz,) = p.F((z_star,))
    assert Fz.shape == (1, n) and Fz.abs().max() < 1e-4
    assert p.lipschitz().dtype == F64


def test_structured_workers_float32_and_float64_agree():
    g = torch.Generator().manual_seed(0)
    B, m, d, r = 2, 3, 5, 2
    parts = [torch.randn(*shape, dtype=F64, generator=g) for shape in
             [(B, m, d), (B, m, d // 2), (B, m, d, r), (B, m, d), (B, d)]]
    op64 = StructuredWorkers(*parts)
    op32 = StructuredWorkers(*(t.float() for t in parts))
    v = torch.randn(B, d, dtype=F64, generator=g)
    assert op32.samples == 1 and op32.rank == r
    torch.testing.assert_close(op32(v.float()), op64(v).float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(op64(parts[4]), parts[3], rtol=0, atol=1e-13)  # F_m(z_star) = e_m
    # d = 1: no pair, no skew; r = 0: no low rank
    one = StructuredWorkers(torch.ones(1, 1, 1, dtype=F64), torch.zeros(1, 1, 0, dtype=F64),
                            torch.zeros(1, 1, 1, 0, dtype=F64), torch.zeros(1, 1, 1, dtype=F64))
    assert one(torch.full((1, 1), 2.0, dtype=F64)).tolist() == [[[2.0]]]


@pytest.mark.parametrize("kw, name", [
    (dict(n=0), "n"), (dict(n=2.5), "n"), (dict(rank=0), "rank"), (dict(heterogeneity=-1.0), "heterogeneity"),
    (dict(mu=0.0), "mu"), (dict(skew=-0.5), "skew"), (dict(lowrank=math.nan), "lowrank"),
    (dict(workers=0), "workers"), (dict(batch_size=0), "batch_size"), (dict(seed=-1), "seed"),
])
def test_bad_arguments_name_the_argument(kw, name):
    with pytest.raises(ValueError, match=name):
        problems.get("distributed_quadratic", **{"n": 4, **kw})


def test_structured_workers_shape_errors_name_the_argument():
    B, m, d, r = 2, 3, 5, 2
    good = dict(a=torch.ones(B, m, d), s=torch.zeros(B, m, d // 2), U=torch.zeros(B, m, d, r),
                e=torch.zeros(B, m, d), z_star=torch.zeros(B, d))
    bad = dict(a=torch.ones(B, d), s=torch.zeros(B, m, d), U=torch.zeros(B, m, d), e=torch.zeros(B, m, d + 1),
               z_star=torch.zeros(B, m, d))
    for name, value in bad.items():
        with pytest.raises(ValueError, match=rf"^{name} "):
            StructuredWorkers(**{**good, name: value})
    with pytest.raises(ValueError, match="^U "):
        StructuredWorkers(**{**good, "U": torch.zeros(B, m, d, r, dtype=F64)})
    with pytest.raises(ValueError, match="^s "):
        StructuredWorkers(**{**good, "s": torch.zeros(B, m, d // 2, dtype=torch.int64)})
    with pytest.raises(ValueError, match="^v "):
        StructuredWorkers(**good)(torch.zeros(B, d + 1))
