"""Training GANs with the competitive methods (issue 4): the Dirac GAN and the 8-Gaussian ring.

Independent answers:

* **Dirac GAN, closed forms.** At the equilibrium (0, 0) the Jacobian of
  ``F = (grad_theta f, -grad_psi f)`` is ``J = [[0, a], [-a, 0]]`` and the mixed
  derivative is ``D_xy = a`` (``a = phi'(0)``: 1/2 for the standard loss, 1 for
  the Wasserstein one, whose game ``a theta psi`` is exactly bilinear). The CGO
  direction ``[[1, alpha D], [-alpha D, 1]] d = F(z)`` is then ``d = M z`` with

      M = [[alpha a^2, a], [-a, alpha a^2]] / (1 + alpha^2 a^2),

  a scaled rotation, with eigenvalues ``mu = (alpha a^2 +- i a) / (1 + alpha^2 a^2)``.
  So every step multiplies the distance to (0, 0) by exactly (not just
  asymptotically: the iteration matrices are multiples of rotations)

      CGO   z+ = (I - eta M) z:               |1 - eta mu| = sqrt(1 - eta a^2 (2 alpha - eta) / (1 + alpha^2 a^2))
      CGD   (alpha = eta):                    1 / sqrt(1 + eta^2 a^2)
      OCGO  z+ = (I - eta M + eta^2 M^2) z:   |1 - eta mu + eta^2 mu^2|

  (for the standard loss up to O(|z|^2) relative terms, from
  ``phi'(t) = 1/2 - t/4 + O(t^3)``). CGO converges locally iff
  ``0 < eta < 2 alpha``: with ``eta > 2 alpha`` it spirals out. The formulas
  are checked against the spectral radius of the dense iteration matrix built
  from `dirac_jacobian`, and the solvers' per-step contraction against them.
* **Mixture GAN, seeded measurements.** Modes covered by fresh samples of the
  trained generators (`sample`, `modes_covered`), on a seeded batch, with the
  margin between the measured coverage and the asserted one stated at the test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saddle import problems
import saddle
from saddle.problems.gan import dirac_jacobian, high_quality_fraction, modes_covered, sample
from saddle import ACGD, CGD, CGO, OCGO, Status, merit

F64 = torch.float64
SLOPE = {"standard": 0.5, "wasserstein": 1.0}  # a = phi'(0)


# ---------------------------------------------------------------------------------------------
# Dirac GAN: closed forms of the linearized iterations
# ---------------------------------------------------------------------------------------------


def cgo_factor(eta, alpha, a):
    """|1 - eta mu|: CGO's exact per-step factor on the linearized Dirac GAN (CGD: alpha = eta)."""
    return math.sqrt(1 - eta * a**2 * (2 * alpha - eta) / (1 + alpha**2 * a**2))


def ocgo_factor(eta, alpha, a):
    """|1 - eta mu + (eta mu)^2|: OCGO's exact per-step factor on the linearized Dirac GAN."""
    mu = complex(alpha * a**2, a) / (1 + alpha**2 * a**2)
    return abs(1 - eta * mu + (eta * mu) ** 2)


def factor(solver, eta, alpha, a):
    if solver == "cgd":
        return 1 / math.sqrt(1 + eta**2 * a**2)
    return (ocgo_factor if solver == "ocgo" else cgo_factor)(eta, alpha, a)


def iteration_matrix(solver, eta, alpha, J):
    """The linearized step z -> T z, assembled densely from J (numpy; CGD is alpha = eta)."""
    a = J[0, 1]
    if solver == "cgd":
        alpha = eta
    M = np.linalg.solve(np.array([[1.0, alpha * a], [-alpha * a, 1.0]]), J)
    T = np.eye(2) - eta * M
    if solver == "ocgo":
        T = np.eye(2) - eta * M @ T  # w = T z, z+ = z - eta M w
    return T


