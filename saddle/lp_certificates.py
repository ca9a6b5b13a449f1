"""Certificates of infeasibility and unboundedness for linear programs, verified before they are reported.

An LP in Lagrangian form (a `BilinearProblem` with zero or linear terms on boxes)

    ``min_{x in X} max_{y in Y}  <c, x> + <K x, y> - <d, y>``

is infeasible or unbounded exactly when one of two rays exists (Farkas):

- a **dual ray** r (primal infeasibility): r in the recession cone of Y
  (``r_ub >= 0`` for ``A_ub x <= b_ub``, ``r_eq`` free), whose *reduced
  ray* ``g = K^T r`` the bounds of X absorb (``g_i <= 0`` where x_i has no
  lower bound, ``g_i >= 0`` where it has no upper bound) and whose objective

      ``obj(r) = -<d, r> + min_{x in X} <g, x> = -<d, r> + sum_i g_i (lo_i if g_i > 0 else hi_i)``

  is positive: every x in X then has ``<r, K x - d> >= obj(r) > 0``, which
  no x with ``K x - d`` in the polar of Y's recession cone (``A_eq x = b_eq``,
  ``A_ub x <= b_ub``) can have;
- a **primal ray** s (dual infeasibility, reported as unbounded): s in the
  recession cone of X, ``K s`` in the polar of Y's recession cone
  (``A_eq s = 0``, ``A_ub s <= 0``) and ``<c, s> < 0``.

The rays come from iterates of first-order methods and hold only approximately.
PDLP accepts a dual ray whose unabsorbed part e (the entries of g that the
bounds cannot absorb) is below ``tol * obj(r)``. That bound mixes the scale of
K with the scale of b and the bounds, and on scipy's bug_10466 (b ~ 1e9, a
feasible LP) it accepted a "ray" with ``|e| = 0.83 |r|`` because
``obj(r) = 8.7e8``. What an approximate ray proves is weaker than
infeasibility: for every feasible x, ``obj(r) <= -<e, x> <= |e| |x|``, so it
only excludes feasible points with ``|x| < obj(r) / |e|``; that radius must be
large compared with the problem's own scale of x, which is the ratio of the
magnitudes of the terms of ``obj(r)`` and of g:

    ``x_scale = M(r) / |(|K|^T |r|)|``,
    ``M(r) = sum_j |d_j r_j| + sum_i |g_i| |bound_i|``   (the magnitudes of obj's terms)

(``|K|^T |r|``: the magnitudes of the terms of g, without their
cancellation). Requiring ``obj(r) / |e| >= x_scale / tol`` gives the test used
here, in two dimensionless ratios:

    ``primal infeasible  <=>  rel_obj(r) = obj(r) / M(r) > max(tol, noise)``
    ``                    and rel_ray(r) = |e| / |(|K|^T |r|)| <= tol * rel_obj(r)``

with ``noise = (m + n) eps`` the rounding error of the sums in obj (eps of the
dtype): an LP infeasible by less than tol (relative) is not certified, as a
point meeting the KKT tolerance may exist. Neither ratio can be met by
cancellation noise: ``rel_obj`` compares obj with the magnitudes of its own
terms, ``rel_ray`` compares e with the terms that produce it. Both are
invariant to scaling r, the costs, or a row of K with its entry of d (the
ray's entry absorbs it); ``rel_obj`` also to scaling a column of K with the
inverse of its bounds (``x = D x'``), and an exact ray (e = 0) stays exact.
bug_10466's ray has ``rel_obj = 0.31`` but ``rel_ray = 0.22`` and is refused
at any sensible tol. Symmetrically, for a primal ray s with ``v`` the part of
``K s`` outside the polar of Y's recession cone:

    ``unbounded  <=>  rel_obj(s) = -<c, s> / sum_i |c_i s_i| > max(tol, noise)``
    ``            and rel_ray(s) = |v| / |(|K| |s|)| <= tol * rel_obj(s)``

(a dual-feasible y would give ``-<c, s> <= |y| |v|``; ``sum_i |c_i s_i| / |(|K| |s|)|``
is the problem's scale of y). Rays are first projected onto the recession
cones (``r_ub >= 0`` exactly), so those conditions hold exactly. The checks
run in the problem's own variables, whatever preconditioning a solver uses.

Candidates (`certify`): a method that is run on an infeasible LP drifts: its
iterates ``z_k`` grow like ``k v`` along the infimal displacement vector v
(Applegate et al. 2021, "Infeasibility detection with primal-dual hybrid
gradient for large-scale linear programming", arXiv 2102.04592), whose parts
are the rays above. Three estimates of v are tested per instance, in order,
and the first one that verifies is reported (`RayTracker`):

1. the difference of the iterates at the last two checks,
2. the normalized iterate ``(z_k - z_0) / k``,
3. the step ``T(z) - z`` of a fixed-point scheme, from the displacement
   ``z - T(z)`` it reports (Halpern PDHG: ``T(z) - z`` tends to v, the
   displacement of least norm).
"""

