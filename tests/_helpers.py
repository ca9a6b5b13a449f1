"""Test helpers: single instances of batched problems, and an operator that counts its calls."""

from __future__ import annotations

import torch

from saddle import Ball, BilinearProblem, Box, LinearProgram, Operator, Product, SaddleProblem, VIProblem
from saddle.terms import Linear, Quadratic, Zero


def _rows(t, i: int):
    """Row i of a per-instance tensor, or the tensor itself when it is shared (leading 1) or a float."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] == 1:
        return t
    return t[i:i + 1]


def _term(term, i):
    if isinstance(term, Zero):
        return term
    if isinstance(term, Linear):
        return Linear(_rows(term.c, i))
    if isinstance(term, Quadratic):
        return Quadratic(_rows(term.P, i), None if term.c is None else _rows(term.c, i))
    raise TypeError(type(term))


def _set(s, i):
    if isinstance(s, Box):
        return Box(_rows(s.lo, i), _rows(s.hi, i))
    if isinstance(s, Ball):
        return Ball(_rows(s.radius, i), s.p)
    return s


def instance(problem, i: int):
    """Instance i of a batched problem as a problem of batch size 1 (built from the same data)."""
    kw = dict(lipschitz=None if problem.lipschitz() is None else problem.lipschitz()[i:i + 1],
              strong_monotonicity=None if problem.strong_monotonicity() is None
              else problem.strong_monotonicity()[i:i + 1], name=problem.name)
    ref = problem.reference
    if ref is not None and ref.solution is not None:
        kw["solution"] = tuple(b[i:i + 1] for b in ref.solution)
    z0 = tuple(b[i:i + 1] for b in problem.z0)
    if isinstance(problem, LinearProgram):
        return LinearProgram(_rows(problem.c, i), _rows(problem.K, i), _rows(problem.d, i), problem.n_eq,
                             _rows(problem.lo, i), _rows(problem.hi, i), x0=z0[0], y0=z0[1], **kw)
    if isinstance(problem, BilinearProblem):
        X, Y = problem.domain
        return BilinearProblem(_rows(problem.K, i), *z0, g=_term(problem.g, i), h_conj=_term(problem.h_conj, i),
                               X=_set(X, i), Y=_set(Y, i), **kw)
    if isinstance(problem, SaddleProblem):
        X, Y = problem.domain
        return SaddleProblem(problem.f, *z0, _set(X, i), _set(Y, i), **kw)
    return VIProblem(problem.operator, Product(*[_set(s, i) for s in problem.domain]), z0, **kw)


class CountingOperator(Operator):
    """Wraps an operator and counts how many times it is evaluated."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.inner(z)

    def lipschitz(self):
        return self.inner.lipschitz()


def counting(problem):
    """The problem with its operator wrapped in a `CountingOperator` (returned as the second value)."""
    op = CountingOperator(problem.operator)
    problem.operator = op
    return problem, op
