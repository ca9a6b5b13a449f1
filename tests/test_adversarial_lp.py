"""`saddle.linprog` and the PDHG settings probed as a hostile or careless user would (issue 14).

Every probe either gets the answer HiGHS (scipy.optimize.linprog) gets on the same data (status,
objective to 1e-6 relative) or a ValueError/TypeError naming the argument.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import saddle

# max x1 + 2 x2  s.t.  x1 + x2 <= 4,  0 <= x <= 3: x* = (1, 3), the LP of the issue.
C, A_UB, B_UB, BOUNDS = [-1.0, -2.0], [[1.0, 1.0]], [4.0], [(0, 3), (0, 3)]


def highs(*args, bounds=None):
    """HiGHS on the same data (tensors given to it as numpy arrays)."""
    def numpy(a):
        return a.numpy() if isinstance(a, torch.Tensor) else a

    return scipy.optimize.linprog(*map(numpy, args), bounds=numpy(bounds), method="highs")


def assert_matches_highs(res, ref):
    assert int(res.status) == ref.status, res.message
    if ref.status == 0:
        assert abs(float(res.fun) - ref.fun) <= 1e-6 * max(1.0, abs(ref.fun))


def relative_violation(x, A_ub, b_ub) -> float:
    """PDLP's relative primal residual ``|(A x - b)_+| / (1 + |b|)``, computed in float64 by numpy."""
    A, b = np.asarray(A_ub, dtype=np.float64), np.asarray(b_ub, dtype=np.float64)
    x = np.asarray(x.double().cpu(), dtype=np.float64)
    return float(np.linalg.norm(np.maximum(A @ x - b, 0)) / (1 + np.linalg.norm(b)))


# -- dtypes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_lps_are_refused_with_the_reason(dtype):
    # bfloat16 used to report success at x = (1.0156, 3), violating x1 + x2 <= 4 by 0.0156.
    with pytest.raises(ValueError, match=r"dtype must be torch.float64 or torch.float32.*significand"):
        saddle.linprog(C, A_UB, B_UB, bounds=BOUNDS, dtype=dtype)
    with pytest.raises(ValueError, match="LinearProgram: c.dtype"):
        saddle.LinearProgram(torch.ones(1, 2, dtype=dtype), torch.ones(1, 1, 2, dtype=dtype),
                             torch.ones(1, 1, dtype=dtype), 0, torch.zeros(1, 2, dtype=dtype),
                             torch.ones(1, 2, dtype=dtype))


@pytest.mark.parametrize("dtype,error", [(torch.int64, ValueError), (torch.complex128, ValueError),
                                         ("float64", TypeError), (np.float64, TypeError)])
def test_other_dtypes_are_refused(dtype, error):
    with pytest.raises(error, match="dtype must be torch.float64 or torch.float32"):
        saddle.linprog(C, A_UB, B_UB, bounds=BOUNDS, dtype=dtype)


@pytest.mark.parametrize("tol", [1e-7, 1e-6])
def test_a_float32_success_holds_in_float64(tol):
    rng = np.random.default_rng(0)
    A = rng.standard_normal((10, 15))
    b = A @ rng.uniform(0, 1, 15) + rng.uniform(0, 1, 10)
    c = rng.standard_normal(15)
    for data in ((C, A_UB, B_UB, BOUNDS), (c, A, b, (0, 2))):
        ref = highs(*data[:3], bounds=data[3])
        res = saddle.linprog(*data[:3], bounds=data[3], tol=tol, dtype=torch.float32)
        assert res.x.dtype == torch.float32
        if res.success:
            assert relative_violation(res.x, data[1], data[2]) <= tol
            assert abs(float(res.fun) - ref.fun) <= 10 * tol * max(1.0, abs(ref.fun))
        else:  # float32 cannot resolve this tol: says so, with the float64 error
            assert int(res.status) == 4 and "float64" in res.message
            assert res.solution.statuses == [saddle.Status.PRECISION_LOSS]
    # float32 resolves 1e-6 on these LPs (at 1e-7 the random one stops short in float64).
    if tol == 1e-6:
        assert res.success


# -- complex, NaN and inf data -------------------------------------------------------------------


