"""Checkpoints of a running `saddle.solve`: written atomically, resumed bit-identically.

A checkpoint holds everything the driver loop carries between checks: the
point, the solver's state (a NamedTuple of tensors), the per-instance status,
activity and iteration counts, the loop counter, the divergence floor and the
history so far, plus the torch CPU (and CUDA) random states and the solver's
settings (to refuse resuming with a different solver). It is written with
``torch.save`` to a temporary file in the same folder and renamed over the
target (``os.replace``, atomic on POSIX and Windows), so a crash while
writing leaves the previous checkpoint intact.

The problem is not saved: resume with the same problem (same data, same
device). Random generators held by a problem or operator (stochastic
oracles) are saved only when the problem exposes ``rng_state()`` /
``set_rng_state(state)``.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "CHECKPOINT_VERSION"]

CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any]) -> None:
    """Write ``payload`` (plus random states and a version tag) to ``path`` atomically."""
    path = Path(path)
    payload = dict(payload, version=CHECKPOINT_VERSION, torch_rng=torch.get_rng_state())
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint` and restore the random states.

    The file holds solver states (NamedTuples of saddle's classes), so it is
    read with ``weights_only=False``: load only checkpoints you wrote.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"resume: no checkpoint file at {str(path)!r}")
    payload = torch.load(path, map_location=map_location, weights_only=False)
    if not isinstance(payload, dict) or payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"resume: {str(path)!r} is not a saddle checkpoint (version {CHECKPOINT_VERSION})")
    torch.set_rng_state(payload["torch_rng"])
    if "cuda_rng" in payload and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(payload["cuda_rng"])
    return payload
