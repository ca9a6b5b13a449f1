"""Competitive methods: CGD, ACGD, CGO and optimistic CGO, by batched conjugate gradients on mixed products.

For ``min_x max_y f(x, y)`` on ``R^n x R^m``, with the gradients
``g_x = grad_x f``, ``g_y = grad_y f`` and the mixed second derivative
``D_xy = d^2 f / dx dy`` (``n x m`` per instance; ``D_yx = D_xy^T``), every
method here moves both players to the Nash equilibrium of the *local bilinear
game* at the current point,

    min_dx max_dy  <dx, g_x> + <dx, D_xy dy> + <dy, g_y> + |dx|^2_{A_x^-1} / 2 - |dy|^2_{A_y^-1} / 2,

with positive diagonal metrics ``A_x``, ``A_y`` (the step sizes). Its
equilibrium is ``dx = -A_x (g_x + D_xy dy)``, ``dy = A_y (g_y + D_yx dx)``:
each player reacts to the other's move, which is what lets the methods
converge on bilinear games where gradient descent-ascent spirals out.
Eliminating ``dy``, ``c = -A_x^{-1/2} dx`` solves the symmetric positive
definite system

    (I + A_x^{1/2} D_xy A_y D_yx A_x^{1/2}) c = A_x^{1/2} (g_x + D_xy A_y g_y),

which conjugate gradients solve from products with ``D_xy`` and ``D_yx`` only
(`saddle.linalg.conjugate_gradient`: each instance with its own tolerance and
iteration cap, optionally warm-started from the previous step's solution, the
residual recomputed for the new system); no matrix is formed or inverted. Then
``dx = -A_x^{1/2} c`` and the other player follows exactly,
``dy = A_y (g_y + D_yx dx)``: only the x-system is solved.

- `CGD`: ``A_x = A_y = eta``, ``z+ = z + (dx, dy)``.
- `ACGD`: per-coordinate ``A = lr sqrt(1 - beta^t) / (sqrt(v) + eps)``, ``v``
  the running average of the squared gradients.
- `CGO`: ``A_x = A_y = alpha`` (the interaction weight) and the move scaled
  to the step ``eta``: ``z+ = z + (eta / alpha) (dx, dy)``.
- `OCGO`: the CGO move taken extragradient-style, twice per step.

Accounting, per instance, in every state: ``operator_calls`` counts
evaluations of the gradient pair ``(grad_x f, grad_y f)`` (one per local game);
``hvp_calls`` counts mixed Hessian-vector products (one ``D_xy`` or ``D_yx``
product each): per local game, 1 for the right-hand side, 2 per CG product
(including the initial residual of a warm start) and 1 for the recovery of
``dy``. Products come from the problem (`saddle.SaddleProblem.mixed_products`):
autograd on f, or exact products with K for bilinear couplings.

The players must be unconstrained (``X = Y = Reals()``) and the objective
smooth: the local game is solved in closed form on ``R^n x R^m``, and
projecting its solution onto a constraint set does not keep the solutions of
the constrained problem as fixed points (a projected preconditioned step is
not a projected gradient step). ``check`` raises ``ValueError`` otherwise;
use the extragradient family or PDHG for constrained problems.

Non-finite values never raise: an instance whose gradients or products are not
finite gets a non-finite iterate, which the driver marks ``DIVERGED``.
CG synchronizes with the host every ``cg_check_every`` of its iterations
(to stop once every instance has converged).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..linalg import CGResult, conjugate_gradient
from ..operator import MixedProducts
from ..point import Point, column
from ..sets import Reals
from ..stepsize import Constant, StepSize
from ._validate import check_flag, check_integer, check_number, per_instance, renamed_setting
from .base import Solver, register

__all__ = ["CompetitiveState", "CGD", "ACGD", "CGO", "OCGO"]

class CompetitiveState(NamedTuple):
    """State of the competitive methods; tensors are ``(B, ...)``.

    Attributes:
        cg_solution: ``(B, n)`` the last CG solution ``c``, the next solve's warm start.
        warm: whether ``cg_solution`` holds a previous solution (False before the first step).
        step_size: ``(B,)`` eta (for `ACGD`: its base learning rate lr).
        alpha: ``(B,)`` the interaction weight (`CGO`, `OCGO`; ``= step_size`` for `CGD`), None for `ACGD`.
        cg_tol: ``(B,)`` CG's relative tolerance.
        cg_max_iters: ``(B,)`` CG's iteration cap.
        operator_calls: ``(B,)`` evaluations of ``(grad_x f, grad_y f)`` so far.
        hvp_calls: ``(B,)`` mixed Hessian-vector products (``D_xy v`` or ``D_yx u``) so far.
        cg_iterations: ``(B,)`` CG iterations of the last step (both solves for `OCGO`).
        cg_converged: ``(B,)`` whether the last step's solves met ``cg_tol`` (True before the first step).
        steps: ``(B,)`` steps taken (t in `ACGD`'s bias correction).
        sq_avg_x: `ACGD`: ``(B, n)`` running average of ``(grad_x f)^2``; None otherwise.
        sq_avg_y: `ACGD`: ``(B, m)`` running average of ``(grad_y f)^2``; None otherwise.
        beta: `ACGD`: ``(B,)`` the averaging weight; None otherwise.
        eps: `ACGD`: ``(B,)`` the denominator's offset; None otherwise.
    """

    cg_solution: Tensor
    warm: bool
    step_size: Tensor
    alpha: Tensor | None
    cg_tol: Tensor
    cg_max_iters: Tensor
    operator_calls: Tensor
    hvp_calls: Tensor
    cg_iterations: Tensor
    cg_converged: Tensor
    steps: Tensor
    sq_avg_x: Tensor | None = None
    sq_avg_y: Tensor | None = None
    beta: Tensor | None = None
    eps: Tensor | None = None


# -- settings -------------------------------------------------------------------------------

def _check_fixed_step(solver: str, value, *, allow_none: bool) -> None:
    """step_size: a finite number > 0 or a ``(B,)`` tensor of them (a `Constant` is its value), no rule."""
    if isinstance(value, StepSize) and not isinstance(value, Constant):
        raise ValueError(f"{solver}: step_size must be a float or a (B,) tensor; competitive methods take no "
                         f"step-size rule such as {type(value).__name__}")
    value = value.value if isinstance(value, Constant) else value
    check_number(solver, "step_size", value, low=0, batched=True, allow_none=allow_none)


def _check_common(solver) -> None:
    name = solver.name
    check_number(name, "cg_tol", solver.cg_tol, low=0, high=1, include_low=True, batched=True, allow_none=True)
    check_integer(name, "cg_max_iters", solver.cg_max_iters, minimum=1, batched=True)
    check_flag(name, "cg_warm_start", solver.cg_warm_start)
    check_integer(name, "cg_check_every", solver.cg_check_every, minimum=1)


def _default_step(problem, c: float, fallback: float) -> Tensor:
    """``c / L`` per instance when the problem knows L, else ``fallback``: ``(B,)``."""
    L = problem.lipschitz()
    if L is None:
        return torch.full((problem.batch_size,), fallback, dtype=problem.dtype, device=problem.device)
    if not bool((L > 0).all()):
        raise ValueError(f"the problem reports a Lipschitz constant of 0 for some instance ({L.tolist()}); "
                         "give step_size explicitly")
    return (c / L).to(problem.device, problem.dtype)


def _has_saddle_structure(problem) -> bool:
    from ..problem import SaddleProblem

    if isinstance(problem, SaddleProblem):
        return True
    return len(problem.z0) == 2 and hasattr(problem.operator, "mixed_products")


def _check_problem(name: str, problem) -> None:
    """Competitive methods need two unconstrained players and a smooth objective with mixed derivatives."""
    from ..problem import CompositeSaddleProblem
    from ..terms import Zero

    if not _has_saddle_structure(problem):
        raise TypeError(f"{name} needs a SaddleProblem (min_x max_y f(x, y)): its steps use the mixed second "
                        f"derivatives D_xy f; got {type(problem).__name__} {problem.name!r}, a VI without a saddle "
                        "structure")
    for label, s in zip(("X", "Y"), problem.domain):
        if not isinstance(s, Reals):
            raise ValueError(f"{name} needs unconstrained players (X = Y = Reals()), got {label} = {s!r}: the local "
                             "game is solved in closed form on R^n x R^m, and projecting its solution does not keep "
                             "the constrained solutions as fixed points; use extragradient, mirror_prox or pdhg")
    if isinstance(problem, CompositeSaddleProblem):
        for label, (_, rough) in (("g", problem.g_parts), ("h", problem.h_parts)):
            if not isinstance(rough, Zero):
                raise ValueError(f"{name} needs a smooth objective, but {label} has a non-smooth part "
                                 f"({type(rough).__name__}) that needs a prox step; use pdhg, lpd or alpd")


def _cg_settings(solver, problem) -> tuple[Tensor, Tensor]:
    tol = solver.cg_tol
    if tol is None:
        tol = math.sqrt(torch.finfo(problem.dtype).eps)
    return (per_instance(tol, "cg_tol", solver.name, problem),
            per_instance(solver.cg_max_iters, "cg_max_iters", solver.name, problem, dtype=torch.int64))


def _initial_state(solver, problem, z0: Point, step_size: Tensor, alpha: Tensor | None, **extra) -> CompetitiveState:
    B, dev = problem.batch_size, problem.device
    tol, cap = _cg_settings(solver, problem)
    zeros = torch.zeros(B, dtype=torch.int64, device=dev)
    return CompetitiveState(
        cg_solution=torch.zeros_like(z0[0]),
        warm=False,
        step_size=step_size,
        alpha=alpha,
        cg_tol=tol,
        cg_max_iters=cap,
        operator_calls=zeros,
        hvp_calls=zeros,
        cg_iterations=zeros,
        cg_converged=torch.ones(B, dtype=torch.bool, device=dev),
        steps=zeros,
        **extra,
    )


# -- the local game ---------------------------------------------------------------------------

class LocalGame(NamedTuple):
    """The equilibrium of a local game (`local_game`); tensors are ``(B, ...)``.

    Attributes:
        dx: ``(B, n)`` the x-player's move, ``-A_x^{1/2} c_x``.
        dy: ``(B, m)`` the y-player's move, ``A_y^{1/2} c_y``.
        cg: the CG result of the x-system (its ``x`` is ``c_x``).
        hvps: ``(B,)`` mixed products spent per instance.
        c_y: ``(B, m)`` ``A_y^{1/2} (g_y + D_yx dx)``, the y-player's scaled move (a warm start
            when the y-system is solved next).
        rhs: ``(B, n)`` the right-hand side of the x-system.
    """

    dx: Tensor
    dy: Tensor
    cg: CGResult
    hvps: Tensor
    c_y: Tensor
    rhs: Tensor


def local_game(products: MixedProducts, a_x: Tensor, a_y: Tensor, warm: Tensor | None, *, tol, max_iters,
               check_every: int = 5) -> LocalGame:
    """The equilibrium ``(dx, dy)`` of the local bilinear game with metrics ``diag(a_x)``, ``diag(a_y)``.

    Args:
        products: gradients and mixed products at the current point (`MixedProducts`).
        a_x: the x-player's positive steps, ``(B, n)`` or ``(B, 1)``.
        a_y: the y-player's positive steps, ``(B, m)`` or ``(B, 1)``.
        warm: CG's warm start for ``c`` (``(B, n)``), or None.
        tol: CG's relative tolerance (float or ``(B,)``).
        max_iters: CG's iteration cap (int or ``(B,)``).
        check_every: CG's host-synchronization interval.

    Returns:
        `LocalGame` ``(dx, dy, cg, hvps, c_y, rhs)``: ``dx = -A_x^{1/2} c`` with
        ``(I + A_x^{1/2} D_xy A_y D_yx A_x^{1/2}) c = A_x^{1/2} (g_x + D_xy A_y g_y)``,
        ``dy = A_y (g_y + D_yx dx)``; the CG result (its ``x`` is ``c``); the
        mixed products spent per instance, ``(B,)``; ``c_y = A_y^{1/2} (g_y + D_yx dx)``; and the
        right-hand side.

    The game of the other player (``y`` solved for, ``x`` recovered) is this
    one with the players swapped and f negated: products ``(-g_y, -g_x,
    u -> -D_yx u, v -> -D_xy v)``, whose ``(dx, dy)`` are ``(dy, dx)`` of the
    original game (`saddle.optim.CGD` with ``solve_for="max"``).
    """
    s_x = a_x.sqrt()
    rhs = s_x * (products.grad_x + products.xy(a_y * products.grad_y))

    def matvec(v: Tensor) -> Tensor:
        return v + s_x * products.xy(a_y * products.yx(s_x * v))

    cg = conjugate_gradient(matvec, rhs, warm, tol=tol, max_iters=max_iters, check_every=check_every)
    # CG leaves an instance with a non-finite right-hand side where it started: make its move
    # non-finite instead, so that the driver sees it (and marks the instance DIVERGED).
    finite = torch.isfinite(rhs).all(-1, keepdim=True)
    dx = -s_x * torch.where(finite, cg.x, torch.full_like(cg.x, math.nan))
    recovered = products.grad_y + products.yx(dx)
    return LocalGame(dx, a_y * recovered, cg, 2 + 2 * cg.matvecs, a_y.sqrt() * recovered, rhs)


class _Competitive(Solver):
    """Shared settings checks, problem checks and the scaled local-game move of CGD, CGO and OCGO."""

    def __post_init__(self):
        # (``warm_start`` became ``cg_warm_start`` when `saddle.solve` took ``warm_start=`` for a previous solution)
        renamed_setting(self, "warm_start", "cg_warm_start", True)
        self._check_settings()

    def _check_settings(self) -> None:
        _check_common(self)
        _check_fixed_step(self.name, self.step_size, allow_none=True)

    def check(self, problem) -> None:
        _check_problem(self.name, problem)

    def _step_size(self, problem) -> Tensor:
        """eta, ``(B,)``: the setting, else ``c / L`` (``fallback`` without L)."""
        if self.step_size is None:
            return _default_step(problem, self.c, self.fallback)
        return per_instance(self.step_size, "step_size", self.name, problem)

    def _move(self, problem, z: Point, state: CompetitiveState, warm: Tensor | None):
        """``(eta / alpha) (dx, dy)`` of the local game with metric alpha at z; also the CG result and products."""
        alpha = column(state.alpha, z[0])
        game = local_game(problem.mixed_products(z), alpha, alpha, warm, tol=state.cg_tol,
                          max_iters=state.cg_max_iters, check_every=self.cg_check_every)
        scale = column(state.step_size, z[0]) / alpha
        return (scale * game.dx, scale * game.dy), game.cg, game.hvps

    def _warm(self, state: CompetitiveState) -> Tensor | None:
        return state.cg_solution if (self.cg_warm_start and state.warm) else None

    def step(self, problem, z, state):
        """One move to the scaled local equilibrium (`CGD`, `CGO`)."""
        (dx, dy), cg, hvps = self._move(problem, z, state, self._warm(state))
        return (z[0] + dx, z[1] + dy), state._replace(
            cg_solution=cg.x, warm=True, operator_calls=state.operator_calls + 1, hvp_calls=state.hvp_calls + hvps,
            cg_iterations=cg.iterations, cg_converged=cg.converged, steps=state.steps + 1)


@register("cgd", category="competitive", calls_per_step=1, calls_at_init=0,
          converges_on=("bilinear", "strongly monotone"), host_reads=True)
@dataclass(frozen=True)
class CGD(_Competitive):
    """Competitive gradient descent (Schäfer and Anandkumar 2019, arXiv 1905.12103).

    Each step plays the Nash equilibrium of the regularized local bilinear game
    (see `saddle.solvers.competitive`)::

        dx = -eta (I + eta^2 D_xy D_yx)^{-1} (grad_x f + eta D_xy grad_y f)
        dy = +eta (grad_y f + D_yx dx)        (= eta (I + eta^2 D_yx D_xy)^{-1} (grad_y f - eta D_yx grad_x f))

    for ``min_x max_y f`` on ``R^n x R^m``, with ``D_xy = d^2 f / dx dy``. The
    x-system is solved by batched conjugate gradients on mixed Hessian-vector
    products; dy follows from dx with one more product.

    On a bilinear game ``f = x^T A y + b^T x + c^T y`` the step is the proximal
    point step ``z+ = z - eta F(z+)``: along each singular value sigma of A
    the distance to the saddle point shrinks by exactly
    ``1 / sqrt(1 + eta^2 sigma^2)`` per step, for every eta > 0 (gradient
    descent-ascent diverges there for every eta). Cost per step: one gradient
    pair, ``2 + 2 (CG products)`` mixed products.

    Args:
        step_size: eta, a float or a ``(B,)`` tensor (default ``1 / L``, L the
            Lipschitz constant of F, else 0.1). The interaction needs no step
            restriction; the ``D_xx f`` and ``D_yy f`` parts of F are taken
            explicitly, as in gradient descent-ascent, and need ``eta < 2 / L``.
        cg_tol: CG's relative residual tolerance, a float or ``(B,)`` (default
            ``sqrt(machine epsilon)`` of the problem's dtype, 1.5e-8 in float64).
        cg_max_iters: CG's iteration cap, an int or ``(B,)`` ints.
        cg_warm_start: start each CG solve from the previous step's solution (the
            residual is recomputed for the new system: one product per solve).
            On the deterministic problems we measured it saved no CG iterations
            (consecutive right-hand sides differ by O(1) relative to CG's
            relative tolerance; docs/design.md): ``False`` saves that product
            there. It pays when consecutive local games are close (small steps,
            slowly varying games).
        cg_check_every: CG asks the device whether every instance has
            converged every this many iterations.
    """

    step_size: float | Tensor | None = None
    cg_tol: float | Tensor | None = None
    cg_max_iters: int | Tensor = 100
    cg_warm_start: bool = True
    cg_check_every: int = 5
    warm_start: bool | None = None  # deprecated name of cg_warm_start

    #: default eta = c / L.
    c = 1.0
    #: default eta when L is unknown.
    fallback = 0.1

    def init(self, problem, z0):
        self.check(problem)
        eta = self._step_size(problem)
        return _initial_state(self, problem, z0, eta, eta)


@register("cgo", category="competitive", calls_per_step=1, calls_at_init=0,
          converges_on=("bilinear", "strongly monotone"), host_reads=True)
@dataclass(frozen=True)
class CGO(_Competitive):
    """Competitive gradient optimization (Vyas, Bullins and Azizzadenesheli, ICML 2023, arXiv 2205.14232).

    CGD with the step eta decoupled from the interaction weight alpha::

        [[I, alpha D_xy], [-alpha D_yx, I]] d = [grad_x f; -grad_y f],    z+ = z - eta d,

    that is ``d_x = (I + alpha^2 D_xy D_yx)^{-1} (grad_x f + alpha D_xy grad_y f)``,
    ``d_y = -grad_y f + alpha D_yx d_x``. ``alpha = eta`` is `CGD`; ``alpha = 0``
    would be gradient descent-ascent (use ``gda``). The paper proves
    convergence to saddle points for strictly alpha-coherent f, a class that
    grows with alpha. On a bilinear game each singular value sigma contracts
    by ``sqrt(1 - eta sigma^2 (2 alpha - eta) / (1 + alpha^2 sigma^2))`` per
    step: any ``0 < eta < 2 alpha`` converges, ``eta = 2 alpha`` only rotates
    and ``eta > 2 alpha`` diverges (on every bilinear game, and near every
    equilibrium whose linearization is bilinear, such as the Dirac GAN's).

    Args:
        step_size: eta, a float or ``(B,)`` (default ``1 / L``, else 0.1).
        alpha: the interaction weight, > 0, a float or ``(B,)`` (default
            ``2 / L``, else 0.2: near the contraction-optimal
            ``(eta + sqrt(eta^2 + 4 / sigma^2)) / 2 >= 1.62 / L`` on bilinear
            games; raised to ``2 eta`` where a given step is larger than half
            of that, so that the default never has ``eta >= 2 alpha``).
        cg_tol: CG's relative tolerance, as for `CGD`.
        cg_max_iters: CG's iteration cap, as for `CGD`.
        cg_warm_start: warm-start CG from the previous solution, as for `CGD`.
        cg_check_every: CG's host-synchronization interval, as for `CGD`.
    """

    step_size: float | Tensor | None = None
    alpha: float | Tensor | None = None
    cg_tol: float | Tensor | None = None
    cg_max_iters: int | Tensor = 100
    cg_warm_start: bool = True
    cg_check_every: int = 5
    warm_start: bool | None = None  # deprecated name of cg_warm_start

    c = 1.0
    fallback = 0.1
    #: default alpha = c_alpha / L.
    c_alpha = 2.0
    fallback_alpha = 0.2

    def _check_settings(self) -> None:
        super()._check_settings()
        check_number(self.name, "alpha", self.alpha, low=0, batched=True, allow_none=True)

    def _resolve(self, problem) -> tuple[Tensor, Tensor]:
        eta = self._step_size(problem)
        if self.alpha is None:
            # At least 2 eta: with alpha <= eta / 2 the step does not converge on any bilinear game (nor
            # near any equilibrium with a bilinear linearization, such as the Dirac GAN's).
            alpha = torch.maximum(_default_step(problem, self.c_alpha, self.fallback_alpha), 2 * eta)
        else:
            alpha = per_instance(self.alpha, "alpha", self.name, problem)
        return eta, alpha

    def init(self, problem, z0):
        self.check(problem)
        return _initial_state(self, problem, z0, *self._resolve(problem))


@register("ocgo", category="competitive", calls_per_step=2, calls_at_init=0,
          converges_on=("bilinear", "strongly monotone"), host_reads=True)
@dataclass(frozen=True)
class OCGO(CGO):
    """Optimistic competitive gradient optimization (Vyas, Bullins and Azizzadenesheli, ICML 2023).

    The CGO direction ``d(z)`` (see `CGO`) used as the operator of an
    extragradient ("optimistic mirror descent", Mertikopoulos et al. 2019) step::

        w  = z - eta d(z)
        z+ = z - eta d(w)

    two gradient pairs and two CG solves per step (the second warm-started from
    the first). The paper shows an O(1/k) rate to saddle points for
    alpha-coherent f; this is also the form of the authors' public code.

    Args:
        step_size: eta, a float or ``(B,)`` (default ``1 / (2 L)``, else 0.05).
        alpha: the interaction weight, > 0 (default ``2 / L``, else 0.2, and at
            least ``2 eta``: with a fixed alpha, large steps diverge on bilinear games).
        cg_tol: CG's relative tolerance, as for `CGD`.
        cg_max_iters: CG's iteration cap, as for `CGD`.
        cg_warm_start: warm-start CG from the previous solution, as for `CGD`.
        cg_check_every: CG's host-synchronization interval, as for `CGD`.
    """

    c = 0.5
    fallback = 0.05

    def step(self, problem, z, state):
        (dx, dy), cg0, hvps0 = self._move(problem, z, state, self._warm(state))
        w = (z[0] + dx, z[1] + dy)
        (dx, dy), cg1, hvps1 = self._move(problem, w, state, cg0.x if self.cg_warm_start else None)
        return (z[0] + dx, z[1] + dy), state._replace(
            cg_solution=cg1.x, warm=True, operator_calls=state.operator_calls + 2,
            hvp_calls=state.hvp_calls + hvps0 + hvps1, cg_iterations=cg0.iterations + cg1.iterations,
            cg_converged=cg0.converged & cg1.converged, steps=state.steps + 1)


@register("acgd", category="competitive", calls_per_step=1, calls_at_init=0, converges_on=("bilinear",),
          host_reads=True)
@dataclass(frozen=True)
class ACGD(_Competitive):
    """Adaptive competitive gradient descent (Schäfer, Zheng and Anandkumar 2019, arXiv 1910.05852).

    CGD with RMSProp-like per-coordinate steps. At step t (from 1), with the
    gradients ``g_x, g_y`` at the current point::

        v_x <- beta v_x + (1 - beta) g_x^2,   v_y <- beta v_y + (1 - beta) g_y^2      (v_0 = 0)
        A_x = diag(lr sqrt(1 - beta^t) / (sqrt(v_x) + eps)),   A_y likewise
        (I + A_x^{1/2} D_xy A_y D_yx A_x^{1/2}) c = A_x^{1/2} (g_x + D_xy A_y g_y)
        dx = -A_x^{1/2} c,   dy = A_y (g_y + D_yx dx)

    (the local game of `CGD` with the metrics A_x, A_y). Only the x-system is
    solved (the authors' package alternates between the two systems; both
    give the same equilibrium). Like Adam, the effective step grows as the
    gradients shrink, up to ``lr / eps``; on problems with ``D_xx f`` or
    ``D_yy f`` terms it settles in a neighbourhood of the solution of size
    about lr rather than converging to machine precision. On bilinear games,
    where the local game is exact, it converges.

    Args:
        step_size: the base learning rate lr, a float or ``(B,)`` (default
            1e-3, the default of the co-author's package ``CGDs``; it is
            meant for GAN training, small problems want larger values).
        beta: the averaging weight in [0, 1), a float or ``(B,)`` (default 0.99).
        eps: the offset of the denominator, > 0, a float or ``(B,)`` (default 1e-5).
        cg_tol: CG's relative tolerance, as for `CGD`.
        cg_max_iters: CG's iteration cap, as for `CGD`.
        cg_warm_start: warm-start CG from the previous solution, as for `CGD`.
        cg_check_every: CG's host-synchronization interval, as for `CGD`.
    """

    step_size: float | Tensor = 1e-3
    beta: float | Tensor = 0.99
    eps: float | Tensor = 1e-5
    cg_tol: float | Tensor | None = None
    cg_max_iters: int | Tensor = 100
    cg_warm_start: bool = True
    cg_check_every: int = 5
    warm_start: bool | None = None  # deprecated name of cg_warm_start

    def _check_settings(self) -> None:
        _check_common(self)
        _check_fixed_step(self.name, self.step_size, allow_none=False)
        check_number(self.name, "beta", self.beta, low=0, high=1, include_low=True, batched=True)
        check_number(self.name, "eps", self.eps, low=0, batched=True)

    def init(self, problem, z0):
        self.check(problem)
        name = self.name
        return _initial_state(
            self, problem, z0, per_instance(self.step_size, "step_size", name, problem), None,
            sq_avg_x=torch.zeros_like(z0[0]), sq_avg_y=torch.zeros_like(z0[1]),
            beta=per_instance(self.beta, "beta", name, problem), eps=per_instance(self.eps, "eps", name, problem))

    def step(self, problem, z, state):
        products = problem.mixed_products(z)
        t = state.steps + 1
        beta, eps = column(state.beta, z[0]), column(state.eps, z[0])
        sq_x = beta * state.sq_avg_x + (1 - beta) * products.grad_x.square()
        sq_y = beta * state.sq_avg_y + (1 - beta) * products.grad_y.square()
        scale = column(state.step_size * torch.sqrt(1 - torch.pow(state.beta, t.to(state.beta.dtype))), z[0])
        a_x = scale / (sq_x.sqrt() + eps)
        a_y = scale / (sq_y.sqrt() + eps)
        game = local_game(products, a_x, a_y, self._warm(state), tol=state.cg_tol,
                          max_iters=state.cg_max_iters, check_every=self.cg_check_every)
        cg = game.cg
        return (z[0] + game.dx, z[1] + game.dy), state._replace(
            cg_solution=cg.x, warm=True, operator_calls=state.operator_calls + 1,
            hvp_calls=state.hvp_calls + game.hvps, cg_iterations=cg.iterations, cg_converged=cg.converged, steps=t,
            sq_avg_x=sq_x, sq_avg_y=sq_y)
