"""`WorkingSet`: the instances a solve steps, gathered into a smaller batch as the others finish."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .point import Point, detached, put_rows, take_rows

__all__ = ["WorkingSet"]


class WorkingSet:
    """The instances being stepped: all B of ``problem``, or after `narrow` its rows ``rows``.

    After a narrowing, ``stepped`` is ``problem.select(rows)``: the solve's point and solver state
    are those of the stepped rows, and ``kept`` holds the full batch's point and state with the
    finished instances' final values, put back (bitwise) by `results`.
    """

    def __init__(self, problem):
        self.problem, self.stepped = problem, problem
        self.rows: Tensor | None = None  # (Bk,) rows of the batch being stepped; None: all
        self.kept: tuple | None = None

    @property
    def narrowed(self) -> bool:
        """Whether the batch being stepped is a selection of the problem's instances."""
        return self.rows is not None

    def local(self, mask: Tensor) -> Tensor:
        """The stepped rows' entries ``(Bk,)`` of a per-instance ``(B,)`` vector."""
        return mask if self.rows is None else mask.index_select(0, self.rows)

    def full(self, local: Tensor, base: Tensor) -> Tensor:
        """A ``(B,)`` vector: the stepped rows' values ``local`` ``(Bk,)``, ``base``'s elsewhere."""
        return local if self.rows is None else base.index_copy(0, self.rows, local.to(base.dtype))

    def results(self, z: Point, state: Any) -> tuple[Point, Any]:
        """The full batch's point and state: the stepped rows' ``z, state``, the others' as kept."""
        return (z, state) if self.rows is None else put_rows(self.kept, self.rows, (z, state), self.problem.batch_size)

    def narrow(self, active: Tensor, z: Point, state: Any) -> tuple[Point, Any] | None:
        """Step only the ``active`` ``(B,)`` instances from now on; their point and state.

        None (and nothing changes) when the problem cannot select its instances: its ``select``
        raises, or the selected problem's operator is not the rows of the full one's.
        """
        stepping = self.local(active)
        rows = stepping.nonzero().squeeze(-1)
        new_rows = rows if self.rows is None else self.rows.index_select(0, rows)
        kept = self.results(z, state)
        try:
            selected = self.problem.select(new_rows)
            _check_selection(self.problem, selected, kept[0], new_rows)
        except Exception:  # a problem that cannot select its instances (rightly): step the batch as it is
            return None
        self.rows, self.stepped, self.kept = new_rows, selected, kept
        return take_rows((z, state), rows, stepping.shape[0])


def _check_selection(problem, selected, z: Point, rows: Tensor) -> None:
    """Raise ``ValueError`` unless the operator of ``selected`` (``problem.select(rows)``) is the rows of
    ``problem``'s at z: a user's problem whose ``select`` misses data of its own is not compacted."""
    full = problem.F(z)
    part = selected.F(tuple(t.index_select(0, rows) for t in z))
    for a, b in zip(detached(full), detached(part)):
        a = a.index_select(0, rows)
        tol = 1e3 * torch.finfo(a.dtype).eps
        if a.shape != b.shape or not torch.allclose(a, b, rtol=tol, atol=tol * float(a.abs().max().clamp_min(1))):
            raise ValueError(f"{problem.name}.select does not select its operator's data")
