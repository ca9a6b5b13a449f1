"""Gradients through batched solutions: implicit differentiation of the projected step.

A solution z* of the VI (F_theta, Z) is a fixed point of the projected step

    ``T(z, theta) = P_Z(z - eta F(z, theta))``,   ``R(z, theta) = z - T(z, theta) = 0``,

for every step eta > 0 (here ``eta = 1 / L`` per instance where the problem knows a Lipschitz
constant L, else 1; with non-smooth terms, P_Z is the problem's prox step). Where T is
differentiable at z* and ``M = I - dT/dz`` is invertible, the implicit function theorem gives
``dz*/dtheta = M^{-1} dT/dtheta``, so a loss with gradient ``g = dloss/dz*`` pulls back as

    ``dloss/dtheta = v^T dT/dtheta``   with   ``M^T v = g``      (the adjoint system).

The data theta are whatever tensors requiring grad the problem's operator, sets and terms hold
(a payoff matrix, LP data, the parameters an objective closes over); nothing needs naming them.
`attach` returns z* with its value unchanged and this gradient on the autograd graph; the
solve's iterations are never differentiated, so memory does not grow with their number.

The adjoint system is solved per instance:

- ``"dense"``: M is formed (``N`` vector-Jacobian products, N the total size of a point) and
  factorized once (batched LU), so each backward pass, and each column of a `sensitivity`
  Jacobian, is one triangular solve. The default when ``B N^2`` is small (`DENSE_MAX_ENTRIES`).
- ``"gmres"``: restarted GMRES (`saddle.linalg.gmres`, M is not symmetric) on products
  ``v -> v - (dT/dz)^T v`` from autograd, matrix-free.

The projections' Jacobians come from the sets' closed forms (`ConstraintSet.project_jvp`: boxes,
2- and inf-norm balls, the simplex; a projection's Jacobian is symmetric, so it is also its
vector-Jacobian product); sets without one, and sets whose own parameters require grad, are
differentiated by autograd through ``project``.

Degenerate points. Where strict complementarity fails (a coordinate on a bound with a zero
multiplier) T is not differentiable; the Jacobian used is that of the piece the closed forms pick
at the returned point (a box coordinate exactly on its bound counts as fixed there). Where M is
singular (non-unique solutions: ties in a matrix game, degenerate LP vertices) the minimum-norm
least-squares solution of the adjoint system is used, the instance is marked `AdjointStatus.SINGULAR`
and a warning names it. Instances the forward solve did not converge on, and (``"gmres"``) adjoint
systems that do not converge, get NaN gradients and their status, with a warning; the other
instances are unaffected.

Accuracy. The gradient is as accurate as z*: a relative error of 1e-6 needs a residual near
1e-11. `polish` (on by default with ``"dense"``) takes semismooth Newton steps ``z <- z - M^{-1}
R(z)`` first; on piecewise-affine problems (LPs, matrix games, QPs) one step from a point whose
active set is right lands on the solution to rounding.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch
from torch import Tensor

from .coupling import Bilinear
from .linalg import gmres
from .point import Point, column, detached, where
from .sets import ConstraintSet
from .terms import Linear, Zero
from .threads import intra_op_threads, solve_threads
from .tree import map_tensors

__all__ = ["Implicit", "Adjoint", "AdjointStatus", "attach", "fixed_point_map", "polish", "sensitivity", "unrolled",
           "DENSE_MAX_ENTRIES", "DENSE_MAX_SIZE"]

#: ``"dense"`` is the default while ``B * N^2`` (the entries of the batch of matrices M) is at most this.
DENSE_MAX_ENTRIES = 2 ** 25
#: ... and N, the size of one instance's point, at most this.
DENSE_MAX_SIZE = 2048
#: `polish` takes no Newton step when every instance's fixed-point residual is below this, relative to its point.
POLISHED = 1e-14


class AdjointStatus(IntEnum):
    """How the adjoint system of an instance was solved (`Adjoint.status`)."""

    #: Solved: the gradient is the implicit function theorem's.
    SOLVED = 0
    #: M was singular (a degenerate or non-unique solution): the minimum-norm least-squares solution was used.
    SINGULAR = 1
    #: GMRES did not reach the tolerance within its iterations: NaN gradients.
    NOT_CONVERGED = 2
    #: The forward solve did not converge on this instance, so z is no solution: NaN gradients.
    NO_SOLUTION = 3


@dataclass(frozen=True)
class Implicit:
    """Options of implicit differentiation (``saddle.solve(..., differentiable=Implicit(...))``).

    Args:
        method: ``"dense"`` (form and factorize M), ``"gmres"`` (matrix-free) or None: dense when the
            batch of matrices is small (`DENSE_MAX_ENTRIES`, `DENSE_MAX_SIZE`).
        tol: relative residual ``|M^T v - g| <= tol |g|`` GMRES stops at: a float or a ``(B,)`` tensor
            (per instance).
        max_iters: GMRES products per instance and backward pass: an int or a ``(B,)`` tensor.
        restart: GMRES's restart length (the Krylov basis it keeps).
        polish: semismooth Newton steps on R before attaching (None: with ``"dense"`` only, where M is
            formed anyway); an instance keeps a step only where it lowers its residual.
    """

    method: str | None = None
    tol: float | Tensor = 1e-10
    max_iters: int | Tensor = 1000
    restart: int = 50
    polish: bool | None = None

    def __post_init__(self):
        if self.method not in (None, "dense", "gmres"):
            raise ValueError(f"method must be None, 'dense' or 'gmres', got {self.method!r}")
        if isinstance(self.tol, Tensor):
            if self.tol.dim() > 1 or not bool(((self.tol > 0) & (self.tol < 1)).all()):
                raise ValueError(f"tol must be a float or a (B,) tensor in (0, 1), got {self.tol!r}")
        elif isinstance(self.tol, bool) or not isinstance(self.tol, (int, float)) or not 0 < self.tol < 1:
            raise ValueError(f"tol must be a float in (0, 1) or a (B,) tensor, got {self.tol!r}")
        if isinstance(self.max_iters, Tensor):
            if self.max_iters.dim() > 1 or self.max_iters.is_floating_point() or not bool((self.max_iters >= 1).all()):
                raise ValueError(f"max_iters must be a positive int or a (B,) integer tensor, got {self.max_iters!r}")
        elif isinstance(self.max_iters, bool) or not isinstance(self.max_iters, int) or self.max_iters < 1:
            raise ValueError(f"max_iters must be a positive int or a (B,) integer tensor, got {self.max_iters!r}")
        if isinstance(self.restart, bool) or not isinstance(self.restart, int) or self.restart < 1:
            raise ValueError(f"restart must be a positive int, got {self.restart!r}")
        if self.polish is not None and not isinstance(self.polish, bool):
            raise TypeError(f"polish must be None, True or False, got {self.polish!r}")


def as_differentiation(differentiable) -> Implicit | str | None:
    """`solve`'s ``differentiable`` argument as an `Implicit`, ``"unroll"`` or None (off)."""
    if differentiable is False or differentiable is None:
        return None
    if differentiable is True or differentiable == "implicit":
        return Implicit()
    if isinstance(differentiable, Implicit) or differentiable == "unroll":
        return differentiable
    raise TypeError(f"differentiable must be False, True, 'implicit', 'unroll' or a saddle.implicit.Implicit, "
                    f"got {differentiable!r}")


