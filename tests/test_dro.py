"""DRO problems (problems.dro), their sets, and the stochastic solvers, against cvxpy and closed forms."""

from __future__ import annotations

import math

import cvxpy as cp
import numpy as np
import pytest
import torch

from saddle import problems
import saddle
from saddle.problems.dro import DROProblem, esrm, extremile, superquantile
from saddle.sets import CappedSimplex, ChiSquareBall, Permutahedron, project_simplex
from saddle.stochastic import draw

pytestmark = pytest.mark.filterwarnings("ignore:Solution may be inaccurate")


def _cvx_projection(u: np.ndarray, extra) -> np.ndarray:
    q = cp.Variable(u.shape[0])
    cp.Problem(cp.Minimize(cp.sum_squares(q - u)), [q >= 0, cp.sum(q) == 1] + extra(q)).solve(solver=cp.CLARABEL)
    return q.value


def test_projections_match_cvxpy_and_closed_forms():
    gen = torch.Generator().manual_seed(0)
    n = 10
    u = 0.4 * torch.randn(2, n, dtype=torch.float64, generator=gen)
    cap = 1 / (0.3 * n)
    sigma = superquantile(n, 0.3) * 0.5 + extremile(n, 3.0) * 0.5
    sets = [(CappedSimplex(cap), lambda q: [q <= cap]),
            (ChiSquareBall(0.2), lambda q: [n / 2 * cp.sum_squares(q - 1 / n) <= 0.2]),
            (Permutahedron(sigma), lambda q: [cp.sum_largest(q, k) <= float(sigma.sort(descending=True).values[:k].sum())
                                              for k in range(1, n)])]
    for s, extra in sets:
        P = s.project(u)
        assert s.contains(P).all()
        for i in range(2):
            np.testing.assert_allclose(P[i].numpy(), _cvx_projection(u[i].numpy(), extra), atol=2e-6)
        # the lmo attains the support function, and nothing in the set does better than it
        L = s.lmo(u)
        assert s.contains(L).all()
        assert ((L * u).sum(-1) <= (P * u).sum(-1) + 1e-12).all()
    # The chi-square ball's projection is proj_simplex(s u) with the divergence on the sphere (bisection on s).
    ball = ChiSquareBall(torch.tensor([0.05, 0.3], dtype=torch.float64))
    lo, hi = torch.zeros(2, 1, dtype=torch.float64), torch.ones(2, 1, dtype=torch.float64)
    for _ in range(200):
        mid = (lo + hi) / 2
        inside = 0.5 * n * (project_simplex(u * mid) - 1 / n).square().sum(-1, keepdim=True) <= ball.rho.unsqueeze(-1)
        lo, hi = torch.where(inside, mid, lo), torch.where(inside, hi, mid)
    torch.testing.assert_close(ball.project(u), project_simplex(u * lo), rtol=0, atol=1e-12)
    # CVaR's capped simplex at alpha n integer is the superquantile permutahedron.
    torch.testing.assert_close(CappedSimplex(1 / (0.5 * n)).project(u), Permutahedron(superquantile(n, 0.5)).project(u),
                               rtol=0, atol=1e-12)


def _capped_simplex_reference(u: np.ndarray, cap: float) -> np.ndarray:
    """Exact capped-simplex projection by brute force: g at all 2n breakpoints, then the linear piece."""
    breaks = np.sort(np.concatenate([u, u - cap]))
    g = np.clip(u[None, :] - breaks[:, None], 0, cap).sum(1)  # nonincreasing
    k = np.nonzero(g >= 1)[0][-1]
    lo, hi = breaks[k], breaks[min(k + 1, len(breaks) - 1)]
    t = (lo + hi) / 2 if hi > lo else lo
    mid = (u - cap < t) & (u > t)
    top = u - cap >= t
    tau = (u[mid].sum() + cap * top.sum() - 1) / mid.sum() if mid.any() else lo
    return np.clip(u - tau, 0, cap)


