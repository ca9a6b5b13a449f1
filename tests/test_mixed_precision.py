"""`saddle.linprog(..., precision=)`: float32 iterations checked in float64 (``"single"``) and float32 iterations
finished in float64 (``"mixed"``, issue 17 item 3): tolerances met in float64, counts that add up over the
parts, certificates verified in float64, budgets shared, options checked."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import scipy.sparse
import torch

import saddle
from saddle import lp as lp_module
from saddle import lp_certificates as lc
from saddle.lp import LinearProgram

DATA = Path(__file__).resolve().parent / "data" / "netlib"


def netlib(name: str, folder: Path = DATA) -> dict:
    """The scipy arguments of a netlib LP of tests/data, with sparse matrices."""
    data = np.load(folder / f"{name}.npz")
    args = {key: data[key] for key in ("c", "A_ub", "b_ub", "A_eq", "b_eq", "bounds")}
    for A, b in (("A_ub", "b_ub"), ("A_eq", "b_eq")):
        args[A], args[b] = (scipy.sparse.csr_matrix(args[A]), args[b]) if args[A].shape[0] else (None, None)
    return args


def random_lps(B: int = 3, m: int = 8, n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """B feasible, bounded LPs ``min c^T x, A x <= b, 0 <= x <= 2``: ``c`` (B, n), ``A`` (B, m, n), ``b`` (B, m)."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((B, m, n))
    b = np.einsum("bmn,bn->bm", A, rng.uniform(0, 2, (B, n))) + rng.uniform(0.1, 1, (B, m))
    return rng.standard_normal((B, n)), A, b


def kkt_error(res) -> torch.Tensor:
    return torch.maximum(torch.maximum(res.primal_residual, res.dual_residual), res.gap)


@pytest.mark.parametrize("name", ["AFIRO", "SC50A"])
def test_mixed_meets_tol_in_float64_and_matches_highs_on_netlib_lps(name):
    args = netlib(name)
    ref = scipy.optimize.linprog(**args, method="highs")
    res = saddle.linprog(**args, tol=1e-8, precision="mixed")
    assert int(res.status) == 0 and res.x.dtype == torch.float64
    assert float(kkt_error(res)) <= 1e-8
    assert abs(float(res.fun) - ref.fun) <= 1e-6 * (1 + abs(ref.fun))
    assert [p.dtype for p in res.phases] == [torch.float32, torch.float64]
    assert all(int(p.nit) > 0 for p in res.phases)


def test_mixed_batch_of_random_lps_matches_highs_per_instance():
    c, A, b = random_lps(B=4)
    res = saddle.linprog(c, A, b, bounds=(0, 2), tol=1e-8, precision="mixed")
    assert res.status.tolist() == [0, 0, 0, 0]
    assert bool((kkt_error(res) <= 1e-8).all())
    for i in range(4):
        ref = scipy.optimize.linprog(c[i], A[i], b[i], bounds=(0, 2), method="highs")
        assert abs(float(res.fun[i]) - ref.fun) <= 1e-6 * (1 + abs(ref.fun))
    assert torch.equal(res.nit, res.phases[0].nit + res.phases[1].nit)


def test_the_counts_are_the_float32_part_plus_the_float64_part():
    args = netlib("AFIRO")
    res = saddle.linprog(**args, tol=1e-8, precision="mixed")
    first, second = res.phases
    # The float32 part is the float32 solve to MIXED_SWITCH_TOL (AFIRO meets it in float64 within one segment).
    single = saddle.linprog(**args, tol=lp_module.MIXED_SWITCH_TOL, precision="single")
    assert int(single.status) == 0 and int(first.nit) == int(single.nit) and int(first.matvecs) == int(single.matvecs)
    assert int(res.nit) == int(first.nit) + int(second.nit)
    assert int(res.matvecs) == int(first.matvecs) + int(second.matvecs)
    # r2hpdhg: one K and one K^T product per iteration, and one of each at the start of each part
    assert int(res.matvecs) == 2 * (int(res.nit) + 2)
    assert int(res.nit) == int(res.solution.iterations[0])


def test_a_tol_float32_meets_needs_no_float64_part():
    res = saddle.linprog(**netlib("SC50B"), tol=1e-4, precision="mixed")
    assert int(res.status) == 0 and float(kkt_error(res)) <= 1e-4
    assert [p.dtype for p in res.phases] == [torch.float32]


def test_float32_without_progress_goes_on_in_float64():
    # bgdbg1 is infeasible; float32 finds no certificate (a "single" solve runs to its limit), so the KKT error
    # makes no progress in the first segment and the rest runs in float64, which certifies it.
    args = netlib("bgdbg1", DATA / "infeasible")
    res = saddle.linprog(**args, precision="mixed", max_iters=20_000)
    assert int(res.status) == 2
    assert [p.dtype for p in res.phases] == [torch.float32, torch.float64]
    assert int(res.phases[0].nit) == lp_module.MIXED_SEGMENT  # one float32 segment, then float64