# -- the map ------------------------------------------------------------------------------------
class _Projection(torch.autograd.Function):
    """``P_C(u)`` whose backward pass is the set's closed-form Jacobian (symmetric: ``J^T g = J g``)."""

    generate_vmap_rule = True

    @staticmethod
    def forward(u: Tensor, s: ConstraintSet) -> Tensor:
        out = s.project(u)
        return out.clone() if out is u else out  # (autograd cannot save an input returned as is)

    @staticmethod
    def setup_context(ctx, inputs, output):
        u, s = inputs
        ctx.save_for_backward(u)
        ctx.set = s

    @staticmethod
    def backward(ctx, g: Tensor):
        (u,) = ctx.saved_tensors
        return ctx.set.project_jvp(u, g), None


def _requires_grad(obj: Any) -> bool:
    """Whether any tensor ``obj`` holds (`saddle.tree.map_tensors` walks it) requires grad."""
    found = []
    map_tensors(obj, lambda t: found.append(t.requires_grad) or t)
    return any(found)


def _closed_forms(problem, z: Point) -> list[bool]:
    """Per block: whether its step is a projection whose set has a closed-form `project_jvp` and no parameter of
    its own requiring grad (then `_Projection` and `ConstraintSet.project_jacobian` differentiate it)."""
    out = []
    for i, (s, u) in enumerate(zip(problem.domain, z)):
        closed = _nonsmooth(problem, i) is None and not _requires_grad(s)
        if closed:
            try:
                s.project_jvp(u.detach(), torch.zeros_like(u))
            except NotImplementedError:
                closed = False
        out.append(closed)
    return out


