"""Problems: a batched VI (operator, domain, starting point) and the saddle-point forms built on it.

- `VIProblem`: find z* in Z with ``<F(z*), z - z*> >= 0`` for all z in Z.
- `SaddleProblem`: ``min_{x in X} max_{y in Y} f(x, y)``, the VI with
  ``F = (grad_x f, -grad_y f)`` on ``X x Y``.
- `BilinearProblem`: ``min_{x in X} max_{y in Y} g(x) + <Kx, y> - h*(y)``
  with simple terms g, h* (`saddle.terms`); it knows its exact duality gap
  wherever the inner maximizations have closed forms.

All hold B independent instances: the starting point's blocks are ``(B, n_i)``.
``problem.select(index)`` is the problem of some of them (`VIProblem.select`).
"""

from __future__ import annotations

import copy
from typing import Callable, NamedTuple, Sequence

import torch
from torch import Tensor

from .coupling import Bilinear, Coupling, SmoothCoupling
from .operator import MixedProducts, Operator, SaddleOperator, _check_vector, spectral_norm
from .point import Point, as_point, descend
from .selection import Selection, as_selection, select_function, take
from .sets import ConstraintSet, Product, Reals
from .terms import Linear, Quadratic, Term, Zero
from .tree import map_tensors

__all__ = ["Reference", "VIProblem", "SaddleProblem", "CompositeSaddleProblem", "BilinearProblem"]


class Reference(NamedTuple):
    """An exact answer from an independent solver or a closed form.

    Attributes:
        solution: a solution point (tuple of ``(B, n_i)`` tensors), or None.
        value: the game value per instance ``(B,)`` (saddle problems), or None.
        unique: whether the solution is the unique one (distances to it are then meaningful).
        source: where it came from, e.g. ``"HiGHS (scipy.optimize.linprog)"``.
    """

    solution: Point | None = None
    value: Tensor | None = None
    unique: bool = True
    source: str = ""


def _check_placement(obj, name: str, like: Tensor) -> None:
    """Raise ``ValueError`` unless every tensor attribute of ``obj`` is real and on ``like``'s device."""
    for attr, value in vars(obj).items():
        if isinstance(value, Tensor) and (value.is_complex() or value.device != like.device):
            raise ValueError(f"{name}.{attr.lstrip('_')} is {value.dtype} on {value.device}, but the point is "
                             f"{like.dtype} on {like.device}: give real data on the point's device")


