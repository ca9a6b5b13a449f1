"""Linear programs solved as saddle-point problems: `linprog` (scipy's interface) and `LinearProgram`.

The LP ``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  l <= x <= u`` is
the saddle-point problem of its Lagrangian

    ``min_{l <= x <= u} max_{y_eq free, y_ub >= 0}  c^T x + <K x, y> - <d, y>``,

with ``K = [A_eq; A_ub]`` and ``d = [b_eq; b_ub]``: a `BilinearProblem` with
linear terms on boxes, which `saddle.PDHG` solves (preconditioned, restarted,
with adaptive steps and infeasibility detection). Convergence is measured by
the relative KKT error of PDLP (`LinearProgram.kkt`).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from .problem import BilinearProblem
from .sets import Box
from .solution import Solution, Status
from .solve import solve
from .solvers.primal_dual import PDHG
from .terms import Linear

__all__ = ["LinearProgram", "LinprogResult", "linprog"]


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

    Besides the natural residual it has the measure ``"kkt"``: the largest of
    the relative primal residual, dual residual and duality gap (`kkt`).
    """

    def __init__(self, c: Tensor, K: Tensor, d: Tensor, n_eq: int, lo: Tensor, hi: Tensor, *,
                 x0: Tensor | None = None, y0: Tensor | None = None, **kwargs):
        B, m = d.shape
        y_lo = torch.cat([torch.full((1, n_eq), -torch.inf), torch.zeros(1, m - n_eq)], -1).to(d)
        X, Y = Box(lo, hi), Box(y_lo, torch.inf)
        x0 = X.project(torch.zeros_like(c)) if x0 is None else x0
        y0 = torch.zeros_like(d) if y0 is None else y0
        self.c, self.d, self.n_eq, self.lo, self.hi = c, d, n_eq, lo, hi
        super().__init__(K, x0, y0, g=Linear(c), h_conj=Linear(d), X=X, Y=Y, **kwargs)

    def extra_measures(self) -> tuple[str, ...]:
        return ("kkt",)

    def measure(self, name, z, Fz):
        if name != "kkt":
            return super().measure(name, z, Fz)
        k = self.kkt(z)
        return torch.maximum(torch.maximum(k["primal_residual"], k["dual_residual"]), k["gap"])

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
        Kx = self.coupling.mv(x)
        residual = Kx - self.d
        residual = torch.cat([residual[:, :self.n_eq], residual[:, self.n_eq:].clamp_min(0)], -1)
        r = self.c + self.coupling.rmv(y)
        lo, hi = self.lo.expand_as(x), self.hi.expand_as(x)
        bad = torch.where(torch.isinf(lo), r.clamp_min(0), 0) + torch.where(torch.isinf(hi), (-r).clamp_min(0), 0)
        absorbed = r - torch.where(torch.isinf(lo), r.clamp_min(0), 0) + torch.where(torch.isinf(hi), (-r).clamp_min(0), 0)
        bound_terms = torch.where(absorbed > 0, absorbed * torch.nan_to_num(lo, neginf=0.0),
                                  absorbed * torch.nan_to_num(hi, posinf=0.0))
        primal = (self.c * x).sum(-1)
        dual = -(self.d * y).sum(-1) + bound_terms.sum(-1)
        return {
            "primal_residual": residual.norm(dim=-1) / (1 + self.d.norm(dim=-1)),
            "dual_residual": bad.norm(dim=-1) / (1 + self.c.norm(dim=-1)),
            "gap": (primal - dual).abs() / (1 + primal.abs() + dual.abs()),
            "primal_objective": primal,
            "dual_objective": dual,
        }


