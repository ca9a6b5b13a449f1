"""Known rates and the behaviour theory predicts, checked on seeded runs.

Every bound here is a theorem evaluated with the problem's constants, not a
number read off a previous run.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saddle import problems
import saddle
from saddle import Status
from saddle.plot import trace


def _distances(path: torch.Tensor, solution) -> torch.Tensor:
    """``(T, B)`` distances of traced iterates ``(T, B, N)`` to a solution point."""
    star = torch.cat(solution, dim=-1)
    return (path - star).norm(dim=-1)


# -- monotone problems: ergodic O(1/k) gap ---------------------------------------------------------------


def test_extragradient_ergodic_gap_is_O_1_over_k_on_matrix_games():
    # Nemirovski (2004), Euclidean setup: with a constant step eta <= 1/L the
    # eta-weighted average of the extrapolated points satisfies
    #     gap(z_bar_k) <= max_{u in Z} |u - z_0|^2 / 2 / (k eta).
    # From the uniform strategies, max_u |u - z_0|^2 / 2 = (1 - 1/n)/2 + (1 - 1/m)/2 (at a vertex).
    n, m = 12, 9
    problem = problems.get("matrix_game", n=n, m=m, batch_size=8, seed=5)
    eta = 0.9 / problem.lipschitz()
    sol = saddle.solve(problem, "extragradient", step_size=eta, average=True, tol=0.0, max_iters=3000,
                       check_every=50, measure="gap")
    omega = 0.5 * (1 - 1 / n) + 0.5 * (1 - 1 / m)
    k = sol.history["iteration"][1:].double()
    gap = sol.history["gap"][1:]
    bound = omega / (k.unsqueeze(1) * eta.unsqueeze(0))
    assert (gap <= bound).all()
    # And the averaged point really approaches the equilibrium value (HiGHS).
    ref = problem.reference
    assert ((problem.objective(sol.z) - ref.value).abs() <= bound[-1]).all()


def test_entropic_mirror_prox_gap_bound_depends_on_log_n():
    # Mirror-prox with the entropy on each simplex (Nemirovski 2004): F is
    # L-Lipschitz from the l1 to the l-infinity norm with L = max |A_ij|, and
    # with a constant step eta <= 1/L the averaged gap is <= (log n + log m) / (k eta)
    # (the KL divergence from the uniform start is at most log n + log m).
    n, m = 40, 30
    problem = problems.get("matrix_game", n=n, m=m, batch_size=6, seed=6, geometry="entropic")
    L = problem.K.abs().amax(dim=(-2, -1))
    eta = 1.0 / L
    sol = saddle.solve(problem, "mirror_prox", step_size=eta, average=True, tol=0.0, max_iters=1500,
                       check_every=50, measure="gap")
    k = sol.history["iteration"][1:].double()
    bound = (math.log(n) + math.log(m)) / (k.unsqueeze(1) * eta.unsqueeze(0))
    assert (sol.history["gap"][1:] <= bound).all()
    # The strategies stay on the simplex throughout.
    for b in sol.z:
        assert (b >= 0).all() and torch.allclose(b.sum(-1), torch.ones(6, dtype=b.dtype), atol=1e-12)


# -- strongly monotone problems: linear rates --------------------------------------------------------


@pytest.mark.parametrize("box", [None, 0.3])
def test_extragradient_linear_rate_on_strongly_monotone_quadratics(box):
    # For mu-strongly monotone L-Lipschitz F and eta = 1/(2L) (so 1 - eta^2 L^2 - 2 eta mu >= 0),
    #     |z_{k+1} - z*|^2 <= (1 - eta mu) |z_k - z*|^2      (projected EG, e.g. Tseng 1995).
    problem = problems.get("quadratic", n=8, m=6, mu=0.2, box=box, batch_size=4, seed=7)
    L, mu = problem.lipschitz(), problem.strong_monotonicity()
    eta = 0.5 / L
    path = trace(problem, "extragradient", iterations=300, step_size=eta)
    d = _distances(path, problem.reference.solution)
    k = torch.arange(d.shape[0], dtype=torch.float64).unsqueeze(1)
    bound = d[0] * (1 - eta * mu) ** (k / 2)
    assert (d <= bound * (1 + 1e-9) + 1e-13).all()
    assert (d[-1] < 1e-3 * d[0]).all()


@pytest.mark.parametrize("box", [None, 0.3])
def test_gda_linear_rate_on_strongly_monotone_quadratics(box):
    # |z+ - z*|^2 <= (1 - 2 eta mu + eta^2 L^2) |z - z*|^2 (projections are non-expansive);
    # eta = mu / L^2 gives the factor 1 - mu^2 / L^2.
    problem = problems.get("quadratic", n=8, m=6, mu=0.3, box=box, batch_size=4, seed=8)
    L, mu = problem.lipschitz(), problem.strong_monotonicity()
    eta = mu / L**2
    path = trace(problem, "gda", iterations=300, step_size=eta)
    d = _distances(path, problem.reference.solution)
    k = torch.arange(d.shape[0], dtype=torch.float64).unsqueeze(1)
    bound = d[0] * (1 - mu**2 / L**2) ** (k / 2)
    assert (d <= bound * (1 + 1e-9) + 1e-13).all()


# -- anchored extragradient: O(1/k) last-iterate residual -------------------------------------------


def test_anchored_eg_last_iterate_residual_bound():
    # Yoon and Ryu (2021), EAG-C with eta <= 1/(8L) on monotone L-Lipschitz F:
    #     |F(z_k)|^2 <= 4 (1 + eta L + eta^2 L^2) / (eta^2 (1 + eta L)) |z_0 - z*|^2 / (k + 1)^2.
    problem = problems.get("bilinear", n=10, batch_size=4, seed=9)
    L = problem.lipschitz()
    eta = 1 / (8 * L)
    path = trace(problem, "anchored_eg", iterations=400, step_size=eta)
    n = problem.dims[0]
    F_norm2 = torch.stack([sum(b.square().sum(-1) for b in problem.F((zk[:, :n], zk[:, n:]))) for zk in path])
    d0 = _distances(path[:1], problem.reference.solution)[0]
    k = torch.arange(path.shape[0], dtype=torch.float64).unsqueeze(1)
    c = 4 * (1 + eta * L + (eta * L) ** 2) / (eta**2 * (1 + eta * L))
    bound = c * d0**2 / (k + 1) ** 2
    assert (F_norm2 <= bound * (1 + 1e-9)).all()
    # The last iterate of plain EG with the same step has no such guarantee in k; on
    # this problem anchoring still must make real progress:
    assert (F_norm2[-1] < 1e-3 * F_norm2[0]).all()


# -- accelerated linearized primal-dual: O(1/k^2) ergodic gap ----------------------------------------


@pytest.mark.parametrize("solver", ["alpd", "inexact_alpd"])
@pytest.mark.parametrize("box", [None, 0.3])
def test_alpd_ergodic_gap_is_O_1_over_k_squared(solver, box):
    # Khalafi and Boob (2023), Thm. 2 with a bilinear (semi-linear) coupling: the gamma-weighted
    # average has gap(z_bar_k) = O(L_g D_X^2 / k^2 + L_xy^2 D_X^2 / (mu k^2) + mu D_Y^2 / k^2).
    # Checked as the rate: k^2 gap(z_bar_k) may not grow from k = 1000 to 4000 by more than the
    # 10% that lower-order terms leave; a 1/k rate would multiply it by 4. The exact gap is
    # available here (quadratic terms, unconstrained or on a box).
    problem = problems.get("quadratic", n=6, m=4, box=box, batch_size=4, seed=3)
    sol = saddle.solve(problem, solver, tol=0.0, max_iters=4000, check_every=1000, measure="gap")
    k = sol.history["iteration"].double()
    scaled = k.unsqueeze(1) ** 2 * sol.history["gap"]
    assert k[1] == 1000 and k[-1] == 4000
    assert (scaled[1] > 0).all()
    assert (scaled[-1] <= 1.1 * scaled[1]).all(), scaled
    torch.testing.assert_close(sol.history["gap"][-1], saddle.merit.gap(problem, sol.z), rtol=0, atol=0)


# -- the linear comonotone game: spectral radii predict convergence and divergence ------------------


def _iteration_matrix(solver: str, M: np.ndarray, eta: float, alpha: float = 0.5) -> np.ndarray:
    """The linear map of one iteration of each method on F(z) = M z (independent of the solvers' code)."""
    identity = np.eye(M.shape[0])
    if solver == "gda":
        return identity - eta * M
    if solver in ("extragradient", "eg_plus"):
        a = 1.0 if solver == "extragradient" else alpha
        return identity - a * eta * M @ (identity - eta * M)
    if solver == "optimistic":  # state (z_k, w_{k-1})
        return np.block([[identity - eta * M, eta**2 * M @ M], [identity, -eta * M]])
    if solver == "reflected":  # state (z_k, z_{k-1})
        return np.block([[identity - 2 * eta * M, eta * M], [identity, np.zeros_like(M)]])
    if solver == "alternating_gda":
        first = identity.copy()
        first[0] = identity[0] - eta * M[0]
        second = identity.copy()
        second[1] = identity[1] - eta * M[1]
        return second @ first
    raise ValueError(solver)


CASES = [(s, rho) for s in ("gda", "alternating_gda", "extragradient", "eg_plus", "optimistic", "reflected")
         for rho in (-0.05, -0.15, -0.3)]


@pytest.mark.parametrize("solver,rho", CASES)
def test_comonotone_linear_game_follows_the_spectral_radius(solver, rho):
    # f = a/2 |x|^2 + b x y - a/2 |y|^2 with a = rho L^2 < 0: F(z) = M z, M = [[a, b], [-b, a]].
    # Each method is a linear recursion; it converges iff its spectral radius is < 1.
    L = 1.0
    a = rho * L**2
    b = math.sqrt(L**2 - a**2)
    M = np.array([[a, b], [-b, a]])
    etas = np.array([0.2, 0.5, 0.9, 1.0]) / L
    radii = np.array([max(abs(np.linalg.eigvals(_iteration_matrix(solver, M, e)))) for e in etas])
    problem = problems.get("comonotone_linear", rho=rho, lipschitz=L, batch_size=len(etas), seed=10)
    settings = {"alpha": 0.5} if solver == "eg_plus" else {}
    sol = saddle.solve(problem, solver, step_size=torch.tensor(etas), tol=1e-9, max_iters=8000, **settings)
    for i, r in enumerate(radii):
        if r < 0.995:
            assert sol.status[i] == Status.CONVERGED, (solver, etas[i], r, sol.statuses[i])
            assert sol.distance[i] <= 1e-6
        elif r > 1.01:
            assert sol.status[i] == Status.DIVERGED, (solver, etas[i], r, sol.statuses[i])
        else:  # too close to 1 to tell in a bounded run
            continue
    if solver == "gda":
        # |1 - eta lambda|^2 = 1 - 2 eta a + eta^2 L^2 > 1 for a < 0: GDA diverges for every step.
        assert (radii > 1).all()


def test_eg_plus_theorem_settings_converge_where_extragradient_diverges():
    # Diakonikolas, Daskalakis and Jordan (2021): EG+ with extrapolation 1/L and
    # update 1/(2L) converges on weak-MVI problems with rho > -1/(8L); with
    # rho = -0.1/L < -0.0 extragradient with eta = 0.9/L already diverges on the linear game.
    L = 1.0
    problem = problems.get("comonotone_linear", n=3, rho=-0.1, lipschitz=L, batch_size=3, seed=11)
    plus = saddle.solve(problem, "eg_plus", step_size=1.0 / L, alpha=0.5, tol=1e-9, max_iters=5000)
    assert (plus.status == Status.CONVERGED).all() and (plus.distance <= 1e-6).all()
    a, b = -0.1, math.sqrt(1 - 0.01)
    r_eg = max(abs(np.linalg.eigvals(_iteration_matrix("extragradient", np.array([[a, b], [-b, a]]), 0.9))))
    eg = saddle.solve(problem, "extragradient", step_size=0.9 / L, tol=1e-9, max_iters=20000)
    assert r_eg > 1 and (eg.status == Status.DIVERGED).all()


# -- cycling ------------------------------------------------------------------------------------------


def test_alternating_gda_cycles_on_xy():
    # The iteration matrix [[1, -eta], [eta, 1 - eta^2]] has determinant 1 and
    # trace 2 - eta^2 in (-2, 2): eigenvalues on the unit circle, a bounded
    # orbit that never converges (and never diverges).
    eta = 0.3
    T = np.array([[1, -eta], [eta, 1 - eta**2]])
    assert np.allclose(abs(np.linalg.eigvals(T)), 1)
    problem = problems.get("xy", x0=1.0, y0=0.5)
    path = trace(problem, "alternating_gda", iterations=2000, step_size=eta)[:, 0]
    # The orbit stays within cond(V) |z_0| of the origin (V: the eigenvectors of T) ...
    V = np.linalg.eig(T)[1]
    radius = np.linalg.cond(V) * path[0].norm().item()
    assert (path.norm(dim=-1) <= radius * (1 + 1e-9)).all()
    # ... and keeps away from the saddle point (0, 0): the modified energy
    # x^2 + y^2 - eta x y is conserved exactly by this map.
    energy = path[:, 0] ** 2 + path[:, 1] ** 2 - eta * path[:, 0] * path[:, 1]
    torch.testing.assert_close(energy, energy[:1].expand_as(energy), rtol=1e-10, atol=0)


def test_gda_and_extragradient_end_on_the_limit_cycle_of_forsaken():
    # Hsieh, Mertikopoulos and Cevher (2021): on "Forsaken" the stationary point
    # is surrounded by an attracting limit cycle; small-step GDA and EG started
    # near it end up on the cycle instead of converging.
    problem = problems.get("forsaken")
    star = torch.cat(problem.reference.solution, dim=-1)
    for solver in ("gda", "extragradient"):
        path = trace(problem, solver, iterations=3000, step_size=0.05)[:, 0]
        dist = (path - star).norm(dim=-1)
        assert dist[-1000:].min() > 0.1, solver  # never close to the stationary point late in the run
        assert dist.max() < 5.0, solver  # and bounded: a cycle, not divergence


@pytest.mark.slow
def test_global_forsaken_small_steps_cycle_and_adaptive_steps_escape():
    # Pethick et al. (2022): on GlobalForsaken (z* = 0; on the box L = 6.31 and the
    # weak-MVI parameter rho = -0.12, outside every constant-step guarantee) an
    # attracting limit cycle surrounds z*. Near z* the Jacobian's symmetric part is
    # (2/3) I, so small steps converge from close starts; from far starts they
    # end on the cycle. Steps adapted to the local Lipschitz constant escape it.
    problem = problems.get("global_forsaken", batch_size=16, seed=12)
    start = torch.cat(problem.z0, dim=-1).norm(dim=-1)
    near, far = start < 0.8, start > 1.2
    assert near.sum() >= 3 and far.sum() >= 5
    for solver, eta in (("gda", 0.02), ("extragradient", 0.05)):
        sol = saddle.solve(problem, solver, step_size=eta, tol=1e-9, max_iters=20_000)
        assert (sol.status[near] == Status.CONVERGED).all(), solver
        assert (sol.distance[far] > 1.0).all(), solver  # on the cycle, not at z*
        assert (sol.distance[far] < 1.5).all(), solver  # and bounded: a cycle, not divergence
    for solver in ("eg_plus", "extragradient", "optimistic"):
        sol = saddle.solve(problem, solver, tol=1e-9, max_iters=20_000)  # backtracking steps
        assert (sol.status == Status.CONVERGED).all(), solver
        assert (sol.distance <= 1e-6).all(), solver


def test_global_forsaken_constants():
    # L: the largest Jacobian norm over a fine grid of the box is attained and not exceeded;
    # rho: min <F(z), z - z*> / |F(z)|^2 over the grid.
    problem = problems.get("global_forsaken")
    g = torch.linspace(-1.5, 1.5, 601, dtype=torch.float64)
    X, Y = torch.meshgrid(g, g, indexing="ij")
    phi2 = lambda z: 20 * z**4 / 7 - 4 * z**2 + 2 / 3
    J = torch.stack([torch.stack([phi2(X), torch.ones_like(X)], -1),
                     torch.stack([-torch.ones_like(X), phi2(Y)], -1)], -2)
    norms = torch.linalg.matrix_norm(J, ord=2)
    L = problem.lipschitz()[0]
    assert norms.max() <= L * (1 + 1e-12) and norms.max() >= L * (1 - 1e-3)
    Fx, Fy = problem.F((X.reshape(-1, 1), Y.reshape(-1, 1)))
    num = Fx[:, 0] * X.reshape(-1) + Fy[:, 0] * Y.reshape(-1)
    den = Fx[:, 0] ** 2 + Fy[:, 0] ** 2
    rho = (num[den > 1e-12] / den[den > 1e-12]).min()
    assert -0.125 < rho < -0.115
    assert rho * L < -0.5  # outside EG+'s guarantee rho > -1/(2L)