def _per_instance(value, name: str, batch_size: int, *, positive: bool = True) -> Tensor | None:
    if value is None:
        return None
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != batch_size):
        raise ValueError(f"{name} must be a float or a (B,) = ({batch_size},) tensor, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all() or (positive and (t <= 0).any()):
        raise ValueError(f"{name} must be finite{' and positive' if positive else ''}, got {value}")
    return t.expand(batch_size)


class VIProblem:
    """A batch of B variational inequalities VI(F, Z).

    Args:
        operator: an `Operator`, or a function ``z -> F(z)`` on points.
        domain: the set Z: a `Product` of one set per block, a sequence of sets,
            or a single set when the point has one block.
        z0: the starting point, a tuple of ``(B, n_i)`` tensors (a single
            ``(B, n)`` tensor for one block).
        solution: a known solution point, if any.
        reference: a function returning a `Reference`, called the first time the
            reference is needed (for references that are expensive to compute).
        lipschitz: a Lipschitz constant L of F (float or ``(B,)``), if known;
            otherwise the operator's own estimate, if it has one.
        strong_monotonicity: mu > 0 with ``<F(u) - F(v), u - v> >= mu |u - v|^2``, if known.
        name: a label used in tables and plots.
        fingerprint: a string that identifies the problem's data, for problems
            built on closures whose captured data a checkpoint's fingerprint
            cannot see (`saddle.fingerprint`); a resume then checks it too.
    """

    def __init__(
        self,
        operator: Operator | Callable[[Point], Point],
        domain: Product | ConstraintSet | Sequence[ConstraintSet],
        z0,
        *,
        solution=None,
        reference: Callable[[], Reference] | Reference | None = None,
        lipschitz=None,
        strong_monotonicity=None,
        name: str | None = None,
        fingerprint: str | None = None,
    ):
        if not isinstance(operator, Operator):
            if not callable(operator):
                raise TypeError(f"operator must be an Operator or a callable, got {type(operator).__name__}")
            operator = Operator(operator)
        self.operator = operator
        self.z0 = tuple(b.detach() for b in as_point(z0, "z0"))  # solves never differentiate through the start
        if isinstance(domain, ConstraintSet):
            domain = Product(domain)
        elif isinstance(domain, (tuple, list)):
            domain = Product(*domain)
        elif not isinstance(domain, Product):
            raise TypeError(f"domain must be a set, a Product or a sequence of sets, got {type(domain).__name__}")
        domain.check(self.batch_size, self.dims)
        for i, s in enumerate(domain):
            _check_placement(s, f"domain[{i}]", self.z0[i])
        self.domain = domain
        if solution is not None:
            solution = as_point(solution, "solution")
            if tuple(s.shape for s in solution) != tuple(b.shape for b in self.z0):
                raise ValueError("solution must have the same block shapes as z0")
            if reference is None:
                reference = Reference(solution=solution)
        self._reference = reference
        self._lipschitz = _per_instance(lipschitz, "lipschitz", self.batch_size)
        self._mu = _per_instance(strong_monotonicity, "strong_monotonicity", self.batch_size)
        self.name = name or type(self).__name__
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise TypeError(f"fingerprint must be a string, got {type(fingerprint).__name__}")
        self.fingerprint = fingerprint

    # -- shape ---------------------------------------------------------------------------
    @property
    def batch_size(self) -> int:
        """The number of instances B (the first dimension of every block)."""
        return self.z0[0].shape[0]

    @property
    def dims(self) -> tuple[int, ...]:
        """The block sizes ``(n_1, ..., n_k)``: block i has shape ``(B, n_i)``."""
        return tuple(b.shape[1] for b in self.z0)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the points (that of ``z0``)."""
        return self.z0[0].dtype

    @property
    def device(self) -> torch.device:
        """The device of the points (that of ``z0``)."""
        return self.z0[0].device

    def to(self, dtype: torch.dtype) -> "VIProblem":
        """A copy of the problem whose floating-point data are in ``dtype``.

        Everything the problem holds in attributes is converted (the start, the
        sets' parameters, terms, couplings, operators, modules: see
        `saddle.tree.map_tensors`); the problem itself is not modified.
        Functions are shared: the tensors a closure captured keep their dtype,
        so a copy of a problem built on such a closure computes in the
        promoted dtype or fails where dtypes cannot mix. The driver uses
        ``problem.to(torch.float64)`` to re-check low-precision results.
        """
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        return map_tensors(self, lambda t: t.to(dtype) if t.is_floating_point() else t)

    # -- the VI --------------------------------------------------------------------------
    def F(self, z: Point) -> Point:
        """The operator at ``z``: a tuple of ``(B, n_i)`` tensors."""
        return self.operator(z)

    def block_prox(self, i: int, u: Tensor, grad: Tensor, step) -> Tensor:
        """The forward-backward step of block i: ``argmin_{v in Z_i} <grad, v> + r_i(v) + |v - u|^2 / (2 step)``.

        ``r_i`` is the block's non-smooth term (none here: the step is the
        projection ``P_{Z_i}(u - step * grad)``); ``step`` is a float or ``(B,)``.
        """
        return self.domain[i].project(descend(u, grad, step))

    def prox(self, z: Point, grad: Point, step) -> Point:
        """`block_prox` on every block: the step every Euclidean solver takes."""
        return tuple(self.block_prox(i, u, g, step) for i, (u, g) in enumerate(zip(z, grad)))

    def bregman_prox(self, z: Point, grad: Point, step) -> Point:
        """``argmin_{u in Z} step <grad, u> + D(u, z)`` with the sets' Bregman divergences (mirror-prox)."""
        return self.domain.prox_step(z, grad, step)

    # -- second derivatives (competitive methods) -----------------------------------------
    def mixed_products(self, z: Point) -> MixedProducts:
        """The gradients of f and its mixed second-derivative products at ``z`` (saddle problems only).

        A VI has no objective f, hence no mixed derivatives ``D_xy f``, unless
        its operator is the gradient field of one (a `SaddleOperator` on two
        blocks); otherwise this raises ``TypeError``. See `SaddleProblem.mixed_products`.
        """
        return self._saddle_operator("mixed_products").mixed_products(z)

    def mixed_xy(self, z: Point, v: Tensor) -> Tensor:
        """``D_xy f v`` at ``z`` (saddle problems only; see `SaddleProblem.mixed_xy`)."""
        return self._saddle_operator("mixed_xy").mixed_xy(z, v)

    def mixed_yx(self, z: Point, u: Tensor) -> Tensor:
        """``D_yx f u`` at ``z`` (saddle problems only; see `SaddleProblem.mixed_yx`)."""
        return self._saddle_operator("mixed_yx").mixed_yx(z, u)

    def _saddle_operator(self, method: str) -> Operator:
        if len(self.z0) == 2 and hasattr(self.operator, method):
            return self.operator
        raise TypeError(self._no_saddle_structure())

    def _no_saddle_structure(self) -> str:
        return (f"{type(self).__name__} {self.name!r} has no saddle structure: mixed second derivatives "
                "D_xy f need an objective min_x max_y f(x, y); build the problem as a SaddleProblem "
                "(or CompositeSaddleProblem / BilinearProblem)")

    def lipschitz(self) -> Tensor | None:
        """L per instance, shape ``(B,)`` (float64, on the CPU), or None if unknown."""
        if isinstance(self._lipschitz, _LazyRows):  # a selection's: the rows of the batch's L
            self._lipschitz = self._lipschitz()
            return self._lipschitz
        if self._lipschitz is None:
            L = self.operator.lipschitz()
            if L is not None:
                self._lipschitz = L.detach().to("cpu", torch.float64).expand(self.batch_size)
        return self._lipschitz

    def strong_monotonicity(self) -> Tensor | None:
        """mu per instance, shape ``(B,)``, or None if unknown / not strongly monotone."""
        return self._mu

    def duality_gap(self, z: Point) -> Tensor | None:
        """The exact duality gap at ``z``, shape ``(B,)``, or None where it is not computable."""
        return None

    def extra_measures(self) -> tuple[str, ...]:
        """Names of convergence measures of the problem's own, usable as ``solve(..., measure=name)``."""
        return ()

    def measure(self, name: str, z: Point, Fz: Point) -> Tensor:
        """The measure ``name`` (one of `extra_measures`) at ``z``, shape ``(B,)``; ``Fz`` is F at z."""
        raise ValueError(f"{self.name} has no measure {name!r}")

    def perturbation_scale(self, w: Tensor) -> Tensor | None:
        """The geometry of a SAM-like perturbation of the min player's ``w``, ``(B, n)``, or None.

        Sharpness-aware solvers (`saddle.SAM`, `saddle.ASAM`) perturb within the
        max player's ball ``{|T_w^-1 e| <= rho}``; this is the diagonal of the
        metric ``T_w`` at ``w``, ``(B, n) -> (B, n)``. The default, None, is the
        Euclidean ball of plain SAM; `problems.sharpness.SharpnessProblem`
        returns ASAM's ``|w| + eta`` when built with ``adaptive=True``.
        """
        return None

    # -- the exact reference --------------------------------------------------------------
    @property
    def reference(self) -> Reference | None:
        """The exact reference (computed on first access if given as a function)."""
        if callable(self._reference) and not isinstance(self._reference, Reference):
            self._reference = self._reference()
        return self._reference

    @property
    def has_reference(self) -> bool:
        """Whether a reference is already available without computing anything."""
        return isinstance(self._reference, Reference)

    @property
    def solution(self) -> Point | None:
        """The reference solution ``z*`` (blocks ``(B, n_i)``) if the problem has a `Reference`, else None."""
        ref = self.reference
        return None if ref is None else ref.solution

    # -- instance selection ----------------------------------------------------------------
    def select(self, index) -> "VIProblem":
        """The problem of the selected instances, a batch of its own of the same class.

        Args:
            index: an int i (a batch of one, like ``z[i:i + 1]``), a slice, a
                ``(B,)`` boolean mask or a 1-D tensor of positions (see
                `saddle.selection`); an empty selection is a ``ValueError``.

        The start, the domain, the operator's data, the reference (solution and
        value), the Lipschitz and strong-monotonicity constants are the selected
        rows of this problem's, exactly; shared data are kept, not copied, and
        nothing is re-validated or recomputed (a reference or constant not yet
        computed is computed for the batch the first time the selection needs
        it, and its rows taken). Solving the selection solves those instances
        as the batch does. An operator or objective written as a function that
        cannot select its data is evaluated on the full batch with this
        problem's start in the other rows (``problem.operator.selectable`` is
        then False): exact, since instances do not interact, but as costly as
        the whole batch. Subclasses with per-instance data of their own extend
        `select_into`.
        """
        selection = as_selection(index, self.batch_size)
        new = copy.copy(self)
        self.select_into(new, selection._replace(base=self.z0))
        return new

    @property
    def selectable(self) -> bool:
        """Whether `select` gives a problem that evaluates only the selected instances' data.

        False when the operator is a function that cannot select its data: a
        selection then evaluates it on the full batch (exact, as costly as the batch).
        """
        return self.operator.selectable

    def select_into(self, new: "VIProblem", selection: Selection) -> None:
        """Fill ``new``, a shallow copy of this problem, with the data of the selected instances.

        The subclass hook of `select`: an override selects its own per-instance
        attributes and calls ``super().select_into(new, selection)``. An operator
        an override has already put on ``new`` is kept.
        """
        new.z0 = tuple(take(b, selection) for b in self.z0)
        new.domain = self.domain.select(selection)
        if new.operator is self.operator:
            new.operator = self.operator.select(selection)
        if isinstance(self._reference, Reference):
            new._reference = _select_reference(self._reference, selection)
        elif self._reference is not None:
            new._reference = lambda: _select_reference(self.reference, selection)
        new._lipschitz = take(self._lipschitz, selection) if self._lipschitz is not None else \
            _LazyRows(self.lipschitz, selection)
        new._mu = take(self._mu, selection)
        if self.fingerprint is not None:
            new.fingerprint = f"{self.fingerprint}[select {selection}]"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, batch_size={self.batch_size}, dims={self.dims}, domain={self.domain!r})"