COMPLEX_INPUTS = [
    ("c", dict(c=np.array([-1 + 1j, -2]))),
    ("c", dict(c=torch.tensor([-1 + 1j, -2]))),
    ("A_ub", dict(A_ub=torch.tensor([[1 + 0j, 1]]))),
    ("A_ub", dict(A_ub=scipy.sparse.csr_matrix(np.array([[1 + 1j, 1]])))),
    ("A_ub", dict(A_ub=torch.tensor([[1 + 0j, 1]]).to_sparse())),
    ("b_ub", dict(b_ub=[4 + 1j])),
    ("A_eq", dict(A_eq=[[1j, 1]], b_eq=[1.0])),
    ("b_eq", dict(A_eq=[[1.0, 1]], b_eq=np.array([1j]))),
    ("bounds", dict(bounds=[(0, 3j), (0, 3)])),
    ("bounds", dict(bounds=np.array([(0, 3), (0, 3)], dtype=complex))),
    ("bounds", dict(bounds=[(0, np.complex128(3)), (0, 3)])),
    ("x0", dict(x0=[1j, 0])),
]


@pytest.mark.parametrize("name,kwargs", COMPLEX_INPUTS)
def test_complex_input_is_refused(name, kwargs):
    # It used to drop the imaginary part with a warning and report status 0.
    args = dict(c=C, A_ub=A_UB, b_ub=B_UB, bounds=BOUNDS) | kwargs
    with pytest.raises(TypeError, match=rf"^{name} must .*real"):
        saddle.linprog(**args)


@pytest.mark.parametrize("name", ["c", "A_ub", "b_ub", "A_eq", "b_eq", "x0"])
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_nan_and_inf_data_are_refused(name, bad):
    args = dict(c=[-1.0, -2.0], A_ub=[[1.0, 1.0]], b_ub=[4.0], A_eq=[[1.0, -1.0]], b_eq=[0.0], x0=[0.0, 0.0])
    value = np.array(args[name], dtype=np.float64)
    value.flat[0] = bad
    args[name] = value
    with pytest.raises(ValueError, match=rf"^{name} contains NaN or inf"):
        saddle.linprog(**args)


def test_infinite_and_nan_bounds_mean_unbounded_as_in_scipy():
    # scipy reads None as NaN and NaN as "no bound" (issue 16: an object array holding None was refused).
    for bounds in [(-math.inf, 3), (None, 3), [(-np.inf, 3), (None, np.inf)], (math.nan, 3),
                   np.array([(None, 3), (math.nan, None)], dtype=object)]:
        assert_matches_highs(saddle.linprog([1.0, -1.0], [[1.0, 1.0]], [4.0], bounds=bounds),
                             highs([1.0, -1.0], [[1.0, 1.0]], [4.0], bounds=bounds))


@pytest.mark.parametrize("bounds", [(math.inf, None), [(0, 3), (-math.inf, -math.inf)]])
def test_a_lower_bound_of_inf_or_an_upper_bound_of_minus_inf_is_infeasible_as_in_scipy(bounds):
    # scipy reports these as infeasible (status 2); they used to be a ValueError here.
    ref = highs(C, A_UB, B_UB, bounds=bounds)
    res = saddle.linprog(C, A_UB, B_UB, bounds=bounds)
    assert ref.status == 2 and int(res.status) == 2 and "lower bound exceeds" in res.message


# -- shapes ------------------------------------------------------------------------------------


@pytest.mark.parametrize("A_ub,b_ub", [(np.zeros((0, 2)), np.zeros(0)), (scipy.sparse.csr_matrix((0, 2)), []),
                                       (torch.zeros(0, 2), None)])
def test_a_zero_row_matrix_means_no_constraints_as_in_scipy(A_ub, b_ub):
    # It used to fail with an IndexError.
    ref = highs(C, A_ub, b_ub, bounds=BOUNDS)
    res = saddle.linprog(C, A_ub, b_ub, bounds=BOUNDS)
    assert_matches_highs(res, ref)
    assert res.ineqlin.shape == ref.ineqlin.marginals.shape == (0,)
    both = saddle.linprog(C, A_UB, B_UB, A_eq=A_ub, b_eq=b_ub, bounds=BOUNDS)
    assert_matches_highs(both, highs(C, A_UB, B_UB, A_ub, b_ub, bounds=BOUNDS))
    assert both.eqlin.shape == (0,) and both.ineqlin.shape == (1,)


