"""Restarted Halpern PDHG with reflection (r2HPDHG; Lu and Yang 2024, arXiv 2407.16144; cuPDLPx, arXiv 2507.14051).

For ``min_{x in X} max_{y in Y} g(x) + <K x, y> - h*(y)`` (a `BilinearProblem`),
with T the preconditioned PDHG map (`saddle.solvers.pdhg_map.pdhg_map`) at the
constant step ``eta = 0.998 / |D_r K D_c|_2`` (primal ``eta / omega``, dual
``eta omega``), the iteration is Halpern's with the reflected map ``2 T - I``::

    z_{k+1} = (k + 1) / (k + 2) ((1 - rho) z_k + rho (2 T(z_k) - z_k)) + z_0 / (k + 2)

(rho: `reflection`, 1 by default), k counted from the last restart and the
anchor z_0 the point of the last restart. The anchor pulls the iterates
toward z_0 with a weight that vanishes like 1/k, which gives the fixed-point
error ``|z_k - T(z_k)|_P = O(1/k)`` in the metric P in which T is firmly
nonexpansive, and with restarts a linear rate on LPs (sharpness).
`AnchoredEG` (saddle.solvers.extragradient) is the same anchor on
extragradient steps.

The practical rules are cuPDLPx's:

- **restarts** on the fixed-point error ``e = |z - T(z)|_P``
  (`saddle.solvers.pdhg_map.fixed_point_error`), checked every
  ``restart_every`` iterations: restart when ``e <= sufficient e_0``, or
  ``e <= necessary e_0`` and e grew since the last check, or the period
  exceeds ``artificial`` times all iterations (so the first check always
  restarts), with e_0 the error at the restart point. A restart moves to
  ``T(z)`` and makes it the anchor.
- **primal weight** by a PID controller at each restart, on the error
  ``log |dy| - log |dx| - log omega`` with ``(dx, dy) = T(z) - z_0`` (in the
  preconditioned variables), integral smoothed by ``primal_weight_smoothing``,
  with three safeguards of our own (cuPDLPx has none): a restart changes
  omega by at most a factor ``primal_weight_change``; omega stays within a
  factor ``primal_weight_range`` of its initial value; and omega changes only
  at restarts after progress, where the restart error ``e_0`` fell below
  ``primal_weight_progress`` times the previous restart's. Without them omega
  swings by orders of magnitude between restarts on some LPs (LOTFI: 1e-6 to
  1e-1), and on infeasible LPs, whose iterates drift and whose restart errors
  stall at the length of the least displacement, it runs away (refinery,
  klein1: to 3e7-5e7), the primal step ``eta / omega`` vanishes and the
  drift stops showing the Farkas ray (refinery is certified only with them).
- **the reported point** is ``T(z)`` of the last step (`output`), where the
  driver measures convergence; its reduced costs are those of the prox step.
- **infeasibility**: at every restart check, for linear programs, the
  iterates and the displacement ``z - T(z)`` (which tends to the displacement
  of least norm, the certificate's direction) are tested
  (`saddle.lp_certificates.certify`), for the whole run.

Each iteration costs one product with K and one with K^T (one operator call):
``K x+`` and ``K^T y+`` of the map; the products at the Halpern point and at
the anchor are linear combinations of those. The power iteration that bounds
``|D_r K D_c|_2`` is counted apart, in ``norm_estimate_calls``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..lp_certificates import no_detection, ray_tracker, track
from ._validate import check_number, positive_steps
from .base import register
from .pdhg_map import (MapOutput, PrimalDualScheme, _matvec, _rmatvec, diagonal_steps, displacement_error,
                       eager_when_compiled, fixed_point_error, infinite, linear_vector, nonzero, pdhg_map,
                       scaled_norm_bound)

__all__ = ["HalpernPDHG", "HalpernState"]


class HalpernState(NamedTuple):
    """State of `HalpernPDHG`; tensors are ``(B, ...)``.

    Attributes:
        Kx, Kty: ``K x`` ``(B, m)`` and ``K^T y`` ``(B, n)`` at the current point.
        anchor_x, anchor_y: the anchor z_0 (the last restart point); anchor_Kx, anchor_Kty: its products.
        output_x, output_y: ``T(z)`` from the last step, the reported point (z_0 before the first step).
        step_size: ``(B,)`` eta.
        primal_weight: ``(B,)`` omega.
        primal_step, dual_step: the diagonal steps ``tau = (eta / omega) D_c^2`` ``(B, n)`` and
            ``sigma = (eta omega) D_r^2`` ``(B, m)`` (``(B, 1)`` without a preconditioner), kept
            between the restarts that change omega.
        col_scale, row_scale: the diagonal preconditioner ``D_c`` ``(Bk, n)``, ``D_r`` ``(Bk, m)``, or None.
        weight_error_sum, weight_last_error: ``(B,)`` the PID controller's smoothed integral and last error.
        best_primal_weight: ``(B,)`` the weight after the restart whose residuals were the most balanced
            (``best_balance``: ``|log10(dual residual / primal residual)|`` there), the fallback of the PID.
        initial_primal_weight: ``(B,)`` omega at the start, the center of its range.
        restart_error: ``(B,)`` the fixed-point error at the last restart point (e_0).
        previous_restart_error: ``(B,)`` e_0 of the restart before (inf before the second restart).
        last_error: ``(B,)`` the fixed-point error at the previous check (inf after a restart).
        inner: ``(B, 1)`` iterations since the last restart (k), in the problem's dtype: the
            Halpern weight ``k / (k + 1)`` is two operations from it.
        restarts: ``(B,)`` restarts so far.
        tracker: the candidate certificates of infeasibility (`saddle.lp_certificates.RayTracker`).
        detected: what the verified candidates showed (`saddle.lp_certificates.Detection`).
        iteration: iterations so far (the same for every running instance).
        restart_calls: ``(B,)`` operator evaluations up to the last restart; ``operator_calls``
            (a property: ``restart_calls`` plus ``inner``) counts them all, one K and one K^T
            product per iteration, without an operation per step.
        residual_scales: ``(B, 2)`` ``1 + |c|`` and ``1 + |d|`` (the linear terms' vectors), the
            scales of the relative residuals the primal-weight safeguard compares.
        norm_estimate_calls: ``(B,)`` products of the power iteration that bounds ``|D_r K D_c|_2``.
    """

    Kx: Tensor
    Kty: Tensor
    anchor_x: Tensor
    anchor_y: Tensor
    anchor_Kx: Tensor
    anchor_Kty: Tensor
    output_x: Tensor
    output_y: Tensor
    step_size: Tensor
    primal_weight: Tensor
    primal_step: Tensor
    dual_step: Tensor
    col_scale: Tensor | None
    row_scale: Tensor | None
    weight_error_sum: Tensor
    weight_last_error: Tensor
    best_primal_weight: Tensor
    best_balance: Tensor
    initial_primal_weight: Tensor
    restart_error: Tensor
    previous_restart_error: Tensor
    last_error: Tensor
    inner: Tensor
    restarts: Tensor
    tracker: NamedTuple
    detected: NamedTuple
    iteration: int
    restart_calls: Tensor
    residual_scales: Tensor
    norm_estimate_calls: Tensor

    @property
    def operator_calls(self) -> Tensor:
        """``(B,)`` operator evaluations so far: one at the start and one per iteration."""
        return self.restart_calls + self.inner.squeeze(-1).long()


@register("r2hpdhg", category="primal-dual", calls_at_init=1, converges_on=("monotone", "linear program"))
@dataclass(frozen=True)
class HalpernPDHG(PrimalDualScheme):
    """Restarted Halpern PDHG with reflection (Lu and Yang 2024, arXiv 2407.16144; cuPDLPx).

    ``z+ = (k+1)/(k+2) (2 T(z) - z) + z_0 / (k+2)`` with T the preconditioned
    PDHG map at a constant step, restarts on the fixed-point error and a PID
    primal weight; see the module docstring. Blocks x ``(B, n)``, y ``(B, m)``,
    K ``(B, m, n)`` dense or one sparse ``(m, n)`` matrix shared by the batch.

    Args:
        step_size: None (``0.998 / |D_r K D_c|_2``, from a bound that holds:
            `saddle.solvers.pdhg_map.scaled_norm_bound`), a float or a ``(B,)``
            tensor (the constant step eta; T is nonexpansive for
            ``eta < 1 / |D_r K D_c|_2``).
        update_primal_weight: the PID primal-weight update at restarts.
        primal_weight_gains: the PID gains ``(k_p, k_i, k_d)`` (cuPDLPx: 0.99, 0.01, 0).
        primal_weight_smoothing: the factor of the integral at each restart (cuPDLPx: 0.3).
        primal_weight_change: the largest factor (> 1) by which one restart changes omega (4).
        primal_weight_range: omega stays within this factor (> 1) of its initial value (1000).
        primal_weight_progress: omega changes only at restarts whose restart error e_0 is
            at most this fraction of the previous restart's (0.8); a huge value: at every restart.
        reflection: rho in (0, 1]: 1 reflects (``2 T - I``), 0.5 is plain Halpern on T.
        restarts: restart on the fixed-point error (else one anchor for the whole run).
        restart_every: iterations between restart checks (32; cuPDLPx: 200).
        precondition, primal_weight, sufficient, necessary, artificial,
            infeasibility_tol, ruiz_iterations: as in
            `saddle.solvers.pdhg_map.PrimalDualScheme` (necessary: 0.8;
            cuPDLPx: 0.5).

    The defaults of ``restart_every`` and ``necessary`` were tuned on small
    netlib LPs (AFIRO, SC50A, SC105, ADLITTLE, BLEND, STOCFOR1, relative KKT
    1e-8: with 32 / 0.8, 1.2x fewer products than with 64 / 0.5 and 1.6x fewer
    than with 128 / 0.5, geometric mean); those of the primal-weight
    safeguards on nine netlib LPs and the 14 infeasible ones (the attempts
    are in docs/benchmarks.md).

    Applies where `saddle.PDHG` does: `BilinearProblem`s whose terms have
    closed-form prox steps on their sets (LPs, matrix games on simplices,
    quadratic and L1 terms).
    """

    restart_every: int = 32
    primal_weight_gains: tuple = (0.99, 0.01, 0.0)
    primal_weight_smoothing: float = 0.3
    primal_weight_change: float = 4.0
    primal_weight_range: float = 1e3
    primal_weight_progress: float = 0.8
    reflection: float = 1.0

    #: The fraction of the step bound ``1 / |D_r K D_c|_2`` taken by default (cuPDLPx).
    step_fraction = 0.998

    def __post_init__(self):
        """Check every setting that does not depend on the problem, so a bad one fails at construction."""
        super().__post_init__()
        gains = self.primal_weight_gains
        if not (isinstance(gains, (tuple, list)) and len(gains) == 3):
            raise ValueError(f"{self.name}: primal_weight_gains must be a tuple (k_p, k_i, k_d), got {gains!r}")
        object.__setattr__(self, "primal_weight_gains", tuple(gains))  # hashable, as a frozen solver's settings
        for gain in gains:
            check_number(self.name, "primal_weight_gains", gain, low=0.0, include_low=True,
                         expected="a tuple of three finite numbers >= 0")
        check_number(self.name, "primal_weight_smoothing", self.primal_weight_smoothing, low=0.0, high=1.0,
                     include_low=True, include_high=True)
        for factor in ("primal_weight_change", "primal_weight_range"):
            check_number(self.name, factor, getattr(self, factor), low=1.0, expected="a finite number > 1")
        check_number(self.name, "primal_weight_progress", self.primal_weight_progress, low=0.0)
        check_number(self.name, "reflection", self.reflection, low=0.0, high=1.0, include_high=True)

    # -- the method --------------------------------------------------------------------------
    def init(self, problem, z0):
        scales = self._preconditioner(problem)
        B = problem.batch_size
        products = torch.zeros(B, dtype=torch.int64, device=problem.device)
        if self.step_size is None:
            bound = scaled_norm_bound(problem.coupling, *scales)
            eta = (self.step_fraction / nonzero(bound.bound)).to(problem.dtype).expand(B).clone()
            products = bound.products.expand(B).clone()
        else:
            eta = positive_steps(self.name, "step_size", self.step_size, problem)
        state = self._start(problem, z0, scales, eta, self._initial_weight(problem, z0, scales))
        return state._replace(norm_estimate_calls=products)

    def _start(self, problem, z0, scales, eta, omega):
        x, y = z0
        K = problem.coupling
        B, dev = problem.batch_size, problem.device
        Kx, Kty = _matvec(K, x), _rmatvec(K, y)
        zeros = torch.zeros(B, dtype=problem.dtype, device=dev)
        counts = torch.zeros(B, dtype=torch.int64, device=dev)
        tau, sigma = diagonal_steps(eta, omega, *scales)
        return HalpernState(
            Kx=Kx, Kty=Kty, anchor_x=x, anchor_y=y, anchor_Kx=Kx, anchor_Kty=Kty, output_x=x, output_y=y,
            step_size=eta, primal_weight=omega, primal_step=tau, dual_step=sigma,
            weight_error_sum=zeros, weight_last_error=zeros,
            best_primal_weight=omega, best_balance=infinite(B, zeros), initial_primal_weight=omega,
            restart_error=infinite(B, zeros), previous_restart_error=infinite(B, zeros),
            last_error=infinite(B, zeros), inner=zeros.unsqueeze(-1), restarts=counts,
            tracker=ray_tracker(x, y), detected=no_detection(x, y),
            col_scale=scales[0], row_scale=scales[1], iteration=0,
            restart_calls=counts + 1, norm_estimate_calls=counts,
            residual_scales=1 + torch.stack([linear_vector(problem.g, x).norm(dim=-1),
                                             linear_vector(problem.h_conj, y).norm(dim=-1)], -1),
        )

    def step(self, problem, z, state):
        return self.finish_step(problem, z, state, self.bare_step(problem, z, state))

    def bare_step(self, problem, z, state: HalpernState) -> tuple[MapOutput, MapOutput, Tensor]:
        """The arithmetic of an iteration: ``T(z)``, the Halpern point ``z+`` (each with its products) and the
        inner count ``(B, 1)``, for `finish_step`.

        Tensors in and out, the same operations at every iteration, no Python number that changes: what
        ``torch.compile`` traces of `step`, once per shape.
        """
        x, y = z
        t = pdhg_map(problem, x, y, state.Kx, state.Kty, state.primal_step, state.dual_step, _matvec, _rmatvec)
        inner = state.inner + 1
        return t, self._halpern(x, y, t, state, inner / (inner + 1)), inner

    @eager_when_compiled
    def finish_step(self, problem, z, state: HalpernState, pending: tuple[MapOutput, MapOutput, Tensor]):
        """The point and state after `bare_step` (``pending``): the iteration counter, and the restart checks.

        Eager even inside ``torch.compile``: branches on the Python int ``iteration`` would specialize a
        compiled step on it (a recompilation per step).
        """
        x, y = z
        t, halpern, inner = pending
        k = state.iteration + 1
        state = state._replace(output_x=t.x, output_y=t.y, inner=inner, iteration=k)
        if k % self.restart_every == 1 or self.restart_every == 1:
            # The step after a restart check measures e_0 at the instances that restarted there.
            error = fixed_point_error((x, y, state.Kx), t, state.step_size, state.primal_weight, state.col_scale,
                                      state.row_scale)
            state = state._replace(restart_error=torch.where(inner.squeeze(-1) == 1, error, state.restart_error))
        if k % self.restart_every != 0:
            return halpern[:2], state._replace(Kx=halpern[2], Kty=halpern[3])
        return self._check(problem, x, y, t, halpern, state)

    def plain_iterations(self, state: HalpernState) -> int:
        """How many of the next iterations are plain: no restart bookkeeping (the restart check every
        ``restart_every`` iterations and the step after it), so `plain_step` makes them."""
        phase = (state.iteration + 1) % self.restart_every
        return 0 if phase <= 1 or self.restart_every == 1 else self.restart_every - phase

    def plain_step(self, problem, z, state: HalpernState):
        """`step` at a plain iteration (`plain_iterations`) with the counter left for `advance`: tensors in and
        out, the same at every call, so that a chunk of them is compiled or captured as a CUDA graph once."""
        t, halpern, inner = self.bare_step(problem, z, state)
        return halpern[:2], state._replace(output_x=t.x, output_y=t.y, inner=inner, Kx=halpern.Kx, Kty=halpern.Kty)

    def advance(self, state: HalpernState, iterations: int) -> HalpernState:
        """``state`` after ``iterations`` `plain_step` calls: its iteration counter moved on."""
        return state._replace(iteration=state.iteration + iterations)

    def _halpern(self, x, y, t: MapOutput, state: HalpernState, w: Tensor) -> MapOutput:
        """``z+ = w ((1 - rho) z + rho (2 T(z) - z)) + (1 - w) z_0`` with ``w = (k+1)/(k+2)`` ``(B, 1)``, and its
        products: two ``lerp`` per block."""
        two_rho = 2 * self.reflection

        def update(current, mapped, anchor):
            return torch.lerp(anchor, torch.lerp(current, mapped, two_rho), w)

        return MapOutput(update(x, t.x, state.anchor_x), update(y, t.y, state.anchor_y),
                         update(state.Kx, t.Kx, state.anchor_Kx), update(state.Kty, t.Kty, state.anchor_Kty))

    def _check(self, problem, x, y, t: MapOutput, halpern: MapOutput, state: HalpernState):
        """A restart check: track the drift, then restart to ``T(z)`` where cuPDLPx's criteria hold (per instance)."""
        k = state.iteration
        dx, dy = x - t.x, y - t.y
        error = displacement_error(dx, dy, state.Kx - t.Kx, state.step_size, state.primal_weight, state.col_scale,
                                   state.row_scale)
        tracker = track(state.tracker, t.x, t.y, k, displacement=(dx, dy))
        inner = state.inner.squeeze(-1)
        restart = (error <= self.sufficient * state.restart_error) \
            | ((error <= self.necessary * state.restart_error) & (error > state.last_error)) \
            | (inner >= self.artificial * k)
        if not self.restarts:
            restart = torch.zeros_like(restart)
        state = self._update_primal_weight(dx, dy, t, state, restart)
        tau, sigma = diagonal_steps(state.step_size, state.primal_weight, state.col_scale, state.row_scale)
        r = restart.unsqueeze(-1)
        x_new, y_new = torch.where(r, t.x, halpern.x), torch.where(r, t.y, halpern.y)
        Kx, Kty = torch.where(r, t.Kx, halpern.Kx), torch.where(r, t.Kty, halpern.Kty)
        state = state._replace(
            Kx=Kx, Kty=Kty,
            anchor_x=torch.where(r, t.x, state.anchor_x), anchor_y=torch.where(r, t.y, state.anchor_y),
            anchor_Kx=torch.where(r, t.Kx, state.anchor_Kx), anchor_Kty=torch.where(r, t.Kty, state.anchor_Kty),
            last_error=torch.where(restart, math.inf, error),
            previous_restart_error=torch.where(restart, state.restart_error, state.previous_restart_error),
            primal_step=tau, dual_step=sigma,
            restart_calls=torch.where(restart, state.operator_calls, state.restart_calls),
            inner=torch.where(r, 0, state.inner), restarts=state.restarts + restart.long(), tracker=tracker,
        )
        return (x_new, y_new), self.detect(problem, state, k // self.restart_every)

    def _update_primal_weight(self, dx: Tensor, dy: Tensor, t: MapOutput, state: HalpernState,
                              restart: Tensor) -> HalpernState:
        """cuPDLPx's PID step on ``log |dy| - log |dx| - log omega`` at the instances that restart, safeguarded.

        The move ``T(z) - z_0`` is measured in the preconditioned variables; ``(dx, dy) = z - T(z)``
        gives the residuals at ``T(z)`` (`_residual_balance`). The step
        ``log omega += k_p e + k_i I + k_d (e - e_prev)`` is clipped to ``log primal_weight_change``
        and omega to a factor ``primal_weight_range`` of the initial omega, and it is taken only
        where the restart error made progress (``primal_weight_progress``); elsewhere omega and
        the controller's memory are kept. Where a move is 0 or beyond 1e12, or the relative
        residuals at ``T(z)`` differ by more than 1e8, the weight falls back to the one whose
        residuals were the most balanced so far and the controller's memory is cleared
        (cuPDLPx's safeguard).
        """
        if not self.update_primal_weight:
            return state
        balance = self._residual_balance(dx, dy, t, state)
        mx, my = t.x - state.anchor_x, t.y - state.anchor_y  # the move since the restart
        if state.col_scale is not None:
            mx, my = mx / state.col_scale, my / state.row_scale
        moves = torch.stack([mx.norm(dim=-1), my.norm(dim=-1)], -1)
        ok = ((moves > 1e-16) & (moves < 1e12)).all(-1) & (balance < 8)
        omega = state.primal_weight
        logs = moves.clamp_min(1e-16).log()
        error = logs[:, 1] - logs[:, 0] - torch.log(omega)
        integral = torch.add(error, state.weight_error_sum, alpha=self.primal_weight_smoothing)
        k_p, k_i, k_d = self.primal_weight_gains
        step = torch.add(k_p * error, integral, alpha=k_i)
        if k_d:
            step = torch.add(step, error - state.weight_last_error, alpha=k_d)
        max_step, log_range = math.log(self.primal_weight_change), math.log(self.primal_weight_range)
        initial = state.initial_primal_weight
        log_ratio = torch.log(omega / initial) + step.clamp(-max_step, max_step)
        updated = initial * torch.exp(log_ratio.clamp(-log_range, log_range))
        progress = state.restart_error <= self.primal_weight_progress * state.previous_restart_error
        move, reset = restart & ok & progress, restart & ~ok
        zero = torch.zeros_like(omega)
        omega = torch.where(move, updated, torch.where(reset, state.best_primal_weight, omega))
        best = restart & (balance < state.best_balance)
        return state._replace(
            primal_weight=omega,
            weight_error_sum=torch.where(move, integral, torch.where(reset, zero, state.weight_error_sum)),
            weight_last_error=torch.where(move, error, torch.where(reset, zero, state.weight_last_error)),
            best_primal_weight=torch.where(best, omega, state.best_primal_weight),
            best_balance=torch.where(best, balance, state.best_balance),
        )

    @staticmethod
    def _residual_balance(dx: Tensor, dy: Tensor, t: MapOutput, state: HalpernState) -> Tensor:
        """``|log10(relative dual residual / relative primal residual)|`` at ``T(z)``, ``(B,)``, from the prox step.

        The optimality residuals of ``T(z)`` are ``T^-1 (x - x+) + K^T (y+ - y)`` (x's) and
        ``S^-1 (y - y+) + K (x+ - x)`` (y's), relative to ``1 + |c|`` and ``1 + |d|``;
        ``(dx, dy) = z - T(z)``.
        """
        rx = torch.addcdiv(t.Kty - state.Kty, dx, state.primal_step).norm(dim=-1)
        ry = torch.addcdiv(t.Kx - state.Kx, dy, state.dual_step).norm(dim=-1)
        ratio = torch.stack([rx, ry], -1).div_(state.residual_scales).clamp_min_(torch.finfo(rx.dtype).tiny).log10_()
        return (ratio[:, 0] - ratio[:, 1]).abs()

    def output(self, problem, z, state):
        """``T(z)`` from the last step (the point where the KKT conditions are measured)."""
        return state.output_x, state.output_y
