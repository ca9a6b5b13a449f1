"""Competitive methods (CGD, ACGD, CGO, OCGO) and the mixed second derivatives they use.

Independent answers: mixed products against dense Hessian blocks from
`torch.autograd.functional.hessian`; iterates against the methods' formulas
evaluated with dense linear algebra (`torch.linalg.solve` on the assembled
matrices); rates on bilinear games against the closed-form contraction; counts
against products counted by wrapping the problem's operator.
"""

from __future__ import annotations

import math

import pytest
import torch

from saddle import problems
import saddle
from saddle import ACGD, CGD, CGO, OCGO, Backtracking, Status
from saddle.coupling import SmoothCoupling
from saddle.terms import L1, Quadratic

from _helpers import instance

SOLVERS = ["cgd", "acgd", "cgo", "ocgo"]


# -- test problems ----------------------------------------------------------------------------

def tanh_game(B: int = 3, n: int = 4, m: int = 3, seed: int = 0) -> saddle.SaddleProblem:
    """``f = 1/2 x^T P x + 1/2 sum tanh(x) + tanh(x)^T A tanh(y) + 1/5 (c^T x) sum(y^3) - 1/2 y^T Q y``.

    Not quadratic: every second derivative depends on the point. Per-instance data.
    """
    gen = torch.Generator().manual_seed(seed)
    A = torch.randn(B, n, m, dtype=torch.float64, generator=gen)
    c = torch.randn(B, n, dtype=torch.float64, generator=gen)
    p = 1.0 + torch.rand(B, n, dtype=torch.float64, generator=gen)
    q = 1.0 + torch.rand(B, m, dtype=torch.float64, generator=gen)

    def f(x, y):
        tx, ty = torch.tanh(x), torch.tanh(y)
        return (0.5 * (p * x * x).sum(-1) + 0.5 * tx.sum(-1) + (tx.unsqueeze(-2) @ A @ ty.unsqueeze(-1)).reshape(-1)
                + 0.2 * (c * x).sum(-1) * (y ** 3).sum(-1) - 0.5 * (q * y * y).sum(-1))

    x0 = 0.5 * torch.randn(B, n, dtype=torch.float64, generator=gen)
    y0 = 0.5 * torch.randn(B, m, dtype=torch.float64, generator=gen)
    return saddle.SaddleProblem(f, x0, y0, name="tanh_game")