def _select_reference(reference: Reference | None, selection: Selection) -> Reference | None:
    """A reference's solution and value rows (a shared 0-d value kept)."""
    if reference is None:
        return None
    solution = None if reference.solution is None else tuple(take(b, selection) for b in reference.solution)
    return reference._replace(solution=solution, value=take(reference.value, selection))


class _LazyRows:
    """The selected rows of a per-instance constant the full batch computes on first use (None stays None)."""

    def __init__(self, compute: Callable[[], Tensor | None], selection: Selection):
        self.compute, self.selection = compute, selection

    def __call__(self) -> Tensor | None:
        value = self.compute()
        return None if value is None else take(value, self.selection)


class SaddleProblem(VIProblem):
    """A batch of B saddle-point problems ``min_{x in X} max_{y in Y} f(x, y)``.

    Args:
        f: ``f(x, y) -> (B,)`` with x of shape ``(B, n)`` and y of shape ``(B, m)``.
        x0: the minimizing player's start, ``(B, n)``.
        y0: the maximizing player's start, ``(B, m)``.
        X: the minimizing player's set (default: unconstrained).
        Y: the maximizing player's set (default: unconstrained).
        solution: a known saddle point ``(x*, y*)``, if any.
        value: the known saddle value per instance, if any.
        operator: an `Operator` to use instead of autograd's ``(grad_x f, -grad_y f)``
            (e.g. one written out by hand for speed); it must be that gradient field.
        **kwargs: ``reference``, ``lipschitz``, ``strong_monotonicity``,
            ``name`` and ``fingerprint``, as in `VIProblem`.
    """

    def __init__(self, f, x0: Tensor, y0: Tensor, X: ConstraintSet | None = None, Y: ConstraintSet | None = None,
                 *, solution=None, value=None, operator: Operator | None = None, **kwargs):
        if not callable(f):
            raise TypeError(f"f must be callable, got {type(f).__name__}")
        self.f = f
        x0, y0 = as_point((x0, y0), "(x0, y0)")
        X = Reals() if X is None else X
        Y = Reals() if Y is None else Y
        for name, s in (("X", X), ("Y", Y)):
            if not isinstance(s, ConstraintSet):
                raise TypeError(f"{name} must be a ConstraintSet, got {type(s).__name__}")
        if value is not None and kwargs.get("reference") is None:
            kwargs["reference"] = Reference(
                solution=None if solution is None else as_point(solution, "solution"),
                value=torch.as_tensor(value, dtype=x0.dtype, device=x0.device),
            )
        super().__init__(operator or SaddleOperator(f), Product(X, Y), (x0, y0), solution=solution, **kwargs)
        if len(self.z0) != 2:
            raise ValueError("a saddle problem has exactly two blocks (x, y)")

    def objective(self, z: Point) -> Tensor:
        """``f(x, y)`` per instance, shape ``(B,)``."""
        return self.f(z[0], z[1])

    def select_into(self, new: "SaddleProblem", selection: Selection) -> None:
        """`VIProblem.select_into`, and f for the selected instances (its own ``select``, else on the full batch).

        An ``f`` an override has already put on ``new`` is kept.
        """
        super().select_into(new, selection)
        if new.f is self.f:
            new.f = select_function(self.f, selection, base=selection.base)
        new._f_operator = None

    # -- second derivatives (competitive methods) -----------------------------------------
    def mixed_products(self, z: Point) -> MixedProducts:
        """``grad_x f``, ``grad_y f`` at ``z = (x, y)`` and the products ``v -> D_xy f v``, ``u -> D_yx f u`` there.

        ``D_xy f = d^2 f / dx dy`` is ``n x m`` per instance and ``D_yx f`` its
        transpose; see `saddle.operator.MixedProducts` for the shapes. The
        operator's own `mixed_products` is used when it has one (`SaddleOperator`:
        autograd; bilinear couplings: exact products with K). For an operator
        without second-order access (one written by hand), the gradients come
        from the operator (one evaluation) and each product from
        differentiating f's gradient.
        """
        if hasattr(self.operator, "mixed_products"):
            return self.operator.mixed_products(z)
        Fx, Fy = self.F(z)
        second = self._second_order()
        return MixedProducts(Fx, -Fy, lambda v: second.mixed_xy(z, v), lambda u: second.mixed_yx(z, u))

    def mixed_xy(self, z: Point, v: Tensor) -> Tensor:
        """``D_xy f(x, y) v``: ``v`` of shape ``(B, m)`` (y-space) to ``(B, n)`` (x-space), per instance."""
        op = self.operator if hasattr(self.operator, "mixed_xy") else self._second_order()
        return op.mixed_xy(z, v)

    def mixed_yx(self, z: Point, u: Tensor) -> Tensor:
        """``D_yx f(x, y) u``: ``u`` of shape ``(B, n)`` (x-space) to ``(B, m)`` (y-space), per instance."""
        op = self.operator if hasattr(self.operator, "mixed_yx") else self._second_order()
        return op.mixed_yx(z, u)

    def _second_order(self) -> SaddleOperator:
        """A `SaddleOperator` of f, for second derivatives when the problem's operator has none."""
        if getattr(self, "_f_operator", None) is None:
            self._f_operator = SaddleOperator(self.f)
        return self._f_operator


