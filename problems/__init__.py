"""Problem families with exact references: ``problems.get(name, **kw)``, ``problems.names()``.

Imported as ``saddle.problems`` (``from saddle import problems``): this folder
is installed under the library, so it cannot collide with the unrelated
``problems`` distribution on PyPI or with a ``problems.py`` of your own. The
top-level name ``problems`` is a deprecated alias of ``saddle.problems`` for
one release (importing it warns and hands back the same modules).

Every family makes a batch of B instances (``batch_size=B``, ``seed=``,
``device=``, ``dtype=``; float64 by default, since references are exact) and
knows its exact answer (``problem.reference``): closed forms, HiGHS LPs
through `scipy.optimize.linprog`, or cvxpy.
"""

from __future__ import annotations

if __name__ == "problems":  # the deprecated top-level name: become saddle.problems (one set of modules)
    import importlib as _importlib

    _importlib.import_module("saddle.problems")._alias_as_problems()

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


def _alias_as_problems() -> None:
    """Make ``import problems`` (and ``problems.<module>``) hand back ``saddle.problems``, with a warning."""
    import sys
    import warnings

    warnings.warn("the top-level package `problems` is deprecated and will be removed in the next release: "
                  "use `from saddle import problems` (the same modules)", DeprecationWarning, stacklevel=3)
    prefix = __name__ + "."
    for name, module in list(sys.modules.items()):
        if name.startswith(prefix):
            sys.modules["problems." + name[len(prefix):]] = module
    sys.modules["problems"] = sys.modules[__name__]