def composite_game(B: int = 2, n: int = 3, m: int = 4, seed: int = 1) -> saddle.CompositeSaddleProblem:
    """``g(x) + phi(x, y) - h(y)`` with quadratic g, h and a smooth non-bilinear coupling phi."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(B, m, n, dtype=torch.float64, generator=gen)

    def phi(x, y):
        return (torch.sin(W @ x.unsqueeze(-1)).squeeze(-1) * y).sum(-1) + 0.1 * (x.square().sum(-1) * y.sum(-1))

    P = torch.diag_embed(1.0 + torch.rand(B, n, dtype=torch.float64, generator=gen))
    Q = torch.diag_embed(1.0 + torch.rand(B, m, dtype=torch.float64, generator=gen))
    x0 = torch.randn(B, n, dtype=torch.float64, generator=gen)
    y0 = torch.randn(B, m, dtype=torch.float64, generator=gen)
    return saddle.CompositeSaddleProblem(SmoothCoupling(phi), x0, y0, g=Quadratic(P), h=Quadratic(Q))


def quadratic_game(**kw) -> saddle.BilinearProblem:
    return problems.get("quadratic", n=4, m=3, batch_size=2, seed=5, **kw)


PROBLEMS = {"quadratic": quadratic_game, "tanh": tanh_game, "composite": composite_game}


# -- dense references -------------------------------------------------------------------------

def dense_derivatives(problem, z):
    """Per instance: grad_x f, grad_y f and the dense block D_xy f, by torch.autograd.functional."""
    x, y = z
    gxs, gys, Ds = [], [], []
    for i in range(problem.batch_size):
        def f_i(a, b, i=i):
            xs = torch.cat([x[:i], a.unsqueeze(0), x[i + 1:]])
            ys = torch.cat([y[:i], b.unsqueeze(0), y[i + 1:]])
            return problem.f(xs, ys)[i]

        gx, gy = torch.autograd.functional.jacobian(f_i, (x[i], y[i]))
        H = torch.autograd.functional.hessian(f_i, (x[i], y[i]))
        gxs.append(gx), gys.append(gy), Ds.append(H[0][1])
    return torch.stack(gxs), torch.stack(gys), torch.stack(Ds)


def solve(M, v):
    return torch.linalg.solve(M, v.unsqueeze(-1)).squeeze(-1)


def mv(M, v):
    return (M @ v.unsqueeze(-1)).squeeze(-1)


def eye(B, n):
    return torch.eye(n, dtype=torch.float64).expand(B, n, n)


def cgo_direction(problem, z, alpha):
    """``[[I, alpha D_xy], [-alpha D_yx, I]] d = [g_x; -g_y]``, solved as one dense system."""
    gx, gy, D = dense_derivatives(problem, z)
    B, n, m = D.shape
    a = alpha.reshape(B, 1, 1)
    M = torch.cat([torch.cat([eye(B, n), a * D], -1), torch.cat([-a * D.mT, eye(B, m)], -1)], -2)
    d = solve(M, torch.cat([gx, -gy], -1))
    return d[:, :n], d[:, n:]


def dense_cgd(problem, z, eta):
    gx, gy, D = dense_derivatives(problem, z)
    B, n, m = D.shape
    e, e2 = eta.reshape(B, 1), eta.reshape(B, 1, 1)
    dx = -e * solve(eye(B, n) + e2 ** 2 * D @ D.mT, gx + e * mv(D, gy))
    # The y-player's own system (not the recovery the solver uses).
    dy = e * solve(eye(B, m) + e2 ** 2 * D.mT @ D, gy - e * mv(D.mT, gx))
    return z[0] + dx, z[1] + dy


def dense_cgo(problem, z, eta, alpha):
    dx, dy = cgo_direction(problem, z, alpha)
    e = eta.reshape(-1, 1)
    return z[0] - e * dx, z[1] - e * dy


def dense_ocgo(problem, z, eta, alpha):
    w = dense_cgo(problem, z, eta, alpha)
    dx, dy = cgo_direction(problem, w, alpha)
    e = eta.reshape(-1, 1)
    return z[0] - e * dx, z[1] - e * dy


def dense_acgd(problem, z, lr, beta, eps, memory):
    """ACGD in its unsymmetrized form: (I + A_x D A_y D^T) dx = -A_x (g_x + D A_y g_y)."""
    gx, gy, D = dense_derivatives(problem, z)
    B, n, _ = D.shape
    memory["t"] += 1
    b, ep = beta.reshape(B, 1), eps.reshape(B, 1)
    memory["vx"] = b * memory["vx"] + (1 - b) * gx ** 2
    memory["vy"] = b * memory["vy"] + (1 - b) * gy ** 2
    scale = (lr * torch.sqrt(1 - beta ** memory["t"])).reshape(B, 1)
    ax, ay = scale / (memory["vx"].sqrt() + ep), scale / (memory["vy"].sqrt() + ep)
    Ax, Ay = torch.diag_embed(ax), torch.diag_embed(ay)
    dx = solve(eye(B, n) + Ax @ D @ Ay @ D.mT, -mv(Ax, gx + mv(D, ay * gy)))
    dy = ay * (gy + mv(D.mT, dx))
    return z[0] + dx, z[1] + dy


# -- mixed second derivatives -----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_mixed_products_equal_dense_hessian_blocks(name):
    problem = PROBLEMS[name]()
    gen = torch.Generator().manual_seed(7)
    z = tuple(b + 0.3 * torch.randn(b.shape, dtype=b.dtype, generator=gen) for b in problem.z0)
    gx, gy, D = dense_derivatives(problem, z)
    u = torch.randn(z[0].shape, dtype=torch.float64, generator=gen)
    v = torch.randn(z[1].shape, dtype=torch.float64, generator=gen)
    products = problem.mixed_products(z)
    for got, want in [(products.grad_x, gx), (products.grad_y, gy),
                      (products.xy(v), mv(D, v)), (products.yx(u), mv(D.mT, u)),
                      (problem.mixed_xy(z, v), mv(D, v)), (problem.mixed_yx(z, u), mv(D.mT, u))]:
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    # The products may be reused at the same point (CG calls them many times).
    torch.testing.assert_close(products.xy(2.0 * v), 2.0 * mv(D, v), rtol=0, atol=1e-12)
    # The gradients are the operator's, with F = (grad_x f, -grad_y f).
    Fx, Fy = problem.F(z)
    torch.testing.assert_close(products.grad_x, Fx, rtol=0, atol=1e-12)
    torch.testing.assert_close(products.grad_y, -Fy, rtol=0, atol=1e-12)


def test_saddle_operator_products_and_non_interacting_instances():
    problem = tanh_game(B=4)
    op = problem.operator
    assert isinstance(op, saddle.SaddleOperator)
    z = problem.z0
    gx, gy, D = dense_derivatives(problem, z)
    v = torch.randn(4, 3, dtype=torch.float64)
    u = torch.randn(4, 4, dtype=torch.float64)
    torch.testing.assert_close(op.mixed_xy(z, v), mv(D, v), rtol=0, atol=1e-12)
    torch.testing.assert_close(op.mixed_yx(z, u), mv(D.mT, u), rtol=0, atol=1e-12)
    # A direction in one instance does not move the products of the others.
    v1 = torch.zeros_like(v)
    v1[2] = v[2]
    out = op.mixed_xy(z, v1)
    assert torch.equal(out[[0, 1, 3]], torch.zeros(3, 4, dtype=torch.float64))


def test_autograd_and_torch_func_products_agree_and_the_transformable_path_vmaps():
    problem = tanh_game(B=3)
    op, z = problem.operator, problem.z0
    v = torch.randn(3, 3, dtype=torch.float64)
    u = torch.randn(3, 4, dtype=torch.float64)
    plain, functional = op.mixed_products(z), op.mixed_products(z, transformable=True)
    for a, b in [(plain.grad_x, functional.grad_x), (plain.grad_y, functional.grad_y),
                 (plain.xy(v), functional.xy(v)), (plain.yx(u), functional.yx(u))]:
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)
    # Inside vmap (over a leading axis of directions) only the torch.func path applies.
    vs = torch.stack([v, 2.0 * v])
    got = torch.func.vmap(lambda w: op.mixed_products(z, transformable=True).xy(w))(vs)
    torch.testing.assert_close(got[1], 2.0 * plain.xy(v), rtol=0, atol=1e-12)


def test_bilinear_coupling_products_are_exactly_the_products_with_K():
    problem = quadratic_game()
    K = problem.K  # f = ... + <K x, y>: D_xy f = K^T
    z = problem.z0
    v = torch.randn(2, 3, dtype=torch.float64)
    u = torch.randn(2, 4, dtype=torch.float64)
    assert torch.equal(problem.mixed_xy(z, v), torch.matmul(K.mT, v.unsqueeze(-1)).squeeze(-1))
    assert torch.equal(problem.mixed_yx(z, u), torch.matmul(K, u.unsqueeze(-1)).squeeze(-1))
    products = problem.mixed_products(z)
    assert torch.equal(products.xy(v), problem.mixed_xy(z, v))
    # Sparse K shared by the batch.
    dense = torch.randn(3, 4, dtype=torch.float64)
    dense[dense.abs() < 0.5] = 0.0
    sparse = saddle.BilinearProblem(dense.to_sparse(), torch.zeros(2, 4, dtype=torch.float64),
                                    torch.zeros(2, 3, dtype=torch.float64))
    torch.testing.assert_close(sparse.mixed_xy(sparse.z0, v), v @ dense, rtol=0, atol=1e-14)
    torch.testing.assert_close(sparse.mixed_yx(sparse.z0, u), u @ dense.T, rtol=0, atol=1e-14)


def test_hand_written_operators_fall_back_to_differentiating_f():
    # comonotone_linear gives its F as a LinearOperator (no second-order access): the products
    # come from f, the gradients from the operator.
    problem = problems.get("comonotone_linear", n=2, rho=-0.1, batch_size=2)
    assert not hasattr(problem.operator, "mixed_products")
    a = -0.1
    b = math.sqrt(1 - a * a)
    v = torch.randn(2, 2, dtype=torch.float64)
    products = problem.mixed_products(problem.z0)
    torch.testing.assert_close(products.xy(v), b * v, rtol=0, atol=1e-14)
    torch.testing.assert_close(problem.mixed_yx(problem.z0, v), b * v, rtol=0, atol=1e-14)
    torch.testing.assert_close(products.grad_x, problem.F(problem.z0)[0], rtol=0, atol=0)
    # A VIProblem whose operator is a SaddleOperator has a saddle structure too.
    inner = tanh_game(B=2)
    vi = saddle.VIProblem(inner.operator, [saddle.Reals(), saddle.Reals()], inner.z0)
    torch.testing.assert_close(vi.mixed_xy(vi.z0, v[:, :1].expand(2, 3).contiguous()),
                               inner.mixed_xy(inner.z0, v[:, :1].expand(2, 3).contiguous()), rtol=0, atol=0)


def test_mixed_products_need_a_saddle_structure():
    vi = saddle.VIProblem(lambda z: (z[0] + z[1], z[1] - z[0]), [saddle.Reals(), saddle.Reals()],
                          (torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)), name="rot")
    for call in (lambda: vi.mixed_products(vi.z0), lambda: vi.mixed_xy(vi.z0, vi.z0[1]),
                 lambda: vi.mixed_yx(vi.z0, vi.z0[0])):
        with pytest.raises(TypeError, match="VIProblem 'rot' has no saddle structure"):
            call()
    problem = tanh_game(B=2)
    with pytest.raises(ValueError, match="v must have the shape of y"):
        problem.mixed_xy(problem.z0, torch.ones(2, 4, dtype=torch.float64))
    with pytest.raises(ValueError, match="u must have the shape of x"):
        problem.mixed_yx(problem.z0, torch.ones(2, 3, dtype=torch.float64))
    with pytest.raises(TypeError, match="v must be a tensor"):
        problem.operator.mixed_xy(problem.z0, [1.0, 2.0])
    bilinear = quadratic_game()
    with pytest.raises(ValueError, match="u must have the shape of x"):
        bilinear.mixed_yx(bilinear.z0, torch.ones(2, 3, dtype=torch.float64))


# -- iterates against the dense formulas -----------------------------------------------------

TIGHT = dict(cg_tol=1e-15, cg_max_iters=60)


def _dense_run(solver_name, problem, eta, alpha, steps):
    z = problem.z0
    memory = {"t": 0, "vx": torch.zeros_like(z[0]), "vy": torch.zeros_like(z[1])}
    out = []
    for _ in range(steps):
        if solver_name == "cgd":
            z = dense_cgd(problem, z, eta)
        elif solver_name == "cgo":
            z = dense_cgo(problem, z, eta, alpha)
        elif solver_name == "ocgo":
            z = dense_ocgo(problem, z, eta, alpha)
        else:
            z = dense_acgd(problem, z, eta, torch.full_like(eta, 0.9), torch.full_like(eta, 1e-3), memory)
        out.append(z)
    return out


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", sorted(PROBLEMS))
def test_iterates_equal_the_dense_formulas(solver, name):
    problem = PROBLEMS[name]()
    B = problem.batch_size
    eta = torch.linspace(0.3, 0.6, B, dtype=torch.float64)  # per instance
    alpha = torch.linspace(0.9, 0.5, B, dtype=torch.float64)
    settings = {"cgd": dict(step_size=eta), "cgo": dict(step_size=eta, alpha=alpha),
                "ocgo": dict(step_size=eta, alpha=alpha), "acgd": dict(step_size=eta, beta=0.9, eps=1e-3)}[solver]
    s = saddle.get_solver(solver, **settings, **TIGHT)
    state = s.init(problem, problem.z0)
    z = problem.z0
    for k, want in enumerate(_dense_run(solver, problem, eta, alpha, steps=4)):
        z, state = s.step(problem, z, state)
        assert state.cg_converged.all()
        for a, b in zip(z, want):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=lambda m: f"step {k + 1}: {m}")
        assert (z[0] - problem.z0[0]).abs().max() > 1e-3  # the iterates do move


def test_cgd_is_cgo_with_alpha_equal_to_the_step():
    problem = tanh_game()
    eta = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64)
    a = saddle.solve(problem, CGD(step_size=eta, **TIGHT), tol=0.0, max_iters=10)
    b = saddle.solve(problem, CGO(step_size=eta, alpha=eta, **TIGHT), tol=0.0, max_iters=10)
    for u, v in zip(a.z, b.z):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-13)


# -- bilinear games: the closed-form contraction ------------------------------------------------

def _distance(z, ref):
    return torch.sqrt(sum((a - b).square().sum(-1) for a, b in zip(z, ref)))


@pytest.mark.parametrize("name", ["bilinear", "xy"])
def test_cgd_contracts_bilinear_games_at_the_closed_form_rate(name):
    # On f = x^T A y + b^T x + c^T y the CGD step is linear in z - z*, and in the singular
    # bases of A = U S V^T it acts on each pair (u_i^T x, v_i^T y) by
    #     (1 / (1 + eta^2 s_i^2)) [[1, -eta s_i], [eta s_i, 1]],
    # a rotation scaled by 1 / sqrt(1 + eta^2 s_i^2). So per step
    #     1 / sqrt(1 + eta^2 s_max^2) <= |z+ - z*| / |z - z*| <= 1 / sqrt(1 + eta^2 s_min^2).
    problem = problems.get(name, **({"n": 6, "batch_size": 4, "seed": 1} if name == "bilinear" else {}))
    ref = problem.reference.solution
    s = problem.K.mT  # A (f = x^T A y, K = A^T)
    sv = torch.linalg.svdvals(s)
    solver = CGD(cg_tol=1e-14)
    state = solver.init(problem, problem.z0)
    eta = state.step_size
    assert torch.allclose(eta, 1.0 / problem.lipschitz())  # the default step 1 / L
    fastest = 1.0 / torch.sqrt(1 + eta ** 2 * sv.amax(-1) ** 2)
    slowest = 1.0 / torch.sqrt(1 + eta ** 2 * sv.amin(-1) ** 2)
    z = problem.z0
    d = _distance(z, ref)
    for _ in range(25):
        z, state = solver.step(problem, z, state)
        d_new = _distance(z, ref)
        ratio = d_new / d
        assert (ratio <= slowest * (1 + 1e-9)).all() and (ratio >= fastest * (1 - 1e-9)).all(), (ratio, slowest)
        d = d_new
    if name == "xy":
        torch.testing.assert_close(ratio, 1 / torch.sqrt(1 + eta ** 2), rtol=1e-10, atol=0)
    # A full solve converges; simultaneous GDA diverges on the same games.
    sol = saddle.solve(problem, "cgd", tol=1e-10, max_iters=2000)
    assert (sol.status == Status.CONVERGED).all()
    assert _distance(sol.z, ref).max() <= 1e-9
    gda = saddle.solve(problem, "gda", step_size=0.5 / problem.lipschitz(), max_iters=5000)
    assert (gda.status == Status.DIVERGED).all()


def test_cgd_on_xy_is_the_proximal_point_step_for_every_step_size():
    # For f = xy the CGD step from (x, y) is ((x - eta y), (y + eta x)) / (1 + eta^2): exactly.
    # (The recovery dy = eta (g_y + D_yx dx) cancels: its rounding error grows like eta * eps.)
    for eta in (0.1, 1.0, 10.0, 1e3):
        atol = 1e-15 * (1 + eta)
        problem = problems.get("xy", x0=0.7, y0=-0.4)
        z, _ = CGD(step_size=eta).step(problem, problem.z0, CGD(step_size=eta).init(problem, problem.z0))
        torch.testing.assert_close(z[0], torch.tensor([[(0.7 + 0.4 * eta) / (1 + eta ** 2)]], dtype=torch.float64),
                                   rtol=1e-12, atol=atol)
        torch.testing.assert_close(z[1], torch.tensor([[(-0.4 + 0.7 * eta) / (1 + eta ** 2)]], dtype=torch.float64),
                                   rtol=1e-12, atol=atol)


def test_cgo_contracts_bilinear_games_at_the_closed_form_rate():
    # CGO on a bilinear game scales each singular pair by sqrt(1 - eta s^2 (2 alpha - eta) / (1 + alpha^2 s^2)).
    problem = problems.get("bilinear", n=5, batch_size=3, seed=4)
    ref = problem.reference.solution
    sv = torch.linalg.svdvals(problem.K.mT)
    eta, alpha = 0.6, 1.7
    factors = torch.sqrt(1 - eta * sv ** 2 * (2 * alpha - eta) / (1 + alpha ** 2 * sv ** 2))
    solver = CGO(step_size=eta, alpha=alpha, cg_tol=1e-14)
    state = solver.init(problem, problem.z0)
    z, d = problem.z0, _distance(problem.z0, ref)
    for _ in range(15):
        z, state = solver.step(problem, z, state)
        ratio = _distance(z, ref) / d
        d = _distance(z, ref)
        assert (ratio <= factors.amax(-1) * (1 + 1e-9)).all() and (ratio >= factors.amin(-1) * (1 - 1e-9)).all()


# -- accounting -------------------------------------------------------------------------------

class CountingProducts:
    """Wraps a problem's operator: counts gradient-pair evaluations and mixed products."""

    def __init__(self, problem):
        self.gradients = self.products = 0
        op = problem.operator
        inner = op.mixed_products

        def mixed_products(z):
            self.gradients += 1
            p = inner(z)

            def xy(v):
                self.products += 1
                return p.xy(v)

            def yx(u):
                self.products += 1
                return p.yx(u)

            return saddle.MixedProducts(p.grad_x, p.grad_y, xy, yx)

        op.mixed_products = mixed_products