def _verify_in_user_data(args: dict, ray: torch.Tensor) -> bool:
    """Whether ``ray`` (y_eq, y_ub) is a Farkas certificate of the LP ``args`` as given, in float64."""
    c = torch.as_tensor(args["c"], dtype=torch.float64).reshape(1, -1)
    blocks = [(torch.as_tensor(args[A].toarray()), torch.as_tensor(args[b])) for A, b in (("A_eq", "b_eq"),
              ("A_ub", "b_ub")) if args[A] is not None]
    n_eq = args["A_eq"].shape[0] if args["A_eq"] is not None else 0
    K = torch.cat([A for A, _ in blocks]).unsqueeze(0)
    d = torch.cat([b for _, b in blocks]).unsqueeze(0)
    bounds = torch.as_tensor(args["bounds"], dtype=torch.float64)
    check = LinearProgram(c, K, d, n_eq, bounds[:, 0].reshape(1, -1), bounds[:, 1].reshape(1, -1))
    return bool(lc.verify_dual_ray(check, ray.reshape(1, -1), 1e-8).item())


@pytest.mark.parametrize("precision", ["single", "mixed"])
def test_an_infeasible_lp_found_in_float32_is_certified_with_a_ray_that_verifies(precision):
    args = netlib("galenet", DATA / "infeasible")
    res = saddle.linprog(**args, precision=precision)
    assert int(res.status) == 2 and res.phases[0].dtype == torch.float32
    assert _verify_in_user_data(args, res.dual_ray)


def test_a_float32_certificate_that_fails_in_float64_is_not_reported(monkeypatch):
    args = netlib("galenet", DATA / "infeasible")
    # As if galenet's float32 ray failed its verification in float64 (the float64 solver's own test is untouched).
    monkeypatch.setattr(lp_module, "verify_dual_ray", lambda problem, r, tol: torch.zeros(r.shape[0], dtype=bool))
    single = saddle.linprog(**args, precision="single")
    assert int(single.status) == 4 and "certificate" in single.message
    assert float(single.dual_ray.abs().max()) == 0
    mixed = saddle.linprog(**args, precision="mixed")
    assert int(mixed.status) == 2 and [p.dtype for p in mixed.phases] == [torch.float32, torch.float64]
    assert _verify_in_user_data(args, mixed.dual_ray)


def test_max_iters_and_time_limit_bound_both_parts_together():
    args = netlib("SC50A")
    res = saddle.linprog(**args, tol=1e-10, precision="mixed", max_iters=700)
    assert int(res.status) == 1 and int(res.nit) <= 700
    assert int(res.phases[-1].nit) > 0  # the float64 part got what the float32 one left
    res = saddle.linprog(**args, tol=1e-10, precision="mixed", max_iters=300)
    assert int(res.status) == 1 and int(res.nit) == 300 and [p.dtype for p in res.phases] == [torch.float32]
    res = saddle.linprog(**netlib("ADLITTLE"), tol=1e-10, precision="mixed", time_limit=0.05)
    assert int(res.status) == 1 and res.message == "The time limit was reached."


def test_dtype_float32_alone_still_means_float32_iterations_and_a_float32_result():
    args = netlib("AFIRO")
    res = saddle.linprog(**args, tol=1e-6, dtype=torch.float32)
    assert [p.dtype for p in res.phases] == [torch.float32] and res.x.dtype == torch.float32
    assert int(res.status) == 0 and float(kkt_error(res)) <= 1e-6
    mixed = saddle.linprog(**args, tol=1e-8, dtype=torch.float32, precision="mixed")
    assert mixed.x.dtype == torch.float32 and int(mixed.status) == 0 and float(kkt_error(mixed)) <= 1e-8
    double = saddle.linprog(**args, tol=1e-8, precision="double")
    assert [p.dtype for p in double.phases] == [torch.float64] and double.solution.history  # one solve, as before


def test_a_warm_start_may_come_from_another_precision():
    args = netlib("SC50B")
    first = saddle.linprog(**args, tol=1e-8)
    again = saddle.linprog(**args, tol=1e-8, precision="mixed", warm_start=first)
    single = saddle.linprog(**args, tol=1e-5, precision="single", warm_start=again)
    assert int(again.status) == 0 and int(single.status) == 0
    assert int(single.nit) == 0  # the float64 solution rounded to float32 still meets 1e-5


@pytest.mark.parametrize("value", ["quad", "float32", torch.float32, 1, True])
def test_bad_precision_values_are_refused_naming_the_argument(value):
    with pytest.raises(ValueError, match=r"^precision must be None or one of 'double', 'single', 'mixed'"):
        saddle.linprog([-1, -2], [[1, 1]], [4], bounds=(0, 3), precision=value)


@pytest.mark.parametrize("name,value", [("max_iters", -1), ("max_iters", 1.5), ("max_iters", True),
                                        ("time_limit", 0), ("time_limit", math.nan), ("time_limit", "1")])
def test_bad_budgets_are_refused_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=f"^{name} must be"):
        saddle.linprog([-1, -2], [[1, 1]], [4], bounds=(0, 3), precision="mixed", **{name: value})