@dataclass
class LinprogResult:
    """What `linprog` returns (scipy.optimize.OptimizeResult's names where they exist).

    Attributes:
        x: the primal solution, ``(n,)`` for one LP or ``(B, n)`` for a batch.
        fun: the objective ``c^T x``; NaN where the LP is infeasible or unbounded.
        status: scipy's codes: 0 solved, 1 iteration limit, 2 infeasible,
            3 unbounded, 4 numerical difficulties (diverged).
        success: ``status == 0``.
        message: a sentence per status (a list for a batch).
        nit: iterations.
        matvecs: products with K or K^T (2 per PDHG iteration, plus the start).
        primal_residual: relative primal residual (see `LinearProgram.kkt`).
        dual_residual: relative dual residual.
        gap: relative duality gap.
        eqlin: marginals of the equality constraints (d fun / d b_eq), like scipy's ``res.eqlin.marginals``.
        ineqlin: marginals of the inequality constraints (``<= 0``).
        dual_ray: where ``status == 2``, a unit Farkas ray ``(y_eq, y_ub)`` proving
            infeasibility (``y_ub >= 0``, ``A^T y`` absorbed by the bounds,
            ``b^T y`` smaller than the bounds allow; see `saddle.PDHG.certificates`);
            zeros elsewhere.
        primal_ray: where ``status == 3``, a unit ray s of the feasible set's
            recession cone with ``c^T s < 0``, proving unboundedness; zeros elsewhere.
        solution: the underlying `saddle.Solution`.
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


_SCIPY_STATUS = {Status.CONVERGED: 0, Status.MAX_ITERS: 1, Status.BUDGET_EXHAUSTED: 1, Status.STOPPED: 1,
                 Status.INFEASIBLE: 2, Status.UNBOUNDED: 3, Status.DIVERGED: 4}
_MESSAGES = {0: "Optimization terminated successfully (relative KKT error below tol).",
             1: "The iteration limit was reached.",
             2: "The problem is infeasible (a certificate of primal infeasibility was found).",
             3: "The problem is unbounded (a certificate of dual infeasibility was found).",
             4: "Numerical difficulties: the iterates diverged."}


def _tensor(a, name: str, dtype, device, dims: tuple[int, ...]) -> Tensor | None:
    """A dense tensor from an array-like, with one of the allowed numbers of dimensions."""
    if a is None:
        return None
    if isinstance(a, Tensor):
        if a.layout != torch.strided:
            raise TypeError(f"{name} must be dense")
        t = a.detach().to(device=device, dtype=dtype)
    else:
        try:
            t = torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype, device=device)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be an array of numbers: {err}") from err
    if t.dim() not in dims:
        raise ValueError(f"{name} must have {' or '.join(map(str, dims))} dimensions, got shape {tuple(t.shape)}")
    if torch.isnan(t).any():
        raise ValueError(f"{name} contains NaN")
    return t


def _matrix(A, name: str, dtype, device):
    """``(matrix, sparse?)``: a dense ``(B or 1, m, n)`` tensor or a 2-D sparse tensor."""
    if A is None:
        return None, False
    try:
        import scipy.sparse as sp

        if sp.issparse(A):
            A = A.tocoo()
            idx = torch.as_tensor(np.vstack([A.row, A.col]), dtype=torch.int64)
            A = torch.sparse_coo_tensor(idx, torch.as_tensor(A.data), A.shape, check_invariants=True)
    except ImportError:  # pragma: no cover - scipy is a dependency
        pass
    if isinstance(A, Tensor) and A.layout != torch.strided:
        A = A.to(device=device, dtype=dtype).coalesce() if A.layout == torch.sparse_coo else A.to(device=device,
                                                                                                 dtype=dtype)
        if A.dim() != 2:
            raise ValueError(f"a sparse {name} must be 2-D (one matrix shared by the batch), got shape {tuple(A.shape)}")
        vals = A.values()
        if not torch.isfinite(vals).all():
            raise ValueError(f"{name} contains NaN or inf")
        return A, True
    t = _tensor(A, name, dtype, device, (2, 3))
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN or inf")
    return (t.unsqueeze(0) if t.dim() == 2 else t), False


def _rhs(b, name: str, m: int, B: int, dtype, device) -> Tensor:
    t = _tensor(b, name, dtype, device, (1, 2))
    if t is None:
        raise ValueError(f"{name} is required with its matrix")
    t = t.unsqueeze(0) if t.dim() == 1 else t
    if t.shape[-1] != m or t.shape[0] not in (1, B):
        raise ValueError(f"{name} must have shape ({m},) or (B, {m}) = ({B}, {m}), got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite")
    return t.expand(B, m)


def _bounds(bounds, n: int, B: int, dtype, device) -> tuple[Tensor, Tensor]:
    """scipy's ``bounds``: None, one ``(lo, hi)`` pair, n pairs, or an ``(n, 2)`` / ``(B, n, 2)`` array."""
    if bounds is None:
        bounds = (0, None)
    if isinstance(bounds, tuple) and len(bounds) == 2 and all(b is None or isinstance(b, Real) for b in bounds):
        pairs = np.array([[-np.inf if bounds[0] is None else bounds[0],
                           np.inf if bounds[1] is None else bounds[1]]] * n, dtype=np.float64)
    else:
        try:
            if isinstance(bounds, Tensor):
                pairs = bounds.detach().cpu().double().numpy()
            else:
                pairs = np.array([[(-np.inf if lo is None else lo), (np.inf if hi is None else hi)]
                                  for lo, hi in bounds], dtype=np.float64) if not isinstance(bounds, np.ndarray) \
                    else bounds.astype(np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"bounds must be a (lo, hi) pair, n pairs or an (n, 2) array: {err}") from err
    if pairs.shape[-2:] != (n, 2) or pairs.ndim not in (2, 3):
        raise ValueError(f"bounds must give n = {n} (lo, hi) pairs, got shape {pairs.shape}")
    if np.isnan(pairs).any():
        raise ValueError("bounds contain NaN")
    if (pairs[..., 0] > pairs[..., 1]).any():
        raise ValueError("bounds: some lower bound exceeds its upper bound")
    if (pairs[..., 0] == np.inf).any() or (pairs[..., 1] == -np.inf).any():
        raise ValueError("bounds: a lower bound of +inf or an upper bound of -inf")
    t = torch.as_tensor(pairs, dtype=dtype, device=device)
    t = t.unsqueeze(0) if t.dim() == 2 else t
    return t[..., 0], t[..., 1]


