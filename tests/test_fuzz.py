"""Fuzzing the public API with hypothesis: bad input gives a clear ValueError/TypeError, never a deep error.

Every call below either succeeds (and then its answer is checked for basic sanity) or raises
ValueError/TypeError; any other exception (IndexError, RuntimeError from inside torch, ...) fails.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saddle import problems
import saddle

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

weird_numbers = st.one_of(
    st.integers(min_value=-5, max_value=60),
    st.floats(allow_nan=True, allow_infinity=True, width=64),
    st.sampled_from([0, 1, 2, -1, 0.5, 1e300, -0.0, True, None, "3", [1, 2]]),
)


def weird_tensors(draw_shape=st.lists(st.integers(0, 4), min_size=0, max_size=3)):
    return st.builds(lambda shape, fill: torch.full(shape, fill, dtype=torch.float64),
                     draw_shape, st.floats(allow_nan=True, allow_infinity=True, width=64))


values = st.one_of(weird_numbers, weird_tensors())


def clear_or_ok(call):
    try:
        return call()
    except (ValueError, TypeError):
        return None


@FUZZ
@given(lo=values, hi=values, radius=values, p=st.sampled_from([1, 2, math.inf, 3, 0, "2"]))
def test_sets_accept_or_refuse_clearly(lo, hi, radius, p):
    u = torch.randn(3, 4, dtype=torch.float64)
    for make in (lambda: saddle.Box(lo, hi), lambda: saddle.Ball(radius, p)):
        s = clear_or_ok(make)
        if s is None:
            continue
        if clear_or_ok(lambda: s.check(3, 4)) is None:
            continue
        v = clear_or_ok(lambda: s.project(u))
        if v is not None and bool(torch.isfinite(v).all()):
            assert bool(s.contains(v, atol=1e-9).all())


PROBLEM_KWARGS = {
    "matrix_game": ["n", "m", "batch_size", "seed"],
    "bilinear": ["n", "batch_size", "seed"],
    "quadratic": ["n", "m", "box", "batch_size"],
    "dirac_gan": ["r1", "radius", "batch_size"],
    "sharpness": ["rho", "width", "n_samples", "micro_batches"],
}


@FUZZ
@given(name=st.sampled_from(sorted(PROBLEM_KWARGS)), data=st.data())
def test_problem_factories_accept_or_refuse_clearly(name, data):
    key = data.draw(st.sampled_from(PROBLEM_KWARGS[name]))
    value = data.draw(weird_numbers)
    if key in ("n", "m", "width", "n_samples", "batch_size") and isinstance(value, int) and value > 40:
        value = 40  # keep the instances small
    problem = clear_or_ok(lambda: problems.get(name, **{key: value}))
    if problem is not None:
        assert all(bool(torch.isfinite(b).all()) for b in problem.z0)


@FUZZ
@given(max_iters=weird_numbers, tol=values, check_every=weird_numbers,
       measure=st.sampled_from(["residual", "gap", "distance", "kkt", "", 3]),
       max_operator_calls=weird_numbers, divergence_factor=weird_numbers, history=weird_numbers,
       step_size=values)
def test_solve_options_accept_or_refuse_clearly(max_iters, tol, check_every, measure, max_operator_calls,
                                               divergence_factor, history, step_size):
    problem = problems.get("bilinear", n=3, batch_size=2, seed=0)
    if isinstance(max_iters, int) and max_iters > 30:
        max_iters = 30
    sol = clear_or_ok(lambda: saddle.solve(problem, "extragradient", max_iters=max_iters, tol=tol,
                                           check_every=check_every, measure=measure,
                                           max_operator_calls=max_operator_calls,
                                           divergence_factor=divergence_factor, history=history,
                                           step_size=step_size))
    if sol is not None:
        assert sol.status.shape == (2,)
        assert bool((sol.iterations <= max_iters).all())


@FUZZ
@given(x0=weird_tensors(), y0=weird_tensors())
def test_saddle_problem_inputs_accept_or_refuse_clearly(x0, y0):
    problem = clear_or_ok(lambda: saddle.SaddleProblem(lambda x, y: (x * y).sum(-1), x0, y0))
    if problem is not None:
        sol = clear_or_ok(lambda: saddle.solve(problem, "extragradient", step_size=0.1, max_iters=5))
        if sol is not None:
            assert sol.status.shape == (problem.batch_size,)
