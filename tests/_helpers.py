"""Test helpers shared by the test modules (test modules import from here, never from each other).

- single instances of batched problems, and an operator that counts its calls;
- the conformance suite's problems and its solver families (which solver applies where);
- random SPD systems and a counting matrix-vector product (conjugate gradients).
"""

from __future__ import annotations

import os

import torch

import problems
import saddle
from saddle import Ball, BilinearProblem, Box, LinearProgram, Operator, Product, SaddleProblem, VIProblem
from saddle.terms import Linear, Quadratic, Zero


def _rows(t, i: int):
    """Row i of a per-instance tensor, or the tensor itself when it is shared (leading 1) or a float."""
    if not isinstance(t, torch.Tensor) or t.dim() == 0 or t.shape[0] == 1:
        return t
    return t[i:i + 1]


def _term(term, i):
    if isinstance(term, Zero):
        return term
    if isinstance(term, Linear):
        return Linear(_rows(term.c, i))
    if isinstance(term, Quadratic):
        return Quadratic(_rows(term.P, i), None if term.c is None else _rows(term.c, i))
    raise TypeError(type(term))


def _set(s, i):
    if isinstance(s, Box):
        return Box(_rows(s.lo, i), _rows(s.hi, i))
    if isinstance(s, Ball):
        return Ball(_rows(s.radius, i), s.p)
    return s


def instance(problem, i: int):
    """Instance i of a batched problem as a problem of batch size 1 (built from the same data)."""
    kw = dict(lipschitz=None if problem.lipschitz() is None else problem.lipschitz()[i:i + 1],
              strong_monotonicity=None if problem.strong_monotonicity() is None
              else problem.strong_monotonicity()[i:i + 1], name=problem.name)
    ref = problem.reference
    if ref is not None and ref.solution is not None:
        kw["solution"] = tuple(b[i:i + 1] for b in ref.solution)
    z0 = tuple(b[i:i + 1] for b in problem.z0)
    if isinstance(problem, LinearProgram):
        return LinearProgram(_rows(problem.c, i), _rows(problem.K, i), _rows(problem.d, i), problem.n_eq,
                             _rows(problem.lo, i), _rows(problem.hi, i), x0=z0[0], y0=z0[1], **kw)
    if isinstance(problem, BilinearProblem):
        X, Y = problem.domain
        return BilinearProblem(_rows(problem.K, i), *z0, g=_term(problem.g, i), h_conj=_term(problem.h_conj, i),
                               X=_set(X, i), Y=_set(Y, i), **kw)
    if isinstance(problem, SaddleProblem):
        X, Y = problem.domain
        return SaddleProblem(problem.f, *z0, _set(X, i), _set(Y, i), **kw)
    return VIProblem(problem.operator, Product(*[_set(s, i) for s in problem.domain]), z0, **kw)


