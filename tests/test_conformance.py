"""The shared conformance suite: every registered solver x every problem family it applies to.

The checks are `saddle.testing`'s (`check_solver` runs them on anyone's solver); applicability comes
from ``solver.check(problem)`` and what theory promises from the solver's metadata (``converges_on``,
``calls_per_step``, ...), so a new solver joins by being registered. Here, for every solver:

- converges to the exact reference where theory says it does (HiGHS values for
  matrix games, linear solves and cvxpy for bilinear and quadratic games), and
  is marked DIVERGED where theory says it must diverge;
- a batched solve equals the loop of single-instance solves;
- per-instance step sizes act per instance;
- instances that have stopped stay bitwise unchanged while others go on;
- operator-call counts are exact;
- CPU and GPU agree.
"""

from __future__ import annotations

import pytest
import torch

from saddle import problems
import saddle
import saddle.testing as conformance
from saddle import Backtracking, Status
from saddle.testing import FAMILIES, SETTINGS, SkipCheck, assert_stopped_instances_stay, counting, \
    distributed_problem, dro_problem, instance, sharpness_quadratic


def _cls(name: str) -> type:
    return type(saddle.get_solver(name, **SETTINGS.get(name, {})))


def solvers(category: str) -> list[str]:
    """The registered solvers of a category (`saddle.solvers.base.CATEGORIES`)."""
    return [s for s in saddle.solver_names() if _cls(s).category == category]


PROBLEMS = {name: FAMILIES[name] for name in ["bilinear", "xy", "matrix_game", "matrix_game_entropic",
                                             "rock_paper_scissors", "matching_pennies", "quadratic",
                                             "quadratic_box", "linear_program"]}
UNCONSTRAINED = ("bilinear", "xy", "quadratic")
NO_PROX = {"quadratic_box"}  # a dense quadratic term on a box
STRONGLY_CONCAVE = ("quadratic", "quadratic_box")
COMPETITIVE = solvers("competitive")
# First-order methods for monotone problems (all take backtracking step sizes).
MONOTONE = [s for s in solvers("first-order") if "monotone" in _cls(s).converges_on]
LINEARIZED_PD = [s for s in solvers("primal-dual") if _cls(s).converges_on == ("convex-strongly-concave",)]
SAM_FAMILY, STOCHASTIC, DISTRIBUTED = solvers("sharpness"), solvers("stochastic"), solvers("distributed")
STOCHASTIC_SETTINGS = {s: SETTINGS[s] for s in STOCHASTIC}
DISTRIBUTED_SETTINGS = {s: SETTINGS.get(s, {}) for s in DISTRIBUTED}


def run(check, solver, family, **kw):
    """A `saddle.testing` check as a test: `SkipCheck` becomes ``pytest.skip`` with the solver's reason."""
    try:
        return check(conformance.conformance_solver(solver), family, **kw)
    except SkipCheck as skip:
        pytest.skip(str(skip))


@pytest.mark.parametrize("solver", saddle.solver_names())
def test_solver_metadata_is_well_formed(solver):
    conformance.check_metadata(saddle.get_solver(solver, **SETTINGS.get(solver, {})))


def test_every_category_has_a_solver():
    assert {_cls(s).category for s in saddle.solver_names()} == set(saddle.solvers.base.CATEGORIES)


@pytest.mark.parametrize("solver", COMPETITIVE)
@pytest.mark.parametrize("name", sorted(set(PROBLEMS) - set(UNCONSTRAINED)))
def test_competitive_methods_explain_where_they_do_not_apply(solver, name):
    with pytest.raises(ValueError, match=f"{solver} needs unconstrained players"):
        saddle.solve(PROBLEMS[name](), solver)
    plain_vi = saddle.VIProblem(lambda z: (z[0] + z[1], z[1] - z[0]), [saddle.Reals(), saddle.Reals()],
                                (torch.ones(1, 2, dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)))
    with pytest.raises(TypeError, match=f"{solver} needs a SaddleProblem.*got VIProblem"):
        saddle.solve(plain_vi, solver)


