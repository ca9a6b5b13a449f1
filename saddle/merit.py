"""Merit functions: how far a point is from solving the VI, per instance.

- `residual`: the natural residual ``|z - P_Z(z - F(z))|``, zero exactly at
  solutions; defined for every problem.
- `gap`: the exact duality gap ``max_{y'} f(x, y') - min_{x'} f(x', y)``
  where the problem can compute it (bilinear and quadratic games).
- `distance`: ``|z - z*|`` to the problem's exact reference solution.
"""

from __future__ import annotations

from torch import Tensor

from .point import Point, accumulation_dtype, norm, sub

__all__ = ["residual", "gap", "distance"]


def residual(problem, z: Point, Fz: Point | None = None) -> Tensor:
    """The natural residual ``|z - P_Z(z - F(z))|`` over all blocks, shape ``(B,)``.

    With non-smooth terms (`saddle.CompositeSaddleProblem`) the projection is
    the problem's forward-backward step `prox`, and this is the prox-gradient residual.
    Accumulated and returned in at least float32 (float16 squares underflow).
    """
    if Fz is None:
        Fz = problem.F(z)
    return norm(sub(z, problem.prox(z, Fz, 1.0)), dtype=accumulation_dtype(z[0].dtype))


def gap(problem, z: Point) -> Tensor | None:
    """The exact duality gap at ``z``, shape ``(B,)``, or None if the problem cannot compute it."""
    return problem.duality_gap(z)


def distance(problem, z: Point) -> Tensor | None:
    """``|z - z*|`` to the problem's reference solution, shape ``(B,)`` (at least float32), or None without one."""
    solution = problem.solution
    if solution is None:
        return None
    return norm(sub(z, solution), dtype=accumulation_dtype(z[0].dtype))