def _nonsmooth(problem, i: int):
    """The prox-friendly term of block i of a composite problem, or None (the step is a projection)."""
    parts = getattr(problem, "g_parts" if i == 0 else "h_parts", None) if len(problem.z0) == 2 else None
    if parts is None or isinstance(parts[1], Zero):
        return None
    return parts[1]


def fixed_point_map(problem, z: Point, step: Tensor, Fz: Point | None = None) -> Point:
    """``T(z) = P_Z(z - step F(z))`` blockwise (the problem's prox step where a block has a non-smooth term).

    ``z``: blocks ``(B, n_i)``; ``step``: ``(B,)``. Differentiable in z and in the problem's data; the
    projections differentiate through the sets' closed-form Jacobians where they have them. ``Fz``: F at z,
    if computed already.
    """
    return _map(problem, z, step, problem.F(z) if Fz is None else Fz, _closed_forms(problem, z))


def _map(problem, z: Point, step: Tensor, Fz: Point, closed: list[bool]) -> Point:
    """`fixed_point_map` with F at z and the blocks' `_closed_forms` given."""
    out = []
    for i, (u, g) in enumerate(zip(z, Fz)):
        w = u - column(step, u) * g
        s = problem.domain[i]
        if closed[i]:
            out.append(w if s.unconstrained else _Projection.apply(w, s))
        else:
            rough = _nonsmooth(problem, i)
            out.append(s.project(w) if rough is None else rough.prox(w, step, s))
    return tuple(out)


def default_step(problem) -> Tensor:
    """``1 / L`` per instance, ``(B,)`` in the problem's dtype: L a Lipschitz constant of F, else 1.

    For a dense bilinear problem with linear terms (LPs, matrix games) L is bounded by the Frobenius norm
    of K (a step below 1/|K|_2 serves as well, and costs no singular values); otherwise the problem's own L.
    """
    z0 = problem.z0[0]
    coupling = getattr(problem, "coupling", None)
    parts = [getattr(problem, name, (None, None))[0] for name in ("g_parts", "h_parts")]
    if isinstance(coupling, Bilinear) and not coupling.sparse and all(isinstance(p, (Zero, Linear)) for p in parts):
        L = coupling.K.detach().square().sum((-2, -1)).sqrt().expand(problem.batch_size)
    else:
        L = problem.lipschitz()
        if L is None:
            return torch.ones(problem.batch_size, dtype=z0.dtype, device=z0.device)
    L = L.to(device=z0.device, dtype=z0.dtype)
    return torch.where(torch.isfinite(L) & (L > 0), 1.0 / L, torch.ones_like(L))


# -- the linearization at a point --------------------------------------------------------------
def _flat(z: Point) -> Tensor:
    return torch.cat(tuple(z), -1)


def _blocks(v: Tensor, dims: tuple[int, ...]) -> Point:
    return tuple(v.split(dims, -1))