SETTINGS = [  # (solver, eta, alpha)
    ("cgd", 0.5, None), ("cgd", 2.0, None),
    ("cgo", 0.5, 1.0), ("cgo", 1.0, 2.0), ("cgo", 0.5, 0.2), ("cgo", 0.4, 0.2), ("cgo", 0.3, 3.0),
    ("ocgo", 0.5, 0.2), ("ocgo", 0.5, 1.0), ("ocgo", 1.0, 2.0), ("ocgo", 2.0, 0.2),
]


@pytest.mark.parametrize("loss", ["standard", "wasserstein"])
def test_closed_forms_are_the_spectral_radii_of_the_linearized_iterations(loss):
    a = SLOPE[loss]
    J = dirac_jacobian(loss).numpy()
    for solver, eta, alpha in SETTINGS:
        T = iteration_matrix(solver, eta, alpha, J)
        want = factor(solver, eta, alpha, a)
        # T is a multiple of a rotation: both singular values (the worst- and best-case growth of
        # |z| in one step) equal the spectral radius, so the per-step factor is exact.
        np.testing.assert_allclose(np.abs(np.linalg.eigvals(T)), want, rtol=1e-14)
        np.testing.assert_allclose(np.linalg.svd(T, compute_uv=False), want, rtol=1e-14)
    # CGO's convergence condition: 0 < eta < 2 alpha (2 alpha - eta decides the sign of the change).
    assert cgo_factor(0.5, 0.2, a) > 1 and cgo_factor(0.4, 0.2, a) == 1.0 and cgo_factor(0.39, 0.2, a) < 1
    # The contraction-optimal alpha for a given eta, (eta + sqrt(eta^2 + 4 / a^2)) / 2 (maximizing
    # (2 alpha - eta) / (1 + alpha^2 a^2)), is above eta: CGD's alpha = eta is never optimal.
    eta = 0.5
    best = (eta + math.sqrt(eta**2 + 4 / a**2)) / 2
    grid = np.linspace(0.05, 10, 2000)
    assert abs(grid[np.argmin([cgo_factor(eta, g, a) for g in grid])] - best) < 0.01
    assert best > eta


@pytest.mark.parametrize("loss", ["standard", "wasserstein"])
@pytest.mark.parametrize("solver", ["cgd", "cgo", "ocgo"])
def test_per_step_contraction_near_the_equilibrium_equals_the_closed_form(solver, loss):
    # Per-instance (eta, alpha) in one batch; the start is at distance 1e-4 from (0, 0), where the
    # standard loss deviates from its linearization by O(|z|^2) = 1e-8 relative (measured: 5e-10).
    a = SLOPE[loss]
    rows = [(eta, alpha) for s, eta, alpha in SETTINGS if s == solver]
    B = len(rows)
    eta = torch.tensor([r[0] for r in rows], dtype=F64)
    alpha = torch.tensor([r[0] if r[1] is None else r[1] for r in rows], dtype=F64)
    want = torch.tensor([factor(solver, e, al, a) for e, al in zip(eta.tolist(), alpha.tolist())], dtype=F64)
    p = problems.get("dirac_gan", loss=loss, radius=1e-4, batch_size=B, seed=1)
    s = CGD(step_size=eta, cg_tol=1e-14) if solver == "cgd" else \
        saddle.get_solver(solver, step_size=eta, alpha=alpha, cg_tol=1e-14)
    state = s.init(p, p.z0)
    z, d = p.z0, merit.distance(p, p.z0)
    rtol = 1e-13 if loss == "wasserstein" else 1e-8
    for k in range(30):
        z, state = s.step(p, z, state)
        d_new = merit.distance(p, z)
        torch.testing.assert_close(d_new / d, want, rtol=rtol, atol=0, msg=lambda m: f"step {k + 1}: {m}")
        d = d_new
    if solver == "cgo":  # eta = 0.5 > 2 alpha = 0.4 spirals out; eta = 2 alpha = 0.4 keeps the distance
        grows = (eta > 2 * alpha).nonzero().flatten()
        assert grows.numel() == 1 and (merit.distance(p, z)[grows] > 1e-4 * 1.006**30).all()


