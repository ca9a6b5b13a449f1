"""Tests of the problem families (`problems`) and of the problem classes' input validation.

References are checked independently of the code that produced them: the
operator is evaluated at the reference, duality gaps are recomputed in numpy
from the payoff matrix, values are recomputed by cvxpy, Jacobians are
assembled column by column from the operator.
"""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import scipy.optimize
import torch

from saddle import problems
from saddle import BilinearProblem, Box, Linear, Reals, SaddleProblem, Simplex, VIProblem

EXPECTED_NAMES = {"bilinear", "xy", "matrix_game", "rock_paper_scissors", "matching_pennies", "quadratic",
                  "comonotone_linear", "forsaken", "global_forsaken", "linear_program"}

# name -> (registry name, small keyword arguments, expected block sizes)
FAMILIES = {
    "bilinear": ("bilinear", dict(n=3), (3, 3)),
    "xy": ("xy", {}, (1, 1)),
    "matrix_game": ("matrix_game", dict(n=4, m=3), (4, 3)),
    "rock_paper_scissors": ("rock_paper_scissors", {}, (3, 3)),
    "matching_pennies": ("matching_pennies", {}, (2, 2)),
    "quadratic": ("quadratic", dict(n=3, m=2), (3, 2)),
    "quadratic_box": ("quadratic", dict(n=3, m=2, box=0.3), (3, 2)),
    "comonotone_linear": ("comonotone_linear", dict(n=2), (2, 2)),
    "forsaken": ("forsaken", {}, (1, 1)),
    "global_forsaken": ("global_forsaken", {}, (1, 1)),
    "linear_program": ("linear_program", dict(n=5, m_ub=3, m_eq=1), (5, 4)),
}
# Families whose data do not depend on the seed by definition: fixed game, fixed documented start.
DETERMINISTIC = {"xy", "forsaken"}


def make(key, **kw):
    name, base, _ = FAMILIES[key]
    return problems.get(name, **{**base, **kw})


