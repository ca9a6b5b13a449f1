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
  detection with primal-dual hybrid gradient"); the iterates at every restart
  check are tracked (`saddle.lp_certificates.RayTracker`: differences of
  checks, normalized iterates), and at every check the driver is told
  `INFEASIBLE` or `UNBOUNDED` where a candidate passes its verification.

The map T itself, the preconditioner and what both of PDHG's schemes share are
in `saddle.solvers.pdhg_map`; the Halpern scheme is `saddle.solvers.halpern`.

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

from ..lp_certificates import no_detection, ray_tracker, track
from ._validate import check_choice, check_flag, positive_steps
from .base import register
from .pdhg_map import (PrimalDualScheme, _matvec, _rmatvec, bilinear_lagrangian, diagonal_steps, eager_when_compiled,
                       infinite, linear_vector, natural_residual, nonzero, pdhg_map, scaled_norm_bound, weighted_norm,
                       weighted_square)

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
        tracker: the iterates at the restart checks, whose drift gives the candidate certificates of
            infeasibility (a `saddle.lp_certificates.RayTracker`).
        detected: what the verified candidates showed (`saddle.lp_certificates.Detection`).
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
    tracker: NamedTuple
    detected: NamedTuple
    col_scale: Tensor | None
    row_scale: Tensor | None
    iteration: int
    operator_calls: Tensor


