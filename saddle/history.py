"""`History`: the measures a solve records at its checks, in bounded memory."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["History"]


class History:
    """The rows (one dict per check: iteration, time, operator calls, measures) of a solve's checks.

    Every ``stride``-th check is kept; when ``max_rows`` rows are held, every other row is dropped
    and the stride doubles, so the rows stay evenly spread over the run in ``O(max_rows * B)``
    memory. The last check is always the last row of `finished_rows`.

    ``rows`` and ``state`` (stride, checks seen, the last row) are what a checkpoint saves.
    """

    def __init__(self, max_rows: int, rows: list[dict] | None = None, state: dict | None = None):
        self.max_rows = max_rows
        self.rows = [] if rows is None else rows
        self.state = {"stride": 1, "checks": 0, "last": None} if state is None else state

    def record(self, row: dict) -> None:
        """Keep ``row`` if its check is a multiple of the stride; when full, first thin the rows out."""
        s = self.state
        if s["checks"] % s["stride"] == 0:
            if len(self.rows) >= self.max_rows:
                del self.rows[1::2]
                s["stride"] *= 2
            if s["checks"] % s["stride"] == 0:
                self.rows.append(row)
        s["checks"] += 1
        s["last"] = row

    def stacked(self) -> dict[str, Tensor]:
        """The rows as ``(R,)`` / ``(R, B)`` tensors, the last check last: ``iteration``, ``time``, the
        operator calls and every measure recorded at every check (``Solution.history``)."""
        rows, last = self.rows, self.state["last"]
        if rows and last["iteration"] != rows[-1]["iteration"]:
            rows[-1 if len(rows) >= self.max_rows else len(rows):] = [last]
        out: dict[str, Tensor] = {
            "iteration": torch.tensor([r["iteration"] for r in rows]),
            "time": torch.tensor([r["time"] for r in rows], dtype=torch.float64),
        }
        for key in [k for k in rows[0] if k not in ("iteration", "time")] if rows else []:
            values = [r[key] for r in rows]
            if all(v is not None for v in values):
                out[key] = torch.stack([v.detach() for v in values])
        return out
