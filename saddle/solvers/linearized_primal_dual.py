"""Linearized primal-dual methods for convex-strongly-concave problems: LPD, ALPD and inexact ALPD.

Khalafi and Boob, "Accelerated Primal-Dual Methods for Convex-Strongly-Concave
Saddle Point Problems", ICML 2023 (arXiv 2209.04604), for a
`saddle.CompositeSaddleProblem`::

    min_{x in X} max_{y in Y}  g(x) + phi(x, y) - h(y),

g convex with an L_g-Lipschitz gradient (plus, optionally, a prox-friendly
part r_g, handled by `CompositeSaddleProblem.block_prox`), h mu-strongly
convex, phi convex-concave with ``|grad_x phi(x, y) - grad_x phi(x', y)| <= L_xx |x - x'|``,
``|grad_x phi(x, y) - grad_x phi(x, y')| <= L_xy |y - y'|``,
``|grad_y phi(x, y) - grad_y phi(x', y)| <= L_xy |x - x'|`` and
``|grad_y phi(x, y) - grad_y phi(x, y')| <= L_yy |y - y'|``.

The three methods share one iteration (t = 0, 1, ...; ``x_bar_0 = x_0``,
``v_0 = grad_y phi(x_0, y_0)``)::

    x_low   = (1 - q_t) x_bar_t + q_t x_t                                   (ALPD; LPD: x_low = x_t)
    y_{t+1} = argmin_{y in Y} -<v_t, y> + h(y) + tau_t/2 |y - y_t|^2          (dual prox step)
    x_{t+1} = argmin_{x in X} <grad g(x_low) + grad_x phi(x_t, y_{t+1}), x> + r_g(x) + eta_t/2 |x - x_t|^2
    v_{t+1} = grad_y phi(z_{t+1}) + theta_{t+1} (grad_y phi(z_{t+1}) - grad_y phi(z_t))
    x_bar_{t+1} = (1 - q_t) x_bar_t + q_t x_{t+1},   y_bar_{t+1} likewise

with weights gamma_t, ``theta_{t+1} = gamma_t / gamma_{t+1}`` and
``q_t = gamma_t / Gamma_t`` (``Gamma_t = gamma_0 + ... + gamma_t``), so that
``(x_bar_k, y_bar_k)`` is the gamma-weighted average of ``z_1, ..., z_k``: the
point the gap bounds are about, and what `output` reports. Inexact ALPD keeps
``phi(., y_{t+1})`` in the primal step instead of linearizing it::

    x_{t+1} ~ argmin_{x in X} <grad g(x_low), x> + phi(x, y_{t+1}) + r_g(x) + eta_t/2 |x - x_t|^2,

solved approximately by N_t steps of accelerated (proximal) gradient descent
for strongly convex functions, warm-started at x_t (the subproblem is
eta_t-strongly convex with an (L_xx + eta_t)-Lipschitz gradient); it needs
one gradient of g per outer iteration but N_t gradients of phi.

Where h has no closed-form prox on Y (e.g. a dense quadratic on a box), its
smooth part is linearized as the paper allows:
``y_{t+1} = argmin_{y in Y} -<v_t, y> + <grad h_s(y_t), y> + r_h(y) + tau_t/2 |y - y_t|^2``
(``dual_step="linearized"``; ``L_h`` enters the schedule).

Schedules (all per instance, from the problem's constants or the settings)::

    gamma_t = t + t_0                        theta_{t+1} = gamma_t / gamma_{t+1}
    tau_t   = mu (gamma_t - 1) / 2           (prox dual step)
            = mu (gamma_t + 1) / 2           (linearized dual step)
    eta_t   = L_g + L_xx + c L_xy^2 / (rho mu gamma_t)           (LPD)
            = 2 L_g / (t + 1) + L_xx + c L_xy^2 / (rho mu gamma_t) (ALPD; inexact ALPD without L_xx)

with c = 2 (prox dual step) or 4 (linearized), rho = 1 if L_yy = 0 else 1/2,
and ``t_0 = max(2, 1 + 8 L_yy / mu)`` (prox) or
``t_0 = max(2, max(4 L_h, 16 L_yy) / mu - 1)`` (linearized). These satisfy
the conditions of the paper's gap analysis:
``gamma_{t+1} tau_{t+1} <= gamma_t (tau_t + mu)`` (``gamma_t tau_t`` with
``tau - mu`` for the linearized step), ``gamma_t eta_t`` nonincreasing up to
the ``(L_g +) L_xx`` part, and
``eta_t >= L_xx + a_t L_g + theta_{t+1} L_xy^2 / (rho tau'_{t+1})`` with
``a_t = 1`` (LPD) or ``q_t`` (ALPD) and ``tau'`` the dual curvature left
after the L_yy and L_h terms. The resulting bounds on the gap
``max_y L(x_bar_k, y) - min_x L(x, y_bar_k)`` over bounded X, Y of diameters
D_X, D_Y are, up to constants,

- LPD:   ``(L_g + L_xx) D_X^2 / k + L_xy^2 D_X^2 / (mu k^2) + mu D_Y^2 / k^2``
- ALPD:  ``L_g D_X^2 / k^2 + L_xx D_X^2 / k + L_xy^2 D_X^2 / (mu k^2) + mu D_Y^2 / k^2``,
  optimal for semi-linear (L_xx = 0) couplings;
- inexact ALPD: the ALPD bound without the L_xx term, at the price of N_t
  coupling gradients per iteration.

The L_g term of LPD is the suboptimal dependence that ALPD removes. The
inner steps of inexact ALPD follow
``N_t = max(1, ceil(p ln(t + 2) / -ln(1 - 1/sqrt(kappa_t))))``,
``kappa_t = (L_xx + eta_t) / eta_t``, capped by default at 10 (see `InexactALPD`).

Accounting. ``primal_gradient_calls``: gradients of g's smooth part (one per
iteration, for all three methods). ``coupling_gradient_calls``: gradients
``grad_x phi`` (one per iteration for LPD and ALPD, N_t for inexact ALPD).
``coupling_y_gradient_calls``: gradients ``grad_y phi`` (one at `init`, one per
iteration). ``dual_gradient_calls``: gradients of h's smooth part (linearized
dual step only). ``operator_calls``: the number of full evaluations of
``F = (grad g + grad_x phi, grad h - grad_y phi)`` these amount to, counting a
``grad_x phi`` and a ``grad_y phi`` as one evaluation: the larger of the two
coupling counts. For a bilinear coupling that is one product with K and one
with K^T, as `PDHG` counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real
from typing import NamedTuple

import torch
from torch import Tensor

from ..point import column
from .base import Solver, register

__all__ = ["LinearizedPDState", "LPD", "ALPD", "InexactALPD"]


class Constants(NamedTuple):
    """The per-instance constants of the schedules, ``(B,)`` tensors."""

    mu: Tensor
    lipschitz_g: Tensor
    lipschitz_xx: Tensor
    lipschitz_xy: Tensor
    lipschitz_yy: Tensor
    lipschitz_h: Tensor
    t0: Tensor
    rho: Tensor


class LinearizedPDState(NamedTuple):
    """State of `LPD`, `ALPD` and `InexactALPD`; tensors are ``(B, ...)``.

    Attributes:
        gy: ``grad_y phi(x_t, y_t)``, ``(B, m)``.
        v: the extrapolated dual gradient v_t, ``(B, m)``.
        x_bar, y_bar: the gamma-weighted averages of ``z_1, ..., z_t`` (``z_0`` at t = 0).
        iteration: t (the same for every running instance).
        dual_step: ``"prox"`` or ``"linearized"``.
        constants: the schedules' constants on the problem's device.
        host_constants: the same on the CPU in float64 (inexact ALPD: the number of inner steps).
        operator_calls, primal_gradient_calls, coupling_gradient_calls,
        coupling_y_gradient_calls, dual_gradient_calls: ``(B,)`` counts (see the module docstring).
    """

    gy: Tensor
    v: Tensor
    x_bar: Tensor
    y_bar: Tensor
    iteration: int
    dual_step: str
    constants: Constants
    host_constants: Constants | None
    operator_calls: Tensor
    primal_gradient_calls: Tensor
    coupling_gradient_calls: Tensor
    coupling_y_gradient_calls: Tensor
    dual_gradient_calls: Tensor


# -- constants ---------------------------------------------------------------------------------


def _setting(value, name: str, solver: str, B: int, *, positive: bool = False) -> Tensor | None:
    """A user's constant: a float or a ``(B,)`` tensor, finite, >= 0 (> 0 when ``positive``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{solver}: {name} must be a float or a (B,) tensor, got {type(value).__name__}")
    # A Python float must not pass through torch's default float32 on the way.
    t = torch.as_tensor(value, dtype=torch.float64) if isinstance(value, Real) else value.detach()
    t = t.to("cpu", torch.float64)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, B)):
        raise ValueError(f"{solver}: {name} must be a float or a (B,) = ({B},) tensor, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (t < 0).any() or (positive and (t <= 0).any()):
        raise ValueError(f"{solver}: {name} must be finite and {'> 0' if positive else '>= 0'}, got {value!r}")
    return t.expand(B).clone()


def _supplied(value, B: int) -> Tensor | None:
    """A constant the problem supplies (float, tensor on any device, or None) as a CPU float64 ``(B,)``."""
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float64) if isinstance(value, Real) else torch.as_tensor(value).detach()
    t = t.to("cpu", torch.float64)
    return t.reshape(-1).expand(B).clone() if t.numel() == 1 else t.reshape(B).clone()


