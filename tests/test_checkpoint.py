"""Checkpoint and resume: a resumed solve is bit-identical to an uninterrupted one; writes are atomic."""

from __future__ import annotations

import os

import pytest
import torch

import problems
import saddle
from saddle.checkpoint import load_checkpoint

from test_conformance import ADAPTIVE_COMPETITIVE, COMPETITIVE, DISTRIBUTED, DISTRIBUTED_SETTINGS, LINEARIZED_PD, \
    PRIMAL_DUAL, SAM_FAMILY, STOCHASTIC, STOCHASTIC_SETTINGS, STRONGLY_MONOTONE, distributed_problem, dro_problem, \
    sharpness_quadratic


def settings_for(solver: str) -> dict:
    return {**STOCHASTIC_SETTINGS.get(solver, {}), **DISTRIBUTED_SETTINGS.get(solver, {})}


def problem_for(solver: str):
    if solver in STOCHASTIC:
        return dro_problem()
    if solver in DISTRIBUTED:
        return distributed_problem()
    if solver in SAM_FAMILY:
        return sharpness_quadratic()
    if solver in COMPETITIVE + ADAPTIVE_COMPETITIVE + PRIMAL_DUAL:
        return problems.get("quadratic", n=6, m=4, batch_size=3, seed=3)
    if solver in STRONGLY_MONOTONE + LINEARIZED_PD:
        return problems.get("quadratic", n=6, m=4, box=0.3, batch_size=3, seed=3)
    return problems.get("matrix_game", n=5, m=4, batch_size=3, seed=2)


FIRST_ORDER = {"extragradient", "mirror_prox", "optimistic", "reflected", "eg_plus", "anchored_eg"}
KNOWN = set(COMPETITIVE + ADAPTIVE_COMPETITIVE + PRIMAL_DUAL + SAM_FAMILY + STRONGLY_MONOTONE + LINEARIZED_PD) | \
    FIRST_ORDER
ALL = KNOWN | set(STOCHASTIC) | set(DISTRIBUTED)


def test_every_solver_is_covered():
    assert set(saddle.solver_names()) == ALL


@pytest.mark.parametrize("solver", sorted(ALL))
def test_resumed_solve_is_bit_identical(solver, tmp_path):
    assert_resume_is_bit_identical(problem_for(solver), solver, settings_for(solver), tmp_path)


@pytest.mark.parametrize("solver", ["masha1", "masha2"])
def test_resumed_full_operator_masha_is_bit_identical(solver, tmp_path):
    # The conformance settings run MASHA on minibatches (and MASHA2 with partial participation);
    # the default full-operator, all-worker variant has its own state path.
    settings = {k: v for k, v in settings_for(solver).items() if k not in ("batch_size", "participation")}
    assert_resume_is_bit_identical(distributed_problem(), solver, settings, tmp_path)


def assert_resume_is_bit_identical(problem, solver: str, settings: dict, tmp_path):
    # Different tolerances: some instances stop before the interruption, some after, one never.
    r0 = saddle.merit.residual(problem, problem.z0)
    tol = r0 * torch.tensor([0.3, 1e-3, 0.0], dtype=torch.float64)
    full = saddle.solve(problem, solver, tol=tol, max_iters=80, check_every=10, **settings)
    path = tmp_path / "solve.pt"
    first = saddle.solve(problem, solver, tol=tol, max_iters=40, check_every=10, checkpoint=path,
                         checkpoint_every=20, **settings)
    assert first.history["iteration"].tolist()[-1] == 40
    resumed = saddle.solve(problem, solver, tol=tol, max_iters=80, check_every=10, resume=path, **settings)
    for a, b in zip(full.z, resumed.z):
        assert torch.equal(a, b)
    assert torch.equal(full.status, resumed.status)
    assert torch.equal(full.iterations, resumed.iterations)
    assert torch.equal(full.operator_calls, resumed.operator_calls)
    assert full.history["iteration"].tolist() == resumed.history["iteration"].tolist()
    torch.testing.assert_close(full.history["residual"], resumed.history["residual"], rtol=0, atol=0)


def test_a_crash_while_writing_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    problem = problems.get("bilinear", n=4, batch_size=2, seed=1)
    path = tmp_path / "solve.pt"
    saddle.solve(problem, "extragradient", max_iters=20, tol=0.0, checkpoint=path)
    before = path.read_bytes()
    real_save = torch.save

    def crash(obj, f, *args, **kwargs):
        real_save({"partial": True}, f)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        saddle.solve(problem, "extragradient", max_iters=40, tol=0.0, checkpoint=path)
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["solve.pt"]  # no temporary file left behind
    assert load_checkpoint(path)["k"] == 20


def test_checkpoint_options_are_checked(tmp_path):
    problem = problems.get("bilinear", n=4, batch_size=2, seed=1)
    with pytest.raises(ValueError, match="checkpoint_every must be a positive multiple of check_every = 10"):
        saddle.solve(problem, max_iters=5, checkpoint=tmp_path / "c.pt", checkpoint_every=15)
    with pytest.raises(ValueError, match="checkpoint_every needs checkpoint"):
        saddle.solve(problem, max_iters=5, checkpoint_every=10)
    with pytest.raises(ValueError, match="does not exist"):
        saddle.solve(problem, max_iters=5, checkpoint=tmp_path / "missing" / "c.pt")
    with pytest.raises(TypeError, match="checkpoint must be a path"):
        saddle.solve(problem, max_iters=5, checkpoint=3)
    with pytest.raises(ValueError, match="no checkpoint file"):
        saddle.solve(problem, max_iters=5, resume=tmp_path / "nothing.pt")
    path = tmp_path / "c.pt"
    saddle.solve(problem, "extragradient", max_iters=10, checkpoint=path)
    with pytest.raises(ValueError, match="resume: the checkpoint was written by"):
        saddle.solve(problem, "optimistic", max_iters=20, resume=path)
    torch.save({"something": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not a saddle checkpoint"):
        saddle.solve(problem, max_iters=5, resume=tmp_path / "other.pt")


def test_resuming_a_finished_solve_with_a_larger_budget_continues_it(tmp_path):
    problem = problems.get("matrix_game", n=5, m=4, batch_size=2, seed=2)
    path = tmp_path / "c.pt"
    saddle.solve(problem, "pdhg", tol=0.0, max_iters=30, check_every=10, checkpoint=path)
    more = saddle.solve(problem, "pdhg", tol=0.0, max_iters=50, check_every=10, resume=path)
    full = saddle.solve(problem, "pdhg", tol=0.0, max_iters=50, check_every=10)
    assert all(torch.equal(a, b) for a, b in zip(full.z, more.z))