def _as_term(term, name: str) -> Term:
    if term is None:
        return Zero()
    if isinstance(term, Term):
        return term
    raise TypeError(f"{name} must be None or a saddle.terms.Term (Zero, Linear, Quadratic, L1, Indicator, Smooth, "
                    f"Sum), got {type(term).__name__}")


def _as_coupling(coupling) -> Coupling:
    if isinstance(coupling, Coupling):
        return coupling
    if isinstance(coupling, Tensor):
        return Bilinear(coupling)
    if callable(coupling):
        return SmoothCoupling(coupling)
    raise TypeError(f"coupling must be a saddle.coupling.Coupling, a tensor K (bilinear <Kx, y>) or a function "
                    f"phi(x, y) -> (B,), got {type(coupling).__name__}")


class _CompositeOperator(Operator):
    """``F(x, y) = (grad g_s(x) + grad_x phi(x, y), grad h_s(y) - grad_y phi(x, y))`` (smooth parts only)."""

    def __init__(self, coupling: Coupling, g_smooth: Term, h_smooth: Term):
        super().__init__()
        self.coupling, self.g_smooth, self.h_smooth = coupling, g_smooth, h_smooth

    def __call__(self, z: Point) -> Point:
        x, y = z
        if isinstance(self.coupling, SmoothCoupling):
            gx, gy = self.coupling.grads(x, y)
        else:
            gx, gy = self.coupling.grad_x(x, y), self.coupling.grad_y(x, y)
        # (zero terms add nothing: skipping them keeps a bilinear game's operator at two products and a sign)
        fx = gx if isinstance(self.g_smooth, Zero) else self.g_smooth.grad(x) + gx
        fy = torch.neg(gy) if isinstance(self.h_smooth, Zero) else self.h_smooth.grad(y) - gy
        return fx, fy

    # Mixed second derivatives: g and h are separable, so D_xy f = D_xy phi.
    def mixed_products(self, z: Point) -> MixedProducts:
        """Gradients of ``f = g_s + phi - h_s`` and the mixed products of phi at ``z`` (see `MixedProducts`).

        For a bilinear coupling ``<K x, y>``: ``D_xy f v = K^T v`` and
        ``D_yx f u = K u``, exactly; otherwise by autograd on phi.
        """
        x, y = z
        if isinstance(self.coupling, Bilinear):
            Fx, Fy = self(z)
            return MixedProducts(Fx, -Fy, self.coupling.rmv, self.coupling.mv)
        inner = self._phi_operator().mixed_products(z)
        return MixedProducts(self.g_smooth.grad(x) + inner.grad_x, inner.grad_y - self.h_smooth.grad(y),
                             inner.xy, inner.yx)

    def mixed_xy(self, z: Point, v: Tensor) -> Tensor:
        """``D_xy f v = D_xy phi v``: ``(B, m) -> (B, n)`` (``K^T v`` for a bilinear coupling)."""
        if isinstance(self.coupling, Bilinear):
            _check_vector(v, "v", z[1], "y")
            return self.coupling.rmv(v)
        return self._phi_operator().mixed_xy(z, v)

    def mixed_yx(self, z: Point, u: Tensor) -> Tensor:
        """``D_yx f u = D_yx phi u``: ``(B, n) -> (B, m)`` (``K u`` for a bilinear coupling)."""
        if isinstance(self.coupling, Bilinear):
            _check_vector(u, "u", z[0], "x")
            return self.coupling.mv(u)
        return self._phi_operator().mixed_yx(z, u)

    def _phi_operator(self) -> SaddleOperator:
        if getattr(self, "_phi", None) is None:
            self._phi = SaddleOperator(self.coupling.value)
        return self._phi

    selectable = True

    def select(self, index) -> "_CompositeOperator":
        sel = as_selection(index)._replace(base=None)
        return _CompositeOperator(self.coupling.select(sel), self.g_smooth.select(sel), self.h_smooth.select(sel))

    def lipschitz(self) -> Tensor | None:
        if not isinstance(self.coupling, Bilinear):
            return None
        c, g, h = self.coupling, self.g_smooth, self.h_smooth
        if isinstance(g, (Zero, Linear)) and isinstance(h, (Zero, Linear)):
            return c.norm()
        if c.sparse or not all(isinstance(t, (Zero, Linear, Quadratic)) for t in (g, h)):
            # |[[P, K^T], [-K, Q]]| <= max(|P|, |Q|) + |K|
            try:
                L_g, L_h = (torch.as_tensor(t.lipschitz(), dtype=torch.float64) for t in (g, h))
                return c.norm() + torch.maximum(L_g, L_h)
            except ValueError:
                return None
        K = c.K
        n, m, B = K.shape[-1], K.shape[-2], K.shape[0]
        M = torch.cat([torch.cat([_dense(g, n, K), K.mT.expand(B, -1, -1)], -1),
                       torch.cat([-K.expand(B, -1, -1), _dense(h, m, K)], -1)], -2)
        return spectral_norm(M)