class _Linearization:
    """T and its derivative in z at one point: the products with ``dT/dz`` and, for ``"dense"``, M factorized."""

    def __init__(self, problem, z: Point, step: Tensor, method: str):
        self.problem, self.step, self.method = problem, step, method
        self.dims = tuple(b.shape[-1] for b in z)
        with torch.enable_grad():
            self.leaf = _flat(z).detach().requires_grad_()
            blocks = _blocks(self.leaf, self.dims)
            Fz = problem.F(blocks)
            self.closed = _closed_forms(problem, blocks)
            self.F = _flat(Fz)
            self.T = _flat(_map(problem, blocks, step, Fz, self.closed))
        self.value = self.T.detach()
        self.u = (self.leaf - column(step, self.leaf) * self.F).detach()
        self._lu = None

    @property
    def residual(self) -> Tensor:
        """``|z - T(z)|`` per instance, ``(B,)``."""
        return (self.leaf.detach() - self.value).norm(dim=-1)

    def vjp(self, w: Tensor, create_graph: bool = False) -> Tensor:
        """``(dT/dz)^T w``: ``(B, N) -> (B, N)``."""
        return self._pull(self.T, w, create_graph)

    def _pull(self, out: Tensor, w: Tensor, create_graph: bool = False) -> Tensor:
        """``(d out / dz)^T w``, zero where ``out`` does not depend on z."""
        if not out.requires_grad:
            return torch.zeros_like(w)
        (g,) = torch.autograd.grad(out, self.leaf, w, retain_graph=True, create_graph=create_graph, allow_unused=True)
        return torch.zeros_like(w) if g is None else g

    def jvp(self, d: Tensor) -> Tensor:
        """``(dT/dz) d``, by differentiating the linear map `vjp` (no forward-mode support needed)."""
        with torch.enable_grad():
            w = torch.zeros_like(d).requires_grad_()
            inner = (self.vjp(w, create_graph=True) * d).sum()
            if not inner.requires_grad:
                return torch.zeros_like(d)
            (out,) = torch.autograd.grad(inner, w, allow_unused=True)
        return torch.zeros_like(d) if out is None else out

    def jacobian(self) -> Tensor:
        """``dT/dz`` per instance, ``(B, N, N)``.

        Where every block is a projection with a closed form, ``J_P(u) (I - eta dF/dz)`` at ``u = z - eta
        F(z)``, with the sets' `ConstraintSet.project_jacobian` and dF/dz from one vector-Jacobian product
        per row (vmapped); otherwise the rows of dT/dz itself, the same way.
        """
        B, N = self.value.shape
        dims, z = self.dims, self.leaf.detach()
        if not all(self.closed):
            return self._rows(self.T)
        blocks = [s.project_jacobian(u) for s, u in zip(self.problem.domain, _blocks(self.u, dims))]
        J_F = self._rows(self.F)
        start = 0
        J_P = J_F.new_zeros(B, N, N)
        for d, block in zip(dims, blocks):
            J_P[:, start:start + d, start:start + d] = block
            start += d
        return J_P - column(self.step, z).unsqueeze(-1) * torch.bmm(J_P, J_F)

    def _rows(self, out: Tensor) -> Tensor:
        """The Jacobian ``d out / dz`` ``(B, N, N)``: one vector-Jacobian product per row, vmapped where it can be."""
        B, N = self.value.shape
        if not out.requires_grad:
            return self.value.new_zeros(B, N, N)
        basis = torch.eye(N, dtype=self.value.dtype, device=self.value.device).unsqueeze(1).expand(N, B, N)
        try:
            (rows,) = torch.autograd.grad(out, self.leaf, basis, retain_graph=True, is_grads_batched=True,
                                          allow_unused=True)
        except (RuntimeError, NotImplementedError, TypeError):  # an operation without a batching rule
            rows = torch.stack([self._pull(out, basis[j].contiguous()) for j in range(N)])
        if rows is None:
            return self.value.new_zeros(B, N, N)
        return rows.transpose(0, 1)

    def factorize(self) -> None:
        """M = I - dT/dz, LU-factorized; instances whose M is numerically singular keep its pseudo-inverse."""
        if self._lu is not None:
            return
        J = self.jacobian()
        N = J.shape[-1]
        M = torch.eye(N, dtype=J.dtype, device=J.device) - J
        lu, pivots, info = torch.linalg.lu_factor_ex(M)
        pivot = lu.diagonal(dim1=-2, dim2=-1).abs()
        rcond = 1e3 * N * torch.finfo(J.dtype).eps
        singular = (info != 0) | ~(pivot.amin(-1) > rcond * pivot.amax(-1).clamp_min(torch.finfo(J.dtype).tiny))
        pinv = torch.linalg.pinv(M[singular], rtol=rcond) if bool(singular.any()) else None
        self._lu = (lu, pivots, singular, pinv)

    @property
    def singular(self) -> Tensor:
        """``(B,)`` bool: where the factorized M is singular (``"dense"`` only)."""
        self.factorize()
        return self._lu[2]

    def solve_dense(self, rhs: Tensor, adjoint: bool) -> Tensor:
        """``M^{-1} rhs`` (or ``M^{-T} rhs``), with the pseudo-inverse where M is singular."""
        self.factorize()
        lu, pivots, singular, pinv = self._lu
        out = torch.linalg.lu_solve(lu, pivots, rhs.unsqueeze(-1), adjoint=adjoint).squeeze(-1)
        if pinv is not None:
            p = pinv.mT if adjoint else pinv
            out = out.index_put((singular.nonzero().squeeze(-1),), (p @ rhs[singular].unsqueeze(-1)).squeeze(-1))
        return out

    def solve(self, rhs: Tensor, adjoint: bool, options: Implicit) -> tuple[Tensor, Tensor]:
        """``(M^{-T} rhs or M^{-1} rhs, status (B,))``."""
        if self.method == "dense":
            out = self.solve_dense(rhs, adjoint)
            status = torch.where(self.singular, int(AdjointStatus.SINGULAR), int(AdjointStatus.SOLVED))
            return out, status
        product = (lambda v: v - self.vjp(v)) if adjoint else (lambda d: d - self.jvp(d))
        result = gmres(product, rhs, tol=options.tol, max_iters=options.max_iters, restart=options.restart)
        status = torch.where(result.converged, int(AdjointStatus.SOLVED), int(AdjointStatus.NOT_CONVERGED))
        return torch.where(result.converged.unsqueeze(-1), result.x, torch.nan), status