@pytest.mark.parametrize("warm_start", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("name", ["quadratic", "tanh"])
def test_gradient_and_product_counts_are_exact(solver, name, warm_start):
    # Each instance alone, with CG checking for convergence at every iteration, performs exactly
    # the products it needs: the wrapped operator's counts are the instance's counts, and the
    # batched solve reports the same per-instance counts.
    problem = PROBLEMS[name]()
    settings = dict(cg_check_every=1, cg_tol=1e-9, cg_warm_start=warm_start,
                    **({"step_size": 0.1} if solver == "acgd" else {}))
    steps = 6
    batched = saddle.get_solver(solver, **settings)
    state = batched.init(problem, problem.z0)
    z = problem.z0
    for _ in range(steps):
        z, state = batched.step(problem, z, state)
    per_step = 2 if solver == "ocgo" else 1
    assert (state.operator_calls == steps * per_step).all()
    for i in range(problem.batch_size):
        # (the tanh game's f is a closure over batched data: its selection evaluates the batch, rows kept)
        single_problem = instance(problem, i) if name == "quadratic" else tanh_game().select(i)
        counter = CountingProducts(single_problem)
        single = saddle.get_solver(solver, **settings)
        s_state = single.init(single_problem, single_problem.z0)
        s_z = single_problem.z0
        for _ in range(steps):
            s_z, s_state = single.step(single_problem, s_z, s_state)
        assert counter.gradients == steps * per_step == int(s_state.operator_calls[0])
        assert counter.products == int(s_state.hvp_calls[0]) == int(state.hvp_calls[i])
    # 1 product for the right-hand side, 2 per CG product, 1 for the recovery: at least 4 per solve.
    assert (state.hvp_calls >= 4 * steps * per_step).all()


def test_the_old_name_warm_start_is_deprecated_and_means_cg_warm_start():
    # solve(..., warm_start=) now takes a previous Solution; a bool there is the CG setting's old name.
    problem = tanh_game(B=2, n=12, m=10)
    new = saddle.solve(problem, "cgd", cg_warm_start=False, max_iters=5, tol=0.0)
    with pytest.warns(DeprecationWarning, match="warm_start is deprecated.*cg_warm_start"):
        old = saddle.solve(problem, "cgd", warm_start=False, max_iters=5, tol=0.0)
    assert old.solver == new.solver and not old.solver.cg_warm_start
    for a, b in zip(old.z, new.z):
        assert torch.equal(a, b)
    with pytest.raises(TypeError, match="give cg_warm_start only"):
        saddle.get_solver("cgd", warm_start=True, cg_warm_start=False)


@pytest.mark.parametrize("solver", SOLVERS)
def test_warm_starts_cost_one_product_and_keep_the_iterates(solver):
    # A warm start changes CG's starting point, not the system: the iterates agree to CG's
    # tolerance. Its price is one system product (two mixed products) per solve; the counts
    # obey 2 + 2 (CG products) per local game.
    problem = tanh_game(B=2, n=12, m=10)
    settings = dict(cg_tol=1e-13, cg_max_iters=200, **({"step_size": 0.1} if solver == "acgd" else {}))
    cold = saddle.get_solver(solver, cg_warm_start=False, **settings)
    warm = saddle.get_solver(solver, **settings)
    assert warm.cg_warm_start  # the default
    games = 2 if solver == "ocgo" else 1
    zc = zw = problem.z0
    sc, sw = cold.init(problem, zc), warm.init(problem, zw)
    for k in range(8):
        hc, hw = sc.hvp_calls, sw.hvp_calls
        zc, sc = cold.step(problem, zc, sc)
        zw, sw = warm.step(problem, zw, sw)
        for a, b in zip(zc, zw):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        assert torch.equal(sc.hvp_calls - hc, 2 * games + 2 * sc.cg_iterations)
        # (the first solve has nothing to start from; OCGO's second solve starts from its first)
        warm_solves = games if k > 0 else games - 1
        assert torch.equal(sw.hvp_calls - hw, 2 * games + 2 * (sw.cg_iterations + warm_solves))
        assert (sw.cg_solution != 0).any()


# -- batching, freezing, robustness -------------------------------------------------------------

@pytest.mark.parametrize("solver", SOLVERS)
def test_per_instance_settings_act_per_instance(solver):
    problem = problems.get("bilinear", n=4, batch_size=3, seed=2)
    per = {"cgd": dict(step_size=torch.tensor([0.3, 1.0, 3.0], dtype=torch.float64)),
           "cgo": dict(step_size=torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64),
                       alpha=torch.tensor([0.5, 2.0, 1.2], dtype=torch.float64)),
           "ocgo": dict(step_size=torch.tensor([0.3, 0.5, 0.2], dtype=torch.float64),
                        alpha=torch.tensor([0.5, 2.0, 1.2], dtype=torch.float64)),
           "acgd": dict(step_size=torch.tensor([0.01, 0.1, 0.05], dtype=torch.float64),
                        beta=torch.tensor([0.9, 0.99, 0.5], dtype=torch.float64),
                        eps=torch.tensor([1e-5, 1e-3, 1e-8], dtype=torch.float64))}[solver]
    per = dict(per, cg_tol=torch.tensor([1e-4, 1e-8, 1e-12], dtype=torch.float64),
               cg_max_iters=torch.tensor([2, 50, 7]))
    batched = saddle.solve(problem, solver, tol=0.0, max_iters=30, **per)
    for i in range(3):
        one = {k: (v[i].item() if isinstance(v, torch.Tensor) else v) for k, v in per.items()}
        single = saddle.solve(instance(problem, i), solver, tol=0.0, max_iters=30, **one)
        for a, b in zip(batched.z, single.z):
            assert torch.equal(a[i:i + 1], b)
        assert batched.state.hvp_calls[i] == single.state.hvp_calls[0]
    # The iteration caps bind where they are small.
    assert (batched.state.cg_iterations[0] <= 2 * (2 if solver == "ocgo" else 1))


