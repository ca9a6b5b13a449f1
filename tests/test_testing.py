"""saddle.testing: check_solver passes on every registered solver, fails naming the check on broken ones;
the docs' walk-throughs (docs/contributing.md) run; the pytest helper and assertion helpers work."""

from __future__ import annotations

import dataclasses
import pathlib
import re
import subprocess
import sys
import types

import pytest
import torch

import saddle
import saddle.testing
from saddle.solvers.extragradient import Extragradient
from saddle.testing import FAMILIES, SkipCheck, check_solver

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_the_module_imports_without_pytest():
    code = "import sys; sys.modules['pytest'] = None; import saddle.testing; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("solver", ["extragradient", "pdhg", "sam", "vr_eg", "masha1"])
def test_check_solver_passes_on_registered_solvers(solver):
    # (Every registered solver passes every check in test_conformance.py; here the report itself.)
    report = check_solver(solver, checks=["metadata", "batch_equals_loop", "exact_counts", "no_mutation"])
    assert not report.failed and report.passed
    assert str(report).startswith(f"check_solver({solver}): {len(report.passed)} passed, 0 failed")


# -- deliberately broken solvers: each fails the check named, and only where it should ------------

@dataclasses.dataclass(frozen=True)
class MutatesItsInput(Extragradient):
    def step(self, problem, z, state):
        z_next, state_next = super().step(problem, z, state)
        z[0].mul_(1.0)  # harmless to the values, but writes in place ...
        z[0].add_(1e-3)  # ... and then changes them
        return z_next, state_next


@dataclasses.dataclass(frozen=True)
class MiscountsCalls(Extragradient):
    calls_per_step = 1  # it makes two


@dataclasses.dataclass(frozen=True)
class BatchDiffersFromLoop(Extragradient):
    def step(self, problem, z, state):
        z_next, state_next = super().step(problem, z, state)
        shift = 1e-6 * (problem.batch_size - 1)  # depends on the batch size
        return tuple(b + shift for b in z_next), state_next


@dataclasses.dataclass(frozen=True)
class MovesStoppedInstances(Extragradient):
    def step(self, problem, z, state):  # updates z in place: the driver's frozen copy moves with it
        z_next, state_next = super().step(problem, z, state)
        for old, new in zip(z, z_next):
            old.copy_(new)
        return z, state_next


@dataclasses.dataclass(frozen=True)
class SyncsWithTheHost(Extragradient):
    def step(self, problem, z, state):
        float(z[0].sum())
        return super().step(problem, z, state)


class NotFrozen(saddle.Solver):
    """Extragradient's steps in a plain class: its settings could be changed after construction."""

    category, calls_per_step, calls_at_init, converges_on = "first-order", 2, 1, ("monotone",)

    def __init__(self):
        self.inner = Extragradient()

    def init(self, problem, z0):
        return self.inner.init(problem, z0)

    def step(self, problem, z, state):
        return self.inner.step(problem, z, state)


@pytest.mark.parametrize("broken,check", [
    (MutatesItsInput(), "no_mutation"),
    (MiscountsCalls(), "exact_counts"),
    (BatchDiffersFromLoop(), "batch_equals_loop"),
    (MovesStoppedInstances(), "stopped_instances_stay"),
    (SyncsWithTheHost(), "no_host_syncs"),
    (NotFrozen(), "metadata"),
])
def test_check_solver_fails_naming_the_check(broken, check):
    with pytest.raises(AssertionError, match=rf"(?m)^{check} \["):
        check_solver(broken, checks=[check])
    report = check_solver(broken, checks=[check], raise_on_failure=False)
    assert [r.check for r in report.failed] == [check]
    # The intact solver passes the same check.
    assert not check_solver(Extragradient(), checks=[check], raise_on_failure=False).failed


def test_a_solver_that_does_not_converge_fails_the_convergence_check():
    @dataclasses.dataclass(frozen=True)
    class TooLongSteps(Extragradient):  # eta = 50 / L: the promise of converges_on does not hold
        step_size: object = None

        def init(self, problem, z0):
            return super().init(problem, z0)._replace(step_size=50.0 / problem.lipschitz())

    report = check_solver(TooLongSteps(), families=["bilinear"], checks=["converges"], raise_on_failure=False)
    assert [r.check for r in report.failed] == ["converges"]
    assert re.search("status: instances .* did not converge", report.failed[0].message)


