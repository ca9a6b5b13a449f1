"""The shared checks of settings (``saddle/solvers/_validate.py``) and that every solver uses them.

The bounds, types and shapes each check accepts are compared with the
interval written out by hand; the messages name the setting and what it
accepts. The solvers' and optimizers' own checks are exercised through their
public constructors, where the answer is the same rule stated in the
docstrings (e.g. ``momentum`` in ``[0, 1)``, ``minibatch >= 1``).
"""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest
import torch
from torch import nn

import saddle
import saddle.optim
from saddle import problems
from saddle.solvers._validate import check_integer, check_number, in_interval, positive_steps

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("low,high,include_low,include_high", [
    (0, 1, False, False), (0, 1, True, False), (0, 1, False, True), (0, 1, True, True),
    (0, math.inf, False, False), (1, math.inf, True, False), (-math.inf, math.inf, False, False),
])
def test_check_number_accepts_exactly_its_interval(low, high, include_low, include_high):
    def inside(v):  # the interval written out
        return (math.isfinite(v) and (v >= low if include_low else v > low)
                and (v <= high if include_high else v < high))

    for v in [-1.0, 0.0, 1e-300, 0.5, 1.0, 1.5, 1e300, math.inf, -math.inf, math.nan]:
        assert in_interval(v, low, high, include_low, include_high) == inside(v), v
        if inside(v):
            check_number("s", "x", v, low=low, high=high, include_low=include_low, include_high=include_high)
        else:
            with pytest.raises(ValueError, match=r"^s: x must be .*, got "):
                check_number("s", "x", v, low=low, high=high, include_low=include_low, include_high=include_high)


def test_check_number_messages_types_and_batches():
    with pytest.raises(TypeError, match=r"s: x must be a number in \(0.0, 1.0\), got str"):
        check_number("s", "x", "0.5", low=0.0, high=1.0)
    with pytest.raises(ValueError, match=r"s: x must be a finite number in \(0.0, 1.0\)"):
        check_number("s", "x", 1.0, low=0.0, high=1.0)
    with pytest.raises(TypeError, match="s: x must be a number"):
        check_number("s", "x", True)
    with pytest.raises(TypeError, match="a number"):
        check_number("s", "x", torch.ones(2))  # a tensor only where batched
    check_number("s", "x", torch.tensor([0.5, 0.25]), low=0, high=1, batched=True)
    with pytest.raises(ValueError, match=r"s: x must be in \[0, 1\), got tensor"):
        check_number("s", "x", torch.tensor([0.5, 1.0]), low=0, high=1, include_low=True, batched=True)
    with pytest.raises(ValueError, match=r"s: x must be finite and > 0"):
        check_number("s", "x", torch.tensor([1.0, math.nan]), low=0, batched=True)
    with pytest.raises(ValueError, match="got shape"):
        check_number("s", "x", torch.ones(2, 2), low=0, batched=True)
    with pytest.raises(TypeError, match="torch.bool"):
        check_number("s", "x", torch.ones(2, dtype=torch.bool), batched=True)
    with pytest.raises(ValueError, match="meta device"):
        check_number("s", "x", torch.ones(2, device="meta"), batched=True)
    with pytest.raises(TypeError):
        check_number("s", "x", None)
    check_number("s", "x", None, allow_none=True)
    assert not in_interval(10**400, 0, math.inf, False, False)  # beyond the float range: not finite
    with pytest.raises(ValueError, match="^x must be"):
        check_number("", "x", -1.0, low=0)  # no solver: no prefix


def test_check_integer():
    check_integer("s", "k", 3, minimum=1)
    for bad, error in [(0, ValueError), (2.5, TypeError), (True, TypeError), ("3", TypeError)]:
        with pytest.raises(error, match="s: k must be an integer >= 1"):
            check_integer("s", "k", bad, minimum=1)
    check_integer("s", "k", torch.tensor([1, 5]), minimum=1, batched=True)
    with pytest.raises(ValueError, match="s: k must be an integer >= 1 or a"):
        check_integer("s", "k", torch.tensor([1, 0]), minimum=1, batched=True)
    with pytest.raises(TypeError, match="torch.float32"):
        check_integer("s", "k", torch.tensor([1.0]), minimum=1, batched=True)
    with pytest.raises(ValueError, match="s: k must be a positive integer"):
        check_integer("s", "k", 0, minimum=1, expected="a positive integer")


