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
           "renamed_setting"]


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


def check_integer(solver: str, name: str, value, *, minimum: int) -> None:
    """``value`` must be an integer (not a bool) ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{solver}: {name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{solver}: {name} must be an integer >= {minimum}, got {value!r}")


def check_number(solver: str, name: str, value, *, low: float = -math.inf, high: float = math.inf) -> None:
    """``value`` must be a finite real number (not a bool) in the open interval ``(low, high)``."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{solver}: {name} must be a number in ({low}, {high}), got {value!r}")
    if not (low < value < high and math.isfinite(value)):
        raise ValueError(f"{solver}: {name} must be a finite number in ({low}, {high}), got {value!r}")


def check_positive(solver: str, name: str, value) -> None:
    """``value`` must be None, a positive finite number, or a 0-d or ``(B,)`` real tensor of them."""
    if value is None:
        return
    expected = "None, a positive number or a (B,) tensor of positive numbers"
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{solver}: {name} must be {expected}, got {type(value).__name__}")
    if isinstance(value, Tensor):
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{solver}: {name} must be {expected}, got a {value.dtype} tensor")
        if value.dim() > 1:
            raise ValueError(f"{solver}: {name} must be {expected}, got shape {tuple(value.shape)}")
        if value.device.type == "meta":
            raise ValueError(f"{solver}: {name} is on the meta device, which holds no values")
    t = torch.as_tensor(value).detach()
    if not bool(torch.isfinite(t).all()) or bool((t <= 0).any()):
        raise ValueError(f"{solver}: {name} must be {expected}, got {value!r}")


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