def probe_point(problem, seed=123, same=True):
    """A fixed random point in the problem's domain, float64 on the CPU; with ``same``, the same
    point in every instance."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for n, S in zip(problem.dims, problem.domain):
        w = torch.randn(1 if same else problem.batch_size, n, dtype=torch.float64, generator=g)
        w = w.expand(problem.batch_size, n).clone()
        if isinstance(S, Simplex):
            w = torch.softmax(w, -1)
        elif isinstance(S, Box):
            w = 0.2 * torch.tanh(w)
        out.append(w)
    return tuple(out)


def signature(problem) -> torch.Tensor:
    """Everything that defines the instances, ``(B, -1)``: the start, and F at a fixed point."""
    z = tuple(w.to(problem.device, problem.dtype) for w in probe_point(problem))
    return torch.cat([b.detach().cpu().double() for b in problem.z0 + problem.F(z)], -1)


def np64(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def payoff(problem) -> np.ndarray:
    """The payoff matrices A (x pays x^T A y), recovered from f at pure strategies: ``(B, n, m)``."""
    B, (n, m) = problem.batch_size, problem.dims
    A = np.zeros((B, n, m))
    for i in range(n):
        for j in range(m):
            x = torch.zeros(B, n, dtype=problem.dtype)
            y = torch.zeros(B, m, dtype=problem.dtype)
            x[:, i] = 1
            y[:, j] = 1
            A[:, i, j] = np64(problem.objective((x, y)))
    return A


def affine_jacobian(problem, z) -> np.ndarray:
    """The Jacobian of an affine F, ``(B, N, N)``, column by column: ``(F(z + e_k) - F(z - e_k)) / 2``."""
    B, N = problem.batch_size, sum(problem.dims)
    flat = torch.cat(z, -1)
    cols = []
    h = 1.0
    for k in range(N):
        e = torch.zeros(B, N, dtype=flat.dtype)
        e[:, k] = h
        Fp = torch.cat(problem.F(tuple(torch.split(flat + e, problem.dims, -1))), -1)
        Fm = torch.cat(problem.F(tuple(torch.split(flat - e, problem.dims, -1))), -1)
        cols.append(np64((Fp - Fm) / (2 * h)))
    return np.stack(cols, -1)


# ---------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------


def test_registry_names():
    names = problems.names()
    assert EXPECTED_NAMES <= set(names)
    assert names == sorted(names)


def test_unknown_problem_lists_names():
    with pytest.raises(ValueError) as err:
        problems.get("nope")
    msg = str(err.value)
    assert "nope" in msg
    for name in EXPECTED_NAMES:
        assert name in msg


# ---------------------------------------------------------------------------------------------
# Every family: shapes, seeds, dtype, device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", FAMILIES)
def test_batch_shapes(key):
    B = 3
    p = make(key, batch_size=B)
    dims = FAMILIES[key][2]
    assert p.batch_size == B and p.dims == dims
    assert tuple(b.shape for b in p.z0) == tuple((B, n) for n in dims)
    assert tuple(b.shape for b in p.F(p.z0)) == tuple((B, n) for n in dims)
    assert p.objective(p.z0).shape == (B,)
    assert len(p.domain) == 2
    assert p.domain.contains(p.z0).all()
    ref = p.reference
    assert ref is not None and ref.solution is not None
    assert tuple(b.shape for b in ref.solution) == tuple((B, n) for n in dims)
    if ref.value is not None:
        assert ref.value.shape == (B,)
    # B = 1 is the same kind of object, never special-cased
    p1 = make(key, batch_size=1)
    assert tuple(b.shape for b in p1.z0) == tuple((1, n) for n in dims)


@pytest.mark.parametrize("key", list(FAMILIES))
def test_start_and_reference_lie_in_the_domain(key):
    """Written out from the definitions of the sets, to 1e-12."""
    p = make(key, batch_size=3, seed=4)
    for z in (p.z0, p.reference.solution):
        for S, b in zip(p.domain, z):
            b = np64(b)
            if isinstance(S, Simplex):
                assert (b >= 0).all() and (np.abs(b.sum(-1) - 1) <= 1e-12).all()
            elif isinstance(S, Box):
                lo = np64(S.project(torch.full(b.shape, -math.inf, dtype=torch.float64)))
                hi = np64(S.project(torch.full(b.shape, math.inf, dtype=torch.float64)))
                assert (b >= lo - 1e-12).all() and (b <= hi + 1e-12).all()
            else:
                assert isinstance(S, Reals) and np.isfinite(b).all()


@pytest.mark.parametrize("key", FAMILIES)
def test_seeds(key):
    a, b = make(key, batch_size=2, seed=5), make(key, batch_size=2, seed=5)
    assert torch.equal(signature(a), signature(b))
    if isinstance(a, BilinearProblem):
        assert torch.equal(a.K, b.K)
    sa = signature(a)
    if key in DETERMINISTIC:  # no random data by definition: the seed changes nothing
        assert torch.equal(sa, signature(make(key, batch_size=2, seed=6)))
        assert torch.equal(sa[0], sa[1])
    else:
        sc = signature(make(key, batch_size=2, seed=6))
        assert not torch.allclose(sa[0], sc[0]) and not torch.allclose(sa[1], sc[1])
        # the instances of a batch are different draws
        assert not torch.allclose(sa[0], sa[1])


@pytest.mark.parametrize("key", FAMILIES)
def test_float32(key):
    p32 = make(key, batch_size=2, dtype=torch.float32)
    p64 = make(key, batch_size=2, dtype=torch.float64)
    assert p32.dtype == torch.float32
    assert all(b.dtype == torch.float32 for b in p32.z0)
    z = tuple(w.float() for w in probe_point(p32))
    assert all(b.dtype == torch.float32 for b in p32.F(z))
    assert p32.objective(z).dtype == torch.float32
    ref = p32.reference
    assert all(b.dtype == torch.float32 for b in ref.solution)
    if ref.value is not None:
        assert ref.value.dtype == torch.float32
    # the same seed gives the same problems in every dtype
    for b32, b64 in zip(p32.z0, p64.z0):
        torch.testing.assert_close(b32, b64.float())
    torch.testing.assert_close(signature(p32), signature(p64), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("key", FAMILIES)
def test_device(key, device):
    p = make(key, batch_size=2, device=device)
    dev = torch.device(device)
    assert p.device.type == dev.type
    assert all(b.device.type == dev.type for b in p.z0)
    z = tuple(w.to(dev) for w in probe_point(p))
    assert all(b.device.type == dev.type for b in p.F(z))
    assert all(b.device.type == dev.type for b in p.reference.solution)
    torch.testing.assert_close(signature(p), signature(make(key, batch_size=2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("key", FAMILIES)
def test_operator_is_the_gradient_field_of_the_objective(key):
    """F = (grad_x f, -grad_y f) at random points (autograd of the objective, not of the operator)."""
    p = make(key, batch_size=3, seed=1)
    x, y = (w.clone().requires_grad_(True) for w in probe_point(p, seed=9, same=False))
    gx, gy = torch.autograd.grad(p.objective((x, y)).sum(), (x, y))
    Fx, Fy = p.F((x.detach(), y.detach()))
    torch.testing.assert_close(Fx, gx, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(Fy, -gy, rtol=1e-10, atol=1e-10)


BAD_ARGS = []
for _key in FAMILIES:
    BAD_ARGS += [
        (_key, dict(batch_size=0), ValueError, "batch_size"),
        (_key, dict(batch_size=-2), ValueError, "batch_size"),
        (_key, dict(batch_size=1.5), ValueError, "batch_size"),
        (_key, dict(seed=-1), ValueError, "seed"),
        (_key, dict(seed="0"), ValueError, "seed"),
        (_key, dict(dtype=torch.int64), TypeError, "dtype"),
        (_key, dict(dtype="float64"), TypeError, "dtype"),
    ]
BAD_ARGS += [
    ("bilinear", dict(n=0), ValueError, r"\bn\b"),
    ("matrix_game", dict(n=0), ValueError, r"\bn\b"),
    ("matrix_game", dict(m=0), ValueError, r"\bm\b"),
    ("quadratic", dict(n=0), ValueError, r"\bn\b"),
    ("quadratic", dict(m=-1), ValueError, r"\bm\b"),
    ("comonotone_linear", dict(n=0), ValueError, r"\bn\b"),
    ("quadratic", dict(mu=-0.1), ValueError, r"\bmu\b"),
    ("quadratic", dict(mu=0.0), ValueError, r"\bmu\b"),
    ("quadratic", dict(mu=2.0, smoothness=1.0), ValueError, r"\bmu\b"),
    ("quadratic", dict(box=-1.0), ValueError, r"\bbox\b"),
    ("quadratic", dict(coupling=math.nan), ValueError, r"coupling"),
    ("bilinear", dict(sigma_min=2.0, sigma_max=1.0), ValueError, "sigma_min"),
    ("bilinear", dict(sigma_min=-1.0), ValueError, "sigma_min"),
    ("comonotone_linear", dict(rho=1.5), ValueError, "rho"),
    ("comonotone_linear", dict(rho=-1.01), ValueError, "rho"),
    ("comonotone_linear", dict(rho=0.4, lipschitz=4.0), ValueError, "rho"),
    ("comonotone_linear", dict(lipschitz=0.0), ValueError, "lipschitz"),
    ("matrix_game", dict(A=torch.tensor([[1.0, math.nan], [0.0, 1.0]])), ValueError, r"\bA\b"),
    ("matrix_game", dict(A=torch.tensor([[1.0, math.inf], [0.0, 1.0]])), ValueError, r"\bA\b"),
    ("matrix_game", dict(A=torch.ones(3)), ValueError, r"\bA\b"),
    ("matrix_game", dict(A=torch.ones(2, 2, 2), batch_size=3), ValueError, r"\bA\b"),
    ("matrix_game", dict(geometry="kl"), ValueError, "geometry"),
    ("rock_paper_scissors", dict(geometry="kl"), ValueError, "geometry"),
]


@pytest.mark.parametrize("key, kw, exc, match", BAD_ARGS,
                         ids=[f"{k}-{'-'.join(kw)}-{i}" for i, (k, kw, _, _) in enumerate(BAD_ARGS)])
def test_bad_arguments(key, kw, exc, match):
    with pytest.raises(exc, match=match):
        make(key, **kw)


# ---------------------------------------------------------------------------------------------
# References
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["bilinear", "xy"])
def test_bilinear_reference_is_a_zero_of_F(key):
    p = make(key, batch_size=4, seed=2) if key == "xy" else problems.get("bilinear", n=5, batch_size=4, seed=2)
    ref = p.reference
    for block in p.F(ref.solution):
        assert block.abs().max() <= 1e-10
    # the value is f at the saddle point
    np.testing.assert_allclose(np64(ref.value), np64(p.objective(ref.solution)), rtol=0, atol=1e-10)
    if key == "xy":
        assert all((b == 0).all() for b in ref.solution)
        assert (p.z0[0] == 1).all() and (p.z0[1] == 1).all()
        # f(x, y) = x y: check the game itself at a few points
        x, y = torch.tensor([[2.0], [-3.0]], dtype=torch.float64), torch.tensor([[5.0], [0.5]], dtype=torch.float64)
        pp = problems.get("xy", batch_size=2)
        np.testing.assert_allclose(np64(pp.objective((x, y))), [10.0, -1.5], rtol=0, atol=1e-14)
    else:
        # the singular values of A lie in [sigma_min, sigma_max] = [0.5, 1]
        s = np.linalg.svd(payoff_bilinear(p), compute_uv=False)
        assert s.min() >= 0.5 - 1e-10 and s.max() <= 1.0 + 1e-10
        np.testing.assert_allclose(np64(p.lipschitz()), s.max(-1), rtol=1e-10)


def payoff_bilinear(p) -> np.ndarray:
    """A of f(x, y) = x^T A y + b^T x + c^T y, from the Jacobian of F = (A y + b, -(A^T x + c))."""
    n = p.dims[0]
    J = affine_jacobian(p, probe_point(p))
    return J[:, :n, n:]


def lp_value_cvxpy(A: np.ndarray) -> float:
    """min_{x in simplex} max_j (A^T x)_j, an LP solved by Clarabel (interior point, not HiGHS)."""
    n, m = A.shape
    x, t = cp.Variable(n), cp.Variable()
    prob = cp.Problem(cp.Minimize(t), [A.T @ x <= t, x >= 0, cp.sum(x) == 1])
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
    assert prob.status == cp.OPTIMAL
    return float(prob.value)


def test_matrix_game_reference_random():
    p = problems.get("matrix_game", n=6, m=4, batch_size=4, seed=3)
    A = payoff(p)
    np.testing.assert_allclose(A, np64(p.K.mT), rtol=0, atol=1e-14)
    assert (np.abs(A) <= 1).all()
    ref = p.reference
    x, y, v = np64(ref.solution[0]), np64(ref.solution[1]), np64(ref.value)
    for s in (x, y):
        assert (s >= 0).all()
        np.testing.assert_allclose(s.sum(-1), 1.0, rtol=0, atol=1e-12)
    best_response_to_x = np.einsum("bnm,bn->bm", A, x).max(-1)  # max_j (A^T x)_j
    best_response_to_y = np.einsum("bnm,bm->bn", A, y).min(-1)  # min_i (A y)_i
    np.testing.assert_allclose(v, best_response_to_x, rtol=0, atol=1e-9)
    np.testing.assert_allclose(v, best_response_to_y, rtol=0, atol=1e-9)
    assert (best_response_to_x - best_response_to_y <= 1e-9).all()
    for i in range(p.batch_size):
        assert abs(v[i] - lp_value_cvxpy(A[i])) <= 1e-7


def test_matrix_game_reference_given_payoff():
    rng = np.random.default_rng(0)
    A = rng.standard_normal((2, 3, 5))
    p = problems.get("matrix_game", A=torch.from_numpy(A), batch_size=2)
    assert p.dims == (3, 5)
    np.testing.assert_allclose(payoff(p), A, rtol=0, atol=1e-14)
    ref = p.reference
    x, y, v = np64(ref.solution[0]), np64(ref.solution[1]), np64(ref.value)
    gap = np.einsum("bnm,bn->bm", A, x).max(-1) - np.einsum("bnm,bm->bn", A, y).min(-1)
    assert (np.abs(gap) <= 1e-9).all()
    for i in range(2):
        assert abs(v[i] - lp_value_cvxpy(A[i])) <= 1e-7
    # a single (n, m) payoff is shared by the batch
    q = problems.get("matrix_game", A=torch.from_numpy(A[0]), batch_size=3)
    np.testing.assert_allclose(payoff(q), np.broadcast_to(A[0], (3, 3, 5)), rtol=0, atol=1e-14)
    np.testing.assert_allclose(np64(q.reference.value), lp_value_cvxpy(A[0]), rtol=0, atol=1e-7)


@pytest.mark.parametrize("name, n", [("rock_paper_scissors", 3), ("matching_pennies", 2)])
def test_named_games(name, n):
    p = problems.get(name, batch_size=3, seed=1)
    A = payoff(p)
    ref = p.reference
    np.testing.assert_allclose(np64(ref.value), 0.0, rtol=0, atol=0)
    for s in ref.solution:
        np.testing.assert_allclose(np64(s), 1.0 / n, rtol=0, atol=1e-7)
    # independently: the value of the game is 0 (HiGHS and Clarabel on the payoff matrix) ...
    for Ai in A:
        res = scipy.optimize.linprog(np.r_[np.zeros(n), 1.0], A_ub=np.hstack([Ai.T, -np.ones((n, 1))]),
                                     b_ub=np.zeros(n), A_eq=np.r_[np.ones(n), 0.0][None], b_eq=[1.0],
                                     bounds=[(0, None)] * n + [(None, None)], method="highs")
        assert abs(res.fun) <= 1e-12
        assert abs(lp_value_cvxpy(Ai)) <= 1e-8
    # ... uniform strategies guarantee it (zero duality gap) ...
    u = np.full(n, 1.0 / n)
    gap = np.einsum("bnm,n->bm", A, u).max(-1) - np.einsum("bnm,m->bn", A, u).min(-1)
    np.testing.assert_allclose(gap, 0.0, rtol=0, atol=1e-15)
    # ... and the game is zero-sum symmetric: A = -A^T (RPS) or A = A^T with zero value (pennies)
    if name == "rock_paper_scissors":
        np.testing.assert_allclose(A, -A.transpose(0, 2, 1), atol=0)
        assert sorted(A[0].ravel().tolist()) == [-1, -1, -1, 0, 0, 0, 1, 1, 1]
    else:
        np.testing.assert_allclose(np.abs(A), 1.0, atol=0)
    # starts are interior, seeded, and not the equilibrium
    for s in p.z0:
        assert (s > 0).all()
        np.testing.assert_allclose(np64(s.sum(-1)), 1.0, rtol=0, atol=1e-12)
    assert np64(p.duality_gap(p.z0)).min() > 1e-6


@pytest.mark.parametrize("name, n", [("rock_paper_scissors", 3), ("matching_pennies", 2)])
def test_named_games_reference_is_exactly_uniform(name, n):
    ref = problems.get(name, batch_size=2).reference
    for s in ref.solution:
        assert s.dtype == torch.float64
        np.testing.assert_allclose(np64(s), 1.0 / n, rtol=0, atol=1e-15)
        np.testing.assert_allclose(np64(s).sum(-1), 1.0, rtol=0, atol=1e-15)


@pytest.mark.parametrize("name", ["xy", "forsaken"])
def test_given_start_is_exact(name):
    p = problems.get(name, x0=0.1, y0=0.3, batch_size=2)
    assert p.dtype == torch.float64
    assert (p.z0[0] == 0.1).all() and (p.z0[1] == 0.3).all()


def quadratic_data(p):
    """(P, Q, A, b, c) of f = 1/2 x'Px + x'Ay - 1/2 y'Qy + b'x - c'y, as numpy arrays."""
    return (np64(p.g.P), np64(p.h_conj.P), np64(p.K.mT), np64(p.g.c), np64(p.h_conj.c))