def _dual_mode(solver, problem) -> str:
    """``"prox"`` (closed-form prox of h on Y) or ``"linearized"`` (gradient of h's smooth part)."""
    if solver.dual_step not in ("auto", "prox", "linearized"):
        raise ValueError(f"{solver.name}: dual_step must be 'auto', 'prox' or 'linearized', got {solver.dual_step!r}")
    Y = problem.domain[1]
    y0 = problem.z0[1]
    if solver.dual_step in ("auto", "prox"):
        try:
            problem.h.prox(y0, 1.0, Y)
            return "prox"
        except NotImplementedError as err:
            if solver.dual_step == "prox":
                raise ValueError(f"{solver.name}: dual_step='prox' needs a closed-form prox of h over Y: {err}") from err
    if not problem.h_parts[0].smooth:
        raise ValueError(f"{solver.name}: h has no closed-form prox over Y and no smooth part to linearize")
    try:
        problem.block_prox(1, y0, torch.zeros_like(y0), 1.0)
    except NotImplementedError as err:
        raise ValueError(f"{solver.name}: the linearized dual step needs a closed-form prox of h's non-smooth "
                         f"part over Y: {err}") from err
    return "linearized"


def _constants(solver, problem) -> tuple[Constants, str]:
    """Validate the problem and resolve every constant (CPU float64 ``(B,)``); also the dual-step mode."""
    from ..problem import CompositeSaddleProblem

    name = solver.name
    if not isinstance(problem, CompositeSaddleProblem):
        raise TypeError(f"{name} needs a CompositeSaddleProblem (min_x max_y g(x) + phi(x, y) - h(y) with h "
                        f"strongly convex), got {type(problem).__name__}")
    B = problem.batch_size
    mode = _dual_mode(solver, problem)
    try:
        problem.block_prox(0, problem.z0[0], torch.zeros_like(problem.z0[0]), 1.0)
    except NotImplementedError as err:
        raise ValueError(f"{name}: the primal step needs a closed-form prox of g's non-smooth part over X: "
                         f"{err}") from err
    g_smooth, h_smooth = problem.g_parts[0], problem.h_parts[0]
    coupling_L = problem.coupling.lipschitz()

    def resolve(setting_name: str, default, where: str, positive: bool = False) -> Tensor:
        value = _setting(getattr(solver, setting_name), setting_name, name, B, positive=positive)
        if value is not None:
            return value
        try:
            value = _supplied(default() if callable(default) else default, B)
        except (ValueError, NotImplementedError):
            value = None
        if value is None:
            raise ValueError(f"{name}: the constant {setting_name} is unknown ({where} does not supply it); "
                             f"pass {setting_name}=... (a float or a (B,) tensor)")
        if not torch.isfinite(value).all() or (value < 0).any():
            raise ValueError(f"{name}: {where} supplies an invalid {setting_name} ({value.tolist()}); "
                             f"pass {setting_name}=...")
        return value

    h_mu = h_smooth.strong_convexity if mode == "linearized" else problem.h.strong_convexity
    mu = resolve("mu", h_mu, "h.strong_convexity()", positive=True)
    if (mu <= 0).any():
        raise ValueError(f"{name}: needs h strongly convex, but mu = h.strong_convexity() = {mu.tolist()}; "
                         f"pass mu=... > 0 if h is strongly convex, or add strong concavity in y")
    L_g = resolve("lipschitz_g", g_smooth.lipschitz, "g.split()[0].lipschitz()")
    L_xx = resolve("lipschitz_xx", coupling_L["xx"], "coupling.lipschitz()['xx']")
    L_xy = resolve("lipschitz_xy", coupling_L["xy"], "coupling.lipschitz()['xy']")
    L_yy = resolve("lipschitz_yy", coupling_L["yy"], "coupling.lipschitz()['yy']")
    if mode == "linearized":
        L_h = resolve("lipschitz_h", h_smooth.lipschitz, "h.split()[0].lipschitz()")
        t0 = torch.clamp(torch.maximum(4 * L_h, 16 * L_yy) / mu - 1, min=2.0)
    else:
        L_h = torch.zeros(B, dtype=torch.float64)
        t0 = torch.clamp(1 + 8 * L_yy / mu, min=2.0)
    rho = torch.where(L_yy > 0, 0.5, 1.0).to(torch.float64)
    if ((L_g + L_xx + L_xy) <= 0).any():
        raise ValueError(f"{name}: lipschitz_g, lipschitz_xx and lipschitz_xy are all 0 for some instance: the "
                         "primal step would be unbounded; pass a positive lipschitz_g")
    return Constants(mu, L_g, L_xx, L_xy, L_yy, L_h, t0, rho), mode