def test_capped_simplex_projection_is_exact():
    """Bisection on the threshold, then the exact linear piece: ties, per-instance caps, float32, cap = 1/n."""
    gen = torch.Generator().manual_seed(3)
    n = 300
    u = torch.randn(4, n, dtype=torch.float64, generator=gen)
    u[1] = torch.round(u[1] * 3) / 3  # many ties
    u[2] = 0.25                        # all tied
    u[3] = 1e3 * u[3]                  # wide range
    caps = torch.tensor([1 / (0.1 * n), 1 / (0.5 * n), 0.01, 1 / n], dtype=torch.float64)
    q = CappedSimplex(caps).project(u)
    assert CappedSimplex(caps).contains(q, atol=1e-13).all()
    for i in range(4):
        np.testing.assert_allclose(q[i].numpy(), _capped_simplex_reference(u[i].numpy(), float(caps[i])),
                                   rtol=0, atol=1e-13)
    q32 = CappedSimplex(0.05).project(u[:1].float())
    assert q32.dtype == torch.float32 and abs(float(q32.sum()) - 1) < 1e-5 and float(q32.max()) <= 0.05 + 1e-7
    # Idempotent: a point of the set is its own projection.
    torch.testing.assert_close(CappedSimplex(caps).project(q), q, rtol=0, atol=1e-14)


CASES = [("cvar", "logistic"), ("cvar", "smooth_hinge"), ("cvar", "squared"), ("chi2_ball", "logistic"),
         ("chi2_ball", "squared"), ("chi2", "logistic"), ("chi2", "smooth_hinge"), ("kl", "logistic"),
         ("kl", "squared"), ("spectral", "logistic"), ("erm", "logistic")]


def _dro(ambiguity, loss, **kw):
    settings = dict(n=40, d=4, ambiguity=ambiguity, loss=loss, batch_size=2, seed=1, alpha=0.5, rho=0.1, lam=0.5,
                    nu=0.2, spectrum="extremile")
    settings.update(kw)
    return problems.get("dro", **settings)


@pytest.mark.parametrize("ambiguity,loss", CASES)
def test_deterministic_solvers_match_cvxpy(ambiguity, loss):
    problem = _dro(ambiguity, loss)
    ref = problem.reference
    if ambiguity == "kl":  # the penalty's gradient is infinite on the boundary: multiplicative weights
        sol = saddle.solve(problem, "mirror_prox", step_size=0.5, tol=1e-11, max_iters=20_000)
    else:
        sol = saddle.solve(problem, "extragradient", tol=1e-11, max_iters=20_000)
    assert (sol.status == saddle.Status.CONVERGED).all(), sol
    primal = problem.primal_objective(sol.x)
    assert ((primal - ref.value).abs() <= 1e-6 * ref.value.abs()).all(), (primal, ref.value)
    # the max player's weights: cvxpy's duals of t >= l(theta), and the closed-form best response
    torch.testing.assert_close(sol.y, ref.solution[1], rtol=0, atol=1e-5)
    if ambiguity != "cvar":  # (at CVaR's threshold ties the closed form picks a vertex of the optimal face)
        torch.testing.assert_close(sol.y, problem.best_response(sol.x), rtol=0, atol=1e-7)
    # the worst case at the solution attains the primal objective (q is a maximizer)
    torch.testing.assert_close(problem.objective(sol.z), primal, rtol=1e-9, atol=1e-9)


def test_kl_closed_form_is_the_softmax():
    problem = _dro("kl", "logistic", lam=0.3)
    theta = torch.randn(2, 4, dtype=torch.float64)
    l = problem.losses(theta)
    torch.testing.assert_close(problem.best_response(theta), torch.softmax(l / 0.3, -1))
    q = problem.best_response(theta)
    torch.testing.assert_close(problem.primal_objective(theta), problem.objective((theta, q)))


def test_cvar_value_is_the_top_k_average():
    problem = _dro("cvar", "squared", alpha=0.25)
    theta = torch.randn(2, 4, dtype=torch.float64)
    top = problem.losses(theta).topk(10, dim=-1).values.mean(-1)
    torch.testing.assert_close(problem.primal_objective(theta), top + 0.05 * theta.square().sum(-1))