def quadratic_f(P, Q, A, b, c, x, y):
    return 0.5 * x @ P @ x + x @ A @ y - 0.5 * y @ Q @ y + b @ x - c @ y


def test_quadratic_data_define_the_problem():
    """The data read back are those of the objective and the operator (checked pointwise)."""
    p = problems.get("quadratic", n=3, m=2, batch_size=2, seed=4)
    P, Q, A, b, c = quadratic_data(p)
    x, y = probe_point(p)
    f = np64(p.objective((x, y)))
    for i in range(2):
        assert abs(f[i] - quadratic_f(P[i], Q[i], A[i], b[i], c[i], np64(x[i]), np64(y[i]))) <= 1e-12
        # symmetric positive definite with eigenvalues in [mu, smoothness] = [0.1, 1]
        for S in (P[i], Q[i]):
            np.testing.assert_allclose(S, S.T, atol=1e-15)
            ev = np.linalg.eigvalsh(S)
            assert ev.min() >= 0.1 - 1e-12 and ev.max() <= 1.0 + 1e-12
            assert abs(ev.min() - 0.1) <= 1e-12
        np.testing.assert_allclose(np.linalg.norm(A[i], 2), 1.0, rtol=1e-12)


def test_quadratic_reference_unconstrained():
    p = problems.get("quadratic", n=4, m=3, batch_size=3, seed=1)
    P, Q, A, b, c = quadratic_data(p)
    x, y = (np64(s) for s in p.reference.solution)
    for i in range(3):
        M = np.block([[P[i], A[i]], [-A[i].T, Q[i]]])
        q = np.concatenate([b[i], c[i]])
        z = np.concatenate([x[i], y[i]])
        np.testing.assert_allclose(M @ z + q, 0.0, rtol=0, atol=1e-10)
        # the reported constants: L = |M|_2, mu = 0.1
        assert abs(np64(p.lipschitz())[i] - np.linalg.norm(M, 2)) <= 1e-10
        assert abs(np64(p.strong_monotonicity())[i] - 0.1) <= 1e-12
        assert np.linalg.eigvalsh(0.5 * (M + M.T)).min() >= 0.1 - 1e-10
    for block in p.F(p.reference.solution):
        assert block.abs().max() <= 1e-10


