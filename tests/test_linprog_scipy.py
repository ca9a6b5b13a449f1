"""scipy's own `linprog` unit-test problems fed to `saddle.linprog` and to HiGHS: the same inputs, the same meaning
(issue 16). Every status must be HiGHS's, every optimum HiGHS's to the tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

import saddle
from saddle.lp import _standard_form

scipy_tests = pytest.importorskip("scipy.optimize.tests.test_linprog")  # some installs strip scipy's tests

NETLIB = Path(__file__).resolve().parents[1].parent / "shared" / "netlib"


def check(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=None, tol=1e-8, rtol=1e-6, **kwargs):
    """Solve with both; assert the same status (and objective, relative to max(1, |f|)); return saddle's result."""
    ref = scipy.optimize.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, method="highs")
    res = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, tol=tol, **kwargs)
    assert int(res.status) == ref.status, (res.message, ref.message)
    if ref.status == 0:
        assert abs(float(res.fun) - ref.fun) <= rtol * max(1.0, abs(ref.fun)), (float(res.fun), ref.fun)
    return res


# -- the problem generators of scipy's test module


@pytest.mark.parametrize("method", saddle.lp.METHODS)
def test_nontrivial_problem(method):
    c, A_ub, b_ub, A_eq, b_eq, x_star, f_star = scipy_tests.nontrivial_problem()
    res = check(c, A_ub, b_ub, A_eq, b_eq, method=method)
    assert np.allclose(res.x.numpy(), x_star, atol=1e-6) and abs(float(res.fun) - f_star) <= 1e-6


def test_very_random_gen():
    check(*scipy_tests.very_random_gen())


def test_lpgen_2d():
    A_ub, b_ub, c = scipy_tests.lpgen_2d(6, 6)
    check(c, A_ub, b_ub, tol=1e-6, rtol=1e-5)


def test_magic_square_sparse():
    A, b, c, _, _ = scipy_tests.magic_square(3)
    check(c, A_eq=scipy.sparse.csr_array(A), b_eq=b, bounds=(0, 1), tol=1e-4, rtol=1e-3)


# -- the data of scipy's test methods that matter for issue 16


