"""Test helpers shared by the test modules (test modules import from here, never from each other).

- random SPD systems and a counting matrix-vector product (conjugate gradients);
- the registered solvers, one small problem each applies to and its settings (from `saddle.testing`);
- processes that run this checkout.
"""

from __future__ import annotations

import os

import torch

import saddle
import saddle.testing
# The conformance suite's helpers live in the library (saddle.testing), for users' tests too.
from saddle.testing import dro_problem, instance  # noqa: F401


# -- linear systems (conjugate gradients) --------------------------------------------------------

def random_spd(B: int, n: int, seed: int, cond: float = 100.0) -> torch.Tensor:
    """Random symmetric positive definite matrices with eigenvalues in [1, cond]."""
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(B, n, n, dtype=torch.float64, generator=gen))
    eig = 1.0 + (cond - 1.0) * torch.rand(B, n, dtype=torch.float64, generator=gen)
    eig[:, 0], eig[:, -1] = 1.0, cond
    A = q @ torch.diag_embed(eig) @ q.mT
    return 0.5 * (A + A.mT)


class Counted:
    """``v -> A v`` for a batch of matrices, counting the calls."""

    def __init__(self, A: torch.Tensor):
        self.A, self.calls = A, 0

    def __call__(self, v: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return (self.A @ v.unsqueeze(-1)).squeeze(-1)


def random_vectors(B: int, n: int, seed: int) -> torch.Tensor:
    """``(B, n)`` standard normal float64 vectors from the seed."""
    return torch.randn(B, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


# -- the registered solvers, one small problem each applies to, and its settings --------------------
# (from the solvers' metadata and saddle.testing: a new solver is picked up with no edit here)

ALL_SOLVERS = set(saddle.solver_names())
# Every solver but the stochastic and distributed ones (which sample on the host or need workers).
KNOWN = {s for s in ALL_SOLVERS if type(saddle.testing.conformance_solver(s)).category
         not in ("stochastic", "distributed")}


def settings_for(solver: str) -> dict:
    """The settings `saddle.testing` runs a registered solver with (steps where it has no default)."""
    return dict(saddle.testing.SETTINGS.get(solver, {}))


def problem_for(solver: str):
    """A small batch of the first conformance family the solver applies to."""
    order = ("matrix_game", "quadratic_box", "quadratic", "sharpness", "dro", "distributed", "linear_program")
    return saddle.testing.representative(saddle.testing.conformance_solver(solver), order)()


# -- processes that run this checkout ------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_env(**variables: str) -> dict[str, str]:
    """The environment of a process that runs `saddle.distributed` from this checkout, plus ``variables``."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **variables)
