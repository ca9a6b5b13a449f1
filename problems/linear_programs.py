"""Random feasible, bounded linear programs, with HiGHS references.

``min c^T x  s.t.  A_ub x <= b_ub,  A_eq x = b_eq,  0 <= x <= u`` as a
`saddle.LinearProgram` (the saddle-point problem of its Lagrangian). Feasible
by construction (the right-hand sides come from a point inside the bounds,
plus a positive slack on the inequalities) and bounded (finite upper bounds).
The reference is HiGHS (`scipy.optimize.linprog`): the optimal value, the
primal solution and the duals (``y = -marginals``). The saddle-point form is the
Lagrangian of LP duality (Dantzig 1963, *Linear Programming and Extensions*), the
problem class of PDLP (Applegate et al. 2021, arXiv 2106.04756).
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
import torch

from saddle import LinearProgram, Reference

from . import register
from .batch import check_positive, check_positive_int, make_batch

__all__ = ["linear_program"]


@register("linear_program")
def linear_program(n: int = 30, m_ub: int = 20, m_eq: int = 5, *, upper: float = 2.0, batch_size: int = 1,
                   seed: int = 0, device=None, dtype=torch.float64) -> LinearProgram:
    """A batch of random feasible, bounded LPs with Gaussian data.

    Args:
        n: the number of variables.
        m_ub: the number of inequality rows (``A_ub x <= b_ub``).
        m_eq: the number of equality rows (``A_eq x = b_eq``; 0 for none).
        upper: the variables' upper bound u (lower bound 0).

    The starting point is x = 0, y = 0.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    if isinstance(m_ub, bool) or not isinstance(m_ub, int) or m_ub < 0:
        raise ValueError(f"m_ub must be a non-negative integer, got {m_ub!r}")
    if isinstance(m_eq, bool) or not isinstance(m_eq, int) or m_eq < 0:
        raise ValueError(f"m_eq must be a non-negative integer, got {m_eq!r}")
    if m_ub + m_eq == 0:
        raise ValueError("m_ub + m_eq must be at least 1")
    if m_eq >= n:
        raise ValueError(f"m_eq ({m_eq}) must be smaller than n ({n})")
    upper = check_positive(upper, "upper")
    B, gen = batch.size, batch.generator()
    x_feas = upper * torch.rand(B, n, dtype=torch.float64, generator=gen)
    A_eq = torch.randn(B, m_eq, n, dtype=torch.float64, generator=gen)
    A_ub = torch.randn(B, m_ub, n, dtype=torch.float64, generator=gen)
    b_eq = (A_eq @ x_feas.unsqueeze(-1)).squeeze(-1)
    b_ub = (A_ub @ x_feas.unsqueeze(-1)).squeeze(-1) + torch.rand(B, m_ub, dtype=torch.float64, generator=gen)
    c = torch.randn(B, n, dtype=torch.float64, generator=gen)
    K = torch.cat([A_eq, A_ub], 1)
    d = torch.cat([b_eq, b_ub], 1)

    def reference() -> Reference:
        xs, ys, values = [], [], []
        for i in range(B):
            res = scipy.optimize.linprog(
                c[i].numpy(), A_ub[i].numpy() if m_ub else None, b_ub[i].numpy() if m_ub else None,
                A_eq[i].numpy() if m_eq else None, b_eq[i].numpy() if m_eq else None, bounds=(0, upper),
                method="highs", options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
            if res.status != 0:
                raise RuntimeError(f"HiGHS failed on a generated LP: {res.message}")
            xs.append(res.x)
            marg_eq = res.eqlin.marginals if m_eq else np.zeros(0)
            marg_ub = res.ineqlin.marginals if m_ub else np.zeros(0)
            ys.append(-np.concatenate([marg_eq, marg_ub]))
            values.append(res.fun)
        place = batch.place
        return Reference((place(torch.as_tensor(np.array(xs))), place(torch.as_tensor(np.array(ys)))),
                         place(torch.as_tensor(values)), unique=False, source="HiGHS (scipy.optimize.linprog)")

    place = batch.place
    lo = place(torch.zeros(1, n, dtype=torch.float64))
    hi = place(torch.full((1, n), upper, dtype=torch.float64))
    return LinearProgram(place(c), place(K), place(d), m_eq, lo, hi, reference=reference,
                         name=f"linear_program(n={n}, m_ub={m_ub}, m_eq={m_eq})")
