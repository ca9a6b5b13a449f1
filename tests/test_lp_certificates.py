"""Verified certificates of infeasibility and unboundedness (saddle.lp_certificates).

Answers: closed-form rays of hand-made LPs, rays built into random LPs (HiGHS
confirms their infeasibility), random LPs feasible and bounded by construction,
and HiGHS's status and optimum for scipy's bug_10466 and netlib LPs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import torch

import saddle
from saddle import lp_certificates as lc
from saddle.lp import LinearProgram

INF = math.inf
DT = torch.float64


def _lp(c, A_eq=None, b_eq=None, A_ub=None, b_ub=None, lo=0.0, hi=INF) -> LinearProgram:
    """A one-instance `LinearProgram` from scipy-style dense data (``K = [A_eq; A_ub]``)."""
    c = torch.as_tensor(c, dtype=DT).reshape(1, -1)
    n = c.shape[1]
    blocks = [(torch.as_tensor(A, dtype=DT).reshape(-1, n), torch.as_tensor(b, dtype=DT).reshape(-1))
              for A, b in ((A_eq, b_eq), (A_ub, b_ub)) if A is not None]
    K = torch.cat([A for A, _ in blocks]).unsqueeze(0)
    d = torch.cat([b for _, b in blocks]).unsqueeze(0)
    n_eq = 0 if A_eq is None else blocks[0][0].shape[0]
    lo = torch.as_tensor(lo, dtype=DT).expand(1, n).clone()
    hi = torch.as_tensor(hi, dtype=DT).expand(1, n).clone()
    return LinearProgram(c, K, d, n_eq, lo, hi)


def _ray(values) -> torch.Tensor:
    return torch.as_tensor(values, dtype=DT).reshape(1, -1)


# -- closed-form certificates -------------------------------------------------------------------

def test_farkas_ray_of_an_inequality_infeasible_lp_is_accepted_and_its_opposite_refused():
    # x1 + x2 <= -1, x >= 0: r = 1 gives K^T r = (1, 1) >= 0 (absorbed by x >= 0) and -<b, r> = 1 > 0.
    lp = _lp([1.0, 1.0], A_ub=[[1.0, 1.0]], b_ub=[-1.0])
    assert lc.verify_dual_ray(lp, _ray([1.0]), 1e-8).item()
    assert not lc.verify_dual_ray(lp, _ray([-1.0]), 1e-8).item()  # projected onto r >= 0: zero
    assert not lc.verify_dual_ray(_lp([1.0, 1.0], A_ub=[[1.0, 1.0]], b_ub=[1.0]), _ray([1.0]), 1e-8).item()


def test_farkas_ray_of_contradicting_equalities_on_free_variables():
    # x1 + x2 = 1, x1 + x2 = 2, x free: r = (1, -1) has K^T r = 0 and -<b, r> = 1.
    lp = _lp([0.0, 0.0], A_eq=[[1.0, 1.0], [1.0, 1.0]], b_eq=[1.0, 2.0], lo=-INF)
    assert lc.verify_dual_ray(lp, _ray([1.0, -1.0]), 1e-8).item()
    assert not lc.verify_dual_ray(lp, _ray([-1.0, 1.0]), 1e-8).item()
    # A ray whose K^T r a free variable cannot absorb is refused, whatever its objective.
    assert not lc.verify_dual_ray(lp, _ray([1.0, -0.9]), 1e-8).item()


def test_primal_ray_of_an_unbounded_lp_is_accepted_and_infeasible_directions_refused():
    # min -x1 s.t. x1 - x2 <= 1, x >= 0: s = (1, 1) keeps K s = 0 and <c, s> = -1.
    lp = _lp([-1.0, 0.0], A_ub=[[1.0, -1.0]], b_ub=[1.0])
    assert lc.verify_primal_ray(lp, _ray([1.0, 1.0]), 1e-8).item()
    assert not lc.verify_primal_ray(lp, _ray([1.0, 0.0]), 1e-8).item()  # K s = 1 > 0 leaves the feasible set
    assert not lc.verify_primal_ray(lp, _ray([0.0, 1.0]), 1e-8).item()  # <c, s> = 0: no descent


def test_lp_with_bounds_only_is_certified_unbounded_and_bounded_one_is_not():
    # scipy's empty_constraint_2 / _3: no rows (one trivial row 0 <= 0, as linprog builds it).
    bounds_lo, bounds_hi = [0.0, -INF, -1.0, -1.0], [INF, 0.0, 1.0, 1.0]
    unbounded = _lp([-1.0, 1.0, -1.0, 1.0], A_ub=[[0.0] * 4], b_ub=[0.0], lo=bounds_lo, hi=bounds_hi)
    bounded = _lp([1.0, -1.0, 1.0, -1.0], A_ub=[[0.0] * 4], b_ub=[0.0], lo=bounds_lo, hi=bounds_hi)
    s = _ray([1.0, -1.0, 0.0, 0.0])
    assert lc.verify_primal_ray(unbounded, s, 1e-8).item()
    assert not lc.verify_primal_ray(bounded, s, 1e-8).item()
    assert not lc.verify_primal_ray(bounded, -s, 1e-8).item()


def test_sparse_and_per_instance_matrices_give_the_same_answers():
    # Two copies of the contradicting equalities: a shared sparse K, and a dense K per instance.
    K = torch.tensor([[1.0, 1.0], [1.0, 1.0]], dtype=DT)
    d = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=DT)
    lo, hi = torch.full((1, 2), -INF, dtype=DT), torch.full((1, 2), INF, dtype=DT)
    rays = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=DT)
    for coupling in (K.to_sparse(), K.expand(2, 2, 2).clone()):
        lp = LinearProgram(torch.zeros(2, 2, dtype=DT), coupling, d, 2, lo, hi)
        assert lc.verify_dual_ray(lp, rays, 1e-8).tolist() == [True, False]


def test_empty_infeasible_row_is_a_certificate():
    # the row 0 <= -1 (all zeros): r = e_1 with K^T r = 0.
    lp = _lp([1.0, 2.0], A_ub=[[1.0, 0.0], [0.0, 0.0]], b_ub=[5.0, -1.0])
    assert lc.verify_dual_ray(lp, _ray([0.0, 1.0]), 1e-8).item()


# -- bug_10466: a false certificate of the former check ----------------------------------------------

_BUG_10466 = dict(
    c=[-8.0, 0, -8.0, 0, -8.0, 0, 0, 0, 0, 0, 0, 0, 0],
    A_eq=[[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
          [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, -1, 0, 0, 0, 0, 0, 0],
          [1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
          [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
          [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]],
    b_eq=[3.14572800e08, 4.19430400e08, 5.24288000e08, 1.00663296e09, 1.07374182e09, 1.07374182e09,
          1.07374182e09, 1.07374182e09, 1.07374182e09, 1.07374182e09],
)
# The difference of pdhg's dual iterates at its last two restart checks (iteration 256 at tol 1e-8)
# that the former check reported as a Farkas certificate.
_BUG_10466_RAY = [-2.1221918612424062e-06, -1.8764562940143392e-06, -1.8764562954576292e-06,
                  -4.054388938357079e-06, 4.098035643274045e-06, -2.12219186046525e-06, -2.12219186046525e-06,
                  4.098035643274045e-06, -2.6860756681124087e-06, -2.6860756681124087e-06]


def test_bug_10466_ray_that_passed_the_objective_relative_check_is_refused():
    res = scipy.optimize.linprog(method="highs", **_BUG_10466)
    assert res.status == 0  # feasible and bounded: no certificate can be right
    lp = _lp(_BUG_10466["c"], A_eq=_BUG_10466["A_eq"], b_eq=_BUG_10466["b_eq"])
    r = _ray(_BUG_10466_RAY)
    r = r / r.norm()
    # The former (PDLP-style) test: unabsorbed |min(K^T r, 0)| <= 1e-8 * objective, objective > 0.
    unabsorbed = lp.coupling.rmv(r).clamp_max(0).norm()
    measures = lc.dual_ray_measures(lp, r)
    assert measures["objective"].item() > 0 and unabsorbed <= 1e-8 * measures["objective"].item()
    assert unabsorbed > 0.1  # yet a fifth of K^T r is not absorbed: not a ray
    assert not lc.verify_dual_ray(lp, r, 1e-8).item()
    assert not lc.verify_dual_ray(lp, r, 1e-4).item()


@pytest.mark.parametrize("method", ["pdhg", "r2hpdhg"])
def test_linprog_solves_bug_10466_instead_of_reporting_it_infeasible(method):
    highs = scipy.optimize.linprog(method="highs", **_BUG_10466)
    res = saddle.linprog(**_BUG_10466, method=method, tol=1e-8, max_iters=5000)
    assert res.status == 0
    assert res.fun.item() == pytest.approx(highs.fun, rel=1e-7)
    assert (res.dual_ray == 0).all()


# -- random LPs -----------------------------------------------------------------------------------

def _random_infeasible(seed: int, m: int = 6, n: int = 8):
    """A random LP with a Farkas ray r built in: free rows mixed with inequalities, bounds chosen to absorb
    ``K^T r`` (a free column 0 with ``(K^T r)_0 = 0``), b chosen to make the ray objective 1.
    Returns ``(c, K, d, n_eq, lo, hi, r)``."""
    gen = torch.Generator().manual_seed(seed)
    n_eq = m // 2
    K = torch.randn(m, n, generator=gen, dtype=DT)
    K[:, -1] = 0.0  # an empty column
    r = torch.randn(m, generator=gen, dtype=DT)
    r[n_eq:] = r[n_eq:].abs()
    K[:, 0] -= r * (r @ K[:, 0]) / (r @ r)
    g = K.T @ r
    g[0] = 0.0
    lo = torch.where(g >= 0, -torch.rand(n, generator=gen, dtype=DT), torch.full((n,), -INF, dtype=DT))
    hi = torch.where(g <= 0, torch.rand(n, generator=gen, dtype=DT), torch.full((n,), INF, dtype=DT))
    lo[0], hi[0] = -INF, INF
    d = torch.randn(m, generator=gen, dtype=DT)
    support = torch.where(g > 0, g * lo, g * hi).nan_to_num(0.0).sum()  # min over the box of <g, x>
    d = d + r * ((support - r @ d - 1.0) / (r @ r))  # now -<d, r> + support = 1
    c = torch.randn(n, generator=gen, dtype=DT)
    return c, K, d, n_eq, lo, hi, r


def _scaled_lp(c, K, d, n_eq, lo, hi, rows, cols, cost):
    """The LP with ``x = diag(cols) x'``, rows scaled by ``rows`` and the cost by ``cost``."""
    Ks = rows[:, None] * K * cols[None, :]
    return LinearProgram((cost * c * cols)[None], Ks[None], (rows * d)[None], n_eq, (lo / cols)[None],
                         (hi / cols)[None])