@pytest.mark.parametrize("loss", ["standard", "wasserstein"])
def test_competitive_methods_reach_the_equilibrium_at_the_predicted_iteration_and_gda_does_not(loss):
    # From the circle of radius 1 (8 seeded angles) to distance 1e-10. The Wasserstein game is
    # linear, so the distance after k steps is exactly rho^k and the solve stops at the first
    # k >= log(1e-10) / log(rho). The standard loss is within 3% of that count (|theta psi| <= 1/2
    # at the start, where phi' is within 25% of 1/2; measured: +-2 iterations of about 200).
    a = SLOPE[loss]
    p = problems.get("dirac_gan", loss=loss, batch_size=8, seed=0)
    tol = 1e-10
    for solver, eta, alpha in [("cgd", 1.0, None), ("cgo", 0.5, 1.0), ("ocgo", 0.5, 1.0)]:
        settings = dict(step_size=eta, **({} if alpha is None else {"alpha": alpha}))
        sol = saddle.solve(p, solver, tol=tol, max_iters=2000, check_every=1, check_growth=0, measure="distance",
                           **settings)
        assert (sol.status == Status.CONVERGED).all(), solver
        assert (merit.distance(p, sol.z) <= tol).all()
        predicted = math.ceil(math.log(tol) / math.log(factor(solver, eta, alpha or eta, a)))
        if loss == "wasserstein":
            assert (sol.iterations == predicted).all(), (solver, sol.iterations, predicted)
        else:
            assert ((sol.iterations - predicted).abs() <= 0.03 * predicted).all(), (solver, sol.iterations, predicted)
    # Simultaneous GDA, with the same budget: <F(z), z> = 0, so |z - eta F(z)| >= |z| at every step.
    sol = saddle.solve(p, "gda", step_size=0.1, tol=tol, max_iters=500, check_every=10, measure="distance")
    assert (sol.status != Status.CONVERGED).all()
    d = sol.history["distance"]
    assert (d >= 1.0 - 1e-12).all() and (d[-1] > 1.0).all()


def test_cgo_with_eta_above_twice_alpha_spirals_out_and_the_default_alpha_follows_the_step():
    # The report of issue 4: `cgo` at step 0.5 on the Dirac GAN stopped at the iteration limit far
    # from (0, 0). Its alpha was the fallback 0.2 (the standard loss has no Lipschitz constant):
    # eta = 0.5 > 2 alpha = 0.4, so the linearized factor is sqrt(1 + 0.0125 / 1.01) > 1 and the
    # iterates spiral out. Given explicitly, that setting still does; the default alpha is now at
    # least 2 eta (here 1.0, factor 0.922), and converges.
    p = problems.get("dirac_gan", batch_size=4, seed=0)
    out = saddle.solve(p, "cgo", step_size=0.5, alpha=0.2, tol=1e-10, max_iters=500, check_every=50,
                       measure="distance")
    assert (out.status == Status.MAX_ITERS).all()
    d = out.history["distance"]
    assert (d.diff(dim=0) > 0).all() and (d[-1] > 2.5).all()  # measured: 3.1 to 3.3 after 500 steps, from 1
    sol = saddle.solve(p, "cgo", step_size=0.5, tol=1e-10, max_iters=1000, measure="distance")
    assert torch.equal(sol.state.alpha, torch.full((4,), 1.0, dtype=F64))
    assert (sol.status == Status.CONVERGED).all()
    # Where the default step is used, so is the default alpha (0.2 here; 2 / L with a Lipschitz constant).
    assert torch.equal(CGO().init(p, p.z0).alpha, torch.full((4,), 0.2, dtype=F64))
    w = problems.get("dirac_gan", loss="wasserstein", batch_size=2)
    assert torch.equal(CGO().init(w, w.z0).alpha, torch.full((2,), 2.0, dtype=F64))  # L = 1
    assert torch.equal(OCGO().init(w, w.z0).alpha, torch.full((2,), 2.0, dtype=F64))
    assert torch.equal(OCGO(step_size=3.0).init(w, w.z0).alpha, torch.full((2,), 6.0, dtype=F64))
    # Per instance: only the instances whose step needs it get a larger alpha.
    p3 = problems.get("dirac_gan", batch_size=3)
    eta = torch.tensor([0.05, 0.1, 0.5], dtype=F64)
    assert torch.equal(CGO(step_size=eta).init(p3, p3.z0).alpha, torch.tensor([0.2, 0.2, 1.0], dtype=F64))


