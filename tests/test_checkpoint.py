"""Checkpoint and resume: a resumed solve is bit-identical to an uninterrupted one; writes are atomic."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

import problems
import saddle
from saddle.checkpoint import CheckpointWarning, load_checkpoint

from _helpers import ALL_SOLVERS as ALL, distributed_problem, problem_for, settings_for


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
    # The SAM family's problem is built on a closure (the loss captures H): the resume says what it checked.
    opaque = isinstance(problem, problems.sharpness.SharpnessProblem)
    with pytest.warns(CheckpointWarning, match="cannot see") if opaque else contextlib.nullcontext():
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
    with pytest.raises(ValueError, match=r"resume: the checkpoint .*c\.pt' was written by Extragradient.*"
                                         r"this solve runs Optimistic"):
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


class NoisyGame(saddle.VIProblem):
    """A bilinear game whose operator adds noise from a generator the problem holds (a stochastic oracle)."""

    def __init__(self, seed: int):
        base = problems.get("bilinear", n=4, batch_size=2, seed=1)
        self.generator = torch.Generator().manual_seed(seed)
        super().__init__(self.noisy, base.domain, base.z0)
        self.base = base

    def noisy(self, z):
        return tuple(f + 1e-3 * torch.randn(f.shape, dtype=f.dtype, generator=self.generator)
                     for f in self.base.F(z))

    def rng_state(self):
        return self.generator.get_state()

    def set_rng_state(self, state):
        self.generator.set_state(state)


def test_a_problem_holding_a_generator_resumes_bit_identically(tmp_path):
    full = saddle.solve(NoisyGame(seed=5), "extragradient", tol=0.0, max_iters=60, step_size=0.1)
    path = tmp_path / "c.pt"
    saddle.solve(NoisyGame(seed=5), "extragradient", tol=0.0, max_iters=30, step_size=0.1, checkpoint=path)
    resumed = saddle.solve(NoisyGame(seed=5), "extragradient", tol=0.0, max_iters=60, step_size=0.1, resume=path)
    assert all(torch.equal(a, b) for a, b in zip(full.z, resumed.z))
    # the noise moves the iterates: the resume is bit-identical only because the generator's state was saved
    other = saddle.solve(NoisyGame(seed=6), "extragradient", tol=0.0, max_iters=60, step_size=0.1)
    assert not any(torch.equal(a, b) for a, b in zip(full.z, other.z))