# -- the shared iteration ---------------------------------------------------------------------


class _Schedule(NamedTuple):
    gamma: Tensor
    q: Tensor
    theta_next: Tensor
    tau: Tensor
    eta: Tensor


def _schedule(c: Constants, t: int, *, accelerated: bool, linearize_coupling: bool, linearized_dual: bool) -> _Schedule:
    """The step parameters of iteration t, per instance (see the module docstring)."""
    gamma = t + c.t0
    big_gamma = (t + 1) * (t + 2 * c.t0) / 2
    q = gamma / big_gamma  # the averaging weight (and ALPD's 1 / beta_t)
    theta_next = gamma / (gamma + 1)
    tau = c.mu * (gamma + 1) / 2 if linearized_dual else c.mu * (gamma - 1) / 2
    coupling = (4.0 if linearized_dual else 2.0) * c.lipschitz_xy ** 2 / (c.rho * c.mu * gamma)
    eta = (2.0 / (t + 1) if accelerated else 1.0) * c.lipschitz_g + coupling
    if linearize_coupling:
        eta = eta + c.lipschitz_xx
    return _Schedule(gamma, q, theta_next, tau, eta)


def _inner_steps(c: Constants, eta: Tensor, t: int, p: float) -> Tensor:
    """Inexact ALPD's inner AGD steps N_t per instance (int64)."""
    kappa = (c.lipschitz_xx + eta) / eta
    rate = -torch.log1p(-1.0 / kappa.sqrt())  # -ln(1 - 1/sqrt(kappa)); inf when kappa = 1
    n = torch.ceil(p * math.log(t + 2) / rate)
    return torch.clamp(torch.nan_to_num(n, nan=1.0, posinf=1.0), min=1.0).to(torch.int64)