@pytest.mark.parametrize("seed", range(4))
def test_built_in_farkas_rays_verify_and_are_invariant_to_scaling(seed):
    c, K, d, n_eq, lo, hi, r = _random_infeasible(seed)
    res = scipy.optimize.linprog(c.numpy(), A_eq=K[:n_eq].numpy(), b_eq=d[:n_eq].numpy(), A_ub=K[n_eq:].numpy(),
                                 b_ub=d[n_eq:].numpy(), bounds=np.stack([lo.numpy(), hi.numpy()], -1),
                                 method="highs")
    assert res.status == 2
    gen = torch.Generator().manual_seed(100 + seed)
    ones = torch.ones(K.shape[0], dtype=DT), torch.ones(K.shape[1], dtype=DT)
    scalings = [(*ones, 1.0), (10.0 ** torch.empty(K.shape[0], dtype=DT).uniform_(-6, 6, generator=gen),
                               10.0 ** torch.empty(K.shape[1], dtype=DT).uniform_(-6, 6, generator=gen), 1e7)]
    measures = []
    for rows, cols, cost in scalings:
        lp = _scaled_lp(c, K, d, n_eq, lo, hi, rows, cols, cost)
        ray = (r / rows)[None]
        assert lc.verify_dual_ray(lp, ray, 1e-8).item()
        noisy = ray * (1 + 1e-3 * torch.randn(ray.shape, generator=gen, dtype=DT))
        assert not lc.verify_dual_ray(lp, noisy, 1e-8).item()  # (K^T r)_0 is no longer 0 for the free x_0
        measures.append(lc.dual_ray_measures(lp, ray))
    torch.testing.assert_close(measures[0]["rel_objective"], measures[1]["rel_objective"], rtol=1e-9, atol=0)
    torch.testing.assert_close(measures[0]["rel_ray"], measures[1]["rel_ray"], rtol=0, atol=1e-12)