@pytest.mark.parametrize("name", sorted(NO_PROX))
def test_pdhg_explains_where_it_does_not_apply(name):
    with pytest.raises(ValueError, match="pdhg needs a closed-form prox of g"):
        saddle.solve(PROBLEMS[name](), "pdhg")
    with pytest.raises(ValueError, match="pdhg needs a BilinearProblem"):
        saddle.solve(problems.get("comonotone_linear"), "pdhg")


@pytest.mark.parametrize("solver", LINEARIZED_PD)
@pytest.mark.parametrize("name", sorted(set(PROBLEMS) - set(STRONGLY_CONCAVE)))
def test_linearized_primal_dual_explains_where_it_does_not_apply(solver, name):
    with pytest.raises(ValueError, match=f"{solver}: needs h strongly convex"):
        saddle.solve(PROBLEMS[name](), solver)
    with pytest.raises(TypeError, match=f"{solver} needs a CompositeSaddleProblem"):
        saddle.solve(problems.get("comonotone_linear"), solver)


@pytest.mark.parametrize("solver", saddle.solver_names())
@pytest.mark.parametrize("name", list(PROBLEMS))
def test_converges_to_the_exact_reference(solver, name):
    # Where the solver's converges_on names a class of the family: residual 1e-9 and distance 1e-6;
    # matrix games gap and value 1e-6 (and the gap recomputed from A); LPs KKT 1e-9, objective 1e-7;
    # averaging sublinear solvers (LPD, ALPD) distance and residual 1e-5.
    run(conformance.check_converges, solver, FAMILIES[name])


@pytest.mark.parametrize("name", ["bilinear", "xy"])
def test_gda_diverges_on_bilinear_games(name):
    # z+ = z - eta M z with M skew: every eigenvalue of I - eta M has modulus sqrt(1 + eta^2 s^2) > 1.
    problem = PROBLEMS[name]()
    sol = saddle.solve(problem, "gda", max_iters=5000)
    assert (sol.status == Status.DIVERGED).all(), sol
    assert (sol.iterations < 5000).all()


CASES = [(s, {}) for s in saddle.solver_names()] + \
        [(s, {"step_size": Backtracking(initial=1.0)}) for s in MONOTONE]


def _ids(case):
    s, kw = case
    return s + ("-backtracking" if kw else "")


@pytest.mark.parametrize("solver,settings", CASES, ids=[_ids(c) for c in CASES])
@pytest.mark.parametrize("name", ["quadratic_box", "matrix_game_entropic", "bilinear", "quadratic", "linear_program"])
def test_batched_solve_equals_loop_of_single_solves(solver, settings, name):
    run(conformance.check_batch_equals_loop, saddle.get_solver(solver, **{**SETTINGS.get(solver, {}), **settings}),
        FAMILIES[name])


@pytest.mark.parametrize("solver", sorted(set(saddle.solver_names()) - set(LINEARIZED_PD) - set(SAM_FAMILY) -
                                          set(STOCHASTIC) - set(DISTRIBUTED) - {"ipm"}))
def test_per_instance_step_sizes(solver):
    # (LPD and ALPD take per-instance constants instead: test_linearized_primal_dual.py; SAM and ASAM:
    # test_sam_family_batched_solve_equals_loop_of_single_solves; the interior-point method has no step
    # size, its steps go a fixed fraction of the way to the boundary.)
    boxed = problems.get("quadratic", n=6, m=4, batch_size=3, seed=3, box=0.3)
    try:
        saddle.get_solver(solver).check(boxed)
        problem = boxed
    except ValueError:  # PDHG (no closed-form prox of a dense quadratic on a box), competitive methods
        problem = problems.get("quadratic", n=6, m=4, batch_size=3, seed=3)
    L = problem.lipschitz()
    mu = problem.strong_monotonicity()
    base = mu / L**2 if _cls(solver).converges_on == ("strongly monotone",) else 0.1 / L
    steps = base * torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    batched = saddle.solve(problem, solver, step_size=steps, tol=0.0, max_iters=60)
    for i in range(problem.batch_size):
        single = saddle.solve(instance(problem, i), solver, step_size=float(steps[i]), tol=0.0, max_iters=60)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)


