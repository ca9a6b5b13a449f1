"""The presolve of `saddle.linprog` (saddle/lp_presolve.py): fixed variables, empty rows and columns, LPs without
constraints, batches, and the postsolve of x, the marginals and the certificates, all checked against HiGHS."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

import saddle
from saddle.lp_presolve import presolve


def highs(c, A_ub=None, b_ub=None, A_eq=None, b_eq=None, bounds=(0, None)):
    return scipy.optimize.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds, method="highs")


def assert_same_answer(res, ref, tol=1e-6):
    assert int(res.status) == ref.status, res.message
    if ref.status == 0:
        assert abs(float(res.fun) - ref.fun) <= tol * max(1.0, abs(ref.fun))


def farkas_objective(A_ub, b_ub, A_eq, b_eq, bounds, y):
    """For a ray y = (y_eq, y_ub): max of the Farkas objective -b^T y + min_{lo <= x <= hi} (A^T y)^T x (numpy)."""
    A = np.vstack([np.asarray(A_eq, float).reshape(-1, len(bounds)), np.asarray(A_ub, float).reshape(-1, len(bounds))])
    b = np.concatenate([np.ravel(b_eq), np.ravel(b_ub)])
    r = A.T @ y
    lo, hi = np.array(bounds, float).T
    with np.errstate(invalid="ignore"):
        terms = np.where(r > 0, r * lo, np.where(r < 0, r * hi, 0.0))
    return -b @ y + terms.sum()


# -- LPs without constraints: closed form per variable


@pytest.mark.parametrize("c,bounds", [
    ([1.0, -1.0, 1.0, -1.0], [(0, None), (None, 0), (-1, 1), (-1, 1)]),  # scipy's empty_constraint_3: -2
    ([-1.0, -2.0], None),                                                 # scipy's empty_constraint_1: unbounded
    ([1.0, -1.0, -1.0, 1.0], [(0, None), (None, 0), (-1, 1), (-1, 1)]),   # empty_constraint_2: unbounded
    ([0.0, 2.0], [(-3, None), (-1, 5)]),                                  # c_j = 0 on an unbounded side
    ([1.0], [(None, 1)]),                                                 # unbounded below
])
def test_lps_without_constraints_are_solved_in_closed_form(c, bounds):
    res = saddle.linprog(c, bounds=bounds)
    assert_same_answer(res, highs(c, bounds=bounds))
    assert int(res.nit) == 0 and int(res.matvecs) == 0
    if int(res.status) == 3:  # the ray: in the recession cone of the bounds, c^T s < 0, unit
        s = res.primal_ray.numpy()
        lo, hi = np.array([(0, np.inf)] * len(c) if bounds is None else
                          [(-np.inf if a is None else a, np.inf if b is None else b) for a, b in bounds]).T
        assert float(np.dot(c, s)) < 0 and abs(np.linalg.norm(s) - 1) < 1e-12
        assert np.all(s[np.isfinite(lo)] >= 0) and np.all(s[np.isfinite(hi)] <= 0)
    else:
        assert torch.equal(res.primal_ray, torch.zeros(len(c), dtype=torch.float64))


# -- empty rows


@pytest.mark.parametrize("kind", ["eq", "ub"])
def test_an_empty_row_that_holds_is_dropped_with_a_zero_marginal(kind):
    # scipy's zero_row_1 / zero_row_2 (0 = 0 and 0 <= 0 rows around a real one)
    A, b = [[0, 0, 0], [1, 1, 1], [0, 0, 0]], [0, 3, 0]
    args = dict(A_eq=A, b_eq=b) if kind == "eq" else dict(A_ub=A, b_ub=b)
    res, ref = saddle.linprog([1, 2, 3], **args), highs([1, 2, 3], **args)
    assert_same_answer(res, ref)
    marginals = res.eqlin if kind == "eq" else res.ineqlin
    expected = ref.eqlin.marginals if kind == "eq" else ref.ineqlin.marginals
    assert marginals.shape == (3,) and marginals[0] == 0 and marginals[2] == 0
    assert np.allclose(marginals.numpy(), expected, atol=1e-6)


@pytest.mark.parametrize("kind", ["eq", "ub"])
def test_a_violated_empty_row_is_infeasible_with_its_unit_ray(kind):
    # scipy's zero_row_3 / zero_row_4: 0 = b_0 != 0, or 0 <= b_0 < 0
    rng = np.random.default_rng(1)
    A = rng.random((2, 4))
    A[0] = 0
    b = np.array([-0.5, 0.7]) if kind == "ub" else np.array([0.5, 0.7])
    args = dict(A_eq=A, b_eq=b) if kind == "eq" else dict(A_ub=A, b_ub=b)
    c = rng.random(4)
    res, ref = saddle.linprog(c, **args), highs(c, **args)
    assert ref.status == 2
    assert_same_answer(res, ref)
    assert "presolve" in res.message  # the certificate is the presolve's, whatever the rest's solve did
    y = res.dual_ray.numpy()
    assert np.count_nonzero(y) == 1 and abs(abs(y[0]) - 1) < 1e-12
    empty = np.zeros((0, 4))
    objective = (farkas_objective(empty, [], A, b, [(0, None)] * 4, y) if kind == "eq"
                 else farkas_objective(A, b, empty, [], [(0, None)] * 4, y))
    assert objective > 0 and (kind == "eq" or y[0] > 0)


# -- fixed variables


@pytest.mark.parametrize("c,A_ub,b_ub,A_eq,b_eq,bounds", [
    ([1, 2, 3], None, None, None, None, [(5, 5), (-1, -1), (3, 3)]),           # scipy's bounds_fixed: 12
    ([1, 1, 2], None, None, [[1, 0, 0], [0, 1, 0]], [1, 7], [(-5, 5), (0, 10), (3.5, 3.5)]),  # 15
    ([-4, 1], [[7, -2], [0, 1], [2, -2]], [14, 0, 3], None, None, [(2, 2), (0, None)]),  # infeasible
    ([-4, 1], None, None, [[7, -2], [0, 1], [2, -2]], [14, 0, 3], [(2, 2), (0, None)]),  # infeasible
    ([1, 2], [[1, 2], [1.1, 2.2]], [4, 8], None, None, [(1, 2), (2, 2)]),     # bounds_equal_no_presolve
    ([1, -1, 2], [[1, 1, 1], [2, -1, 0]], [4, 1], [[1, 0, 1]], [2], [(0, 3), (1, 1), (None, None)]),
])
def test_fixed_variables_are_substituted(c, A_ub, b_ub, A_eq, b_eq, bounds):
    res, ref = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds), highs(c, A_ub, b_ub, A_eq, b_eq, bounds)
    assert_same_answer(res, ref)
    if ref.status == 0:
        fixed = [i for i, (lo, hi) in enumerate(bounds) if lo == hi and lo is not None]
        assert torch.equal(res.x[fixed], torch.tensor([bounds[i][0] for i in fixed], dtype=torch.float64))
        if A_eq is not None:
            assert np.allclose(res.eqlin.numpy(), ref.eqlin.marginals, atol=1e-5)
    if ref.status == 2:
        y = res.dual_ray.numpy()
        m_eq = 0 if A_eq is None else len(b_eq)
        assert farkas_objective(np.zeros((0, 2)) if A_ub is None else A_ub, [] if b_ub is None else b_ub,
                                np.zeros((0, 2)) if A_eq is None else A_eq, [] if b_eq is None else b_eq,
                                bounds, y) > 0
        assert np.all(y[m_eq:] >= 0)


def test_a_solve_stops_on_the_kkt_errors_of_the_lp_it_was_given():
    # x_1 is fixed at 1000 in rows whose b is 0: the presolved LP's b is about 1000 times longer, so
    # errors relative to its norm would let the solve stop 1000 times early; it stops on the original's.
    c = [1.0, -1.0, -1.0]
    A_ub = [[-1.0, 1.0, 0.0], [-1.0, 0.0, 1.0], [0.0, 1.0, 1.0]]
    b_ub = [0.0, 0.0, 1500.0]
    bounds = [(1000, 1000), (0, None), (0, None)]
    ref = highs(c, A_ub, b_ub, None, None, bounds)
    for tol in (1e-4, 1e-7):
        res = saddle.linprog(c, A_ub, b_ub, bounds=bounds, tol=tol)
        assert res.status == 0
        assert max(float(res.primal_residual), float(res.dual_residual), float(res.gap)) <= tol
        assert abs(float(res.fun) - ref.fun) <= 10 * tol * (1 + abs(ref.fun))


# -- empty columns


def test_an_empty_column_sits_at_its_best_bound():
    # scipy's zero_column_1 (with its scalar b_ub = 3): x_1 is in no constraint and costs 1 on [-10, 10]
    rng = np.random.default_rng(558329500002933)
    c = rng.random(4)
    c[1] = 1
    A_eq = rng.random((3, 4))
    A_eq[:, 1] = 0
    b_eq = rng.random(3)
    bounds = [(-10, 10), (-10, 10), (-10, None), (None, None)]
    res, ref = saddle.linprog(c, [[1, 0, 1, 1]], 3, A_eq, b_eq, bounds=bounds), \
        highs(c, [[1, 0, 1, 1]], 3, A_eq, b_eq, bounds)
    assert_same_answer(res, ref)
    assert float(res.x[1]) == -10.0


def test_an_unbounded_empty_column_needs_a_feasible_rest():
    # scipy's zero_column_2 with a bounded rest (feasible: unbounded along e_1), then an infeasible rest
    rng = np.random.default_rng(4492835845925983465)
    c = rng.random(4)
    c[1] = -1
    A_eq, A_ub = rng.random((2, 4)), rng.random((2, 4))
    A_eq[:, 1] = A_ub[:, 1] = 0
    x = rng.random(4)
    b_eq, b_ub = A_eq @ x, A_ub @ x + 0.1
    bounds = [(-2, 2), (None, None), (-2, 2), (-2, 2)]
    res, ref = saddle.linprog(c, A_ub, b_ub, A_eq, b_eq, bounds=bounds), highs(c, A_ub, b_ub, A_eq, b_eq, bounds)
    assert ref.status == 3
    assert_same_answer(res, ref)
    assert torch.equal(res.primal_ray, torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64))
    # x_0 + x_2 <= -1 and x_0 + x_2 >= 1 with x >= 0: infeasible whatever x_1 does
    A = [[1, 0, 1], [-1, 0, -1]]
    res, ref = saddle.linprog([0, -1, 0], A, [-1, -1]), highs([0, -1, 0], A, [-1, -1])
    assert ref.status == 2
    assert_same_answer(res, ref)


# -- batches and sparse matrices


def test_a_batch_removes_only_what_every_instance_allows():
    # column 0 is fixed in the first LP only; row 1 empty everywhere, violated in the second LP only
    A_ub = np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]])
    b_ub = np.array([[4.0, 0.0], [4.0, -1.0]])
    c = np.array([[-1.0, -2.0, -1.0], [-1.0, -2.0, -1.0]])
    bounds = np.array([[(1, 1), (0, 3), (0, 3)], [(0, 2), (0, 3), (0, 3)]], dtype=float)
    c_t, K, d = torch.as_tensor(c), torch.as_tensor(A_ub).unsqueeze(0), torch.as_tensor(b_ub)
    pre = presolve(c_t, K, d, 0, torch.as_tensor(bounds[..., 0]), torch.as_tensor(bounds[..., 1]))
    assert pre.cols.tolist() == [0, 1, 2] and pre.rows.tolist() == [0]
    assert pre.infeasible.tolist() == [False, True]
    res = saddle.linprog(c, A_ub, b_ub, bounds=bounds)
    for i in range(2):
        ref = highs(c[i], A_ub, b_ub[i], bounds=bounds[i])
        assert int(res.status[i]) == ref.status
        if ref.status == 0:
            assert abs(float(res.fun[i]) - ref.fun) <= 1e-6 * max(1, abs(ref.fun))


@pytest.mark.parametrize("fmt", ["csr", "coo", "lil"])
def test_sparse_matrices_are_presolved_as_one_structure(fmt):
    A_eq = scipy.sparse.random_array((6, 8), density=0.4, rng=np.random.default_rng(3)).asformat(fmt).tolil()
    A_eq[:, 2] = 0  # an empty column
    A_eq[4, :] = 0  # an empty row
    A_eq = A_eq.asformat(fmt)
    x = np.random.default_rng(4).random(8)
    x[7] = 0.5
    b_eq = A_eq @ x
    c = np.random.default_rng(5).standard_normal(8)
    bounds = [(0, 1)] * 7 + [(0.5, 0.5)]
    res, ref = saddle.linprog(c, A_eq=A_eq, b_eq=b_eq, bounds=bounds, tol=1e-9), \
        highs(c, A_eq=A_eq, b_eq=b_eq, bounds=bounds)
    assert_same_answer(res, ref, tol=1e-6)
    assert float(res.x[7]) == 0.5 and float(res.x[2]) == (0.0 if c[2] > 0 else 1.0)
    assert np.allclose(res.eqlin.numpy(), ref.eqlin.marginals, atol=1e-5)
