"""Matrix games ``min_{x in simplex} max_{y in simplex} x^T A y``.

The value and an equilibrium come from HiGHS solving the game's LP through
`scipy.optimize.linprog` (`problems.reference.matrix_game_lp`), computed for
each instance the first time ``problem.reference`` is read. Named games have
closed-form equilibria. Von Neumann's minimax theorem (von Neumann 1928) gives
the value; the entropic geometry is that of mirror-prox (Nemirovski 2004).
"""

from __future__ import annotations

import math

import torch

from saddle import BilinearProblem, Reference, Simplex

from . import register
from .batch import Batch, check_positive_int, make_batch
from .reference import matrix_game_lp

__all__ = ["matrix_game", "rock_paper_scissors", "matching_pennies"]


def _check_geometry(geometry: str) -> str:
    if geometry not in ("euclidean", "entropic"):
        raise ValueError(f"geometry must be 'euclidean' or 'entropic', got {geometry!r}")
    return geometry


def _lp_reference(A: torch.Tensor, batch: Batch) -> Reference:
    values, xs, ys = [], [], []
    for Ai in A.cpu().double().numpy():
        v, x, y = matrix_game_lp(Ai)
        values.append(v)
        xs.append(torch.from_numpy(x))
        ys.append(torch.from_numpy(y))
    return Reference((batch.place(torch.stack(xs)), batch.place(torch.stack(ys))),
                     batch.place(torch.tensor(values, dtype=torch.float64)), unique=True,
                     source="HiGHS (scipy.optimize.linprog)")


def _game(A: torch.Tensor, x0, y0, batch: Batch, geometry: str, name: str, reference) -> BilinearProblem:
    simplex = Simplex(geometry)
    return BilinearProblem(batch.place(A.mT), batch.place(x0), batch.place(y0), X=simplex, Y=simplex,
                           reference=reference, name=name)


@register("matrix_game")
def matrix_game(n: int = 50, m: int | None = None, *, A: torch.Tensor | None = None, geometry: str = "euclidean",
                batch_size: int = 1, seed: int = 0, device=None, dtype=torch.float64) -> BilinearProblem:
    """A batch of matrix games: random ``(n, m)`` payoffs uniform in [-1, 1], or a given A.

    Args:
        n: the minimizing player's number of pure strategies.
        m: the maximizing player's number of pure strategies (default n).
        A: a payoff matrix ``(n, m)`` or ``(B, n, m)`` to use instead of random ones.
        geometry: the simplices' geometry, ``"euclidean"`` or ``"entropic"``
            (for mirror-prox / multiplicative weights).

    Both players start at the uniform strategy. The reference (value and
    strategies) is HiGHS's; random games have a unique equilibrium with
    probability one, given ones are not assumed to.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    geometry = _check_geometry(geometry)
    if A is None:
        n = check_positive_int(n, "n")
        m = n if m is None else check_positive_int(m, "m")
        A = 2 * torch.rand(batch.size, n, m, dtype=torch.float64, generator=batch.generator()) - 1
        unique, name = True, f"matrix_game({n}x{m})"
    else:
        if not isinstance(A, torch.Tensor) or A.dim() not in (2, 3):
            raise ValueError("A must be an (n, m) or (B, n, m) tensor")
        if not torch.isfinite(A).all():
            raise ValueError("A contains NaN or inf")
        A = A.detach().to("cpu", torch.float64)
        A = A.expand(batch.size, -1, -1) if A.dim() == 2 else A
        if A.shape[0] != batch.size:
            raise ValueError(f"A has batch size {A.shape[0]}, but batch_size is {batch.size}")
        n, m = A.shape[1:]
        unique, name = False, f"matrix_game({n}x{m})"
    B = batch.size

    def reference():
        ref = _lp_reference(A, batch)
        return ref._replace(unique=unique)

    return _game(A, torch.full((B, n), 1.0 / n, dtype=torch.float64), torch.full((B, m), 1.0 / m, dtype=torch.float64),
                 batch, geometry, name, reference)


def _named(A: list[list[float]], batch: Batch, geometry: str, name: str) -> BilinearProblem:
    A = torch.tensor(A, dtype=torch.float64).expand(batch.size, -1, -1)
    n, m = A.shape[1:]
    gen = batch.generator()
    # Random interior starting strategies: the uniform start would already be the equilibrium.
    x0 = torch.softmax(torch.randn(batch.size, n, dtype=torch.float64, generator=gen), -1)
    y0 = torch.softmax(torch.randn(batch.size, m, dtype=torch.float64, generator=gen), -1)
    uniform = (batch.place(torch.full((batch.size, n), 1.0 / n, dtype=torch.float64)),
               batch.place(torch.full((batch.size, m), 1.0 / m, dtype=torch.float64)))
    ref = Reference(uniform, batch.place(torch.zeros(batch.size, dtype=torch.float64)), unique=True,
                    source="closed form (uniform, value 0)")
    return _game(A, x0, y0, batch, _check_geometry(geometry), name, ref)


@register("rock_paper_scissors")
def rock_paper_scissors(*, geometry: str = "euclidean", batch_size: int = 1, seed: int = 0, device=None,
                        dtype=torch.float64) -> BilinearProblem:
    """Rock-paper-scissors: x pays ``A[i, j]`` when x plays i and y plays j.

    Value 0, unique equilibrium uniform for both. Starts from seeded random
    interior strategies.
    """
    A = [[0.0, 1.0, -1.0], [-1.0, 0.0, 1.0], [1.0, -1.0, 0.0]]
    return _named(A, make_batch(batch_size, seed, device, dtype), geometry, "rock_paper_scissors")


@register("matching_pennies")
def matching_pennies(*, geometry: str = "euclidean", batch_size: int = 1, seed: int = 0, device=None,
                     dtype=torch.float64) -> BilinearProblem:
    """Matching pennies, ``A = [[1, -1], [-1, 1]]``: value 0, unique equilibrium (1/2, 1/2) for both."""
    return _named([[1.0, -1.0], [-1.0, 1.0]], make_batch(batch_size, seed, device, dtype), geometry,
                  "matching_pennies")