@pytest.mark.parametrize("solver", sorted(set(saddle.solver_names()) - set(SAM_FAMILY) - set(STOCHASTIC) -
                                          set(DISTRIBUTED)))
def test_stopped_instances_stay_bitwise_unchanged(solver):
    # Tolerances [0.5, 0.05, 1e-6, 0] r0: the instances stop at different checks, the last never.
    stopped_at = run(conformance.check_stopped_instances_stay, solver, FAMILIES["quadratic"])
    assert set(stopped_at) >= {0, 1}, "the loose instances should have stopped early"


@pytest.mark.parametrize("solver", saddle.solver_names())
def test_operator_call_counts_are_exact(solver):
    # (PDHG, LPD/ALPD, stochastic and distributed solvers declare no fixed count per step: see
    # test_pdhg_counts_products_with_K, test_linearized_primal_dual_counts_gradients,
    # test_stochastic_solvers_count_per_sample_evaluations, test_distributed_solvers_count_exactly;
    # competitive methods' mixed-product counts are tested in test_competitive.py.)
    s = conformance.conformance_solver(solver)
    run(conformance.check_exact_counts, s, conformance.representative(s))


def test_pdhg_counts_products_with_K(monkeypatch):
    # One operator call = one product with K and one with K^T: one per iteration, one per
    # restart check (the average point's products).
    from saddle.solvers import primal_dual

    products = {"K": 0, "Kt": 0}
    matvec, rmatvec = primal_dual._matvec, primal_dual._rmatvec

    def counted(kind, fn):
        def wrapped(K, v):
            products[kind] += 1
            return fn(K, v)
        return wrapped

    monkeypatch.setattr(primal_dual, "_matvec", counted("K", matvec))
    monkeypatch.setattr(primal_dual, "_rmatvec", counted("Kt", rmatvec))
    problem = PROBLEMS["matrix_game"]()
    s = saddle.get_solver("pdhg", restart_every=4)
    state = s.init(problem, problem.z0)
    z = problem.z0
    for _ in range(20):
        z, state = s.step(problem, z, state)
    assert products == {"K": 26, "Kt": 26}  # init + 20 iterations + 5 restart checks
    assert (state.operator_calls == 26).all()
    assert (state.restarts >= 1).all()


@pytest.mark.parametrize("solver", LINEARIZED_PD)
@pytest.mark.parametrize("name", STRONGLY_CONCAVE)
def test_linearized_primal_dual_counts_gradients(solver, name):
    # Per iteration: one gradient of g, one grad_x phi (one inner step: the coupling is bilinear),
    # one grad_y phi, and one of h's smooth part where it is linearized (on the box); grad_y phi
    # once more at init. One operator call = one grad_x phi and one grad_y phi.
    problem = PROBLEMS[name]()
    calls = {"g": 0, "h": 0, "x": 0, "y": 0}

    def counted(key, fn):
        def wrapped(*args):
            calls[key] += 1
            return fn(*args)
        return wrapped

    coupling, g_smooth, h_smooth = problem.coupling, problem.g_parts[0], problem.h_parts[0]
    coupling.grad_x = counted("x", coupling.grad_x)
    coupling.grad_y = counted("y", coupling.grad_y)
    g_smooth.grad = counted("g", g_smooth.grad)
    h_smooth.grad = counted("h", h_smooth.grad)
    s = saddle.get_solver(solver)
    state = s.init(problem, problem.z0)
    z = problem.z0
    linearized = int(name == "quadratic_box")
    assert state.dual_step == ("linearized" if linearized else "prox")
    assert calls == {"g": 0, "h": 0, "x": 0, "y": 1}
    for k in range(1, 8):
        z, state = s.step(problem, z, state)
        assert calls == {"g": k, "h": linearized * k, "x": k, "y": k + 1}
        assert (state.primal_gradient_calls == k).all() and (state.coupling_gradient_calls == k).all()
        assert (state.coupling_y_gradient_calls == k + 1).all()
        assert (state.dual_gradient_calls == linearized * k).all()
        assert (state.operator_calls == k + 1).all()