def test_quadratic_reference_on_a_box():
    r = 0.3
    p = problems.get("quadratic", n=4, m=3, box=r, batch_size=3, seed=2)
    P, Q, A, b, c = quadratic_data(p)
    xs, ys = p.reference.solution
    # natural residual with my own projection onto the box
    F = p.F((xs, ys))
    res = [np.abs(np64(s) - np.clip(np64(s) - np64(g), -r, r)).max() for s, g in zip((xs, ys), F)]
    assert max(res) <= 1e-9
    xs, ys = np64(xs), np64(ys)
    assert (np.abs(xs) <= r + 1e-12).all() and (np.abs(ys) <= r + 1e-12).all()
    # some bound is active (otherwise the box test would not test the box)
    assert (np.abs(np.abs(np.concatenate([xs, ys], -1)) - r) <= 1e-12).any()
    for i in range(3):
        fstar = quadratic_f(P[i], Q[i], A[i], b[i], c[i], xs[i], ys[i])
        x = cp.Variable(4)
        px = cp.Problem(cp.Minimize(0.5 * cp.quad_form(x, cp.psd_wrap(P[i])) + (b[i] + A[i] @ ys[i]) @ x),
                        [x >= -r, x <= r])
        px.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        y = cp.Variable(3)
        py = cp.Problem(cp.Maximize(-0.5 * cp.quad_form(y, cp.psd_wrap(Q[i])) + (A[i].T @ xs[i] - c[i]) @ y),
                        [y >= -r, y <= r])
        py.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        assert px.status == cp.OPTIMAL and py.status == cp.OPTIMAL
        np.testing.assert_allclose(x.value, xs[i], rtol=0, atol=1e-6)
        np.testing.assert_allclose(y.value, ys[i], rtol=0, atol=1e-6)
        # x* minimizes f(., y*) and y* maximizes f(x*, .) over the box: f* = min_x f(x, y*) = max_y f(x*, y)
        min_x = px.value - 0.5 * ys[i] @ Q[i] @ ys[i] - c[i] @ ys[i]
        max_y = py.value + 0.5 * xs[i] @ P[i] @ xs[i] + b[i] @ xs[i]
        assert abs(fstar - min_x) <= 1e-8 and abs(fstar - max_y) <= 1e-8


