"""Validation helpers shared by the solvers (package-internal)."""

from __future__ import annotations

import math
import os
import sys
import warnings
from numbers import Integral, Real

import torch
from torch import Tensor

from ..stepsize import Constant

__all__ = ["per_instance", "check_flag", "check_choice", "check_integer", "check_number", "check_positive",
           "positive_steps", "in_interval", "STEP", "renamed_setting"]


def per_instance(value, name: str, solver: str, problem, *, dtype=None) -> Tensor:
    """A solver's setting (a float, a ``(B,)`` tensor or a `Constant`) as a ``(B,)`` tensor.

    On the problem's device, in ``dtype`` (default: the problem's). A 1-D
    tensor whose length is not the batch size raises ``ValueError`` naming
    ``solver`` and ``name``; the values are the caller's to check.
    """
    if isinstance(value, Constant):
        value = value.value
    B = problem.batch_size
    dtype = problem.dtype if dtype is None else dtype
    if isinstance(value, Tensor):
        t = value.detach().to(problem.device, dtype)
    else:
        t = torch.as_tensor(value, dtype=dtype, device=problem.device)
    if t.dim() == 1 and t.shape[0] != B:
        raise ValueError(f"{solver}: {name} has shape {tuple(t.shape)}; a per-instance setting must have shape "
                         f"(B,) = ({B},)")
    return t.expand(B).clone()


# -- settings: each check raises TypeError for a wrong type, ValueError for a wrong value,
# -- naming the solver, the setting and what it accepts.


def check_flag(solver: str, name: str, value, *, allow_none: bool = False) -> None:
    """``value`` must be True or False (or None when ``allow_none``)."""
    if not (isinstance(value, bool) or (allow_none and value is None)):
        allowed = "True, False or None" if allow_none else "True or False"
        raise TypeError(f"{solver}: {name} must be {allowed}, got {value!r}")


def check_choice(solver: str, name: str, value, choices: tuple) -> None:
    """``value`` must be one of ``choices`` (strings or None)."""
    if not any(value is c or (isinstance(value, str) and value == c) for c in choices):
        raise ValueError(f"{solver}: {name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def _prefix(solver: str) -> str:
    return f"{solver}: " if solver else ""


def check_integer(solver: str, name: str, value, *, minimum: int, batched: bool = False,
                  allow_none: bool = False, expected: str | None = None) -> None:
    """``value`` must be an integer (not a bool) ``>= minimum``.

    With ``batched``, also a 0-d or ``(B,)`` integer tensor of them (the batch
    size is checked where the solver knows it); with ``allow_none``, also None.
    ``expected`` replaces the description of what is accepted in the messages.
    """
    if value is None and allow_none:
        return
    if expected is None:
        expected = f"an integer >= {minimum}" + (" or a (B,) integer tensor of them" if batched else "")
    where = f"{_prefix(solver)}{name}"
    if isinstance(value, Tensor) and batched:
        if value.is_floating_point() or value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where} must be {expected}, got a {value.dtype} tensor")
        if value.dim() > 1:
            raise ValueError(f"{where} must be {expected}, got shape {tuple(value.shape)}")
        too_small = bool((value < minimum).any())
    elif isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{where} must be {expected}, got {value!r}")
    else:
        too_small = value < minimum
    if too_small:
        raise ValueError(f"{where} must be {expected}, got {value!r}")


def check_number(solver: str, name: str, value, *, low: float = -math.inf, high: float = math.inf,
                 include_low: bool = False, include_high: bool = False, batched: bool = False,
                 allow_none: bool = False, expected: str | None = None) -> None:
    """``value`` must be a finite real number (not a bool) between ``low`` and ``high``.

    The interval is open unless ``include_low`` / ``include_high``. With
    ``batched``, ``value`` may also be a 0-d or ``(B,)`` real tensor whose every
    entry is such a number (the batch size is checked by `per_instance`); with
    ``allow_none``, also None. A wrong type is a ``TypeError``, a wrong shape or
    value a ``ValueError``, each naming ``solver`` (omitted when "") and
    ``name``. ``expected`` replaces the description of what is accepted.
    """
    if value is None and allow_none:
        return
    interval = _interval(low, high, include_low, include_high)
    where = f"{_prefix(solver)}{name}"
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor) if batched else Real):
        kinds = "a number or a (B,) tensor" if batched else f"a number{interval and ' ' + interval}"
        raise TypeError(f"{where} must be {expected or kinds}, got {type(value).__name__} {value!r}")
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{where} must be {expected or 'real'}, got a {value.dtype} tensor")
        if value.dim() > 1:
            raise ValueError(f"{where} must be {expected or 'a number or a (B,) tensor'}, got shape "
                             f"{tuple(value.shape)}")
        if value.device.type == "meta":
            raise ValueError(f"{where} is on the meta device, which holds no values")
    if not in_interval(value, low, high, include_low, include_high):
        if expected is None:
            bounded = math.isfinite(low) and math.isfinite(high)
            expected = (f"a finite number{interval and ' ' + interval}" if not batched
                        else interval if bounded else f"finite{interval and ' and ' + interval}")
        raise ValueError(f"{where} must be {expected}, got {value!r}")