@pytest.mark.parametrize("solver", MONOTONE)
def test_backtracking_counts_trials_and_accepted_steps(solver):
    # With backtracking a rejected trial costs one evaluation (F at the trial
    # point; single-call methods pay nothing more); an accepted two-call step
    # costs two. Accepted steps are observed independently: the iterate moves.
    problem = PROBLEMS["bilinear"]()
    s = saddle.get_solver(solver, step_size=Backtracking(initial=10.0))
    state = s.init(problem, problem.z0)
    z = problem.z0
    moved = torch.zeros(problem.batch_size, dtype=torch.int64)
    trials = 40
    for _ in range(trials):
        z_new, state = s.step(problem, z, state)
        moved += torch.stack([(a != b).any(-1) for a, b in zip(z_new, z)]).any(0).long()
        z = z_new
    assert (moved < trials).all(), "an initial step of 10 / L should be rejected at least once"
    expected = _cls(solver).calls_at_init + trials + (moved if _cls(solver).calls_per_step == 2 else 0)
    assert torch.equal(state.operator_calls, expected + torch.zeros_like(moved))


@pytest.mark.parametrize("solver", saddle.solver_names())
def test_steps_do_not_mutate_inputs(solver):
    s = conformance.conformance_solver(solver)
    run(conformance.check_no_mutation, s, conformance.representative(s))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("solver", saddle.solver_names())
@pytest.mark.parametrize("name", ["quadratic_box", "matrix_game_entropic", "quadratic"])
def test_cpu_and_gpu_agree(solver, name):
    s = conformance.conformance_solver(solver)
    run(conformance.applicable_problem, s, FAMILIES[name])  # skips where the solver does not apply
    cpu = saddle.solve(PROBLEMS[name](), s, tol=0.0, max_iters=300)
    gpu = saddle.solve(PROBLEMS[name](device="cuda"), s, tol=0.0, max_iters=300)
    for a, b in zip(cpu.z, gpu.z):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-10)
    assert torch.equal(cpu.operator_calls, gpu.operator_calls.cpu())


# -- SAM and ASAM on sharpness problems -----------------------------------------------------------

@pytest.mark.parametrize("solver", SAM_FAMILY)
def test_sam_family_settles_within_the_theoretical_neighbourhood(solver):
    # w+ = (I - lr H) w - lr H e with |e| <= rho max_i T_i (T = 1 for SAM, |w| + eta for ASAM): with
    # lr = 1 / L the linear part contracts by 1 - mu / L, so limsup |w| <= (L / mu) rho max T.
    problem = sharpness_quadratic(adaptive=solver == "asam")
    mu, L = 1.0, 4.0
    largest_T = []
    sol = saddle.solve(problem, solver, step_size=1 / L, tol=0.0, max_iters=400, check_every=1, check_growth=0,
                       callback=lambda p: largest_T.append(p.z[0].abs().amax(-1) + 0.01))
    T = torch.stack(largest_T[200:]).amax(0) if solver == "asam" else torch.ones(3, dtype=torch.float64)
    assert (sol.x.norm(dim=-1) <= L / mu * problem.rho * T).all()
    # ... and it gets there from |w0| ~ 2: a real decrease, not a start already inside.
    assert (problem.z0[0].norm(dim=-1) > 2 * L / mu * problem.rho * T).any()


@pytest.mark.parametrize("solver", SAM_FAMILY)
def test_sam_family_batched_solve_equals_loop_of_single_solves(solver):
    problem = sharpness_quadratic(adaptive=solver == "asam")
    steps = torch.tensor([0.1, 0.2, 0.25], dtype=torch.float64)
    batched = saddle.solve(problem, solver, step_size=steps, momentum=0.5, tol=0.0, max_iters=50)
    for i in range(3):
        single = saddle.solve(sharpness_quadratic(adaptive=solver == "asam", index=i), solver,
                              step_size=float(steps[i]), momentum=0.5, tol=0.0, max_iters=50)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-13)
        assert batched.operator_calls[i] == single.operator_calls[0] == 100