@pytest.mark.parametrize("loss", ["standard", "wasserstein"])
def test_acgd_converges_on_the_dirac_gan_with_a_growing_step(loss):
    # ACGD's metric A = lr sqrt(1 - beta^t) / (sqrt(v) + eps) grows as the gradients shrink (up to
    # lr / eps), and at (0, 0) the game is bilinear to first order (D_xx f = psi^2 phi''(theta psi)
    # = O(|z|^2)): the local game stays exact and a larger metric contracts more, so ACGD does not
    # stall here (it does on games with D_xx terms: test_competitive.py). Measured: distance 1e-10
    # after 330 to 500 steps (lr 0.05), where CGD with eta = lr would need log(1e-10) / log(rho)
    # = 73 700 (standard) or 18 400 (Wasserstein) steps.
    a = SLOPE[loss]
    lr = 0.05
    p = problems.get("dirac_gan", loss=loss, batch_size=8, seed=0)
    sol = saddle.solve(p, ACGD(step_size=lr), tol=1e-10, max_iters=1000, check_every=10, measure="distance")
    assert (sol.status == Status.CONVERGED).all() and (merit.distance(p, sol.z) <= 1e-10).all()
    assert math.log(1e-10) / math.log(factor("cgd", lr, lr, a)) > 10 * 1000
    # the final metric, from the state: far above lr
    st = sol.state
    t = st.steps.to(F64).unsqueeze(-1)
    metric = lr * torch.sqrt(1 - 0.99**t) / (st.sq_avg_x.sqrt() + 1e-5)
    assert (metric > 10 * lr).all()


@pytest.mark.parametrize("warm_start", [False, True], ids=["cold", "warm"])
@pytest.mark.parametrize("solver", ["cgd", "acgd", "cgo", "ocgo"])
def test_counts_on_the_dirac_gan_are_the_closed_form(solver, warm_start):
    # n = m = 1: every CG system is 1 x 1, solved by exactly one CG iteration (its residual is
    # then at rounding level, far below CG's tolerance). So a local game costs 2 + 2 * 1 mixed
    # products cold, 2 + 2 * (1 + 1) warm (one more product for the warm start's residual;
    # the first solve has nothing to start from, OCGO's second starts from its first): the
    # general accounting (against wrapped operators) is in test_competitive.py.
    steps = 7
    p = problems.get("dirac_gan", batch_size=3, seed=2)
    s = saddle.get_solver(solver, cg_warm_start=warm_start, **({"step_size": 0.05} if solver == "acgd" else {}))
    state = s.init(p, p.z0)
    z = p.z0
    for _ in range(steps):
        z, state = s.step(p, z, state)
    games = 2 if solver == "ocgo" else 1
    assert (state.operator_calls == games * steps).all()
    assert (state.cg_iterations == games).all() and state.cg_converged.all()
    warm_solves = (games * steps - 1) if warm_start else 0
    assert (state.hvp_calls == 4 * games * steps + 2 * warm_solves).all()