def in_interval(value, low: float, high: float, include_low: bool, include_high: bool) -> bool:
    """Whether ``value`` (a number or a tensor) is finite and between ``low`` and ``high``, everywhere."""
    if not isinstance(value, Tensor):
        try:
            value = torch.tensor(float(value), dtype=torch.float64)
        except OverflowError:  # an int beyond the float range
            return False
    t = value.detach().double()
    above = t >= low if include_low else t > low
    below = t <= high if include_high else t < high
    return bool((torch.isfinite(t) & above & below).all())


def _interval(low: float, high: float, include_low: bool, include_high: bool) -> str:
    """``"in [0, 1)"``, ``"> 0"``, ``"<= 1"`` or "" (the bounds as given: ``0`` or ``0.0``)."""
    if math.isfinite(low) and math.isfinite(high):
        return f"in {'[' if include_low else '('}{low}, {high}{']' if include_high else ')'}"
    if math.isfinite(low):
        return f"{'>=' if include_low else '>'} {low}"
    if math.isfinite(high):
        return f"{'<=' if include_high else '<'} {high}"
    return ""


#: How the step sizes' checks describe them.
STEP = "positive and finite (a number or a (B,) tensor)"


def check_positive(solver: str, name: str, value, *, allow_none: bool = True,
                   expected: str = "None, a positive number or a (B,) tensor of positive numbers") -> None:
    """``value`` must be a positive finite number, or a 0-d or ``(B,)`` real tensor of them (or None)."""
    check_number(solver, name, value, low=0, batched=True, allow_none=allow_none, expected=expected)


def positive_steps(solver: str, name: str, value, problem, *, expected: str = STEP) -> Tensor:
    """A positive step setting (a number, a ``(B,)`` tensor or a `Constant`) as a checked ``(B,)`` tensor.

    In the problem's device and dtype (`per_instance`); the values are checked
    before and after the conversion (a step that rounds to 0 or overflows in
    the problem's dtype is refused too).
    """
    check_positive(solver, name, value.value if isinstance(value, Constant) else value, allow_none=False,
                   expected=expected)
    t = per_instance(value, name, solver, problem)
    if not in_interval(t, 0, math.inf, False, False):
        raise ValueError(f"{_prefix(solver)}{name} must be {expected}, got {value!r} (in {problem.dtype})")
    return t


def renamed_setting(solver, old: str, new: str, default) -> None:
    """Accept a setting under its deprecated name ``old`` for one release, with a ``DeprecationWarning``.

    For a frozen dataclass solver that keeps ``old`` as a field defaulting to None (so `get_solver`,
    ``solve(..., old=...)`` and ``dataclasses.replace`` still take it): the value moves to ``new`` and
    ``old`` goes back to None, so both spellings make equal solvers. Call it first in ``__post_init__``.
    Giving both names is a ``TypeError``.
    """
    value = getattr(solver, old)
    if value is None:
        return
    if getattr(solver, new) != default:
        raise TypeError(f"{solver.name}: give {new} only ({old} is its deprecated name)")
    warnings.warn(f"{solver.name}: {old} is deprecated and will be removed in the next release; use {new}",
                  DeprecationWarning, stacklevel=_caller_outside_saddle())
    object.__setattr__(solver, new, value)
    object.__setattr__(solver, old, None)


_SADDLE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def _caller_outside_saddle() -> int:
    """The ``stacklevel`` that attributes a warning to the first caller outside saddle.

    It skips saddle's own frames (``solve`` -> `get_solver` -> ``__post_init__`` -> ...) and the
    ``__init__`` a dataclass writes, so the user's line is reported however deep the call came from.
    """
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and (frame.f_code.co_filename.startswith(_SADDLE)
                                        or frame.f_code.co_filename == "<string>"):
        frame, level = frame.f_back, level + 1
    return level