@pytest.mark.parametrize("scale", [1e-8, 1.0, 1e8])
def test_unbounded_ray_is_invariant_to_scaling(scale):
    # min -x1 - x3 s.t. x1 - x2 <= 1, x2 + x3 - x4 = 0, x >= 0: s = (1, 1, 0, 1) or (0, 0, 1, 1).
    gen = torch.Generator().manual_seed(7)
    K = torch.tensor([[0.0, 1.0, 1.0, -1.0], [1.0, -1.0, 0.0, 0.0]], dtype=DT)
    c, d = torch.tensor([-1.0, 0.0, -1.0, 0.0], dtype=DT), torch.tensor([0.0, 1.0], dtype=DT)
    lo, hi = torch.zeros(4, dtype=DT), torch.full((4,), INF, dtype=DT)
    rows = scale * 10.0 ** torch.empty(2, dtype=DT).uniform_(-4, 4, generator=gen)
    cols = scale * 10.0 ** torch.empty(4, dtype=DT).uniform_(-4, 4, generator=gen)
    lp = _scaled_lp(c, K, d, 1, lo, hi, rows, cols, 1 / scale)
    for s in ([1.0, 1.0, 0.0, 1.0], [0.0, 0.0, 1.0, 1.0]):
        assert lc.verify_primal_ray(lp, (torch.tensor(s, dtype=DT) / cols)[None], 1e-8).item()
    assert not lc.verify_primal_ray(lp, (torch.tensor([1.0, 0.5, 0.0, 1.0], dtype=DT) / cols)[None], 1e-8).item()