from __future__ import annotations

import math
import weakref
from typing import NamedTuple

import torch
from torch import Tensor

from .coupling import Bilinear
from .solution import Status

__all__ = ["CANDIDATES", "RayTracker", "Detection", "candidates", "certify", "detect", "no_detection",
           "dual_ray_measures", "primal_ray_measures", "BoxSplit", "box_split", "split_by_bounds", "unit",
           "ray_tracker", "track", "verify_dual_ray", "verify_primal_ray"]


class RayTracker(NamedTuple):
    """Candidate rays from the drift of an iteration; tensors ``(B, ...)``.

    Attributes:
        origin_x, origin_y: the point where tracking started (the start z0), ``(B, n)``, ``(B, m)``.
        check_x, check_y: the point at the last check.
        diff_x, diff_y: the difference of the points at the last two checks.
        displacement_x, displacement_y: ``z - T(z)`` reported by the scheme at the last check
            (zeros if the scheme has none).
        iterations: ``(B,)`` int64 iterations between the origin and the last check.
    """

    origin_x: Tensor
    origin_y: Tensor
    check_x: Tensor
    check_y: Tensor
    diff_x: Tensor
    diff_y: Tensor
    displacement_x: Tensor
    displacement_y: Tensor
    iterations: Tensor


def ray_tracker(x: Tensor, y: Tensor) -> RayTracker:
    """A tracker that starts at ``(x, y)`` (``(B, n)``, ``(B, m)``): no drift yet."""
    zx, zy = torch.zeros_like(x), torch.zeros_like(y)
    iterations = torch.zeros(x.shape[0], dtype=torch.int64, device=x.device)
    return RayTracker(x, y, x, y, zx, zy, zx, zy, iterations)


def track(tracker: RayTracker, x: Tensor, y: Tensor, iterations, displacement=None) -> RayTracker:
    """The tracker after a check at ``(x, y)``.

    Args:
        tracker: the tracker at the previous check.
        x, y: the iterate now, ``(B, n)``, ``(B, m)``.
        iterations: ``(B,)`` int64 tensor or an int: iterations since the origin.
        displacement: ``(dx, dy)``, the scheme's ``z - T(z)`` now, or None (zeros).
    """
    k = torch.as_tensor(iterations, dtype=torch.int64, device=x.device).expand(x.shape[0]).clone()
    dx, dy = (torch.zeros_like(x), torch.zeros_like(y)) if displacement is None else displacement
    return tracker._replace(check_x=x, check_y=y, diff_x=x - tracker.check_x, diff_y=y - tracker.check_y,
                            displacement_x=dx, displacement_y=dy, iterations=k)


# -- the LP's data ---------------------------------------------------------------------------
class _LPData(NamedTuple):
    """What the tests need from an LP in Lagrangian form, computed once; tensors broadcast to ``(B, ...)``."""

    K: Bilinear
    abs_K: Bilinear  # |K| entrywise: the magnitudes of the terms of K x and K^T y before they cancel
    c: Tensor  # (B, n)
    d: Tensor  # (B, m)
    x_box: "BoxSplit"  # the bounds of X and of Y
    y_box: "BoxSplit"
    noise: float  # (m + n) eps: the relative rounding error of the sums in the ray objectives


_LP_DATA: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _lp_data(problem, B: int) -> _LPData:
    """`_make_lp_data`, made once per problem (and batch size) and kept while the problem lives."""
    try:
        cached = _LP_DATA.get(problem)
    except TypeError:  # a problem that cannot be a weak key
        return _make_lp_data(problem, B)
    if cached is None or cached.c.shape[0] != B:
        cached = _LP_DATA[problem] = _make_lp_data(problem, B)
    return cached