def dense_fits(batch_size: int, size: int) -> bool:
    """Whether B matrices M of ``size`` N are small enough to form (`DENSE_MAX_SIZE`, `DENSE_MAX_ENTRIES`)."""
    return size <= DENSE_MAX_SIZE and batch_size * size * size <= DENSE_MAX_ENTRIES


def choose_method(options: Implicit, problem) -> str:
    """``options.method``, or ``"dense"`` where the batch of Jacobians is small enough to form, else ``"gmres"``."""
    if options.method is not None:
        return options.method
    return "dense" if dense_fits(problem.batch_size, sum(problem.dims)) else "gmres"


# -- polishing ------------------------------------------------------------------------------------
def polish(problem, z: Point, *, step: Tensor | None = None, steps: int = 3,
           active: Tensor | None = None) -> tuple[Point, Tensor]:
    """Semismooth Newton steps ``z <- P_Z(z - M^{-1} R(z))`` on the fixed-point residual, kept where they help.

    Args:
        problem: the problem z approximately solves.
        z: blocks ``(B, n_i)``, e.g. a `Solution`'s ``z``.
        step: eta of `fixed_point_map`, ``(B,)`` (default `default_step`).
        steps: at most this many Newton steps.
        active: ``(B,)`` bool, the instances to polish (default all).

    Returns:
        ``(z, residual)``: the polished point (detached) and ``|z - T(z)|`` there, ``(B,)``. An instance keeps
        a step only if it lowers that residual; on piecewise-affine problems (LPs, matrix games, QPs) a
        step from a point whose active set is right is exact to rounding.
    """
    with intra_op_threads(solve_threads(None, problem)):
        z, residual, _ = _polished(problem, z, step, steps, active)
    return z, residual


