"""Adversarial probes of `saddle.solve` and the problem classes (issue 14): low precision, autograd, callbacks,
malformed operators, complex data and misplaced tensors.

Each probe gets either a correct answer, checked against an independent one (a float64 evaluation, a closed
form), or a ``ValueError`` / ``TypeError`` whose message names the culprit. The checkpoint, distributed, CLI
and linprog probes live in the sibling ``test_adversarial_*.py`` modules.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import saddle
from saddle import Status
from saddle.point import norm
from saddle.sets import Box

B, N = 4, 5


def quadratic_game(seed: int = 0):
    """``f(x, y) = 0.5|x - c|^2 + x^T A y - 0.5|y - d|^2`` in float64, and its saddle point in closed form.

    f works in the dtype of its inputs, so the same f defines the problem in every precision.
    The saddle point solves ``x - c + A y = 0``, ``A^T x - y + d = 0``.
    """
    g = torch.Generator().manual_seed(seed)
    A = 0.5 * torch.randn(B, N, N, dtype=torch.float64, generator=g)
    c = torch.randn(B, N, dtype=torch.float64, generator=g)
    d = torch.randn(B, N, dtype=torch.float64, generator=g)

    def f(x, y):
        t = x.dtype
        Ay = torch.einsum("bij,bj->bi", A.to(t), y)
        return 0.5 * (x - c.to(t)).square().sum(-1) + (x * Ay).sum(-1) - 0.5 * (y - d.to(t)).square().sum(-1)

    eye = torch.eye(N, dtype=torch.float64).expand(B, N, N)
    M = torch.cat([torch.cat([eye, A], -1), torch.cat([A.mT, -eye], -1)], -2)
    z = torch.linalg.solve(M, torch.cat([c, -d], -1))
    return f, (z[:, :N], z[:, N:])


def float64_residual(f, z) -> torch.Tensor:
    """The natural residual at ``z`` computed from scratch in float64 (an independent evaluation)."""
    z64 = tuple(t.to(torch.float64) for t in z)
    return saddle.merit.residual(saddle.SaddleProblem(f, *z64), z64)


# -- low precision: a reported success holds in float64 ------------------------------------------------------

@pytest.mark.parametrize("dtype, tol", [(torch.float16, 1e-2), (torch.float16, 1e-6), (torch.bfloat16, 1e-2),
                                        (torch.float32, 1e-4), (torch.float32, 1e-6)])
def test_a_reported_success_holds_in_float64(dtype, tol):
    f, _ = quadratic_game()
    problem = saddle.SaddleProblem(f, torch.zeros(B, N, dtype=dtype), torch.zeros(B, N, dtype=dtype))
    sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=tol, max_iters=400)
    exact = float64_residual(f, sol.z)
    assert (exact[sol.success] <= tol).all()
    assert (exact[sol.status == Status.PRECISION_LOSS] > tol).all()
    # the reported residual is the float64 one at the returned point, not the working-precision one
    torch.testing.assert_close(sol.residual.double(), exact, rtol=1e-6, atol=0)


def test_float16_residuals_do_not_underflow_into_a_false_success():
    # Regression: the sum of squares of a 1e-4 residual underflows in float16, so the residual read 0 and the
    # solve reported CONVERGED at a point whose float64 residual is 1e-4 and more.
    f, (x_star, y_star) = quadratic_game()
    problem = saddle.SaddleProblem(f, torch.zeros(B, N, dtype=torch.float16), torch.zeros(B, N, dtype=torch.float16))
    sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=1e-6, max_iters=300)
    assert not sol.success.any()
    assert (float64_residual(f, sol.z) > 1e-4).all()
    # float16 cannot hold z* to 1e-6: the closed-form solution is that far from every float16 point
    distance = norm((sol.z[0].double() - x_star, sol.z[1].double() - y_star))
    assert (distance > 1e-5).all()


def test_float32_solves_that_reach_the_tolerance_converge_and_match_the_closed_form():
    f, (x_star, y_star) = quadratic_game()
    problem = saddle.SaddleProblem(f, torch.zeros(B, N), torch.zeros(B, N))
    sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=1e-4, max_iters=2000)
    assert sol.success.all()
    assert sol.residual.dtype == torch.float32
    distance = norm((sol.z[0].double() - x_star, sol.z[1].double() - y_star))
    assert (distance < 1e-3).all()  # a residual of 1e-4 on a game with mu = 1, L ~ 3


def test_a_tolerance_below_float16_resolution_ends_as_precision_loss():
    # F = z - target computed in float64 and rounded to the input's dtype, as a float16 model would: near the
    # solution the float16 F rounds to 0, the working-precision residual reads 0, and the float64 re-check
    # (on the exact F) sees the true distance to the target.
    target = torch.tensor([[1 / 3, 2 / 3, 0.1, 0.7, 0.9]], dtype=torch.float64)
    problem = saddle.VIProblem(lambda z: ((z[0].double() - target).to(z[0].dtype),), Box(-1.0, 1.0),
                               torch.full((1, 5), 0.3, dtype=torch.float16))
    sol = saddle.solve(problem, "gda", step_size=1.0, tol=1e-6, max_iters=100)
    exact = (sol.z[0].double() - target).norm(dim=-1)  # P_Z(z - F(z)) = target: the residual is |z - target|
    assert sol.statuses == [Status.PRECISION_LOSS]
    assert sol.iterations.item() < 100  # stopped as soon as the float64 re-check saw it, not at the limit
    assert exact.item() > 1e-6
    torch.testing.assert_close(sol.residual.double(), exact, rtol=1e-6, atol=0)


def test_float64_problems_are_not_rechecked_and_keep_their_iterates():
    f, _ = quadratic_game()
    problem = saddle.SaddleProblem(f, torch.zeros(B, N, dtype=torch.float64), torch.zeros(B, N, dtype=torch.float64))
    calls = []
    original = problem.to
    problem.to = lambda dtype: calls.append(dtype) or original(dtype)
    sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=1e-8)
    assert sol.success.all() and calls == []


GLOBAL_A = torch.randn(B, N, N, generator=torch.Generator().manual_seed(1))  # float32, read as a global


def _reads_a_float32_global(x, y):
    return 0.5 * x.square().sum(-1) + torch.einsum("bi,bij,bj->b", x, GLOBAL_A, y) - 0.5 * y.square().sum(-1)


@pytest.mark.parametrize("problem", [
    lambda: saddle.SaddleProblem(_reads_a_float32_global, torch.ones(B, N), torch.ones(B, N)),
    lambda: saddle.VIProblem(lambda z: ((z[0] - 1).float(),), Box(-2.0, 2.0), torch.zeros(B, N)),  # casts
], ids=["global", "casts"])
def test_a_problem_that_cannot_run_in_float64_warns_once_and_keeps_its_result(problem):
    problem = problem()
    with pytest.warns(RuntimeWarning, match="could not be evaluated in float64") as record:
        sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=1e-4)
    assert len([w for w in record if "float64" in str(w.message)]) == 1
    assert sol.success.all()


def test_captured_tensors_are_converted_so_closures_are_rechecked_in_float64():
    def game():
        A = torch.randn(B, N, N, generator=torch.Generator().manual_seed(1))  # float32, captured

        def f(x, y):  # no .to(x.dtype): the float64 copy of the problem gets a float64 A
            return 0.5 * x.square().sum(-1) + torch.einsum("bi,bij,bj->b", x, A, y) - 0.5 * y.square().sum(-1)
        return f, A

    f, A = game()
    problem = saddle.SaddleProblem(f, torch.ones(B, N), torch.ones(B, N))
    copy = problem.to(torch.float64)
    assert copy.F(tuple(t.double() for t in problem.z0))[0].dtype == torch.float64
    assert A.dtype == torch.float32 and problem.F(problem.z0)[0].dtype == torch.float32  # the original is untouched
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sol = saddle.solve(problem, "extragradient", step_size=0.1, tol=1e-5)
    # The unique saddle point is 0, F is 1-strongly monotone and L-Lipschitz with L = sqrt(1 + |A|^2), so the
    # natural residual r bounds the distance: |z - z*| <= (1 + L) r / mu.
    assert sol.success.all()
    L = (1 + torch.linalg.matrix_norm(A.double(), ord=2) ** 2).sqrt()
    assert (norm(tuple(t.double() for t in sol.z)) <= (1 + L) * 1e-5).all()


def test_norms_of_float16_points_accumulate_in_float32():
    x = torch.full((2, 64), 1e-4, dtype=torch.float16)
    expected = x.double().norm(dim=-1)
    assert (x.square().sum(-1) == 0).all()  # the naive float16 sum underflows
    torch.testing.assert_close(norm((x,)).double(), expected, rtol=1e-3, atol=0)
    assert norm((x,)).dtype == torch.float16
    assert saddle.point.dot((x,), (x,), dtype=torch.float32).min().item() == pytest.approx(64e-8, rel=1e-3)


def test_problem_to_float64_converts_the_data_and_leaves_the_problem_alone():
    from saddle import problems

    games = problems.get("matrix_game", n=6, batch_size=3, seed=0, dtype=torch.float32)
    copy = games.to(torch.float64)
    assert games.K.dtype == torch.float32 and games.z0[0].dtype == torch.float32
    assert copy.K.dtype == torch.float64 and copy.dtype == torch.float64
    assert copy.coupling.K is copy.K  # sharing inside the problem is kept
    z = tuple(t.double() for t in games.z0)
    torch.testing.assert_close(copy.duality_gap(z), games.duality_gap(games.z0).double(), rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match="dtype"):
        games.to(torch.int64)


# -- autograd: a start (or data) that requires grad never grows a graph ---------------------------------------

def test_a_start_that_requires_grad_is_detached():
    x0 = torch.ones(B, N, requires_grad=True)
    problem = saddle.SaddleProblem(lambda x, y: 0.5 * x.square().sum(-1) + (x * y).sum(-1) - 0.5 * y.square().sum(-1),
                                   x0, torch.zeros(B, N))
    sol = saddle.solve(problem, "gda", step_size=0.1, max_iters=300)
    assert not any(t.requires_grad for t in sol.z)
    assert all(t.grad_fn is None for t in sol.z)
    assert sol.success.all()
    assert x0.requires_grad  # the caller's tensor is untouched


@pytest.mark.parametrize("solver", ["extragradient", "optimistic", "pdhg"])
def test_data_that_require_grad_do_not_chain_the_iterates(solver):
    K = torch.randn(2, N, N, dtype=torch.float64, requires_grad=True)
    problem = saddle.BilinearProblem(K, torch.ones(2, N, dtype=torch.float64), torch.ones(2, N, dtype=torch.float64),
                                     X=Box(-1.0, 1.0), Y=Box(-1.0, 1.0))
    sol = saddle.solve(problem, solver, max_iters=200, **({} if solver == "pdhg" else {"step_size": 0.1}))
    leaves = [t for t in (*sol.z, sol.residual, *(v for v in sol.state if isinstance(v, torch.Tensor)))]
    assert not any(t.requires_grad for t in leaves)
    # same iterates as with data that do not require grad
    plain = saddle.BilinearProblem(K.detach(), torch.ones(2, N, dtype=torch.float64),
                                   torch.ones(2, N, dtype=torch.float64), X=Box(-1.0, 1.0), Y=Box(-1.0, 1.0))
    ref = saddle.solve(plain, solver, max_iters=200, **({} if solver == "pdhg" else {"step_size": 0.1}))
    for a, b in zip(sol.z, ref.z):
        assert torch.equal(a, b)


# -- callbacks ---------------------------------------------------------------------------------------------

def _game():
    f, _ = quadratic_game()
    return saddle.SaddleProblem(f, torch.zeros(B, N, dtype=torch.float64), torch.zeros(B, N, dtype=torch.float64))


def test_a_callback_may_stop_some_instances_with_a_bool_tensor():
    stop = torch.tensor([True, False, True, False])
    sol = saddle.solve(_game(), "extragradient", step_size=0.1, tol=1e-8, callback=lambda p: stop)
    assert sol.statuses == [Status.STOPPED, Status.CONVERGED, Status.STOPPED, Status.CONVERGED]
    assert sol.iterations[0] == 0 and sol.iterations[1] > 0
    # the others match a solve without the callback, bit for bit
    ref = saddle.solve(_game(), "extragradient", step_size=0.1, tol=1e-8)
    assert torch.equal(sol.z[0][1], ref.z[0][1]) and torch.equal(sol.z[0][3], ref.z[0][3])


@pytest.mark.parametrize("answer", [True, np.bool_(True), torch.tensor(True)])
def test_a_callback_may_stop_everything(answer):
    sol = saddle.solve(_game(), "extragradient", step_size=0.1, callback=lambda p: answer)
    assert sol.statuses == [Status.STOPPED] * B


@pytest.mark.parametrize("answer", [torch.ones(B), torch.ones(B + 1, dtype=torch.bool), "yes", 1.0, [True] * B])
def test_a_callback_with_a_meaningless_answer_is_refused(answer):
    with pytest.raises(TypeError, match="callback must return None, a bool or a"):
        saddle.solve(_game(), "extragradient", step_size=0.1, callback=lambda p: answer)


def test_a_callback_that_is_not_callable_is_refused_before_solving():
    with pytest.raises(TypeError, match="callback must be callable"):
        saddle.solve(_game(), "extragradient", step_size=0.1, callback=3)


# -- malformed operators -----------------------------------------------------------------------------------

def _turning(bad_after: int, bad):
    """An operator ``z - 1`` on a box that returns ``bad(z)`` from its ``bad_after``-th call on."""
    calls = []

    def F(z):
        calls.append(None)
        return bad(z) if len(calls) > bad_after else (z[0] - 1,)

    return saddle.VIProblem(F, Box(-2.0, 2.0), torch.zeros(B, N))


@pytest.mark.parametrize("bad, message", [
    (lambda z: (torch.zeros(B, N + 1),), r"block 0 has shape \(4, 6\), expected \(4, 5\)"),
    (lambda z: (torch.zeros(1, N),), r"block 0 has shape \(1, 5\), expected \(4, 5\)"),
    (lambda z: ((z[0] - 1).double(),), "block 0 is torch.float64 on cpu, expected the problem's torch.float32"),
    (lambda z: ((z[0] - 1).to(torch.complex64),), "complex operators are not supported"),
    (lambda z: (z[0] - 1, z[0]), "must return 1 blocks, got tuple of length 2"),
])
def test_an_operator_that_turns_malformed_mid_run_is_named(bad, message):
    with pytest.raises(ValueError, match=message):
        saddle.solve(_turning(25, bad), "extragradient", step_size=0.1, tol=1e-12, max_iters=200)


def test_an_operator_that_is_malformed_from_the_start_fails_before_any_step():
    problem = _turning(0, lambda z: ((z[0] - 1).double(),))
    with pytest.raises(ValueError, match="float64"):
        saddle.solve(problem, "extragradient", step_size=0.1)


# -- complex data and tensors on other devices -------------------------------------------------------------

def test_complex_data_are_refused_with_the_argument_named():
    x = torch.zeros(B, N)
    with pytest.raises(TypeError, match=r"\(x0, y0\)\[0\] must have a floating dtype, got torch.complex64"):
        saddle.SaddleProblem(lambda x, y: (x * y).sum(-1), x.to(torch.complex64), x)
    with pytest.raises(ValueError, match="K is torch.complex64"):
        saddle.BilinearProblem(torch.zeros(B, N, N, dtype=torch.complex64), x, x)
    with pytest.raises(TypeError, match="tol must be a real floating tensor"):
        saddle.solve(_game(), tol=torch.full((B,), 1e-3, dtype=torch.complex128))
    box = Box(-1.0, 1.0)
    box.lo = torch.full((1, N), -1.0, dtype=torch.complex64)
    with pytest.raises(ValueError, match=r"domain\[0\].lo is torch.complex64"):
        saddle.VIProblem(lambda z: z, box, x)


def test_tensors_on_another_device_are_refused_with_the_argument_named():
    # "meta" tensors stand in for a second device on a machine without one.
    x = torch.zeros(B, N)
    with pytest.raises(ValueError, match="K is torch.float32 on meta but x0 is torch.float32 on cpu"):
        saddle.BilinearProblem(torch.zeros(B, N, N, device="meta"), x, x)
    with pytest.raises(ValueError, match=r"\(x0, y0\)\[1\] is torch.float32 on meta"):
        saddle.SaddleProblem(lambda x, y: (x * y).sum(-1), x, torch.zeros(B, N, device="meta"))
    box = Box(-1.0, 1.0)
    box.hi = torch.ones(1, N, device="meta")
    with pytest.raises(ValueError, match=r"domain\[0\].hi is torch.float32 on meta"):
        saddle.VIProblem(lambda z: z, box, x)
    problem = saddle.VIProblem(lambda z: (z[0].to("meta"),), Box(-1.0, 1.0), x)
    with pytest.raises(ValueError, match="block 0 is torch.float32 on meta, expected the problem's torch.float32 on cpu"):
        saddle.solve(problem)


# -- a property: whatever the precision and tolerance, CONVERGED means converged in float64 ------------------

@settings(max_examples=12, deadline=None)
@given(dtype=st.sampled_from([torch.float16, torch.bfloat16, torch.float32]),
       exponent=st.integers(-8, -1), seed=st.integers(0, 3), solver=st.sampled_from(["extragradient", "optimistic"]))
def test_converged_always_means_converged_in_float64(dtype, exponent, seed, solver):
    f, _ = quadratic_game(seed)
    tol = 10.0 ** exponent
    problem = saddle.SaddleProblem(f, torch.zeros(B, N, dtype=dtype), torch.zeros(B, N, dtype=dtype))
    sol = saddle.solve(problem, solver, step_size=0.1, tol=tol, max_iters=400)
    exact = float64_residual(f, sol.z)
    assert (exact[sol.success] <= tol).all()
    assert set(sol.status.tolist()) <= {Status.CONVERGED, Status.MAX_ITERS, Status.PRECISION_LOSS}