def _make_lp_data(problem, B: int) -> _LPData:
    """c, d and the bounds of X and Y of B instances, K and |K|."""
    X, Y = problem.domain
    K = problem.coupling
    _, m, n = K.shape
    like_x = torch.zeros(B, n, dtype=K.dtype, device=K.device)
    like_y = torch.zeros(B, m, dtype=K.dtype, device=K.device)
    lx, ux = X.project(like_x - math.inf), X.project(like_x + math.inf)
    ly, uy = Y.project(like_y - math.inf), Y.project(like_y + math.inf)
    c = problem.g.linear_coefficient(like_x).expand_as(like_x)
    d = problem.h_conj.linear_coefficient(like_y).expand_as(like_y)
    return _LPData(K, _abs_coupling(K), c, d, box_split(lx, ux), box_split(ly, uy), (m + n) * torch.finfo(K.dtype).eps)


_ABS_COUPLINGS: dict[int, Bilinear] = {}


def _abs_coupling(K: Bilinear) -> Bilinear:
    """``|K|`` entrywise, formed once per matrix (a sparse one costs a transpose) and kept while K lives."""
    key = id(K.K)
    if key not in _ABS_COUPLINGS:
        _ABS_COUPLINGS[key] = Bilinear(K.K.abs())
        weakref.finalize(K.K, _ABS_COUPLINGS.pop, key, None)
    return _ABS_COUPLINGS[key]


def _recession(v: Tensor, box: "BoxSplit") -> Tensor:
    """The projection of v onto the recession cone of a box (`box_split`): ``v_i >= 0`` where lo_i is
    finite, ``v_i <= 0`` where hi_i is finite (0 where both are): v less its parts the bounds forbid."""
    v_rec = torch.addcmul(v, 1 - box.lo_open, v.clamp_max(0), value=-1)
    return torch.addcmul(v_rec, 1 - box.hi_open, v.clamp_min(0), value=-1)


def unit(v: Tensor) -> Tensor:
    """``v / |v|_2`` along the last dimension (zero vectors stay zero)."""
    return v / v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(v.dtype).tiny)


class BoxSplit(NamedTuple):
    """A box ``lo <= x <= hi`` as `split_by_bounds` uses it, made once per box: 0/1 factors marking the
    infinite bounds, and the bounds with 0 in place of the infinite ones (so 0 * inf never appears)."""

    lo_open: Tensor
    hi_open: Tensor
    lo_finite: Tensor
    hi_finite: Tensor


def box_split(lo: Tensor, hi: Tensor) -> BoxSplit:
    """The `BoxSplit` of ``lo <= x <= hi`` (tensors broadcasting against the vectors to split)."""
    lo_inf, hi_inf = torch.isinf(lo), torch.isinf(hi)
    return BoxSplit(lo_inf.to(lo.dtype), hi_inf.to(hi.dtype), torch.where(lo_inf, 0.0, lo),
                    torch.where(hi_inf, 0.0, hi))


def split_by_bounds(v: Tensor, box: BoxSplit) -> tuple[Tensor, Tensor]:
    """Split a linear function ``<v, x>`` on a box (`box_split`) into what its bounds absorb; four operations.

    Returns ``(unabsorbed, terms)``: the absorbed part ``v - unabsorbed`` is positive only where lo is
    finite and negative only where hi is, so ``min_{lo <= x <= hi} <v - unabsorbed, x> = terms.sum(-1)``
    with ``terms_i = v_i lo_i`` or ``v_i hi_i`` there (0 elsewhere); ``unabsorbed`` (``v_i > 0`` with
    ``lo_i = -inf``, ``v_i < 0`` with ``hi_i = inf``) would make that minimum -inf. For an LP's reduced
    costs ``c + K^T y`` it is the dual residual and the bound terms of the dual objective; for a Farkas
    ray's ``K^T r``, the part that must vanish.
    """
    positive, negative = v.clamp_min(0), v.clamp_max(0)
    unabsorbed = torch.addcmul(positive * box.lo_open, negative, box.hi_open)
    terms = torch.addcmul(positive * box.lo_finite, negative, box.hi_finite)
    return unabsorbed, terms


def _product(matvec, K: Bilinear, v: Tensor) -> Tensor:
    """``matvec(v)`` for candidates ``v`` ``(C, B, k)`` stacked on the instances' batch ``(B, k)``."""
    if K.shape[0] == 1:  # a shared (or sparse) K: the candidates are more instances
        out = matvec(v.reshape(-1, v.shape[-1]))
        return out.reshape(*v.shape[:-1], out.shape[-1])
    return matvec(v)  # dense per-instance K: matmul broadcasts over C