def linprog(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=(0, None), *, method: str = "pdhg",
            tol: float = 1e-8, max_iters: int = 100_000, check_every: int = 64, device=None,
            dtype: torch.dtype = torch.float64, x0=None, callback=None, progress: bool = False,
            **pdhg_settings) -> LinprogResult:
    """Solve one LP or a batch of LPs of equal shape by restarted PDHG; the arguments mean what they mean in scipy.

    ``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  bounds[i][0] <= x_i <= bounds[i][1]``

    Args:
        c: ``(n,)`` or ``(B, n)`` costs (a batch of B LPs when 2-D).
        A_ub: ``(m1, n)``, ``(B, m1, n)``, a scipy.sparse matrix or a 2-D
            ``torch.sparse`` tensor (sparse matrices are shared by the batch).
        b_ub: ``(m1,)`` or ``(B, m1)``.
        A_eq: like ``A_ub``.
        b_eq: like ``b_ub``.
        bounds: scipy's forms: one ``(lo, hi)`` pair for every variable, a
            sequence of n pairs, or an ``(n, 2)`` (or ``(B, n, 2)``) array; None
            means unbounded on that side. Default ``(0, None)``: x >= 0.
        method: ``"pdhg"`` (the only one).
        tol: relative KKT tolerance (primal residual, dual residual and gap,
            each relative, as PDLP: 1e-4 is moderate, 1e-8 high accuracy).
        max_iters: iteration limit.
        check_every: iterations between convergence checks.
        device: torch device (default CPU).
        dtype: float64 (default) or float32.
        x0: a primal start ``(n,)`` or ``(B, n)``.
        callback: passed to `saddle.solve`.
        progress: show a progress bar.
        **pdhg_settings: settings of `saddle.PDHG` (``restarts=False``,
            ``precondition=False``, ``restart_measure="kkt"``, ...).

    Returns:
        a `LinprogResult`; for a 1-D ``c`` its fields are unbatched.
    """
    if method != "pdhg":
        raise ValueError(f"method must be 'pdhg', got {method!r}")
    device = torch.device("cpu" if device is None else device)
    c_t = _tensor(c, "c", dtype, device, (1, 2))
    if c_t is None:
        raise ValueError("c is required")
    if not torch.isfinite(c_t).all():
        raise ValueError("c must be finite")
    single = c_t.dim() == 1
    c_t = c_t.unsqueeze(0) if single else c_t
    B, n = c_t.shape
    blocks, rhs, sparse = [], [], []
    n_eq = 0
    for A, b, name in ((A_eq, b_eq, "A_eq"), (A_ub, b_ub, "A_ub")):
        M, is_sparse = _matrix(A, name, dtype, device)
        if M is None:
            if b is not None:
                raise ValueError(f"{name[0]}_{name[2:]} given without {name}")
            continue
        if M.shape[-1] != n:
            raise ValueError(f"{name} must have n = {n} columns (the length of c), got shape {tuple(M.shape)}")
        if not is_sparse and M.shape[0] not in (1, B):
            raise ValueError(f"{name} has batch size {M.shape[0]}, but c has {B}")
        m = M.shape[-2]
        rhs.append(_rhs(b, "b_eq" if name == "A_eq" else "b_ub", m, B, dtype, device))
        blocks.append(M)
        sparse.append(is_sparse)
        if name == "A_eq":
            n_eq = m
    if not blocks:  # only bounds: one trivial row 0 <= 0 keeps the shapes uniform
        blocks, rhs, sparse = [torch.zeros(1, 1, n, dtype=dtype, device=device)], [
            torch.zeros(B, 1, dtype=dtype, device=device)], [False]
    if any(sparse):
        K = torch.cat([b.to_sparse_coo() if s else b[0].to_sparse_coo() for b, s in zip(blocks, sparse)], 0) \
            if all(s or b.shape[0] == 1 for b, s in zip(blocks, sparse)) else None
        if K is None:
            raise ValueError("a sparse constraint matrix needs the other one shared by the batch (2-D) as well")
        K = K.coalesce()
    else:
        Bk = max(b.shape[0] for b in blocks)
        K = torch.cat([b.expand(Bk, -1, -1) for b in blocks], 1)
    d = torch.cat(rhs, -1)
    lo, hi = _bounds(bounds, n, B, dtype, device)
    if lo.shape[0] not in (1, B):
        raise ValueError(f"bounds have batch size {lo.shape[0]}, but c has {B}")
    x0_t = _tensor(x0, "x0", dtype, device, (1, 2))
    if x0_t is not None:
        x0_t = x0_t.unsqueeze(0).expand(B, n) if x0_t.dim() == 1 else x0_t
        if x0_t.shape != (B, n):
            raise ValueError(f"x0 must have shape ({n},) or ({B}, {n}), got {tuple(x0_t.shape)}")
        x0_t = torch.minimum(torch.maximum(x0_t, lo), hi)

    problem = LinearProgram(c_t, K, d, n_eq, lo, hi, x0=x0_t, name=f"linear program (m={d.shape[1]}, n={n})")
    solver = PDHG(**pdhg_settings)
    sol = solve(problem, solver, tol=tol, measure="kkt", max_iters=max_iters, check_every=check_every,
                callback=callback, progress=progress)
    x, y = sol.z
    kkt = problem.kkt(sol.z)
    status = torch.tensor([_SCIPY_STATUS[s] for s in sol.statuses], device=x.device)
    fun = torch.where((status == 2) | (status == 3), torch.full_like(kkt["primal_objective"], torch.nan),
                      kkt["primal_objective"])
    marginals = -y  # d fun / d b = -y at an optimum
    cert = solver.certificates(problem, sol.state)
    dual_ray = torch.where((status == 2).unsqueeze(-1), cert["dual_ray"], torch.zeros_like(cert["dual_ray"]))
    primal_ray = torch.where((status == 3).unsqueeze(-1), cert["primal_ray"], torch.zeros_like(cert["primal_ray"]))
    out = LinprogResult(
        x=x, fun=fun, status=status, success=status == 0,
        message=[_MESSAGES[int(s)] for s in status.tolist()],
        nit=sol.iterations, matvecs=2 * sol.operator_calls,
        primal_residual=kkt["primal_residual"], dual_residual=kkt["dual_residual"], gap=kkt["gap"],
        eqlin=marginals[:, :n_eq], ineqlin=marginals[:, n_eq:] if A_ub is not None else marginals[:, :0],
        dual_ray=dual_ray, primal_ray=primal_ray, solution=sol,
    )
    if single:
        for name in ("x", "fun", "status", "success", "nit", "matvecs", "primal_residual", "dual_residual", "gap",
                     "eqlin", "ineqlin", "dual_ray", "primal_ray"):
            setattr(out, name, getattr(out, name)[0])
        out.message = out.message[0]
    return out