def test_checks_skip_with_the_solvers_reason():
    with pytest.raises(SkipCheck, match="pdhg needs a BilinearProblem"):
        saddle.testing.check_batch_equals_loop(saddle.get_solver("pdhg"), FAMILIES["sharpness"])
    with pytest.raises(SkipCheck, match="theory promises no convergence"):
        saddle.testing.check_converges(saddle.get_solver("gda"), FAMILIES["bilinear"])


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="checks: unknown .'convergence'."):
        check_solver("extragradient", checks=["convergence"])
    with pytest.raises(ValueError, match="families: unknown .'bilnear'."):
        check_solver("extragradient", families=["bilnear"])


def test_assert_solution_names_the_measure_that_fails():
    problem = FAMILIES["bilinear"]()
    sol = saddle.solve(problem, "extragradient", tol=1e-3, max_iters=5000)
    saddle.testing.assert_solution(sol, problem, distance=1e-2)
    # The distance is independent: recomputed from the reference solution (linear solve).
    distance = torch.sqrt(sum((a - b).square().sum(-1) for a, b in zip(sol.z, problem.reference.solution)))
    with pytest.raises(AssertionError, match=r"distance to the reference: .* > 1e-12 at instances \[0, 1, 2, 3\]"):
        saddle.testing.assert_solution(sol, problem, distance=1e-12)
    assert (distance > 1e-12).all()
    with pytest.raises(AssertionError, match="residual"):
        saddle.testing.assert_solution(sol, problem, residual=1e-12)


@saddle.testing.parametrize_with_checks(["optimistic", "pdhg"], families=["quadratic", "sharpness"],
                                        checks=["batch_equals_loop"])
def test_parametrize_with_checks(solver, check):
    # Four cases; pdhg on the sharpness family skips with pdhg's reason (it needs a BilinearProblem).
    check(solver)


def test_parametrize_with_checks_lists_the_cases():
    mark = saddle.testing.parametrize_with_checks(["optimistic"], families=["quadratic", "xy"],
                                                  checks=["metadata", "no_mutation"])
    assert mark.kwargs["ids"] == ["optimistic-metadata", "optimistic-no_mutation-quadratic",
                                  "optimistic-no_mutation-xy"]


# -- docs/contributing.md: its code blocks run, in order, as one script ---------------------------

def test_contributing_walk_throughs_run(monkeypatch):
    text = (ROOT / "docs" / "contributing.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 5
    module = types.ModuleType("contributing")  # dataclasses look their module up in sys.modules
    monkeypatch.setitem(sys.modules, "contributing", module)
    exec(compile("\n".join(blocks), "docs/contributing.md", "exec"), module.__dict__)
    assert "popov" not in saddle.solver_names()  # unregistered after its block


def test_solver_table_has_a_row_per_registered_solver():
    table = saddle.solvers.base.solver_table()
    rows = re.findall(r"^\| `(\w+)` \|", table, flags=re.M)
    assert rows == saddle.solver_names()
    assert "| `extragradient` | `Extragradient` | first-order | 2 | 1 | no | monotone |" in table


# -- check_set: passes on the library's sets (test_conformance), fails naming the check on broken ones ------

class _Shrinking(saddle.ConstraintSet):
    """Not a projection: halves every point (idempotent nowhere but 0)."""

    def project(self, u):
        return 0.5 * u


class _Expanding(saddle.Box):
    """A box whose 'projection' triples the interior: not non-expansive (nor idempotent)."""

    def project(self, u):
        return (3 * u).clamp(self.lo, self.hi)


class _WrongRows(saddle.Box):
    """Per-instance bounds whose select keeps the whole batch's first row: select does not take rows."""

    def select(self, index):
        return saddle.Box(self.lo[:1], self.hi)


class _FalselySeparable(saddle.Ball):
    separable = True


class _WrongJacobian(saddle.Box):
    def project_jvp(self, u, v):
        return v  # ignores the clamp


@pytest.mark.parametrize("broken, check", [
    (_Shrinking(), "projection"),
    (_Expanding(-100.0, 100.0), "nonexpansive"),
    (_WrongRows(torch.tensor([-3.0, -0.1, -1.0], dtype=torch.float64), 0.5), "select"),
    (_FalselySeparable(1.0), "separable"),
    (_WrongJacobian(-0.5, 0.5), "project_jvp"),
])
def test_check_set_fails_naming_the_broken_check(broken, check):
    report = saddle.testing.check_set(broken, raise_on_failure=False)
    assert check in {r.check for r in report.failed}, str(report)
    with pytest.raises(AssertionError, match=check):
        saddle.testing.check_set(broken)
    assert str(report).startswith("check_set(")
