"""Stochastic solvers for finite-sum VIs ``F = (1/n) sum_i F_i``: SEG, double-step SEG, loopless VR-EG, Prospect.

They draw minibatches from a `saddle.StochasticOperator` with its counter-based
seeded sampler (`saddle.stochastic.draw`): instance b's indices at its k-th
step depend only on its seed and k, so batched solves equal loops of single
solves and frozen instances draw nothing. On a problem whose operator is not a
`StochasticOperator` the sum has one term (n = 1, every "minibatch" is F):
then `SEG` is extragradient with a constant step.

**Accounting: operator_calls counts per-sample evaluations** ``F_i`` (a
minibatch of m costs m, a full pass n; Prospect's loss-only evaluation of
``l_j`` counts one). Divide by ``n`` for passes over the data, the unit
deterministic solvers count in on the same problem.

- `SEG` (``"seg"``): ``w = P(z - eta g(z; S))``, ``z+ = P(z - eta g(w; S'))`` with
  ``S'`` drawn independently or ``S' = S`` (same sample). With a constant step
  it converges linearly to a noise floor ``O(eta sigma^2 / (mu m))``, which
  shrinks with the minibatch size m.
- `DoubleStepSEG` (``"double_step_seg"``, Hsieh et al. 2020): extrapolation
  step ``gamma_t = gamma / (t + t0)^r_gamma`` larger than the update step
  ``eta_t = eta / (t + t0)^r_eta`` (r_gamma < r_eta): "explore aggressively,
  update conservatively"; converges (no floor) on strongly monotone problems.
- `VREG` (``"vr_eg"``, Alacaoglu and Malitsky 2022, loopless Algorithm 1): a
  snapshot ``w`` with its full ``F(w)``, refreshed with probability p per step::

      zbar = (1 - p) z + p w
      zh   = P(zbar - tau F(w))
      z+   = P(zbar - tau (F(w) + g(zh; S) - g(w; S)))
      w+   = z+ with probability p (one full pass), else w

  Linear convergence on strongly monotone finite sums with ``tau ~ sqrt(p) / L``.
  The full pass ``F(z+)`` is either computed only at the steps where some
  instance refreshes, which takes one host read per step to know (``host_check``),
  or at every step and kept where an instance refreshes (``torch.where``, no
  host read, n more evaluations of compute per step); the iterates are the same.
- `Prospect` (``"prospect"``, Mehta et al. 2024, Algorithm 1): for `problems.dro`
  problems: SAGA-style tables of per-sample losses and gradients, the weights q
  from the loss table in closed form, one learning rate.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import Point, where
from ..stochastic import StochasticOperator, draw, uniform
from ._validate import check_flag, check_integer, check_number, positive_steps, renamed_setting
from .base import Solver, register

__all__ = ["StochasticState", "SEG", "DoubleStepSEG", "VREG", "VREGState", "Prospect", "ProspectState"]


def _oracle(problem):
    """``(n, seeds (B,), sample(z, idx))`` of a finite-sum problem (n = 1 for a plain operator)."""
    op = problem.operator
    if isinstance(op, StochasticOperator):
        return op.n, op.seeds(problem.batch_size, problem.device), op.sample
    seeds = torch.zeros(problem.batch_size, dtype=torch.int64, device=problem.device)
    return 1, seeds, lambda z, idx: problem.F(z)


def _required_steps(value, name: str, solver: str, problem) -> Tensor:
    """A step setting as a checked ``(B,)`` tensor (`positive_steps`); stochastic solvers have no default."""
    if value is None:
        raise ValueError(f"{solver}: give {name} (stochastic solvers have no default step)")
    return positive_steps(solver, name, value, problem)


class StochasticState(NamedTuple):
    """State of `SEG` and `DoubleStepSEG`; tensors are ``(B, ...)``.

    Attributes:
        seeds: ``(B,)`` int64 per-instance sampler seeds.
        step_size: ``(B,)`` the (base) step.
        update_step: ``(B,)`` the base update step (`DoubleStepSEG`; else equal to step_size).
        operator_calls: ``(B,)`` per-sample evaluations so far.
        steps: ``(B,)`` steps taken (the sampler's counter).
    """

    seeds: Tensor
    step_size: Tensor
    update_step: Tensor
    operator_calls: Tensor
    steps: Tensor


@register("seg", category="stochastic", host_reads=True)
@dataclass(frozen=True)
class SEG(Solver):
    """Stochastic extragradient with independent or same-sample minibatches (Juditsky et al. 2011).

    ``w = P_Z(z - eta g(z; S))``, ``z+ = P_Z(z - eta g(w; S'))`` with ``g(.; S)`` the
    mean of ``F_i`` over the minibatch S of ``minibatch`` uniform indices, and
    ``S'`` a fresh draw (default; Juditsky, Nemirovski and Tauvel, "Solving
    variational inequalities with stochastic mirror-prox algorithm", 2011) or
    ``S`` itself (``same_sample=True``; Mishchenko et al., "Revisiting
    stochastic extragradient", AISTATS 2020; Gorbunov, Berard, Gidel and
    Loizou, AISTATS 2022, for the constant-step noise floor).

    Args:
        step_size: eta, a float or ``(B,)`` tensor (required).
        minibatch: m, the minibatch size.
        same_sample: reuse the extrapolation's minibatch for the update.
        batch_size: deprecated name of ``minibatch`` (a ``DeprecationWarning``; removed in the next release).

    ``2 m`` per-sample evaluations per step.
    """

    step_size: object = None
    minibatch: int = 1
    same_sample: bool = False
    batch_size: int | None = field(default=None, repr=False)  # deprecated name of minibatch

    def __post_init__(self):
        renamed_setting(self, "batch_size", "minibatch", 1)
        check_integer(self.name, "minibatch", self.minibatch, minimum=1)
        check_flag(self.name, "same_sample", self.same_sample)

    def check(self, problem) -> None:
        _required_steps(self.step_size, "step_size", self.name, problem)

    def init(self, problem, z0: Point) -> StochasticState:
        eta = _required_steps(self.step_size, "step_size", self.name, problem)
        _, seeds, _ = _oracle(problem)
        zeros = torch.zeros(problem.batch_size, dtype=torch.int64, device=problem.device)
        return StochasticState(seeds, eta, eta, zeros, zeros)

    def _steps(self, state: StochasticState) -> tuple[Tensor, Tensor]:
        return state.step_size, state.step_size

    def step(self, problem, z: Point, state: StochasticState) -> tuple[Point, StochasticState]:
        n, _, sample = _oracle(problem)
        m = self.minibatch
        gamma, eta = self._steps(state)
        first = draw(state.seeds, state.steps, n, m, stream=0)
        w = problem.prox(z, sample(z, first), gamma)
        second = first if self.same_sample else draw(state.seeds, state.steps, n, m, stream=1)
        z_next = problem.prox(z, sample(w, second), eta)
        cost = 2 * (m if n > 1 else 1)
        return z_next, state._replace(operator_calls=state.operator_calls + cost, steps=state.steps + 1)


@register("double_step_seg", category="stochastic", host_reads=True)
@dataclass(frozen=True)
class DoubleStepSEG(SEG):
    """Double step-size stochastic extragradient (Hsieh, Iutzeler, Malick and Mertikopoulos 2020).

    ``w = P_Z(z - gamma_t g(z; S))``, ``z+ = P_Z(z - eta_t g(w; S'))`` with independent
    minibatches and ``gamma_t = gamma / (t + t0)^r_gamma >= eta_t = eta / (t + t0)^r_eta``.

    Args:
        step_size: gamma, the base extrapolation step (required).
        update_step: eta, the base update step (default: step_size).
        extrapolation_decay: r_gamma (default 1/3).
        update_decay: r_eta > r_gamma (default 2/3).
        offset: t0 >= 1.
        minibatch: m, the minibatch size.
        same_sample: reuse the extrapolation's minibatch (the paper draws independently).
        batch_size: deprecated name of ``minibatch`` (removed in the next release).
    """

    update_step: object = None
    extrapolation_decay: float = 1.0 / 3.0
    update_decay: float = 2.0 / 3.0
    offset: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        for key in ("extrapolation_decay", "update_decay"):
            check_number(self.name, key, getattr(self, key), low=0, high=1, include_low=True, include_high=True)
        if self.update_decay < self.extrapolation_decay:
            raise ValueError(f"{self.name}: update_decay must be >= extrapolation_decay (update conservatively)")
        check_number(self.name, "offset", self.offset, low=1, include_low=True)

    def init(self, problem, z0: Point) -> StochasticState:
        state = super().init(problem, z0)
        eta = state.step_size if self.update_step is None else \
            _required_steps(self.update_step, "update_step", self.name, problem)
        return state._replace(update_step=eta)

    def _steps(self, state: StochasticState) -> tuple[Tensor, Tensor]:
        t = state.steps.to(state.step_size.dtype) + self.offset
        return state.step_size / t**self.extrapolation_decay, state.update_step / t**self.update_decay


class VREGState(NamedTuple):
    """State of `VREG`; tensors are ``(B, ...)``.

    Attributes:
        seeds: ``(B,)`` int64 per-instance sampler seeds.
        snapshot: the snapshot point w.
        F_snapshot: the full ``F(w)``.
        step_size: ``(B,)`` tau.
        operator_calls: ``(B,)`` per-sample evaluations so far.
        steps: ``(B,)`` steps taken.
        refreshes: ``(B,)`` snapshot refreshes (full passes after the first).
    """

    seeds: Tensor
    snapshot: Point
    F_snapshot: Point
    step_size: Tensor
    operator_calls: Tensor
    steps: Tensor
    refreshes: Tensor


@register("vr_eg", category="stochastic", host_reads=True)
@dataclass(frozen=True)
class VREG(Solver):
    """Loopless variance-reduced extragradient (Alacaoglu and Malitsky 2022, Algorithm 1).

    See the module docstring for the step.

    Args:
        step_size: tau, a float or ``(B,)`` tensor (required; theory: ``tau = gamma sqrt(p) / L``
            with gamma < 1 and L the mean-square Lipschitz constant of the ``F_i``).
        minibatch: m, the minibatch size of the correction ``g(zh; S) - g(w; S)``.
        probability: p, the snapshot refresh probability (default ``min(1, m / n)``:
            one full pass per n/m steps, so a step costs ``O(m)`` on average).
        host_check: how a step learns whether to compute the full pass ``F(z+)``.
            True: read on the host whether any instance refreshes (one host
            synchronization per step) and compute it only then. False: compute
            it at every step and keep it where an instance refreshes (no host
            synchronization; n more per-sample evaluations of compute per step,
            not counted in ``operator_calls``, which counts what the method
            uses). The iterates and counts are the same either way. None
            (default): False when ``p = 1`` (every step refreshes), or off the
            CPU when the chance that some instance refreshes at a step,
            ``1 - (1 - p)^B``, is at least 1/2 (the full pass runs on most steps
            anyway); True otherwise (on the CPU a host read costs nothing).
        batch_size: deprecated name of ``minibatch`` (a ``DeprecationWarning``; removed in the next release).

    Per-sample evaluations: n at init (``F(w_0)``), then ``2 m`` per step plus n per refresh.
    """

    step_size: object = None
    minibatch: int = 1
    probability: float | None = None
    host_check: bool | None = None
    batch_size: int | None = field(default=None, repr=False)  # deprecated name of minibatch

    def __post_init__(self):
        renamed_setting(self, "batch_size", "minibatch", 1)
        check_integer(self.name, "minibatch", self.minibatch, minimum=1)
        check_number(self.name, "probability", self.probability, low=0, high=1, include_high=True, allow_none=True)
        check_flag(self.name, "host_check", self.host_check, allow_none=True)

    def _p(self, n: int) -> float:
        return min(1.0, self.minibatch / n) if self.probability is None else float(self.probability)

    def _host_check(self, p: float, batch_size: int, device: torch.device) -> bool:
        """Whether a step reads on the host if some instance refreshes (see ``host_check``)."""
        if p >= 1:
            return False  # every instance refreshes at every step: nothing to ask
        if self.host_check is not None:
            return self.host_check
        return device.type == "cpu" or 1 - (1 - p) ** batch_size < 0.5

    def check(self, problem) -> None:
        _required_steps(self.step_size, "step_size", self.name, problem)

    def init(self, problem, z0: Point) -> VREGState:
        tau = _required_steps(self.step_size, "step_size", self.name, problem)
        n, seeds, _ = _oracle(problem)
        zeros = torch.zeros(problem.batch_size, dtype=torch.int64, device=problem.device)
        return VREGState(seeds, z0, problem.F(z0), tau, zeros + n, zeros, zeros)

    def step(self, problem, z: Point, state: VREGState) -> tuple[Point, VREGState]:
        n, _, sample = _oracle(problem)
        m, p = self.minibatch, self._p(n)
        tau, w, Fw = state.step_size, state.snapshot, state.F_snapshot
        zbar = tuple((1 - p) * zi + p * wi for zi, wi in zip(z, w))
        zh = problem.prox(zbar, Fw, tau)
        idx = draw(state.seeds, state.steps, n, m, stream=0)
        g = tuple(a + b - c for a, b, c in zip(Fw, sample(zh, idx), sample(w, idx)))
        z_next = problem.prox(zbar, g, tau)
        refresh = uniform(state.seeds, state.steps, stream=2, dtype=tau.dtype) < p
        cost = 2 * (m if n > 1 else 1)
        # The full pass: only when some instance refreshes (a host read), or at every step, kept by the
        # mask (no read). The same iterates: the instances are independent in the batched F.
        if not self._host_check(p, tau.shape[0], tau.device) or bool(refresh.any()):
            w = where(refresh, z_next, w)
            Fw = where(refresh, problem.F(z_next), Fw)
        return z_next, state._replace(snapshot=w, F_snapshot=Fw,
                                      operator_calls=state.operator_calls + cost + n * refresh.long(),
                                      steps=state.steps + 1, refreshes=state.refreshes + refresh.long())


class ProspectState(NamedTuple):
    """State of `Prospect`; tensors are ``(B, ...)``.

    Attributes:
        seeds: ``(B,)`` int64 per-instance sampler seeds.
        losses: ``(B, n)`` the loss table.
        gradients: ``(B, n, d)`` the gradient table (ridge term included).
        table_weights: ``(B, n)`` rho, the weight each table gradient entered the average with.
        average: ``(B, d)`` ``sum_i rho_i G_i``.
        step_size: ``(B,)`` the learning rate.
        operator_calls: ``(B,)`` per-sample evaluations (n at init, 2 per step).
        steps: ``(B,)`` steps taken.
    """

    seeds: Tensor
    losses: Tensor
    gradients: Tensor
    table_weights: Tensor
    average: Tensor
    step_size: Tensor
    operator_calls: Tensor
    steps: Tensor


@register("prospect", category="stochastic", host_reads=True)
@dataclass(frozen=True)
class Prospect(Solver):
    """Prospect (Mehta, Roulet, Pillutla and Harchaoui, ICLR 2024, Algorithm 1) for DRO problems.

    For ``min_theta max_{q in Q} sum_i q_i (l_i(theta) + mu/2 |theta|^2) - nu D(q)``
    (`problems.dro.DROProblem`; spectral risks with smoothing nu > 0 are its
    setting; any ambiguity set whose weights have a closed form works). With
    uniform indices i, j per step, tables ``l_i``, ``G_i``, ``rho_i`` and
    ``gbar = sum_i rho_i G_i``::

        g      = grad l_i(theta) + mu theta
        v      = n q_i g - n rho_i G_i + gbar           (unbiased for sum_k q_k grad_k)
        theta+ = theta - eta v
        l_j    = l_j(theta+);  q+ = argmax_q <q, l> - nu D(q)     (the problem's `weights`)
        gbar  += q_i g - rho_i G_i;  G_i = g;  rho_i = q_i

    Linear convergence for smooth losses and nu, mu > 0, with one learning rate.

    Args:
        step_size: eta, a float or ``(B,)`` tensor (required).

    The iterate's q block is the current weights ``q``. Per-sample
    evaluations: n at init (the tables), 2 per step (``grad l_i`` and ``l_j``).
    """

    step_size: object = None

    def check(self, problem) -> None:
        _required_steps(self.step_size, "step_size", self.name, problem)
        for attr in ("weights", "sample_loss_and_gradient", "n"):
            if not hasattr(problem, attr):
                raise TypeError(f"{self.name} needs a DRO problem (problems.dro.DROProblem), got "
                                f"{type(problem).__name__}")

    def init(self, problem, z0: Point) -> ProspectState:
        self.check(problem)
        eta = _required_steps(self.step_size, "step_size", self.name, problem)
        theta = z0[0]
        B, n = problem.batch_size, problem.n
        all_idx = torch.arange(n, device=problem.device).expand(B, n)
        losses, grads = problem.sample_loss_and_gradient(theta, all_idx)
        grads = grads + self._mu(problem, theta).unsqueeze(-1) * theta.unsqueeze(1)
        q = problem.weights(losses)
        average = torch.einsum("bn,bnd->bd", q, grads)
        _, seeds, _ = _oracle(problem)
        zeros = torch.zeros(B, dtype=torch.int64, device=problem.device)
        return ProspectState(seeds, losses, grads, q, average, eta, zeros + n, zeros)

    @staticmethod
    def _mu(problem, like: Tensor) -> Tensor:
        return torch.as_tensor(problem.mu, dtype=like.dtype, device=like.device).reshape(-1, 1)

    def step(self, problem, z: Point, state: ProspectState) -> tuple[Point, ProspectState]:
        theta, _ = z
        n = problem.n
        q = problem.weights(state.losses)
        i = draw(state.seeds, state.steps, n, 1, stream=0)
        j = draw(state.seeds, state.steps, n, 1, stream=1)
        _, g = problem.sample_loss_and_gradient(theta, i)
        g = g.squeeze(1) + self._mu(problem, theta) * theta
        ar = torch.arange(theta.shape[0], device=theta.device)
        G_i = state.gradients[ar, i.squeeze(-1)]
        q_i, rho_i = q.gather(-1, i), state.table_weights.gather(-1, i)
        v = n * q_i * g - n * rho_i * G_i + state.average
        theta_next = theta - state.step_size.unsqueeze(-1) * v
        l_j, _ = problem.sample_loss_and_gradient(theta_next, j)
        losses = state.losses.scatter(-1, j, l_j)
        average = state.average + q_i * g - rho_i * G_i
        gradients = state.gradients.clone()
        gradients[ar, i.squeeze(-1)] = g
        table_weights = state.table_weights.scatter(-1, i, q_i)
        q_next = problem.weights(losses)
        return (theta_next, q_next), state._replace(
            losses=losses, gradients=gradients, table_weights=table_weights, average=average,
            operator_calls=state.operator_calls + 2, steps=state.steps + 1)
