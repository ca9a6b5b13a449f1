"""Checkpoint and resume: a resumed solve is bit-identical to an uninterrupted one; writes are atomic."""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from saddle import problems
import saddle
from saddle.checkpoint import CheckpointWarning, load_checkpoint

import saddle.testing
from _helpers import settings_for


@pytest.mark.parametrize("solver", saddle.solver_names())
def test_resumed_solve_is_bit_identical(solver, tmp_path):
    # saddle.testing's resume check on the first conformance family the solver applies to.
    s = saddle.testing.conformance_solver(solver)
    family = saddle.testing.representative(s, saddle.testing.PREFERRED["resume"])
    # The SAM family's problem is built on a closure (the loss captures H): the resume says what it checked.
    opaque = family.name == "sharpness"
    with pytest.warns(CheckpointWarning, match="cannot see") if opaque else contextlib.nullcontext():
        try:
            saddle.testing.check_resume(s, family, directory=tmp_path)
        except saddle.testing.SkipCheck as skip:  # (the interior-point method stops before the cut)
            pytest.skip(str(skip))


@pytest.mark.parametrize("solver", ["masha1", "masha2"])
def test_resumed_full_operator_masha_is_bit_identical(solver, tmp_path):
    # The conformance settings run MASHA on minibatches (and MASHA2 with partial participation);
    # the default full-operator, all-worker variant has its own state path.
    settings = {k: v for k, v in settings_for(solver).items() if k not in ("minibatch", "participation")}
    saddle.testing.check_resume(saddle.get_solver(solver, **settings), saddle.testing.FAMILIES["distributed"],
                                directory=tmp_path)


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


def test_a_batch_of_one_checkpoints(tmp_path):
    # its (1,) tolerance, expanded from a float, has stride 0: the fingerprint once failed to read its bytes
    game = saddle.problems.get("matrix_game", n=3, m=3, batch_size=1, seed=0)
    full = saddle.solve(game, "extragradient", tol=1e-9, max_iters=60, check_every=10)
    saddle.solve(game, "extragradient", tol=1e-9, max_iters=30, check_every=10, checkpoint=tmp_path / "one.pt")
    resumed = saddle.solve(game, "extragradient", tol=1e-9, max_iters=60, check_every=10, resume=tmp_path / "one.pt")
    assert torch.equal(full.z[0], resumed.z[0]) and torch.equal(full.iterations, resumed.iterations)