@pytest.mark.parametrize("rho, L, n", [(-0.2, 1.0, 1), (-0.45, 2.0, 3), (0.3, 2.5, 2), (-1.0, 1.0, 2)])
def test_comonotone_linear(rho, L, n):
    p = problems.get("comonotone_linear", n=n, rho=rho, lipschitz=L, batch_size=3, seed=0)
    zero = (torch.zeros(3, n, dtype=torch.float64),) * 2
    for block in p.F(zero):
        assert torch.equal(block, torch.zeros(3, n, dtype=torch.float64))
    assert all((s == 0).all() for s in p.reference.solution)
    # weak Minty: <F(z), z - z*> >= rho |F(z)|^2 on random points
    g = torch.Generator().manual_seed(1)
    for _ in range(5):
        z = tuple(3 * torch.randn(3, n, dtype=torch.float64, generator=g) for _ in range(2))
        Fz = p.F(z)
        inner = sum((f * w).sum(-1) for f, w in zip(Fz, z))
        sq = sum(f.square().sum(-1) for f in Fz)
        assert (inner >= rho * sq - 1e-12 * (1 + sq)).all()
    # Lipschitz constant = spectral norm of the Jacobian (F is linear)
    J = affine_jacobian(p, probe_point(p, same=False))
    np.testing.assert_allclose(np64(p.lipschitz()), np.linalg.norm(J, 2, axis=(-2, -1)), rtol=1e-9)
    np.testing.assert_allclose(np.linalg.norm(J, 2, axis=(-2, -1)), L, rtol=1e-9)
    # rho-comonotone: <F(u) - F(v), u - v> >= rho |F(u) - F(v)|^2, i.e. J + J^T - 2 rho J^T J >= 0
    for Ji in J:
        S = Ji + Ji.T - 2 * rho * Ji.T @ Ji
        assert np.linalg.eigvalsh(S).min() >= -1e-9