@dataclass(frozen=True)
class _LinearizedPrimalDual(Solver):
    """The iteration and the settings shared by `LPD`, `ALPD` and `InexactALPD` (see the module docstring)."""

    mu: object = None
    lipschitz_g: object = None
    lipschitz_xx: object = None
    lipschitz_xy: object = None
    lipschitz_yy: object = None
    lipschitz_h: object = None
    dual_step: str = "auto"

    accelerated = False
    inexact = False

    def check(self, problem) -> None:
        _constants(self, problem)

    def init(self, problem, z0):
        x, y = z0
        constants, mode = _constants(self, problem)
        dev = problem.device
        # float64 on the device: the schedules (and inexact ALPD's N_t) are computed as on the host.
        on_device = Constants(*(v.to(device=dev) for v in constants))
        gy = problem.coupling.grad_y(x, y)
        B = problem.batch_size
        zeros = torch.zeros(B, dtype=torch.int64, device=dev)
        ones = torch.ones(B, dtype=torch.int64, device=dev)
        return LinearizedPDState(
            gy=gy, v=gy, x_bar=x, y_bar=y, iteration=0, dual_step=mode, constants=on_device,
            host_constants=constants if self.inexact else None,
            operator_calls=ones, primal_gradient_calls=zeros, coupling_gradient_calls=zeros,
            coupling_y_gradient_calls=ones, dual_gradient_calls=zeros,
        )

    def step(self, problem, z, state: LinearizedPDState):
        x, y = z
        c, t = state.constants, state.iteration
        linearized_dual = state.dual_step == "linearized"
        s = _schedule(c, t, accelerated=self.accelerated, linearize_coupling=not self.inexact,
                      linearized_dual=linearized_dual)
        s64, s = s, _Schedule(*(v.to(x.dtype) for v in s))
        coupling = problem.coupling

        # Dual step: the prox of h (or of its non-smooth part, h's smooth part linearized).
        if linearized_dual:
            y_next = problem.block_prox(1, y, problem.h_parts[0].grad(y) - state.v, 1.0 / s.tau)
        else:
            y_next = problem.h.prox(y + state.v / column(s.tau, y), 1.0 / s.tau, problem.domain[1])

        # Primal step: g linearized at x_low (x_t for LPD), phi linearized at (x_t, y_{t+1}) or kept (inexact).
        x_low = state.x_bar + column(s.q, x) * (x - state.x_bar) if self.accelerated else x
        grad_g = problem.g_parts[0].grad(x_low)
        if self.inexact:
            x_next, inner = self._inner_solve(problem, x, y_next, grad_g, s64.eta, state)
        else:
            x_next = problem.block_prox(0, x, grad_g + coupling.grad_x(x, y_next), 1.0 / s.eta)
            inner = 1

        # Dual extrapolation and the gamma-weighted averages.
        gy_next = coupling.grad_y(x_next, y_next)
        v_next = gy_next + column(s.theta_next, gy_next) * (gy_next - state.gy)
        q = column(s.q, x)
        x_bar = state.x_bar + q * (x_next - state.x_bar)
        y_bar = state.y_bar + q * (y_next - state.y_bar)

        coupling_calls = state.coupling_gradient_calls + inner
        coupling_y_calls = state.coupling_y_gradient_calls + 1
        new_state = state._replace(
            gy=gy_next, v=v_next, x_bar=x_bar, y_bar=y_bar, iteration=t + 1,
            operator_calls=torch.maximum(coupling_calls, coupling_y_calls),
            primal_gradient_calls=state.primal_gradient_calls + 1,
            coupling_gradient_calls=coupling_calls,
            coupling_y_gradient_calls=coupling_y_calls,
            dual_gradient_calls=state.dual_gradient_calls + int(linearized_dual),
        )
        return (x_next, y_next), new_state

    def _inner_solve(self, problem, x, y_next, grad_g, eta, state):
        raise NotImplementedError

    def output(self, problem, z, state: LinearizedPDState):
        """The gamma-weighted averages ``(x_bar, y_bar)`` the gap bounds are about."""
        return state.x_bar, state.y_bar


