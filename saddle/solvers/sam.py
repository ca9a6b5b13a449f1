"""Sharpness-aware minimization (SAM, ASAM) as a preset of the extragradient step.

SAM (Foret et al., arXiv 2010.01412) solves ``min_w max_{|e| <= rho} L(w + e)``:
the saddle problem ``f(w, e) = L(w + e)`` with ``e`` in `saddle.Ball` (rho). One
SAM step is an extragradient step with two changes: the extrapolation moves
only ``e``, starting from ``e = 0``, to the ball's linear maximizer
(`saddle.Ball.lmo` of ``F_e = -grad_e f``), and the update moves only ``w``,
with the gradient taken at the extrapolated point::

    g   = grad_e f(w, 0) = grad L(w)                       (1st operator call)
    e^  = rho T^2 g / |T g|                                 (the ball's lmo; T = I for SAM)
    w+  = base_step(w, grad_w f(w, e^)) = base_step(w, grad L(w + e^))   (2nd call)
    e+  = 0

``base_step`` is SGD with momentum, dampening, Nesterov and weight decay,
with ``torch.optim.SGD``'s semantics. ASAM (Kwon et al., arXiv 2102.11600)
takes the ball in the metric ``T_w = diag(|w| + eta)``: the perturbation is
``rho T_w^2 g / |T_w g|`` (the linear maximizer over ``{|T_w^-1 e| <= rho}``).

The perturbation comes from `sam_perturbation`, the same multi-tensor function
`saddle.optim.SAM` applies to a model's parameters, so the solver and the
optimizer compute the same iterates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from ..point import Point
from ..sets import Ball
from .base import Solver, register
from ._validate import check_flag, check_number, per_instance, positive_steps

__all__ = ["SAMState", "SAM", "ASAM", "sam_perturbation", "perturbation_norm"]


def perturbation_norm(scaled: Sequence[Tensor]) -> Tensor:
    """``|T g|``: the Euclidean norm of all the tensors together, a 0-d tensor (multi-tensor kernels)."""
    norms = torch._foreach_norm(list(scaled))
    return torch.linalg.vector_norm(torch.stack(norms)) if len(norms) > 1 else norms[0]


def sam_perturbation(grads: Sequence[Tensor], rho: float | Tensor, *, scales: Sequence[Tensor] | None = None,
                     norm: Tensor | None = None, add_to: Sequence[Tensor] | None = None) -> list[Tensor]:
    """SAM's (and ASAM's) perturbation ``e = rho T^2 g / |T g|``, 0 where ``T g = 0``.

    The maximizer of the linearized loss ``L(w) + <g, e>`` over the ball
    ``{|T^-1 e| <= rho}`` (``T = I``: SAM, Foret et al. eq. 2; ``T = diag(|w| + eta)``:
    ASAM, Kwon et al. eq. 9), computed with ``torch._foreach_*`` kernels. Used
    by both `SAM` (the solver) and `saddle.optim.SAM` (the optimizer).

    Args:
        grads: the gradient ``g`` as a list of tensors (a model's parameter
            gradients, or a solver's ``(B, G, k)`` view of one block).
        rho: the radius: a float, a 0-d tensor, or a tensor that broadcasts
            against ``norm`` (per instance, e.g. ``(B, 1, 1)``).
        scales: the diagonal of ``T``, tensors shaped like ``grads`` (None: ``T = I``).
        norm: ``|T g|``: a 0-d tensor, or per instance and group (e.g.
            ``(B, G, 1)``) for a batched block; default `perturbation_norm`
            over all of ``grads``.
        add_to: tensors shaped like ``grads`` to add ``e`` to in place
            (``w <- w + e`` with no buffer for ``e``), instead of returning ``e``.

    Returns:
        ``e`` as a list of tensors shaped like ``grads``, or ``add_to`` after the update.
    """
    grads = list(grads)
    scaled = grads if scales is None else torch._foreach_mul(grads, list(scales))
    if norm is None:
        norm = perturbation_norm(scaled)
    # rho / |T g|, and 0 where T g = 0 (rho / 0 = inf, or nan when rho = 0).
    factor = [(rho / norm).nan_to_num_(nan=0.0, posinf=0.0)] * len(grads)
    directions = scaled if scales is None else torch._foreach_mul(scaled, list(scales))  # T^2 g
    if add_to is None:
        return torch._foreach_mul(directions, factor)
    add_to = list(add_to)
    torch._foreach_addcmul_(add_to, directions, factor)
    return add_to


def _batched_perturbation(g: Tensor, rho: Tensor, scale: Tensor | None, groups: int) -> Tensor:
    """`sam_perturbation` per instance (and per micro-batch group): ``g (B, G k)``, ``rho (B,)`` -> ``(B, G k)``."""
    B = g.shape[0]
    shape = (B, groups, g.shape[-1] // groups)
    gv = g.reshape(shape)
    scales = None if scale is None else [scale.reshape(shape)]
    tg = gv if scale is None else gv * scales[0]
    norm = torch.linalg.vector_norm(tg, dim=-1, keepdim=True)  # (B, G, 1): one norm per instance and group
    (e,) = sam_perturbation([gv], rho.reshape(B, 1, 1), scales=scales, norm=norm)
    return e.reshape(g.shape)


class SAMState(NamedTuple):
    """State of `SAM` / `ASAM`; tensors are ``(B, ...)``.

    Attributes:
        momentum_buffer: the base SGD's momentum buffer ``(B, n)`` (None without momentum).
        step_size: ``(B,)`` the learning rate.
        operator_calls: ``(B,)`` evaluations of F (two per step).
        steps: ``(B,)`` steps taken.
    """

    momentum_buffer: Tensor | None
    step_size: Tensor
    operator_calls: Tensor
    steps: Tensor


@register("sam", category="sharpness", calls_per_step=2, calls_at_init=0)
@dataclass(frozen=True)
class SAM(Solver):
    """Sharpness-aware minimization: the extragradient step preset for ``min_w max_{e in Y} f(w, e)``.

    Foret, Kleiner, Mobahi and Neyshabur 2021 (arXiv 2010.01412); ASAM: Kwon et al. 2021
    (arXiv 2102.11600).
    Applies to two-block problems whose max player's set ``Y`` is bounded (it
    needs ``Y``'s linear maximizer): the sharpness problems of
    `problems.sharpness` (``f(w, e) = L(w + e)``, ``Y`` a `saddle.Ball`,
    optionally in micro-batch groups for m-sharpness), or any `SaddleProblem`
    with such a ``Y``. On a Euclidean `Ball` the perturbation is
    `sam_perturbation` (in the problem's adaptive geometry when it has one,
    given by the problem's `saddle.VIProblem.perturbation_scale`); on another
    bounded set it is ``Y.lmo(-grad_e f)``. See the module docstring for the step.

    Args:
        step_size: the learning rate, a float or ``(B,)`` tensor (default 0.1).
        momentum: mu of the base SGD step, as in ``torch.optim.SGD`` (the first
            step sets the buffer to the gradient d, later ones ``mu b + (1 - dampening) d``).
        dampening: as in ``torch.optim.SGD``.
        nesterov: Nesterov momentum, as in ``torch.optim.SGD``.
        weight_decay: adds ``weight_decay * w`` to the gradient, as in ``torch.optim.SGD``.

    Two operator calls per step. ``e`` is 0 after every step.
    """

    step_size: object = 0.1
    momentum: float = 0.0
    dampening: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self):
        check_number(self.name, "momentum", self.momentum, low=0, high=1, include_low=True)
        check_number(self.name, "dampening", self.dampening, low=0, high=1, include_low=True)
        check_number(self.name, "weight_decay", self.weight_decay, low=0, include_low=True)
        check_flag(self.name, "nesterov", self.nesterov)
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise ValueError(f"{self.name}: nesterov momentum needs momentum > 0 and dampening = 0")

    def check(self, problem) -> None:
        self._step_size(problem)
        if len(problem.z0) != 2:
            raise ValueError(f"{self.name} applies to min_w max_e problems with two blocks, got {len(problem.z0)}")
        if not problem.domain[1].bounded:
            raise ValueError(f"{self.name}: the max player's set must be bounded (a Ball for SAM), "
                             f"got {problem.domain[1]!r}")

    def _scale(self, problem, w: Tensor) -> Tensor | None:
        """The diagonal of the metric T_w, ``(B, n)``, or None (Euclidean): the problem's geometry."""
        return problem.perturbation_scale(w)

    def _step_size(self, problem) -> Tensor:
        return positive_steps(self.name, "step_size", self.step_size, problem)

    def init(self, problem, z0: Point) -> SAMState:
        eta = self._step_size(problem)
        self.check(problem)
        zeros = torch.zeros(problem.batch_size, dtype=torch.int64, device=problem.device)
        return SAMState(momentum_buffer=torch.zeros_like(z0[0]) if self.momentum else None, step_size=eta,
                        operator_calls=zeros, steps=zeros)

    def perturbation(self, problem, w: Tensor, Fe: Tensor) -> Tensor:
        """The extrapolated ``e^`` from ``F_e = -grad_e f(w, 0)``, shape ``(B, m)``."""
        Y = problem.domain[1]
        if isinstance(Y, Ball) and Y.p == 2:
            rho = per_instance(Y.radius, "Y.radius", self.name, problem)
            scale = self._scale(problem, w)
            if scale is not None and Y.groups > 1:
                scale = scale.repeat(1, Y.groups)
            return _batched_perturbation(-Fe, rho, scale, Y.groups)
        if self._scale(problem, w) is not None:
            raise ValueError(f"{self.name}: the adaptive geometry needs a Euclidean Ball, got {Y!r}")
        return Y.lmo(Fe)

    def step(self, problem, z: Point, state: SAMState) -> tuple[Point, SAMState]:
        w, e = z
        zero = torch.zeros_like(e)
        _, Fe = problem.F((w, zero))
        e_hat = self.perturbation(problem, w, Fe)
        d, _ = problem.F((w, e_hat))  # grad_w f(w, e^) = grad L(w + e^)
        if self.weight_decay:
            d = d + self.weight_decay * w
        buf = state.momentum_buffer
        if buf is not None:
            first = (state.steps == 0).unsqueeze(-1)
            buf = torch.where(first, d, self.momentum * buf + (1 - self.dampening) * d)
            d = d + self.momentum * buf if self.nesterov else buf
        w_next = w - state.step_size.unsqueeze(-1) * d
        return (w_next, zero), state._replace(momentum_buffer=buf, operator_calls=state.operator_calls + 2,
                                               steps=state.steps + 1)


@register("asam", category="sharpness", calls_per_step=2, calls_at_init=0)
@dataclass(frozen=True)
class ASAM(SAM):
    """Adaptive SAM (Kwon et al., arXiv 2102.11600): `SAM` in the metric ``T_w = diag(|w| + eta)``.

    The perturbation is ``rho T_w^2 g / |T_w g|``: the ball is stretched along
    large weights, which makes the sharpness it measures invariant to
    rescaling the weights. The max player's set must be a Euclidean `Ball`.

    Args:
        eta: the offset in ``T_w`` (the paper's eta). Default None: the
            problem's metric (`saddle.VIProblem.perturbation_scale`, e.g. an
            adaptive sharpness problem's ``|w| + eta``) where it has one, else
            ``|w| + 0.01``.
        step_size: as for `SAM`.
        momentum: as for `SAM`.
        dampening: as for `SAM`.
        nesterov: as for `SAM`.
        weight_decay: as for `SAM`.
    """

    eta: float | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.eta is not None:
            check_number(self.name, "eta", self.eta, low=0, include_low=True)

    def check(self, problem) -> None:
        super().check(problem)
        Y = problem.domain[1]
        if not (isinstance(Y, Ball) and Y.p == 2):
            raise ValueError(f"{self.name}: the max player's set must be a Euclidean Ball, got {Y!r}")
        if problem.z0[1].shape[-1] != Y.groups * problem.z0[0].shape[-1]:
            raise ValueError(f"{self.name}: the perturbation block must have the size of w (times the number of "
                             f"micro-batch groups); got w {tuple(problem.z0[0].shape)}, e {tuple(problem.z0[1].shape)}")

    #: eta when neither the setting nor the problem gives a metric (Kwon et al.'s value).
    default_eta = 0.01

    def _scale(self, problem, w: Tensor) -> Tensor:
        if self.eta is not None:
            return w.abs() + self.eta
        scale = problem.perturbation_scale(w)
        return w.abs() + self.default_eta if scale is None else scale