@pytest.mark.parametrize("solver", SOLVERS)
def test_non_finite_instances_do_not_raise_and_are_marked_diverged(solver):
    # Instance 1 has a gradient that overflows; the others are ordinary bilinear games.
    big = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)

    def f(x, y):
        return (x * y).sum(-1) + big * torch.exp(50.0 * x.square().sum(-1))

    x0 = torch.tensor([[1.0], [5.0], [-2.0]], dtype=torch.float64)
    problem = saddle.SaddleProblem(f, x0, torch.ones(3, 1, dtype=torch.float64), lipschitz=1.0)
    assert not torch.isfinite(problem.F(problem.z0)[0][1]).all()
    s = saddle.get_solver(solver, **({"step_size": 0.5} if solver == "acgd" else {}))
    z, state = s.step(problem, problem.z0, s.init(problem, problem.z0))  # no exception
    assert torch.isfinite(z[0][[0, 2]]).all() and not torch.isfinite(z[0][1]).all()
    sol = saddle.solve(problem, s, tol=1e-8, max_iters=3000)
    assert sol.status.tolist() == [Status.CONVERGED, Status.DIVERGED, Status.CONVERGED]
    assert torch.isfinite(sol.z[0]).all()


def test_solutions_are_frozen_once_converged_and_counts_stop():
    problem = problems.get("bilinear", n=5, batch_size=3, seed=6)
    tol = torch.tensor([1e-2, 1e-6, 1e-10], dtype=torch.float64)
    sol = saddle.solve(problem, "cgd", tol=tol, max_iters=500, check_every=1)
    assert (sol.status == Status.CONVERGED).all()
    assert sol.iterations[0] < sol.iterations[1] < sol.iterations[2]
    # Each instance's counts are those of a solve of it alone.
    for i in range(3):
        single = saddle.solve(instance(problem, i), "cgd", tol=float(tol[i]), max_iters=500, check_every=1)
        assert torch.equal(sol.z[0][i:i + 1], single.z[0]) and torch.equal(sol.z[1][i:i + 1], single.z[1])
        assert sol.state.hvp_calls[i] == single.state.hvp_calls[0]
        assert sol.operator_calls[i] == single.operator_calls[0] == sol.iterations[i]


