"""Solvers, each a frozen dataclass with ``init`` / ``step``, registered by name."""

from .base import Solver, get_solver, register, solver_names
from .competitive import ACGD, CGD, CGO, OCGO, CompetitiveState
from .extragradient import AnchoredEG, EGPlus, Extragradient, ExtragradientState, MirrorProx
from .gda import GDA, AlternatingGDA, GDAState
from .optimistic import Optimistic, Reflected, SingleCallState
from .primal_dual import PDHG, PDHGState
from .halpern import HalpernPDHG, HalpernState
from .interior_point import InteriorPoint, InteriorPointState
from .linearized_primal_dual import ALPD, LPD, InexactALPD, LinearizedPDState
from .sam import ASAM, SAM, SAMState
from .stochastic import SEG, VREG, DoubleStepSEG, Prospect, ProspectState, StochasticState, VREGState
from .compressed import MASHA1, MASHA2, CompressedEG, CompressedState, DistributedEG

__all__ = [
    "Solver", "get_solver", "register", "solver_names",
    "GDA", "AlternatingGDA", "GDAState",
    "Extragradient", "MirrorProx", "EGPlus", "AnchoredEG", "ExtragradientState",
    "Optimistic", "Reflected", "SingleCallState",
    "PDHG", "PDHGState", "HalpernPDHG", "HalpernState", "InteriorPoint", "InteriorPointState",
    "LPD", "ALPD", "InexactALPD", "LinearizedPDState",
    "CGD", "ACGD", "CGO", "OCGO", "CompetitiveState",
    "SAM", "ASAM", "SAMState",
    "SEG", "DoubleStepSEG", "VREG", "Prospect", "StochasticState", "VREGState", "ProspectState",
    "MASHA1", "MASHA2", "DistributedEG", "CompressedEG", "CompressedState",
]