# ---------------------------------------------------------------------------------------------
# Gaussian-mixture GAN: mode coverage on fresh samples
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["acgd", "ocgo"])
def test_each_local_game_sees_one_draw_of_a_resampled_objective(solver):
    # With resample=True every evaluation of f draws fresh samples. A competitive step evaluates
    # the gradients once and takes every mixed product of its CG solve from that evaluation's
    # graph, so one local game (gradients, CG products and the recovery of dy) is one draw: the
    # local game is a consistent bilinear game, not a mix of minibatches.
    p = problems.get("gaussian_mixture_gan", latent_dim=2, width=8, n_samples=32, resample=True, batch_size=2,
                     seed=3)
    draws = []
    inner = p.draw
    p.draw = lambda *args, **kw: draws.append(1) or inner(*args, **kw)
    s = saddle.get_solver(solver, step_size=1e-2)
    state = s.init(p, p.z0)
    z = p.z0
    for _ in range(3):
        z, state = s.step(p, z, state)
    games = 2 if solver == "ocgo" else 1
    assert len(draws) == 3 * games
    assert (state.hvp_calls >= 3 * games * 4).all()  # several products per draw


RING = dict(mode="ring", latent_dim=16, width=32, depth=2, n_samples=512, batch_size=8, seed=0, dtype=torch.float32)


@pytest.mark.slow
def test_acgd_covers_the_ring_on_fresh_samples():
    # 8 seeded instances of the 8-Gaussian ring (generator and discriminator: 2 x 32 tanh MLPs;
    # 512 fixed real samples and latent codes per instance, enough that the generators do not
    # overfit their codes), float32, 400 ACGD steps at lr 5e-3 (30 s of CPU time with the previous
    # vmapped objective, 25 s with the batched MLP, back to back; 22 to 55 s of wall time on a
    # shared 2-core machine; the table below was measured with the previous objective, whose
    # float32 rounding differs). Judged on 2500 fresh samples per generator (PacGAN's rule: a mode
    # is covered by >= 20 of them).
    # Measured modes per instance (all 8 instances):
    #     step       0    150    200    250    300    350   400   450   500   600
    #     mean       0   2.38   5.00   6.88   7.50     8     8     8     8     8
    #     min        0      0      2      4      6     8     8     8     8     8
    # so the assertion (every instance >= 7 after 400 steps) has 100 steps of margin; the high-
    # quality fraction was 0.27 at step 400, rising (0.42 at 600). Under the same 400 steps
    # simultaneous Adam (betas (0.5, 0.999)) covered 0 modes at lr 1e-3 and 5.6 (3 to 8) at lr
    # 5e-3, oscillating at 4 to 6 afterwards; simultaneous GDA 0 (lr 0.05 and 0.2).
    p = problems.get("gaussian_mixture_gan", **RING)
    start = modes_covered(sample(p, p.z0[0], 2500, seed=123), p.centers, p.std)
    assert (start <= 1).all()
    steps = 400
    sol = saddle.solve(p, "acgd", step_size=5e-3, max_iters=steps, tol=0.0, check_every=steps, history=False)
    assert (sol.iterations == steps).all() and (sol.status == Status.MAX_ITERS).all()
    fresh = sample(p, sol.x, 2500, seed=123)
    covered = modes_covered(fresh, p.centers, p.std)
    assert (covered >= 7).all(), covered
    assert (high_quality_fraction(fresh, p.centers, p.std) > 0.15).all()
    # the same generators on other fresh codes
    assert (modes_covered(sample(p, sol.x, 2500, seed=7), p.centers, p.std) >= 7).all()


# The test: a small, seeded, CPU-sized mixture GAN that resamples its data (every
# evaluation of f draws 256 fresh real points and latent codes), 4 instances, float32.
RESAMPLED_RING = dict(mode="ring", width=32, depth=2, latent_dim=4, n_samples=256, resample=True, batch_size=4,
                      seed=0, dtype=torch.float32)
BUDGET = 1800  # steps (gradient pairs) for every method
ACGD_SETTINGS = dict(step_size=3e-3, cg_tol=1e-2, cg_max_iters=10, cg_warm_start=False)


def fresh_modes(p, x, seed=1):
    """Modes covered by 2000 fresh samples of each generator (PacGAN's rule: >= 16 of them within 3 std)."""
    return modes_covered(sample(p, x, 2000, seed=seed), p.centers, p.std)