def _polished(problem, z: Point, step: Tensor | None, steps: int,
              active: Tensor | None) -> tuple[Point, Tensor, _Linearization]:
    """`polish`, and the linearization (``"dense"``) at the point it returns."""
    method = "dense"
    step = default_step(problem) if step is None else step
    z = detached(tuple(z))
    active = torch.ones(problem.batch_size, dtype=torch.bool, device=z[0].device) if active is None else active
    lin = _Linearization(problem, z, step, method)
    residual = lin.residual
    for _ in range(steps):
        exact = residual <= POLISHED * (1 + lin.leaf.detach().abs().amax(-1))  # a solution to rounding already
        if bool((exact | ~active).all()):
            break
        d = lin.solve_dense(lin.value - lin.leaf.detach(), adjoint=False)  # M d = -R(z)
        candidate = problem.domain.project(_blocks(lin.leaf.detach() + d, lin.dims))
        with torch.no_grad():
            trial = (_flat(candidate) - _flat(fixed_point_map(problem, candidate, step))).norm(dim=-1)
        better = active & ~exact & torch.isfinite(trial) & (trial < 0.5 * residual)
        if not bool(better.any()):
            break
        z = where(better, candidate, z)
        residual = torch.where(better, trial, residual)
        lin = _Linearization(problem, z, step, method)  # (its Jacobian is formed only if asked for)
    return z, residual, lin


# -- attaching --------------------------------------------------------------------------------------
class Adjoint:
    """The implicit differentiation of one solve (``Solution.adjoint``).

    Attributes:
        method: ``"dense"`` or ``"gmres"``.
        step: eta of the fixed-point map, ``(B,)``.
        status: `AdjointStatus` codes ``(B,)`` of the last backward pass (before any: ``SOLVED`` or
            ``NO_SOLUTION``, and ``SINGULAR`` where a formed M is singular).
        valid: ``(B,)`` bool, the instances whose z is a solution (their gradients are defined).
    """

    def __init__(self, linearization: _Linearization, options: Implicit, valid: Tensor, outputs: Tensor):
        self.linearization, self.options, self.valid = linearization, options, valid
        self.method, self.step = linearization.method, linearization.step
        self.threads = solve_threads(None, linearization.problem)
        self.outputs = outputs  # T(z*, theta) with the data's graph (z* constant): what the adjoint pulls back
        self.status = torch.where(valid, int(AdjointStatus.SOLVED), int(AdjointStatus.NO_SOLUTION))
        if self.method == "dense" and bool(valid.any()):
            self.status = torch.where(valid & linearization.singular, int(AdjointStatus.SINGULAR), self.status)

    def pullback(self, g: Tensor) -> Tensor:
        """``v`` with ``M^T v = g`` per instance (``(B, N)``), NaN where undefined; records `status` and warns."""
        with intra_op_threads(self.threads):
            v, status = self.linearization.solve(g, adjoint=True, options=self.options)
        self._record(status)
        return torch.where(self.valid.unsqueeze(-1), v, torch.nan)

    def tangent(self, r: Tensor) -> Tensor:
        """``d`` with ``M d = r`` per instance (directional derivatives), NaN where undefined."""
        with intra_op_threads(self.threads):
            d, status = self.linearization.solve(r, adjoint=False, options=self.options)
        self._record(status)
        return torch.where(self.valid.unsqueeze(-1), d, torch.nan)

    def _record(self, status: Tensor) -> None:
        self.status = torch.where(self.valid, status, int(AdjointStatus.NO_SOLUTION))
        for code, what in ((AdjointStatus.NO_SOLUTION, "the solve did not converge there, so the gradients "
                            "are NaN"),
                           (AdjointStatus.NOT_CONVERGED, "GMRES did not solve the adjoint system there "
                            "(raise Implicit(max_iters=...)), so the gradients are NaN"),
                           (AdjointStatus.SINGULAR, "the linearized system is singular there (a degenerate "
                            "or non-unique solution); the minimum-norm least-squares solution is used")):
            where_ = (self.status == int(code)).nonzero().flatten().tolist()
            if where_:
                warnings.warn(f"implicit differentiation, instances {where_[:10]}{'...' if len(where_) > 10 else ''}:"
                              f" {what}", RuntimeWarning, stacklevel=4)


class _Attach(torch.autograd.Function):
    """Forward: z* (a constant). Backward: the incoming gradient g becomes ``v = M^{-T} g`` on ``T(z*, theta)``."""

    @staticmethod
    def forward(ctx, adjoint: Adjoint, value: Tensor, outputs: Tensor) -> Tensor:
        ctx.adjoint = adjoint
        return value.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        return None, None, ctx.adjoint.pullback(g)