def test_spectra_are_distributions_and_increasing():
    for sigma in (superquantile(20, 0.3), extremile(20, 2.5), esrm(20, 2.0)):
        assert sigma.shape == (20,) and abs(float(sigma.sum()) - 1) < 1e-12
        assert (sigma.diff() >= -1e-15).all()
    torch.testing.assert_close(superquantile(10, 0.5), torch.tensor([0.0] * 5 + [0.2] * 5, dtype=torch.float64))


def _distance(z, ref):
    return torch.sqrt(sum((a - b).square().sum(-1) for a, b in zip(z, ref)))


def _track(problem, solver, iters, every, **kw):
    ref = problem.reference.solution
    seen = []
    saddle.solve(problem, solver, tol=0.0, max_iters=iters, check_every=every,
                 callback=lambda p: seen.append(_distance(p.z, ref)), **kw)
    return torch.stack(seen)  # (checks, B)


def test_vr_eg_converges_linearly_on_a_strongly_monotone_finite_sum():
    problem = problems.get("dro", n=32, d=4, ambiguity="chi2", lam=1.0, mu=0.5, batch_size=3, seed=2)
    d = _track(problem, "vr_eg", 3000, 500, step_size=0.02)
    # distance down by > 1e4 in 3000 steps (~ 190 passes), on every seed, at a steady linear rate
    assert (d[-1] <= 1e-4 * d[0]).all(), d
    assert (d[-1] <= 1e-6).all()
    assert (d[2:] <= 0.5 * d[1:-1]).all()


@pytest.mark.parametrize("spectrum", ["superquantile", "extremile"])
def test_prospect_converges_linearly_on_spectral_risk(spectrum):
    problem = problems.get("dro", n=32, d=4, ambiguity="spectral", spectrum=spectrum, alpha=0.5, nu=0.2, mu=0.5,
                           batch_size=2, seed=2)
    d = _track(problem, "prospect", 2000, 250, step_size=0.01)
    assert (d[-1] <= 1e-5).all(), d
    assert (d[3:] <= 0.6 * d[2:-1]).all(), d  # a linear rate, check after check


def test_seg_noise_floor_shrinks_with_the_batch_size():
    # Constant-step SEG settles at E|z - z*|^2 ~ eta sigma^2 / (mu m): 16 times the batch, about a 16th of the floor.
    problem = problems.get("dro", n=32, d=4, ambiguity="chi2", lam=1.0, mu=0.5, batch_size=8, seed=2)
    floors = {}
    for m in (1, 16):
        d = _track(problem, "seg", 3000, 100, step_size=0.01, minibatch=m)
        floors[m] = d[10:].square().mean()
    assert floors[16] < floors[1] / 6, floors
    assert floors[16] > 0


def test_same_sample_and_double_step_seg_make_progress():
    problem = problems.get("dro", n=32, d=4, ambiguity="chi2", lam=1.0, mu=0.5, batch_size=4, seed=2)
    same = _track(problem, "seg", 1000, 100, step_size=0.01, minibatch=4, same_sample=True)
    assert (same[5:].mean(0) < 0.8 * same[0]).all()
    double = _track(problem, "double_step_seg", 3000, 500, step_size=0.05)
    assert (double[-1] < 0.4 * double[0]).all() and (double[-1] < double[1]).all()


def test_seg_on_a_deterministic_problem_is_extragradient():
    problem = problems.get("quadratic", n=6, m=4, batch_size=2, seed=3)
    a = saddle.solve(problem, "seg", step_size=0.05, tol=0.0, max_iters=50)
    b = saddle.solve(problem, "extragradient", step_size=0.05, tol=0.0, max_iters=50)
    for u, v in zip(a.z, b.z):
        torch.testing.assert_close(u, v, rtol=0, atol=1e-14)