def forsaken_F(x, y):
    """F of f = x (y - 0.45) + phi(x) - phi(y), phi(z) = z^2/4 - z^4/2 + z^6/6 (Hsieh et al. 2021)."""
    dphi = lambda z: z / 2 - 2 * z**3 + z**5  # noqa: E731
    return np.array([y - 0.45 + dphi(x), -x + dphi(y)])


def test_forsaken_reference_is_stationary():
    p = problems.get("forsaken", batch_size=2)
    ref = p.reference
    for block in p.F(ref.solution):
        assert block.abs().max() <= 1e-10
    x, y = np64(ref.solution[0])[0, 0], np64(ref.solution[1])[0, 0]
    assert np.abs(forsaken_F(x, y)).max() <= 1e-10
    assert abs(x - 0.0780) < 1e-3 and abs(y - 0.4119) < 1e-3
    # the operator is the gradient field of the documented f
    z = probe_point(p)
    Fz = p.F(z)
    for i in range(2):
        expected = forsaken_F(np64(z[0])[i, 0], np64(z[1])[i, 0])
        np.testing.assert_allclose([np64(Fz[0])[i, 0], np64(Fz[1])[i, 0]], expected, rtol=1e-12, atol=1e-12)


def global_forsaken_F(x, y):
    dphi = lambda z: 4 * z**5 / 7 - 4 * z**3 / 3 + 2 * z / 3  # noqa: E731
    return np.stack([dphi(x) + y, -x + dphi(y)], -1)


def test_global_forsaken_reference():
    p = problems.get("global_forsaken", batch_size=4, seed=3)
    zero = (torch.zeros(4, 1, dtype=torch.float64),) * 2
    for block in p.F(zero):
        assert torch.equal(block, torch.zeros(4, 1, dtype=torch.float64))
    assert all((s == 0).all() for s in p.reference.solution)
    # the operator matches the documented F = (phi'(x) + y, -x + phi'(y))
    z = probe_point(p)
    Fz = torch.cat(p.F(z), -1)
    np.testing.assert_allclose(np64(Fz), global_forsaken_F(np64(z[0])[:, 0], np64(z[1])[:, 0]), rtol=1e-12,
                               atol=1e-12)
    # the start is in the box [-1.5, 1.5]^2
    assert (torch.cat(p.z0, -1).abs() <= 1.5).all()


def test_global_forsaken_lipschitz_bounds_F_on_the_box():
    B = 4000
    p = problems.get("global_forsaken", batch_size=B)
    L = np64(p.lipschitz())
    assert L.shape == (B,)
    rng = np.random.default_rng(0)
    u = rng.uniform(-1.5, 1.5, (B, 2))
    v = np.clip(u + rng.normal(0, 0.3, (B, 2)), -1.5, 1.5)  # pairs near and far
    v[: B // 2] = rng.uniform(-1.5, 1.5, (B // 2, 2))
    Fu = torch.cat(p.F((torch.from_numpy(u[:, :1]), torch.from_numpy(u[:, 1:]))), -1)
    Fv = torch.cat(p.F((torch.from_numpy(v[:, :1]), torch.from_numpy(v[:, 1:]))), -1)
    ratio = np.linalg.norm(np64(Fu - Fv), axis=-1) / np.linalg.norm(u - v, axis=-1)
    assert (ratio <= L * (1 + 1e-12)).all(), ratio.max()


# ---------------------------------------------------------------------------------------------
# Duality gaps
# ---------------------------------------------------------------------------------------------


def _dirichlet(rng, B, n):
    w = rng.exponential(size=(B, n))
    w[0] = 0
    w[0, 0] = 1  # a pure strategy
    return w / w.sum(-1, keepdims=True)


@pytest.mark.parametrize("geometry", ["euclidean", "entropic"])
def test_matrix_game_duality_gap(geometry):
    B, n, m = 6, 4, 5
    p = problems.get("matrix_game", n=n, m=m, batch_size=B, seed=8, geometry=geometry)
    A = payoff(p)
    rng = np.random.default_rng(8)
    for _ in range(5):
        x, y = _dirichlet(rng, B, n), _dirichlet(rng, B, m)
        gap = np64(p.duality_gap((torch.from_numpy(x), torch.from_numpy(y))))
        expected = np.einsum("bnm,bn->bm", A, x).max(-1) - np.einsum("bnm,bm->bn", A, y).min(-1)
        np.testing.assert_allclose(gap, expected, rtol=0, atol=1e-12)
        assert (gap >= -1e-12).all()
    ref_gap = np64(p.duality_gap(p.reference.solution))
    assert (np.abs(ref_gap) <= 1e-9).all()


def test_duality_gap_is_none_where_not_computable():
    for p in (problems.get("bilinear", n=3, batch_size=2), problems.get("xy", batch_size=2)):
        assert p.duality_gap(p.z0) is None
        assert p.duality_gap(probe_point(p)) is None


def test_quadratic_duality_gap_matches_cvxpy():
    B, n, m = 3, 4, 3
    p = problems.get("quadratic", n=n, m=m, batch_size=B, seed=5)
    P, Q, A, b, c = quadratic_data(p)
    rng = np.random.default_rng(5)
    x, y = rng.standard_normal((B, n)), rng.standard_normal((B, m))
    gap = np64(p.duality_gap((torch.from_numpy(x), torch.from_numpy(y))))
    for i in range(B):
        yv = cp.Variable(m)
        hi = cp.Problem(cp.Maximize(0.5 * x[i] @ P[i] @ x[i] + b[i] @ x[i] + (A[i].T @ x[i] - c[i]) @ yv
                                    - 0.5 * cp.quad_form(yv, cp.psd_wrap(Q[i]))))
        hi.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        xv = cp.Variable(n)
        lo = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xv, cp.psd_wrap(P[i])) + (b[i] + A[i] @ y[i]) @ xv
                                    - 0.5 * y[i] @ Q[i] @ y[i] - c[i] @ y[i]))
        lo.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        assert hi.status == cp.OPTIMAL and lo.status == cp.OPTIMAL
        assert abs(gap[i] - (hi.value - lo.value)) <= 1e-6 * (1 + abs(gap[i]))
        assert gap[i] > 0
    # zero at the saddle point
    assert np64(p.duality_gap(p.reference.solution)).max() <= 1e-9