def attach(problem, z: Point, *, options: Implicit | None = None, valid: Tensor | None = None,
           step: Tensor | None = None, linearization: _Linearization | None = None) -> tuple[Point, Adjoint]:
    """z, with the implicit function theorem's gradient with respect to the problem's data attached.

    Args:
        problem: the problem z solves; its data that require grad are what gradients flow to.
        z: the solution, blocks ``(B, n_i)`` (used as given: polish it first if it is not accurate).
        options: an `Implicit` (default ``Implicit()``).
        valid: ``(B,)`` bool, the instances where z is a solution (default all); the others get NaN gradients.
        step: eta (default `default_step`).
        linearization: the linearization at z if one was made already (`polish` makes one).

    Returns:
        ``(z_attached, adjoint)``: blocks with z's values whose backward pass solves the adjoint system
        (`Adjoint.pullback`), and the `Adjoint` record.
    """
    with intra_op_threads(solve_threads(None, problem)):
        return _attach(problem, z, options, valid, step, linearization)


def _attach(problem, z: Point, options: Implicit | None, valid: Tensor | None, step: Tensor | None,
            linearization: _Linearization | None) -> tuple[Point, Adjoint]:
    options = Implicit() if options is None else options
    step = default_step(problem) if step is None else step
    z = detached(tuple(z))
    valid = torch.ones(problem.batch_size, dtype=torch.bool, device=z[0].device) if valid is None else valid
    lin = linearization or _Linearization(problem, z, step, choose_method(options, problem))
    with torch.enable_grad():
        outputs = _flat(fixed_point_map(problem, z, step))
    adjoint = Adjoint(lin, options, valid, outputs)
    if not outputs.requires_grad:  # no data require grad: nothing to attach
        return z, adjoint
    flat = _Attach.apply(adjoint, _flat(z), outputs)
    return _blocks(flat, lin.dims), adjoint


def unrolled(problem, solver, iterations: Tensor) -> Point:
    """The solver's output after ``iterations[b]`` steps on instance b, differentiated through every step.

    For comparison with implicit differentiation: memory grows with the iterations (every step's graph is
    kept), and the gradient is that of the iterate, not of the solution.
    """
    count = int(iterations.max()) if iterations.numel() else 0
    with torch.enable_grad():
        z = problem.domain.project(problem.z0)
        state = solver.init(problem, z)
        for k in range(count):
            z_new, state_new = solver.step(problem, z, state)
            running = iterations > k
            z, state = where(running, z_new, z), where(running, state_new, state)
        return tuple(solver.output(problem, z, state))


def differentiate(problem, solver, solution, how: Implicit | str):
    """``solution`` with its point (and its objective value) on the autograd graph of the problem's data.

    ``how``: an `Implicit` (polish where asked, then `attach`) or ``"unroll"`` (`unrolled`). Instances that
    did not converge get NaN gradients (implicit) with a warning at the backward pass.
    """
    from .merit import residual
    from .solution import Status

    valid = solution.status == int(Status.CONVERGED)
    if how == "unroll":
        z = unrolled(problem, solver, solution.iterations)
        set_grad = True
    else:
        method = choose_method(how, problem)
        if how.polish and method != "dense":
            raise ValueError("Implicit(polish=True) needs method='dense' (Newton steps with the formed M)")
        z, lin = tuple(solution.z), None
        if how.polish or (how.polish is None and method == "dense"):
            z, _, lin = _polished(problem, z, None, 3, valid)
            with torch.no_grad():
                solution.residual = residual(problem, z)
                gap = problem.duality_gap(z) if solution.gap is not None else None
            solution.gap = gap if gap is None else gap.detach()
        z, solution.adjoint = attach(problem, z, options=how, valid=valid, linearization=lin)
        set_grad = _requires_grad(problem.domain)
    solution.z = z
    if hasattr(problem, "objective"):
        with torch.enable_grad():  # the envelope theorem: df/dtheta at the solution, unless the sets move
            solution.value = problem.objective(z if set_grad else detached(z))
    return solution