class CountingOperator(Operator):
    """Wraps an operator and counts how many times it is evaluated."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls = 0

    def __call__(self, z):
        self.calls += 1
        return self.inner(z)

    def lipschitz(self):
        return self.inner.lipschitz()


def counting(problem):
    """The problem with its operator wrapped in a `CountingOperator` (returned as the second value)."""
    op = CountingOperator(problem.operator)
    problem.operator = op
    return problem, op


# -- the conformance suite's problems and solver families ------------------------------------------

PROBLEMS = {
    "bilinear": lambda **kw: problems.get("bilinear", n=6, batch_size=4, seed=1, **kw),
    "xy": lambda **kw: problems.get("xy", **kw),
    "matrix_game": lambda **kw: problems.get("matrix_game", n=5, m=4, batch_size=4, seed=2, **kw),
    "matrix_game_entropic": lambda **kw: problems.get("matrix_game", n=5, m=4, batch_size=4, seed=2,
                                                      geometry="entropic", **kw),
    "rock_paper_scissors": lambda **kw: problems.get("rock_paper_scissors", batch_size=2, seed=3, **kw),
    "matching_pennies": lambda **kw: problems.get("matching_pennies", batch_size=2, seed=4, **kw),
    "quadratic": lambda **kw: problems.get("quadratic", n=6, m=4, batch_size=4, seed=3, **kw),
    "quadratic_box": lambda **kw: problems.get("quadratic", n=6, m=4, box=0.3, batch_size=3, seed=3, **kw),
    "linear_program": lambda **kw: problems.get("linear_program", n=8, m_ub=6, m_eq=2, batch_size=3, seed=2, **kw),
}
GAMES = {"matrix_game", "matrix_game_entropic", "rock_paper_scissors", "matching_pennies"}

# Monotone Lipschitz VIs: these converge on every problem above.
MONOTONE = ["extragradient", "mirror_prox", "optimistic", "reflected", "eg_plus"]
# Need strong monotonicity.
STRONGLY_MONOTONE = ["gda", "alternating_gda"]
# O(1/k) residual methods: tested against their rate in test_rates.py, not to 1e-6 here.
SUBLINEAR = ["anchored_eg"]
# Need a BilinearProblem whose terms have closed-form prox steps.
PRIMAL_DUAL = ["pdhg"]
NO_PROX = {"quadratic_box"}  # a dense quadratic term on a box
# Need h strongly convex (strongly concave in y); they report a gamma-weighted average, whose
# distance to the solution falls like 1/k^2 at best: tested to 1e-5, and their rate in test_rates.py.
LINEARIZED_PD = ["lpd", "alpd", "inexact_alpd"]
STRONGLY_CONCAVE = ("quadratic", "quadratic_box")
# Competitive methods (CG on mixed Hessian-vector products): unconstrained smooth saddle problems only.
# CGD, CGO and OCGO converge linearly on bilinear games (for every step) and on the quadratic games
# with their default steps; ACGD's Adam-like steps converge on bilinear games, where its local game is
# exact, and hover around the solution (at a distance ~ its learning rate) where f has D_xx or D_yy terms.
COMPETITIVE = ["cgd", "cgo", "ocgo"]
ADAPTIVE_COMPETITIVE = ["acgd"]
UNCONSTRAINED = ("bilinear", "xy", "quadratic")
BILINEAR = ("bilinear", "xy")
# ACGD's default learning rate (1e-3, meant for GAN training) is slow on these small problems.
SOLVER_SETTINGS = {"acgd": {"step_size": 0.05}}

# SAM and ASAM: presets of the extragradient step for min_w max_{e in Ball} L(w + e); tested on
# quadratic sharpness problems (below), and SAM on any problem whose max player's set is bounded.
SAM_FAMILY = ["sam", "asam"]

# Stochastic solvers for finite sums (saddle.solvers.stochastic): tested on DRO problems (below and in
# test_dro.py); they need explicit step sizes and count per-sample evaluations.
STOCHASTIC = ["seg", "double_step_seg", "vr_eg", "prospect"]

# Compressed distributed solvers (saddle.solvers.compressed): need a DistributedProblem (an operator split
# over workers); tested on distributed_bilinear below and in test_compressed.py / test_distributed.py.
DISTRIBUTED = ["masha1", "masha2", "distributed_eg", "compressed_eg"]


def sharpness_quadratic(batch_size=3, *, adaptive=False, rho=None, index=None, device=None):
    """L(w) = 1/2 w^T H w with H SPD (eigenvalues in [1, 4]) per instance; instance ``index`` alone if given."""
    gen = torch.Generator().manual_seed(11)
    Q, _ = torch.linalg.qr(torch.randn(batch_size, 5, 5, dtype=torch.float64, generator=gen))
    H = Q @ torch.diag_embed(torch.linspace(1.0, 4.0, 5, dtype=torch.float64).expand(batch_size, 5)) @ Q.mT
    w0 = torch.randn(batch_size, 5, dtype=torch.float64, generator=gen)
    rho = torch.tensor([0.05, 0.2, 0.5], dtype=torch.float64)[:batch_size] if rho is None else rho
    if index is not None:
        H, w0, rho = H[index:index + 1], w0[index:index + 1], rho[index:index + 1]
    H, w0, rho = (t.to(device) for t in (H, w0, rho))
    return problems.get("sharpness", loss=lambda w: 0.5 * (w.unsqueeze(-2) @ H @ w.unsqueeze(-1))[..., 0, 0],
                        w0=w0, rho=rho, adaptive=adaptive)


STOCHASTIC_SETTINGS = {"seg": {"step_size": 0.01, "batch_size": 3}, "double_step_seg": {"step_size": 0.05},
                       "vr_eg": {"step_size": 0.02, "batch_size": 2}, "prospect": {"step_size": 0.01}}


def dro_problem(**kw):
    settings = dict(n=24, d=3, ambiguity="spectral", spectrum="superquantile", alpha=0.5, nu=0.2, mu=0.5,
                    batch_size=3, seed=5)
    settings.update(kw)
    return problems.get("dro", **settings)


def distributed_problem(batch_size=3, **kw):
    # Each worker's operator is also a finite sum of 4 samples (for the minibatch variants of MASHA);
    # the full operator, and so every solver without batch_size, is unchanged.
    kw.setdefault("samples", 4)
    return problems.get("distributed_bilinear", n=5, workers=3, lam=1.0, batch_size=batch_size, seed=4, **kw)


# The minibatch variants (batch_size of the samples per worker) and MASHA2's partial participation are
# covered here; the full-operator MASHA1 / MASHA2 in test_compressed.py (including batched == loop).
DISTRIBUTED_SETTINGS = {
    "masha1": {"compressor": saddle.compress.RandK(k=3), "batch_size": 2},
    "masha2": {"compressor": saddle.compress.TopK(k=3), "server_compressor": saddle.compress.TopK(k=5),
               "participation": 2, "batch_size": 3},
    "distributed_eg": {},
    "compressed_eg": {"compressor": saddle.compress.RandK(k=3), "participation": 2},
}


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


# -- one small problem and the settings for each registered solver (checkpoint and sync tests) ------------

def settings_for(solver: str) -> dict:
    return {**STOCHASTIC_SETTINGS.get(solver, {}), **DISTRIBUTED_SETTINGS.get(solver, {})}


def problem_for(solver: str):
    """A small batch of a problem family the solver applies to (three instances)."""
    if solver in STOCHASTIC:
        return dro_problem()
    if solver in DISTRIBUTED:
        return distributed_problem()
    if solver in SAM_FAMILY:
        return sharpness_quadratic()
    if solver in COMPETITIVE + ADAPTIVE_COMPETITIVE + PRIMAL_DUAL:
        return problems.get("quadratic", n=6, m=4, batch_size=3, seed=3)
    if solver in STRONGLY_MONOTONE + LINEARIZED_PD:
        return problems.get("quadratic", n=6, m=4, box=0.3, batch_size=3, seed=3)
    return problems.get("matrix_game", n=5, m=4, batch_size=3, seed=2)


FIRST_ORDER = {"extragradient", "mirror_prox", "optimistic", "reflected", "eg_plus", "anchored_eg"}
KNOWN = set(COMPETITIVE + ADAPTIVE_COMPETITIVE + PRIMAL_DUAL + SAM_FAMILY + STRONGLY_MONOTONE + LINEARIZED_PD) | \
    FIRST_ORDER
ALL_SOLVERS = KNOWN | set(STOCHASTIC) | set(DISTRIBUTED)


# -- processes that run this checkout ------------------------------------------------------------------

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker_env(**variables: str) -> dict[str, str]:
    """The environment of a process that runs `saddle.distributed` from this checkout, plus ``variables``."""
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
                **variables)
