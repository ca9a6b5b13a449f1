"""The preconditioned PDHG map and what the schemes built on it share.

For ``min_{x in X} max_{y in Y} g(x) + <K x, y> - h*(y)`` (a `BilinearProblem`)
the PDHG map ``T(x, y) = (x+, y+)`` is::

    x+ = argmin_{u in X} g(u) + <K^T y, u> + |u - x|^2_{T^-1} / 2
    y+ = argmin_{v in Y} h*(v) - <K (2 x+ - x), v> + |v - y|^2_{S^-1} / 2

with diagonal steps ``T = (eta / omega) D_c^2`` and ``S = (eta omega) D_r^2``
(eta: the step size, omega: the primal weight, ``D_c`` ``(Bk, n)`` and ``D_r``
``(Bk, m)``: the diagonal preconditioner, 1 without one). It is firmly
nonexpansive in the PDHG metric (`fixed_point_error`) when
``eta |D_r K D_c|_2 < 1``. The outer schemes decide what to do with it: PDLP's
averaging with adaptive steps and restarts (`saddle.PDHG`) and the restarted
Halpern iteration with reflection (`saddle.solvers.halpern.HalpernPDHG`).

Products with K are passed in (``matvec``, ``rmatvec``) so that each scheme's
module counts its own. `PrimalDualScheme` holds the parts of the solver
protocol both schemes share: which problems they accept, the preconditioner,
warm starts and the LP certificates of infeasibility (`saddle.lp_certificates`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
from torch import Tensor

from ..lp_certificates import detect
from ..solution import Status
from ._validate import check_flag, check_integer, check_number, check_positive, positive_steps
from .base import Solver

__all__ = ["MapOutput", "pdhg_map", "diagonal_steps", "diagonal_preconditioner", "scaled_norm_bound",
           "weighted_norm", "weighted_square", "fixed_point_error", "displacement_error", "initial_primal_weight",
           "natural_residual", "PrimalDualScheme", "eager_when_compiled"]


def _matvec(K, x: Tensor) -> Tensor:
    """``K x`` for a `saddle.coupling.Bilinear` coupling (a module function so tests can count products)."""
    return K.mv(x)


def _rmatvec(K, y: Tensor) -> Tensor:
    """``K^T y``."""
    return K.rmv(y)


_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # (older torch has none)


def eager_when_compiled(method: Callable) -> Callable:
    """``method``, run eagerly even inside ``torch.compile``: dynamo traces neither it nor what it calls (a graph
    break), so that its Python-level bookkeeping (a counter, branches on it) does not specialize the compiled code.

    ``torch.compiler.disable`` at import would import dynamo, a second more of ``import saddle``: the disabled
    method is made at the first compiled call.
    """
    disabled: list[Callable] = []

    @functools.wraps(method)
    def run(*args, **kwargs):
        if not _compiling():
            return method(*args, **kwargs)
        if not disabled:
            disabled.append(torch.compiler.disable(method))
        return disabled[0](*args, **kwargs)

    return run


# -- what the problem is ----------------------------------------------------------------------------

def separable(problem) -> bool:
    """Whether diagonal preconditioning keeps the prox steps exact: sets whose projection in a diagonal metric
    is the projection (`ConstraintSet.diagonal_prox`: boxes, R^n) and separable terms (`Term.separable`)."""
    return all(s.diagonal_prox for s in problem.domain) and problem.g.separable and problem.h_conj.separable


def bilinear_lagrangian(problem) -> bool:
    """Whether f is bilinear plus linear terms: then f(x, v) - f(u, y) = <F(z), z - w> exactly."""
    return problem.g.linear and problem.h_conj.linear


def linear_program(problem) -> bool:
    """Zero or linear terms on boxes and R^n: an LP in Lagrangian form (what the certificates apply to)."""
    return bilinear_lagrangian(problem) and all(s.separable for s in problem.domain)


def linear_vector(term, like: Tensor) -> Tensor:
    """The vector c of a linear term ``<c, u>`` (zeros for other terms), broadcast to ``like``."""
    return term.linear_coefficient(like) if term.linear else torch.zeros_like(like)


# -- the map ----------------------------------------------------------------------------------------

class MapOutput(NamedTuple):
    """``T(z) = (x, y)`` ``(B, n)``, ``(B, m)`` with its products ``Kx = K x`` and ``Kty = K^T y``."""

    x: Tensor
    y: Tensor
    Kx: Tensor
    Kty: Tensor


def diagonal_steps(eta: Tensor, omega: Tensor, col_scale: Tensor | None,
                   row_scale: Tensor | None) -> tuple[Tensor, Tensor]:
    """The primal and dual steps ``tau = (eta / omega) D_c^2`` ``(B, n)`` and ``sigma = (eta omega) D_r^2`` ``(B, m)``
    (``(B, 1)`` each without a preconditioner) from eta and omega ``(B,)``."""
    tau, sigma = (eta / omega).unsqueeze(-1), (eta * omega).unsqueeze(-1)
    if col_scale is not None:
        tau, sigma = tau * col_scale.square(), sigma * row_scale.square()
    return tau, sigma


def pdhg_map(problem, x: Tensor, y: Tensor, Kx: Tensor, Kty: Tensor, tau: Tensor, sigma: Tensor,
             matvec: Callable = _matvec, rmatvec: Callable = _rmatvec) -> MapOutput:
    """One PDHG step ``T(x, y)`` from the cached products ``Kx = K x`` and ``Kty = K^T y``.

    ``x+ = prox_{tau g, X}(x - tau K^T y)``, ``y+ = prox_{sigma h*, Y}(y + sigma K (2 x+ - x))``:
    one product with K (``K x+``) and one with K^T (``K^T y+``). On an LP each prox step is one
    ``addcmul`` and one ``clamp`` (`saddle.terms.Term.prox_step`): seven operations besides the products.
    """
    X, Y = problem.domain
    K = problem.coupling
    x_new = problem.g.prox_step(x, Kty, tau, X)
    Kx_new = matvec(K, x_new)
    y_new = problem.h_conj.prox_step(y, torch.sub(Kx, Kx_new, alpha=2), sigma, Y)
    return MapOutput(x_new, y_new, Kx_new, rmatvec(K, y_new))


def weighted_norm(dx: Tensor, dy: Tensor, omega: Tensor, col_scale: Tensor | None,
                  row_scale: Tensor | None) -> Tensor:
    """``|(dx, dy)|_omega`` with ``|z|_omega^2 = omega |x / D_c|^2 + |y / D_r|^2 / omega``, shape ``(B,)``."""
    return torch.sqrt(weighted_square(dx, dy, omega, col_scale, row_scale))


def weighted_square(dx: Tensor, dy: Tensor, omega: Tensor, col_scale: Tensor | None,
                     row_scale: Tensor | None) -> Tensor:
    """``|(dx, dy)|_omega^2``, shape ``(B,)``."""
    if col_scale is not None:
        dx, dy = dx / col_scale, dy / row_scale
    return torch.addcdiv(omega * dx.square().sum(-1), dy.square().sum(-1), omega)


def fixed_point_error(z: tuple[Tensor, Tensor, Tensor], t: MapOutput, eta: Tensor, omega: Tensor,
                      col_scale: Tensor | None, row_scale: Tensor | None) -> Tensor:
    """``|z - T(z)|`` in the PDHG metric (scaled by eta), ``(B,)``.

    ``eta |d|_P^2 = |d|_omega^2 - 2 eta <K dx, dy>`` for ``d = (dx, dy) = z - T(z)``, with
    ``P = [[T^-1, -K^T], [-K, S^-1]]`` the metric in which T is firmly nonexpansive (cuPDLPx's
    restart measure). ``z = (x, y, Kx)``; ``K dx`` comes from the cached products.
    """
    x, y, Kx = z
    return displacement_error(x - t.x, y - t.y, Kx - t.Kx, eta, omega, col_scale, row_scale)


def displacement_error(dx: Tensor, dy: Tensor, Kdx: Tensor, eta: Tensor, omega: Tensor,
                       col_scale: Tensor | None, row_scale: Tensor | None) -> Tensor:
    """`fixed_point_error` from the displacement ``(dx, dy) = z - T(z)`` and ``K dx``, ``(B,)``."""
    cross = (Kdx * dy).sum(-1)
    squared = torch.addcmul(weighted_square(dx, dy, omega, col_scale, row_scale), eta, cross, value=-2)
    return squared.clamp_min(0).sqrt()


def natural_residual(problem, x: Tensor, y: Tensor, Kx: Tensor, Kty: Tensor) -> Tensor:
    """The natural residual ``|z - prox(z - F(z))|`` from cached products, shape ``(B,)``."""
    g_smooth, h_smooth = problem.g.split()[0], problem.h_conj.split()[0]
    rx = x - problem.block_prox(0, x, g_smooth.grad(x) + Kty, 1.0)
    ry = y - problem.block_prox(1, y, h_smooth.grad(y) - Kx, 1.0)
    return torch.sqrt(rx.square().sum(-1) + ry.square().sum(-1))


# -- preconditioner, step bound and primal weight ---------------------------------------------------

def _safe_rsqrt(v: Tensor) -> Tensor:
    return torch.where(v > 0, v.rsqrt(), torch.ones_like(v))


def diagonal_preconditioner(K, ruiz_iterations: int) -> tuple[Tensor, Tensor]:
    """``(D_c (Bk, n), D_r (Bk, m))``: Ruiz equilibration passes, then one Pock-Chambolle pass (alpha = 1).

    Ruiz scales rows and columns by the square roots of their largest entries; Pock-Chambolle by
    the square roots of the row and column sums of ``|D_r K D_c|``.
    """
    Bk, m, n = K.shape
    dr = torch.ones(Bk, m, dtype=K.dtype, device=K.device)
    dc = torch.ones(Bk, n, dtype=K.dtype, device=K.device)
    for _ in range(ruiz_iterations):
        rows, cols = K.abs_reduce(dr, dc, "max")
        dr, dc = dr * _safe_rsqrt(rows), dc * _safe_rsqrt(cols)
    rows, cols = K.abs_reduce(dr, dc, "sum")
    return dc * _safe_rsqrt(cols), dr * _safe_rsqrt(rows)


#: Couplings with at most this many entries per instance get their norm from singular values.
EXACT_NORM_ENTRIES = 1 << 16


class NormBound(NamedTuple):
    """An upper bound ``(Bk,)`` on ``|D_r K D_c|_2`` and the products ``(Bk,)`` its power iteration used."""

    bound: Tensor
    products: Tensor


def scaled_norm_bound(K, col_scale: Tensor | None, row_scale: Tensor | None, *, max_iterations: int = 2000,
                      rtol: float = 1e-7, margin: float = 1e-3) -> NormBound:
    """An upper bound on ``|A|_2``, ``A = D_r K D_c``, per instance of K (``(Bk,)``).

    A K of at most `EXACT_NORM_ENTRIES` entries per instance (dense or sparse: the same bound
    either way) gets ``|A|_2`` from the singular values of A made dense
    (`torch.linalg.matrix_norm`), raised by ``margin``; no product is counted. On 256 random games
    51 x 51 that took 0.03 s where the power iteration took 0.57 s (1238 products for the slowest
    instance, and a host sync per iteration); 256 x 256 takes 8 ms.

    Otherwise, power iteration on ``A^T A`` from a fixed vector shared by every instance gives
    ``s_k = |A v_k|``, which increases to ``|A|_2`` from below. Each instance
    iterates until ``s_k - s_{k-1} <= rtol s_k`` (then frozen, so a batch equals
    the loop of its instances) and its estimate is raised by ``margin``; an
    instance that does not converge within ``max_iterations`` takes the bound
    ``sqrt(|A|_1 |A|_inf)`` (max column sum times max row sum), which always holds
    and caps the estimate too (after the Pock-Chambolle pass it is at most 1).
    """
    Bk, m, n = K.shape
    ones_r = torch.ones(Bk, m, dtype=K.dtype, device=K.device)
    ones_c = torch.ones(Bk, n, dtype=K.dtype, device=K.device)
    dr = ones_r if row_scale is None else row_scale
    dc = ones_c if col_scale is None else col_scale
    rows, cols = K.abs_reduce(dr, dc, "sum")
    rigorous = torch.sqrt(rows.amax(-1) * cols.amax(-1))
    if m * n <= EXACT_NORM_ENTRIES:
        exact = torch.linalg.matrix_norm(dr.unsqueeze(-1) * K.dense() * dc.unsqueeze(-2), ord=2)
        return NormBound(torch.minimum(exact * (1 + margin), rigorous), torch.zeros(Bk, dtype=torch.int64,
                                                                                    device=K.device))

    g = torch.Generator(device="cpu").manual_seed(0)
    v = torch.randn(n, generator=g, dtype=torch.float64)
    v = (v / v.norm()).to(K.device, K.dtype).expand(Bk, n)
    tiny = torch.finfo(K.dtype).tiny
    estimate = torch.zeros(Bk, dtype=K.dtype, device=K.device)
    running = rigorous > 0
    products = torch.zeros(Bk, dtype=torch.int64, device=K.device)
    for _ in range(max_iterations):
        Av = dr * K.mv(dc * v)
        s = Av.norm(dim=-1)
        w = dc * K.rmv(dr * Av)
        w = w / w.norm(dim=-1, keepdim=True).clamp_min(tiny)
        done = s - estimate <= rtol * s
        products = products + running.long()
        estimate = torch.where(running, s, estimate)
        v = torch.where(running.unsqueeze(-1), w, v)
        running = running & ~done
        if not bool(running.any()):
            break
    bound = torch.where(running, rigorous, torch.minimum(estimate * (1 + margin), rigorous))
    return NormBound(bound, products)


def initial_primal_weight(problem, x: Tensor, y: Tensor, col_scale: Tensor | None,
                          row_scale: Tensor | None) -> Tensor:
    """PDLP's ``omega = |c| / |d|`` for linear terms ``<c, x>`` and ``<d, y>`` with both nonzero (in the
    preconditioned variables: ``D_c c`` and ``D_r d``), else 1; ``(B,)``."""
    c, d = linear_vector(problem.g, x), linear_vector(problem.h_conj, y)
    if col_scale is not None:
        c, d = c * col_scale, d * row_scale
    cn, dn = c.norm(dim=-1), d.norm(dim=-1)
    ok = (cn > 1e-10) & (dn > 1e-10)
    return torch.where(ok, cn / dn.clamp_min(1e-300), torch.ones_like(cn))


# -- the protocol both schemes share ------------------------------------------------------------------

@dataclass(frozen=True)
class PrimalDualScheme(Solver):
    """What PDHG's schemes share: settings, the problems they take, the preconditioner, warm starts, certificates.

    Subclasses are frozen dataclasses whose state has the fields ``step_size``, ``primal_weight``
    and ``tracker`` (a `saddle.lp_certificates.RayTracker`), and which implement ``_start``.

    Args:
        step_size: None (the scheme's default from the norm of ``D_r K D_c``), a
            float or a ``(B,)`` tensor.
        precondition: Ruiz + Pock-Chambolle diagonal preconditioning: True,
            False, or None (on where it applies: boxes and separable terms).
        primal_weight: the initial omega (float or ``(B,)``); None: PDLP's
            ``|c| / |d|`` for linear terms ``<c, x>`` and ``<d, y>`` with both
            nonzero (in the preconditioned variables), else 1.
        update_primal_weight: update the primal weight at restarts.
        restarts: adaptive restarts.
        restart_every: iterations between restart checks.
        sufficient: the sufficient-decay restart threshold (0.2).
        necessary: the necessary-decay restart threshold (with no progress since the previous check).
        artificial: restart when the period exceeds this fraction of all iterations (0.36).
        infeasibility_tol: tolerance of the certificates' verification (linear programs).
        ruiz_iterations: Ruiz equilibration passes of the preconditioner.
    """

    step_size: object = None
    precondition: bool | None = None
    primal_weight: object = None
    update_primal_weight: bool = True
    restarts: bool = True
    restart_every: int = 64
    sufficient: float = 0.2
    necessary: float = 0.8
    artificial: float = 0.36
    infeasibility_tol: float = 1e-8
    ruiz_iterations: int = 10

    def __post_init__(self):
        """Check the shared settings, so a bad one fails at construction."""
        name = self.name
        check_positive(name, "step_size", self.step_size)
        check_positive(name, "primal_weight", self.primal_weight)
        for flag in ("update_primal_weight", "restarts"):
            check_flag(name, flag, getattr(self, flag))
        check_flag(name, "precondition", self.precondition, allow_none=True)
        check_integer(name, "restart_every", self.restart_every, minimum=1)
        check_integer(name, "ruiz_iterations", self.ruiz_iterations, minimum=0)
        for fraction in ("sufficient", "necessary", "artificial"):
            check_number(name, fraction, getattr(self, fraction), low=0.0, high=1.0)
        if self.sufficient > self.necessary:
            raise ValueError(f"{name}: need sufficient <= necessary, got sufficient={self.sufficient!r}, "
                             f"necessary={self.necessary!r}")
        check_number(name, "infeasibility_tol", self.infeasibility_tol, low=0.0)

    def check(self, problem):
        from ..problem import BilinearProblem

        if not isinstance(problem, BilinearProblem):
            raise ValueError(f"{self.name} needs a BilinearProblem (min_x max_y g(x) + <Kx, y> - h*(y)), got "
                             f"{type(problem).__name__}; use extragradient for general problems")
        X, Y = problem.domain
        for term, S, name, block in ((problem.g, X, "g", 0), (problem.h_conj, Y, "h_conj", 1)):
            try:
                term.prox(problem.z0[block], 1.0, S)
            except NotImplementedError as err:
                raise ValueError(f"{self.name} needs a closed-form prox of {name}: {err}") from err
        if self.precondition and not separable(problem):
            raise ValueError(f"{self.name}: precondition=True needs boxes or R^n and separable terms (zero, linear, "
                             "diagonal quadratic, L1); the scaled projections onto other sets are not projections")

    def _preconditioner(self, problem) -> tuple[Tensor | None, Tensor | None]:
        """``(D_c, D_r)`` (`diagonal_preconditioner`), or ``(None, None)`` where it is off."""
        if self.precondition is False or (self.precondition is None and not separable(problem)):
            return None, None
        return diagonal_preconditioner(problem.coupling, self.ruiz_iterations)

    def _initial_weight(self, problem, z0, scales) -> Tensor:
        """The initial primal weight ``(B,)``: the setting, or `initial_primal_weight` at ``z0``."""
        if self.primal_weight is None:
            return initial_primal_weight(problem, *z0, *scales)
        return positive_steps(self.name, "primal_weight", self.primal_weight, problem)

    def warm_state(self, problem, z0, previous_state):
        """The state at ``z0`` with the step size and primal weight of ``previous_state`` (per instance).

        For a sequence of nearby problems (the same shapes): the step and weight a previous solve
        adapted to are kept, everything else starts afresh at ``z0``.
        """
        B = problem.batch_size
        for name in ("step_size", "primal_weight"):
            value = getattr(previous_state, name, None)
            if not isinstance(value, Tensor) or value.shape != (B,):
                raise ValueError(f"{self.name}: warm_state needs a previous state of this solver with a ({B},) "
                                 f"{name}, got {type(previous_state).__name__}")
        eta = previous_state.step_size.to(problem.device, problem.dtype)
        omega = previous_state.primal_weight.to(problem.device, problem.dtype)
        return self._start(problem, z0, self._preconditioner(problem), eta, omega)

    def _start(self, problem, z0, scales, eta: Tensor, omega: Tensor):
        """The initial state at ``z0`` with the preconditioner ``scales = (D_c, D_r)``, steps and weights ``(B,)``."""
        raise NotImplementedError

    # -- certificates of infeasibility (linear programs) ---------------------------------------------
    def terminal_status(self, problem, z, state):
        """``INFEASIBLE`` / ``UNBOUNDED`` where a candidate ray passed its verification (LPs only).

        The candidates are tested at restart checks (`detect`); this reads the result, so the
        driver's convergence checks cost no certificate work.
        """
        return state.detected.status if linear_program(problem) else None

    def detect(self, problem, state, check: int):
        """``state`` with its `saddle.lp_certificates.Detection` updated at the ``check``-th restart
        check when `certificate_due`."""
        if not (linear_program(problem) and certificate_due(check)):
            return state
        return state._replace(detected=detect(problem, state.tracker, state.detected, self.infeasibility_tol))

    def certificates(self, problem, state) -> dict[str, Tensor]:
        """The verified certificates found so far (`saddle.lp_certificates.detect`).

        Returns ``dual_ray`` ``(B, m)`` (a Farkas ray: the primal is infeasible), ``primal_ray``
        ``(B, n)`` (the problem is unbounded) and the ``(B,)`` flags ``infeasible`` and ``unbounded``;
        a ray is reported only where it passed its verification in the unscaled problem.
        """
        found = state.detected
        return {"dual_ray": found.dual_ray, "primal_ray": found.primal_ray,
                "infeasible": found.status == int(Status.INFEASIBLE),
                "unbounded": found.status == int(Status.UNBOUNDED)}


def certificate_due(check: int) -> bool:
    """Whether the ``check``-th restart check (1, 2, ...) tests the candidate certificates.

    Every second one up to the 1024th (every 64 iterations with checks every 32: a candidate may
    pass its verification only now and then: sparser tests found chemcom's ray after 40 448
    iterations instead of 14 336), then about one in every 10% more (``floor(log_1.1 check)`` moved), so a
    long solve pays ``O(log k)`` more tests of a dozen products each. A function of ``check``
    alone (resumes agree).
    """
    if check <= 1024:
        return check >= 1 and check % 2 == 0
    growth = math.log(1.1)
    return math.floor(math.log(check) / growth) != math.floor(math.log(check - 1) / growth)


def nonzero(scale: Tensor) -> Tensor:
    """A per-instance scale of K for the initial step, 1 where K = 0.

    Any step is stable for a zero K (an LP with bounds only), but ``1 / 0`` would make the
    iterates overflow and the instance look diverged.
    """
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def infinite(B: int, like: Tensor) -> Tensor:
    """``(B,)`` of +inf in ``like``'s dtype and device (restart measures before the first restart)."""
    return torch.full((B,), math.inf, dtype=like.dtype, device=like.device)
