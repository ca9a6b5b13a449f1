"""Plots: convergence curves of solves and trajectories of 2-D games (matplotlib).

matplotlib is imported when a function is called, so ``import saddle`` stays
light; pass ``ax`` to draw into an existing figure.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import Tensor

from .solution import Solution
from .solve import solve

__all__ = ["convergence", "trajectories", "trace"]

_X_LABELS = {"operator_calls": "operator calls", "iteration": "iterations", "time": "seconds"}


def convergence(solutions: Mapping[str, Solution], *, measure: str | None = None, x: str = "operator_calls",
                ax=None, band: bool = True, title: str | None = None):
    """Plot a convergence measure of several solves against operator calls, iterations or time.

    Args:
        solutions: ``{label: Solution}``, each solved with ``history=True``.
        measure: ``"gap"``, ``"residual"`` or ``"distance"``; default ``"gap"``
            where every solution recorded it, else ``"residual"``.
        x: ``"operator_calls"`` (per instance), ``"iteration"`` or ``"time"``.
        ax: a matplotlib ``Axes`` to draw into (default: a new figure).
        band: shade the range over the batch around the median curve.
        title: the axes title.

    Each curve is the median over the B instances of the measure at every
    check; the band spans the minimum to the maximum. Returns the ``Axes``.
    """
    import matplotlib.pyplot as plt

    if x not in _X_LABELS:
        raise ValueError(f"x must be one of {sorted(_X_LABELS)}, got {x!r}")
    if not isinstance(solutions, Mapping) or not solutions:
        raise TypeError("solutions must be a non-empty mapping {label: Solution}")
    if measure is None:
        measure = "gap" if all("gap" in s.history for s in solutions.values()) else "residual"
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    for label, sol in solutions.items():
        if not isinstance(sol, Solution):
            raise TypeError(f"solutions[{label!r}] must be a Solution, got {type(sol).__name__}")
        h = sol.history
        if measure not in h:
            raise ValueError(f"solutions[{label!r}] has no {measure!r} history; solve with history=True "
                             "on a problem where that measure is available")
        values = h[measure].double().cpu()
        if x == "operator_calls":
            xs = h["operator_calls"].double().cpu().median(dim=1).values
        else:
            xs = h[x].double().cpu()
        median = values.median(dim=1).values
        (line,) = ax.plot(xs.numpy(), median.clamp_min(1e-300).numpy(), label=label)
        if band and values.shape[1] > 1:
            ax.fill_between(xs.numpy(), values.amin(1).clamp_min(1e-300).numpy(), values.amax(1).numpy(),
                            color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel(_X_LABELS[x])
    ax.set_ylabel({"gap": "duality gap", "residual": "natural residual", "distance": "distance to solution"}
                  .get(measure, measure))
    if title:
        ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend()
    return ax


def trace(problem, solver="extragradient", iterations: int = 100, **settings) -> Tensor:
    """The iterates of a solve, for plotting: a ``(T + 1, B, N)`` tensor (N = sum of block sizes).

    Runs ``saddle.solve`` for ``iterations`` steps with ``tol=0`` and records
    the reported point (``Solution.z``'s definition: averaged for averaging
    solvers) after every iteration. Diverging instances stop moving; if every
    instance has stopped before ``iterations``, the last point is repeated.
    """
    points: list[Tensor] = []

    def record(progress):
        points.append(torch.cat([b.detach() for b in progress.z], dim=-1).clone())

    solve(problem, solver, max_iters=iterations, tol=0.0, check_every=1, check_growth=0, callback=record, history=False,
          **settings)
    points += [points[-1]] * (iterations + 1 - len(points))
    return torch.stack(points)


def trajectories(paths: Mapping[str, Tensor], *, ax=None, solution=None, instance: int = 0,
                 labels: tuple[str, str] = ("x", "y"), title: str | None = None):
    """Plot 2-D trajectories, one per method, with their start and the solution.

    Args:
        paths: ``{label: tensor}`` with shapes ``(T, 2)`` or ``(T, B, 2)`` (as
            returned by `trace` for a game with scalar x and y).
        ax: a matplotlib ``Axes`` (default: a new figure).
        solution: the point to mark, a length-2 sequence or tensor (or None).
        instance: which instance to draw from batched paths.
        labels: the axis labels.

    Returns the ``Axes``.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    for label, path in paths.items():
        path = torch.as_tensor(path).detach().double().cpu()
        if path.dim() == 3:
            path = path[:, instance]
        if path.dim() != 2 or path.shape[1] != 2:
            raise ValueError(f"paths[{label!r}] must have shape (T, 2) or (T, B, 2), got {tuple(path.shape)}")
        (line,) = ax.plot(path[:, 0].numpy(), path[:, 1].numpy(), "-", lw=1.2, label=label)
        ax.plot(path[-1, 0].item(), path[-1, 1].item(), "o", color=line.get_color(), ms=4)
        ax.plot(path[0, 0].item(), path[0, 1].item(), "s", color="black", ms=5)
    if solution is not None:
        s = torch.as_tensor(solution).double().reshape(-1)
        ax.plot(s[0].item(), s[1].item(), "*", color="red", ms=12, label="solution")
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_aspect("equal", adjustable="datalim")
    if title:
        ax.set_title(title)
    ax.legend(loc="best")
    return ax
