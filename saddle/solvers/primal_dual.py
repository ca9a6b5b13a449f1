"""Primal-dual hybrid gradient (Chambolle and Pock 2011) with the PDLP machinery.

For ``min_{x in X} max_{y in Y} g(x) + <K x, y> - h*(y)`` (a `BilinearProblem`)::

    x+ = argmin_{u in X} g(u) + <K^T y, u> + |u - x|^2 / (2 tau)
    y+ = argmin_{v in Y} h*(v) - <K (2 x+ - x), v> + |v - y|^2 / (2 sigma)

with ``tau = eta / omega`` and ``sigma = eta * omega`` (omega: the primal weight;
``tau sigma |K|^2 < 1`` for a constant step). On top of the plain iteration,
three pieces from PDLP (Applegate et al. 2021, arXiv 2106.04756 and
2105.12715), each of which can be switched off:

- **adaptive steps**: a trial step eta is accepted when
  ``eta <= |z+ - z|_omega^2 / (2 |(y+ - y)^T K (x+ - x)|)`` with
  ``|z|_omega^2 = omega |x|^2 + |y|^2 / omega``; the next trial is
  ``min((1 - (k+1)^-0.3) eta_bar, (1 + (k+1)^-0.6) eta)``.
- **adaptive restarts**: every ``restart_every`` iterations the current point
  and the step-weighted average since the last restart are compared by their
  natural residual ``|z - P_Z(z - F(z))|`` (the KKT error of the saddle
  problem, as cuPDLP restarts on the KKT error); the better one becomes the
  restart candidate, and the method restarts from it on sufficient decay
  (``<= 0.2 x`` the residual at the last restart), on necessary decay
  (``<= 0.8 x``) without progress since the previous check, or when the
  current restart period is longer than 0.36 of all iterations.
- **primal weight**: at each restart
  ``log omega = 0.5 log(|dy| / |dx|) + 0.5 log omega`` with dx, dy the moves
  since the previous restart.

Each iteration costs one product with K and one with K^T: one operator
evaluation. The averages of ``K x`` and ``K^T y`` are kept alongside the
averages of x and y (K is linear), so restart checks cost no products. The
reported point (`PDHG.output`) is the current point or the average since the
last restart, whichever has the smaller residual, as PDLP reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..stepsize import _as_batch
from .base import Solver, register

__all__ = ["PDHG", "PDHGState"]


class PDHGState(NamedTuple):
    """State of `PDHG`; tensors are ``(B, ...)``.

    Attributes:
        Kx: ``K x`` at the current x, ``(B, m)``.
        Kty: ``K^T y`` at the current y, ``(B, n)``.
        step_size: ``(B,)`` the (trial) step eta.
        primal_weight: ``(B,)`` omega.
        sum_x, sum_y, sum_Kx, sum_Kty: step-weighted sums since the last restart.
        weight: ``(B,)`` the sum of the steps since the last restart.
        restart_x, restart_y: the point of the last restart.
        restart_residual: ``(B,)`` the residual at the last restart.
        previous_candidate: ``(B,)`` the candidate's residual at the previous check (inf after a restart).
        inner: ``(B,)`` iterations since the last restart.
        restarts: ``(B,)`` restarts so far.
        iteration: iterations so far (the same for every running instance).
        operator_calls: ``(B,)`` operator evaluations (one K and one K^T product each).
    """

    Kx: Tensor
    Kty: Tensor
    step_size: Tensor
    primal_weight: Tensor
    sum_x: Tensor
    sum_y: Tensor
    sum_Kx: Tensor
    sum_Kty: Tensor
    weight: Tensor
    restart_x: Tensor
    restart_y: Tensor
    restart_residual: Tensor
    previous_candidate: Tensor
    inner: Tensor
    restarts: Tensor
    iteration: int
    operator_calls: Tensor


def _matvec(K, x: Tensor) -> Tensor:
    """``K x`` for a `saddle.coupling.Bilinear` coupling (a module function so tests can count products)."""
    return K.mv(x)


def _rmatvec(K, y: Tensor) -> Tensor:
    """``K^T y``."""
    return K.rmv(y)


def _abs_max(K) -> Tensor:
    """``max_ij |K_ij|`` per instance, ``(B,)`` (``(1,)`` for a shared or sparse K)."""
    if K.sparse:
        return K.K.values().abs().amax().reshape(1)
    return K.K.abs().amax(dim=(-2, -1))


@register("pdhg")
@dataclass(frozen=True)
class PDHG(Solver):
    """Primal-dual hybrid gradient with adaptive steps, restarts and primal weights (see the module docstring).

    Args:
        step_size: None (adaptive steps from ``1 / max |K_ij|``, or
            ``0.9 / |K|_2`` when ``adaptive_step=False``), a float or a ``(B,)``
            tensor (the initial step when adaptive, else the constant step eta,
            which needs ``eta < 1 / |K|_2``).
        adaptive_step: PDLP's adaptive step rule.
        restarts: adaptive restarts to the current or the average point.
        primal_weight: the initial omega (float or ``(B,)``; default 1).
        update_primal_weight: PDLP's primal-weight update at restarts.
        restart_every: iterations between restart checks.
        sufficient, necessary, artificial: the restart thresholds (cuPDLP's 0.2, 0.8, 0.36).

    Applies to `BilinearProblem`s whose terms have closed-form prox steps on
    their sets (zero and linear terms on every set; quadratic terms on boxes,
    diagonal, or on R^n). Projections are Euclidean whatever the sets' geometry.
    """

    step_size: object = None
    adaptive_step: bool = True
    restarts: bool = True
    primal_weight: object = 1.0
    update_primal_weight: bool = True
    restart_every: int = 64
    sufficient: float = 0.2
    necessary: float = 0.8
    artificial: float = 0.36

    def check(self, problem):
        from ..problem import BilinearProblem

        if not isinstance(problem, BilinearProblem):
            raise ValueError(f"pdhg needs a BilinearProblem (min_x max_y g(x) + <Kx, y> - h*(y)), got "
                             f"{type(problem).__name__}; use extragradient for general problems")
        X, Y = problem.domain
        for term, S, name in ((problem.g, X, "g"), (problem.h_conj, Y, "h_conj")):
            try:
                term.prox(problem.z0[0 if name == "g" else 1], 1.0, S)
            except NotImplementedError as err:
                raise ValueError(f"pdhg needs a closed-form prox of {name}: {err}") from err
        if not (isinstance(self.restart_every, int) and self.restart_every >= 1):
            raise ValueError(f"pdhg: restart_every must be a positive integer, got {self.restart_every!r}")
        if not 0 < self.sufficient <= self.necessary < 1:
            raise ValueError("pdhg: need 0 < sufficient <= necessary < 1, got "
                             f"sufficient={self.sufficient!r}, necessary={self.necessary!r}")
        if not 0 < self.artificial < 1:
            raise ValueError(f"pdhg: artificial must be in (0, 1), got {self.artificial!r}")

    # -- the saddle problem's pieces -------------------------------------------------------------
    @staticmethod
    def _residual(problem, x, y, Kx, Kty) -> Tensor:
        """The natural residual ``|z - prox(z - F(z))|`` from cached products, shape ``(B,)``."""
        g_smooth, h_smooth = problem.g.split()[0], problem.h_conj.split()[0]
        rx = x - problem.block_prox(0, x, g_smooth.grad(x) + Kty, 1.0)
        ry = y - problem.block_prox(1, y, h_smooth.grad(y) - Kx, 1.0)
        return torch.sqrt(rx.square().sum(-1) + ry.square().sum(-1))

    def init(self, problem, z0):
        x, y = z0
        K = problem.coupling
        B, dev, dt = problem.batch_size, problem.device, problem.dtype
        if self.step_size is None:
            if self.adaptive_step:
                eta = 1.0 / _abs_max(K)
            else:
                eta = 0.9 / K.norm()
            eta = eta.to(dt).expand(B).clone()
        else:
            eta = _as_batch(self.step_size, B, problem, "step_size")
        omega = _as_batch(self.primal_weight, B, problem, "primal_weight")
        Kx, Kty = _matvec(K, x), _rmatvec(K, y)
        zeros = torch.zeros(B, dtype=dt, device=dev)
        return PDHGState(
            Kx=Kx, Kty=Kty, step_size=eta, primal_weight=omega,
            sum_x=torch.zeros_like(x), sum_y=torch.zeros_like(y), sum_Kx=torch.zeros_like(Kx),
            sum_Kty=torch.zeros_like(Kty), weight=zeros,
            restart_x=x, restart_y=y, restart_residual=self._residual(problem, x, y, Kx, Kty),
            previous_candidate=torch.full((B,), torch.inf, dtype=dt, device=dev),
            inner=torch.zeros(B, dtype=torch.int64, device=dev),
            restarts=torch.zeros(B, dtype=torch.int64, device=dev),
            iteration=0,
            operator_calls=torch.ones(B, dtype=torch.int64, device=dev),
        )

    def step(self, problem, z, state):
        x, y = z
        X, Y = problem.domain
        K = problem.coupling
        eta, omega = state.step_size, state.primal_weight
        tau, sigma = (eta / omega).unsqueeze(-1), (eta * omega).unsqueeze(-1)

        x_new = problem.g.prox(x - tau * state.Kty, tau.squeeze(-1), X)
        Kx_new = _matvec(K, x_new)
        y_new = problem.h_conj.prox(y + sigma * (2 * Kx_new - state.Kx), sigma.squeeze(-1), Y)
        Kty_new = _rmatvec(K, y_new)

        k = state.iteration + 1
        if self.adaptive_step:
            dx, dy = x_new - x, y_new - y
            moved = omega * dx.square().sum(-1) + dy.square().sum(-1) / omega
            interaction = 2 * (dy * (Kx_new - state.Kx)).sum(-1).abs()
            limit = torch.where(interaction > 0, moved / interaction, torch.full_like(moved, torch.inf))
            accept = eta <= limit
            next_eta = torch.minimum((1 - (k + 1) ** -0.3) * limit, (1 + (k + 1) ** -0.6) * eta)
        else:
            accept = torch.ones_like(eta, dtype=torch.bool)
            next_eta = eta

        def keep(new, old):
            return torch.where(accept.reshape((-1,) + (1,) * (new.dim() - 1)), new, old)

        x, y = keep(x_new, x), keep(y_new, y)
        Kx, Kty = keep(Kx_new, state.Kx), keep(Kty_new, state.Kty)
        w = torch.where(accept, eta, torch.zeros_like(eta))
        col = w.unsqueeze(-1)
        state = state._replace(
            Kx=Kx, Kty=Kty, step_size=next_eta,
            sum_x=state.sum_x + col * x, sum_y=state.sum_y + col * y,
            sum_Kx=state.sum_Kx + col * Kx, sum_Kty=state.sum_Kty + col * Kty,
            weight=state.weight + w, inner=state.inner + accept.long(),
            iteration=k, operator_calls=state.operator_calls + 1,
        )
        if self.restarts and k % self.restart_every == 0:
            (x, y), state = self._restart(problem, x, y, state)
        return (x, y), state

    def output(self, problem, z, state):
        """The current point or the average since the last restart, whichever has the smaller residual."""
        x, y = z
        (ax, ay, aKx, aKty), use_avg, _ = self._candidate(problem, x, y, state)
        u = use_avg.unsqueeze(-1)
        return torch.where(u, ax, x), torch.where(u, ay, y)

    def _candidate(self, problem, x, y, state: PDHGState):
        """The average point (with its products), whether it beats the current one, and the better residual."""
        has_avg = (state.weight > 0).unsqueeze(-1)
        denom = state.weight.clamp_min(torch.finfo(state.weight.dtype).tiny).unsqueeze(-1)

        def avg(s, current):
            return torch.where(has_avg, s / denom, current)

        average = (avg(state.sum_x, x), avg(state.sum_y, y), avg(state.sum_Kx, state.Kx), avg(state.sum_Kty, state.Kty))
        r_cur = self._residual(problem, x, y, state.Kx, state.Kty)
        r_avg = self._residual(problem, *average)
        return average, r_avg < r_cur, torch.minimum(r_avg, r_cur)

    def _restart(self, problem, x, y, state: PDHGState):
        """Restart to the current or the average point where the criteria hold (per instance)."""
        (ax, ay, aKx, aKty), use_avg, r_cand = self._candidate(problem, x, y, state)
        total = torch.as_tensor(state.iteration, dtype=state.weight.dtype, device=state.weight.device)
        restart = (r_cand <= self.sufficient * state.restart_residual) \
            | ((r_cand <= self.necessary * state.restart_residual) & (r_cand > state.previous_candidate)) \
            | (state.inner.to(state.weight.dtype) >= self.artificial * total)

        u = use_avg.unsqueeze(-1)
        cx, cy = torch.where(u, ax, x), torch.where(u, ay, y)
        cKx, cKty = torch.where(u, aKx, state.Kx), torch.where(u, aKty, state.Kty)
        omega = state.primal_weight
        if self.update_primal_weight:
            dx = (cx - state.restart_x).norm(dim=-1)
            dy = (cy - state.restart_y).norm(dim=-1)
            tiny = torch.finfo(dx.dtype).eps
            ok = (dx > tiny) & (dy > tiny)
            smoothed = torch.exp(0.5 * torch.log(dy.clamp_min(tiny) / dx.clamp_min(tiny)) + 0.5 * torch.log(omega))
            omega = torch.where(restart & ok, smoothed, omega)

        r = restart.unsqueeze(-1)
        zero = torch.zeros_like(state.weight)
        new_state = state._replace(
            Kx=torch.where(r, cKx, state.Kx), Kty=torch.where(r, cKty, state.Kty), primal_weight=omega,
            sum_x=torch.where(r, torch.zeros_like(x), state.sum_x), sum_y=torch.where(r, torch.zeros_like(y), state.sum_y),
            sum_Kx=torch.where(r, torch.zeros_like(cKx), state.sum_Kx),
            sum_Kty=torch.where(r, torch.zeros_like(cKty), state.sum_Kty),
            weight=torch.where(restart, zero, state.weight),
            restart_x=torch.where(r, cx, state.restart_x), restart_y=torch.where(r, cy, state.restart_y),
            restart_residual=torch.where(restart, r_cand, state.restart_residual),
            previous_candidate=torch.where(restart, torch.full_like(r_cand, torch.inf), r_cand),
            inner=torch.where(restart, torch.zeros_like(state.inner), state.inner),
            restarts=state.restarts + restart.long(),
        )
        return (torch.where(r, cx, x), torch.where(r, cy, y)), new_state