def test_draws_are_uniform_and_reproducible():
    seeds = torch.arange(4, dtype=torch.int64)
    key = torch.full((4,), 7, dtype=torch.int64)
    a = draw(seeds, key, 10, 20_000)
    assert torch.equal(a, draw(seeds, key, 10, 20_000))
    assert not torch.equal(a, draw(seeds, key + 1, 10, 20_000))
    counts = torch.stack([torch.bincount(row, minlength=10) for row in a]).double()
    assert ((counts - 2000).abs() < 5 * math.sqrt(2000)).all()
    assert torch.equal(draw(seeds[2:3], key[2:3], 10, 50), a[2:3, :50])


def test_bad_inputs_raise_clear_errors():
    A = torch.randn(20, 3, dtype=torch.float64)
    b = torch.where(torch.randn(20, dtype=torch.float64) > 0, 1.0, -1.0)
    for alpha in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="alpha"):
            DROProblem(A, b, ambiguity="cvar", alpha=alpha)
    with pytest.raises(ValueError, match="lam"):
        DROProblem(A, b, ambiguity="chi2", lam=-1.0)
    with pytest.raises(ValueError, match="lam"):
        DROProblem(A, b, ambiguity="kl", lam=0.0)
    with pytest.raises(ValueError, match="rho"):
        DROProblem(A, b, ambiguity="chi2_ball", rho=-0.5)
    with pytest.raises(ValueError, match="labels"):
        DROProblem(A, b[:-1], ambiguity="cvar", alpha=0.5)
    with pytest.raises(ValueError, match="labels"):
        DROProblem(A, b.reshape(4, 5), ambiguity="cvar", alpha=0.5)
    with pytest.raises(ValueError, match="labels must be in"):
        DROProblem(A, b * 2, loss="logistic", ambiguity="cvar", alpha=0.5)
    with pytest.raises(ValueError, match="ambiguity"):
        DROProblem(A, b, ambiguity="wasserstein")
    with pytest.raises(ValueError, match="mu"):
        DROProblem(A, b, ambiguity="erm", mu=0.0)
    with pytest.raises(ValueError, match="spectrum"):
        DROProblem(A, b, ambiguity="spectral", spectrum=torch.ones(3) / 3)
    with pytest.raises(ValueError, match="step_size"):
        saddle.solve(problems.get("dro", n=10), "seg")
    with pytest.raises(ValueError, match="minibatch"):
        saddle.SEG(step_size=0.1, minibatch=0)
    with pytest.raises(TypeError, match="prospect needs a DRO problem"):
        saddle.solve(problems.get("quadratic"), "prospect", step_size=0.1)


def test_custom_loss_matches_the_builtin_one():
    A, b, _ = problems.dro.group_shift_data(30, 3, seed=4)
    mine = DROProblem(A, b, loss=lambda t, X, y: torch.nn.functional.softplus(-y * (X @ t.unsqueeze(-1)).squeeze(-1)),
                      ambiguity="chi2", lam=0.5)
    builtin = DROProblem(A, b, loss="logistic", ambiguity="chi2", lam=0.5)
    z = (torch.randn(1, 3, dtype=torch.float64), builtin.best_response(torch.zeros(1, 3, dtype=torch.float64)))
    for u, v in zip(mine.F(z), builtin.F(z)):
        torch.testing.assert_close(u, v)
    idx = torch.tensor([[0, 3, 3, 7]])
    for u, v in zip(mine.operator.sample(z, idx), builtin.operator.sample(z, idx)):
        torch.testing.assert_close(u, v)


def test_minibatch_estimates_are_unbiased():
    problem = _dro("chi2", "logistic")
    z = (torch.randn(2, 4, dtype=torch.float64), problem.z0[1])
    full = problem.F(z)
    idx = torch.arange(40).expand(2, 40)
    for u, v in zip(problem.operator.sample(z, idx), full):
        torch.testing.assert_close(u, v)


def test_sklearn_data_sets_load_when_installed():
    pytest.importorskip("sklearn")
    A, b = problems.dro.sklearn_data("breast_cancer")
    problem = DROProblem(A, b, ambiguity="cvar", alpha=0.2)
    assert problem.n == A.shape[0] and set(b.tolist()) == {-1.0, 1.0}