@pytest.mark.parametrize("solver", SAM_FAMILY)
def test_sam_family_stopped_instances_stay_bitwise_unchanged(solver):
    problem = sharpness_quadratic(adaptive=solver == "asam", rho=torch.full((3,), 1e-3, dtype=torch.float64))
    r0 = saddle.merit.residual(problem, problem.z0)
    tol = r0 * torch.tensor([0.5, 0.05, 0.0], dtype=torch.float64)
    seen = []
    sol = saddle.solve(problem, solver, step_size=0.1, tol=tol, max_iters=300, check_every=5,
                       callback=lambda p: seen.append((p.status.clone(), p.z[0].clone())))
    stopped = {}
    for status, w in seen:
        for i in range(3):
            if status[i] != Status.RUNNING and i not in stopped:
                stopped[i] = w[i].clone()
            elif i in stopped:
                assert torch.equal(w[i], stopped[i]), f"instance {i} moved after it stopped"
    assert set(stopped) == {0, 1}
    assert torch.equal(sol.x[0], stopped[0]) and torch.equal(sol.x[1], stopped[1])
    assert sol.status[2] == Status.MAX_ITERS


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("solver", SAM_FAMILY)
def test_sam_family_cpu_and_gpu_agree(solver):
    cpu = saddle.solve(sharpness_quadratic(adaptive=solver == "asam"), solver, tol=0.0, max_iters=100)
    gpu = saddle.solve(sharpness_quadratic(adaptive=solver == "asam", device="cuda"), solver, tol=0.0, max_iters=100)
    torch.testing.assert_close(cpu.x, gpu.x.cpu(), rtol=0, atol=1e-10)


# -- stochastic solvers on DRO problems (problems.dro) --------------------------------------------

@pytest.mark.parametrize("solver", STOCHASTIC)
@pytest.mark.parametrize("ambiguity", ["spectral", "chi2"])
def test_stochastic_batched_solve_equals_loop_of_single_solves(solver, ambiguity):
    problem = dro_problem(ambiguity=ambiguity, lam=torch.tensor([0.5, 1.0, 2.0], dtype=torch.float64))
    steps = torch.tensor([0.5, 1.0, 0.75], dtype=torch.float64) * STOCHASTIC_SETTINGS[solver]["step_size"]
    settings = {**STOCHASTIC_SETTINGS[solver], "step_size": steps}
    batched = saddle.solve(problem, solver, tol=0.0, max_iters=120, **settings)
    for i in range(problem.batch_size):
        single = saddle.solve(problem.select(i), solver, tol=0.0, max_iters=120,
                              **{**settings, "step_size": float(steps[i])})
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        assert batched.operator_calls[i] == single.operator_calls[0]


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_solvers_count_per_sample_evaluations(solver):
    problem = dro_problem(ambiguity="chi2", lam=1.0)
    n, evaluated = problem.n, {"samples": 0}
    op = problem.operator
    component, full = op.component, op._full

    def counted_component(z, idx):
        evaluated["samples"] += idx.shape[-1]
        return component(z, idx)

    def counted_full(z):
        evaluated["samples"] += n
        return full(z)

    op.component, op._full = counted_component, counted_full
    per_sample = problem.sample_loss_and_gradient

    def counted_samples(theta, idx):
        evaluated["samples"] += idx.shape[-1]
        return per_sample(theta, idx)

    problem.sample_loss_and_gradient = counted_samples
    s = saddle.get_solver(solver, **STOCHASTIC_SETTINGS[solver])
    state = s.init(problem, problem.z0)
    z = problem.z0
    assert evaluated["samples"] == {"seg": 0, "double_step_seg": 0}.get(solver, n)
    m = getattr(s, "minibatch", 1)
    for k in range(1, 40):
        before = evaluated["samples"]
        z, state = s.step(problem, z, state)
        spent = evaluated["samples"] - before
        if solver == "vr_eg":  # 2m, plus a full pass where an instance refreshed its snapshot
            assert spent in (2 * m, 2 * m + n)
        else:
            assert spent == 2 * m
    assert (state.operator_calls <= evaluated["samples"]).all()
    if solver != "vr_eg":
        assert (state.operator_calls == evaluated["samples"]).all()
    else:  # per instance: n at init + 2m per step + n per refresh of its own
        assert torch.equal(state.operator_calls, n + 2 * m * 39 + n * state.refreshes)
        assert (state.refreshes >= 1).all()


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_stopped_instances_stay_bitwise_unchanged(solver):
    problem = dro_problem(ambiguity="chi2", lam=1.0)
    r0 = saddle.merit.residual(problem, problem.z0)
    # (SEG's iterates stay noisy: its residual hovers near r0, so its first instance stops at once.)
    tol = r0 * torch.tensor([1.2, 0.9, 0.0] if "seg" in solver else [0.7, 0.4, 0.0], dtype=torch.float64)
    seen = []
    settings = {**STOCHASTIC_SETTINGS[solver], **({"minibatch": 16} if "seg" in solver else {})}
    sol = saddle.solve(problem, solver, tol=tol, max_iters=400, check_every=5,
                       callback=lambda p: seen.append((p.status.clone(), tuple(b.clone() for b in p.z),
                                                       p.state.operator_calls.clone())), **settings)
    stopped_at = assert_stopped_instances_stay(seen, problem.batch_size)
    assert set(stopped_at) >= {0}, "the loose instance should have stopped early"
    assert sol.status[2] == Status.MAX_ITERS