def test_bug_10466_huge_costs_is_not_infeasible():
    # 10 x 13 with right-hand sides near 1e9: saddle used to report it infeasible at 1e-8.
    c = [-8.0, -0.0, -8.0, -0.0, -8.0] + [-0.0] * 8
    A_eq = [[1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            [0, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0], [1, 0, 1, 0, 1, 0, -1, 0, 0, 0, 0, 0, 0],
            [1, 0, 1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0],
            [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0], [0, 0, 1, 0, 1, 0, 0, 0, 0, 0, 0, 0, 1]]
    b_eq = [3.14572800e08, 4.19430400e08, 5.24288000e08, 1.00663296e09, 1.07374182e09, 1.07374182e09,
            1.07374182e09, 1.07374182e09, 1.07374182e09, 1.07374182e09]
    res = saddle.linprog(c, A_eq=A_eq, b_eq=b_eq, tol=1e-8, time_limit=20)
    assert int(res.status) != 2, res.message  # never a false certificate
    assert int(res.status) in (0, 1)
    if int(res.status) == 0:
        assert abs(float(res.fun) - -8589934560) <= 1e-6 * 8589934560


@pytest.mark.parametrize("c,bounds,status", [
    ([-1, -2], None, 3),                                                        # empty_constraint_1
    ([-1, 1, -1, 1], [(0, np.inf), (-np.inf, 0), (-1, 1), (-1, 1)], 3),         # empty_constraint_2
    ([1, -1, 1, -1], [(0, np.inf), (-np.inf, 0), (-1, 1), (-1, 1)], 0),         # empty_constraint_3: -2
    ([1], [(None, 1)], 3),                                                      # unbounded_below_no_presolve
    ([1], (1, -2), 2), ([1, 2, 3], [(5, 0), (1, 2), (3, 4)], 2),                # bounds_infeasible
    ([1, 2, 3], [(1, 2), (np.inf, np.inf), (3, 4)], 2),                         # bounds_infeasible_2
    ([1, 2, 3], [(1, 2), (-np.inf, -np.inf), (3, 4)], 2),
    ([1], (1, 1), 0), ([1, 2, 3], [(5, 5), (-1, -1), (3, 3)], 0),               # bounds_fixed
])
def test_lps_without_constraints(c, bounds, status):
    res = check(c, bounds=bounds)
    assert int(res.status) == status and int(res.nit) == 0


def scipy_clean(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=None):
    """scipy's own reading of the inputs (`_clean_inputs`), the reference for saddle's."""
    from scipy.optimize._linprog_util import _clean_inputs, _LPProblem

    return _clean_inputs(_LPProblem(c, A_ub, b_ub, A_eq, b_eq, bounds, None, None))


def saddle_clean(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=None):
    lp = _standard_form(c, A_ub, b_ub, A_eq, b_eq, bounds, torch.device("cpu"))
    K = lp.K.to_dense() if lp.K.layout != torch.strided else lp.K[0]  # a sparse K has no batch axis
    return lp, K.numpy()


def test_scalar_b_ub_for_one_row():
    # scipy's infeasible_inequality_bounds (b_ub = 4) and aliasing tests: a scalar is the one row's b
    check([1], [[2]], 4, bounds=(5, 6))
    check([1], [[1]], np.float64(3), bounds=(-4, np.inf))


@pytest.mark.parametrize("b_ub,A_ub", [(4, [[2]]), (4.0, [[2]]), (np.array(4.0), [[2]]), ([[4]], [[2]]),
                                       (np.array([[4.0], [3.0]]), [[1], [1]]), ([[4.0, 3.0]], [[1], [1]])])
def test_right_hand_sides_are_read_as_scipy_reads_them(b_ub, A_ub):
    lp, _ = saddle_clean([1], A_ub, b_ub)
    assert np.array_equal(lp.d[0].numpy(), scipy_clean([1], A_ub, b_ub).b_ub)


@pytest.mark.parametrize("name,args", [
    ("inequality_constraints", ([-3, -2], [[2, 1], [1, 1], [1, 0]], [10, 8, 4])),
    ("bounds_mixed", ([1, -4], [[-3, 1], [1, 2]], [6, 4], None, None, ((-np.inf, np.inf), (-3, np.inf)))),
    ("bounds_equal_but_infeasible", ([-4, 1], [[7, -2], [0, 1], [2, -2]], [14, 0, 3], None, None,
                                     [(2, 2), (0, None)])),
    ("infeasible", ([-1, -1], [[1, 0], [0, 1], [-1, -1]], [2, 2, -5])),
    ("unbounded", ([-1, -1], [[-1, 1], [-1, -1]], [-1, -2])),
    ("singleton_row_ub_2", ([1, 1, 1, 2], [[1, 0, 0, 0], [0, 2, 0, 0], [-1, 0, 0, 0], [1, 1, 1, 1]],
                            [1, 2, -0.5, 4], None, None, [(None, None), (0, None), (0, None), (0, None)])),
    ("zero_row_3", ([0.3, 0.1, 0.7, 0.2], None, None, [[0, 0, 0, 0], [0.5, 0.1, 0.2, 0.9]], [0.4, 0.6])),
    ("unbounded_no_nontrivial_constraints_1", (
        [0, 0, 0, 1, -1, -1], [[1, 0, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, -1]], [2, -2, 0], None, None,
        [(None, None), (None, None), (None, None), (-1, 1), (-1, 1), (0, None)])),
    ("non_ndarray_args", ([1.0], [[1.0]], [3.0], [[1.0]], [2.0], (-1.0, 10.0))),
    ("bounded_above_only", ([1.0], None, None, [[1.0]], [3.0], (None, 10.0))),
])
def test_scipy_test_methods(name, args):
    check(*args)


# -- input forms


BOUNDS_FORMS = [
    None, [], np.array([]), [[]], (0, None), [(0, None)], [[0], [None]], np.array([0, np.inf]), (-1, 2.5),
    [(0, 3), (0, None)], np.array([(0, 3), (0, None)], dtype=object), np.array([[0, 3], [np.nan, np.nan]]),
    ((0, 3), (None, None)), [[None, 1], [2, None]], np.array([[-np.inf, 1], [2, np.inf]]),
]


@pytest.mark.parametrize("bounds", BOUNDS_FORMS)
def test_every_bounds_form_means_what_it_means_in_scipy(bounds):
    lp, _ = saddle_clean([-1, -2], bounds=bounds)
    expected = scipy_clean([-1, -2], bounds=bounds).bounds
    assert np.array_equal(torch.stack([lp.lo[0], lp.hi[0]], -1).numpy(), expected)


def test_bounds_forms_solve_as_in_scipy():
    for bounds in ([[0], [None]], np.array([(0, 3), (None, None)], dtype=object)):
        check([-1, -2], [[1, 1]], [4], bounds=bounds)


SPARSE_FORMATS = ["csr_matrix", "csc_matrix", "coo_matrix", "lil_matrix", "dok_matrix", "dia_matrix",
                  "csr_array", "csc_array", "coo_array", "lil_array", "dok_array", "bsr_array"]


@pytest.mark.parametrize("fmt", SPARSE_FORMATS)
def test_every_sparse_format_is_the_same_matrix(fmt):
    c, A_ub, b_ub, A_eq, b_eq, _, _ = scipy_tests.nontrivial_problem()
    make = getattr(scipy.sparse, fmt)
    lp, K = saddle_clean(c, make(np.array(A_ub, dtype=float)), b_ub, make(np.array(A_eq, dtype=float)), b_eq)
    assert lp.K.layout == torch.sparse_coo and lp.n_eq == 1
    assert np.array_equal(K, np.vstack([A_eq, A_ub]))


def test_a_sparse_lp_solves_as_in_scipy():
    c, A_ub, b_ub, A_eq, b_eq, _, _ = scipy_tests.nontrivial_problem()
    check(c, scipy.sparse.lil_array(np.array(A_ub, dtype=float)), b_ub, scipy.sparse.dok_array(
        np.array(A_eq, dtype=float)), b_eq)


@pytest.mark.parametrize("A_ub,b_ub", [(None, None), (None, []), (np.zeros((0, 2)), None), (np.zeros((0, 2)), []),
                                       (scipy.sparse.csr_array((0, 2)), None)])
def test_empty_constraint_matrices(A_ub, b_ub):
    check([1, -1], A_ub, b_ub, A_eq=[[1, 1]], b_eq=[1], bounds=(0, 2))


@pytest.mark.parametrize("c", [1.0, [1.0], np.ones((1, 1, 1))])
def test_c_with_one_non_singleton_dimension_is_one_lp(c):
    res = check(c, A_ub=[[-1.0]], b_ub=[-2.0])
    assert res.x.shape == (1,)


@pytest.mark.parametrize("kwargs", [
    dict(c=[1, 2, 3], bounds=[(1, 2), (3, 4)]),
    dict(c=[1, 2, 3], bounds=[(1, 2), (3, 4), (3, 4, 5)]),
    dict(c=[1, 2], A_ub=[[1, 2]], b_ub=[1, 2]),
    dict(c=[1, 2], A_ub=[[1]], b_ub=[1]),
    dict(c=[1, 2], A_eq=[[1, 2]], b_eq=[1, 2]),
    dict(c=[1, 2], A_eq=[1], b_eq=1),
    dict(c=[1, 2], bounds=np.zeros((3, 2, 2))),
])
def test_what_scipy_refuses_is_refused(kwargs):
    with pytest.raises(ValueError):
        scipy.optimize.linprog(**kwargs, method="highs")
    with pytest.raises((ValueError, TypeError)):
        saddle.linprog(**kwargs)


@pytest.mark.skipif(not (NETLIB / "AFIRO.npz").exists(), reason="the netlib files are not in ../shared/netlib")
def test_a_netlib_file_passed_as_scipys_benchmark_passes_it():
    data = np.load(NETLIB / "AFIRO.npz", allow_pickle=True)
    args = {key: data[key] for key in ("c", "A_ub", "b_ub", "A_eq", "b_eq", "bounds")}
    res = saddle.linprog(**args, tol=1e-8)
    ref = scipy.optimize.linprog(**args, method="highs")
    assert int(res.status) == ref.status == 0
    assert abs(float(res.fun) - ref.fun) <= 1e-6 * abs(ref.fun)
    assert abs(float(res.fun) - float(data["obj"])) <= 1e-6 * abs(float(data["obj"]))