def test_box_quadratic_duality_gap_matches_cvxpy():
    # The inner problems are box-constrained QPs (no closed form): the exact gap
    # comes from an accelerated projected gradient solve polished on its active set.
    B, n, m, r = 3, 5, 4, 0.3
    p = problems.get("quadratic", n=n, m=m, box=r, batch_size=B, seed=6)
    P, Q, A, b, c = quadratic_data(p)
    rng = np.random.default_rng(6)
    x, y = rng.uniform(-r, r, (B, n)), rng.uniform(-r, r, (B, m))
    gap = np64(p.duality_gap((torch.from_numpy(x), torch.from_numpy(y))))
    opts = dict(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    for i in range(B):
        yv = cp.Variable(m)
        hi = cp.Problem(cp.Maximize(0.5 * x[i] @ P[i] @ x[i] + b[i] @ x[i] + (A[i].T @ x[i] - c[i]) @ yv
                                    - 0.5 * cp.quad_form(yv, cp.psd_wrap(Q[i]))), [yv >= -r, yv <= r])
        hi.solve(**opts)
        xv = cp.Variable(n)
        lo = cp.Problem(cp.Minimize(0.5 * cp.quad_form(xv, cp.psd_wrap(P[i])) + (b[i] + A[i] @ y[i]) @ xv
                                    - 0.5 * y[i] @ Q[i] @ y[i] - c[i] @ y[i]), [xv >= -r, xv <= r])
        lo.solve(**opts)
        assert hi.status == cp.OPTIMAL and lo.status == cp.OPTIMAL
        assert abs(gap[i] - (hi.value - lo.value)) <= 1e-8 * (1 + abs(gap[i]))
    assert np64(p.duality_gap(p.reference.solution)).max() <= 1e-12


# ---------------------------------------------------------------------------------------------
# Bad inputs to the problem classes
# ---------------------------------------------------------------------------------------------


def _f(x, y):
    return (x * y).sum(-1)


def _ops():
    Z = torch.zeros
    K = torch.ones(2, 3, 4, dtype=torch.float64)
    x0, y0 = Z(2, 4, dtype=torch.float64), Z(2, 3, dtype=torch.float64)
    nanK = K.clone()
    nanK[1, 0, 0] = math.nan
    infx = x0.clone()
    infx[0, 0] = math.inf
    return [
        (lambda: BilinearProblem(nanK, x0, y0), ValueError, r"\bK\b"),
        (lambda: BilinearProblem(K.mT, x0, y0), ValueError, r"\bK\b"),
        (lambda: BilinearProblem(K[0], x0, y0), ValueError, r"\bK\b"),
        (lambda: BilinearProblem(K.float(), x0, y0), ValueError, r"\bK\b"),
        (lambda: BilinearProblem(K, infx, y0), ValueError, r"x0"),
        (lambda: BilinearProblem(K, x0[0], y0), ValueError, r"x0"),
        (lambda: BilinearProblem(K, x0, Z(3, 3, dtype=torch.float64)), ValueError, r"y0"),
        (lambda: BilinearProblem(K, x0.long(), y0), TypeError, r"x0"),
        (lambda: BilinearProblem(K, x0, y0, g="zero"), TypeError, r"\bg\b"),
        (lambda: BilinearProblem(K, x0, y0, X=(Reals(), Reals())), TypeError, r"\bX\b"),
        (lambda: SaddleProblem(_f, x0, Z(3, 4, dtype=torch.float64)), ValueError, r"batch size"),
        (lambda: SaddleProblem("f", x0, x0), TypeError, r"\bf\b"),
        (lambda: SaddleProblem(_f, x0, x0, Y=Simplex), TypeError, r"\bY\b"),
        (lambda: SaddleProblem(_f, x0, x0, lipschitz=-1.0), ValueError, r"lipschitz"),
        (lambda: VIProblem(lambda z: z, (Reals(), Reals()), x0), ValueError, r"domain"),
        (lambda: VIProblem(lambda z: z, (Reals(),), (x0, x0)), ValueError, r"domain"),
        (lambda: VIProblem(lambda z: z, "R", x0), TypeError, r"domain"),
        (lambda: VIProblem(42, Reals(), x0), TypeError, r"operator"),
        (lambda: VIProblem(lambda z: z, Reals(), infx), ValueError, r"z0"),
        (lambda: VIProblem(lambda z: z, Reals(), x0[0]), ValueError, r"z0"),
        (lambda: VIProblem(lambda z: z, Reals(), (x0, Z(3, 4, dtype=torch.float64))), ValueError, r"z0\[1\]"),
        (lambda: VIProblem(lambda z: z, Reals(), Z(0, 4, dtype=torch.float64)), ValueError, r"z0"),
        (lambda: VIProblem(lambda z: z, Reals(), x0, solution=Z(2, 5, dtype=torch.float64)), ValueError,
         r"solution"),
    ]


OPS = _ops()


@pytest.mark.parametrize("make_problem, exc, match", OPS, ids=[f"bad{i}" for i in range(len(OPS))])
def test_bad_problem_inputs(make_problem, exc, match):
    with pytest.raises(exc, match=match):
        make_problem()


_X0 = torch.zeros(2, 4, dtype=torch.float64)
_INFX = _X0.clone()
_INFX[1, 2] = math.inf


@pytest.mark.parametrize("x0", [_INFX, _X0[0], _X0.long()], ids=["inf", "1-D", "int"])
def test_saddle_problem_errors_name_x0(x0):
    with pytest.raises((ValueError, TypeError), match=r"\bx0\b"):
        SaddleProblem(_f, x0, torch.zeros(2, 4, dtype=torch.float64))


def test_saddle_problem_with_value_and_non_tensor_x0():
    with pytest.raises(TypeError, match=r"x0"):
        SaddleProblem(_f, [[0.0]], torch.zeros(1, 1, dtype=torch.float64), value=0.0)


def test_good_problem_inputs_are_accepted():
    """The validation does not reject valid input: shared K (1, m, n), linear terms, boxes."""
    K = torch.randn(1, 3, 4, dtype=torch.float64)
    x0, y0 = torch.zeros(2, 4, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)
    p = BilinearProblem(K, x0, y0, g=Linear(torch.ones(1, 4, dtype=torch.float64)), X=Box(-1.0, 1.0),
                        Y=Box(torch.zeros(2), 1.0))
    assert p.batch_size == 2 and p.dims == (4, 3)
    # f = <1, x> + <K x, y>; with zero y: F_x = 1, F_y = -K x
    x = torch.randn(2, 4, dtype=torch.float64)
    Fx, Fy = p.F((x, y0))
    torch.testing.assert_close(Fx, torch.ones(2, 4, dtype=torch.float64))
    torch.testing.assert_close(Fy, -(x @ K[0].T))
    # the gap of a linear game on boxes: max_y <Kx, y> + <1, x> over [0,1]^3 minus min_x <1 + K^T y, x> over [-1,1]^4
    y = torch.rand(2, 3, dtype=torch.float64)
    Kx = (x @ K[0].T).numpy()
    expected = (x.sum(-1).numpy() + np.clip(Kx, 0, None).sum(-1)) - (-np.abs(1 + (y @ K[0]).numpy()).sum(-1))
    np.testing.assert_allclose(np64(p.duality_gap((x, y))), expected, rtol=1e-12, atol=1e-12)


def test_linear_program_reference_against_cvxpy_and_its_kkt_conditions():
    p = problems.get("linear_program", n=12, m_ub=8, m_eq=3, batch_size=3, seed=9)
    ref = p.reference
    # HiGHS's primal-dual pair satisfies the KKT conditions of the saddle form.
    k = p.kkt(ref.solution)
    assert k["primal_residual"].max() <= 1e-9 and k["dual_residual"].max() <= 1e-9 and k["gap"].max() <= 1e-9
    c, K, d = np64(p.c), np64(p.K), np64(p.d)
    for i in range(3):
        x = cp.Variable(12)
        cons = [K[i, :3] @ x == d[i, :3], K[i, 3:] @ x <= d[i, 3:], x >= 0, x <= 2]
        prob = cp.Problem(cp.Minimize(c[i] @ x), cons)
        prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-11, tol_gap_rel=1e-11, tol_feas=1e-11)
        assert abs(prob.value - ref.value[i].item()) <= 1e-7 * (1 + abs(prob.value))


def test_products_follow_a_k_that_is_learned_in_place():
    # The row-vector products keep a transposed copy of K; for a K that requires grad (a payoff
    # matrix being fitted by gradient steps in place) that copy would go stale.
    from saddle import Bilinear

    K = torch.randn(3, 20, 30, dtype=torch.float64, requires_grad=True)
    coupling = Bilinear(K)
    x, y = torch.randn(3, 30, dtype=torch.float64), torch.randn(3, 20, dtype=torch.float64)
    for _ in range(2):
        (grad,) = torch.autograd.grad(coupling.value(x, y).sum(), K)
        torch.testing.assert_close(grad, y.unsqueeze(-1) * x.unsqueeze(-2), rtol=1e-14, atol=1e-14)
        expected = torch.einsum("bmn,bn->bm", K.detach(), x)
        torch.testing.assert_close(coupling.mv(x).detach(), expected, rtol=1e-13, atol=1e-13)
        with torch.no_grad():
            K.add_(torch.randn_like(K))  # a gradient step, in place
