"""The driver: statuses, budgets, history, callbacks, progress, and clear errors for bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from saddle import problems
import saddle
from saddle import Backtracking, BilinearProblem, Box, Reals, SaddleProblem, Simplex, SolveError, Status, VIProblem


def _quadratic(**kw):
    return problems.get("quadratic", n=5, m=3, batch_size=4, seed=1, **kw)


def test_solution_fields_and_shapes():
    problem = _quadratic()
    sol = saddle.solve(problem, "extragradient", tol=1e-8, check_every=5)
    B = problem.batch_size
    assert sol.x.shape == (B, 5) and sol.y.shape == (B, 3)
    for name in ("status", "iterations", "operator_calls", "residual", "gap", "distance"):
        assert getattr(sol, name).shape == (B,), name
    assert sol.success.all() and sol.status_counts() == {"CONVERGED": B}
    assert (sol.residual <= 1e-8).all()
    h = sol.history
    T = h["iteration"].shape[0]
    assert h["residual"].shape == (T, B) and h["gap"].shape == (T, B) and h["operator_calls"].shape == (T, B)
    assert (h["iteration"] % 5 == 0).all() and h["iteration"][0] == 0
    assert "CONVERGED" in repr(sol) and sol.statuses[0] is Status.CONVERGED
    assert Status.DIVERGED.message


def test_history_can_be_switched_off():
    sol = saddle.solve(_quadratic(), "extragradient", history=False)
    assert sol.history == {}


def test_max_iters_status_and_zero_iterations():
    problem = _quadratic()
    sol = saddle.solve(problem, "gda", tol=0.0, max_iters=7, check_every=3)
    assert (sol.status == Status.MAX_ITERS).all() and (sol.iterations == 7).all()
    sol = saddle.solve(problem, "gda", tol=0.0, max_iters=0)
    assert (sol.iterations == 0).all()
    for a, b in zip(sol.z, problem.z0):
        assert torch.equal(a, b)


def test_operator_call_budget_is_per_instance_and_exact():
    problem = _quadratic()
    sol = saddle.solve(problem, "extragradient", tol=0.0, max_operator_calls=41, max_iters=1000)
    assert (sol.status == Status.BUDGET_EXHAUSTED).all()
    # 1 call at init, 2 per iteration: the first count >= 41 is 41 after 20 iterations.
    assert (sol.operator_calls == 41).all() and (sol.iterations == 20).all()


def test_callback_receives_progress_and_can_stop():
    problem = _quadratic()
    seen = []

    def callback(p):
        seen.append(p.iteration)
        assert set(p.measures) == {"residual", "gap", "distance"}
        assert p.status.shape == (problem.batch_size,)
        return p.iteration >= 20

    sol = saddle.solve(problem, "extragradient", tol=0.0, check_every=10, callback=callback)
    assert seen == [0, 10, 20]
    assert (sol.status == Status.STOPPED).all() and (sol.iterations == 20).all()


def test_throw_raises_with_the_solution_attached():
    with pytest.raises(SolveError) as info:
        saddle.solve(_quadratic(), "gda", tol=0.0, max_iters=3, throw=True)
    assert info.value.solution.status.shape == (4,)
    assert "MAX_ITERS" in str(info.value)


def test_progress_bar(capsys):
    saddle.solve(_quadratic(), "extragradient", tol=1e-6, progress=True)
    assert "extragradient" in capsys.readouterr().err


def test_measures_gap_and_distance():
    problem = problems.get("matrix_game", n=4, batch_size=3, seed=2)
    sol = saddle.solve(problem, "extragradient", measure="gap", tol=1e-7)
    assert (sol.gap <= 1e-7).all()
    sol = saddle.solve(_quadratic(), "extragradient", measure="distance", tol=1e-9)
    assert (sol.distance <= 1e-9).all()


def test_diverging_instance_is_marked_and_the_rest_finish():
    problem = _quadratic()
    L, mu = problem.lipschitz(), problem.strong_monotonicity()
    steps = mu / L**2
    steps[1] = 50.0 / L[1]  # |1 - eta lambda| > 1: this instance blows up
    sol = saddle.solve(problem, "gda", step_size=steps, tol=1e-8, max_iters=20_000)
    assert sol.status[1] == Status.DIVERGED
    keep = torch.tensor([0, 2, 3])
    assert (sol.status[keep] == Status.CONVERGED).all()
    assert (sol.distance[keep] <= 1e-6).all()


def test_nan_from_the_operator_marks_only_that_instance_diverged():
    # An operator that returns NaN for instance 0 once its x leaves a region.
    base = _quadratic()

    def F(z):
        out = base.F(z)
        bad = torch.zeros(z[0].shape[0], dtype=torch.bool)
        bad[0] = True
        return tuple(torch.where(bad.unsqueeze(-1), torch.full_like(b, math.nan), b) for b in out)

    problem = VIProblem(F, base.domain, base.z0, lipschitz=base.lipschitz(), solution=base.reference.solution)
    sol = saddle.solve(problem, "extragradient", tol=1e-8)
    assert sol.status[0] == Status.DIVERGED
    assert (sol.status[1:] == Status.CONVERGED).all()
    # The diverged instance keeps a finite point: its last one before the NaN (here the start).
    for a, b in zip(sol.z, problem.z0):
        assert torch.equal(a[0], b[0])
    assert sol.iterations[0] == 0


# -- bad input -----------------------------------------------------------------------------------------

def _xy(B=2):
    return torch.zeros(B, 3, dtype=torch.float64), torch.zeros(B, 2, dtype=torch.float64)


@pytest.mark.parametrize("kwargs,match", [
    ({"max_iters": -1}, "max_iters"),
    ({"max_iters": 2.5}, "max_iters"),
    ({"check_every": 0}, "check_every"),
    ({"measure": "nope"}, "measure"),
    ({"max_operator_calls": 0}, "max_operator_calls"),
    ({"tol": -1.0}, "tol"),
    ({"tol": float("nan")}, "tol"),
    ({"tol": torch.ones(3)}, "tol"),
    ({"divergence_factor": 0.5}, "divergence_factor"),
])
def test_bad_solve_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        saddle.solve(_quadratic(), "extragradient", **kwargs)


def test_bad_tol_type():
    with pytest.raises(TypeError, match="tol"):
        saddle.solve(_quadratic(), "extragradient", tol="small")


def _has_step_size(solver):
    return "step_size" in {f.name for f in dataclasses.fields(saddle.get_solver(solver))}


@pytest.mark.parametrize("step", [0.0, -1.0, math.nan, math.inf, torch.tensor([0.1, -0.1, 0.1, 0.1])])
@pytest.mark.parametrize("solver", [s for s in saddle.solver_names() if _has_step_size(s)])
def test_non_positive_step_sizes_are_rejected(solver, step):
    with pytest.raises(ValueError, match="step_size"):
        saddle.solve(_quadratic(), solver, step_size=step)


@pytest.mark.parametrize("solver", [s for s in saddle.solver_names() if not _has_step_size(s)])
def test_a_step_size_is_refused_by_solvers_without_one(solver):
    # LPD and ALPD derive their steps from the problem's constants.
    with pytest.raises(TypeError, match=r"no setting\(s\) \['step_size'\]"):
        saddle.solve(_quadratic(), solver, step_size=0.1)


def test_step_size_of_wrong_batch_size():
    with pytest.raises(ValueError, match="step_size"):
        saddle.solve(_quadratic(), "extragradient", step_size=torch.ones(3))


def test_bad_step_size_type():
    with pytest.raises(TypeError, match="step_size"):
        saddle.solve(_quadratic(), "extragradient", step_size="big")


@pytest.mark.parametrize("kw,match", [
    ({"shrink": 1.5}, "shrink"), ({"shrink": 0.0}, "shrink"), ({"growth": 0.5}, "growth"), ({"initial": -1.0}, "initial"),
])
def test_bad_backtracking_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        Backtracking(**kw)


def test_unknown_solver_and_settings():
    with pytest.raises(ValueError, match="unknown solver 'nope'.*extragradient"):
        saddle.solve(_quadratic(), "nope")
    with pytest.raises(TypeError, match="no setting.*stepsize"):
        saddle.solve(_quadratic(), "extragradient", stepsize=0.1)
    with pytest.raises(TypeError, match="solver instance"):
        saddle.solve(_quadratic(), saddle.Extragradient(), step_size=0.1)
    with pytest.raises(TypeError, match="solver must be"):
        saddle.solve(_quadratic(), 3)


def test_eg_plus_alpha_is_checked():
    with pytest.raises(ValueError, match="alpha"):
        saddle.solve(_quadratic(), "eg_plus", alpha=1.5)


def test_gda_needs_a_step_without_a_lipschitz_constant():
    problem = SaddleProblem(lambda x, y: (x[:, :2] * y).sum(-1), *_xy(), Y=Reals())
    with pytest.raises(ValueError, match="step_size is required"):
        saddle.solve(problem, "gda")
    with pytest.raises(TypeError, match="backtracking"):
        saddle.solve(problem, "gda", step_size=Backtracking())


@pytest.mark.parametrize("x0,match", [
    (torch.full((2, 3), math.nan, dtype=torch.float64), "NaN or inf"),
    (torch.full((2, 3), math.inf, dtype=torch.float64), "NaN or inf"),
    (torch.zeros(3, dtype=torch.float64), r"shape \(B, n\)"),
    (torch.zeros(5, 3, dtype=torch.float64), "batch size"),
    (torch.zeros(2, 3, dtype=torch.int64), "floating"),
])
def test_bad_starting_points(x0, match):
    y0 = torch.zeros(2, 2, dtype=torch.float64)
    with pytest.raises((ValueError, TypeError), match=match):
        SaddleProblem(lambda x, y: (x.sum(-1) * y.sum(-1)), x0, y0)


def test_wrong_number_of_blocks_in_the_domain():
    with pytest.raises(ValueError, match="blocks"):
        VIProblem(lambda z: z, (Reals(), Reals(), Reals()), _xy())


def test_mismatched_batch_sizes_between_K_and_the_points():
    with pytest.raises(ValueError, match="K must have shape"):
        BilinearProblem(torch.zeros(3, 2, 3, dtype=torch.float64), *_xy())


def test_per_instance_set_parameters_must_match_the_batch():
    with pytest.raises(ValueError, match=r"domain\[0\].lo"):
        VIProblem(lambda z: z, (Box(torch.zeros(5), 1.0), Reals()), _xy())


def test_empty_box_and_negative_radius():
    with pytest.raises(ValueError, match="empty"):
        Box(1.0, 0.0)
    with pytest.raises(ValueError, match="radius"):
        saddle.Ball(-1.0)


def test_operator_that_fails_at_the_start_gives_a_clear_error():
    problem = SaddleProblem(lambda x, y: (x * y).sum(-1), *_xy())  # x is (B, 3), y is (B, 2)
    with pytest.raises(ValueError, match="operator .* failed at the starting point"):
        saddle.solve(problem, "extragradient", step_size=0.1)


def test_operator_returning_the_wrong_shape():
    problem = VIProblem(lambda z: (z[0][:, :2], z[1]), (Reals(), Reals()), _xy())
    with pytest.raises(ValueError, match="block 0 has shape"):
        saddle.solve(problem, "extragradient", step_size=0.1)


def test_measure_gap_needs_a_computable_gap():
    with pytest.raises(ValueError, match="gap"):
        saddle.solve(problems.get("bilinear", n=3), "extragradient", measure="gap")
    problem = SaddleProblem(lambda x, y: (x * y[:, :1]).sum(-1), *_xy(), Y=Simplex())
    with pytest.raises(ValueError, match="reference"):
        saddle.solve(problem, "extragradient", measure="distance")


def test_history_memory_is_bounded_and_spans_the_run():
    problem = problems.get("bilinear", n=4, batch_size=2, seed=1)
    sol = saddle.solve(problem, "extragradient", max_iters=1000, tol=0.0, check_every=10, check_growth=0,
                       history=8)
    # 101 checks into at most 8 rows: every 16th check (stride doubled 4 times), and the last one.
    assert sol.history["iteration"].tolist() == [0, 160, 320, 480, 640, 800, 960, 1000]
    assert sol.history["residual"].shape == (8, 2)
    full = saddle.solve(problem, "extragradient", max_iters=1000, tol=0.0, check_every=10, check_growth=0)
    assert len(full.history["iteration"]) == 101
    kept = [k // 10 for k in sol.history["iteration"].tolist()]
    assert torch.equal(sol.history["residual"], full.history["residual"][kept])
    with pytest.raises(ValueError, match="history must be True, False or an integer >= 2"):
        saddle.solve(problem, max_iters=5, history=1)


@pytest.mark.slow
def test_compiled_steps_agree_with_eager_ones():
    problem = problems.get("bilinear", n=5, batch_size=3, seed=2)
    eager = saddle.solve(problem, "extragradient", max_iters=60, tol=0.0, check_every=20)
    compiled = saddle.solve(problem, "extragradient", max_iters=60, tol=0.0, check_every=20, compile=True)
    for a, b in zip(eager.z, compiled.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    assert torch.equal(eager.operator_calls, compiled.operator_calls)


def test_compile_falls_back_to_eager_with_a_warning(monkeypatch):
    def broken(fn, **kwargs):
        def run(*args):
            raise RuntimeError("backend unavailable")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    problem = problems.get("bilinear", n=5, batch_size=3, seed=2)
    with pytest.warns(RuntimeWarning, match="compiling extragradient's step failed"):
        sol = saddle.solve(problem, "extragradient", max_iters=30, tol=0.0, compile=True)
    eager = saddle.solve(problem, "extragradient", max_iters=30, tol=0.0)
    assert all(torch.equal(a, b) for a, b in zip(sol.z, eager.z))
    with pytest.raises(TypeError, match="compile must be None"):
        saddle.solve(problem, max_iters=5, compile="yes")
