"""Tests of saddle.sets: projections, prox steps, linear minimization oracles, support functions.

Every check is against an answer computed independently of the code under test:
the set's definition (feasibility written out in numpy), the defining
properties of a Euclidean projection (idempotence, non-expansiveness, the
variational inequality), cvxpy, scipy.optimize.linprog, or a closed form.

Sets are described by a `Spec` holding their parameters as numpy arrays
broadcast to ``(B, n)``; the `saddle` object is built from the spec with the
parameters given in one of the accepted forms (float, ``(B,)``, ``(B, n)``,
``(1, n)``), so the reference computations never read the object under test.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import cvxpy as cp
import hypothesis.extra.numpy as hnp
import numpy as np
import pytest
import scipy.optimize
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from saddle import Ball, Box, Product, Reals, Simplex, VIProblem

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
FEW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

INF = math.inf


# ---------------------------------------------------------------------------------------------
# Set descriptions, independent feasibility, feasible samples, LP / closed-form references
# ---------------------------------------------------------------------------------------------


@dataclass
class Spec:
    """A set with its parameters in numpy: ``lo``/``hi`` are ``(B, n)``, ``radius`` is ``(B,)``."""

    kind: str  # "reals" | "box" | "ball" | "simplex"
    B: int
    n: int
    obj: object
    lo: np.ndarray | None = None
    hi: np.ndarray | None = None
    radius: np.ndarray | None = None
    p: float | None = None
    geometry: str = "euclidean"

    @property
    def bounded(self) -> bool:
        if self.kind == "reals":
            return False
        if self.kind == "box":
            return bool(np.isfinite(self.lo).all() and np.isfinite(self.hi).all())
        return True


def feasible(spec: Spec, u: np.ndarray, atol: float = 1e-9) -> np.ndarray:
    """Membership per instance, written from the definition of the set, shape ``(B,)``."""
    if spec.kind == "reals":
        return np.isfinite(u).all(-1)
    if spec.kind == "box":
        return ((u >= spec.lo - atol) & (u <= spec.hi + atol)).all(-1)
    if spec.kind == "ball":
        return np.linalg.norm(u, ord=spec.p, axis=-1) <= spec.radius + atol
    return (u.min(-1) >= -atol) & (np.abs(u.sum(-1) - 1) <= atol)


def sample_feasible(spec: Spec, rng: np.random.Generator, k: int) -> np.ndarray:
    """k feasible points per instance, shape ``(k, B, n)``, boundary points included."""
    B, n = spec.B, spec.n
    t = rng.uniform(size=(k, B, 1))
    t[: max(1, k // 4)] = 1.0  # some points on the boundary
    if spec.kind == "reals":
        return 10 * rng.standard_normal((k, B, n))
    if spec.kind == "box":
        lo, hi = spec.lo, spec.hi
        U = rng.uniform(size=(k, B, n))
        E = rng.exponential(3.0, size=(k, B, n))
        both = lo + U * np.where(np.isfinite(hi - lo), hi - lo, 0.0)
        out = np.where(np.isfinite(lo) & np.isfinite(hi), both,
                       np.where(np.isfinite(lo), lo + E, np.where(np.isfinite(hi), hi - E, 10 * (U - 0.5))))
        return out
    if spec.kind == "ball":
        r = spec.radius.reshape(1, B, 1)
        if spec.p == INF:
            return r * rng.uniform(-1, 1, size=(k, B, n)) * t
        d = rng.standard_normal((k, B, n))
        d = d / np.linalg.norm(d, ord=spec.p, axis=-1, keepdims=True)
        return r * t * d
    e = rng.exponential(size=(k, B, n))
    e[0] = 0.0
    e[0, :, rng.integers(n)] = 1.0  # a vertex
    return e / e.sum(-1, keepdims=True)


def lp_min(spec: Spec, c: np.ndarray, i: int) -> float:
    """``min_{u in set} <c, u>`` for instance i by HiGHS (+inf -> unbounded gives -inf)."""
    n = spec.n
    if spec.kind == "ball" and spec.p == 2:
        return -spec.radius[i] * np.linalg.norm(c)
    if spec.kind == "ball" and spec.p == 1:
        r = spec.radius[i]
        cc = np.concatenate([c, np.zeros(n)])
        I = np.eye(n)
        A_ub = np.vstack([np.hstack([I, -I]), np.hstack([-I, -I]), np.concatenate([np.zeros(n), np.ones(n)])[None]])
        b_ub = np.concatenate([np.zeros(2 * n), [r]])
        res = scipy.optimize.linprog(cc, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * n + [(0, None)] * n,
                                     method="highs")
    else:
        A_eq = b_eq = None
        if spec.kind == "reals":
            bounds = [(None, None)] * n
        elif spec.kind == "box":
            bounds = [(None if not np.isfinite(a) else a, None if not np.isfinite(b) else b)
                      for a, b in zip(spec.lo[i], spec.hi[i])]
        elif spec.kind == "ball":  # p = inf
            bounds = [(-spec.radius[i], spec.radius[i])] * n
        else:
            bounds, A_eq, b_eq = [(0, None)] * n, np.ones((1, n)), [1.0]
        res = scipy.optimize.linprog(c, A_eq=A_eq, b_eq=b_eq, bounds=bounds, method="highs")
    if res.status == 3:
        return -INF
    assert res.status == 0, res.message
    return float(res.fun)


def cvxpy_projection(spec: Spec, u: np.ndarray, i: int) -> np.ndarray:
    v = cp.Variable(spec.n)
    if spec.kind == "reals":
        cons = []
    elif spec.kind == "box":
        cons = [v[j] >= spec.lo[i, j] for j in range(spec.n) if np.isfinite(spec.lo[i, j])]
        cons += [v[j] <= spec.hi[i, j] for j in range(spec.n) if np.isfinite(spec.hi[i, j])]
    elif spec.kind == "ball":
        cons = [cp.norm(v, spec.p) <= spec.radius[i]]
    else:
        cons = [v >= 0, cp.sum(v) == 1]
    prob = cp.Problem(cp.Minimize(cp.sum_squares(v - u)), cons)
    solve(prob)
    return np.asarray(v.value)


def solve(prob: cp.Problem) -> None:
    """Solve with Clarabel at tight tolerances (relaxed if Clarabel cannot reach them)."""
    for tol in (1e-11, 1e-9):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "Solution may be inaccurate": retried below
            prob.solve(solver=cp.CLARABEL, tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol)
        if prob.status == cp.OPTIMAL:
            return
    assert prob.status == cp.OPTIMAL, prob.status


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# Hypothesis strategies
# ---------------------------------------------------------------------------------------------

finite = st.floats(-5, 5, allow_nan=False, allow_infinity=False, allow_subnormal=False)
width = st.floats(0, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)
radius_el = st.floats(0, 10, allow_nan=False, allow_infinity=False, allow_subnormal=False)
point_el = st.floats(-50, 50, allow_nan=False, allow_infinity=False, allow_subnormal=False)


def _bound_arrays(draw, shape, allow_inf):
    lo = draw(hnp.arrays(np.float64, shape, elements=finite))
    hi = lo + draw(hnp.arrays(np.float64, shape, elements=width))
    if allow_inf:
        lo = np.where(draw(hnp.arrays(np.bool_, shape)), -INF, lo)
        hi = np.where(draw(hnp.arrays(np.bool_, shape)), INF, hi)
    return lo, hi


@st.composite
def specs(draw, kinds=("reals", "box", "ball", "simplex"), bounded_only=False, B=None, n=None):
    B = draw(st.integers(1, 4)) if B is None else B
    n = draw(st.integers(1, 5)) if n is None else n
    kind = draw(st.sampled_from([k for k in kinds if not (bounded_only and k == "reals")]))
    if kind == "reals":
        return Spec("reals", B, n, Reals())
    if kind == "simplex":
        geometry = draw(st.sampled_from(["euclidean", "entropic"]))
        return Spec("simplex", B, n, Simplex(geometry), geometry=geometry)
    if kind == "ball":
        p = draw(st.sampled_from([1, 2, INF]))
        if draw(st.booleans()):
            r = draw(radius_el)
            return Spec("ball", B, n, Ball(r, p=p), radius=np.full(B, r), p=p)
        r = draw(hnp.arrays(np.float64, (B,), elements=radius_el))
        return Spec("ball", B, n, Ball(T(r), p=p), radius=r, p=p)
    allow_inf = not bounded_only
    form = draw(st.sampled_from(["float", "B", "Bn", "1n", "mixed"]))
    if form == "float":
        lo, hi = _bound_arrays(draw, (), allow_inf)
        lo, hi = float(lo), float(hi)
        obj = Box(lo, hi)
    elif form == "B":
        lo, hi = _bound_arrays(draw, (B,), allow_inf)
        obj = Box(T(lo), T(hi))
        lo, hi = lo[:, None], hi[:, None]
    elif form == "Bn":
        lo, hi = _bound_arrays(draw, (B, n), allow_inf)
        obj = Box(T(lo), T(hi))
    elif form == "1n":
        lo, hi = _bound_arrays(draw, (1, n), allow_inf)
        obj = Box(T(lo), T(hi))
    else:  # float lower bound below everything, per-coordinate upper bound
        lo = -20.0 if bounded_only or not draw(st.booleans()) else -INF
        _, hi = _bound_arrays(draw, (B, n), allow_inf)
        obj = Box(lo, T(hi))
    lo = np.broadcast_to(np.asarray(lo, dtype=np.float64), (B, n)).copy()
    hi = np.broadcast_to(np.asarray(hi, dtype=np.float64), (B, n)).copy()
    return Spec("box", B, n, obj, lo=lo, hi=hi)


@st.composite
def spec_and_points(draw, k=1, **kw):
    spec = draw(specs(**kw))
    pts = [draw(hnp.arrays(np.float64, (spec.B, spec.n), elements=point_el)) for _ in range(k)]
    return (spec, *pts)


# ---------------------------------------------------------------------------------------------
# Projections: feasible, idempotent, non-expansive, variational inequality
# ---------------------------------------------------------------------------------------------


KINDS = ["reals", "box", "ball", "simplex"]


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_projection_properties(kind, data, seed):
    spec, u, v = data.draw(spec_and_points(k=2, kinds=(kind,)))
    S = spec.obj
    Pu, Pv = S.project(T(u)), S.project(T(v))
    assert Pu.shape == (spec.B, spec.n) and Pu.dtype == torch.float64
    pu, pv = Pu.numpy(), Pv.numpy()
    # feasible, by the definition and by the set's own membership test
    assert feasible(spec, pu).all()
    assert S.contains(Pu).all()
    # idempotent
    np.testing.assert_allclose(S.project(Pu).numpy(), pu, rtol=0, atol=1e-12)
    # non-expansive, per instance
    assert (np.linalg.norm(pu - pv, axis=-1) <= np.linalg.norm(u - v, axis=-1) + 1e-12).all()
    # variational characterization: <u - P(u), w - P(u)> <= 0 for every feasible w
    W = sample_feasible(spec, np.random.default_rng(seed), 16)
    assert feasible(spec, W).all()
    lhs = ((u - pu)[None] * (W - pu[None])).sum(-1)
    scale = np.linalg.norm(u - pu, axis=-1)[None] * np.linalg.norm(W - pu[None], axis=-1)
    assert (lhs <= 1e-10 * np.maximum(1.0, scale)).all()


@SETTINGS
@given(specs(), st.integers(0, 2**32 - 1))
def test_feasible_points_are_fixed_and_contained(spec, seed):
    """P(w) = w for w in the set; `contains` agrees with the definition on points clearly in or out."""
    rng = np.random.default_rng(seed)
    W = sample_feasible(spec, rng, 6)
    for w in W:
        np.testing.assert_allclose(spec.obj.project(T(w)).numpy(), w, rtol=0, atol=1e-12)
        assert spec.obj.contains(T(w)).all()
    if spec.kind == "reals":
        return
    # points clearly outside
    if spec.kind == "box":
        j = rng.integers(spec.n)
        out = W[0].copy()
        out[:, j] = np.where(np.isfinite(spec.hi[:, j]), spec.hi[:, j] + 0.1,
                             np.where(np.isfinite(spec.lo[:, j]), spec.lo[:, j] - 0.1, 1e3))
        has_bound = np.isfinite(spec.hi[:, j]) | np.isfinite(spec.lo[:, j])
        assert (~feasible(spec, out) == has_bound).all()
        assert (spec.obj.contains(T(out)).numpy() == ~has_bound).all()
    elif spec.kind == "ball":
        d = rng.standard_normal((spec.B, spec.n)) + 0.1
        out = d / np.linalg.norm(d, ord=spec.p, axis=-1, keepdims=True) * (spec.radius[:, None] * 1.01 + 0.1)
        assert not feasible(spec, out).any()
        assert not spec.obj.contains(T(out)).any()
    else:
        out = W[0] * 1.1
        assert not spec.obj.contains(T(out)).any()
        out = W[0].copy()
        out[:, 0] -= 0.05
        out[:, -1] += 0.05 if spec.n > 1 else 0.0
        assert (spec.obj.contains(T(out)).numpy() == feasible(spec, out, atol=1e-12)).all()


def _fixed_specs():
    """A handful of sets with fixed random parameters, every parameter form included."""
    rng = np.random.default_rng(1)
    B, n = 3, 4
    lo = rng.uniform(-2, 0, (B, n))
    hi = lo + rng.uniform(0, 2, (B, n))
    lo_inf = lo.copy()
    lo_inf[0, 1] = -INF
    hi_inf = hi.copy()
    hi_inf[2, 3] = INF
    r = rng.uniform(0.2, 2, B)
    lob, hib = rng.uniform(-1, 0, B), rng.uniform(0, 1, B)
    out = [
        Spec("reals", B, n, Reals()),
        Spec("box", B, n, Box(-0.5, 0.3), lo=np.full((B, n), -0.5), hi=np.full((B, n), 0.3)),
        Spec("box", B, n, Box(T(lob), T(hib)), lo=np.repeat(lob[:, None], n, 1), hi=np.repeat(hib[:, None], n, 1)),
        Spec("box", B, n, Box(T(lo), T(hi)), lo=lo, hi=hi),
        Spec("box", B, n, Box(T(lo_inf), T(hi_inf)), lo=lo_inf, hi=hi_inf),
        Spec("box", B, n, Box(-INF, 0.25), lo=np.full((B, n), -INF), hi=np.full((B, n), 0.25)),
        Spec("simplex", B, n, Simplex()),
        Spec("simplex", B, n, Simplex("entropic"), geometry="entropic"),
    ]
    for p in (1, 2, INF):
        out.append(Spec("ball", B, n, Ball(0.7, p=p), radius=np.full(B, 0.7), p=p))
        out.append(Spec("ball", B, n, Ball(T(r), p=p), radius=r, p=p))
    return out


FIXED = _fixed_specs()


def _spec_id(s: Spec) -> str:
    return f"{s.kind}-{s.obj!r}"


@pytest.mark.parametrize("spec", FIXED, ids=[_spec_id(s) for s in FIXED])
def test_projection_matches_cvxpy(spec):
    rng = np.random.default_rng(7)
    u = 3 * rng.standard_normal((spec.B, spec.n))
    u[1] *= 0.05  # an instance that may lie inside the set
    P = spec.obj.project(T(u)).numpy()
    for i in range(spec.B):
        np.testing.assert_allclose(P[i], cvxpy_projection(spec, u[i], i), rtol=0, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# Prox steps
# ---------------------------------------------------------------------------------------------

step_el = st.floats(0, 5, allow_nan=False, allow_subnormal=False)


@SETTINGS
@given(spec_and_points(k=2), st.one_of(step_el, st.none()), st.data())
def test_euclidean_prox_step_is_projected_step(args, step, data):
    spec, z, g = args
    assume(spec.geometry == "euclidean")  # the entropic step is tested below
    if step is None:  # per-instance steps
        steps = data.draw(hnp.arrays(np.float64, (spec.B,), elements=step_el))
        out = spec.obj.prox_step(T(z), T(g), T(steps))
        expected = spec.obj.project(T(z - steps[:, None] * g))
    else:
        out = spec.obj.prox_step(T(z), T(g), step)
        expected = spec.obj.project(T(z - step * g))
    np.testing.assert_allclose(out.numpy(), expected.numpy(), rtol=0, atol=1e-12)
    assert feasible(spec, out.numpy()).all()


@pytest.mark.parametrize("spec", [s for s in FIXED if s.kind != "reals" and s.geometry == "euclidean"],
                         ids=_spec_id)
def test_euclidean_prox_step_matches_cvxpy(spec):
    """``argmin_u step <g, u> + 1/2 |u - z|^2`` over the set, solved by cvxpy."""
    rng = np.random.default_rng(3)
    z = sample_feasible(spec, rng, 2)[1]
    g = rng.standard_normal((spec.B, spec.n))
    steps = rng.uniform(0.1, 2.0, spec.B)
    out = spec.obj.prox_step(T(z), T(g), T(steps)).numpy()
    for i in range(spec.B):
        u = cp.Variable(spec.n)
        if spec.kind == "box":
            cons = [u[j] >= spec.lo[i, j] for j in range(spec.n) if np.isfinite(spec.lo[i, j])]
            cons += [u[j] <= spec.hi[i, j] for j in range(spec.n) if np.isfinite(spec.hi[i, j])]
        elif spec.kind == "ball":
            cons = [cp.norm(u, spec.p) <= spec.radius[i]]
        else:
            cons = [u >= 0, cp.sum(u) == 1]
        prob = cp.Problem(cp.Minimize(steps[i] * g[i] @ u + 0.5 * cp.sum_squares(u - z[i])), cons)
        solve(prob)
        np.testing.assert_allclose(out[i], u.value, rtol=0, atol=1e-6)


def _softmax_np(w: np.ndarray) -> np.ndarray:
    w = w - w.max(-1, keepdims=True)
    e = np.exp(w)
    return e / e.sum(-1, keepdims=True)


@st.composite
def entropic_inputs(draw):
    B, n = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    z = _softmax_np(draw(hnp.arrays(np.float64, (B, n), elements=finite)))
    g = draw(hnp.arrays(np.float64, (B, n), elements=st.floats(-10, 10, allow_nan=False, allow_subnormal=False)))
    if draw(st.booleans()):
        step = draw(step_el)
        col = np.full((B, 1), step)
    else:
        step = draw(hnp.arrays(np.float64, (B,), elements=step_el))
        col = step[:, None]
    return z, g, step, col


@SETTINGS
@given(entropic_inputs())
def test_entropic_prox_step_is_multiplicative_weights(args):
    z, g, step, col = args
    S = Simplex("entropic")
    out = S.prox_step(T(z), T(g), T(step) if isinstance(step, np.ndarray) else step).numpy()
    assert (out >= 0).all()
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=0, atol=1e-12)
    # u ∝ z * exp(-step * g), computed in the log domain
    expected = _softmax_np(np.log(z) - col * g)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-12)
    # per-instance steps act per instance
    for i in range(z.shape[0]):
        one = S.prox_step(T(z[i:i + 1]), T(g[i:i + 1]), float(col[i, 0])).numpy()
        np.testing.assert_allclose(out[i:i + 1], one, rtol=0, atol=1e-15)


def test_entropic_prox_step_matches_cvxpy():
    """The step minimizes ``step <g, u> + KL(u, z)`` over the simplex (cvxpy, exponential cone)."""
    rng = np.random.default_rng(11)
    B, n = 4, 5
    z = _softmax_np(rng.standard_normal((B, n)))
    g = 2 * rng.standard_normal((B, n))
    steps = np.array([0.1, 0.5, 1.0, 2.0])
    S = Simplex("entropic")
    out = S.prox_step(T(z), T(g), T(steps)).numpy()
    for i in range(B):
        u = cp.Variable(n)
        obj = steps[i] * g[i] @ u + cp.sum(cp.rel_entr(u, z[i]))
        prob = cp.Problem(cp.Minimize(obj), [cp.sum(u) == 1])
        solve(prob)
        np.testing.assert_allclose(out[i], u.value, rtol=0, atol=1e-6)
        ours = steps[i] * g[i] @ out[i] + np.sum(out[i] * np.log(out[i] / z[i]))
        assert ours <= prob.value + 1e-8
    # The set's Bregman divergence is the KL divergence on the simplex.
    w = _softmax_np(rng.standard_normal((B, n)))
    np.testing.assert_allclose(S.bregman(T(w), T(z)).numpy(), (w * np.log(w / z)).sum(-1), rtol=1e-12, atol=1e-14)


def test_entropic_prox_step_per_instance_steps_differ():
    """A (B,) step vector gives each instance its own step (not the first, not a broadcast)."""
    z = np.full((3, 2), 0.5)
    g = np.tile([1.0, 0.0], (3, 1))
    steps = np.array([0.0, 1.0, 3.0])
    out = Simplex("entropic").prox_step(T(z), T(g), T(steps)).numpy()
    expected = np.stack([np.array([1.0, np.exp(s)]) / (1 + np.exp(s)) for s in steps])
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-15)


# ---------------------------------------------------------------------------------------------
# Linear minimization oracles and support functions
# ---------------------------------------------------------------------------------------------

# Directions: entries 0 or of magnitude >= 1e-3 (HiGHS rounds smaller costs to zero, which
# would hide unboundedness from the reference).
g_el = st.one_of(st.just(0.0), st.floats(1e-3, 10), st.floats(-10, -1e-3))


@pytest.mark.parametrize("kind", ["box", "ball", "simplex"])
@SETTINGS
@given(data=st.data(), seed=st.integers(0, 2**32 - 1))
def test_lmo_attains_the_minimum(kind, data, seed):
    spec = data.draw(specs(kinds=(kind,), bounded_only=True))
    g = data.draw(hnp.arrays(np.float64, (spec.B, spec.n), elements=g_el))
    if data.draw(st.booleans()):
        g[0] = 0.0  # a zero direction: every point is a minimizer
    u = spec.obj.lmo(T(g)).numpy()
    assert u.shape == (spec.B, spec.n)
    assert feasible(spec, u).all()
    vals = (g * u).sum(-1)
    for i in range(spec.B):
        ref = lp_min(spec, g[i], i)
        assert abs(vals[i] - ref) <= 1e-9 * (1 + abs(ref))
    W = sample_feasible(spec, np.random.default_rng(seed), 16)
    assert (vals[None] <= (g[None] * W).sum(-1) + 1e-9 * (1 + np.abs(vals))).all()


@SETTINGS
@given(st.sampled_from([1.0, 2.0]), st.data())
def test_two_ball_lmo_closed_form(scalar, data):
    B, n = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 5))
    g = data.draw(hnp.arrays(np.float64, (B, n), elements=g_el))
    g[:, 0] += np.where(np.abs(g).sum(-1) < 1e-3, 1.0, 0.0)  # g != 0 in every instance
    r = data.draw(hnp.arrays(np.float64, (B,), elements=radius_el))
    for S, rr in ((Ball(T(r)), r), (Ball(scalar), np.full(B, scalar))):
        u = S.lmo(T(g)).numpy()
        np.testing.assert_allclose(u, -rr[:, None] * g / np.linalg.norm(g, axis=-1, keepdims=True), rtol=0, atol=1e-12)
        np.testing.assert_allclose(S.support(T(g)).numpy(), rr * np.linalg.norm(g, axis=-1), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", KINDS)
@SETTINGS
@given(data=st.data())
def test_support_is_max_over_the_set(kind, data):
    spec = data.draw(specs(kinds=(kind,)))
    v = data.draw(hnp.arrays(np.float64, (spec.B, spec.n), elements=g_el))
    if data.draw(st.booleans()):
        v[0] = 0.0
    s = spec.obj.support(T(v)).numpy()
    assert s.shape == (spec.B,)
    for i in range(spec.B):
        ref = -lp_min(spec, -v[i], i)
        if math.isinf(ref):
            assert s[i] == INF
        else:
            assert abs(s[i] - ref) <= 1e-9 * (1 + abs(ref))


@pytest.mark.parametrize("spec", FIXED, ids=[_spec_id(s) for s in FIXED])
def test_lmo_and_support_fixed_inputs(spec):
    """Every fixed set, including per-instance parameters and unbounded boxes, against HiGHS / closed forms."""
    rng = np.random.default_rng(17)
    for _ in range(4):
        g = rng.standard_normal((spec.B, spec.n))
        g[rng.uniform(size=g.shape) < 0.2] = 0.0
        s = spec.obj.support(T(g)).numpy()
        for i in range(spec.B):
            ref = -lp_min(spec, -g[i], i)
            assert s[i] == ref if math.isinf(ref) else abs(s[i] - ref) <= 1e-9 * (1 + abs(ref))
        if not spec.bounded:
            with pytest.raises(ValueError):
                spec.obj.lmo(T(g))
            continue
        u = spec.obj.lmo(T(g)).numpy()
        assert feasible(spec, u).all()
        for i in range(spec.B):
            ref = lp_min(spec, g[i], i)
            assert abs(g[i] @ u[i] - ref) <= 1e-9 * (1 + abs(ref))


def test_unbounded_sets_have_no_lmo_and_infinite_support():
    v = T([[1.0, 0.0], [0.0, -2.0], [0.0, 0.0]])
    for S in (Reals(), Box(-INF, INF), Box(-1.0, INF), Box(-INF, 1.0), Box(T([[0.0, -INF]]), 1.0)):
        assert not S.bounded
        with pytest.raises(ValueError, match="unbounded"):
            S.lmo(v)
    for S in (Reals(), Box(-INF, INF)):
        s = S.support(v)
        assert s[0] == INF and s[1] == INF and s[2] == 0
    # half-bounded: +inf exactly where the direction leaves the box
    s = Box(0.0, INF).support(v)
    assert s[0] == INF and s[1] == 0 and s[2] == 0
    s = Box(-INF, 1.0).support(v)
    assert s[0] == 1.0 and s[1] == INF and s[2] == 0


# ---------------------------------------------------------------------------------------------
# Products
# ---------------------------------------------------------------------------------------------


def test_product_is_blockwise():
    rng = np.random.default_rng(5)
    B = 3
    sets = (Box(-0.5, 0.5), Ball(T([0.5, 1.0, 2.0]), p=1), Simplex("entropic"), Reals())
    P = Product(*sets)
    assert len(P) == 4 and P[1] is sets[1] and list(P) == list(sets)
    assert not P.bounded and Product(*sets[:3]).bounded
    dims = (2, 3, 4, 2)
    u = tuple(T(3 * rng.standard_normal((B, n))) for n in dims)
    z = tuple(T(w) for w in (rng.uniform(-0.5, 0.5, (B, 2)), np.zeros((B, 3)), _softmax_np(rng.standard_normal((B, 4))),
                             rng.standard_normal((B, 2))))
    g = tuple(T(rng.standard_normal((B, n))) for n in dims)
    for out, s, ui in zip(P.project(u), sets, u):
        assert torch.equal(out, s.project(ui))
    for out, s, zi, gi in zip(P.prox_step(z, g, 0.3), sets, z, g):
        assert torch.equal(out, s.prox_step(zi, gi, 0.3))
    steps = T([0.1, 0.2, 0.3])
    for out, s, zi, gi in zip(P.prox_step(z, g, steps), sets, z, g):
        assert torch.equal(out, s.prox_step(zi, gi, steps))
    # the bounded part: lmo and support blockwise, support sums
    Pb = Product(*sets[:3])
    for out, s, gi in zip(Pb.lmo(g[:3]), sets, g):
        assert torch.equal(out, s.lmo(gi))
    expected = sum(
        np.array([-lp_min(spec, -gi.numpy()[i], i) for i in range(B)])
        for spec, gi in zip(
            (Spec("box", B, 2, None, lo=np.full((B, 2), -0.5), hi=np.full((B, 2), 0.5)),
             Spec("ball", B, 3, None, radius=np.array([0.5, 1.0, 2.0]), p=1),
             Spec("simplex", B, 4, None)), g[:3]))
    np.testing.assert_allclose(Pb.support(g[:3]).numpy(), expected, rtol=1e-10, atol=1e-10)
    assert (P.support(g).numpy() == INF).all()
    # contains: every block must be feasible
    assert P.contains(z).all()
    bad = (z[0], z[1], z[2] * 2, z[3])
    assert not P.contains(bad).any()
    assert torch.allclose(P.bregman(z, z), torch.zeros(B, dtype=torch.float64))
    # Product of a list is the same product
    assert Product(list(sets)).sets == P.sets


def test_product_check_and_construction_errors():
    P = Product(Box(T([0.0, -1.0]), 1.0), Ball())
    P.check(2, (3, 4))
    with pytest.raises(ValueError, match="blocks"):
        P.check(2, (3,))
    with pytest.raises(ValueError, match="blocks"):
        P.check(2, (3, 4, 5))
    with pytest.raises(ValueError, match=r"domain\[0\]\.lo"):
        P.check(3, (3, 4))
    with pytest.raises(ValueError, match="domain"):
        VIProblem(lambda z: z, P, torch.zeros(2, 3))
    with pytest.raises(TypeError, match="block 1"):
        Product(Reals(), "box")
    with pytest.raises(ValueError, match="at least one"):
        Product()


# ---------------------------------------------------------------------------------------------
# Bad parameters
# ---------------------------------------------------------------------------------------------

BAD = [
    (lambda: Box(1.0, 0.0), ValueError, r"lo"),
    (lambda: Box(T([0.0, 2.0]), T([1.0, 1.0])), ValueError, r"lo"),
    (lambda: Box(T([[0.0, 2.0]]), 1.5), ValueError, r"lo"),
    (lambda: Box(INF, INF), ValueError, r"lo"),
    (lambda: Box(-1.0, -INF), ValueError, r"hi"),
    (lambda: Box(math.nan, 1.0), ValueError, r"lo"),
    (lambda: Box(-1.0, T([1.0, math.nan])), ValueError, r"hi"),
    (lambda: Box("0", 1.0), TypeError, r"lo"),
    (lambda: Box(-1.0, [1.0, 2.0]), TypeError, r"hi"),
    (lambda: Box(True, 1.0), TypeError, r"lo"),
    (lambda: Box(torch.zeros(2, 2, 2), 1.0), ValueError, r"lo"),
    (lambda: Box(torch.tensor([1j]), 2.0), TypeError, r"lo"),
    (lambda: Ball(-1.0), ValueError, r"radius"),
    (lambda: Ball(T([1.0, -0.5])), ValueError, r"radius"),
    (lambda: Ball(INF), ValueError, r"radius"),
    (lambda: Ball(math.nan), ValueError, r"radius"),
    (lambda: Ball("1"), TypeError, r"radius"),
    (lambda: Ball(None), TypeError, r"radius"),
    (lambda: Ball(torch.ones(2, 2)), ValueError, r"radius"),
    (lambda: Ball(1.0, p=3), ValueError, r"\bp\b"),
    (lambda: Ball(1.0, p=0), ValueError, r"\bp\b"),
    (lambda: Ball(1.0, p="2"), ValueError, r"\bp\b"),
    (lambda: Simplex("kl"), ValueError, r"geometry"),
    (lambda: Simplex(None), ValueError, r"geometry"),
]


@pytest.mark.parametrize("make, exc, match", BAD, ids=[f"bad{i}" for i in range(len(BAD))])
def test_bad_parameters(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


WRONG_SHAPE = [
    (Box(torch.zeros(3), 1.0), r"lo"),
    (Box(-1.0, torch.ones(3)), r"hi"),
    (Box(torch.zeros(2, 5), 1.0), r"lo"),
    (Box(-1.0, torch.ones(3, 4)), r"hi"),
    (Ball(torch.ones(3)), r"radius"),
    (Ball(torch.ones(3), p=1), r"radius"),
]


@pytest.mark.parametrize("S, match", WRONG_SHAPE, ids=[f"shape{i}" for i in range(len(WRONG_SHAPE))])
def test_per_instance_parameters_of_the_wrong_shape(S, match):
    B, n = 2, 4
    with pytest.raises(ValueError, match=match):
        S.check(B, n)
    with pytest.raises(ValueError, match=r"domain\[0\]\." + match):
        VIProblem(lambda z: z, S, torch.zeros(B, n))
    with pytest.raises(ValueError, match=r"domain\[1\]\." + match):
        VIProblem(lambda z: z, (Reals(), S), (torch.zeros(B, 1), torch.zeros(B, n)))


def _simplex_projection_np(v: np.ndarray) -> np.ndarray:
    """Euclidean projection of one vector onto the probability simplex (the sort-based closed form)."""
    u = np.sort(v)[::-1]
    css = np.cumsum(u)
    k = np.nonzero(u - (css - 1) / np.arange(1, len(v) + 1) > 0)[0][-1]
    return np.maximum(v - (css[k] - 1) / (k + 1), 0.0)


def test_per_instance_parameters_of_the_right_shape_are_accepted():
    """Every accepted parameter shape broadcasts as meant: each instance is projected onto its own set."""
    B, n = 2, 4
    u = np.array([[1.7, -0.4, 0.3, 2.5], [-3.0, 0.2, 0.9, 0.1]])
    clip = lambda lo, hi: np.clip(u, lo, hi)  # noqa: E731
    radii = np.array([[1.0], [0.5]])
    cases = [(Box(torch.zeros(B), 1.0), clip(0.0, 1.0)),
             (Box(torch.tensor([[0.0] * n, [-1.0] * n], dtype=torch.float64), torch.ones(1, n, dtype=torch.float64)),
              np.clip(u, [[0.0], [-1.0]], 1.0)),
             (Box(torch.tensor(0.0), 1.0), clip(0.0, 1.0)),
             (Ball(torch.tensor([1.0, 0.5], dtype=torch.float64)),
              u * np.minimum(1.0, radii / np.linalg.norm(u, axis=-1, keepdims=True))),
             (Ball(torch.tensor(2.0), p=INF), clip(-2.0, 2.0)),
             (Simplex(), np.stack([_simplex_projection_np(row) for row in u])),
             (Reals(), u)]
    for S, expected in cases:
        S.check(B, n)
        problem = VIProblem(lambda z: z, S, torch.zeros(B, n, dtype=torch.float64))
        np.testing.assert_allclose(problem.domain[0].project(T(u)).numpy(), expected, rtol=0, atol=1e-15,
                                   err_msg=repr(S))


# ---------------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", FIXED, ids=[_spec_id(s) for s in FIXED])
def test_device_matches_cpu(spec, device):
    rng = np.random.default_rng(13)
    u = T(3 * rng.standard_normal((spec.B, spec.n)))
    g = T(rng.standard_normal((spec.B, spec.n)))
    z = T(sample_feasible(spec, rng, 2)[1])
    if spec.kind == "simplex":
        z = T(_softmax_np(rng.standard_normal((spec.B, spec.n))))
    steps = T(rng.uniform(0.1, 1.0, spec.B))
    S = spec.obj
    d = torch.device(device)
    pairs = [(S.project(u), S.project(u.to(d))),
             (S.prox_step(z, g, 0.4), S.prox_step(z.to(d), g.to(d), 0.4)),
             (S.prox_step(z, g, steps), S.prox_step(z.to(d), g.to(d), steps.to(d))),
             (S.support(g), S.support(g.to(d)))]
    if spec.bounded:
        pairs.append((S.lmo(g), S.lmo(g.to(d))))
    for cpu, dev in pairs:
        assert dev.device.type == d.type
        assert dev.dtype == torch.float64
        torch.testing.assert_close(dev.cpu(), cpu, rtol=0, atol=1e-12)
