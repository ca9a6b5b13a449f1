"""Linear programs solved as saddle-point problems: `linprog` (scipy's interface) and `LinearProgram`.

The LP ``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  l <= x <= u`` is
the saddle-point problem of its Lagrangian

    ``min_{l <= x <= u} max_{y_eq free, y_ub >= 0}  c^T x + <K x, y> - <d, y>``,

with ``K = [A_eq; A_ub]`` and ``d = [b_eq; b_ub]``: a `BilinearProblem` with
linear terms on boxes, which `saddle.PDHG` solves (preconditioned, restarted,
with adaptive steps and infeasibility detection). Convergence is measured by
the relative KKT error of PDLP (`LinearProgram.kkt`).

Precision (``precision=``): the iterations run in float64 (``"double"``, the default), in float32
checked in float64 (``"single"``), or in float32 and then in float64 from where float32 stopped
(``"mixed"``). float16 and bfloat16 are refused: with 11- and 8-bit significands every product is
off by up to 5e-4 and 4e-3 (relative), three orders of magnitude above LP tolerances, and such a
solve reported success at points violating a constraint by 1.6e-2. Whatever float32 finds (an
optimum, a certificate) is re-checked in float64 at the point it returns, against the float64
data: a ``"single"`` solve reports status 4 where it fails there, a ``"mixed"`` one goes on in
float64.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .implicit import Implicit, _polished, as_differentiation, attach, dense_fits
from .lp_certificates import box_split, split_by_bounds, verify_dual_ray, verify_primal_ray
from .lp_presolve import Presolved, embed, postsolve, presolve
from .point import put_rows, take_rows, to_dtype
from .problem import BilinearProblem
from .selection import take
from .sets import Box
from .solution import Solution, Status
from .solve import _check_max_iters, _check_time_limit, _tolerance, solve
from .threads import PARALLEL_MIN, intra_op_threads
from .solvers.base import get_solver
from .solvers.interior_point import MAX_ITERS as IPM_MAX_ITERS
from .terms import Linear

__all__ = ["LinearProgram", "LinprogPhase", "LinprogResult", "linprog", "DEFAULT_METHOD", "DEFAULT_PRECISION",
           "DEFAULT_TIME_LIMIT", "METHODS", "MIXED_PROGRESS", "MIXED_SEGMENT", "MIXED_SWITCH_TOL", "PRECISIONS"]

#: The solvers `linprog` offers (``method=``).
METHODS = ("pdhg", "r2hpdhg", "ipm")
#: `linprog`'s method when none is given: restarted Halpern PDHG, which on the netlib LPs of up to
#: 3000 nonzeros solved more (20 / 14 of 26 at 1e-4 / 1e-8 against 19 / 11), certified more
#: infeasible ones (12 of 14 against 7) and took 1.6-2x fewer products than ``pdhg``
#: (docs/benchmarks.md, "Netlib").
DEFAULT_METHOD = "r2hpdhg"
#: `linprog`'s default wall-time limit in seconds: cuPDLPx's default. There is no default iteration
#: limit, as in PDLP: a fixed count (the former 100 000) stopped netlib LPs that converge in
#: 107 000-189 000 iterations, and the iterations an LP needs do not follow from its size.
DEFAULT_TIME_LIMIT = 3600.0
#: The precisions `linprog` offers (``precision=``): float64 iterations; float32 iterations checked
#: in float64; float32 iterations, then float64 ones from where float32 stopped.
PRECISIONS = ("double", "single", "mixed")
#: `linprog`'s precision when neither ``precision`` nor ``dtype=torch.float32`` is given. float64:
#: on the CPU a float32 iteration of a small sparse LP costs what a float64 one does, and float32
#: stalled or drifted on 6 of 10 small netlib LPs before 1e-5; ``"mixed"`` paid on the dense
#: batch of 256 games only (docs/linear_programs.md, "Precision").
DEFAULT_PRECISION = "double"
#: The relative KKT error a ``"mixed"`` solve asks of its float32 iterations (``max(tol, this)``)
#: before it goes on in float64. float32 met 1e-5 in float64 on 252 of 256 random 50 x 50 games
#: (1e-6: 239) and on 4 of the 10 smallest netlib LPs (1e-4: 9); with 1e-4 or 1e-6 here the mixed
#: solves were no faster overall (benchmarks/mixed_precision.py).
MIXED_SWITCH_TOL = 1e-5
#: Iterations of the first float32 segment of a ``"mixed"`` solve; each next segment is twice as long.
MIXED_SEGMENT = 1024
#: A ``"mixed"`` solve runs the next float32 segment of an instance only where the last one brought
#: its best relative KKT error below this fraction of the best before it; elsewhere it goes on in
#: float64 (float32 can drift: on KB2 it never got below 3e-2, where float64 meets 1e-4 in 14 000
#: iterations).
MIXED_PROGRESS = 0.5


class LinearProgram(BilinearProblem):
    """A batch of B linear programs ``min c^T x  s.t.  A_eq x = b_eq, A_ub x <= b_ub, lo <= x <= hi``.

    Args:
        c: ``(B, n)`` costs.
        K: ``(B, m, n)`` dense or a 2-D sparse ``(m, n)`` matrix: the rows of
            ``A_eq`` followed by the rows of ``A_ub``.
        d: ``(B, m)`` right-hand sides ``[b_eq; b_ub]``.
        n_eq: how many of the m rows are equalities.
        lo: lower bounds ``(B, n)`` or ``(1, n)`` (``-inf`` allowed).
        hi: upper bounds, shaped like ``lo`` (``inf`` allowed).
        x0: the primal start ``(B, n)`` (default: 0 projected onto the bounds).
        y0: the dual start ``(B, m)`` (default: 0).
        objective_offset: ``(B,)`` a constant added to both objectives in the KKT errors (default 0).
        reference_norms: ``(|d|, |c|)``, each ``(B,)``, the norms the residuals are relative to
            (default: this LP's own). `linprog` passes those of the LP before its presolve, and the
            objective of the variables the presolve fixed as the offset, so that the KKT errors
            the solve stops on are the ones it reports.

    The data must be float64 or float32 (see `linprog` for why not float16 or bfloat16).

    Besides the natural residual it has the measure ``"kkt"``: the largest of
    the relative primal residual, dual residual and duality gap (`kkt`).
    """

    def __init__(self, c: Tensor, K: Tensor, d: Tensor, n_eq: int, lo: Tensor, hi: Tensor, *,
                 x0: Tensor | None = None, y0: Tensor | None = None, objective_offset: Tensor | None = None,
                 reference_norms: tuple[Tensor, Tensor] | None = None, **kwargs):
        _check_dtype(c.dtype, "LinearProgram: c.dtype")
        B, m = d.shape
        y_lo = torch.cat([torch.full((1, n_eq), -torch.inf), torch.zeros(1, m - n_eq)], -1).to(d)
        X, Y = Box(lo, hi), Box(y_lo, torch.inf)
        x0 = X.project(torch.zeros_like(c)) if x0 is None else x0
        y0 = torch.zeros_like(d) if y0 is None else y0
        self.c, self.d, self.n_eq, self.lo, self.hi = c, d, n_eq, lo, hi
        self.objective_offset = torch.zeros(B, dtype=c.dtype, device=c.device) if objective_offset is None \
            else objective_offset.to(c)
        self.d_norm, self.c_norm = (d.norm(dim=-1), c.norm(dim=-1)) if reference_norms is None else \
            tuple(v.to(c) for v in reference_norms)
        super().__init__(K, x0, y0, g=Linear(c), h_conj=Linear(d), X=X, Y=Y, **kwargs)
        self._set_kkt_constants()

    def _set_kkt_constants(self) -> None:
        """What `kkt` needs that depends only on the data (made once, not at every check): the bounds'
        `BoxSplit`."""
        self._box = box_split(self.lo.to(self.c), self.hi.to(self.c))

    def select_into(self, new, selection) -> None:
        super().select_into(new, selection)
        new.c, new.d, new.lo, new.hi = new.g.c, new.h_conj.c, new.domain[0].lo, new.domain[0].hi
        new.objective_offset, new.d_norm, new.c_norm = (take(v, selection) for v in
                                                        (self.objective_offset, self.d_norm, self.c_norm))
        new._set_kkt_constants()

    def extra_measures(self) -> tuple[str, ...]:
        return ("kkt",)

    def measure(self, name, z, Fz):
        if name != "kkt":
            return super().measure(name, z, Fz)
        return _kkt_error(self.kkt(z))

    def kkt(self, z) -> dict[str, Tensor]:
        """PDLP's relative KKT errors at ``z = (x, y)``, each ``(B,)``.

        - ``primal_residual``: ``|(A_eq x - b_eq, (A_ub x - b_ub)_+)| / (1 + |d|)``
        - ``dual_residual``: the norm of the reduced costs ``r = c + K^T y`` that
          the bounds cannot absorb (``r_i > 0`` with no finite lower bound,
          ``r_i < 0`` with no finite upper bound), over ``1 + |c|``
        - ``gap``: ``|c^T x - D(y)| / (1 + |c^T x| + |D(y)|)`` with the dual
          objective ``D(y) = -<d, y> + sum_i min(r_i lo_i, r_i hi_i)`` (absorbable part of r)
        - ``primal_objective`` and ``dual_objective``.
        """
        x, y = z
        # Y's lower bound is the rows' floor of the residual: -inf for equalities, 0 for inequalities
        residual = torch.clamp(self.coupling.mv(x) - self.d, min=self.domain[1].lo)
        r = self.c + self.coupling.rmv(y)
        bad, bound_terms = split_by_bounds(r, self._box)
        primal = (self.c * x).sum(-1) + self.objective_offset
        dual = bound_terms.sum(-1) - (self.d * y).sum(-1) + self.objective_offset
        return {
            "primal_residual": residual.norm(dim=-1) / (1 + self.d_norm),
            "dual_residual": bad.norm(dim=-1) / (1 + self.c_norm),
            "gap": (primal - dual).abs() / (1 + primal.abs() + dual.abs()),
            "primal_objective": primal,
            "dual_objective": dual,
        }


@dataclass
class LinprogPhase:
    """The iterations of one precision of a `linprog` solve (`LinprogResult.phases`).

    Attributes:
        dtype: the dtype the iterations ran in.
        nit: iterations in this dtype, ``()`` for one LP or ``(B,)``; 0 where an instance ran none.
        matvecs: products with K or K^T in this dtype (2 per iteration, plus 2 at each start).
        seconds: wall time of this phase, for the whole batch.
        solutions: the `saddle.Solution` of each solve of this phase (the float32 segments of a
            ``"mixed"`` solve, or one solve), for the whole batch: an instance this phase did not
            run stopped at once there (its tolerance was inf), and counts nothing here.
    """

    dtype: torch.dtype
    nit: Tensor
    matvecs: Tensor
    seconds: float
    solutions: list[Solution]


@dataclass
class LinprogResult:
    """What `linprog` returns (scipy.optimize.OptimizeResult's names where they exist).

    Attributes:
        x: the primal solution, ``(n,)`` for one LP or ``(B, n)`` for a batch.
        fun: the objective ``c^T x``; NaN where the LP is infeasible or unbounded.
        status: scipy's codes: 0 solved, 1 a limit (iterations, time, or stopped by
            the callback), 2 infeasible (a certificate, or crossed bounds), 3
            unbounded (a certificate), 4 numerical difficulties (a non-finite
            iterate, or a ``precision="single"`` solve whose KKT error or
            certificate fails in float64).
        success: ``status == 0``.
        message: a sentence per status (a list for a batch).
        nit: iterations, in all precisions (the sum of the ``phases``' ``nit``).
        matvecs: products with K or K^T (2 per PDHG iteration, plus 2 at each start), in all precisions.
        primal_residual: relative primal residual (see `LinearProgram.kkt`);
            it, ``dual_residual``, ``gap`` and ``fun`` are computed in float64
            at x on the float64 data, whatever the solve's dtype.
        dual_residual: relative dual residual.
        gap: relative duality gap.
        eqlin: marginals of the equality constraints (d fun / d b_eq), like scipy's ``res.eqlin.marginals``.
        ineqlin: marginals of the inequality constraints (``<= 0``).
        dual_ray: where ``status == 2``, a unit Farkas ray ``(y_eq, y_ub)`` proving
            infeasibility (``y_ub >= 0``, ``A^T y`` absorbed by the bounds,
            ``b^T y`` smaller than the bounds allow; see `saddle.PDHG.certificates`);
            zeros elsewhere, and where the bounds themselves cross (x is NaN there).
        primal_ray: where ``status == 3``, a unit ray s of the feasible set's
            recession cone with ``c^T s < 0``, proving unboundedness; zeros elsewhere.
        solution: the underlying `saddle.Solution` (float64; for a solve in several parts, the
            parts put together: its ``history`` is then empty, see ``phases``).
        phases: a `LinprogPhase` per dtype the iterations ran in, in order (float32 then float64
            for a ``"mixed"`` solve); empty when the presolve solved the LP.
        adjoint: with ``differentiable=True``, the `saddle.implicit.Adjoint` of the gradients
            (per-instance status); None otherwise.
    """

    x: Tensor
    fun: Tensor
    status: Tensor
    success: Tensor
    message: str | list[str]
    nit: Tensor
    matvecs: Tensor
    primal_residual: Tensor
    dual_residual: Tensor
    gap: Tensor
    eqlin: Tensor
    ineqlin: Tensor
    dual_ray: Tensor
    primal_ray: Tensor
    solution: Solution
    phases: tuple[LinprogPhase, ...] = ()
    adjoint: Any = None


_SCIPY_STATUS = {Status.CONVERGED: 0, Status.MAX_ITERS: 1, Status.BUDGET_EXHAUSTED: 1, Status.STOPPED: 1,
                 Status.TIME_LIMIT: 1, Status.INFEASIBLE: 2, Status.UNBOUNDED: 3, Status.DIVERGED: 4,
                 Status.PRECISION_LOSS: 4}
_MESSAGES = {Status.CONVERGED: "Optimization terminated successfully (relative KKT error below tol).",
             Status.MAX_ITERS: "The iteration limit was reached.",
             Status.BUDGET_EXHAUSTED: "The operator-call budget was used up.",
             Status.STOPPED: "The callback stopped the solve.",
             Status.TIME_LIMIT: "The time limit was reached.",
             Status.INFEASIBLE: "The problem is infeasible (a certificate of primal infeasibility was found).",
             Status.UNBOUNDED: "The problem is unbounded (a certificate of dual infeasibility was found).",
             Status.DIVERGED: "Numerical difficulties: an iterate became non-finite.",
             Status.PRECISION_LOSS: "Numerical difficulties: {dtype} cannot resolve tol (the relative KKT error "
                                    "met it in {dtype} but not in float64, or stalled above it, or a certificate "
                                    "found in {dtype} failed in float64); in float64 at x the KKT error is "
                                    "{error:.1e}, tol = {tol:.1e}: solve with precision='mixed' or 'double', "
                                    "or raise tol."}
_CROSSED_MESSAGE = "The problem is infeasible: a lower bound exceeds its upper bound."
_PRESOLVE_MESSAGES = {
    (Status.INFEASIBLE, True): "The problem is infeasible: a constraint without variables is violated (presolve).",
    (Status.UNBOUNDED, True): "The problem is unbounded: a variable in no constraint decreases the objective "
                              "without bound, and the rest is feasible (presolve).",
}

_DTYPES = (torch.float64, torch.float32)


def _check_dtype(dtype, name: str = "dtype") -> None:
    """LPs are solved in float64 or float32: half precisions cannot meet LP tolerances."""
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"{name} must be torch.float64 or torch.float32, got {dtype!r}")
    if dtype in (torch.float16, torch.bfloat16):
        eps = torch.finfo(dtype).eps
        raise ValueError(f"{name} must be torch.float64 or torch.float32, got {dtype}: its "
                         f"{1 - math.log2(eps):.0f}-bit significand rounds each operation by up to {eps / 2:.0e} "
                         "(relative), so constraint violations and the KKT error cannot get near LP tolerances "
                         "(1e-4 and below)")
    if dtype not in _DTYPES:
        raise ValueError(f"{name} must be torch.float64 or torch.float32, got {dtype}")


def _solve_device(device, tensors: dict[str, object]) -> torch.device:
    """``device``, else the one device of the tensor arguments (CPU when there are none).

    Tensor arguments on different devices are an error unless ``device`` says where to move them.
    """
    on = {name: t.device for name, t in tensors.items() if isinstance(t, Tensor)}
    if device is None and len(set(on.values())) > 1:
        where = ", ".join(f"{name} on {dev}" for name, dev in on.items())
        raise ValueError(f"the tensor arguments are on different devices ({where}); "
                         "move them to one device or pass device=")
    for name, dev in on.items():
        if dev.type == "meta":
            raise ValueError(f"{name} is on the meta device, which holds no values")
    if device is None:
        return next(iter(on.values()), torch.device("cpu"))
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be a torch.device or a device string such as 'cpu' or 'cuda:0', "
                         f"got {device!r}") from err
    if device.type == "meta":
        raise ValueError("device='meta' holds no values; linprog needs a device that computes")
    try:
        torch.empty(0, device=device)
    except (RuntimeError, AssertionError) as err:
        raise ValueError(f"device {device} is not available: {err}") from None
    return device


#: Whether `_float64` keeps tensors on their autograd graph (`linprog(differentiable=True)` reads the
#: user's data once more that way, for the gradients); otherwise every input is detached.
_KEEP_GRAD = contextvars.ContextVar("saddle_linprog_keep_grad", default=False)


@contextlib.contextmanager
def _keeping_grad():
    token = _KEEP_GRAD.set(True)
    try:
        yield
    finally:
        _KEEP_GRAD.reset(token)


def _float64(a, name: str, device) -> Tensor:
    """A dense float64 tensor on ``device`` from a real array-like; complex and non-numeric input refused."""
    if isinstance(a, Tensor):
        if a.layout != torch.strided:
            raise TypeError(f"{name} must be dense")
        if a.is_complex():
            raise TypeError(f"{name} must be real, got a {a.dtype} tensor")
        return (a if _KEEP_GRAD.get() else a.detach()).to(device=device, dtype=torch.float64)
    try:
        arr = np.asarray(a)
    except ValueError as err:  # ragged nested sequences
        raise ValueError(f"{name} must be a rectangular array of numbers: {err}") from err
    if arr.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got complex values")
    if arr.dtype.kind not in "biufO":
        raise TypeError(f"{name} must be an array of real numbers, got dtype {arr.dtype}")
    try:
        arr = arr.astype(np.float64)
    except (TypeError, ValueError) as err:  # None, strings or complex numbers in an object array
        raise TypeError(f"{name} must be an array of real numbers: {err}") from err
    return torch.as_tensor(arr, device=device)


def _tensor(a, name: str, device, dims: tuple[int, ...]) -> Tensor | None:
    """A finite dense float64 tensor with one of the allowed numbers of dimensions (None stays None)."""
    if a is None:
        return None
    t = _float64(a, name, device)
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    _check_finite(t, name)
    return t


def _check_finite(t: Tensor, name: str) -> None:
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains NaN or inf (it must be finite)")


def _matrix(A, name: str, device) -> tuple[Tensor | None, bool]:
    """``(matrix, sparse?)`` in float64: a dense ``(B or 1, m, n)`` tensor or a 2-D sparse tensor."""
    if A is None:
        return None, False
    try:
        import scipy.sparse as sp

        if sp.issparse(A):
            A = A.tocoo()  # every format (dok and lil have no .data array)
            if np.iscomplexobj(A.data):
                raise TypeError(f"{name} must be real, got complex values")
            idx = torch.as_tensor(np.vstack([A.row, A.col]), dtype=torch.int64)
            A = torch.sparse_coo_tensor(idx, torch.as_tensor(A.data, dtype=torch.float64), A.shape,
                                        check_invariants=True)
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    if isinstance(A, Tensor) and A.layout != torch.strided:
        if A.is_complex():
            raise TypeError(f"{name} must be real, got a {A.dtype} tensor")
        if A.dim() != 2:
            raise ValueError(f"a sparse {name} must be 2-D (one matrix shared by the batch), "
                             f"got shape {tuple(A.shape)}")
        A = A.to(device=device, dtype=torch.float64)
        A = A.coalesce() if A.layout == torch.sparse_coo else A
        _check_finite(A.values(), name)
        return A, True
    t = _tensor(A, name, device, (2, 3))
    return (t.unsqueeze(0) if t.dim() == 2 else t), False


def _rhs(b, name: str, m: int, B: int, device) -> Tensor:
    """The right-hand side ``(B, m)`` of m constraint rows.

    As in scipy, None is allowed when m = 0, and an array with one non-singleton dimension is that
    dimension (a scalar for one row, an ``(m, 1)`` column); a 2-D ``(B, m)`` or ``(1, m)`` is a batch.
    """
    if b is None and m == 0:
        return torch.zeros(B, 0, dtype=torch.float64, device=device)
    if b is None:
        raise ValueError(f"{name} is required with its matrix")
    t = _float64(b, name, device)
    if not (t.dim() == 2 and t.shape[-1] == m and t.shape[0] in (1, B)):
        t = t.squeeze() if t.numel() != 1 else t.reshape(1)
        if t.shape != (m,):
            raise ValueError(f"{name} must have shape ({m},) or (B, {m}) = ({B}, {m}) (one value per row of "
                             f"its matrix), got {tuple(_float64(b, name, device).shape)}")
    _check_finite(t, name)
    return (t.unsqueeze(0) if t.dim() == 1 else t).expand(B, m)


def _bound(value) -> float:
    """One entry of a (lo, hi) pair: a real number, or None (NaN: unbounded on that side)."""
    if value is None:
        return math.nan
    if isinstance(value, (str, bytes)) or np.iscomplexobj(value):
        raise TypeError(f"bounds must hold real numbers or None, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError) as err:
        raise TypeError(f"bounds must hold real numbers or None, got {value!r}") from err


def _bound_values(bounds, device) -> Tensor:
    """scipy's ``bounds`` as a float64 tensor of values, None (and NaN) kept as NaN."""
    if isinstance(bounds, Tensor) or (isinstance(bounds, np.ndarray) and bounds.dtype.kind != "O"):
        return _float64(bounds, "bounds", device)
    try:
        arr = np.array(bounds, dtype=object)
    except ValueError as err:
        raise ValueError(f"bounds must be a (lo, hi) pair, n pairs or an (n, 2) array: {err}") from err
    values = [_bound(v) for v in arr.reshape(-1)]
    return torch.tensor(values, dtype=torch.float64, device=device).reshape(arr.shape)


def _no_bounds_given(bounds) -> bool:
    """scipy's test for the default bounds: None, or an empty sequence or array (``[]``, ``[[]]``)."""
    if bounds is None:
        return True
    if isinstance(bounds, Tensor):
        return bounds.numel() == 0 and bounds.dim() <= 2
    try:
        return np.array_equal(bounds, []) or np.array_equal(bounds, [[]])
    except (ValueError, TypeError):
        return False


def _bounds(bounds, n: int, B: int, device) -> tuple[Tensor, Tensor]:
    """scipy's ``bounds`` as ``(lo, hi)``, each ``(B or 1, n)`` float64, with scipy's meaning.

    Accepted (scipy's ``_clean_inputs``): None or an empty array (x >= 0); one pair ``(lo, hi)``,
    ``[(lo, hi)]`` or ``[[lo], [hi]]`` for every variable; n pairs or an ``(n, 2)`` array; and, for a
    batch, a ``(B, n, 2)`` array. None, NaN or an infinity means unbounded on that side. An ``(2, n)``
    array is refused, as in scipy (it is easily a transposed ``(n, 2)``).
    """
    pairs = _bound_values((0, None) if _no_bounds_given(bounds) else bounds, device)
    pairs = pairs.reshape(1, -1) if pairs.dim() < 2 else pairs
    if pairs.shape in ((1, 2), (2, 1)) and pairs.shape != (n, 2):
        pairs = pairs.reshape(1, 2).expand(n, 2)
    elif pairs.shape == (2, n) != (n, 2):
        raise ValueError(f"bounds must be an (n, 2) = ({n}, 2) array of (lo, hi) pairs, not a (2, {n}) array")
    if pairs.shape[-2:] != (n, 2) or pairs.dim() not in (2, 3):
        raise ValueError(f"bounds must be a (lo, hi) pair or n = {n} pairs (an ({n}, 2) array), "
                         f"got shape {tuple(pairs.shape)}")
    if pairs.dim() == 3 and pairs.shape[0] not in (1, B):
        raise ValueError(f"bounds have batch size {pairs.shape[0]}, but c has {B}")
    # None / NaN: no bound, as in scipy (nan_to_num would also turn +-inf into +-finfo.max unless told not to)
    lo = torch.nan_to_num(pairs[..., 0], nan=-math.inf, posinf=math.inf, neginf=-math.inf).reshape(-1, n)
    hi = torch.nan_to_num(pairs[..., 1], nan=math.inf, posinf=math.inf, neginf=-math.inf).reshape(-1, n)
    return lo, hi


class _StandardForm(NamedTuple):
    """An LP batch as `LinearProgram` takes it (float64): ``K = [A_eq; A_ub]``, ``d = [b_eq; b_ub]``."""

    c: Tensor
    K: Tensor
    d: Tensor
    n_eq: int
    m_ub: int
    lo: Tensor
    hi: Tensor

    def to(self, dtype: torch.dtype) -> _StandardForm:
        return self._replace(c=self.c.to(dtype), K=self.K.to(dtype), d=self.d.to(dtype), lo=self.lo.to(dtype),
                             hi=self.hi.to(dtype))


def _costs(c, device) -> tuple[Tensor, bool]:
    """``(c as (B, n), single)``: a 2-D c is a batch; otherwise, as scipy, c has one non-singleton dimension
    (a scalar is one variable) and is one LP."""
    if c is None:
        raise ValueError("c is required")
    t = _float64(c, "c", device)
    single = t.dim() != 2
    if t.dim() > 2 and sum(size != 1 for size in t.shape) <= 1:
        t = t.reshape(-1)
    if t.dim() > 2:
        raise ValueError(f"c must have 1 or 2 dimensions ((n,) for one LP, (B, n) for a batch), "
                         f"got shape {tuple(t.shape)}")
    _check_finite(t, "c")
    return t.reshape(1, -1) if single else t, single


def _standard_form(c, A_ub, b_ub, A_eq, b_eq, bounds, device) -> _StandardForm:
    """Check and convert scipy's arguments (see `linprog`); rows of zero-row matrices are dropped."""
    c_t, _ = _costs(c, device)
    B, n = c_t.shape
    if n == 0 or B == 0:
        raise ValueError(f"c must have at least one variable and one LP, got shape {tuple(c_t.shape)}")
    blocks, rhs, sparse, rows = [], [], [], {}
    for A, b, name, b_name in ((A_eq, b_eq, "A_eq", "b_eq"), (A_ub, b_ub, "A_ub", "b_ub")):
        M, is_sparse = _matrix(A, name, device)
        rows[name] = 0 if M is None else M.shape[-2]
        if M is None:
            # scipy: no matrix is 0 rows, so b must be None or empty
            if b is not None and (b.numel() if isinstance(b, Tensor) else np.size(b)) != 0:
                raise ValueError(f"{b_name} given without {name}")
            continue
        if M.shape[-1] != n:
            raise ValueError(f"{name} must have n = {n} columns (the length of c), got shape {tuple(M.shape)}")
        if not is_sparse and M.shape[0] not in (1, B):
            raise ValueError(f"{name} has batch size {M.shape[0]}, but c has {B}")
        d = _rhs(b, b_name, rows[name], B, device)
        if rows[name] > 0:  # a zero-row matrix means no such constraints, as in scipy
            blocks.append(M)
            rhs.append(d)
            sparse.append(is_sparse)
    if not blocks:  # only bounds: the presolve solves it in closed form
        blocks, rhs, sparse = [torch.zeros(1, 0, n, dtype=torch.float64, device=device)], [
            torch.zeros(B, 0, dtype=torch.float64, device=device)], [False]
    if any(sparse):
        if not all(s or b.shape[0] == 1 for b, s in zip(blocks, sparse)):
            raise ValueError("a sparse constraint matrix needs the other one shared by the batch (2-D) as well")
        K = torch.cat([b.to_sparse_coo() if s else b[0].to_sparse_coo() for b, s in zip(blocks, sparse)], 0)
        K = K.coalesce()
    else:
        Bk = max(b.shape[0] for b in blocks)
        K = torch.cat([b.expand(Bk, -1, -1) for b in blocks], 1)
    lo, hi = _bounds(bounds, n, B, device)
    return _StandardForm(c_t, K, torch.cat(rhs, -1), rows["A_eq"], rows["A_ub"], lo, hi)


def _check_linprog_options(method, progress, callback, warm_start, x0, max_iters, time_limit) -> None:
    if method is not None and method not in METHODS:
        raise ValueError(f"method must be {', '.join(map(repr, METHODS[:-1]))} or {METHODS[-1]!r}, got {method!r}")
    _check_max_iters(max_iters)
    _check_time_limit(time_limit)
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be True or False, got {progress!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be None or a function of a saddle.Progress, got {type(callback).__name__}")
    if warm_start is not None and not isinstance(warm_start, LinprogResult):
        raise TypeError(f"warm_start must be None or the LinprogResult of a previous linprog call, "
                        f"got {type(warm_start).__name__}")
    if warm_start is not None and x0 is not None:
        raise ValueError("give x0 or warm_start, not both (a warm start starts from its own point)")


def _precision(precision, dtype: torch.dtype) -> str:
    """The precision a `linprog` call iterates in: ``precision``, else ``"single"`` for a float32 ``dtype`` (what
    ``dtype=torch.float32`` always meant), else `DEFAULT_PRECISION`."""
    if precision is None:
        return "single" if dtype == torch.float32 else DEFAULT_PRECISION
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ValueError(f"precision must be None or one of {', '.join(map(repr, PRECISIONS))} (float64 iterations; "
                         f"float32 ones checked in float64; float32 ones finished in float64), got {precision!r}")
    return precision


def linprog(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=(0, None), *, method: str | None = None,
            tol: float = 1e-8, max_iters: int | None = None, time_limit: float | None = DEFAULT_TIME_LIMIT,
            check_every: int | None = None, device=None, dtype: torch.dtype = torch.float64, precision: str | None = None,
            x0=None, warm_start: LinprogResult | None = None, callback=None, progress: bool = False,
            differentiable: bool | Implicit = False, **settings) -> LinprogResult:
    """Solve one LP or a batch of LPs of equal shape by a restarted PDHG; the arguments mean what they mean in scipy.

    ``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  bounds[i][0] <= x_i <= bounds[i][1]``

    Every input `scipy.optimize.linprog` accepts is accepted with scipy's meaning; a 2-D ``c`` (and
    3-D matrices, 2-D right-hand sides, ``(B, n, 2)`` bounds) make a batch of B LPs.

    Args:
        c: ``(n,)`` or ``(B, n)`` costs (a batch of B LPs when 2-D), n >= 1; as in scipy, a scalar
            is one variable and an array with one non-singleton dimension is ``(n,)``.
        A_ub: ``(m1, n)``, ``(B, m1, n)``, a scipy.sparse matrix or array of any format, or a 2-D
            ``torch.sparse`` tensor (sparse matrices are shared by the batch). None or a zero-row
            ``(0, n)`` matrix means no inequality constraints.
        b_ub: ``(m1,)`` or ``(B, m1)``; as in scipy, a scalar for one row or an ``(m1, 1)`` column;
            None or empty without rows.
        A_eq: like ``A_ub``.
        b_eq: like ``b_ub``.
        bounds: scipy's forms: None or an empty array (x >= 0), one ``(lo, hi)`` pair for every
            variable, a sequence of n pairs, an ``(n, 2)`` (or ``(B, n, 2)``) array, an object array;
            None, NaN or an infinity means unbounded on that side. Default ``(0, None)``: x >= 0. A
            lower bound above its upper bound (or of +inf, or an upper bound of -inf) makes that LP
            infeasible (status 2), as in scipy.
        method: ``"pdhg"`` (restarted averaged PDHG, PDLP's scheme) or ``"r2hpdhg"`` (restarted
            Halpern PDHG with reflection); default `DEFAULT_METHOD`, or ``"ipm"`` for a differentiable solve
            of dense LPs small enough for `saddle.implicit` to form their Jacobians. ``"ipm"``: Mehrotra's
            interior-point method (`saddle.solvers.interior_point`): one dense KKT factorization per
            iteration and 10-30 iterations, for batches of small dense LPs (no certificates: an
            infeasible or unbounded LP ends at a limit or diverges; no warm starts).
        tol: relative KKT tolerance (primal residual, dual residual and gap,
            each relative, as PDLP: 1e-4 is moderate, 1e-8 high accuracy).
        max_iters: iteration limit, in all precisions together; None (default): none, as PDLP (the
            time limit bounds the solve), except `saddle.solvers.interior_point.MAX_ITERS` for
            ``"ipm"``. In a batch, a ``"mixed"`` solve's float64 part gets what is left to the instance
            that took the most float32 iterations.
        time_limit: seconds of wall time of the call (checked every ``check_every`` iterations);
            None: none. Default `DEFAULT_TIME_LIMIT`, cuPDLPx's 3600 s. Reaching it is status 1.
        check_every: iterations between convergence checks (a fixed cadence: the KKT error of a
            PDHG scheme is not monotone, and checks growing apart would miss its dips); None: 64, or 5
            for ``"ipm"`` (which needs 10-30 iterations in all).
        device: torch device; default: the device of the tensor arguments
            (which must agree), else the CPU. Given, every input is moved there.
        dtype: the dtype of the result, ``torch.float64`` (default) or ``torch.float32``; float16
            and bfloat16 are refused (their significands cannot meet LP tolerances). Without
            ``precision``, ``torch.float32`` also means ``precision="single"``.
        precision: the dtype of the iterations, one of `PRECISIONS` (None: `DEFAULT_PRECISION`, or
            ``"single"`` for a float32 ``dtype``). ``"double"``: float64. ``"single"``: float32,
            every outcome verified in float64 at the returned point on the float64 data; where the
            KKT error there exceeds tol, or a certificate fails its verification, the status is 4
            (numerical difficulties). ``"mixed"``: float32 to a relative KKT error of
            ``max(tol, MIXED_SWITCH_TOL)`` (verified in float64), in segments of `MIXED_SEGMENT`
            iterations and twice as many after each, then float64 from the float32 point, step
            size and primal weight to tol. An instance goes on in float64 as soon as float32
            makes too little progress (`MIXED_PROGRESS`), stalls at its floor, or finds a
            certificate that fails in float64. ``nit`` and ``matvecs`` count both parts
            (``phases`` splits them). It paid on a dense batch of games, not on small sparse LPs
            (docs/linear_programs.md, "Precision").
        x0: a primal start ``(n,)`` or ``(B, n)``.
        warm_start: the `LinprogResult` of an LP of the same shape (e.g. the same LP with slightly
            different c or b), solved with the same method: the solve starts from its primal and
            dual point, step size and primal weight (`saddle.Solver.warm_state`).
        callback: passed to `saddle.solve` (of each part of a ``"mixed"`` solve: its ``Progress``
            counts that part's iterations).
        progress: show a progress bar.
        differentiable: True (or a `saddle.implicit.Implicit` of options): ``x``, ``fun``, ``eqlin``
            and ``ineqlin`` carry gradients with respect to the tensor arguments that require grad
            (``c``, dense ``A_ub``, ``b_ub``, ``A_eq``, ``b_eq``, a tensor ``bounds``). ``x`` and the
            duals by implicit differentiation of the Lagrangian's saddle point (`saddle.implicit`,
            after Newton steps that polish the solution where the LP is small enough to form the
            system), ``fun`` by the envelope theorem: with ``y = -marginals`` (``>= 0`` on the
            inequality rows), ``fun = c^T x + y^T (A x - b)`` at the solution, so ``d fun / d c = x``,
            ``d fun / d b = -y`` (the marginals, as in scipy) and ``d fun / d A = y x^T``.
            ``x(c)`` is piecewise constant: its gradient with respect to c is zero almost everywhere.
            Instances that did not solve (status != 0) get NaN gradients, with a warning.
        **settings: settings of the method's solver (`saddle.PDHG` for ``"pdhg"``:
            ``restarts=False``, ``precondition=False``, ``restart_measure="kkt"``, ...).

    Returns:
        a `LinprogResult`; for a 1-D ``c`` its fields are unbatched.

    Raises:
        TypeError, ValueError: naming the argument, for input of the wrong type,
            shape, device or value (complex, NaN or inf data, unknown options).

    A presolve (`saddle.lp_presolve`) first removes fixed variables, empty rows and empty columns
    (an LP without constraints is solved there in closed form); the solver sees the rest. An LP ends
    optimal, infeasible (a verified certificate), unbounded (likewise) or at a limit; a non-finite
    iterate, which should not happen, is status 4.
    """
    differentiation = as_differentiation(differentiable)
    if differentiation == "unroll":
        raise ValueError("linprog(differentiable='unroll') is not offered (the solve runs in presolved, scaled "
                         "parts); use differentiable=True")
    if differentiation is not None and any(isinstance(A, Tensor) and A.layout != torch.strided and A.requires_grad
                                           for A in (A_ub, A_eq)):
        raise ValueError("differentiable=True differentiates dense constraint matrices only; pass A_ub / A_eq "
                         "as dense tensors, or sparse ones that do not require grad")
    _check_linprog_options(method, progress, callback, warm_start, x0, max_iters, time_limit)
    _check_dtype(dtype)
    precision = _precision(precision, dtype)
    device = _solve_device(device, dict(c=c, A_ub=A_ub, b_ub=b_ub, A_eq=A_eq, b_eq=b_eq, bounds=bounds, x0=x0))
    lp64 = _standard_form(c, A_ub, b_ub, A_eq, b_eq, bounds, device)
    if method is None:
        method = "ipm" if differentiation is not None and _dense_fits(lp64) else DEFAULT_METHOD
    check_every = (5 if method == "ipm" else 64) if check_every is None else check_every
    if method == "ipm" and max_iters is None:
        max_iters = IPM_MAX_ITERS
    if method == "ipm" and precision != "double":
        raise ValueError(f"method='ipm' iterates in float64 only (its KKT systems lose float32's accuracy near the "
                         f"solution), got precision={precision!r}")
    if method == "ipm" and warm_start is not None:
        raise ValueError("method='ipm' takes no warm_start (interior-point iterates start inside, away from a "
                         "previous solution); use 'pdhg' or 'r2hpdhg' to warm-start")
    budget = _Budget(max_iters, time_limit)
    solver = get_solver(method, **settings)
    with intra_op_threads(_threads(lp64)):  # presolve, postsolve and gradients too, as the solves
        B, n = lp64.c.shape
        crossed = _crossed(lp64.lo, lp64.hi).any(-1).expand(B)  # infeasible bounds: reported as status 2
        lp64 = lp64._replace(lo=torch.where(_crossed(lp64.lo, lp64.hi), 0.0, lp64.lo),
                             hi=torch.where(_crossed(lp64.lo, lp64.hi), 0.0, lp64.hi))
        x0_t = _tensor(x0, "x0", device, (1, 2))
        if x0_t is not None:
            if x0_t.shape not in ((n,), (B, n)):
                raise ValueError(f"x0 must have shape ({n},) or ({B}, {n}), got {tuple(x0_t.shape)}")
            x0_t = torch.minimum(torch.maximum(x0_t.expand(B, n), lp64.lo), lp64.hi)
        tol_t = _tolerance(tol, B, device, torch.float64)
        pre = presolve(lp64.c, lp64.K, lp64.d, lp64.n_eq, lp64.lo, lp64.hi)
        if pre.empty:
            sol, problem, phases = _presolved_solution(B, device, torch.float64, solver), None, ()
        else:
            reduced = _StandardForm(pre.c, pre.K, pre.d, pre.n_eq, lp64.m_ub, pre.lo, pre.hi)
            problems = {dt: _reduced_program(reduced, x0_t, lp64, pre, dt)
                        for dt in ((torch.float64,) if precision == "double" else (torch.float32, torch.float64))}
            problem = problems[torch.float64]
            parts = _Parts(solver, budget, dict(check_every=check_every, callback=callback, progress=progress,
                                                polish=_polishes(differentiation, lp64) or (method == "ipm" and _dense_fits(lp64))))
            tol_t = torch.where(crossed, math.inf, tol_t)
            warm = None if warm_start is None else warm_start.solution
            _SOLVES[precision](parts, problems, tol_t, warm)
            sol, phases = parts.total, parts.phases()
        single = _costs(c, device)[1]
        out = _result(sol, problem, lp64, pre, solver, crossed, tol_t, single, dtype,
                      torch.float64 if precision == "double" else torch.float32, phases)
        if differentiation is not None:
            with _keeping_grad():
                live = _standard_form(c, A_ub, b_ub, A_eq, b_eq, bounds, device)
            _differentiate(out, live, differentiation, single)
        return out


def _dense_fits(lp: _StandardForm) -> bool:
    """Whether ``lp`` is dense and its Jacobians small enough to form (`saddle.implicit.dense_fits`): then a
    differentiable solve takes the interior-point method, whose 10-30 factorizations of so small a system cost less
    than PDHG's long tails, and polishes by Newton steps."""
    B, n = lp.c.shape
    return lp.K.layout == torch.strided and dense_fits(B, n + lp.d.shape[1])


def _threads(lp: _StandardForm) -> int | None:
    """One intra-op thread for LPs whose products are small (`saddle.threads.PARALLEL_MIN`), as `saddle.solve`."""
    B = lp.c.shape[0]
    size = B * (lp.K._nnz() if lp.K.layout != torch.strided else lp.K[0].numel())
    return 1 if lp.c.device.type == "cpu" and max(size, lp.c.numel()) < PARALLEL_MIN else None


def _polishes(differentiation: Implicit | None, lp: _StandardForm) -> bool:
    """Whether a differentiable solve of ``lp`` polishes by Newton steps (`saddle.solve`'s ``polish``): where its
    Jacobians are small enough to form, unless the options say otherwise."""
    if differentiation is None or differentiation.polish is False or differentiation.method == "gmres":
        return False
    return differentiation.polish is True or _dense_fits(lp)


def _differentiate(out: LinprogResult, live: _StandardForm, options: Implicit, single: bool) -> None:
    """Put ``out``'s x, duals and objective on the autograd graph of the user's data ``live`` (in place).

    The solution is the saddle point of the Lagrangian ``c^T x + <K x, y> - <d, y>`` of the LP in the
    user's data (presolve undone), polished by Newton steps where M can be formed, then attached
    (`saddle.implicit.attach`); ``fun`` is the Lagrangian at the detached point with the live data
    (the envelope theorem) unless the bounds themselves require grad.
    """
    batched = (lambda t: t.unsqueeze(0)) if single else (lambda t: t)
    x = batched(out.x).double()
    y = -torch.cat([batched(out.eqlin), batched(out.ineqlin)], -1).double()
    lp = LinearProgram(live.c, live.K, live.d, live.n_eq, live.lo, live.hi)
    valid = batched(out.status) == 0
    z = (torch.where(valid.unsqueeze(-1), x, 0.0), torch.where(valid.unsqueeze(-1), y, 0.0))
    lin = None
    with torch.no_grad():
        kkt = lp.kkt(z)
    if _polishes(options, live):
        polished, _, lin = _polished(lp, z, None, 3, valid)
        with torch.no_grad():
            kkt_polished = lp.kkt(polished)
        # a Newton step that halved the fixed-point residual from a wrong active set may still raise the KKT
        # error: keep the polished point only where it does not
        keep = _kkt_error(kkt_polished) <= _kkt_error(kkt)
        z = tuple(torch.where(keep.unsqueeze(-1), p, q) for p, q in zip(polished, z))
        kkt = {name: torch.where(keep, kkt_polished[name], kkt[name]) for name in kkt}
        lin = lin if bool(keep.all()) else None
    z_att, adjoint = attach(lp, z, options=options, valid=valid, linearization=lin)
    moving_sets = live.lo.requires_grad or live.hi.requires_grad
    with torch.enable_grad():
        value = lp.objective(z_att if moving_sets else z)
    dtype = out.x.dtype
    unbatch = (lambda t: t[0]) if single else (lambda t: t)
    nan_rows = lambda t: torch.where(valid.unsqueeze(-1), t, torch.nan)  # noqa: E731
    out.x = unbatch(nan_rows(z_att[0]).to(dtype))
    out.eqlin = unbatch(nan_rows(-z_att[1][:, :live.n_eq]).to(dtype))
    out.ineqlin = unbatch(nan_rows(-z_att[1][:, live.n_eq:]).to(dtype))
    out.fun = unbatch(torch.where(valid, value, torch.nan).to(dtype))
    for name in ("primal_residual", "dual_residual", "gap"):
        setattr(out, name, unbatch(torch.where(valid, kkt[name], batched(getattr(out, name)).double()).to(dtype)))
    out.adjoint = adjoint


def _reduced_program(reduced: _StandardForm, x0: Tensor | None, lp64: _StandardForm, pre: Presolved,
                     dtype: torch.dtype) -> LinearProgram:
    """The presolved LP ``reduced`` (float64) as a `LinearProgram` in ``dtype``, from ``x0`` ``(B, n)`` (original
    variables) if given, with the original LP's KKT scales (`_reference_scales`)."""
    lp = reduced.to(dtype)
    return LinearProgram(lp.c, lp.K, lp.d, lp.n_eq, lp.lo, lp.hi, x0=None if x0 is None else x0[:, pre.cols].to(dtype),
                         **_reference_scales(lp64, pre, lp64.c.shape[0]),
                         name=f"linear program (m={lp.d.shape[1]}, n={lp.c.shape[1]})")


class _Budget:
    """What is left of `linprog`'s ``max_iters`` and ``time_limit`` (``None``: no limit), shared by the parts of a
    solve; the clock starts when it is made."""

    def __init__(self, max_iters: int | None, time_limit: float | None):
        self.max_iters, self.time_limit, self.start = max_iters, time_limit, time.perf_counter()

    def iterations(self, used: Tensor, running: Tensor) -> int | None:
        """Iterations left to the ``running`` instances ``(B,)`` bool, which have run ``used`` ``(B,)``: what the one
        that ran the most may still run (a part of a solve steps every instance it runs as often)."""
        if self.max_iters is None:
            return None
        return max(0, self.max_iters - int(used[running].max()))

    def seconds(self) -> float | None:
        """Seconds left (may be 0 or less)."""
        return None if self.time_limit is None else self.time_limit - (time.perf_counter() - self.start)

    def spent(self, used: Tensor, running: Tensor) -> Status | None:
        """`Status.TIME_LIMIT` or `Status.MAX_ITERS` if nothing is left for the ``running`` instances, else None."""
        seconds = self.seconds()
        if seconds is not None and seconds <= 0:
            return Status.TIME_LIMIT
        return Status.MAX_ITERS if self.iterations(used, running) == 0 else None


class _Parts:
    """The solves of one `linprog` call (in float32 and float64) and their sum, ``total``: a float64 `Solution`
    of the whole batch whose counts add up over the parts."""

    def __init__(self, solver, budget: _Budget, options: dict):
        self.solver, self.budget, self.options = solver, budget, options
        self.total: Solution | None = None
        self.runs: list[tuple[Solution, Tensor, float]] = []  # (solution, instances it ran (B,), seconds)

    def run(self, problem: LinearProgram, tol: Tensor, running: Tensor, max_iters: int | None,
            warm: Solution | None) -> Solution:
        """Solve ``problem`` from ``warm`` (a `Solution` in any dtype, or None) on the instances ``running`` ``(B,)``
        bool to ``tol`` ``(B,)`` (the others stop at once: their tolerance is inf), at most ``max_iters``
        iterations and the seconds left; the result of ``running`` is added to ``total``."""
        start = time.perf_counter()
        seconds = self.budget.seconds()
        sol = solve(problem, self.solver, tol=torch.where(running, tol, math.inf), measure="kkt", max_iters=max_iters,
                    time_limit=None if seconds is None else max(seconds, 1e-9), check_growth=0,
                    divergence_factor=math.inf, warm_start=None if warm is None else _in_dtype(warm, problem.dtype),
                    **self.options)
        self.runs.append((sol, running, time.perf_counter() - start))
        self.total = _merge(self.total, sol, running)
        return sol

    def phases(self) -> tuple[LinprogPhase, ...]:
        """The `LinprogPhase` of each dtype the solves ran in, in order."""
        phases: dict[torch.dtype, LinprogPhase] = {}
        for sol, ran, seconds in self.runs:
            dtype = sol.z[0].dtype
            nit, calls = sol.iterations * ran, sol.operator_calls * ran
            if dtype not in phases:
                phases[dtype] = LinprogPhase(dtype, nit * 0, calls * 0, 0.0, [])
            phase = phases[dtype]
            phase.nit, phase.matvecs = phase.nit + nit, phase.matvecs + 2 * calls
            phase.seconds += seconds
            phase.solutions.append(sol)
        return tuple(phases.values())


def _in_dtype(sol: Solution, dtype: torch.dtype) -> Solution:
    """``sol`` with its point and solver state in ``dtype`` (a warm start for a solve in that dtype)."""
    if sol.z[0].dtype == dtype:
        return sol
    return dataclasses.replace(sol, z=to_dtype(sol.z, dtype), state=to_dtype(sol.state, dtype))


def _merge(total: Solution | None, sol: Solution, ran: Tensor) -> Solution:
    """``total`` (float64; None before the first solve) with ``sol``'s point, state, status and measures at the
    instances ``ran`` ``(B,)`` bool, and their iterations and operator calls added to ``total``'s."""
    sol = _in_dtype(sol, torch.float64)
    sol = dataclasses.replace(sol, residual=sol.residual.double(), gap=None if sol.gap is None else sol.gap.double())
    if total is None:
        return dataclasses.replace(sol, iterations=sol.iterations * ran, operator_calls=sol.operator_calls * ran)
    index, B = ran.nonzero().squeeze(-1), ran.shape[0]
    z, state = put_rows((total.z, total.state), index, take_rows((sol.z, sol.state), index, B), B)

    def pick(new: Tensor | None, old: Tensor | None) -> Tensor | None:
        return None if new is None or old is None else torch.where(ran, new, old)

    return Solution(z=z, status=pick(sol.status, total.status), iterations=total.iterations + sol.iterations * ran,
                    operator_calls=total.operator_calls + sol.operator_calls * ran,
                    residual=pick(sol.residual, total.residual), gap=pick(sol.gap, total.gap), state=state,
                    solver=sol.solver, wall_time=total.wall_time + sol.wall_time)


def _holds_in_float64(sol: Solution, problem: LinearProgram, tol: Tensor, solver) -> Tensor:
    """``(B,)`` bool: whether the outcome ``sol`` claims (float64, from float32 iterations) holds on the float64 LP
    ``problem``: a relative KKT error at most ``tol`` ``(B,)`` where it converged, a certificate that passes its
    verification (`saddle.lp_certificates`) where it found one; False elsewhere."""
    error = _kkt_error(problem.kkt(sol.z))
    cert = solver.certificates(problem, sol.state)
    dual = verify_dual_ray(problem, cert["dual_ray"], solver.infeasibility_tol)
    primal = verify_primal_ray(problem, cert["primal_ray"], solver.infeasibility_tol)
    return torch.where(sol.status == int(Status.CONVERGED), error <= tol,
                       torch.where(sol.status == int(Status.INFEASIBLE), dual,
                                   (sol.status == int(Status.UNBOUNDED)) & primal))


def _solve_double(parts: _Parts, problems: dict, tol: Tensor, warm: Solution | None) -> None:
    """``precision="double"``: float64 iterations."""
    parts.run(problems[torch.float64], tol, torch.ones_like(tol, dtype=torch.bool), parts.budget.max_iters, warm)


def _solve_single(parts: _Parts, problems: dict, tol: Tensor, warm: Solution | None) -> None:
    """``precision="single"``: float32 iterations; an outcome that fails in float64 becomes `Status.PRECISION_LOSS`."""
    everything = torch.ones_like(tol, dtype=torch.bool)
    parts.run(problems[torch.float32], tol, everything, parts.budget.max_iters, warm)
    total = parts.total
    claimed = (total.status == int(Status.CONVERGED)) | (total.status == int(Status.INFEASIBLE)) \
        | (total.status == int(Status.UNBOUNDED))
    failed = claimed & ~_holds_in_float64(total, problems[torch.float64], tol, parts.solver)
    total.status = torch.where(failed, int(Status.PRECISION_LOSS), total.status)


def _solve_mixed(parts: _Parts, problems: dict, tol: Tensor, warm: Solution | None) -> None:
    """``precision="mixed"``: float32 segments to ``max(tol, MIXED_SWITCH_TOL)`` while they make progress, then
    float64 to ``tol`` where the float32 result does not hold in float64 (see `linprog`)."""
    problem32, problem64 = problems[torch.float32], problems[torch.float64]
    running = torch.ones_like(tol, dtype=torch.bool)  # instances without a final outcome
    in_float32 = running.clone()  # those of them whose next segment runs in float32
    best = None  # (B,) the best relative KKT error so far
    length = MIXED_SEGMENT

    def used() -> Tensor:  # (B,) iterations so far
        return torch.zeros_like(tol, dtype=torch.int64) if parts.total is None else parts.total.iterations

    while bool(in_float32.any()) and parts.budget.spent(used(), in_float32) is None:
        left = parts.budget.iterations(used(), in_float32)
        sol = parts.run(problem32, tol.clamp_min(MIXED_SWITCH_TOL), in_float32, length if left is None else
                        min(length, left), warm if parts.total is None else parts.total)
        running = running & ~(in_float32 & _final(parts.total, problem64, tol, parts.solver, parts.budget))
        best, progress = _progress(sol, best)
        in_float32 = in_float32 & running & (sol.status == int(Status.MAX_ITERS)) & progress
        length *= 2
    if bool(running.any()):
        spent = parts.budget.spent(used(), running)
        if spent is None:
            parts.run(problem64, tol, running, parts.budget.iterations(used(), running), parts.total)
        else:
            parts.total.status = torch.where(running, int(spent), parts.total.status)


_SOLVES = {"double": _solve_double, "single": _solve_single, "mixed": _solve_mixed}


def _final(total: Solution, problem64: LinearProgram, tol: Tensor, solver, budget: _Budget) -> Tensor:
    """``(B,)`` bool: where a float32 part of a ``"mixed"`` solve ended for good: an outcome that holds in float64
    (`_holds_in_float64`), or a limit (time, ``max_iters``, the callback)."""
    status = total.status
    limit = (status == int(Status.TIME_LIMIT)) | (status == int(Status.STOPPED)) \
        | (status == int(Status.BUDGET_EXHAUSTED))
    if budget.max_iters is not None:
        limit = limit | ((status == int(Status.MAX_ITERS)) & (total.iterations >= budget.max_iters))
    return limit | _holds_in_float64(total, problem64, tol, solver)


def _progress(sol: Solution, best: Tensor | None) -> tuple[Tensor, Tensor]:
    """``(best, progress)``: the best relative KKT error ``(B,)`` so far, and whether the segment ``sol`` brought it
    below `MIXED_PROGRESS` times the best before (``best``; None: the error at the segment's start)."""
    history = sol.history.get("kkt")
    if history is None or history.shape[0] < 2:  # no record: no evidence of progress
        none = torch.zeros_like(sol.status, dtype=torch.bool)
        return (torch.full_like(sol.status, math.inf, dtype=torch.float64) if best is None else best), none
    history = history.double().to(sol.status.device)
    before = history[0] if best is None else best
    now = history[1:].min(0).values
    return torch.minimum(before, now), now < MIXED_PROGRESS * before


def _reference_scales(lp64: _StandardForm, pre: Presolved, B: int) -> dict:
    """The presolved LP's KKT errors as the original LP's: the fixed variables' objective, the original norms."""
    return dict(objective_offset=(lp64.c * pre.x_removed).sum(-1).expand(B),
                reference_norms=(lp64.d.norm(dim=-1).expand(B), lp64.c.norm(dim=-1).expand(B)))


def _crossed(lo: Tensor, hi: Tensor) -> Tensor:
    """Bounds no x satisfies: ``lo > hi``, a lower bound of +inf or an upper bound of -inf (scipy: infeasible)."""
    return (lo > hi) | (lo == math.inf) | (hi == -math.inf)


def _presolved_solution(B: int, device, dtype: torch.dtype, solver) -> Solution:
    """The `Solution` of an LP the presolve solved entirely: no variable left, 0 iterations."""
    empty = torch.zeros(B, 0, dtype=dtype, device=device)
    zeros = torch.zeros(B, dtype=torch.int64, device=device)
    return Solution(z=(empty, empty), status=torch.full_like(zeros, int(Status.CONVERGED)), iterations=zeros,
                    operator_calls=zeros.clone(), residual=torch.zeros(B, dtype=dtype, device=device), solver=solver)


def _result(sol: Solution, problem: LinearProgram | None, lp64: _StandardForm, pre: Presolved, solver,
            crossed: Tensor, tol: Tensor, single: bool, dtype: torch.dtype, iterated: torch.dtype,
            phases: tuple[LinprogPhase, ...]) -> LinprogResult:
    """The `LinprogResult` in ``dtype`` of a float64 solve ``sol`` of the presolved LP ``problem`` (float64), in the
    user's coordinates (float64 KKT errors).

    LPs whose bounds cross (``crossed``, ``(B,)``) get status 2 (`Status.INFEASIBLE`) and a NaN point; the
    presolve's findings (an infeasible empty row, an unbounded empty column once the rest is feasible)
    come next. ``tol`` is ``(B,)`` float64; ``iterated`` (the dtype float32 iterations ran in, or float64)
    is named in the message of `Status.PRECISION_LOSS`.
    """
    x_r, y_r = sol.z
    m = lp64.d.shape[1]
    x, y = postsolve(pre, x_r.double(), y_r.double(), m)
    x = torch.clamp(x, lp64.lo, lp64.hi)  # an average of iterates in the box can leave it by rounding (1e-15)
    full = LinearProgram(lp64.c, lp64.K, lp64.d, lp64.n_eq, lp64.lo, lp64.hi)
    kkt = full.kkt((x, y))
    error = _kkt_error(kkt)
    if problem is None or not hasattr(solver, "certificates"):  # (the interior-point method has none)
        cert = {"dual_ray": y_r.new_zeros(y_r.shape), "primal_ray": x_r.new_zeros(x_r.shape)}
    else:
        cert = solver.certificates(problem, sol.state)
    dual_ray, primal_ray = embed(pre, cert["dual_ray"].double(), cert["primal_ray"].double(), m)
    solved = sol.status == int(Status.CONVERGED)
    from_presolve = pre.unbounded & solved & ~pre.infeasible
    primal_ray = torch.where(from_presolve.unsqueeze(-1), pre.primal_ray, primal_ray)
    dual_ray = torch.where(pre.infeasible.unsqueeze(-1), pre.dual_ray, dual_ray)
    sol.status = torch.where(from_presolve, int(Status.UNBOUNDED), sol.status)
    sol.status = torch.where(pre.infeasible | crossed, int(Status.INFEASIBLE), sol.status)

    status = torch.tensor([_SCIPY_STATUS[s] for s in sol.statuses], device=x.device)
    messages = [_CROSSED_MESSAGE if cross else _PRESOLVE_MESSAGES.get((s, bool(p)), _MESSAGES[s]).format(
                dtype=iterated, error=e, tol=t)
                for s, cross, p, e, t in zip(sol.statuses, crossed.tolist(), (pre.infeasible | from_presolve).tolist(),
                                             error.tolist(), tol.tolist())]
    kkt = {name: value.to(dtype) for name, value in kkt.items()}
    fun = torch.where((status == 2) | (status == 3), torch.nan, kkt["primal_objective"])
    marginals = (-y).to(dtype)  # d fun / d b = -y at an optimum
    certified = (status == 2) & ~crossed
    out = LinprogResult(
        x=torch.where(crossed.unsqueeze(-1), torch.nan, x.to(dtype)), fun=fun, status=status, success=status == 0,
        message=messages, nit=sol.iterations, matvecs=2 * sol.operator_calls,
        primal_residual=kkt["primal_residual"], dual_residual=kkt["dual_residual"], gap=kkt["gap"],
        eqlin=marginals[:, :lp64.n_eq], ineqlin=marginals[:, lp64.n_eq:lp64.n_eq + lp64.m_ub],
        dual_ray=torch.where(certified.unsqueeze(-1), dual_ray, 0.0).to(dtype),
        primal_ray=torch.where((status == 3).unsqueeze(-1), primal_ray, 0.0).to(dtype), solution=sol,
        phases=phases,
    )
    if single:
        for name in ("x", "fun", "status", "success", "nit", "matvecs", "primal_residual", "dual_residual", "gap",
                     "eqlin", "ineqlin", "dual_ray", "primal_ray"):
            setattr(out, name, getattr(out, name)[0])
        out.message = out.message[0]
        for phase in phases:
            phase.nit, phase.matvecs = phase.nit[0], phase.matvecs[0]
    return out


def _kkt_error(kkt: dict[str, Tensor]) -> Tensor:
    """The relative KKT error: the largest of the primal residual, dual residual and gap, ``(B,)``."""
    return torch.maximum(torch.maximum(kkt["primal_residual"], kkt["dual_residual"]), kkt["gap"])