@register("lpd", category="primal-dual", averages=True, converges_on=("convex-strongly-concave",), rate="sublinear")
@dataclass(frozen=True)
class LPD(_LinearizedPrimalDual):
    """Linearized primal-dual method (LPD) of Khalafi and Boob (ICML 2023, arXiv 2209.04604).

    For ``min_{x in X} max_{y in Y} g(x) + phi(x, y) - h(y)`` with h mu-strongly convex::

        y_{t+1} = argmin_{y in Y} -<v_t, y> + h(y) + tau_t/2 |y - y_t|^2
        x_{t+1} = argmin_{x in X} <grad g(x_t) + grad_x phi(x_t, y_{t+1}), x> + r_g(x) + eta_t/2 |x - x_t|^2
        v_{t+1} = grad_y phi(z_{t+1}) + theta_{t+1} (grad_y phi(z_{t+1}) - grad_y phi(z_t))

    with ``gamma_t = t + t_0``, ``theta_{t+1} = gamma_t / gamma_{t+1}``,
    ``tau_t = mu (gamma_t - 1) / 2`` and
    ``eta_t = L_g + L_xx + 2 L_xy^2 / (mu gamma_t)`` (for a bilinear coupling
    and t_0 = 2 these are the authors' LPD parameters ``tau = mu t / 2``,
    ``eta = L_g + 2 |K|^2 / (mu (t + 1))`` with their 1-based t). Reports the
    gamma-weighted average of ``z_1, ..., z_k``, whose duality gap is
    ``O((L_g + L_xx) D_X^2 / k + L_xy^2 D_X^2 / (mu k^2) + mu D_Y^2 / k^2)``:
    linear in 1/k in L_g, which `ALPD` improves. See the module docstring for
    the general schedule (L_yy > 0, linearized h) and the accounting: one
    gradient of g, one ``grad_x phi`` and one ``grad_y phi`` per iteration
    (one operator call).

    Args:
        mu: the strong convexity of h (float or ``(B,)``; default
            ``h.strong_convexity()``, of h's smooth part with a linearized dual step).
        lipschitz_g: L_g of ``grad g`` (default ``g.split()[0].lipschitz()``).
        lipschitz_xx: L_xx of the coupling, the Lipschitz constant of ``grad_x phi``
            in x (default from ``coupling.lipschitz()``; `Bilinear` gives ``(0, |K|, 0)``,
            `SemiLinear` and `SmoothCoupling` what they were given).
        lipschitz_xy: L_xy, the Lipschitz constant of ``grad_x phi`` in y and of
            ``grad_y phi`` in x (default from ``coupling.lipschitz()``).
        lipschitz_yy: L_yy, the Lipschitz constant of ``grad_y phi`` in y
            (default from ``coupling.lipschitz()``).
        lipschitz_h: L_h of ``grad h``'s smooth part (linearized dual step only;
            default ``h.split()[0].lipschitz()``).
        dual_step: ``"prox"`` (the closed-form prox of h over Y), ``"linearized"``
            (h's smooth part linearized, its non-smooth part by its prox) or
            ``"auto"`` (prox where h has one over Y).

    A constant that neither the settings nor the problem supply raises a
    ``ValueError`` naming it; so does mu <= 0. Settings smaller than the true
    constants void the guarantees; larger ones are safe and slower.
    """



