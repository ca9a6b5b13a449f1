"""Problem families with exact references: ``problems.get(name, **kw)``, ``problems.names()``.

Every family makes a batch of B instances (``batch_size=B``, ``seed=``,
``device=``, ``dtype=``; float64 by default, since references are exact) and
knows its exact answer (``problem.reference``): closed forms, HiGHS LPs
through `scipy.optimize.linprog`, or cvxpy.
"""

from __future__ import annotations

from typing import Callable

_REGISTRY: dict[str, Callable] = {}


def register(name: str) -> Callable[[Callable], Callable]:
    """Decorator: make a problem factory available as ``problems.get(name, **kw)``."""

    def wrap(factory: Callable) -> Callable:
        if name in _REGISTRY:
            raise ValueError(f"problem name {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return wrap


def names() -> list[str]:
    """Every registered problem name, sorted."""
    return sorted(_REGISTRY)


def get(name: str, **kwargs):
    """Make a batch of the named problem, e.g. ``get("matrix_game", n=50, batch_size=64, seed=0)``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown problem {name!r}; registered problems: {', '.join(names())}")
    return _REGISTRY[name](**kwargs)


from . import bilinear, distributed, dro, gan, linear_programs, matrix_games, nonmonotone, quadratic, sharpness  # noqa: E402,F401  (registers the families)

__all__ = ["get", "names", "register"]
