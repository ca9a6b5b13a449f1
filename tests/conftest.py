"""Shared fixtures: devices (CPU, and CUDA when present) and dtypes."""

from __future__ import annotations

import pytest
import torch

CUDA = torch.cuda.is_available()

# The test problems are tiny: one thread is as fast, and it keeps the timings
# stable when other processes share the two cores (torch's thread pool waits
# for a descheduled worker at every parallel region, milliseconds a call).
# The cores are used by running the tests in one process per core instead
# (pytest-xdist, `-n auto` in pyproject.toml): each worker imports this file.
torch.set_num_threads(1)

DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda,
                                              pytest.mark.skipif(not CUDA, reason="no CUDA device")])]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    """Each test using it runs on the CPU and, when a GPU is present, on CUDA."""
    return request.param


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request) -> torch.dtype:
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
