"""LPD, ALPD and inexact ALPD (Khalafi and Boob, ICML 2023) on the paper's own kinds of problems.

Every answer is checked against cvxpy (Clarabel) solutions of the saddle
problems' primal reformulations, polished to 1e-12 by `scipy.optimize.root`
on their optimality conditions:

- the penalized QP of the paper's first experiment,
  ``min_{|x| <= 1} 1/2 x'Qx + c'x + max_{y in Y} <Ax - b, y> - mu/2 |y|^2``, with
  Y a box (exact dual prox steps) or the l1 ball (the paper's choice; the
  quadratic h is then linearized);
- the QCQP of the second experiment, ``phi(x, y) = sum_i y_i (x'A_i x / 2 + b_i'x - d_i)``,
  ``y in [0, r]^m``, a `saddle.SemiLinear` coupling.

The inner maximizations have closed forms that give the reformulations:
``max_{y in Y} <s, y> - mu/2 |y|^2 = min_w |s - w|^2 / (2 mu) + sigma_Y(w)`` (sigma_Y
the support function) with ``y* = (s - w*) / mu``, and for the QCQP
``max_{0 <= y <= r} s y - mu y^2 / 2 = min {u^2 / (2 mu) + r v : u + v >= s, v >= 0}``
with ``y* = clip(s / mu, 0, r)``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import torch

import saddle
from saddle import Ball, Bilinear, Box, CompositeSaddleProblem, Quadratic, SaddleProblem, SemiLinear, Smooth, Status

cp = pytest.importorskip("cvxpy")

DT = torch.float64


def _polish(gradient, x0):
    """The minimizer over the unit ball of a C^1 convex function with gradient ``gradient``, near ``x0``.

    Solves ``gradient(x) = 0`` (x inside) or ``gradient(x) + lam x = 0, |x| = 1, lam >= 0`` (on the
    sphere) by `scipy.optimize.root`, starting from cvxpy's solution, and checks it to 1e-12.
    """
    if np.linalg.norm(x0) < 1 - 1e-6:
        sol = scipy.optimize.root(gradient, x0, method="hybr", tol=1e-14)
        assert np.linalg.norm(sol.x) < 1 and np.abs(gradient(sol.x)).max() < 1e-12
        return sol.x

    def kkt(z):
        return np.concatenate([gradient(z[:-1]) + z[-1] * z[:-1], [(z[:-1] @ z[:-1] - 1) / 2]])

    sol = scipy.optimize.root(kkt, np.concatenate([x0, [max(-gradient(x0) @ x0, 0.0)]]), method="hybr", tol=1e-14)
    assert sol.x[-1] >= 0 and np.abs(kkt(sol.x)).max() < 1e-12
    return sol.x[:-1]


def _project_l1(v, radius=1.0):
    """Euclidean projection onto the l1 ball (Duchi et al. 2008), in numpy."""
    if np.abs(v).sum() <= radius:
        return v
    u = np.sort(np.abs(v))[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u * np.arange(1, len(u) + 1) > css - radius)[0][-1]
    theta = (css[k] - radius) / (k + 1)
    return np.sign(v) * np.maximum(np.abs(v) - theta, 0)


# -- the penalized QP (the paper's first experiment) ---------------------------------------------


def _penalized_qp_data(n, m, batch, seed, L_g, rank=None):
    """Q with eigenvalues uniform in (0, L_g), c ~ N(0, 1), A, b ~ U(0, 1) (as in the authors' experiments).

    With ``rank``, Q has ``n - rank`` zero eigenvalues and its largest is L_g: g is convex but not
    strongly convex, the setting of the paper's analysis.
    """
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=DT))[0]
    eig = L_g * torch.rand(batch, n, generator=gen, dtype=DT)
    if rank is not None:
        eig[:, :n - rank] = 0.0
        eig[:, -1] = L_g
    Q = U @ torch.diag_embed(eig) @ U.mT
    Q = (Q + Q.mT) / 2
    c = torch.randn(batch, n, generator=gen, dtype=DT)
    A = torch.rand(batch, m, n, generator=gen, dtype=DT)
    b = torch.rand(batch, m, generator=gen, dtype=DT)
    return Q, c, A, b


def _penalized_qp(data, mu, Y):
    Q, c, A, b = data
    B, m, n = A.shape
    Yset = Box(-1.0, 1.0) if Y == "box" else Ball(1.0, p=1)
    xs, ys = [], []
    for i in range(B):
        Qi, ci, Ai, bi = (t[i].numpy() for t in data)
        x, w = cp.Variable(n), cp.Variable(m)
        support = cp.norm1(w) if Y == "box" else cp.norm_inf(w)  # sigma_Y for the unit box / l1 ball
        objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Qi)) + ci @ x + cp.sum_squares(Ai @ x - bi - w) / (2 * mu) \
            + support
        problem = cp.Problem(cp.Minimize(objective), [cp.norm(x, 2) <= 1])
        problem.solve(solver=cp.CLARABEL)
        assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)

        def best_response(x):  # argmax_{y in Y} <Ax - b, y> - mu/2 |y|^2
            v = (Ai @ x - bi) / mu
            return np.clip(v, -1, 1) if Y == "box" else _project_l1(v)

        xs.append(_polish(lambda x: Qi @ x + ci + Ai.T @ best_response(x), x.value))
        ys.append(best_response(xs[-1]))
    ref = (torch.tensor(np.array(xs)), torch.tensor(np.array(ys)))
    return CompositeSaddleProblem(Bilinear(A), torch.zeros(B, n, dtype=DT), torch.zeros(B, m, dtype=DT),
                                  g=Quadratic(Q, c), h=Quadratic(torch.full((B, m), mu, dtype=DT), b),
                                  X=Ball(1.0), Y=Yset, solution=ref, name=f"penalized QP ({Y})")


def penalized_qp(n=20, m=20, batch=3, seed=0, L_g=100.0, mu=1.0, Y="box", rank=None):
    return _penalized_qp(_penalized_qp_data(n, m, batch, seed, L_g, rank), mu, Y)


# -- the QCQP (the paper's second experiment) ----------------------------------------------------


class _Quadratics(SemiLinear):
    """``G(x)_i = x'A_i x / 2 + b_i'x - d_i`` with ``grad_x <G(x), y> = sum_i y_i (A_i x + b_i)`` written out."""

    def __init__(self, A, b, d, r):
        self.A, self.b, self.d = A, b, d
        L_xx = r * torch.linalg.eigvalsh(A.sum(1))[:, -1]  # sup over [0, r]^m of |sum_i y_i A_i|
        L_xy = torch.sqrt(((torch.linalg.eigvalsh(A)[..., -1] + b.norm(dim=-1)) ** 2).sum(-1))  # over |x| <= 1
        super().__init__(self._G, lipschitz_xx=L_xx, lipschitz_xy=L_xy)

    def _G(self, x):
        return 0.5 * torch.einsum("bi,bkij,bj->bk", x, self.A, x) + torch.einsum("bkj,bj->bk", self.b, x) - self.d

    def grad_x(self, x, y):
        return torch.einsum("bk,bkij,bj->bi", y, self.A, x) + torch.einsum("bk,bkj->bj", y, self.b)


def _qcqp_data(n, m, batch, seed, a, rank):
    gen = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(batch, n, n, generator=gen, dtype=DT))[0]
    Q = U @ torch.diag_embed(0.1 + 0.9 * torch.rand(batch, n, generator=gen, dtype=DT)) @ U.mT
    Q = (Q + Q.mT) / 2
    c = torch.randn(batch, n, generator=gen, dtype=DT)
    V = torch.linalg.qr(torch.randn(batch, m, n, rank, generator=gen, dtype=DT))[0]
    A = a * V @ torch.diag_embed(0.5 + 0.5 * torch.rand(batch, m, rank, generator=gen, dtype=DT)) @ V.mT
    A = (A + A.mT) / 2
    b = torch.randn(batch, m, n, generator=gen, dtype=DT)
    d = torch.rand(batch, m, generator=gen, dtype=DT)
    return Q, c, A, b, d


def _qcqp_reference(Q, c, A, b, d, mu, r):
    n, m = Q.shape[0], A.shape[0]
    x, u, v = cp.Variable(n), cp.Variable(m), cp.Variable(m, nonneg=True)
    constraints = [cp.norm(x, 2) <= 1]
    for k in range(m):
        constraints.append(u[k] + v[k] >= 0.5 * cp.quad_form(x, cp.psd_wrap(A[k])) + b[k] @ x - d[k])
    objective = 0.5 * cp.quad_form(x, cp.psd_wrap(Q)) + c @ x + cp.sum_squares(u) / (2 * mu) + r * cp.sum(v)
    problem = cp.Problem(cp.Minimize(objective), constraints)
    problem.solve(solver=cp.CLARABEL)
    assert problem.status in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE)

    def gradient(x):  # of the primal function: grad f(x) + J_G(x)' y(x), y(x) = clip(G(x) / mu, 0, r)
        G = 0.5 * np.einsum("i,kij,j->k", x, A, x) + b @ x - d
        return Q @ x + c + (np.einsum("kij,j->ki", A, x) + b).T @ np.clip(G / mu, 0, r)

    xs = _polish(gradient, x.value)
    G = 0.5 * np.einsum("i,kij,j->k", xs, A, xs) + b @ xs - d
    return xs, np.clip(G / mu, 0, r)


def _qcqp(data, mu, r):
    Q, c, A, b, d = data
    B, n, m = Q.shape[0], Q.shape[1], A.shape[1]
    refs = [_qcqp_reference(*(t[i].numpy() for t in data), mu, r) for i in range(B)]
    ref = tuple(torch.tensor(np.array([z[k] for z in refs])) for k in range(2))
    return CompositeSaddleProblem(_Quadratics(A, b, d, r), torch.zeros(B, n, dtype=DT), torch.zeros(B, m, dtype=DT),
                                  g=Quadratic(Q, c), h=Quadratic(torch.full((B, m), mu, dtype=DT)),
                                  X=Ball(1.0), Y=Box(0.0, r), solution=ref, name="QCQP")


def qcqp(n=10, m=2, batch=3, seed=1, a=10.0, rank=2, mu=1.0, r=100.0):
    """A QCQP whose L_xx (a worst case over the large y-box) is large: ~1700 against L_xy ~ 17 and L_g <= 1."""
    return _qcqp(_qcqp_data(n, m, batch, seed, a, rank), mu, r)


def _distance(z, ref):
    return torch.sqrt(sum((a - b).square().sum(-1) for a, b in zip(z, ref)))


def _check_reference(problem):
    # The reference is a saddle point: its natural (prox-gradient) residual vanishes.
    assert saddle.merit.residual(problem, problem.solution).max() <= 1e-9


# -- 1. convergence to the cvxpy saddle point ------------------------------------------------------


@pytest.mark.parametrize("Y", ["box", "l1"])
@pytest.mark.parametrize("solver", ["lpd", "alpd"])
def test_converges_to_the_cvxpy_saddle_point(solver, Y):
    problem = penalized_qp(Y=Y, batch=2, seed=3, L_g=10.0)
    _check_reference(problem)
    sol = saddle.solve(problem, solver, tol=1e-5, measure="distance", max_iters=20_000, check_every=20)
    assert (sol.status == Status.CONVERGED).all(), sol
    assert sol.state.dual_step == ("prox" if Y == "box" else "linearized")
    # Independently of the driver's measure: the reported (averaged) point is within 1e-5 of cvxpy's.
    assert _distance(sol.z, problem.solution).max() <= 1e-5
    # The reported point is the gamma-weighted average the theorems are about.
    assert torch.equal(sol.x, sol.state.x_bar) and torch.equal(sol.y, sol.state.y_bar)


# -- 2. the paper's claim: ALPD's dependence on L_g --------------------------------------------------


@pytest.mark.slow
def test_alpd_needs_fewer_primal_gradients_than_lpd_when_L_g_is_large():
    # g convex (rank 5 of 20) with L_g = 1000 >> L_xy^2 / mu ~ 25: LPD's L_g D_X^2 / k term dominates.
    problem = penalized_qp(m=5, L_g=1000.0, rank=5, batch=3, seed=1)
    _check_reference(problem)
    target = 1e-4
    counts = {}
    for solver in ("lpd", "alpd"):
        sol = saddle.solve(problem, solver, tol=target, measure="distance", max_iters=30_000, check_every=5)
        assert (sol.status == Status.CONVERGED).all(), (solver, sol)
        assert _distance(sol.z, problem.solution).max() <= target
        counts[solver] = sol.counts["primal_gradient_calls"]
    # Measured: LPD ~ 20 600-21 700 gradients of g, ALPD ~ 3000-3300 (6-7x fewer).
    assert (4 * counts["alpd"] <= counts["lpd"]).all(), counts


# -- 3. inexact ALPD saves coupling gradients ---------------------------------------------------------


@pytest.mark.slow
def test_inexact_alpd_needs_fewer_coupling_gradients_than_alpd_on_a_qcqp():
    problem = qcqp()
    _check_reference(problem)
    L = problem.coupling.lipschitz()
    assert (L["xx"] > 50 * L["xy"]).all()  # a strongly nonlinear coupling
    target = 1e-3
    sols = {}
    for solver in ("alpd", "inexact_alpd"):
        sol = saddle.solve(problem, solver, tol=target, measure="distance", max_iters=40_000, check_every=10)
        assert (sol.status == Status.CONVERGED).all(), (solver, sol)
        assert _distance(sol.z, problem.solution).max() <= target
        sols[solver] = sol
    alpd, inexact = sols["alpd"].counts, sols["inexact_alpd"].counts
    # Measured: ALPD ~ 11600-22400 coupling gradients, inexact ALPD ~ 5300-10200 (about half),
    # with 20x fewer outer iterations (gradients of g).
    assert (inexact["coupling_gradient_calls"] < alpd["coupling_gradient_calls"]).all(), (alpd, inexact)
    assert (5 * inexact["primal_gradient_calls"] <= alpd["primal_gradient_calls"]).all(), (alpd, inexact)
    # Each outer iteration ran between 1 and 10 inner steps (the default cap).
    outer = inexact["primal_gradient_calls"]
    assert (inexact["coupling_gradient_calls"] <= 10 * outer).all()
    assert (inexact["coupling_gradient_calls"] > outer).all()


def test_inexact_alpd_is_alpd_for_a_bilinear_coupling():
    # L_xx = 0: one inner step solves the primal subproblem exactly, and it is ALPD's step.
    problem = penalized_qp(batch=2, seed=4)
    a = saddle.solve(problem, "alpd", tol=0.0, max_iters=50)
    b = saddle.solve(problem, "inexact_alpd", tol=0.0, max_iters=50)
    for u, v in zip(a.z, b.z):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-13)
    assert torch.equal(a.counts["coupling_gradient_calls"], b.counts["coupling_gradient_calls"])


def test_inexact_alpd_inner_schedule():
    # N_t = max(1, ceil(p ln(t + 2) / -ln(1 - 1/sqrt(kappa_t)))), kappa_t = (L_xx + eta_t) / eta_t,
    # eta_t = 2 L_g / (t + 1) + 2 L_xy^2 / (mu (t + t_0)), t_0 = 2, recomputed here by hand.
    problem = qcqp(batch=2)
    L = problem.coupling.lipschitz()
    L_g = torch.linalg.eigvalsh(problem.g.P)[:, -1]
    solver = saddle.get_solver("inexact_alpd", inner_iterations=None, inner_accuracy=2.0)
    state = solver.init(problem, problem.z0)
    z = problem.z0
    for t in range(4):
        before = state.coupling_gradient_calls
        z, state = solver.step(problem, z, state)
        eta = 2 * L_g / (t + 1) + 2 * L["xy"] ** 2 / (1.0 * (t + 2))
        kappa = (L["xx"] + eta) / eta
        expected = [max(1, math.ceil(2.0 * math.log(t + 2) / -math.log(1 - 1 / math.sqrt(k)))) for k in kappa.tolist()]
        assert (state.coupling_gradient_calls - before).tolist() == expected


# -- 4. batches, per-instance constants, bad inputs -------------------------------------------------


def _penalized_instance(data, i, mu, Y):
    return _penalized_qp(tuple(t[i:i + 1] for t in data), mu, Y)


@pytest.mark.parametrize("solver", ["lpd", "alpd", "inexact_alpd"])
@pytest.mark.parametrize("kind", ["box", "l1", "qcqp"])
def test_batched_solve_equals_loop_of_single_solves(solver, kind):
    if kind == "qcqp":
        data = _qcqp_data(10, 2, 3, 1, 10.0, 2)
        batched_problem = _qcqp(data, 1.0, 100.0)
        singles = [_qcqp(tuple(t[i:i + 1] for t in data), 1.0, 100.0) for i in range(3)]
    else:
        data = _penalized_qp_data(8, 6, 3, 5, 100.0)
        batched_problem = _penalized_qp(data, 1.0, kind)
        singles = [_penalized_instance(data, i, 1.0, kind) for i in range(3)]
    kw = {"inner_iterations": None, "inner_accuracy": 1.0} if solver == "inexact_alpd" else {}
    batched = saddle.solve(batched_problem, solver, tol=0.0, max_iters=60, **kw)
    if solver == "inexact_alpd" and kind == "qcqp":
        # the instances ran different numbers of inner steps
        assert len(set(batched.counts["coupling_gradient_calls"].tolist())) > 1
    for i, problem in enumerate(singles):
        single = saddle.solve(problem, solver, tol=0.0, max_iters=60, **kw)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        for name, count in batched.counts.items():
            assert count[i] == single.counts[name][0], name


@pytest.mark.parametrize("solver", ["lpd", "alpd", "inexact_alpd"])
def test_per_instance_constants_act_per_instance(solver):
    data = _penalized_qp_data(8, 6, 3, 6, 100.0)
    problem = _penalized_qp(data, 1.0, "box")
    L_g = torch.linalg.eigvalsh(problem.g.P)[:, -1] * torch.tensor([1.0, 2.0, 4.0], dtype=DT)
    mu = torch.tensor([1.0, 0.5, 0.25], dtype=DT)
    batched = saddle.solve(problem, solver, lipschitz_g=L_g, mu=mu, tol=0.0, max_iters=40)
    differs = False
    for i in range(3):
        single_problem = _penalized_instance(data, i, 1.0, "box")
        single = saddle.solve(single_problem, solver, lipschitz_g=float(L_g[i]), mu=float(mu[i]), tol=0.0,
                              max_iters=40)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        default = saddle.solve(single_problem, solver, tol=0.0, max_iters=40)
        differs |= not torch.allclose(default.z[0], single.z[0], rtol=0, atol=1e-9)
    assert differs, "the settings should change the iterates"


@pytest.mark.parametrize("solver", ["lpd", "alpd", "inexact_alpd"])
def test_bad_inputs_raise_errors_naming_the_argument(solver):
    problem = penalized_qp(n=4, m=3, batch=2, seed=0)
    with pytest.raises(ValueError, match="mu"):
        saddle.solve(problem, solver, mu=0.0)
    with pytest.raises(ValueError, match="mu"):
        saddle.solve(problem, solver, mu=torch.tensor([1.0, -1.0], dtype=DT))
    with pytest.raises(ValueError, match="lipschitz_g"):
        saddle.solve(problem, solver, lipschitz_g=torch.ones(3, dtype=DT))  # wrong batch size
    with pytest.raises(ValueError, match="dual_step"):
        saddle.solve(problem, solver, dual_step="exact")
    x0, y0 = problem.z0
    # h not strongly convex: mu = 0.
    flat = CompositeSaddleProblem(problem.coupling, x0, y0, g=problem.g, X=Ball(1.0), Y=Box(-1.0, 1.0))
    with pytest.raises(ValueError, match="mu"):
        saddle.solve(flat, solver, max_iters=1)
    # Missing constants: a smooth g without a Lipschitz constant, a semi-linear coupling without L_xx.
    smooth_g = CompositeSaddleProblem(problem.coupling, x0, y0, g=Smooth(lambda x: (x ** 4).sum(-1)), h=problem.h,
                                      X=Ball(1.0), Y=Box(-1.0, 1.0))
    with pytest.raises(ValueError, match="lipschitz_g"):
        saddle.solve(smooth_g, solver, max_iters=1)
    saddle.solve(smooth_g, solver, lipschitz_g=12.0, max_iters=3)  # given: it runs
    K = problem.coupling.K
    semi = CompositeSaddleProblem(SemiLinear(lambda x: torch.tanh(x) @ K[0].mT, lipschitz_xy=10.0), x0, y0,
                                  g=problem.g, h=problem.h, X=Ball(1.0), Y=Box(-1.0, 1.0))
    with pytest.raises(ValueError, match="lipschitz_xx"):
        saddle.solve(semi, solver, max_iters=1)
    # Not a CompositeSaddleProblem.
    plain = SaddleProblem(lambda x, y: (x * y).sum(-1), x0[:, :3], y0)
    with pytest.raises(TypeError, match="CompositeSaddleProblem"):
        saddle.solve(plain, solver, max_iters=1)
    with pytest.raises(ValueError, match="dual_step='prox'"):
        saddle.solve(penalized_qp(n=4, m=3, batch=1, Y="l1"), solver, dual_step="prox")
    if solver == "inexact_alpd":
        with pytest.raises(ValueError, match="inner_iterations"):
            saddle.solve(problem, solver, inner_iterations=0)
        with pytest.raises(ValueError, match="inner_accuracy"):
            saddle.solve(problem, solver, inner_accuracy=-1.0)


def test_composite_problems_expose_the_smooth_and_nonsmooth_parts_of_g_and_h():
    B, n, m = 2, 3, 2
    quad, l1 = Quadratic(torch.ones(B, n, dtype=torch.float64)), saddle.L1(0.5)
    problem = CompositeSaddleProblem(torch.ones(B, m, n, dtype=torch.float64), torch.zeros(B, n, dtype=torch.float64),
                                     torch.zeros(B, m, dtype=torch.float64), g=saddle.Sum(quad, l1),
                                     h=Quadratic(torch.ones(B, m, dtype=torch.float64)))
    (g_smooth, g_rough), (h_smooth, h_rough) = problem.g_parts, problem.h_parts
    assert (g_smooth, g_rough) == (quad, l1)
    assert h_smooth is problem.h and isinstance(h_rough, saddle.Zero)
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]], dtype=torch.float64)
    # g = 1/2 |x|^2 + 0.5 |x|_1: the smooth part's gradient is x, the whole value adds 0.5 |x|_1.
    torch.testing.assert_close(g_smooth.grad(x), x, rtol=0, atol=0)
    torch.testing.assert_close(g_smooth.value(x) + g_rough.value(x), 0.5 * (x * x).sum(-1) + 0.5 * x.abs().sum(-1),
                               rtol=1e-15, atol=0)


def test_no_module_outside_problem_py_reads_a_problems_private_attributes():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    private = re.compile(r"\bproblem\._[a-z]")
    sources = [path for folder in ("saddle", "problems") for path in (root / folder).rglob("*.py")
               if path.name != "problem.py"]
    offenders = [f"{path.relative_to(root)}:{i}" for path in sources
                 for i, line in enumerate(path.read_text().splitlines(), 1) if private.search(line)]
    assert offenders == []