def _random_feasible_bounded(B: int, m: int = 8, n: int = 12, scale: float = 1.0) -> LinearProgram:
    """B random LPs, each with a feasible x* and a dual-feasible y* (so a finite optimum); rows scaled by
    10^U(-3, 3), x* and b by ``scale``."""
    gen = torch.Generator().manual_seed(round(math.log10(scale)) + 50)
    n_eq = m // 3
    K = torch.randn(B, m, n, generator=gen, dtype=DT) * 10.0 ** torch.empty(B, m, 1, dtype=DT).uniform_(
        -3, 3, generator=gen)
    x = torch.rand(B, n, generator=gen, dtype=DT) * scale
    slack = torch.cat([torch.zeros(B, n_eq, dtype=DT), torch.rand(B, m - n_eq, generator=gen, dtype=DT) * scale], -1)
    d = (K @ x.unsqueeze(-1)).squeeze(-1) + slack
    y = torch.cat([torch.randn(B, n_eq, generator=gen, dtype=DT), torch.rand(B, m - n_eq, generator=gen, dtype=DT)], -1)
    c = torch.rand(B, n, generator=gen, dtype=DT) - (K.mT @ y.unsqueeze(-1)).squeeze(-1)  # reduced costs >= 0
    lo = torch.zeros(B, n, dtype=DT)
    hi = torch.where(torch.rand(B, n, generator=gen, dtype=DT) < 0.3, 2.0 * scale, INF)
    return LinearProgram(c, K, d, n_eq, lo, hi)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e9])
def test_no_certificate_on_feasible_bounded_lps(scale):
    # Random directions and the iterates of a pdhg run are tried; none may certify anything.
    lp = _random_feasible_bounded(4, scale=scale)
    gen = torch.Generator().manual_seed(1)
    for _ in range(16):
        assert not lc.verify_dual_ray(lp, torch.randn(lp.d.shape, generator=gen, dtype=DT), 1e-8).any()
        assert not lc.verify_primal_ray(lp, torch.randn(lp.c.shape, generator=gen, dtype=DT), 1e-8).any()
    certified = []

    def feed(progress, box={"tracker": lc.ray_tracker(*lp.z0)}):  # noqa: B006 - the state of one solve
        box["tracker"] = lc.track(box["tracker"], *progress.z, progress.iteration)
        cert = lc.certify(lp, box["tracker"], 1e-8)
        certified.append(bool(cert["infeasible"].any() | cert["unbounded"].any()))

    saddle.solve(lp, "pdhg", measure="kkt", tol=1e-9, max_iters=640, check_every=64, callback=feed,
                 divergence_factor=math.inf, history=False)
    assert certified and not any(certified)