def sensitivity(solution, parameter: Tensor, direction: Tensor | None = None, *,
                per_instance: bool | None = None) -> Point:
    """Derivatives of a differentiable solve's solution with respect to one tensor of the problem's data.

    Args:
        solution: a `Solution` of ``saddle.solve(..., differentiable=True)`` (or ``linprog`` / ``quadprog``'s
            ``solution``), whose graph has not been freed by a backward pass.
        parameter: a tensor requiring grad that the problem's data depend on, e.g. ``(B, m, n)`` payoff
            matrices (per instance: first dimension B) or a tensor shared by the batch.
        direction: a tensor shaped like ``parameter``: the directional derivative ``dz*/dtheta [direction]``
            (one linear solve); None: the full Jacobian (one backward pass per coordinate of a point).
        per_instance: whether row b of ``parameter`` is instance b's own data (then instance b depends on
            it alone); None: when its first dimension is the batch size B.

    Returns:
        With ``direction``: blocks ``(B, n_i)``, the derivative of each block along it. Without: blocks
        ``(B, n_i, *rest)``, ``d z_i[b, j] / d parameter[b, ...]`` for a per-instance ``parameter`` of shape
        ``(B, *rest)``, or ``d z_i[b, j] / d parameter`` (``rest = parameter.shape``) for a shared one (then
        one backward pass per coordinate and instance).

    Raises:
        ValueError: without a differentiable solution, or once a backward pass has freed its graph.
    """
    adjoint = getattr(solution, "adjoint", None)
    if adjoint is None:
        raise ValueError("sensitivity needs the Solution of a solve with differentiable=True")
    if not isinstance(parameter, Tensor) or not parameter.requires_grad:
        raise TypeError("parameter must be a tensor that requires grad (data the problem was built from)")
    z = tuple(solution.z)
    dims = tuple(b.shape[-1] for b in z)
    B, N = z[0].shape[0], sum(dims)
    if direction is not None:
        if not isinstance(direction, Tensor) or direction.shape != parameter.shape:
            raise ValueError(f"direction must be a tensor of the parameter's shape {tuple(parameter.shape)}, "
                             f"got {getattr(direction, 'shape', type(direction).__name__)}")
        with torch.enable_grad():
            w = torch.zeros_like(adjoint.outputs).requires_grad_()
            (pulled,) = _grad(adjoint.outputs, parameter, w, create_graph=True)
            if pulled is None or not pulled.requires_grad:
                return tuple(torch.zeros_like(b) for b in z)
            (pushed,) = torch.autograd.grad((pulled * direction.to(pulled)).sum(), w, allow_unused=True)
        pushed = torch.zeros_like(w) if pushed is None else pushed
        return _blocks(adjoint.tangent(pushed.detach()), dims)
    flat = torch.cat(z, -1)
    if per_instance is None:
        per_instance = parameter.dim() > 0 and parameter.shape[0] == B
    elif not isinstance(per_instance, bool):
        raise TypeError(f"per_instance must be None, True or False, got {per_instance!r}")
    if per_instance and (parameter.dim() == 0 or parameter.shape[0] != B):
        raise ValueError(f"per_instance=True needs a parameter whose first dimension is the batch size {B}, "
                         f"got shape {tuple(parameter.shape)}")
    rest = parameter.shape[1:] if per_instance else parameter.shape
    out = flat.new_zeros(B, N, *rest)
    instances = [None] if per_instance or B == 1 else range(B)
    for b in instances:
        for j in range(N):
            seed = torch.zeros_like(flat)
            if b is None:
                seed[:, j] = 1
            else:
                seed[b, j] = 1
            (g,) = _grad(flat, parameter, seed)
            if g is None:
                continue
            if b is None:
                out[:, j] = g if per_instance else g.unsqueeze(0)
            else:
                out[b, j] = g
    return tuple(out.split(dims, 1))


def _grad(output: Tensor, wrt: Tensor, seed: Tensor, create_graph: bool = False) -> tuple[Tensor | None]:
    """``torch.autograd.grad`` keeping the graph, with a freed graph named as such."""
    try:
        return torch.autograd.grad(output, wrt, seed, retain_graph=True, create_graph=create_graph, allow_unused=True)
    except RuntimeError as err:
        if "second time" in str(err):
            raise ValueError("sensitivity needs the solution's autograd graph, which a backward pass has freed: "
                             "call sensitivity before backward(), or backward(retain_graph=True)") from err
        raise