def _dense(term: Term, n: int, like: Tensor) -> Tensor:
    B = like.shape[0]
    if isinstance(term, Quadratic):
        P = torch.diag_embed(term.P) if term.diagonal else term.P
        return P.to(like.dtype).expand(B, n, n)
    return like.new_zeros(B, n, n)


class CompositeSaddleProblem(SaddleProblem):
    """A batch of ``min_{x in X} max_{y in Y} g(x) + phi(x, y) - h(y)``.

    Args:
        coupling: phi: a `saddle.coupling.Coupling` (`Bilinear`, `SemiLinear`,
            `SmoothCoupling`), a tensor K for ``<K x, y>``, or a function
            ``phi(x, y) -> (B,)``.
        x0: the minimizing player's start, ``(B, n)``.
        y0: the maximizing player's start, ``(B, m)``.
        g: the minimizing player's convex term (a `saddle.terms.Term`; default 0).
        h: the maximizing player's convex term, subtracted (default 0).
        X: the minimizing player's set (default: unconstrained).
        Y: the maximizing player's set (default: unconstrained).
        **kwargs: ``solution``, ``value``, ``reference``, ``lipschitz``,
            ``strong_monotonicity`` and ``name``, as in `SaddleProblem`.

    g and h may mix smooth parts (used through their gradients, in the
    operator ``F = (grad g_s + grad_x phi, grad h_s - grad_y phi)``) and one
    prox-friendly part each (`L1`, `Indicator`, ...; see `saddle.terms.Term.split`),
    which enters every Euclidean solver's step through `prox`. Primal-dual
    methods use the pieces separately.
    """

    def __init__(self, coupling, x0: Tensor, y0: Tensor, *, g: Term | None = None, h: Term | None = None,
                 X: ConstraintSet | None = None, Y: ConstraintSet | None = None, **kwargs):
        self.coupling = _as_coupling(coupling)
        self.g = _as_term(g, "g")
        self.h = _as_term(h, "h")
        self._g_split, self._h_split = self.g.split(), self.h.split()
        operator = kwargs.pop("operator", None) or _CompositeOperator(self.coupling, self._g_split[0],
                                                                      self._h_split[0])
        super().__init__(self._f, x0, y0, X, Y, operator=operator, **kwargs)

    @property
    def g_parts(self) -> tuple[Term, Term]:
        """``(smooth, nonsmooth)``: g split into its smooth part and its prox-friendly part (`Term.split`)."""
        return self._g_split

    @property
    def h_parts(self) -> tuple[Term, Term]:
        """``(smooth, nonsmooth)``: h split into its smooth part and its prox-friendly part (`Term.split`)."""
        return self._h_split

    def _f(self, x: Tensor, y: Tensor) -> Tensor:
        return self.g.value(x) + self.coupling.value(x, y) - self.h.value(y)

    def select_into(self, new: "CompositeSaddleProblem", selection: Selection) -> None:
        """The coupling's and the terms' selections (`Coupling.select`, `Term.select`), then `SaddleProblem`'s."""
        parts = selection._replace(base=None)
        chosen: dict[int, object] = {}

        def pick(part):  # one selection per object (g may be its own smooth part)
            if id(part) not in chosen:
                chosen[id(part)] = part.select(parts)
            return chosen[id(part)]

        new.coupling, new.g, new.h = pick(self.coupling), pick(self.g), pick(self.h)
        new._g_split, new._h_split = tuple(map(pick, self._g_split)), tuple(map(pick, self._h_split))
        op = self.operator
        if type(op) is _CompositeOperator and op.coupling is self.coupling and op.g_smooth is self._g_split[0] \
                and op.h_smooth is self._h_split[0]:
            new.operator = _CompositeOperator(new.coupling, new._g_split[0], new._h_split[0])
        new.f = new._f
        super().select_into(new, selection)

    def block_prox(self, i: int, u: Tensor, grad: Tensor, step) -> Tensor:
        rough = (self._g_split if i == 0 else self._h_split)[1]
        return rough.prox(descend(u, grad, step), step, self.domain[i])

    def bregman_prox(self, z: Point, grad: Point, step) -> Point:
        if any(not isinstance(split[1], Zero) for split in (self._g_split, self._h_split)):
            if any(s.geometry != "euclidean" for s in self.domain):
                raise ValueError(f"{self.name}: Bregman prox steps with non-smooth terms are not supported; "
                                 "use Euclidean sets")
            return self.prox(z, grad, step)
        return super().bregman_prox(z, grad, step)