# -- candidates ------------------------------------------------------------------------------------

def test_certify_reports_the_verified_candidate_per_instance():
    # Instance 0 infeasible (x1 + x2 <= -1), instance 1 feasible (x1 + x2 <= 1); x >= 0, c = (1, 1).
    lp = LinearProgram(torch.ones(2, 2, dtype=DT), torch.ones(1, 1, 2, dtype=DT),
                       torch.tensor([[-1.0], [1.0]], dtype=DT), 0, torch.zeros(1, 2, dtype=DT),
                       torch.full((1, 2), INF, dtype=DT))
    x0, y0 = lp.z0
    tracker = lc.ray_tracker(x0, y0)
    assert tracker.iterations.tolist() == [0, 0]
    none = lc.certify(lp, tracker, 1e-8)  # no drift yet
    assert not none["infeasible"].any() and not none["unbounded"].any()
    # The duals drift by 3 per check in both instances (a restart to the same primal point).
    tracker = lc.track(tracker, x0, y0 + 3.0, 64)
    tracker = lc.track(tracker, x0, y0 + 6.0, torch.tensor([128, 128]))
    assert tracker.iterations.tolist() == [128, 128]
    torch.testing.assert_close(tracker.diff_y, torch.full((2, 1), 3.0, dtype=DT))
    cert = lc.certify(lp, tracker, 1e-8)
    assert cert["infeasible"].tolist() == [True, False] and not cert["unbounded"].any()
    torch.testing.assert_close(cert["dual_ray"], torch.tensor([[1.0], [0.0]], dtype=DT))
    assert (cert["primal_ray"] == 0).all()


def test_displacement_candidate_is_tried_when_the_iterates_do_not_drift():
    lp = _lp([1.0, 1.0], A_ub=[[1.0, 1.0]], b_ub=[-1.0])
    x0, y0 = lp.z0
    # The scheme reports z - T(z); its iterates move by T(z) - z, which is the ray.
    away = (torch.zeros_like(x0), 0.5 * torch.ones_like(y0))
    tracker = lc.track(lc.ray_tracker(x0, y0), x0, y0, 200, displacement=away)
    assert not lc.certify(lp, tracker, 1e-8)["infeasible"].item()
    tracker = lc.track(tracker, x0, y0, 400, displacement=(away[0], -away[1]))
    cert = lc.certify(lp, tracker, 1e-8)
    assert cert["infeasible"].item()
    torch.testing.assert_close(cert["dual_ray"], torch.ones(1, 1, dtype=DT))


# -- through saddle.linprog --------------------------------------------------------------------------

NETLIB_INFEASIBLE = Path(__file__).resolve().parents[1].parent / "shared" / "netlib" / "infeasible"


@pytest.mark.skipif(not (NETLIB_INFEASIBLE / "itest2.npz").exists(),
                    reason="the netlib files are not in ../shared/netlib")
@pytest.mark.parametrize("method", ["pdhg", "r2hpdhg"])
@pytest.mark.parametrize("name", ["itest2", "galenet"])
def test_linprog_certifies_small_infeasible_netlib_lps_with_rays_that_verify(name, method):
    data = np.load(NETLIB_INFEASIBLE / f"{name}.npz")
    args = {key: data[key] for key in ("c", "A_ub", "b_ub", "A_eq", "b_eq", "bounds")}
    assert scipy.optimize.linprog(method="highs", **args).status == 2
    res = saddle.linprog(**args, method=method, max_iters=20_000)
    assert res.status == 2
    r = res.dual_ray.reshape(1, -1)
    assert r.norm().item() == pytest.approx(1.0)
    # The ray (y_eq, y_ub) is a Farkas certificate of the data as given.
    present = {"eq": data["A_eq"].shape[0] > 0, "ub": data["A_ub"].shape[0] > 0}
    rows = {key: data[key] if present[key[2:]] else None for key in ("A_eq", "b_eq", "A_ub", "b_ub")}
    check = _lp(data["c"], **rows, lo=torch.as_tensor(data["bounds"][:, 0]), hi=torch.as_tensor(data["bounds"][:, 1]))
    assert lc.verify_dual_ray(check, r, 1e-8).item()
