"""Batched conjugate gradients (`saddle.linalg.conjugate_gradient`) against dense solves."""

from __future__ import annotations

import pytest
import torch

from saddle.linalg import conjugate_gradient

from _helpers import Counted, random_spd, random_vectors


def test_solves_random_spd_systems_like_a_dense_solve():
    A, b = random_spd(6, 12, seed=0), random_vectors(6, 12, seed=1)
    res = conjugate_gradient(Counted(A), b, tol=1e-14, max_iters=200)
    expected = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(res.x, expected, rtol=0, atol=1e-10)
    assert res.converged.all()
    true_residual = (b - (A @ res.x.unsqueeze(-1)).squeeze(-1)).norm(dim=-1)
    assert (true_residual <= 1e-12 * b.norm(dim=-1)).all()
    assert torch.equal(res.matvecs, res.iterations)  # no warm start: one product per iteration


def test_matrices_shared_by_the_batch_and_a_single_instance():
    A, b = random_spd(1, 5, seed=2), random_vectors(3, 5, seed=3)
    res = conjugate_gradient(Counted(A), b, tol=1e-14, max_iters=50)
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-12)
    one = conjugate_gradient(Counted(A), b[:1], tol=1e-14, max_iters=50)
    torch.testing.assert_close(one.x, res.x[:1], rtol=0, atol=0)


def test_per_instance_tolerances():
    A, b = random_spd(3, 60, seed=4, cond=1e3), random_vectors(3, 60, seed=5)
    tol = torch.tensor([1e-2, 1e-6, 1e-12], dtype=torch.float64)
    res = conjugate_gradient(Counted(A), b, tol=tol, max_iters=500, check_every=1)
    assert res.converged.all()
    true_residual = (b - (A @ res.x.unsqueeze(-1)).squeeze(-1)).norm(dim=-1)
    assert (true_residual <= 1.01 * tol * b.norm(dim=-1)).all()
    assert res.iterations[0] < res.iterations[1] < res.iterations[2]
    # Each instance stopped at the first iteration at which its own residual met its own tolerance.
    for i in range(3):
        if res.iterations[i] > 1:
            earlier = conjugate_gradient(Counted(A[i:i + 1]), b[i:i + 1], tol=0.0, max_iters=int(res.iterations[i]) - 1)
            assert earlier.residual[0] > tol[i] * b[i].norm()


def test_per_instance_iteration_caps():
    A, b = random_spd(3, 10, seed=6), random_vectors(3, 10, seed=7)
    cap = torch.tensor([1, 3, 100])
    res = conjugate_gradient(Counted(A), b, tol=1e-14, max_iters=cap)
    assert res.iterations.tolist()[:2] == [1, 3]
    assert res.converged.tolist() == [False, False, True]
    # One CG iteration from 0 is the exact line search along r = b.
    r = b[0]
    step = (r @ r) / (r @ A[0] @ r)
    torch.testing.assert_close(res.x[0], step * r, rtol=0, atol=1e-14)
    assert res.residual[0] == pytest.approx(float((b[0] - A[0] @ res.x[0]).norm()), rel=1e-10)
    # A zero cap does nothing.
    none = conjugate_gradient(Counted(A), b, max_iters=0)
    assert torch.equal(none.x, torch.zeros_like(b)) and (none.matvecs == 0).all()


def test_warm_start_costs_one_product_and_uses_the_true_residual():
    A, b = random_spd(2, 40, seed=8), random_vectors(2, 40, seed=9)
    exact = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    # From the solution: one product (the residual b - A x0) and nothing else.
    op = Counted(A)
    res = conjugate_gradient(op, b, exact, tol=1e-8)
    assert op.calls == 1
    assert res.matvecs.tolist() == [1, 1] and res.iterations.tolist() == [0, 0]
    assert torch.equal(res.x, exact)
    # From a nearby point: fewer iterations than from 0, one extra product, the same answer.
    near = exact + 1e-6 * random_vectors(2, 40, seed=10)
    cold = conjugate_gradient(Counted(A), b, tol=1e-12, max_iters=100)
    warm = conjugate_gradient(Counted(A), b, near, tol=1e-12, max_iters=100)
    assert torch.equal(warm.matvecs, warm.iterations + 1)
    assert (warm.iterations < cold.iterations).all()
    torch.testing.assert_close(warm.x, exact, rtol=0, atol=1e-10)
    # From a far-off point (the previous solution of another system): still the right answer.
    far = conjugate_gradient(Counted(A), b, 100.0 * random_vectors(2, 40, seed=11), tol=1e-14, max_iters=200)
    torch.testing.assert_close(far.x, exact, rtol=0, atol=1e-10)


def test_batch_equals_loop():
    A, b = random_spd(5, 9, seed=12, cond=50.0), random_vectors(5, 9, seed=13)
    x0 = 0.1 * random_vectors(5, 9, seed=14)
    tol = torch.tensor([1e-3, 1e-6, 1e-9, 1e-12, 1e-4], dtype=torch.float64)
    cap = torch.tensor([50, 4, 50, 50, 2])
    batched = conjugate_gradient(Counted(A), b, x0, tol=tol, max_iters=cap, check_every=3)
    for i in range(5):
        single = conjugate_gradient(Counted(A[i:i + 1]), b[i:i + 1], x0[i:i + 1], tol=float(tol[i]),
                                    max_iters=int(cap[i]), check_every=3)
        assert torch.equal(batched.x[i:i + 1], single.x)
        for field in ("iterations", "matvecs", "residual", "converged"):
            assert torch.equal(getattr(batched, field)[i:i + 1], getattr(single, field))