@pytest.mark.slow
def test_acgd_covers_the_resampled_ring_in_a_fixed_budget():
    # ACGD at lr 3e-3 for 1800 steps (14,664 HVPs per instance, 8.1 per step; 18 to 28 s on a
    # shared 2-core CPU). The stopping test runs every 200 steps and, with resample=True, draws a
    # minibatch of its own, so check_every is part of the trajectory. Modes per instance on 2000
    # fresh samples (seed 1), measured every 200 steps (2026-11-23), problem seeds 0 and 1:
    #     step      600           800           1000          1200          1400 ... 2200   2400
    #     seed 0    [1, 7, 7, 6]  [7, 7, 8, 6]  [8, 7, 8, 8]  [8, 7, 8, 8]  [8, 8, 8, 8]    [6, 8, 8, 8]
    #     seed 1    [7, 7, 6, 2]  [4, 8, 7, 8]  [8, 8, 8, 8]  [8, 8, 6, 8]  >= 7 from 1400 to 2400
    # (seed 0: all four at 8 at every check from 1400 to 2200), so the budget of 1800 steps sits
    # 400 steps inside the window where every instance covers >= 7 modes. At lr 5e-3 the window was
    # narrower (a 6 at steps 1200 and 1600). Table and GDA / Adam / CGD runs: docs/benchmarks.md.
    p = problems.get("gaussian_mixture_gan", **RESAMPLED_RING)
    assert (fresh_modes(p, p.z0[0]) == 0).all()
    sol = saddle.solve(p, "acgd", max_iters=BUDGET, tol=0.0, check_every=200, history=False, **ACGD_SETTINGS)
    assert (sol.iterations == BUDGET).all() and (sol.status == Status.MAX_ITERS).all()
    covered = fresh_modes(p, sol.x)
    assert (covered >= 7).all(), covered
    assert (fresh_modes(p, sol.x, seed=2) >= 7).all()  # other fresh codes
    hq = high_quality_fraction(sample(p, sol.x, 2000, seed=1), p.centers, p.std)
    assert (hq > 0.3).all(), hq  # measured 0.60 to 0.66


@pytest.mark.slow
def test_gda_and_simultaneous_adam_with_the_same_budget():
    # The same 1800 steps (gradient pairs; ACGD spent about 8 HVPs per step on top). Measured
    # modes per instance on 2000 fresh samples (seed 1), every 200 steps up to 2400:
    # * simultaneous GDA, step 0.1: at most 4 at every check (1800: [0, 0, 2, 0]);
    # * simultaneous Adam (lr 3e-3, betas (0.5, 0.999), on F = (grad_x f, -grad_y f)): 8 in most
    #   instances from step 800, with one instance dropping to 3 to 5 at some checks
    #   (1800: [8, 8, 3, 8]; 1200: [8, 3, 8, 8]; 2000: [8, 8, 8, 8]), so no bound on its worst
    #   instance is asserted. Over the checks 1000..2400 (32 instance-checks) Adam had >= 7 modes
    #   in 28, ACGD (above) in 31, GDA in none.
    p = problems.get("gaussian_mixture_gan", **RESAMPLED_RING)
    gda = saddle.solve(p, "gda", step_size=0.1, max_iters=BUDGET, tol=0.0, check_every=200, history=False)
    gda_modes = fresh_modes(p, gda.x)
    assert (gda_modes < 7).all(), gda_modes  # measured <= 4 at every check
    q = problems.get("gaussian_mixture_gan", **RESAMPLED_RING)
    x, y = (b.detach().clone().requires_grad_() for b in q.z0)
    opt = torch.optim.Adam([x, y], lr=3e-3, betas=(0.5, 0.999))
    for _ in range(BUDGET):
        x.grad, y.grad = q.F((x.detach(), y.detach()))  # descend x, ascend y
        opt.step()
    adam_modes = fresh_modes(q, x.detach())
    assert torch.isfinite(x).all() and torch.isfinite(y).all()
    assert adam_modes.sum() > gda_modes.sum() + 8, (adam_modes, gda_modes)  # measured 27 against 2