def _inner_bounded(term: Term, domain: ConstraintSet) -> bool:
    """Whether ``sup_{u in domain} <v, u> - term(u)`` is finite for every v."""
    return domain.bounded or term.strongly_convex()


class BilinearProblem(CompositeSaddleProblem):
    """A batch of ``min_{x in X} max_{y in Y} g(x) + <Kx, y> - h*(y)``.

    Args:
        K: the coupling, ``(B, m, n)`` (``(1, m, n)`` is shared), x in R^n, y in R^m;
            or a 2-D ``torch.sparse`` ``(m, n)`` matrix shared by the batch.
        x0: the minimizing player's start, ``(B, n)``.
        y0: the maximizing player's start, ``(B, m)``.
        g: the minimizing player's term, a `saddle.terms` term (default `Zero`).
        h_conj: the maximizing player's term h*, a `saddle.terms` term (default `Zero`).
        X: the minimizing player's set (default: unconstrained).
        Y: the maximizing player's set (default: unconstrained).
        **kwargs: ``solution``, ``value``, ``reference``, ``lipschitz``,
            ``strong_monotonicity`` and ``name``, as in `SaddleProblem`.

    The operator is ``F(x, y) = (grad g(x) + K^T y, h*'(y) - K x)``. The exact
    duality gap ``max_{y in Y} f(x, y) - min_{x in X} f(x, y)`` is available
    whenever each inner problem has a closed form: linear terms on bounded sets
    (through the sets' support functions), strongly convex quadratic terms on
    R^n, quadratic terms on boxes (diagonal: in closed form; dense: by an exact
    box-constrained QP solve, `saddle.terms.box_concave_qp`), L1 terms on boxes.
    Where an inner problem is linear on an unbounded set (unconstrained
    bilinear games) the gap is ``+inf`` at every non-solution, carries no
    information, and is reported as unavailable (``duality_gap`` returns None;
    use the residual or the distance).
    """

    def __init__(self, K: Tensor, x0: Tensor, y0: Tensor, *, g: Term | None = None, h_conj: Term | None = None,
                 X: ConstraintSet | None = None, Y: ConstraintSet | None = None, **kwargs):
        if not isinstance(K, Tensor) or (K.layout == torch.strided and K.dim() != 3):
            raise ValueError(f"K must be a (B, m, n) tensor, got {getattr(K, 'shape', type(K).__name__)}")
        x0, y0 = as_point((x0, y0), "(x0, y0)")
        if K.dtype != x0.dtype or K.device != x0.device:
            raise ValueError(f"K is {K.dtype} on {K.device} but x0 is {x0.dtype} on {x0.device}")
        coupling = Bilinear(K)
        B, n, m = x0.shape[0], x0.shape[1], y0.shape[1]
        if coupling.shape[0] not in (1, B) or coupling.shape[1:] != (m, n):
            raise ValueError(f"K must have shape (B, m, n) = ({B}, {m}, {n}) to match x0 {tuple(x0.shape)} "
                             f"and y0 {tuple(y0.shape)}; got {tuple(K.shape)}")
        self.K = K
        super().__init__(coupling, x0, y0, g=g, h=h_conj, X=X, Y=Y, **kwargs)
        self.h_conj = self.h
        # The gap is +inf off the solution set when an inner problem is an
        # unbounded linear one (e.g. x^T A y on R^n x R^m): then report none.
        X, Y = self.domain
        self._gap_available = _inner_bounded(self.g, X) and _inner_bounded(self.h_conj, Y)
        if self._gap_available:
            try:
                self.duality_gap(self.z0)
            except NotImplementedError:
                self._gap_available = False

    def select_into(self, new: "BilinearProblem", selection: Selection) -> None:
        super().select_into(new, selection)
        new.K = self.K if new.coupling.sparse else new.coupling.K
        new.h_conj = new.h

    def duality_gap(self, z: Point) -> Tensor | None:
        """``max_{y' in Y} f(x, y') - min_{x' in X} f(x', y)`` per instance, shape ``(B,)``."""
        if getattr(self, "_gap_available", True) is False:
            return None
        x, y = z
        X, Y = self.domain
        Kx, Kt_y = self.coupling.mv(x), self.coupling.rmv(y)
        primal = self.g.value(x) + self.h_conj.conj(Kx, Y)
        dual = -self.h_conj.value(y) - self.g.conj(-Kt_y, X)
        return primal - dual

    def strong_monotonicity(self) -> Tensor | None:
        if self._mu is None and isinstance(self.g, Quadratic) and isinstance(self.h_conj, Quadratic):
            mus = []
            for term in (self.g, self.h_conj):
                mu = term.P.amin(-1) if term.diagonal else torch.linalg.eigvalsh(term.P)[..., 0]
                mus.append(mu.detach().to("cpu", torch.float64).expand(self.batch_size))
            mu = torch.minimum(*mus)
            if (mu > 0).all():
                self._mu = mu
        return self._mu