@register("alpd", category="primal-dual", averages=True, converges_on=("convex-strongly-concave",), rate="sublinear")
@dataclass(frozen=True)
class ALPD(_LinearizedPrimalDual):
    """Accelerated linearized primal-dual method (ALPD) of Khalafi and Boob (ICML 2023, arXiv 2209.04604).

    LPD with Nesterov's acceleration of the primal function in a single loop::

        x_low   = (1 - q_t) x_bar_t + q_t x_t
        y_{t+1} = argmin_{y in Y} -<v_t, y> + h(y) + tau_t/2 |y - y_t|^2
        x_{t+1} = argmin_{x in X} <grad g(x_low) + grad_x phi(x_t, y_{t+1}), x> + r_g(x) + eta_t/2 |x - x_t|^2
        v_{t+1} = grad_y phi(z_{t+1}) + theta_{t+1} (grad_y phi(z_{t+1}) - grad_y phi(z_t))
        x_bar_{t+1} = (1 - q_t) x_bar_t + q_t x_{t+1},   y_bar_{t+1} = (1 - q_t) y_bar_t + q_t y_{t+1}

    with ``gamma_t = t + t_0``, ``q_t = gamma_t / (gamma_0 + ... + gamma_t)``
    (1/q_t is the paper's beta_t, ``beta_{t+1} = 1 + theta_{t+1} beta_t``),
    ``theta_{t+1} = gamma_t / gamma_{t+1}``, ``tau_t = mu (gamma_t - 1) / 2`` and
    ``eta_t = 2 L_g / (t + 1) + L_xx + 2 L_xy^2 / (mu gamma_t)``. Reports
    ``(x_bar_k, y_bar_k)``, whose duality gap is
    ``O(L_g D_X^2 / k^2 + L_xx D_X^2 / k + L_xy^2 D_X^2 / (mu k^2) + mu D_Y^2 / k^2)``:
    optimal in L_g and, for semi-linear couplings (L_xx = 0), optimal overall.
    One gradient of g (at x_low), one ``grad_x phi`` and one ``grad_y phi`` per
    iteration. See the module docstring for the general schedule.

    Args:
        mu: as for `LPD`.
        lipschitz_g: as for `LPD`.
        lipschitz_xx: as for `LPD`.
        lipschitz_xy: as for `LPD`.
        lipschitz_yy: as for `LPD`.
        lipschitz_h: as for `LPD`.
        dual_step: as for `LPD`.

    Missing or invalid constants raise ``ValueError``, as for `LPD`.
    """

    accelerated = True