@pytest.mark.parametrize("c", [[], np.zeros((0, 3)), torch.zeros(2, 0)])
def test_an_empty_c_is_an_error_naming_c(c):
    # scipy refuses n = 0 too; it used to blame bounds.
    with pytest.raises(ValueError, match="^c must have at least one variable"):
        saddle.linprog(c)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(c=np.ones((2, 1, 2))), ValueError, "^c must have 1 or 2 dimensions"),
    (dict(c="ab"), TypeError, "^c must be an array of real numbers"),
    (dict(c=[1.0, None]), ValueError, "^c contains NaN"),
    (dict(A_ub=[[1.0, 1.0], [1.0]], b_ub=[1.0, 1.0]), ValueError, "^A_ub must be a rectangular array"),
    (dict(A_ub=[1.0, 1.0], b_ub=[1.0]), ValueError, "^A_ub must have 2 or 3 dimensions"),
    (dict(A_ub=np.ones((3, 1, 2)), b_ub=[1.0]), ValueError, "^A_ub has batch size 3"),
    (dict(A_ub=[[1.0, 1.0]], b_ub=np.ones((3, 1))), ValueError, "^b_ub must have shape"),
    (dict(A_ub=None, b_ub=[1.0]), ValueError, "^b_ub given without A_ub"),
    (dict(A_eq=None, b_eq=[1.0]), ValueError, "^b_eq given without A_eq"),
    (dict(A_eq=[[1.0, 1.0]]), ValueError, "^b_eq is required"),
    (dict(bounds=3), ValueError, "^bounds must be a"),
    (dict(bounds=[(0, 1), (0,)]), TypeError, "^bounds must hold real numbers"),
    (dict(bounds=[("0", "1"), (0, 1)]), TypeError, "^bounds must hold real numbers"),
    (dict(bounds=np.zeros((3, 2, 2))), ValueError, "^bounds have batch size 3"),
    (dict(bounds=np.zeros((2, 3)), c=[1.0, 1.0, 1.0]), ValueError, r"^bounds must be an \(n, 2\) = \(3, 2\) array"),
    (dict(x0=[1.0, 2.0, 3.0]), ValueError, r"^x0 must have shape \(2,\) or \(1, 2\)"),
])
def test_wrong_shapes_and_types_name_the_argument(kwargs, error, match):
    args = dict(c=[1.0, 1.0]) | kwargs
    with pytest.raises(error, match=match):
        saddle.linprog(**args)


# -- careless but valid input ---------------------------------------------------------------------


CARELESS = [  # (c, A_ub, b_ub, bounds): every form scipy accepts with this meaning
    ([-1, -2], [[1, 1]], [4], (0, 3)),  # ints
    (np.array([-1, -2]), np.array([[1, 1]], dtype=np.int32), np.array([4], dtype=np.uint8), [0, 3]),  # a list pair
    (torch.tensor([-1, -2]), torch.tensor([[1, 1]], dtype=torch.uint8), torch.tensor([4]), [(0, 3)]),
    (np.array([True, False]), [[1.0, 1.0]], [4.0], (-1, 3)),  # bools
    ([-1.0, -2.0], [[1.0, 1.0]], [4.0], [(0, None), (None, 3)]),
    ([1.0, -2.0], [[1.0, 1.0]], [4.0], np.array([(0, None), (None, 3)], dtype=object)),
    ([1.0, -2.0], [[1.0, 1.0]], [4.0], [[-2, None], [-np.inf, 3]]),
    ([1.0, -2.0], [[1.0, 1.0]], [4.0], np.array([0.0, 3.0])),
    ([1.0, -2.0], [[1.0, 1.0]], [4.0], torch.tensor([[0, 1], [0, 3]])),
    (np.array([-1.0, -2.0], dtype=np.float16), np.array([[1.0, 1.0]], dtype=np.float16), [4.0], (0, 3)),
    ([1.0, -2.0], None, None, [(0, None), (None, 3)]),  # bounds only (used to be reported diverged)
    ([-1.0, -2.0], [[0.0, 0.0]], [1.0], (0, 1e6)),  # an all-zero matrix
]


@pytest.mark.parametrize("c,A_ub,b_ub,bounds", CARELESS)
def test_careless_input_gets_the_answer_of_highs(c, A_ub, b_ub, bounds):
    assert_matches_highs(saddle.linprog(c, A_ub, b_ub, bounds=bounds), highs(c, A_ub, b_ub, bounds=bounds))


def test_crossed_bounds_make_that_lp_infeasible_as_in_scipy():
    # scipy reports lo > hi as infeasible (status 2); in a batch, only that LP is.
    bounds = [(0, 1), (3, 2)]
    ref = highs([1.0, 1.0], A_UB, B_UB, bounds=bounds)
    res = saddle.linprog([1.0, 1.0], A_UB, B_UB, bounds=bounds)
    assert ref.status == 2 and int(res.status) == 2 and "lower bound exceeds" in res.message
    assert torch.isnan(res.fun) and torch.isnan(res.x).all() and (res.dual_ray == 0).all()
    batch = np.array([BOUNDS, [(0, 3), (2, 1)]], dtype=np.float64)
    res = saddle.linprog([C, C], A_UB, B_UB, bounds=batch)
    assert res.status.tolist() == [0, 2]
    assert res.solution.statuses[1] == saddle.Status.INFEASIBLE
    assert abs(res.fun[0].item() - highs(C, A_UB, B_UB, bounds=BOUNDS).fun) <= 1e-6 * 7