@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_solvers_do_not_mutate_inputs(solver):
    problem = dro_problem()
    z0 = tuple(b.clone() for b in problem.z0)
    saddle.solve(problem, solver, max_iters=20, **STOCHASTIC_SETTINGS[solver])
    for a, b in zip(problem.z0, z0):
        assert torch.equal(a, b)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("solver", STOCHASTIC)
def test_stochastic_cpu_and_gpu_agree(solver):
    cpu = saddle.solve(dro_problem(ambiguity="chi2", lam=1.0), solver, tol=0.0, max_iters=100,
                       **STOCHASTIC_SETTINGS[solver])
    gpu = saddle.solve(dro_problem(ambiguity="chi2", lam=1.0, device="cuda"), solver, tol=0.0, max_iters=100,
                       **STOCHASTIC_SETTINGS[solver])
    for a, b in zip(cpu.z, gpu.z):
        torch.testing.assert_close(a, b.cpu(), rtol=0, atol=1e-10)
    assert torch.equal(cpu.operator_calls, gpu.operator_calls.cpu())


# -- compressed distributed solvers on distributed_bilinear ---------------------------------------

@pytest.mark.parametrize("solver", DISTRIBUTED)
def test_distributed_solvers_batched_solve_equals_loop_of_single_solves(solver):
    problem = distributed_problem()
    steps = 0.05 * torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    seeds = {} if solver == "distributed_eg" else {"seed": torch.tensor([3, 0, 7])}
    batched = saddle.solve(problem, solver, step_size=steps, tol=0.0, max_iters=120,
                           **DISTRIBUTED_SETTINGS[solver], **seeds)
    for i in range(problem.batch_size):
        single_seed = {} if solver == "distributed_eg" else {"seed": int(seeds["seed"][i])}
        single = saddle.solve(problem.select(i), solver, step_size=float(steps[i]), tol=0.0, max_iters=120,
                              **DISTRIBUTED_SETTINGS[solver], **single_seed)
        for a, b in zip(batched.z, single.z):
            torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-12)
        for name, value in batched.counts.items():
            assert value[i] == single.counts[name][0], name


@pytest.mark.parametrize("solver", DISTRIBUTED)
def test_distributed_solvers_count_exactly(solver):
    # Operator calls: rounds in which every worker evaluates its F_m once; an independent count of the
    # full synchronizations (MASHA's reference point moving) gives the expected totals.
    problem, op = counting(distributed_problem())
    s = saddle.get_solver(solver, **DISTRIBUTED_SETTINGS[solver])
    state = s.init(problem, problem.z0)
    z = problem.z0
    syncs = torch.zeros(3, dtype=torch.int64)
    at_init = 0 if solver == "compressed_eg" else 1
    assert (state.operator_calls == at_init).all()
    for k in range(1, 40):
        w_old = state.w
        z, state = s.step(problem, z, state)
        if w_old is not None:
            syncs += torch.stack([(a != b).any(-1) for a, b in zip(state.w, w_old)]).any(0).long()
            assert torch.equal(state.operator_calls, at_init + k + syncs)
        else:
            assert (state.operator_calls == at_init + 2 * k).all()
    assert torch.equal(state.syncs, syncs)
    assert torch.equal(state.bits_sent, state.bits_up + state.bits_down)