def test_acgd_converges_on_bilinear_games_and_hovers_on_quadratic_ones():
    sol = saddle.solve(problems.get("bilinear", n=6, batch_size=2, seed=1), ACGD(step_size=0.05), tol=1e-9,
                       max_iters=5000)
    assert (sol.status == Status.CONVERGED).all()
    # With D_xx terms the Adam-like step grows as the gradient shrinks: it stays near, not at, z*.
    problem = problems.get("quadratic", n=6, m=4, batch_size=2, seed=3)
    sol = saddle.solve(problem, ACGD(step_size=0.01), tol=0.0, max_iters=1500)
    d = _distance(sol.z, problem.reference.solution)
    assert (d < 0.5).all() and (sol.status == Status.MAX_ITERS).all()


# -- bad inputs ---------------------------------------------------------------------------------

@pytest.mark.parametrize("cls,kwargs,error,match", [
    (CGD, dict(step_size=-0.1), ValueError, "cgd: step_size must be finite and > 0"),
    (CGD, dict(step_size=math.inf), ValueError, "step_size"),
    (CGD, dict(step_size="big"), TypeError, "step_size"),
    (CGD, dict(step_size=Backtracking()), ValueError, "step_size.*no step-size rule"),
    (CGD, dict(step_size=torch.ones(2, 2)), ValueError, "step_size"),
    (CGD, dict(cg_tol=-1e-3), ValueError, "cg_tol"),
    (CGD, dict(cg_tol=1.0), ValueError, "cg_tol"),
    (CGD, dict(cg_max_iters=0), ValueError, "cg_max_iters"),
    (CGD, dict(cg_max_iters=2.5), TypeError, "cg_max_iters"),
    (CGD, dict(cg_max_iters=torch.tensor([1.0, 2.0])), TypeError, "cg_max_iters"),
    (CGD, dict(cg_warm_start="yes"), TypeError, "cg_warm_start"),
    (CGD, dict(cg_check_every=0), ValueError, "cg_check_every"),
    (CGO, dict(alpha=0.0), ValueError, "cgo: alpha"),
    (OCGO, dict(alpha=torch.tensor([1.0, -1.0])), ValueError, "ocgo: alpha"),
    (ACGD, dict(beta=1.0), ValueError, "acgd: beta must be in \\[0, 1\\)"),
    (ACGD, dict(eps=0.0), ValueError, "acgd: eps"),
    (ACGD, dict(step_size=None), TypeError, "acgd: step_size"),
])
def test_bad_settings_name_the_setting(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_bad_problems_and_batch_shapes_are_explained(solver):
    with pytest.raises(ValueError, match=f"{solver}: step_size has shape \\(3,\\).*\\(B,\\) = \\(2,\\)"):
        saddle.solve(quadratic_game(), solver, step_size=torch.ones(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="cg_tol has shape"):
        saddle.solve(quadratic_game(), solver, cg_tol=torch.full((5,), 1e-6, dtype=torch.float64))
    with pytest.raises(ValueError, match=f"{solver} needs unconstrained players.*Box"):
        saddle.solve(quadratic_game(box=0.5), solver)
    with pytest.raises(ValueError, match=f"{solver} needs a smooth objective, but g has a non-smooth part \\(L1\\)"):
        saddle.solve(saddle.BilinearProblem(torch.ones(1, 2, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64),
                                            torch.zeros(1, 2, dtype=torch.float64), g=L1(1.0)), solver)
    vi = saddle.VIProblem(lambda z: z, saddle.Reals(), torch.ones(1, 2, dtype=torch.float64))
    with pytest.raises(TypeError, match=f"{solver} needs a SaddleProblem.*got VIProblem"):
        saddle.solve(vi, solver)