def _ratio(num: Tensor, den: Tensor) -> Tensor:
    """``num / den``, with 0 / 0 = 0 (a zero ray, or one whose terms are all zero)."""
    return num / den.clamp_min(torch.finfo(den.dtype).tiny)


def _dual_measures(lp: _LPData, r: Tensor) -> dict[str, Tensor]:
    r = unit(_recession(r, lp.y_box))
    e, terms = split_by_bounds(_product(lp.K.rmv, lp.K, r), lp.x_box)
    rd = lp.d * r
    objective = terms.sum(-1) - rd.sum(-1)
    scale = _product(lp.abs_K.rmv, lp.K, r.abs()).norm(dim=-1)
    return {"ray": r, "objective": objective,
            "rel_objective": _ratio(objective, terms.abs().sum(-1) + rd.abs().sum(-1)),
            "rel_ray": _ratio(e.norm(dim=-1), scale)}


def _primal_measures(lp: _LPData, s: Tensor) -> dict[str, Tensor]:
    s = unit(_recession(s, lp.x_box))
    Ks = _product(lp.K.mv, lp.K, s)
    # the polar of Y's recession cone: (K s)_j <= 0 where uy_j = inf, >= 0 where ly_j = -inf (= 0 if both)
    v = torch.addcmul(Ks.clamp_min(0) * lp.y_box.hi_open, Ks.clamp_max(0), lp.y_box.lo_open)
    cs = lp.c * s
    scale = _product(lp.abs_K.mv, lp.K, s.abs()).norm(dim=-1)
    return {"ray": s, "objective": -cs.sum(-1), "rel_objective": _ratio(-cs.sum(-1), cs.abs().sum(-1)),
            "rel_ray": _ratio(v.norm(dim=-1), scale)}


def _accept(measures: dict[str, Tensor], lp: _LPData, tol: float) -> Tensor:
    """``rel_obj > max(tol, noise)`` and ``rel_ray <= tol rel_obj`` (bool; NaN compares false)."""
    rel_obj = measures["rel_objective"]
    return (rel_obj > max(tol, lp.noise)) & (measures["rel_ray"] <= tol * rel_obj)


# -- verification ------------------------------------------------------------------------------
def dual_ray_measures(problem, r: Tensor) -> dict[str, Tensor]:
    """The quantities of the Farkas test of a dual ray r ``(B, m)`` (module docstring).

    Returns: ``ray`` (r projected onto Y's recession cone and normalized), and ``(B,)`` tensors
    ``objective`` ``-<d, r> + min_{x in X} <K^T r, x>`` (over the absorbed part of ``K^T r``),
    ``rel_objective`` (over the sum of the magnitudes of its terms) and ``rel_ray`` ``|e| / |(|K|^T |r|)|``.
    """
    return _dual_measures(_lp_data(problem, r.shape[0]), r)


def primal_ray_measures(problem, s: Tensor) -> dict[str, Tensor]:
    """The quantities of the test of a primal ray s ``(B, n)`` (module docstring).

    Returns: ``ray`` (s projected onto X's recession cone and normalized), and ``(B,)`` tensors
    ``objective`` ``-<c, s>``, ``rel_objective`` (over ``sum_i |c_i s_i|``) and ``rel_ray``
    ``|v| / |(|K| |s|)|`` with v the part of ``K s`` outside the polar of Y's recession cone.
    """
    return _primal_measures(_lp_data(problem, s.shape[0]), s)


def verify_dual_ray(problem, r: Tensor, tol: float) -> Tensor:
    """Whether r ``(B, m)`` certifies primal infeasibility to the relative tolerance tol, ``(B,)`` bool.

    ``rel_obj(r) > max(tol, (m + n) eps)`` and ``rel_ray(r) <= tol * rel_obj(r)`` (module docstring).
    """
    lp = _lp_data(problem, r.shape[0])
    return _accept(_dual_measures(lp, r), lp, tol)


def verify_primal_ray(problem, s: Tensor, tol: float) -> Tensor:
    """Whether s ``(B, n)`` certifies unboundedness (dual infeasibility) to the relative tolerance tol, ``(B,)`` bool.

    ``rel_obj(s) > max(tol, (m + n) eps)`` and ``rel_ray(s) <= tol * rel_obj(s)`` (module docstring).
    """
    lp = _lp_data(problem, s.shape[0])
    return _accept(_primal_measures(lp, s), lp, tol)


