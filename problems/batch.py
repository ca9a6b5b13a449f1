"""Shared arguments of every problem factory: batch size, seed, device and dtype."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch


@dataclass(frozen=True)
class Batch:
    """How to make a batch: B instances from ``seed``, placed on ``device`` with ``dtype``.

    Random data is drawn on the CPU in float64 from a generator seeded with
    ``seed`` and then moved, so the same seed gives the same problems on every
    device and in every dtype.
    """

    size: int
    seed: int
    device: torch.device
    dtype: torch.dtype

    def generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def place(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(device=self.device, dtype=self.dtype)


def make_batch(batch_size=1, seed=0, device=None, dtype=torch.float64) -> Batch:
    """Validate the common factory arguments (``ValueError`` / ``TypeError`` naming the argument)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    if isinstance(seed, bool) or not isinstance(seed, Integral) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    try:
        device = torch.device("cpu" if device is None else device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a valid torch device") from err
    return Batch(int(batch_size), int(seed), device, dtype)


def check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or value == float("inf"):
        raise ValueError(f"{name} must be a positive finite number, got {value!r}")
    return float(value)
