"""Primal-dual hybrid gradient (Chambolle and Pock 2011) with the PDLP machinery.

For ``min_{x in X} max_{y in Y} g(x) + <K x, y> - h*(y)`` (a `BilinearProblem`)::

    x+ = argmin_{u in X} g(u) + <K^T y, u> + |u - x|^2_{T^-1} / 2
    y+ = argmin_{v in Y} h*(v) - <K (2 x+ - x), v> + |v - y|^2_{S^-1} / 2

with diagonal steps ``T = (eta / omega) D_c^2`` and ``S = (eta omega) D_r^2``
(eta: the step size, omega: the primal weight, D_c and D_r: the diagonal
preconditioner, 1 without one). It converges when ``eta |D_r K D_c| < 1``.
The practical machinery of PDLP (Applegate et al. 2021, "Practical
large-scale linear programming using primal-dual hybrid gradient", arXiv
2106.04756, and "Faster first-order primal-dual methods for linear
programming using restarts and sharpness", arXiv 2105.12715) is built in, and
each piece can be switched off:

- **diagonal preconditioning** (`precondition`): 10 Ruiz equilibration
  passes on ``D_r K D_c`` (rows and columns scaled by the square roots of
  their largest entries), then one Pock-Chambolle pass (alpha = 1: by the
  square roots of the row and column sums). It needs separable sets and terms
  (boxes and R^n; zero, linear, diagonal quadratic and L1 terms), where the
  scaled projections are the projections.
- **adaptive steps** (`adaptive_step`): a trial step eta is accepted when
  ``eta <= |z+ - z|_omega^2 / (2 |(y+ - y)^T K (x+ - x)|)`` (norms in the
  preconditioned variables, ``|z|_omega^2 = omega |x|^2 + |y|^2 / omega``); the
  next trial is ``min((1 - (k+1)^-0.3) eta_bar, (1 + (k+1)^-0.6) eta)``.
- **adaptive restarts** (`restarts`): every ``restart_every`` iterations the
  current point and the step-weighted average since the last restart are
  compared by the restart measure, the better one is the candidate, and the
  method restarts from it on sufficient decay (``<= 0.2 x`` the measure at the
  last restart), on necessary decay (``<= 0.8 x``) without progress since the
  previous check, or when the restart period exceeds 0.36 of all iterations.
  The measure (`restart_measure`) is PDLP's **normalized duality gap**
  ``max {<F(z), z - u> : u in Z, |u - z|_W <= r} / r`` with r the distance to
  the last restart point (for bilinear Lagrangians: zero and linear terms),
  computed by bisection on the trust-region multiplier, or the **KKT error**
  (the natural residual, as cuPDLP).
- **primal weight** (`update_primal_weight`): at each restart
  ``log omega = 0.5 log(|dy| / |dx|) + 0.5 log omega`` with dx, dy the moves
  since the previous restart (in the preconditioned variables).
- **infeasibility detection**: for linear programs (zero or linear terms on
  boxes), the iterates drift along a certificate of primal or dual
  infeasibility when one exists (Applegate et al. 2021, "Infeasibility
  detection with primal-dual hybrid gradient"); the difference of the
  iterates at the last two restart checks is tested, and at every check the
  driver is told `INFEASIBLE` or `UNBOUNDED` where the certificate's
  violation is below ``infeasibility_tol`` times its objective.

Each iteration costs one product with K and one with K^T: one operator
evaluation. Restart checks and the driver's checks evaluate the average
point, which costs one more product with each (counted: one operator call
per restart check). The reported point (`PDHG.output`) is the current point
or the average since the last restart, whichever has the smaller natural
residual, as PDLP reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..solution import Status
from ._validate import check_choice, check_flag, check_integer, check_number, check_positive, positive_steps
from .base import Solver, register

__all__ = ["PDHG", "PDHGState"]


class PDHGState(NamedTuple):
    """State of `PDHG`; tensors are ``(B, ...)``.

    Attributes:
        Kx: ``K x`` at the current x, ``(B, m)``.
        Kty: ``K^T y`` at the current y, ``(B, n)``.
        step_size: ``(B,)`` the (trial) step eta.
        primal_weight: ``(B,)`` omega.
        sum_x, sum_y: step-weighted sums of the iterates since the last restart.
        weight: ``(B,)`` the sum of the steps since the last restart.
        restart_x, restart_y: the point of the last restart.
        restart_measure: ``(B,)`` the restart measure at the last restart.
        previous_candidate: ``(B,)`` the candidate's measure at the previous check (inf after a restart).
        inner: ``(B,)`` iterations since the last restart.
        restarts: ``(B,)`` restarts so far.
        check_x, check_y: the iterate at the last restart check.
        ray_x, ray_y: the difference of the iterates at the last two restart checks: for an
            infeasible LP, the direction of a certificate (Applegate et al.'s infimal displacement).
        col_scale, row_scale: the diagonal preconditioner ``D_c`` ``(Bk, n)``, ``D_r``
            ``(Bk, m)``, or None.
        iteration: iterations so far (the same for every running instance).
        operator_calls: ``(B,)`` operator evaluations (one K and one K^T product each).
    """

    Kx: Tensor
    Kty: Tensor
    step_size: Tensor
    primal_weight: Tensor
    sum_x: Tensor
    sum_y: Tensor
    weight: Tensor
    restart_x: Tensor
    restart_y: Tensor
    restart_measure: Tensor
    previous_candidate: Tensor
    inner: Tensor
    restarts: Tensor
    check_x: Tensor
    check_y: Tensor
    ray_x: Tensor
    ray_y: Tensor
    col_scale: Tensor | None
    row_scale: Tensor | None
    iteration: int
    operator_calls: Tensor


def _matvec(K, x: Tensor) -> Tensor:
    """``K x`` for a `saddle.coupling.Bilinear` coupling (a module function so tests can count products)."""
    return K.mv(x)


def _rmatvec(K, y: Tensor) -> Tensor:
    """``K^T y``."""
    return K.rmv(y)


def _separable(problem) -> bool:
    """Whether diagonal preconditioning keeps the prox steps exact: sets whose projection in a diagonal metric
    is the projection (`ConstraintSet.diagonal_prox`: boxes, R^n) and separable terms (`Term.separable`)."""
    return all(s.diagonal_prox for s in problem.domain) and problem.g.separable and problem.h_conj.separable


def _bilinear_lagrangian(problem) -> bool:
    """Whether f is bilinear plus linear terms: then f(x, v) - f(u, y) = <F(z), z - w> exactly."""
    return problem.g.linear and problem.h_conj.linear


def _linear_program(problem) -> bool:
    return _bilinear_lagrangian(problem) and all(s.separable for s in problem.domain)


def _vector(term, like: Tensor) -> Tensor:
    """The vector c of a linear term ``<c, u>`` (zeros for other terms), broadcast to ``like``."""
    return term.linear_coefficient(like) if term.linear else torch.zeros_like(like)


def _bounds(S, like: Tensor) -> tuple[Tensor, Tensor]:
    """The lower and upper bounds of a box (or R^n) as tensors shaped like ``like``."""
    return S.project(torch.full_like(like, -math.inf)), S.project(torch.full_like(like, math.inf))


@register("pdhg", category="primal-dual", calls_at_init=1, averages=True, converges_on=("monotone", "linear program"))
@dataclass(frozen=True)
class PDHG(Solver):
    """Primal-dual hybrid gradient (Chambolle and Pock 2011) with PDLP's machinery (arXiv 2106.04756).

    ``x+ = argmin_{u in X} g(u) + <K^T y, u> + |u - x|^2_{T^-1} / 2``,
    ``y+ = argmin_{v in Y} h*(v) - <K (2 x+ - x), v> + |v - y|^2_{S^-1} / 2``
    for a `BilinearProblem` with blocks x ``(B, n)``, y ``(B, m)`` and K
    ``(B, m, n)``; see the module docstring for the steps, restarts, primal
    weights and preconditioning of PDLP (Applegate et al. 2021).

    Args:
        step_size: None (adaptive steps from ``1 / max |D_r K D_c|``, or
            ``0.9 / |D_r K D_c|_2`` when ``adaptive_step=False``), a float or a
            ``(B,)`` tensor (the initial step when adaptive, else the constant
            step eta, which needs ``eta < 1 / |D_r K D_c|_2``).
        adaptive_step: PDLP's adaptive step rule.
        restarts: adaptive restarts to the current or the average point.
        restart_measure: ``"gap"`` (normalized duality gap; bilinear
            Lagrangians only), ``"kkt"`` (natural residual) or None (``"gap"``
            where it applies, else ``"kkt"``).
        precondition: Ruiz + Pock-Chambolle diagonal preconditioning: True,
            False, or None (on where it applies: boxes and separable terms).
        primal_weight: the initial omega (float or ``(B,)``); None: PDLP's
            ``|c| / |d|`` for linear terms ``<c, x>`` and ``<d, y>`` with both
            nonzero (in the preconditioned variables), else 1.
        update_primal_weight: PDLP's primal-weight update at restarts.
        restart_every: iterations between restart checks.
        sufficient: the sufficient-decay restart threshold (0.2).
        necessary: the necessary-decay restart threshold (0.8).
        artificial: restart when the period exceeds this fraction of all iterations (0.36).
        infeasibility_tol: certificate tolerance for infeasibility detection (linear programs).
        ruiz_iterations: Ruiz equilibration passes of the preconditioner.

    Applies to `BilinearProblem`s whose terms have closed-form prox steps on
    their sets (zero and linear terms on every set; quadratic terms on boxes,
    diagonal, or on R^n; L1 terms on boxes). Without preconditioning the
    projections are Euclidean whatever the sets' geometry.
    """

    step_size: object = None
    adaptive_step: bool = True
    restarts: bool = True
    restart_measure: str | None = None
    precondition: bool | None = None
    primal_weight: object = None
    update_primal_weight: bool = True
    restart_every: int = 64
    sufficient: float = 0.2
    necessary: float = 0.8
    artificial: float = 0.36
    infeasibility_tol: float = 1e-8
    ruiz_iterations: int = 10

    # -- settings ----------------------------------------------------------------------------
    def __post_init__(self):
        """Check every setting that does not depend on the problem, so a bad one fails at construction."""
        check_positive(self.name, "step_size", self.step_size)
        check_positive(self.name, "primal_weight", self.primal_weight)
        for flag in ("adaptive_step", "restarts", "update_primal_weight"):
            check_flag(self.name, flag, getattr(self, flag))
        check_flag(self.name, "precondition", self.precondition, allow_none=True)
        check_choice(self.name, "restart_measure", self.restart_measure, (None, "gap", "kkt"))
        check_integer(self.name, "restart_every", self.restart_every, minimum=1)
        check_integer(self.name, "ruiz_iterations", self.ruiz_iterations, minimum=0)
        for fraction in ("sufficient", "necessary", "artificial"):
            check_number(self.name, fraction, getattr(self, fraction), low=0.0, high=1.0)
        if self.sufficient > self.necessary:
            raise ValueError(f"{self.name}: need sufficient <= necessary, got sufficient={self.sufficient!r}, "
                             f"necessary={self.necessary!r}")
        check_number(self.name, "infeasibility_tol", self.infeasibility_tol, low=0.0)

    def check(self, problem):
        from ..problem import BilinearProblem

        if not isinstance(problem, BilinearProblem):
            raise ValueError(f"pdhg needs a BilinearProblem (min_x max_y g(x) + <Kx, y> - h*(y)), got "
                             f"{type(problem).__name__}; use extragradient for general problems")
        X, Y = problem.domain
        for term, S, name, block in ((problem.g, X, "g", 0), (problem.h_conj, Y, "h_conj", 1)):
            try:
                term.prox(problem.z0[block], 1.0, S)
            except NotImplementedError as err:
                raise ValueError(f"pdhg needs a closed-form prox of {name}: {err}") from err
        if self.restart_measure == "gap" and not _bilinear_lagrangian(problem):
            raise ValueError("pdhg: restart_measure='gap' needs zero or linear terms g and h_conj "
                             "(a bilinear Lagrangian); use 'kkt'")
        if self.precondition and not _separable(problem):
            raise ValueError("pdhg: precondition=True needs boxes or R^n and separable terms (zero, linear, "
                             "diagonal quadratic, L1); the scaled projections onto other sets are not projections")

    def _measure_kind(self, problem) -> str:
        if self.restart_measure is not None:
            return self.restart_measure
        return "gap" if _bilinear_lagrangian(problem) else "kkt"

    def _preconditioner(self, problem) -> tuple[Tensor | None, Tensor | None]:
        """``(D_c, D_r)``: Ruiz equilibration then a Pock-Chambolle pass (None, None when off)."""
        if self.precondition is False or (self.precondition is None and not _separable(problem)):
            return None, None
        K = problem.coupling
        Bk, m, n = K.shape
        dr = torch.ones(Bk, m, dtype=K.dtype, device=K.device)
        dc = torch.ones(Bk, n, dtype=K.dtype, device=K.device)

        def safe_rsqrt(v):
            return torch.where(v > 0, v.rsqrt(), torch.ones_like(v))

        for _ in range(self.ruiz_iterations):
            rows, cols = K.abs_reduce(dr, dc, "max")
            dr, dc = dr * safe_rsqrt(rows), dc * safe_rsqrt(cols)
        rows, cols = K.abs_reduce(dr, dc, "sum")
        return dc * safe_rsqrt(cols), dr * safe_rsqrt(rows)

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _residual(problem, x, y, Kx, Kty) -> Tensor:
        """The natural residual ``|z - prox(z - F(z))|`` from cached products, shape ``(B,)``."""
        g_smooth, h_smooth = problem.g.split()[0], problem.h_conj.split()[0]
        rx = x - problem.block_prox(0, x, g_smooth.grad(x) + Kty, 1.0)
        ry = y - problem.block_prox(1, y, h_smooth.grad(y) - Kx, 1.0)
        return torch.sqrt(rx.square().sum(-1) + ry.square().sum(-1))

    @staticmethod
    def _norm_w(dx, dy, omega, state) -> Tensor:
        """``|(dx, dy)|_W`` with ``|z|_W^2 = omega |x / D_c|^2 + |y / D_r|^2 / omega``, shape ``(B,)``."""
        if state.col_scale is not None:
            dx, dy = dx / state.col_scale, dy / state.row_scale
        return torch.sqrt(omega * dx.square().sum(-1) + dy.square().sum(-1) / omega)

    def _normalized_gap(self, problem, x, y, Kx, Kty, radius, state, bisections: int = 25) -> Tensor:
        """PDLP's normalized duality gap ``max {<F(z), z - u> : u in Z, |u - z|_W <= r} / r``, ``(B,)``.

        The maximizer over the ball is ``u(lam) = P_Z(z - W^-1 F(z) / lam)`` with the
        multiplier lam of the ball constraint; ``|u(lam) - z|_W`` decreases in lam, and
        lam is found by bisection in log scale. Where r = 0 the gap is inf.
        """
        X, Y = problem.domain
        omega = state.primal_weight.unsqueeze(-1)
        Fx = _vector(problem.g, x) + Kty
        Fy = _vector(problem.h_conj, y) - Kx
        wx, wy = Fx / omega, Fy * omega  # W^-1 F
        if state.col_scale is not None:
            wx, wy = wx * state.col_scale.square(), wy * state.row_scale.square()
        dual_norm = torch.sqrt((Fx * wx).sum(-1) + (Fy * wy).sum(-1))  # |F|_{W^-1}
        r = radius.clamp_min(torch.finfo(radius.dtype).tiny)
        hi = (dual_norm / r).clamp_min(torch.finfo(r.dtype).tiny)  # here |u - z|_W <= r
        bounded = X.bounded and Y.bounded
        # Tiny multipliers mean huge steps, whose projections onto simplices lose
        # digits; on bounded sets the unconstrained maximizer (a vertex, from the
        # LMO) is tested directly instead.
        lo = hi * (1e-6 if bounded else 1e-12)

        def distance(lam):
            t = lam.unsqueeze(-1)
            ux, uy = X.project(x - wx / t), Y.project(y - wy / t)
            return self._norm_w(ux - x, uy - y, state.primal_weight, state), ux, uy

        for _ in range(bisections):
            mid = torch.sqrt(lo * hi)
            inside = distance(mid)[0] <= r
            hi = torch.where(inside, mid, hi)
            lo = torch.where(inside, lo, mid)
        _, ux, uy = distance(hi)
        if bounded:
            vx, vy = X.lmo(Fx), Y.lmo(Fy)
            reach = (self._norm_w(vx - x, vy - y, state.primal_weight, state) <= r).unsqueeze(-1)
            ux, uy = torch.where(reach, vx, ux), torch.where(reach, vy, uy)
        value = (Fx * (x - ux)).sum(-1) + (Fy * (y - uy)).sum(-1)
        gap = value.clamp_min(0) / r
        return torch.where(radius > 0, gap, torch.full_like(gap, math.inf))

    # -- the method --------------------------------------------------------------------------
    def init(self, problem, z0):
        x, y = z0
        K = problem.coupling
        B, dev, dt = problem.batch_size, problem.device, problem.dtype
        dc, dr = self._preconditioner(problem)
        if self.step_size is None:
            if self.adaptive_step:
                rows = torch.ones(K.shape[0], K.shape[1], dtype=dt, device=dev) if dr is None else dr
                cols = torch.ones(K.shape[0], K.shape[2], dtype=dt, device=dev) if dc is None else dc
                eta = 1.0 / _nonzero(K.abs_reduce(rows, cols, "max")[0].amax(-1))
            else:
                eta = 0.9 / _nonzero(self._scaled_norm(K, dc, dr))
            eta = eta.to(dt).expand(B).clone()
        else:
            eta = positive_steps(self.name, "step_size", self.step_size, problem)
        if self.primal_weight is None:
            c, d = _vector(problem.g, x), _vector(problem.h_conj, y)
            if dc is not None:
                c, d = c * dc, d * dr
            cn, dn = c.norm(dim=-1), d.norm(dim=-1)
            ok = (cn > 1e-10) & (dn > 1e-10)
            omega = torch.where(ok, cn / dn.clamp_min(1e-300), torch.ones_like(cn))
        else:
            omega = positive_steps(self.name, "primal_weight", self.primal_weight, problem)
        Kx, Kty = _matvec(K, x), _rmatvec(K, y)
        zeros = torch.zeros(B, dtype=dt, device=dev)
        return PDHGState(
            Kx=Kx, Kty=Kty, step_size=eta, primal_weight=omega,
            sum_x=torch.zeros_like(x), sum_y=torch.zeros_like(y), weight=zeros,
            restart_x=x, restart_y=y, restart_measure=torch.full((B,), math.inf, dtype=dt, device=dev),
            previous_candidate=torch.full((B,), math.inf, dtype=dt, device=dev),
            inner=torch.zeros(B, dtype=torch.int64, device=dev),
            restarts=torch.zeros(B, dtype=torch.int64, device=dev),
            check_x=x, check_y=y, ray_x=torch.zeros_like(x), ray_y=torch.zeros_like(y),
            col_scale=dc, row_scale=dr,
            iteration=0,
            operator_calls=torch.ones(B, dtype=torch.int64, device=dev),
        )

    @staticmethod
    def _scaled_norm(K, dc, dr) -> Tensor:
        """``|D_r K D_c|_2`` per instance by power iteration (with a 1% margin), or ``|K|_2``."""
        if dc is None:
            return K.norm()
        g = torch.Generator(device=K.device).manual_seed(0)
        v = torch.randn(dc.shape, generator=g, dtype=dc.dtype, device=dc.device)
        for _ in range(200):
            v = dc * K.rmv(dr * dr * K.mv(dc * v))
            v = v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)
        return (dr * K.mv(dc * v)).norm(dim=-1) * 1.01

    def step(self, problem, z, state):
        x, y = z
        X, Y = problem.domain
        K = problem.coupling
        eta, omega = state.step_size, state.primal_weight
        tau, sigma = (eta / omega).unsqueeze(-1), (eta * omega).unsqueeze(-1)
        if state.col_scale is not None:
            tau, sigma = tau * state.col_scale.square(), sigma * state.row_scale.square()

        x_new = problem.g.prox(x - tau * state.Kty, tau, X)
        Kx_new = _matvec(K, x_new)
        y_new = problem.h_conj.prox(y + sigma * (2 * Kx_new - state.Kx), sigma, Y)
        Kty_new = _rmatvec(K, y_new)

        k = state.iteration + 1
        if self.adaptive_step:
            moved = self._norm_w(x_new - x, y_new - y, omega, state).square()
            interaction = 2 * ((y_new - y) * (Kx_new - state.Kx)).sum(-1).abs()
            limit = torch.where(interaction > 0, moved / interaction, torch.full_like(moved, math.inf))
            accept = eta <= limit
            next_eta = torch.minimum((1 - (k + 1) ** -0.3) * limit, (1 + (k + 1) ** -0.6) * eta)
        else:
            accept = torch.ones_like(eta, dtype=torch.bool)
            next_eta = eta

        def keep(new, old):
            return torch.where(accept.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)

        x_next, y_next = keep(x_new, x), keep(y_new, y)
        Kx, Kty = keep(Kx_new, state.Kx), keep(Kty_new, state.Kty)
        w = torch.where(accept, eta, torch.zeros_like(eta))
        col = w.unsqueeze(-1)
        state = state._replace(
            Kx=Kx, Kty=Kty, step_size=next_eta,
            sum_x=state.sum_x + col * x_next, sum_y=state.sum_y + col * y_next,
            weight=state.weight + w, inner=state.inner + accept.long(),
            iteration=k, operator_calls=state.operator_calls + 1,
        )
        if k % self.restart_every == 0:
            state = state._replace(ray_x=x_next - state.check_x, ray_y=y_next - state.check_y,
                                   check_x=x_next, check_y=y_next)
            if self.restarts:
                (x_next, y_next), state = self._restart(problem, x_next, y_next, state)
        return (x_next, y_next), state

    def output(self, problem, z, state):
        """The current point or the average since the last restart, whichever has the smaller residual."""
        x, y = z
        (ax, ay, aKx, aKty) = self._average(problem, x, y, state)
        r_cur = self._residual(problem, x, y, state.Kx, state.Kty)
        r_avg = self._residual(problem, ax, ay, aKx, aKty)
        u = (r_avg < r_cur).unsqueeze(-1)
        return torch.where(u, ax, x), torch.where(u, ay, y)

    @staticmethod
    def _average(problem, x, y, state):
        """The step-weighted average since the last restart, with its products (the current point if none)."""
        has_avg = (state.weight > 0).unsqueeze(-1)
        denom = state.weight.clamp_min(torch.finfo(state.weight.dtype).tiny).unsqueeze(-1)
        ax = torch.where(has_avg, state.sum_x / denom, x)
        ay = torch.where(has_avg, state.sum_y / denom, y)
        return ax, ay, _matvec(problem.coupling, ax), _rmatvec(problem.coupling, ay)

    def _measure(self, problem, x, y, Kx, Kty, state) -> Tensor:
        if self._measure_kind(problem) == "kkt":
            return self._residual(problem, x, y, Kx, Kty)
        radius = self._norm_w(x - state.restart_x, y - state.restart_y, state.primal_weight, state)
        return self._normalized_gap(problem, x, y, Kx, Kty, radius, state)

    def _restart(self, problem, x, y, state: PDHGState):
        """Restart to the current or the average point where the criteria hold (per instance)."""
        ax, ay, aKx, aKty = self._average(problem, x, y, state)
        m_cur = self._measure(problem, x, y, state.Kx, state.Kty, state)
        m_avg = self._measure(problem, ax, ay, aKx, aKty, state)
        use_avg = m_avg < m_cur
        m_cand = torch.minimum(m_avg, m_cur)
        total = torch.as_tensor(state.iteration, dtype=state.weight.dtype, device=state.weight.device)
        restart = (m_cand <= self.sufficient * state.restart_measure) \
            | ((m_cand <= self.necessary * state.restart_measure) & (m_cand > state.previous_candidate)) \
            | (state.inner.to(state.weight.dtype) >= self.artificial * total)

        u = use_avg.unsqueeze(-1)
        cx, cy = torch.where(u, ax, x), torch.where(u, ay, y)
        cKx, cKty = torch.where(u, aKx, state.Kx), torch.where(u, aKty, state.Kty)
        omega = state.primal_weight
        if self.update_primal_weight:
            dx, dy = cx - state.restart_x, cy - state.restart_y
            if state.col_scale is not None:
                dx, dy = dx / state.col_scale, dy / state.row_scale
            dx, dy = dx.norm(dim=-1), dy.norm(dim=-1)
            tiny = torch.finfo(dx.dtype).eps
            ok = (dx > tiny) & (dy > tiny)
            smoothed = torch.exp(0.5 * torch.log(dy.clamp_min(tiny) / dx.clamp_min(tiny)) + 0.5 * torch.log(omega))
            omega = torch.where(restart & ok, smoothed, omega)

        r = restart.unsqueeze(-1)
        new_state = state._replace(
            Kx=torch.where(r, cKx, state.Kx), Kty=torch.where(r, cKty, state.Kty), primal_weight=omega,
            sum_x=torch.where(r, torch.zeros_like(x), state.sum_x), sum_y=torch.where(r, torch.zeros_like(y), state.sum_y),
            weight=torch.where(restart, torch.zeros_like(state.weight), state.weight),
            restart_x=torch.where(r, cx, state.restart_x), restart_y=torch.where(r, cy, state.restart_y),
            restart_measure=torch.where(restart, m_cand, state.restart_measure),
            previous_candidate=torch.where(restart, torch.full_like(m_cand, math.inf), m_cand),
            inner=torch.where(restart, torch.zeros_like(state.inner), state.inner),
            restarts=state.restarts + restart.long(),
            operator_calls=state.operator_calls + 1,  # the average's products
        )
        return (torch.where(r, cx, x), torch.where(r, cy, y)), new_state

    # -- infeasibility certificates ----------------------------------------------------------------
    def terminal_status(self, problem, z, state):
        """``INFEASIBLE`` / ``UNBOUNDED`` where the drift of the iterates is a certificate (LPs only)."""
        if not _linear_program(problem):
            return None
        cert = self.certificates(problem, state)
        out = torch.full_like(state.inner, int(Status.RUNNING))
        out = torch.where(cert["unbounded"], int(Status.UNBOUNDED), out)
        return torch.where(cert["infeasible"], int(Status.INFEASIBLE), out)

    def certificates(self, problem, state) -> dict[str, Tensor]:
        """Candidate certificates of infeasibility from the drift of the iterates (LPs).

        Returns a dict of ``(B, ...)`` tensors:

        - ``dual_ray`` ``(B, m)``: a unit ray r of Y's recession cone; it proves the
          primal infeasible when ``-support_X(-K^T r) - <d, r> > 0`` (the dual
          function grows along it), with the part of ``K^T r`` that the bounds
          cannot absorb below ``infeasibility_tol`` times that objective;
        - ``primal_ray`` ``(B, n)``: a unit ray s of X's recession cone; it proves
          the problem unbounded when ``<c, s> < 0`` and ``K s`` lies in the polar
          of Y's recession cone, up to the same relative tolerance;
        - ``infeasible``, ``unbounded``: ``(B,)`` whether each certificate holds.
        """
        X, Y = problem.domain
        K = problem.coupling
        x, y = state.check_x, state.check_y
        c, d = _vector(problem.g, x), _vector(problem.h_conj, y)
        lx, ux = _bounds(X, x)
        ly, uy = _bounds(Y, y)
        eps = self.infeasibility_tol
        tiny = torch.finfo(x.dtype).tiny

        r = _recession(state.ray_y, ly, uy)
        r = r / r.norm(dim=-1, keepdim=True).clamp_min(tiny)
        lam = -_rmatvec(K, r)
        excess = torch.where(torch.isinf(ux), lam.clamp_min(0), 0) - torch.where(torch.isinf(lx), (-lam).clamp_min(0), 0)
        lam_ok = lam - excess  # the part of -K^T r the bounds absorb
        support = torch.where(lam_ok > 0, lam_ok * torch.nan_to_num(ux, posinf=0.0, neginf=0.0),
                              lam_ok * torch.nan_to_num(lx, posinf=0.0, neginf=0.0)).sum(-1)
        dual_ray_objective = -support - (d * r).sum(-1)
        infeasible = (dual_ray_objective > 0) & (excess.norm(dim=-1) <= eps * dual_ray_objective)

        s = _recession(state.ray_x, lx, ux)
        s = s / s.norm(dim=-1, keepdim=True).clamp_min(tiny)
        Ks = _matvec(K, s)
        violation = torch.where(torch.isinf(uy), Ks.clamp_min(0), 0) + torch.where(torch.isinf(ly), (-Ks).clamp_min(0), 0)
        violation = torch.where(torch.isfinite(ly) & torch.isfinite(uy), 0, violation)
        primal_ray_objective = -(c * s).sum(-1)
        unbounded = (primal_ray_objective > 0) & (violation.norm(dim=-1) <= eps * primal_ray_objective)
        return {"dual_ray": r, "primal_ray": s, "infeasible": infeasible, "unbounded": unbounded}


def _nonzero(scale: Tensor) -> Tensor:
    """A per-instance scale of K for the initial step, 1 where K = 0.

    Any step is stable for a zero K (an LP with bounds only), but ``1 / 0`` would make the
    step-weighted sums of the iterates overflow and the instance look diverged.
    """
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _recession(v: Tensor, lo: Tensor, hi: Tensor) -> Tensor:
    """Project a direction onto the recession cone of the box ``[lo, hi]``."""
    v = torch.where(torch.isfinite(lo), v.clamp_min(0), v)
    v = torch.where(torch.isfinite(hi), v.clamp_max(0), v)
    return torch.where(torch.isfinite(lo) & torch.isfinite(hi), torch.zeros_like(v), v)
