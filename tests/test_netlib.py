"""saddle.linprog on real LPs: the 10 smallest feasible netlib LPs and 4 infeasible ones (tests/data/netlib).

The files hold scipy.optimize.linprog's arguments and ``obj``, the optimum
(HiGHS's, NaN where the LP is infeasible); they are passed as scipy's
benchmark passes them (dense arrays, zero-row matrices where a kind of
constraint is absent). The answers are checked here in numpy, independently
of saddle's own KKT measures and certificate checks: the objective against
``obj``, the constraint violation at x against what the tolerance promises,
the Farkas conditions of the dual ray of an infeasible LP.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import saddle

DATA = Path(__file__).resolve().parent / "data" / "netlib"
METHODS = [m for m in ("pdhg", "r2hpdhg") if m in saddle.solver_names()]
TOL = 1e-6
MAX_ITERS = 100_000  # a guard: a regression fails instead of running to linprog's time limit

# Fast at TOL with both methods (< 1.5 s each on one core); the others take 4-25 s each.
FAST = ["AFIRO", "SC50A", "SC50B", "SC105", "BLEND"]
SLOW = ["ADLITTLE", "KB2", "SCAGR7", "SC205", "STOCFOR1"]
INFEASIBLE = ["bgdbg1", "galenet", "itest2", "itest6"]


def load(name: str) -> dict[str, np.ndarray]:
    path = DATA / f"{name}.npz"
    with np.load(path if path.exists() else DATA / "infeasible" / f"{name}.npz") as d:
        return {k: d[k] for k in d.files}


def linprog(lp: dict, method: str):
    return saddle.linprog(lp["c"], lp["A_ub"], lp["b_ub"], lp["A_eq"], lp["b_eq"], bounds=lp["bounds"],
                          method=method, tol=TOL, max_iters=MAX_ITERS)


def test_data_is_what_the_readme_says():
    feasible = sorted(p.stem for p in DATA.glob("*.npz"))
    infeasible = sorted(p.stem for p in (DATA / "infeasible").glob("*.npz"))
    assert feasible == sorted(FAST + SLOW) and infeasible == sorted(INFEASIBLE)
    for name in feasible:
        assert np.isfinite(load(name)["obj"])
    for name in infeasible:
        assert np.isnan(load(name)["obj"])


def check_optimum(lp: dict, res) -> None:
    """Status 0 at the known optimum; x within the bounds (to rounding) and its rows violated no more than
    ``tol`` allows.

    ``tol`` bounds the L2 primal residual relative to ``1 + |(b_eq, b_ub)|`` (PDLP's criterion), hence
    every row's violation; the objective error is held to ``10 tol`` relative (the relative gap and
    residuals at ``tol`` leave a few ``tol`` of room, as PDLP's own answers at ``tol`` show).
    """
    assert int(res.status) == 0, res.message
    x = res.x.numpy()
    obj = float(lp["obj"])
    assert abs(float(lp["c"] @ x) - obj) <= 10 * TOL * (1 + abs(obj))
    assert abs(float(res.fun) - obj) <= 10 * TOL * (1 + abs(obj))
    lo, hi = lp["bounds"][:, 0], lp["bounds"][:, 1]
    assert np.all(lo <= x) and np.all(x <= hi)
    violation = np.r_[lp["A_eq"] @ x - lp["b_eq"], np.maximum(lp["A_ub"] @ x - lp["b_ub"], 0)]
    rhs = np.r_[lp["b_eq"], lp["b_ub"]]
    assert np.linalg.norm(violation) <= TOL * (1 + np.linalg.norm(rhs))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", FAST)
def test_reaches_the_known_optimum(name, method):
    lp = load(name)
    check_optimum(lp, linprog(lp, method))


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", SLOW)
def test_reaches_the_known_optimum_slow(name, method):
    lp = load(name)
    check_optimum(lp, linprog(lp, method))


def farkas_margins(lp: dict, y: np.ndarray) -> tuple[float, float, float]:
    """For a ray ``y = (y_eq, y_ub)``: the most negative ``y_ub``, the part of ``A^T y`` the bounds cannot
    absorb relative to ``| |A|^T |y| |``, and the ray objective ``min_{lo <= x <= hi} (A^T y)^T x - b^T y``
    (over the absorbable part) relative to the sum of the magnitudes of its terms.

    A Farkas certificate of infeasibility has the first >= 0, the second 0 and the third > 0: every
    feasible x has ``(A^T y)^T x = y_eq^T b_eq + y_ub^T (A_ub x) <= b^T y``, which no x in the box meets.
    """
    n_eq = lp["A_eq"].shape[0]
    A, b = np.vstack([lp["A_eq"], lp["A_ub"]]), np.r_[lp["b_eq"], lp["b_ub"]]
    lo, hi = lp["bounds"][:, 0], lp["bounds"][:, 1]
    r = A.T @ y
    unabsorbed = np.where(np.isinf(lo) & (r > 0), r, 0) + np.where(np.isinf(hi) & (r < 0), r, 0)
    absorbed = r - unabsorbed
    terms = np.r_[np.where(absorbed > 0, absorbed * np.where(np.isinf(lo), 0, lo),
                           absorbed * np.where(np.isinf(hi), 0, hi)), -b * y]
    y_ub_min = float(y[n_eq:].min()) if y.size > n_eq else 0.0
    return (y_ub_min, np.linalg.norm(unabsorbed) / np.linalg.norm(np.abs(A).T @ np.abs(y)),
            terms.sum() / np.abs(terms).sum())


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", INFEASIBLE)
def test_certifies_infeasibility(name, method):
    lp = load(name)
    res = linprog(lp, method)
    assert int(res.status) == 2, res.message
    assert np.isnan(float(res.fun))
    y = res.dual_ray.numpy()
    assert np.linalg.norm(y) == pytest.approx(1.0)
    y_ub_min, unabsorbed, objective = farkas_margins(lp, y)
    assert y_ub_min >= 0
    assert unabsorbed <= 1e-6
    assert objective >= 1e-2  # clearly positive, not rounding noise (measured: 0.38 to 0.92)


def test_farkas_margins_reject_a_feasible_problems_ray():
    """The check above can fail: a ray of a feasible LP (AFIRO's optimal duals, normalized) is no certificate."""
    lp = load("AFIRO")
    res = linprog(lp, METHODS[0])
    y = -np.r_[res.eqlin.numpy(), res.ineqlin.numpy()]
    y_ub_min, unabsorbed, objective = farkas_margins(lp, y / np.linalg.norm(y))
    assert not (y_ub_min >= 0 and unabsorbed <= 1e-6 and objective >= 1e-2)