def test_positive_steps_refuse_a_step_that_vanishes_in_the_problems_dtype():
    problem = problems.get("bilinear", n=2, batch_size=3, dtype=torch.float32)
    eta = positive_steps("s", "step_size", torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64), problem)
    assert eta.dtype == torch.float32 and torch.equal(eta, torch.tensor([0.1, 0.2, 0.3]))
    assert torch.equal(positive_steps("s", "step_size", saddle.Constant(0.5), problem), torch.full((3,), 0.5))
    with pytest.raises(ValueError, match=r"s: step_size must be positive and finite .* \(in torch.float32\)"):
        positive_steps("s", "step_size", 1e-50, problem)  # 0 in float32
    with pytest.raises(ValueError, match=r"s: step_size has shape \(2,\)"):
        positive_steps("s", "step_size", torch.ones(2), problem)


# -- the solvers and optimizers use them: the rules their docstrings state ------------------------

@pytest.mark.parametrize("make,good,bad", [
    (lambda v: saddle.SAM(momentum=v), [0.0, 0.9], [1.0, -0.1, math.nan]),
    (lambda v: saddle.SAM(dampening=v), [0.0, 0.5], [1.0, -0.5]),
    (lambda v: saddle.SAM(weight_decay=v), [0.0, 1e-4], [-1e-4, math.inf]),
    (lambda v: saddle.ASAM(eta=v), [0.0, 0.01], [-0.01]),
    (lambda v: saddle.CGD(cg_tol=v), [0.0, 0.5], [1.0, -1e-3]),
    (lambda v: saddle.ACGD(beta=v), [0.0, 0.99], [1.0]),
    (lambda v: saddle.ACGD(eps=v), [1e-8], [0.0]),
    (lambda v: saddle.SEG(step_size=0.1, minibatch=v), [1, 7], [0]),
    (lambda v: saddle.DoubleStepSEG(step_size=0.1, update_decay=v), [0.5, 1.0], [1.5]),
    (lambda v: saddle.DoubleStepSEG(step_size=0.1, offset=v), [1.0, 3.0], [0.5]),
    (lambda v: saddle.VREG(step_size=0.1, probability=v), [None, 1.0, 0.5], [0.0, 1.5]),
    (lambda v: saddle.MASHA2(p=v), [None, 1.0], [0.0]),
    (lambda v: saddle.MASHA1(participation=v), [None, 2], [0]),
    (lambda v: saddle.MASHA1(step_size=v), [None, 0.1, torch.tensor([0.1, 0.2])], [0.0, -1.0]),
    (lambda v: saddle.Backtracking(shrink=v), [0.5], [0.0, 1.0]),
    (lambda v: saddle.Backtracking(growth=v), [1.0, 2.0], [0.5]),
    (lambda v: saddle.Constant(v), [0.1, torch.tensor([0.1, 0.2])], [0.0, -1.0, math.inf]),
    (lambda v: saddle.optim.SAM([nn.Parameter(torch.zeros(2))], torch.optim.SGD, lr=0.1, rho=v), [0.0, 0.05],
     [-0.05, math.inf]),
    (lambda v: saddle.optim.ExtraAdam([nn.Parameter(torch.zeros(2))], betas=(v, 0.999)), [0.0, 0.9], [1.0, -0.1]),
    (lambda v: saddle.optim.ExtraSGD([nn.Parameter(torch.zeros(2))], lr=v), [0.0, 0.1], [-0.1, math.nan]),
])
def test_settings_accept_their_stated_range(make, good, bad):
    for value in good:
        make(value)
    for value in bad:
        with pytest.raises(ValueError):
            make(value)


def test_no_private_copies_of_the_shared_checks_are_left():
    # The names the one module replaced; a new copy under one of them would be a second implementation.
    replaced = {"_check_value", "_check_cap", "_check_float", "_check_int", "_positive_steps", "_check_step",
                "_check_number", "_check_real", "_check_rho", "_check_eta", "_as_batch"}
    files = sorted((ROOT / "saddle" / "solvers").glob("*.py")) + sorted((ROOT / "saddle" / "optim").glob("*.py"))
    for path in files + [ROOT / "saddle" / "stepsize.py"]:
        defined = {node.name for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
        left = defined & replaced
        assert not left, f"{path.name} defines {sorted(left)}: use saddle/solvers/_validate.py"
