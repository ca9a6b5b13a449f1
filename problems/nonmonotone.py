"""Nonmonotone problems from the literature, where the extragradient family's guarantees end.

- `comonotone_linear`: ``F(z) = M z`` with ``M = [[a I, b I], [-b I, a I]]``, a < 0
  (``f = a/2 |x|^2 + b x^T y - a/2 |y|^2``, nonconvex-nonconcave). It is
  rho-comonotone and satisfies the weak Minty condition
  ``<F(z), z - z*> >= rho |F(z)|^2`` with ``rho = a / L^2``, ``L = sqrt(a^2 + b^2)``.
  GDA diverges for every step; extragradient diverges for every step once
  ``rho L < -0.136``; EG+ with extrapolation ``1/L`` and update ``1/(2L)``
  converges for ``rho > -1/(4L)`` (Diakonikolas, Daskalakis and Jordan 2021 prove
  ``rho > -1/(8L)``; Pethick et al. 2022, "Escaping limit cycles", extend the
  range to ``-1/(2L)`` with a tuned update step).
- `forsaken`: Hsieh, Mertikopoulos and Cevher 2021, "The limits of min-max
  optimization algorithms: convergence to spurious non-critical sets":
  ``f = x (y - 0.45) + phi(x) - phi(y)``, ``phi(z) = z^2/4 - z^4/2 + z^6/6``. Its
  stationary point is unstable and surrounded by an attracting limit cycle on
  which GDA and extragradient end up.
- `global_forsaken`: Pethick et al. 2022 ("Escaping limit cycles"), Appendix:
  ``F = (phi'(x) + y, -x + phi'(y))``, ``phi'(z) = 4z^5/7 - 4z^3/3 + 2z/3``, on
  ``[-1.5, 1.5]^2``, z* = 0. On the box ``L = 6.310`` and the weak-MVI
  parameter is ``rho ≈ -0.120`` (``rho L ≈ -0.76``), outside every
  constant-step guarantee (EG+ needs ``rho > -1/(2L)``): small-step GDA and
  extragradient are attracted to a limit cycle, while steps adapted to the
  local Lipschitz constant escape it (as Pethick et al. report).

The references are exact: z* = 0 in closed form, or scipy's root finder on
the stationarity equations.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from saddle import Box, LinearOperator, Operator, Reference, SaddleProblem

from . import register
from .batch import check_positive, check_positive_int, make_batch
from .reference import stationary_point

__all__ = ["comonotone_linear", "forsaken", "global_forsaken"]


@register("comonotone_linear")
def comonotone_linear(n: int = 1, *, rho: float = -0.2, lipschitz: float = 1.0, batch_size: int = 1, seed: int = 0,
                      device=None, dtype=torch.float64) -> SaddleProblem:
    """The linear rho-comonotone game ``f = a/2 |x|^2 + b x^T y - a/2 |y|^2`` with ``a = rho L^2``.

    Args:
        n: dimension of each player.
        rho: the comonotonicity / weak-Minty parameter, in ``[-1/L, 1/L]``
            (negative: nonmonotone).
        lipschitz: L, with ``b = sqrt(L^2 - a^2)``.

    Starts from seeded standard normal points; the solution is z* = 0.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    n = check_positive_int(n, "n")
    L = check_positive(lipschitz, "lipschitz")
    if not isinstance(rho, (int, float)) or not -1 / L <= rho <= 1 / L:
        raise ValueError(f"rho must be in [-1/L, 1/L] = [{-1 / L}, {1 / L}], got {rho!r}")
    a = rho * L * L
    b = math.sqrt(max(L * L - a * a, 0.0))

    def f(x, y):
        return 0.5 * a * x.square().sum(-1) + b * (x * y).sum(-1) - 0.5 * a * y.square().sum(-1)

    gen = batch.generator()
    x0 = torch.randn(batch.size, n, dtype=torch.float64, generator=gen)
    y0 = torch.randn(batch.size, n, dtype=torch.float64, generator=gen)
    zero = batch.place(torch.zeros(batch.size, n))
    eye = batch.place(torch.eye(n).unsqueeze(0))
    # F = (a x + b y, -b x + a y), the gradient field of f written out.
    operator = LinearOperator([[a * eye, b * eye], [-b * eye, a * eye]])
    return SaddleProblem(f, batch.place(x0), batch.place(y0), solution=(zero, zero), lipschitz=L,
                         operator=operator, name=f"comonotone_linear(rho={rho}, L={L})")


