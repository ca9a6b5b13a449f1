"""Restarted Halpern PDHG with reflection (`saddle.solvers.halpern`), against HiGHS and closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

import saddle
from saddle import LinearProgram, Status, problems
from saddle.solvers import halpern
from saddle.solvers.pdhg_map import diagonal_preconditioner, scaled_norm_bound

F64 = torch.float64


def _random_lps(B, m_ub, m_eq, n, seed, scale_rows=False):
    """B feasible, bounded LPs on [0, 2]^n (b from an interior point); rows scaled by 1e-2..1e2 if asked."""
    rng = np.random.default_rng(seed)
    x_feas = rng.uniform(0, 1, (B, n))
    A = rng.standard_normal((B, m_eq + m_ub, n))
    if scale_rows:
        A *= np.logspace(-2, 2, m_eq + m_ub)[None, :, None] * rng.uniform(0.5, 2, (B, 1, 1))
    d = np.einsum("bmn,bn->bm", A, x_feas)
    d[:, m_eq:] += rng.uniform(0, 1, (B, m_ub))
    return rng.standard_normal((B, n)), A, d


def _lp(c, K, d, m_eq, lo=0.0, hi=2.0):
    n = c.shape[-1]
    t = torch.as_tensor
    K = K if isinstance(K, torch.Tensor) else t(K, dtype=F64)
    return LinearProgram(t(c, dtype=F64), K, t(d, dtype=F64), m_eq, torch.full((1, n), lo, dtype=F64),
                         torch.full((1, n), hi, dtype=F64))


def _highs(c, A, d, m_eq, bounds=(0, 2)):
    res = scipy.optimize.linprog(c, A[m_eq:], d[m_eq:], A[:m_eq] if m_eq else None, d[:m_eq] if m_eq else None,
                                 bounds, method="highs")
    assert res.status == 0
    return res.fun


def _solve_lp(problem, tol=1e-9, **settings):
    return saddle.solve(problem, "r2hpdhg", measure="kkt", tol=tol, max_iters=30_000, divergence_factor=math.inf,
                        **settings)


def test_r2hpdhg_reaches_highs_value_on_a_dense_batch_of_lps():
    c, A, d = _random_lps(3, 20, 6, 30, seed=1)
    problem = _lp(c, A, d, 6)
    sol = _solve_lp(problem)
    assert (sol.status == Status.CONVERGED).all(), sol.status
    kkt = problem.kkt(sol.z)
    assert (kkt["primal_residual"] <= 1e-9).all() and (kkt["dual_residual"] <= 1e-9).all()
    for i in range(3):
        ref = _highs(c[i], A[i], d[i], 6)
        assert abs(kkt["primal_objective"][i].item() - ref) <= 1e-7 * max(1.0, abs(ref))


def test_r2hpdhg_reaches_highs_value_with_a_shared_sparse_matrix():
    rng = np.random.default_rng(2)
    S = scipy.sparse.random(40, 60, density=0.15, random_state=2, format="csr")
    x_feas = rng.uniform(0, 1, 60)
    d = np.stack([S @ x_feas + rng.uniform(0.05, 1, 40) for _ in range(2)])
    c = rng.standard_normal((2, 60))
    K = torch.sparse_csr_tensor(torch.as_tensor(S.indptr), torch.as_tensor(S.indices), torch.as_tensor(S.data),
                                S.shape, dtype=F64)
    problem = _lp(c, K, d, 0, hi=1.0)
    sol = _solve_lp(problem)
    assert (sol.status == Status.CONVERGED).all(), sol.status
    for i in range(2):
        ref = scipy.optimize.linprog(c[i], S, d[i], bounds=(0, 1), method="highs").fun
        got = problem.kkt(sol.z)["primal_objective"][i].item()
        assert abs(got - ref) <= 1e-7 * max(1.0, abs(ref))


def test_r2hpdhg_through_linprog_matches_highs():
    c, A, d = _random_lps(1, 12, 4, 18, seed=3)
    res = saddle.linprog(c[0], A[0, 4:], d[0, 4:], A[0, :4], d[0, :4], bounds=(0, 2), method="r2hpdhg", tol=1e-9)
    ref = _highs(c[0], A[0], d[0], 4)
    assert res.status == 0 and abs(res.fun.item() - ref) <= 1e-7 * max(1.0, abs(ref))


def test_r2hpdhg_solves_matrix_games_to_the_highs_value():
    problem = problems.get("matrix_game", n=12, m=9, batch_size=6, seed=11)
    sol = saddle.solve(problem, "r2hpdhg", measure="gap", tol=1e-10, max_iters=20_000)
    assert (sol.status == Status.CONVERGED).all(), sol.status
    assert (problem.objective(sol.z) - problem.reference.value).abs().max() <= 1e-9
    # The gap recomputed from the payoff matrix: max_j (A^T x)_j - min_i (A y)_i.
    A = problem.K.mT
    gap = (A.mT @ sol.x.unsqueeze(-1)).squeeze(-1).amax(-1) - (A @ sol.y.unsqueeze(-1)).squeeze(-1).amin(-1)
    assert (gap <= 1e-10).all()


def test_batched_solve_equals_the_loop_with_per_instance_restarts_and_weights():
    # Rows scaled differently per instance: restarts and primal weights differ between instances.
    c, A, d = _random_lps(3, 15, 5, 20, seed=4, scale_rows=True)
    problem = _lp(c, A, d, 5)
    batched = saddle.solve(problem, "r2hpdhg", tol=0.0, max_iters=448)
    state = batched.state
    assert len(set(state.restarts.tolist())) > 1 or len(set(state.primal_weight.tolist())) == 3
    # Batched and single products differ in the last bits; the restarts' log / exp of the moves
    # amplify that (measured 1.4e-10 relative on the weights), far below what a batching bug moves.
    for i in range(3):
        single = saddle.solve(problem.select(i), "r2hpdhg", tol=0.0, max_iters=448)
        assert single.state.restarts[0] == state.restarts[i]
        torch.testing.assert_close(single.state.primal_weight[0], state.primal_weight[i], rtol=1e-8, atol=0)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i], b[0], rtol=0, atol=1e-8)


def _plain_pdhg_map(problem, x, y, eta, omega, dc, dr):
    """T(x, y) for an LP from the formulas, with the dense K: clip and project by hand."""
    K = problem.coupling.dense()
    tau, sigma = eta / omega * dc.square(), eta * omega * dr.square()
    x_new = torch.clamp(x - tau * (problem.c + (K.mT @ y.unsqueeze(-1)).squeeze(-1)), problem.lo, problem.hi)
    v = y + sigma * ((K @ (2 * x_new - x).unsqueeze(-1)).squeeze(-1) - problem.d)
    y_new = torch.cat([v[:, :problem.n_eq], v[:, problem.n_eq:].clamp_min(0)], -1)
    return x_new, y_new


def test_reported_point_is_the_pdhg_map_of_the_iterate_and_its_kkt_is_the_measured_one():
    c, A, d = _random_lps(2, 10, 3, 12, seed=5)
    problem = _lp(c, A, d, 3)
    solver = saddle.get_solver("r2hpdhg")
    z, state = problem.z0, solver.init(problem, problem.z0)
    for _ in range(100):  # past a restart check
        previous, previous_state = z, state
        z, state = solver.step(problem, z, state)
    expected = _plain_pdhg_map(problem, *previous, previous_state.step_size.unsqueeze(-1),
                               previous_state.primal_weight.unsqueeze(-1), state.col_scale, state.row_scale)
    for got, want in zip(solver.output(problem, z, state), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert not torch.equal(z[0], expected[0])  # the Halpern iterate is another point
    sol = _solve_lp(problem, tol=1e-8)
    measured = problem.measure("kkt", sol.z, problem.F(sol.z))
    assert (sol.status == Status.CONVERGED).all() and (measured <= 1e-8).all()
    torch.testing.assert_close(sol.z[0], sol.state.output_x, rtol=0, atol=0)


def test_warm_start_from_a_nearby_lp_needs_fewer_iterations():
    c, A, d = _random_lps(1, 20, 5, 30, seed=6)
    first = _solve_lp(_lp(c, A, d, 5))
    nearby = _lp(c * (1 + 0.01 * np.random.default_rng(7).standard_normal(c.shape)), A, d, 5)
    cold = _solve_lp(nearby)
    warm = _solve_lp(nearby, warm_start=first)
    assert cold.status.item() == warm.status.item() == Status.CONVERGED
    # Linear convergence from a start 1e-2 closer: about a fifth fewer iterations (measured 1010 vs 1290).
    assert warm.iterations.item() < 0.85 * cold.iterations.item()
    # The warm state keeps the step and the primal weight of the previous solve.
    state = saddle.get_solver("r2hpdhg").warm_state(nearby, first.z, first.state)
    assert torch.equal(state.step_size, first.state.step_size)
    assert torch.equal(state.primal_weight, first.state.primal_weight)


@pytest.mark.parametrize("precondition", [True, False])
def test_step_bound_is_an_upper_bound_on_the_scaled_norm(precondition):
    g = torch.Generator().manual_seed(8)
    # Well and badly conditioned, square and rectangular, a rank-one matrix (no gap to converge on).
    mats = [torch.randn(4, 30, 50, generator=g, dtype=F64),
            torch.randn(4, 40, 40, generator=g, dtype=F64) * torch.logspace(-3, 3, 40, dtype=F64),
            torch.randn(2, 25, 1, generator=g, dtype=F64) * torch.randn(2, 1, 35, generator=g, dtype=F64)]
    for K in mats:
        coupling = saddle.Bilinear(K)
        dc, dr = diagonal_preconditioner(coupling, 10) if precondition else (None, None)
        scaled = K if dc is None else dr.unsqueeze(-1) * K * dc.unsqueeze(-2)
        exact = torch.linalg.matrix_norm(scaled, ord=2)
        bound = scaled_norm_bound(coupling, dc, dr).bound
        assert (bound >= exact).all(), (bound, exact)
        assert (bound <= 1.01 * exact).all()  # and not loose: the power iteration converged


def test_each_iteration_costs_one_product_with_k_and_one_with_its_transpose(monkeypatch):
    products = {"K": 0, "Kt": 0}

    def counted(kind, fn):
        def wrapped(K, v):
            products[kind] += 1
            return fn(K, v)
        return wrapped

    monkeypatch.setattr(halpern, "_matvec", counted("K", halpern._matvec))
    monkeypatch.setattr(halpern, "_rmatvec", counted("Kt", halpern._rmatvec))
    problem = problems.get("matrix_game", n=6, m=5, batch_size=2, seed=9)
    solver = saddle.get_solver("r2hpdhg", restart_every=4)
    z, state = problem.z0, solver.init(problem, problem.z0)
    for _ in range(20):
        z, state = solver.step(problem, z, state)
    assert products == {"K": 21, "Kt": 21}  # init + 20 iterations; restart checks cost none
    assert (state.operator_calls == 21).all() and (state.restarts >= 1).all()


def test_r2hpdhg_certifies_infeasible_and_unbounded_lps():
    # x1 + x2 <= 1 and x1 + x2 >= 2 (infeasible); max x1 + x2 s.t. x1 - x2 <= 1 (unbounded); a feasible one.
    c = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [1.0, 1.0]], dtype=F64)
    K = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]], [[1.0, -1.0], [0.0, 0.0]], [[1.0, 1.0], [-1.0, 0.0]]], dtype=F64)
    d = torch.tensor([[1.0, -2.0], [1.0, 0.0], [1.0, -0.5]], dtype=F64)
    problem = _lp(c, K, d, 0, hi=math.inf)
    sol = _solve_lp(problem, tol=1e-8)
    assert sol.status.tolist() == [Status.INFEASIBLE, Status.UNBOUNDED, Status.CONVERGED]


def _weights_at_restarts(problem, iterations, **settings):
    """The primal weight ``(B,)`` at the start and after every restart of the first instance, stepping by hand."""
    solver = saddle.get_solver("r2hpdhg", **settings)
    z, state = problem.z0, solver.init(problem, problem.z0)
    weights = [state.primal_weight[0].item()]
    for _ in range(iterations):
        z, state = solver.step(problem, z, state)
        if state.inner[0] == 0:
            weights.append(state.primal_weight[0].item())
    return weights


def test_primal_weight_stays_bounded_on_an_infeasible_lp_where_the_plain_pid_runs_away():
    # x1 + x2 <= 1 and x1 + x2 >= 2, x >= 0: the iterates drift along the Farkas ray (1, 1).
    c = torch.tensor([[1.0, 1.0]], dtype=F64)
    K = torch.tensor([[[1.0, 1.0], [-1.0, -1.0]]], dtype=F64)
    problem = _lp(c, K, torch.tensor([[1.0, -2.0]], dtype=F64), 0, hi=math.inf)
    plain = _weights_at_restarts(problem, 3000, primal_weight_change=1e300, primal_weight_range=1e300,
                                 primal_weight_progress=1e300)
    assert max(plain) / plain[0] > 1e10  # cuPDLPx's controller alone: omega 0.6 -> 7e13
    guarded = _weights_at_restarts(problem, 3000)
    steps = [abs(math.log(b / a)) for a, b in zip(guarded, guarded[1:])]
    assert len(guarded) > 5 and max(steps) <= math.log(4.0) * (1 + 1e-12)
    assert all(1e-3 <= w / guarded[0] <= 1e3 for w in guarded)


def test_primal_weight_changes_only_after_progress():
    # A progress fraction no restart error meets: omega moves at the first restart (which has no
    # previous one to compare with) and never again, where the default lets it move on.
    c, A, d = _random_lps(1, 10, 3, 12, seed=12, scale_rows=True)
    problem = _lp(c, A, d, 3)
    frozen = _weights_at_restarts(problem, 400, primal_weight_progress=1e-300)
    assert len(frozen) > 4 and frozen[1] != frozen[0] and set(frozen[1:]) == {frozen[1]}
    moving = _weights_at_restarts(problem, 400)
    assert moving[:2] == frozen[:2] and len(set(moving[1:])) > 1


@pytest.mark.parametrize("settings,match", [
    (dict(restart_every=0), "restart_every"),
    (dict(reflection=0.0), "reflection"),
    (dict(reflection=1.5), "reflection"),
    (dict(primal_weight_gains=(0.99, 0.01)), "primal_weight_gains"),
    (dict(primal_weight_gains=(0.99, -0.01, 0.0)), "primal_weight_gains"),
    (dict(primal_weight_smoothing=2.0), "primal_weight_smoothing"),
    (dict(sufficient=0.6, necessary=0.5), "sufficient <= necessary"),
    (dict(step_size=-1.0), "step_size"),
    (dict(artificial=1.5), "artificial"),
    (dict(primal_weight_change=1.0), "primal_weight_change"),
    (dict(primal_weight_range=0.5), "primal_weight_range"),
    (dict(primal_weight_progress=0.0), "primal_weight_progress"),
])
def test_bad_settings_raise_naming_the_setting(settings, match):
    with pytest.raises(ValueError, match=match):
        saddle.get_solver("r2hpdhg", **settings)


def test_r2hpdhg_explains_where_it_does_not_apply():
    with pytest.raises(ValueError, match="r2hpdhg: precondition=True"):
        saddle.solve(problems.get("matrix_game", n=3), "r2hpdhg", precondition=True)
    with pytest.raises(ValueError, match="r2hpdhg needs a BilinearProblem"):
        saddle.solve(problems.get("comonotone_linear"), "r2hpdhg")