# -- options ------------------------------------------------------------------------------------


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(restarts="no"), TypeError, "restarts must be True or False"),
    (dict(adaptive_step=1), TypeError, "adaptive_step must be True or False"),
    (dict(update_primal_weight=None), TypeError, "update_primal_weight must be True or False"),
    (dict(precondition="auto"), TypeError, "precondition must be True, False or None"),
    (dict(restart_measure="residual"), ValueError, "restart_measure must be one of None, 'gap', 'kkt'"),
    (dict(restart_every=True), TypeError, "restart_every must be an integer >= 1"),
    (dict(restart_every=0), ValueError, "restart_every must be an integer >= 1"),
    (dict(restart_every=2.5), TypeError, "restart_every must be an integer >= 1"),
    (dict(ruiz_iterations=-1), ValueError, "ruiz_iterations must be an integer >= 0"),
    (dict(sufficient="0.2"), TypeError, r"sufficient must be a number in \(0.0, 1.0\)"),
    (dict(necessary=math.nan), ValueError, r"necessary must be a finite number in \(0.0, 1.0\)"),
    (dict(artificial=1.0), ValueError, r"artificial must be a finite number in \(0.0, 1.0\)"),
    (dict(sufficient=0.9, necessary=0.5), ValueError, "sufficient <= necessary"),
    (dict(infeasibility_tol=0.0), ValueError, "infeasibility_tol must be a finite number"),
    (dict(step_size="big"), TypeError, "step_size must be None, a positive number"),
    (dict(step_size=-0.1), ValueError, "step_size must be None, a positive number"),
    (dict(primal_weight=torch.tensor([math.inf])), ValueError, "primal_weight must be None, a positive number"),
    (dict(primal_weight=torch.ones(2, 2)), ValueError, "primal_weight must be .* got shape"),
    (dict(restart="no"), TypeError, r"no setting\(s\) \['restart'\]; its settings are .*'restarts'"),
    (dict(method="highs"), ValueError, "method must be 'pdhg', 'r2hpdhg' or 'ipm', got 'highs'"),
    (dict(progress="yes"), TypeError, "progress must be True or False"),
    (dict(callback=3), TypeError, "callback must be None or a function"),
    (dict(tol="1e-8"), TypeError, "tol must be a float"),
    (dict(tol=-1.0), ValueError, "tol must be non-negative"),
    (dict(tol=-1e-100), ValueError, "tol must be non-negative"),  # not rounded to -0.0 on the way
    (dict(tol=torch.ones(3)), ValueError, "tol must be a float or a"),
    (dict(max_iters=-1), ValueError, "max_iters must be a non-negative integer"),
    (dict(check_every=0), ValueError, "check_every must be a positive integer"),
])
def test_every_option_is_checked(kwargs, error, match):
    with pytest.raises(error, match=match):
        saddle.linprog(C, A_UB, B_UB, bounds=BOUNDS, **{"method": "pdhg", **kwargs})  # pdhg's settings


def test_pdhg_settings_fail_at_construction():
    with pytest.raises(TypeError, match="pdhg: restarts must be True or False, got 'no'"):
        saddle.PDHG(restarts="no")
    # numpy scalars and (B,) tensors are numbers and per-instance settings
    solver = saddle.PDHG(restart_every=np.int64(32), sufficient=np.float64(0.1), step_size=torch.tensor([0.5]))
    assert_matches_highs(saddle.linprog(C, A_UB, B_UB, bounds=BOUNDS, restart_every=solver.restart_every,
                                        sufficient=solver.sufficient), highs(C, A_UB, B_UB, bounds=BOUNDS))


# -- devices ------------------------------------------------------------------------------------