def _phi_prime_forsaken(z):
    return z / 2 - 2 * z**3 + z**5


@register("forsaken")
def forsaken(*, x0: float = 0.5, y0: float = 0.5, batch_size: int = 1, seed: int = 0, device=None,
             dtype=torch.float64) -> SaddleProblem:
    """Hsieh et al.'s "Forsaken" game ``f = x (y - 0.45) + phi(x) - phi(y)``, unconstrained.

    The reference is its stationary point (about (0.0780, 0.4119)) by
    `scipy.optimize.root`; from the default start (0.5, 0.5) GDA and
    extragradient with small constant steps are attracted to a limit cycle
    around it instead.
    """
    batch = make_batch(batch_size, seed, device, dtype)

    def phi(z):
        return z**2 / 4 - z**4 / 2 + z**6 / 6

    def f(x, y):
        return (x * (y - 0.45) + phi(x) - phi(y)).sum(-1)

    def F(z):
        x, y = z
        return np.array([_phi_prime_forsaken(x) + y - 0.45, -x + _phi_prime_forsaken(y)])

    star = torch.from_numpy(stationary_point(F, np.array([0.08, 0.41])))
    B = batch.size
    place = batch.place
    operator = Operator(lambda z: (_phi_prime_forsaken(z[0]) + z[1] - 0.45, -z[0] + _phi_prime_forsaken(z[1])))
    return SaddleProblem(
        f, place(torch.full((B, 1), float(x0), dtype=torch.float64)),
        place(torch.full((B, 1), float(y0), dtype=torch.float64)), operator=operator,
        reference=Reference((place(star[0].expand(B, 1)), place(star[1].expand(B, 1))), unique=False,
                            source="scipy.optimize.root"),
        name="forsaken",
    )


@register("global_forsaken")
def global_forsaken(*, batch_size: int = 1, seed: int = 0, device=None, dtype=torch.float64) -> SaddleProblem:
    """Pethick et al.'s "GlobalForsaken": ``F = (phi'(x) + y, -x + phi'(y))`` on ``[-1.5, 1.5]^2``.

    ``phi(z) = 2 z^6 / 21 - z^4 / 3 + z^2 / 3``; z* = 0. Starts from seeded
    uniform points in the box.

    The Lipschitz constant on the box is the largest norm of the Jacobian
    ``[[phi''(x), 1], [-1, phi''(y)]]``; that norm is convex in
    ``(phi''(x), phi''(y))``, which ranges over ``[-11/15, phi''(1.5)]^2``, so
    the largest value is at a corner: ``L = 6.3103`` at
    ``(phi''(1.5), -11/15)``.
    """
    batch = make_batch(batch_size, seed, device, dtype)

    def phi(z):
        return 2 * z**6 / 21 - z**4 / 3 + z**2 / 3

    def phi_prime(z):
        return 4 * z**5 / 7 - 4 * z**3 / 3 + 2 * z / 3

    def f(x, y):
        return (x * y + phi(x) - phi(y)).sum(-1)

    def phi_second(z):
        return 20 * z**4 / 7 - 4 * z**2 + 2 / 3

    operator = Operator(lambda z: (phi_prime(z[0]) + z[1], -z[0] + phi_prime(z[1])))
    # phi'' is smallest where z^2 = 7/10 (value -11/15) and largest at the box's edge.
    corners = [(a, b) for a in (phi_second(math.sqrt(0.7)), phi_second(1.5))
               for b in (phi_second(math.sqrt(0.7)), phi_second(1.5))]
    L = max(np.linalg.norm(np.array([[a, 1.0], [-1.0, b]]), 2) for a, b in corners)

    gen = batch.generator()
    start = 3 * torch.rand(batch.size, 2, dtype=torch.float64, generator=gen) - 1.5
    zero = batch.place(torch.zeros(batch.size, 1))
    return SaddleProblem(f, batch.place(start[:, :1]), batch.place(start[:, 1:]), Box(-1.5, 1.5), Box(-1.5, 1.5),
                         solution=(zero, zero), lipschitz=L, operator=operator, name="global_forsaken")