def test_stopped_instances_are_frozen():
    # Instance 0 converges in a few iterations; afterwards the product returns garbage for it.
    # Its solution must be exactly what it was when it stopped.
    A = torch.cat([torch.eye(6, dtype=torch.float64).unsqueeze(0) * 2.0, random_spd(1, 6, seed=15, cond=1e4)])
    b = random_vectors(2, 6, seed=16)
    inner = Counted(A)

    def poisoned(v):
        out = inner(v)
        if inner.calls > 2:
            out = out.clone()
            out[0] = float("nan")
        return out

    res = conjugate_gradient(poisoned, b, tol=1e-12, max_iters=100, check_every=1)
    assert res.iterations[0] == 1 and res.iterations[1] > 3
    assert torch.equal(res.x[0], b[0] / 2.0)
    assert res.converged.all()
    torch.testing.assert_close(res.x[1], torch.linalg.solve(A[1], b[1]), rtol=0, atol=1e-8)


def test_non_finite_and_indefinite_instances_do_not_raise_or_spread():
    A, b = random_spd(3, 5, seed=17), random_vectors(3, 5, seed=18)
    b[1, 2] = float("nan")
    A[2] = -A[2]  # negative definite: the first curvature is negative
    res = conjugate_gradient(Counted(A), b, tol=1e-14, max_iters=50)
    torch.testing.assert_close(res.x[0], torch.linalg.solve(A[0], b[0]), rtol=0, atol=1e-10)
    assert res.converged.tolist() == [True, False, False]
    assert torch.equal(res.x[2], torch.zeros(5, dtype=torch.float64))  # stopped where it was
    assert res.iterations[2] == 1  # the product that revealed the curvature was spent
    # A non-finite warm start only affects its own instance.
    x0 = torch.zeros_like(b)
    x0[0, 0] = float("inf")
    res = conjugate_gradient(Counted(A), torch.nan_to_num(b), x0, tol=1e-14, max_iters=50)
    assert not res.converged[0]
    assert torch.isfinite(res.x[1]).all()


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(matvec=3), TypeError, "matvec"),
    (dict(b=[1.0, 2.0]), TypeError, "b must be"),
    (dict(b=torch.ones(3, dtype=torch.float64)), ValueError, "b must be"),
    (dict(b=torch.ones(2, 3, dtype=torch.int64)), TypeError, "b must have a floating dtype"),
    (dict(x0=torch.ones(2, 4, dtype=torch.float64)), ValueError, "x0"),
    (dict(x0="warm"), TypeError, "x0"),
    (dict(x0=torch.ones(2, 3, dtype=torch.float32)), ValueError, "x0"),
    (dict(tol=-1e-3), ValueError, "tol"),
    (dict(tol=float("nan")), ValueError, "tol"),
    (dict(tol="small"), TypeError, "tol"),
    (dict(tol=torch.ones(5, dtype=torch.float64)), ValueError, "tol"),
    (dict(max_iters=2.5), TypeError, "max_iters"),
    (dict(max_iters=torch.tensor([3.0, 4.0])), TypeError, "max_iters"),
    (dict(max_iters=-1), ValueError, "max_iters"),
    (dict(max_iters=torch.tensor([1, 2, 3])), ValueError, "max_iters"),
    (dict(check_every=0), ValueError, "check_every"),
])
def test_bad_inputs_name_the_argument(kwargs, error, match):
    args = dict(matvec=lambda v: 2.0 * v, b=torch.ones(2, 3, dtype=torch.float64), x0=None)
    args.update(kwargs)
    matvec, b, x0 = args.pop("matvec"), args.pop("b"), args.pop("x0")
    with pytest.raises(error, match=match):
        conjugate_gradient(matvec, b, x0, **args)


# -- GMRES ------------------------------------------------------------------------------------------------

def _nonsymmetric(B: int, n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.eye(n, dtype=torch.float64) * 3 + 0.5 * torch.randn(B, n, n, generator=g, dtype=torch.float64)


def test_gmres_solves_nonsymmetric_systems_like_a_dense_solve():
    from saddle.linalg import gmres

    A, b = _nonsymmetric(5, 14, seed=4), random_vectors(5, 14, seed=5)
    res = gmres(Counted(A), b, tol=1e-13, max_iters=200, restart=8)  # restarts: 8 < n
    torch.testing.assert_close(res.x, torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1), rtol=0, atol=1e-10)
    assert res.converged.all()
    true = (b - (A @ res.x.unsqueeze(-1)).squeeze(-1)).norm(dim=-1)
    torch.testing.assert_close(res.residual, true, rtol=0, atol=1e-15)


def test_gmres_marks_instances_it_cannot_solve_and_keeps_the_others():
    from saddle.linalg import gmres

    A, b = _nonsymmetric(3, 10, seed=6), random_vectors(3, 10, seed=7)
    # a cyclic shift: every Krylov space shorter than n misses its solution, so GMRES(6) stagnates on it
    A[1] = torch.eye(10, dtype=torch.float64).roll(1, 0)
    res = gmres(Counted(A), b, tol=1e-13, max_iters=42, restart=6)
    assert bool(res.converged[0]) and bool(res.converged[2]) and not bool(res.converged[1])
    solved = torch.linalg.solve(A, b.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(res.x[[0, 2]], solved[[0, 2]], rtol=0, atol=1e-10)


def test_gmres_refuses_bad_input():
    from saddle.linalg import gmres

    b = random_vectors(2, 3, seed=0)
    with pytest.raises(TypeError, match="matvec"):
        gmres(None, b)
    with pytest.raises(ValueError, match="b must be"):
        gmres(lambda v: v, b[0])
    with pytest.raises(ValueError, match="restart"):
        gmres(lambda v: v, b, restart=0)
    with pytest.raises(ValueError, match="tol"):
        gmres(lambda v: v, b, tol=-1.0)