def test_tensors_on_different_devices_are_an_error_naming_them():
    meta = torch.tensor(A_UB, device="meta")
    with pytest.raises(ValueError, match=r"different devices \(c on cpu, A_ub on meta\)"):
        saddle.linprog(torch.tensor(C), meta, B_UB, bounds=BOUNDS)
    with pytest.raises(ValueError, match="A_ub is on the meta device"):
        saddle.linprog(torch.tensor(C), meta, B_UB, bounds=BOUNDS, device="cpu")
    with pytest.raises(ValueError, match="c is on the meta device"):
        saddle.linprog(torch.tensor(C, device="meta"))
    with pytest.raises(ValueError, match="device='meta' holds no values"):
        saddle.linprog(C, device="meta")
    with pytest.raises(ValueError, match="device must be a torch.device"):
        saddle.linprog(C, device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device cuda is not available"):
            saddle.linprog(C, device="cuda")


def test_the_solve_runs_on_the_tensors_device(device):
    res = saddle.linprog(torch.tensor(C, device=device), torch.tensor(A_UB, device=device), B_UB, bounds=BOUNDS)
    assert res.x.device.type == device
    assert_matches_highs(res, highs(C, A_UB, B_UB, bounds=BOUNDS))


# -- properties ---------------------------------------------------------------------------------


@st.composite
def feasible_lps(draw):
    """A small LP, feasible by construction (b from a point inside a box), in one of the accepted forms."""
    n, m_ub, m_eq = draw(st.integers(1, 4)), draw(st.integers(0, 3)), draw(st.integers(0, 2))
    small = st.integers(-3, 3)

    def matrix(m):
        return np.array(draw(st.lists(st.lists(small, min_size=n, max_size=n), min_size=m, max_size=m)),
                        dtype=np.float64).reshape(m, n)

    c, A_ub, A_eq = matrix(1)[0], matrix(m_ub), matrix(m_eq)
    lo = np.array(draw(st.lists(st.integers(-2, 0), min_size=n, max_size=n)), dtype=np.float64)
    width = np.array(draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)), dtype=np.float64)
    x_feas = lo + width * draw(st.floats(0, 1))
    b_ub = A_ub @ x_feas + np.array(draw(st.lists(st.integers(0, 2), min_size=m_ub, max_size=m_ub)))
    b_eq = A_eq @ x_feas
    form = draw(st.sampled_from(["numpy", "lists", "torch"]))
    convert = {"numpy": lambda a: a, "lists": lambda a: a.tolist(), "torch": torch.as_tensor}[form]
    bounds = [(lo_i, lo_i + w) for lo_i, w in zip(lo.tolist(), width.tolist())]
    return (c, A_ub, b_ub, A_eq, b_eq, bounds), (convert(c), convert(A_ub), convert(b_ub),
                                                  convert(A_eq) if m_eq else None, convert(b_eq) if m_eq else None,
                                                  convert(np.array(bounds)) if form != "lists" else bounds)


@settings(max_examples=12, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(feasible_lps())
def test_small_feasible_lps_in_every_form_match_highs(lp):
    numpy_lp, user_lp = lp
    c, A_ub, b_ub, A_eq, b_eq, bounds = numpy_lp
    ref = highs(c, A_ub, b_ub, A_eq if len(b_eq) else None, b_eq if len(b_eq) else None, bounds=bounds)
    assert_matches_highs(saddle.linprog(*user_lp[:5], bounds=user_lp[5], tol=1e-9), ref)


@settings(max_examples=25, deadline=None, derandomize=True)
@given(name=st.sampled_from(["restarts", "restart_every", "sufficient", "precondition", "restart_measure",
                             "step_size", "primal_weight", "infeasibility_tol", "tol", "max_iters", "dtype",
                             "device", "bounds", "x0"]),
       value=st.one_of(st.none(), st.booleans(), st.integers(-3, 70), st.floats(allow_nan=True, allow_infinity=True),
                       st.sampled_from(["no", "kkt", "cpu", (0, 3), [1.0, 3.0], torch.float16, torch.float32]),
                       st.builds(torch.full, st.sampled_from([(), (1,), (2,)]), st.floats(-1, 2))))
def test_any_option_value_runs_correctly_or_is_refused_clearly(name, value):
    try:
        res = saddle.linprog(C, A_UB, B_UB, bounds=BOUNDS, **{name: value}, **({} if name == "max_iters" else
                                                                               dict(max_iters=5_000)))
    except (ValueError, TypeError) as err:
        assert name in str(err) or name == "device" and "meta" in str(err)
        return
    tol = value if name == "tol" else 1e-8
    bounds = value if name == "bounds" and value is not None else BOUNDS
    if res.success and tol <= 1e-6:
        assert relative_violation(res.x, A_UB, B_UB) <= tol
        ref = highs(C, A_UB, B_UB, bounds=bounds)
        assert abs(float(res.fun) - ref.fun) <= 1e-5 * max(1.0, abs(ref.fun))