@pytest.mark.parametrize("solver", DISTRIBUTED)
def test_distributed_solvers_stopped_instances_stay_bitwise_unchanged(solver):
    problem = distributed_problem()
    r0 = saddle.merit.residual(problem, problem.z0)
    # (compressed_eg stalls at a noise floor: looser tolerances)
    factors = [0.5, 0.3, 0.0] if solver == "compressed_eg" else [0.5, 0.05, 0.0]
    tol = r0 * torch.tensor(factors, dtype=torch.float64)
    seen = []
    sol = saddle.solve(problem, solver, tol=tol, max_iters=1000, check_every=5, **DISTRIBUTED_SETTINGS[solver],
                       callback=lambda p: seen.append((p.status.clone(), torch.cat(p.z, -1).clone(),
                                                       p.state.bits_sent.clone())))
    stopped = {}
    for status, z, bits in seen:
        for i in range(3):
            if status[i] != Status.RUNNING and i not in stopped:
                stopped[i] = (z[i].clone(), bits[i].clone())
            elif i in stopped:
                assert torch.equal(z[i], stopped[i][0]) and bits[i] == stopped[i][1], f"instance {i} moved"
    assert set(stopped) == {0, 1}
    assert sol.status[2] == Status.MAX_ITERS


@pytest.mark.parametrize("solver", DISTRIBUTED)
def test_distributed_solvers_do_not_mutate_inputs(solver):
    problem = distributed_problem()
    z0 = tuple(b.clone() for b in problem.z0)
    A = problem.local_operator.A.clone()
    saddle.solve(problem, solver, max_iters=20, **DISTRIBUTED_SETTINGS[solver])
    assert all(torch.equal(a, b) for a, b in zip(problem.z0, z0)) and torch.equal(problem.local_operator.A, A)


@pytest.mark.parametrize("solver", DISTRIBUTED)
def test_distributed_solvers_explain_bad_input(solver):
    with pytest.raises(TypeError, match=f"{solver} needs a DistributedProblem"):
        saddle.solve(PROBLEMS["bilinear"](), solver)
    with pytest.raises(ValueError, match="step_size must be positive"):
        saddle.solve(distributed_problem(), solver, step_size=-1.0, **DISTRIBUTED_SETTINGS[solver])
    with pytest.raises(ValueError, match="step_size has shape"):
        saddle.solve(distributed_problem(), solver, step_size=torch.ones(2), **DISTRIBUTED_SETTINGS[solver])
    if solver == "distributed_eg":
        return
    with pytest.raises(ValueError, match="seed must be"):
        saddle.get_solver(solver, seed=-1)
    if solver == "masha2":
        with pytest.raises(ValueError, match="compressor must be contractive"):
            saddle.solve(distributed_problem(), solver, compressor=saddle.compress.RandK(k=2))
        with pytest.raises(ValueError, match="p must be a probability"):
            saddle.get_solver(solver, p=0.0)
        return
    with pytest.raises(ValueError, match="compressor must be unbiased"):
        saddle.get_solver(solver, compressor=saddle.compress.TopK(k=2))
    with pytest.raises(ValueError, match="participation .4. must be at most the number of workers"):
        saddle.solve(distributed_problem(), solver, participation=4)
    with pytest.raises(ValueError, match="participation must be a positive integer"):
        saddle.get_solver(solver, participation=0)
    with pytest.raises(ValueError, match="larger than the dimension"):
        saddle.solve(distributed_problem(), solver, compressor=saddle.compress.RandK(k=11))


# -- sets: every ConstraintSet of the library passes the set checks --------------------------------

@pytest.mark.parametrize("cls", saddle.testing.set_classes(), ids=lambda cls: cls.__name__)
def test_every_set_passes_the_set_checks(cls):
    examples = cls.examples(3, 6)
    assert examples, f"{cls.__name__}.examples gives no instance to check"
    for s in examples:
        report = saddle.testing.check_set(s)  # raises naming the failed check
        assert {r.check for r in report.passed} >= {"projection", "nonexpansive", "select"}