@register("inexact_alpd", category="primal-dual", averages=True, converges_on=("convex-strongly-concave",),
          rate="sublinear", host_reads=True)
@dataclass(frozen=True)
class InexactALPD(_LinearizedPrimalDual):
    """Inexact ALPD of Khalafi and Boob (ICML 2023, arXiv 2209.04604): ALPD with phi kept in the primal step.

    The primal step of `ALPD` becomes::

        x_{t+1} ~ argmin_{x in X} <grad g(x_low), x> + phi(x, y_{t+1}) + r_g(x) + eta_t/2 |x - x_t|^2

    with ``eta_t = 2 L_g / (t + 1) + 2 L_xy^2 / (mu gamma_t)`` (no L_xx: phi is
    not linearized), solved by N_t steps of accelerated proximal gradient for
    strongly convex functions (step ``1 / (L_xx + eta_t)``, momentum
    ``(sqrt(kappa_t) - 1) / (sqrt(kappa_t) + 1)``, ``kappa_t = (L_xx + eta_t) / eta_t``)
    from x_t. Each inner step costs one ``grad_x phi``; the gradient of g is
    evaluated once per outer iteration. This keeps ALPD's O(1/k^2) bound
    without its ``L_xx D_X^2 / k`` term, so for strongly nonlinear couplings
    (large L_xx) it needs far fewer coupling gradients than `ALPD`.

    Inner steps. The schedule of the analysis is
    ``N_t = max(1, ceil(p ln(t + 2) / -ln(1 - 1/sqrt(kappa_t))))``: it shrinks
    the subproblem's error by ``(t + 2)^-p`` from the warm start, which keeps
    the accumulated inexactness bounded for p > 4 (with the crude bound
    ``|grad S_t(x_t)|^2 / (2 eta_t)`` on the warm start's error). It is
    ``N_t = 1`` where L_xx = 0 (one step then solves the subproblem exactly,
    and the method is `ALPD`). Since kappa_t grows like t L_xx / L_xy^2 and
    L_xx is a worst case over Y, that schedule is very conservative: on the
    QCQP of the tests it costs 40x to 50x the coupling gradients that a budget of
    10 inner steps needs for the same accuracy. The default therefore caps
    N_t at ``inner_iterations = 10``; ``inner_iterations=None`` runs the
    schedule of the analysis.

    Args:
        inner_iterations: the cap on N_t (a positive int), or None for no cap.
        inner_accuracy: p of the schedule.

    The constants (``mu``, ``lipschitz_g``, ``lipschitz_xx``, ``lipschitz_xy``,
    ``lipschitz_yy``, ``lipschitz_h``) and ``dual_step`` are set as for `LPD`.

    Missing or invalid constants raise ``ValueError``, as for `LPD`.
    """

    inner_iterations: int | None = 10
    inner_accuracy: float = 5.0

    accelerated = True
    inexact = True

    def check(self, problem) -> None:
        if self.inner_iterations is not None and (
                isinstance(self.inner_iterations, bool) or not isinstance(self.inner_iterations, int)
                or self.inner_iterations < 1):
            raise ValueError(f"inexact_alpd: inner_iterations must be None or a positive int, "
                             f"got {self.inner_iterations!r}")
        if isinstance(self.inner_accuracy, bool) or not isinstance(self.inner_accuracy, Real) \
                or not self.inner_accuracy > 0:
            raise ValueError(f"inexact_alpd: inner_accuracy must be a positive number, got {self.inner_accuracy!r}")
        super().check(problem)

    def _inner_solve(self, problem, x, y_next, grad_g, eta, state):
        """N_t accelerated proximal-gradient steps on the eta-strongly convex subproblem; ``(x_{t+1}, N_t)``."""
        c, t = state.constants, state.iteration
        coupling = problem.coupling
        smooth = c.lipschitz_xx + eta
        kappa = smooth / eta
        momentum = column((kappa.sqrt() - 1) / (kappa.sqrt() + 1), x).to(x.dtype)
        step = (1.0 / smooth).to(x.dtype)
        eta_col = column(eta, x).to(x.dtype)
        # N_t per instance, and the loop bound from the host copy of the constants (no device
        # synchronization); each instance stops after its own N_t.
        hc = state.host_constants
        host_eta = _schedule(hc, t, accelerated=True, linearize_coupling=False,
                             linearized_dual=state.dual_step == "linearized").eta
        n_max = int(_inner_steps(hc, host_eta, t, self.inner_accuracy).max())
        steps = _inner_steps(c, eta, t, self.inner_accuracy)
        if self.inner_iterations is not None:
            n_max = min(n_max, self.inner_iterations)
            steps = torch.clamp(steps, max=self.inner_iterations)
        u, w = x, x
        for j in range(n_max):
            grad = grad_g + coupling.grad_x(w, y_next) + eta_col * (w - x)
            u_next = problem.block_prox(0, w, grad, step)
            w_next = u_next + momentum * (u_next - u)
            if n_max > 1:
                running = column(j < steps, u)
                u_next = torch.where(running, u_next, u)
                w_next = torch.where(running, w_next, w)
            u, w = u_next, w_next
        return u, torch.clamp(steps, max=n_max)