@register("pdhg", category="primal-dual", calls_at_init=1, averages=True, converges_on=("monotone", "linear program"))
@dataclass(frozen=True)
class PDHG(PrimalDualScheme):
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
        update_primal_weight: PDLP's primal-weight update at restarts.
        necessary: the necessary-decay restart threshold (0.8).
        precondition, primal_weight, restart_every, sufficient, artificial,
            infeasibility_tol, ruiz_iterations: as in
            `saddle.solvers.pdhg_map.PrimalDualScheme`.

    Applies to `BilinearProblem`s whose terms have closed-form prox steps on
    their sets (zero and linear terms on every set; quadratic terms on boxes,
    diagonal, or on R^n; L1 terms on boxes). Without preconditioning the
    projections are Euclidean whatever the sets' geometry.
    """

    adaptive_step: bool = True
    restart_measure: str | None = None

    # -- settings ----------------------------------------------------------------------------
    def __post_init__(self):
        """Check every setting that does not depend on the problem, so a bad one fails at construction."""
        super().__post_init__()
        check_flag(self.name, "adaptive_step", self.adaptive_step)
        check_choice(self.name, "restart_measure", self.restart_measure, (None, "gap", "kkt"))

    def check(self, problem):
        super().check(problem)
        if self.restart_measure == "gap" and not bilinear_lagrangian(problem):
            raise ValueError("pdhg: restart_measure='gap' needs zero or linear terms g and h_conj "
                             "(a bilinear Lagrangian); use 'kkt'")

    def _measure_kind(self, problem) -> str:
        if self.restart_measure is not None:
            return self.restart_measure
        return "gap" if bilinear_lagrangian(problem) else "kkt"

    # -- pieces ------------------------------------------------------------------------------
    @staticmethod
    def _residual(problem, x, y, Kx, Kty) -> Tensor:
        """The natural residual ``|z - prox(z - F(z))|`` from cached products, shape ``(B,)``."""
        return natural_residual(problem, x, y, Kx, Kty)

    @staticmethod
    def _norm_w(dx, dy, omega, state) -> Tensor:
        """``|(dx, dy)|_W`` with ``|z|_W^2 = omega |x / D_c|^2 + |y / D_r|^2 / omega``, shape ``(B,)``."""
        return weighted_norm(dx, dy, omega, state.col_scale, state.row_scale)

    def _normalized_gap(self, problem, x, y, Kx, Kty, radius, state, bisections: int = 25) -> Tensor:
        """PDLP's normalized duality gap ``max {<F(z), z - u> : u in Z, |u - z|_W <= r} / r``, ``(B,)``.

        The maximizer over the ball is ``u(lam) = P_Z(z - W^-1 F(z) / lam)`` with the
        multiplier lam of the ball constraint; ``|u(lam) - z|_W`` decreases in lam, and
        lam is found by bisection in log scale. Where r = 0 the gap is inf.
        """
        X, Y = problem.domain
        omega = state.primal_weight.unsqueeze(-1)
        Fx = linear_vector(problem.g, x) + Kty
        Fy = linear_vector(problem.h_conj, y) - Kx
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
        K = problem.coupling
        B, dev, dt = problem.batch_size, problem.device, problem.dtype
        dc, dr = self._preconditioner(problem)
        if self.step_size is None:
            if self.adaptive_step:
                rows = torch.ones(K.shape[0], K.shape[1], dtype=dt, device=dev) if dr is None else dr
                cols = torch.ones(K.shape[0], K.shape[2], dtype=dt, device=dev) if dc is None else dc
                eta = 1.0 / nonzero(K.abs_reduce(rows, cols, "max")[0].amax(-1))
            else:
                eta = 0.9 / nonzero(scaled_norm_bound(K, dc, dr).bound)
            eta = eta.to(dt).expand(B).clone()
        else:
            eta = positive_steps(self.name, "step_size", self.step_size, problem)
        return self._start(problem, z0, (dc, dr), eta, self._initial_weight(problem, z0, (dc, dr)))

    def _start(self, problem, z0, scales, eta, omega):
        x, y = z0
        K = problem.coupling
        B, dev, dt = problem.batch_size, problem.device, problem.dtype
        Kx, Kty = _matvec(K, x), _rmatvec(K, y)
        zeros = torch.zeros(B, dtype=dt, device=dev)
        return PDHGState(
            Kx=Kx, Kty=Kty, step_size=eta, primal_weight=omega,
            sum_x=torch.zeros_like(x), sum_y=torch.zeros_like(y), weight=zeros,
            restart_x=x, restart_y=y, restart_measure=infinite(B, zeros), previous_candidate=infinite(B, zeros),
            inner=torch.zeros(B, dtype=torch.int64, device=dev),
            restarts=torch.zeros(B, dtype=torch.int64, device=dev),
            tracker=ray_tracker(x, y), detected=no_detection(x, y),
            col_scale=scales[0], row_scale=scales[1],
            iteration=0,
            operator_calls=torch.ones(B, dtype=torch.int64, device=dev),
        )

    def step(self, problem, z, state):
        return self.finish_step(problem, z, state, self.bare_step(problem, z, state))

    def bare_step(self, problem, z, state: PDHGState) -> tuple[tuple[Tensor, Tensor], PDHGState, Tensor | None]:
        """The arithmetic of an iteration, for `finish_step`: the next point; the next state but for the
        iteration counter and the next trial step (which depends on the counter); and the adaptive rule's
        step bound ``(B,)`` (None with a constant step).

        Tensors in and out, the same operations at every iteration, no Python number that changes: what
        ``torch.compile`` traces of `step`, once per shape.
        """
        x, y = z
        eta, omega = state.step_size, state.primal_weight
        tau, sigma = diagonal_steps(eta, omega, state.col_scale, state.row_scale)
        x_new, y_new, Kx_new, Kty_new = pdhg_map(problem, x, y, state.Kx, state.Kty, tau, sigma, _matvec, _rmatvec)

        limit = None
        if self.adaptive_step:
            moved = weighted_square(x_new - x, y_new - y, omega, state.col_scale, state.row_scale)
            interaction = 2 * ((y_new - y) * (Kx_new - state.Kx)).sum(-1).abs()
            # (divided by at least the tiniest float: 0 / 0 in the branch not taken made unrolled gradients NaN)
            limit = torch.where(interaction > 0, moved / interaction.clamp_min(torch.finfo(moved.dtype).tiny),
                                torch.full_like(moved, math.inf))
            accept = eta <= limit
        else:
            accept = torch.ones_like(eta, dtype=torch.bool)

        keep = accept.unsqueeze(-1)
        x_next, y_next = torch.where(keep, x_new, x), torch.where(keep, y_new, y)
        Kx, Kty = torch.where(keep, Kx_new, state.Kx), torch.where(keep, Kty_new, state.Kty)
        w = eta * accept  # the step where accepted, 0 where rejected
        col = w.unsqueeze(-1)
        state = state._replace(
            Kx=Kx, Kty=Kty,
            sum_x=torch.addcmul(state.sum_x, col, x_next), sum_y=torch.addcmul(state.sum_y, col, y_next),
            weight=state.weight + w, inner=state.inner + accept.long(), operator_calls=state.operator_calls + 1,
        )
        return (x_next, y_next), state, limit

    @eager_when_compiled
    def finish_step(self, problem, z, state: PDHGState, pending: tuple):
        """The point and state after `bare_step` (``pending``): the iteration counter, the next trial step and
        the restart checks.

        Eager even inside ``torch.compile``: branches on the Python int ``iteration`` and the step
        schedule's Python numbers would specialize a compiled step on them (a recompilation per step).
        """
        z, state, limit = pending
        k = state.iteration + 1
        if limit is not None:
            state = state._replace(step_size=torch.minimum((1 - (k + 1) ** -0.3) * limit,
                                                           (1 + (k + 1) ** -0.6) * state.step_size))
        state = state._replace(iteration=k)
        if k % self.restart_every == 0:
            x, y = z
            state = self.detect(problem, state._replace(tracker=track(state.tracker, x, y, k)), k // self.restart_every)
            if self.restarts:
                z, state = self._restart(problem, x, y, state)
        return z, state

    def plain_iterations(self, state: PDHGState) -> int:
        """How many of the next iterations are plain: no restart check, and a constant step (the adaptive
        rule's next trial step depends on the iteration number), so `plain_step` makes them."""
        return 0 if self.adaptive_step else self.restart_every - 1 - state.iteration % self.restart_every

    def plain_step(self, problem, z, state: PDHGState):
        """`step` at a plain iteration (`plain_iterations`) with the counter left for `advance`: tensors in and
        out, the same at every call, so that a chunk of them is compiled or captured as a CUDA graph once."""
        return self.bare_step(problem, z, state)[:2]

    def advance(self, state: PDHGState, iterations: int) -> PDHGState:
        """``state`` after ``iterations`` `plain_step` calls: its iteration counter moved on."""
        return state._replace(iteration=state.iteration + iterations)

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

