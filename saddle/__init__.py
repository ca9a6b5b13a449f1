"""saddle: batched solvers for minimax problems, saddle-point problems and variational inequalities."""

from . import coupling, implicit, merit, optim, plot, sets, stepsize, terms
from . import compress
from .comparison import ComparisonRow, compare, format_table
from .lp import LinearProgram, LinprogResult, linprog
from .implicit import Implicit, sensitivity
from .qp import QuadprogResult, quadprog
from .operator import LinearOperator, MixedProducts, Operator, SaddleOperator
from .problem import BilinearProblem, CompositeSaddleProblem, Reference, SaddleProblem, VIProblem
from .sets import Ball, Box, CappedSimplex, ChiSquareBall, ConstraintSet, Permutahedron, Product, Reals, Simplex
from .solution import Solution, SolveError, Status
from .solve import Progress, solve
from .solvers import ALPD, LPD, InexactALPD
from .solvers import ACGD, CGD, CGO, OCGO
from .solvers import ASAM, SAM
from .solvers import SEG, VREG, DoubleStepSEG, Prospect
from .stochastic import StochasticOperator
from .solvers import MASHA1, MASHA2, CompressedEG, DistributedEG
from .solvers import (
    GDA,
    AlternatingGDA,
    AnchoredEG,
    EGPlus,
    Extragradient,
    HalpernPDHG,
    MirrorProx,
    Optimistic,
    PDHG,
    Reflected,
    Solver,
    get_solver,
    register,
    solver_names,
)
from .stepsize import Backtracking, Constant
from .coupling import Bilinear, SemiLinear, SmoothCoupling
from .terms import L1, Indicator, Linear, Quadratic, Smooth, Sum, Zero

__version__ = "0.1.0"


def __getattr__(name: str):
    """``saddle.problems`` and ``saddle.testing`` are imported on first use (``import saddle`` stays light)."""
    if name in ("problems", "testing"):
        import importlib

        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "Operator", "SaddleOperator", "LinearOperator", "MixedProducts",
    "ConstraintSet", "Reals", "Box", "Ball", "Simplex", "Product",
    "VIProblem", "SaddleProblem", "CompositeSaddleProblem", "BilinearProblem", "Reference",
    "Zero", "Linear", "Quadratic", "L1", "Indicator", "Smooth", "Sum",
    "Bilinear", "SemiLinear", "SmoothCoupling",
    "Solution", "SolveError", "Status", "Progress", "solve",
    "Constant", "Backtracking",
    "Solver", "register", "get_solver", "solver_names",
    "GDA", "AlternatingGDA", "Extragradient", "MirrorProx", "EGPlus", "AnchoredEG", "Optimistic", "Reflected", "PDHG",
    "HalpernPDHG",
    "LPD", "ALPD", "InexactALPD",
    "CGD", "ACGD", "CGO", "OCGO",
    "SAM", "ASAM",
    "SEG", "DoubleStepSEG", "VREG", "Prospect", "StochasticOperator",
    "CappedSimplex", "ChiSquareBall", "Permutahedron",
    "MASHA1", "MASHA2", "DistributedEG", "CompressedEG", "compress",
    "compare", "ComparisonRow", "format_table",
    "linprog", "LinearProgram", "LinprogResult", "quadprog", "QuadprogResult", "Implicit", "sensitivity",
    "coupling", "implicit", "merit", "optim", "plot", "sets", "stepsize", "terms",
]
