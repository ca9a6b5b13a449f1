"""Matrix games ``min_{x in simplex} max_{y in simplex} x^T A y``.

The value and an equilibrium come from HiGHS solving the game's LP through
`scipy.optimize.linprog` (`problems.reference.matrix_game_lp`), computed for
each instance the first time ``problem.reference`` is read. Named games have
closed-form equilibria. Von Neumann's minimax theorem (von Neumann 1928) gives
the value; the entropic geometry is that of mirror-prox (Nemirovski 2004).

`as_linear_program` turns a batch of games into their LP form (`MatrixGameLP`),
which PDHG's schemes solve with clamps instead of projections onto simplices,
stopping on the game's duality gap.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from saddle import BilinearProblem, LinearProgram, Reference, Simplex
from saddle.terms import Zero

from . import register
from .batch import Batch, check_positive_int, make_batch
from .reference import matrix_game_lp

__all__ = ["matrix_game", "rock_paper_scissors", "matching_pennies", "MatrixGameLP", "as_linear_program"]


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


class MatrixGameLP(LinearProgram):
    """The LP form of a batch of matrix games ``min_{x in simplex} max_{y in simplex} x^T A y``.

    ``min_{x >= 0, v} v  s.t.  1^T x = 1,  A^T x <= v 1``, whose Lagrangian

        ``min_{x >= 0, v} max_{w, y >= 0}  v + w (1^T x - 1) + <y, A^T x - v 1>``

    is the game with the simplices' equalities dualized: the LP's primal is the minimizing
    player's strategy x and the value v, its dual the maximizing player's strategy y and
    ``w = -value``; both players' LPs in one. As a `LinearProgram` the blocks are
    ``(x, v)`` ``(B, n + 1)`` and ``(w, y)`` ``(B, m + 1)`` (the equality row first), with
    ``K = [[1^T, 0], [A^T, -1]]`` ``(B, m + 1, n + 1)``, ``c = (0, 1)`` and ``d = (1, 0)``:
    every prox step is a clamp, where the game form projects onto simplices (sorts).

    Use `as_linear_program` to make one from a game. `strategies` maps an LP point to the
    game's (clipped to the nonnegative orthant and normalized), and `duality_gap` is the game's
    duality gap there, ``max_j (A^T x)_j - min_i (A y)_i``, so ``solve(lp, ..., measure="gap")``
    stops on the game's gap; the LP's relative KKT error stays available as ``"kkt"``. (The LP's
    own saddle gap is +inf off its feasible set: what `duality_gap` reports is the game's.)

    Args:
        A: the payoffs ``(B, n, m)`` (x pays ``x^T A y`` to y).
        x0: the minimizing player's starting strategy ``(B, n)`` (or ``(1, n)``).
        y0: the maximizing player's starting strategy ``(B, m)`` (or ``(1, m)``); the LP starts at
            ``((x0, v0), (w0, y0))`` with ``v0 = max_j (A^T x0)_j`` and ``w0 = -min_i (A y0)_i``.
        **kwargs: `saddle.BilinearProblem`'s (``name``, ``reference``, ...).
    """

    def __init__(self, A: Tensor, x0: Tensor, y0: Tensor, **kwargs):
        self.game_shape = tuple(A.shape[1:])
        c, K, d, lo = _lp_data(A)
        start = _lp_start(A, x0.to(A).expand(A.shape[0], -1), y0.to(A).expand(A.shape[0], -1))
        super().__init__(c, K, d, 1, lo, torch.full_like(lo, math.inf), x0=start[0], y0=start[1], **kwargs)

    def strategies(self, z) -> tuple[Tensor, Tensor]:
        """The players' strategies ``(B, n)``, ``(B, m)`` at the LP point ``z = ((x, v), (w, y))``.

        ``x_+ / 1^T x_+`` (uniform where ``x_+ = 0``), and likewise y. At a solution of the LP they
        are an equilibrium of the game; near one, near an equilibrium (see `duality_gap`).
        """
        n, _ = self.game_shape
        return _normalized(z[0][:, :n]), _normalized(z[1][:, 1:])

    def duality_gap(self, z) -> Tensor:
        """The game's duality gap ``max_j (A^T x)_j - min_i (A y)_i`` ``(B,)`` at `strategies` ``(x, y)``.

        Two products with K (``K (x, 0)`` has ``A^T x`` in its rows after the first, ``K^T (0, y)``
        ``A y`` in its first n entries).
        """
        x, y = self.strategies(z)
        n, _ = self.game_shape
        Atx = self.coupling.mv(torch.nn.functional.pad(x, (0, 1)))[:, 1:]
        Ay = self.coupling.rmv(torch.nn.functional.pad(y, (1, 0)))[:, :n]
        return Atx.amax(-1) - Ay.amin(-1)


def _lp_data(A: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(c (B, n + 1), K (B, m + 1, n + 1), d (B, m + 1), lo (1, n + 1))``: the LP form of payoffs A ``(B, n, m)``.

    ``K = [[1^T, 0], [A^T, -1]]``, ``c = (0, 1)``, ``d = (1, 0)``, ``lo = (0, -inf)`` (the upper bounds are +inf).
    """
    B, n, m = A.shape
    top = torch.cat([A.new_ones(B, 1, n), A.new_zeros(B, 1, 1)], -1)
    K = torch.cat([top, torch.cat([A.mT, -A.new_ones(B, m, 1)], -1)], 1)
    c = torch.cat([A.new_zeros(B, n), A.new_ones(B, 1)], -1)
    d = torch.cat([A.new_ones(B, 1), A.new_zeros(B, m)], -1)
    lo = torch.cat([A.new_zeros(1, n), A.new_full((1, 1), -math.inf)], -1)
    return c, K, d, lo


def _lp_start(A: Tensor, x0: Tensor, y0: Tensor) -> tuple[Tensor, Tensor]:
    """The LP point ``((x0, v0), (w0, y0))`` of the strategies x0 ``(B, n)``, y0 ``(B, m)``.

    ``v0 = max_j (A^T x0)_j``, the least v with ``A^T x0 <= v 1``, and ``w0 = -min_i (A y0)_i``, minus the
    value y0 guarantees (at an equilibrium both are the game's value, ``w = -v``).
    """
    upper = (A * x0.unsqueeze(-1)).sum(1).amax(-1, keepdim=True)
    lower = (A * y0.unsqueeze(1)).sum(-1).amin(-1, keepdim=True)
    return torch.cat([x0, upper], -1), torch.cat([-lower, y0], -1)


def _reference_of_lp_form(game: BilinearProblem) -> Reference | None:
    """The game's reference as the LP's: the solution ``((x*, v*), (-v*, y*))`` and the value v*."""
    ref = game.reference
    if ref is None or ref.solution is None or ref.value is None:
        return None
    x, y = ref.solution
    v = ref.value.to(x).expand(x.shape[0]).unsqueeze(-1)
    return ref._replace(solution=(torch.cat([x, v], -1), torch.cat([-v, y], -1)))


def _normalized(u: Tensor) -> Tensor:
    """``u_+ / 1^T u_+`` ``(B, k)``, the uniform strategy where ``u_+ = 0``."""
    u = u.clamp_min(0)
    total = u.sum(-1, keepdim=True)
    return torch.where(total > 0, u / total.clamp_min(torch.finfo(u.dtype).tiny), 1.0 / u.shape[-1])


def as_linear_program(game: BilinearProblem, **kwargs) -> MatrixGameLP:
    """The LP form (`MatrixGameLP`) of a batch of matrix games, started at the game's start.

    Args:
        game: a `BilinearProblem` ``min_{x in simplex} max_{y in simplex} <K x, y>`` (no other
            terms; either geometry), such as `matrix_game`'s: its payoff is ``A = K^T`` ``(B, n, m)``.
        **kwargs: passed to `MatrixGameLP` (e.g. ``name``; the reference is the game's, computed when
            first read, as ``((x*, v*), (-v*, y*))`` with the value v*).

    ``solve(as_linear_program(game), "r2hpdhg", measure="gap")`` solves the games to the game's duality
    gap; ``lp.strategies(solution.z)`` are the strategies, a point of ``game``.
    """
    X, Y = game.domain
    if not (isinstance(X, Simplex) and isinstance(Y, Simplex)):
        raise ValueError(f"as_linear_program needs a game on two simplices, got {type(X).__name__} x "
                         f"{type(Y).__name__}")
    if not (isinstance(game.g, Zero) and isinstance(game.h_conj, Zero)) or game.coupling.sparse:
        raise ValueError("as_linear_program needs a bilinear game <K x, y> with a dense K and no other terms")
    A = game.K.mT.expand(game.batch_size, -1, -1)
    kwargs.setdefault("name", f"{game.name} as an LP")
    kwargs.setdefault("reference", lambda: _reference_of_lp_form(game))
    return MatrixGameLP(A, game.z0[0], game.z0[1], **kwargs)