# -- candidates --------------------------------------------------------------------------------
CANDIDATES = ("difference", "normalized", "displacement")


def candidates(tracker: RayTracker) -> tuple[Tensor, Tensor]:
    """The candidate rays ``(x parts (C, B, n), y parts (C, B, m))``, C = 3 in the order of `CANDIDATES`."""
    k = tracker.iterations.clamp_min(1).unsqueeze(-1).to(tracker.check_x.dtype)
    xs = (tracker.diff_x, (tracker.check_x - tracker.origin_x) / k, -tracker.displacement_x)
    ys = (tracker.diff_y, (tracker.check_y - tracker.origin_y) / k, -tracker.displacement_y)
    return torch.stack(xs), torch.stack(ys)  # the iterates move by T(z) - z: minus the displacement


def _first(ok: Tensor, rays: Tensor) -> tuple[Tensor, Tensor]:
    """Per instance, whether any candidate passed ``ok`` ``(C, B)`` and the first that did (zeros if none)."""
    found = ok.any(0)
    first = torch.argmax(ok.to(torch.int8), dim=0)  # the first True (0 where none)
    ray = rays.gather(0, first.reshape(1, -1, 1).expand(1, *rays.shape[1:]))[0]
    return found, torch.where(found.unsqueeze(-1), ray, torch.zeros_like(ray))


class Detection(NamedTuple):
    """What the certificates showed so far, per instance: ``status`` ``(B,)`` `Status` codes
    (``INFEASIBLE``, ``UNBOUNDED``, or ``RUNNING`` for nothing yet) and the verified rays
    ``dual_ray`` ``(B, m)`` and ``primal_ray`` ``(B, n)`` (zeros where none)."""

    status: Tensor
    dual_ray: Tensor
    primal_ray: Tensor


def no_detection(x: Tensor, y: Tensor) -> Detection:
    """The `Detection` of nothing found yet, for iterates ``x`` ``(B, n)`` and ``y`` ``(B, m)``."""
    return Detection(torch.full((x.shape[0],), int(Status.RUNNING), dtype=torch.int64, device=x.device),
                     torch.zeros_like(y), torch.zeros_like(x))


def detect(problem, tracker: RayTracker, detection: Detection, tol: float) -> Detection:
    """`certify` the tracker's candidates and record the first verified finding of each instance.

    A finding is kept with its ray from then on (later candidates may differ), so the certificate
    reported at the end is the one that stopped the instance. Infeasibility wins over unboundedness.
    """
    cert = certify(problem, tracker, tol)
    new = detection.status == int(Status.RUNNING)
    infeasible, unbounded = cert["infeasible"] & new, cert["unbounded"] & new & ~cert["infeasible"]
    status = torch.where(unbounded, int(Status.UNBOUNDED), detection.status)
    return Detection(torch.where(infeasible, int(Status.INFEASIBLE), status),
                     torch.where(infeasible.unsqueeze(-1), cert["dual_ray"], detection.dual_ray),
                     torch.where(unbounded.unsqueeze(-1), cert["primal_ray"], detection.primal_ray))


def certify(problem, tracker: RayTracker, tol: float) -> dict[str, Tensor]:
    """Verified certificates from the tracker's candidates, per instance.

    Each candidate (`candidates`) is projected onto the recession cones and normalized; the first
    one that passes the test of `verify_dual_ray` (resp. `verify_primal_ray`) is reported.

    Returns:
        ``dual_ray`` ``(B, m)``: a unit Farkas ray where ``infeasible``, else zeros;
        ``primal_ray`` ``(B, n)``: a unit ray of unboundedness where ``unbounded``, else zeros;
        ``infeasible``, ``unbounded``: ``(B,)`` bool.
    """
    lp = _lp_data(problem, tracker.check_x.shape[0])
    xs, ys = candidates(tracker)
    dual, primal = _dual_measures(lp, ys), _primal_measures(lp, xs)
    infeasible, dual_ray = _first(_accept(dual, lp, tol), dual["ray"])
    unbounded, primal_ray = _first(_accept(primal, lp, tol), primal["ray"])
    return {"dual_ray": dual_ray, "primal_ray": primal_ray, "infeasible": infeasible, "unbounded": unbounded}
