"""Distributionally robust learning: ``min_theta max_{q in Q} sum_i q_i l_i(theta) - lam D(q) + (mu/2)|theta|^2``.

A batch of B problems over n samples ``(a_i, b_i)`` (features ``(B, n, d)``
or shared ``(n, d)``, labels ``(B, n)`` or shared ``(n,)``). The min player
is ``theta (B, d)``, the max player the sample weights ``q (B, n)``.

Losses ``l_i(theta) = loss(<a_i, theta>, b_i)``:

- ``"logistic"``: ``log(1 + exp(-b m))``, labels in {-1, +1};
- ``"squared"``: ``(m - b)^2 / 2``, real labels;
- ``"smooth_hinge"``: ``0`` for ``b m >= 1``, ``(1 - b m)^2 / 2`` for ``0 <= b m < 1``,
  ``1/2 - b m`` below (Rennie and Srebro 2005), labels in {-1, +1};
- a function ``loss(theta (B, d), features (B, m, d), labels (B, m)) -> (B, m)``
  (per-sample losses; derivatives by autograd; no cvxpy reference).

Ambiguity sets and penalties (``ambiguity=``):

- ``"cvar"``: ``Q = {q in simplex : q_i <= 1/(alpha n)}`` (`saddle.dro_sets.CappedSimplex`);
  the worst case is the conditional value-at-risk at level alpha in (0, 1].
- ``"chi2_ball"``: ``Q = {q in simplex : (n/2)|q - 1/n|^2 <= rho}`` (`saddle.dro_sets.ChiSquareBall`).
- ``"chi2"``: Q the simplex, penalty ``lam (n/2) |q - 1/n|^2`` (half the chi-square divergence).
- ``"kl"``: Q the simplex with entropic geometry, penalty ``lam KL(q || 1/n) = lam sum q_i log(n q_i)``
  (solve with ``mirror_prox``: the penalty's gradient is infinite on the boundary).
- ``"spectral"``: Q the permutahedron of a spectrum sigma (`superquantile`, `extremile`,
  `esrm`; `saddle.dro_sets.Permutahedron`), smoothing penalty ``nu (n/2)|q - 1/n|^2`` (Prospect's shift cost).
- ``"erm"``: q fixed at the uniform weights (``Box(1/n, 1/n)``): plain regularized ERM.

For fixed theta the inner maximization has closed forms (`DROProblem.best_response`:
top-k averages for CVaR, ``softmax(l / lam)`` for KL, a simplex projection of
``1/n + l / (lam n)`` for the chi-square penalty, isotonic regression for spectral
risks), which give the primal objective ``P(theta) = max_q f(theta, q)`` exactly
(`DROProblem.primal_objective`). The reference optimum comes from cvxpy (Clarabel)
solving each instance's convex reformulation, with q* the dual of the epigraph
constraints ``t_i >= l_i(theta)`` (`dro_reference`).

The operator is a `saddle.StochasticOperator`: the full F for deterministic
solvers, and minibatch estimates of the finite sum
``F_i(theta, q) = (n q_i grad l_i(theta) + mu theta, -(n l_i(theta) e_i - lam grad D(q)))``
for stochastic ones.
"""

from __future__ import annotations

import math
import types
import warnings
from numbers import Real
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from saddle import Box, Reference, SaddleProblem, Simplex
from saddle.dro_sets import CappedSimplex, ChiSquareBall, Permutahedron
from saddle.selection import Selection, take
from saddle.sets import project_simplex
from saddle.stochastic import StochasticOperator

from . import register
from .batch import make_batch

__all__ = ["DROProblem", "dro", "group_shift_data", "sklearn_data", "superquantile", "extremile", "esrm",
           "dro_reference", "LOSSES", "AMBIGUITY_SETS"]

LOSSES = ("logistic", "squared", "smooth_hinge")
AMBIGUITY_SETS = ("cvar", "chi2_ball", "chi2", "kl", "spectral", "erm")


# -- spectra of spectral risk measures (ascending: sigma_1 <= ... <= sigma_n weighs the sorted losses) -----

def _spectrum(n: int, cdf: Callable[[Tensor], Tensor], name: str) -> Tensor:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be a positive integer, got {n!r}")
    t = torch.arange(n + 1, dtype=torch.float64) / n
    sigma = torch.diff(cdf(t)).clamp_min(0)
    return sigma / sigma.sum()


def superquantile(n: int, alpha: float) -> Tensor:
    """The superquantile (CVaR) spectrum at tail fraction alpha in (0, 1]: ``s(t) = 1{t >= 1 - alpha} / alpha``.

    Returns ``(n,)`` ascending weights ``sigma_i = integral of s over [(i-1)/n, i/n]``.
    """
    alpha = _check_alpha(alpha)
    return _spectrum(n, lambda t: ((t - (1 - alpha)).clamp_min(0) / alpha).clamp(max=1.0), "superquantile")


def extremile(n: int, r: float = 2.0) -> Tensor:
    """The extremile spectrum ``s(t) = r t^(r - 1)`` (Daouia et al. 2019), r >= 1; ``(n,)`` ascending."""
    if isinstance(r, bool) or not isinstance(r, Real) or not r >= 1:
        raise ValueError(f"extremile: r must be a number >= 1, got {r!r}")
    return _spectrum(n, lambda t: t ** float(r), "extremile")


def esrm(n: int, rho: float = 1.0) -> Tensor:
    """The exponential spectral risk measure ``s(t) = rho e^(rho t) / (e^rho - 1)``, rho > 0; ``(n,)`` ascending."""
    if isinstance(rho, bool) or not isinstance(rho, Real) or not rho > 0:
        raise ValueError(f"esrm: rho must be a positive number, got {rho!r}")
    return _spectrum(n, lambda t: torch.expm1(float(rho) * t) / math.expm1(float(rho)), "esrm")


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not (0 < alpha <= 1):
        raise ValueError(f"alpha must be in (0, 1], got {alpha!r}")
    return float(alpha)


def _check_nonneg(value, name: str, *, positive: bool = False):
    """A float or ``(B,)`` tensor parameter, validated (``ValueError`` naming it)."""
    if isinstance(value, bool) or not isinstance(value, (Real, Tensor)):
        raise TypeError(f"{name} must be a float or a (B,) tensor, got {type(value).__name__}")
    t = torch.as_tensor(value, dtype=torch.float64)
    if t.dim() > 1 or not torch.isfinite(t).all() or (t < 0).any() or (positive and (t <= 0).any()):
        raise ValueError(f"{name} must be {'positive' if positive else 'non-negative'} and finite "
                         f"(a float or a (B,) tensor), got {value}")
    return value


# -- data ------------------------------------------------------------------------------------------------

def group_shift_data(n: int = 200, d: int = 5, *, minority: float = 0.1, shift: float = 2.0, noise: float = 0.1,
                     regression: bool = False, batch_size: int = 1, seed: int = 0) -> tuple[Tensor, Tensor, Tensor]:
    """Synthetic data with a minority group whose labels follow a shifted rule.

    The majority's labels come from a direction ``w``, the minority's (a fraction
    ``minority`` of the samples) from ``w`` rotated towards an orthogonal
    direction and with features shifted by ``shift`` along it: ERM fits the
    majority, DRO up-weights the minority.

    Args:
        n: the number of samples.
        d: the number of features.
        minority: the minority group's fraction, in (0, 1/2].
        shift: how far the minority's features and rule move.
        noise: the label noise (logistic flips or Gaussian noise).
        regression: real labels ``<a, w> + noise`` instead of signs.
        batch_size: B independent data sets.
        seed: the generator's seed.

    Returns:
        ``(features (B, n, d), labels (B, n), groups (B, n) int64)`` in float64, group 1 the minority.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an integer >= 2, got {n!r}")
    if isinstance(d, bool) or not isinstance(d, int) or d < 2:
        raise ValueError(f"d must be an integer >= 2, got {d!r}")
    if not (0 < minority <= 0.5):
        raise ValueError(f"minority must be in (0, 1/2], got {minority!r}")
    gen = torch.Generator().manual_seed(seed)
    B = batch_size
    w = torch.zeros(B, d, dtype=torch.float64)
    w[:, 0] = 1.0
    u = torch.zeros(B, d, dtype=torch.float64)
    u[:, 1] = 1.0
    groups = (torch.arange(n).expand(B, n) < max(1, round(minority * n))).long()
    A = torch.randn(B, n, d, dtype=torch.float64, generator=gen)
    A = A + shift * groups.unsqueeze(-1) * u.unsqueeze(1)
    w_minor = (w - shift * u) / math.sqrt(1 + shift**2)
    direction = torch.where(groups.unsqueeze(-1) == 1, w_minor.unsqueeze(1), w.unsqueeze(1))
    score = (A * direction).sum(-1)
    if regression:
        labels = score + noise * torch.randn(B, n, dtype=torch.float64, generator=gen)
    else:
        flip = torch.rand(B, n, dtype=torch.float64, generator=gen) < noise
        labels = torch.where((score >= 0) ^ flip, 1.0, -1.0).to(torch.float64)
    return A, labels, groups


def sklearn_data(name: str = "breast_cancer") -> tuple[Tensor, Tensor]:
    """A small data set that ships inside scikit-learn (never downloaded), standardized.

    Args:
        name: ``"breast_cancer"`` (binary, labels in {-1, +1}), ``"diabetes"``
            (regression, standardized target) or ``"wine"`` (class 0 vs the rest).

    Returns:
        ``(features (n, d), labels (n,))`` in float64, plus an intercept column.

    Raises ``ImportError`` when scikit-learn is not installed (``pip install saddle[sklearn]``).
    """
    try:
        import sklearn.datasets as ds
    except ImportError as err:  # an optional extra
        raise ImportError("sklearn_data needs scikit-learn: pip install 'saddle[sklearn]'") from err
    loaders = {"breast_cancer": ds.load_breast_cancer, "diabetes": ds.load_diabetes, "wine": ds.load_wine}
    if name not in loaders:
        raise ValueError(f"name must be one of {sorted(loaders)}, got {name!r}")
    X, y = loaders[name](return_X_y=True)
    X = (X - X.mean(0)) / X.std(0).clip(1e-12)
    X = np.hstack([X, np.ones((X.shape[0], 1))])
    if name == "diabetes":
        y = (y - y.mean()) / y.std()
    elif name == "wine":
        y = np.where(y == 0, 1.0, -1.0)
    else:
        y = np.where(y == 1, 1.0, -1.0)
    return torch.from_numpy(X).double(), torch.from_numpy(np.asarray(y, dtype=np.float64))


# -- losses ------------------------------------------------------------------------------------------------

def _loss_and_slope(kind: str, m: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Per-sample losses ``l(m, b)`` and slopes ``dl/dm``, elementwise."""
    if kind == "logistic":
        z = -b * m
        return torch.nn.functional.softplus(z), -b * torch.sigmoid(z)
    if kind == "squared":
        r = m - b
        return 0.5 * r.square(), r
    t = 1 - b * m  # smooth hinge
    value = torch.where(t <= 0, torch.zeros_like(t), torch.where(t <= 1, 0.5 * t.square(), t - 0.5))
    return value, -b * t.clamp(0, 1)


class DROProblem(SaddleProblem):
    """A batch of DRO problems ``min_theta max_{q in Q} sum_i q_i l_i(theta) - lam D(q) + (mu/2)|theta|^2``.

    See the module docstring for the losses and ambiguity sets.

    Args:
        features: ``(B, n, d)`` or shared ``(n, d)``.
        labels: ``(B, n)`` or shared ``(n,)``; in {-1, +1} for logistic and smooth hinge.
        loss: ``"logistic"``, ``"squared"``, ``"smooth_hinge"`` or a function
            ``(theta (B, d), features (B, m, d), labels (B, m)) -> (B, m)``.
        ambiguity: one of `AMBIGUITY_SETS`.
        alpha: CVaR's level in (0, 1] (``"cvar"``).
        rho: the chi-square ball's radius >= 0 (``"chi2_ball"``), float or ``(B,)``.
        lam: the penalty's weight > 0 (``"chi2"``, ``"kl"``), float or ``(B,)``.
        spectrum: ``(n,)`` nonnegative weights summing to 1 (``"spectral"``).
        nu: the spectral risk's smoothing weight >= 0 (``"spectral"``), float or ``(B,)``.
        mu: the ridge weight > 0 (strong convexity in theta), float or ``(B,)``.
        seed: seeds of the minibatch oracles: an int (instance b gets ``seed + b``) or ``(B,)`` int64.
        name: a label.
    """

    def __init__(self, features: Tensor, labels: Tensor, *, loss: str | Callable = "logistic",
                 ambiguity: str = "cvar", alpha: float | None = None, rho=None, lam=None,
                 spectrum: Tensor | None = None, nu=0.0, mu=0.1, seed: int | Tensor = 0, name: str | None = None):
        if not isinstance(features, Tensor) or features.dim() not in (2, 3) or not features.is_floating_point():
            raise ValueError(f"features must be a floating (n, d) or (B, n, d) tensor, got "
                             f"{getattr(features, 'shape', type(features).__name__)}")
        A = features if features.dim() == 3 else features.unsqueeze(0)
        n, d = A.shape[1:]
        if not isinstance(labels, Tensor) or labels.dim() not in (1, 2) or labels.shape[-1] != n:
            raise ValueError(f"labels must be an (n,) = ({n},) or (B, n) tensor matching the features, got "
                             f"{getattr(labels, 'shape', type(labels).__name__)}")
        b = (labels if labels.dim() == 2 else labels.unsqueeze(0)).to(A.dtype)
        B = max(A.shape[0], b.shape[0])
        if A.shape[0] not in (1, B) or b.shape[0] not in (1, B):
            raise ValueError(f"features {tuple(features.shape)} and labels {tuple(labels.shape)} disagree on B")
        if not (torch.isfinite(A).all() and torch.isfinite(b).all()):
            raise ValueError("features and labels must be finite")
        if isinstance(loss, str):
            if loss not in LOSSES:
                raise ValueError(f"loss must be one of {LOSSES} or a function, got {loss!r}")
            if loss in ("logistic", "smooth_hinge") and not ((b == 1) | (b == -1)).all():
                raise ValueError(f"labels must be in {{-1, +1}} for the {loss} loss")
        elif not callable(loss):
            raise TypeError(f"loss must be a name or a function, got {type(loss).__name__}")
        if ambiguity not in AMBIGUITY_SETS:
            raise ValueError(f"ambiguity must be one of {AMBIGUITY_SETS}, got {ambiguity!r}")
        self.mu = _check_nonneg(mu, "mu", positive=True)
        self.lam, self.nu, self.rho, self.alpha, self.spectrum = lam, 0.0, rho, alpha, spectrum
        if ambiguity == "cvar":
            if alpha is None:
                raise ValueError("ambiguity='cvar' needs alpha in (0, 1]")
            self.alpha = _check_alpha(alpha)
            Y = CappedSimplex(1.0 / (self.alpha * n))
        elif ambiguity == "chi2_ball":
            if rho is None:
                raise ValueError("ambiguity='chi2_ball' needs rho >= 0")
            Y = ChiSquareBall(_check_nonneg(rho, "rho"))
        elif ambiguity in ("chi2", "kl"):
            if lam is None:
                raise ValueError(f"ambiguity={ambiguity!r} needs lam > 0")
            self.lam = _check_nonneg(lam, "lam", positive=True)
            Y = Simplex("entropic" if ambiguity == "kl" else "euclidean")
        elif ambiguity == "spectral":
            if spectrum is None:
                raise ValueError("ambiguity='spectral' needs a spectrum (problems.dro.superquantile, extremile, esrm)")
            if not isinstance(spectrum, Tensor) or spectrum.shape != (n,):
                raise ValueError(f"spectrum must be an (n,) = ({n},) tensor, got "
                                 f"{getattr(spectrum, 'shape', type(spectrum).__name__)}")
            self.nu = _check_nonneg(nu, "nu")
            Y = Permutahedron(spectrum.to(torch.float64))
        else:
            Y = Box(1.0 / n, 1.0 / n)
        if ambiguity == "chi2" or ambiguity == "spectral":
            self._quad = self.lam if ambiguity == "chi2" else self.nu  # weight of (n/2)|q - 1/n|^2
        else:
            self._quad = None
        self.features, self.labels, self.loss, self.ambiguity = A, b, loss, ambiguity
        self.n, self.d = n, d
        dtype, device = A.dtype, A.device
        x0 = torch.zeros(B, d, dtype=dtype, device=device)
        y0 = torch.full((B, n), 1.0 / n, dtype=dtype, device=device)
        operator = StochasticOperator(self._component, n, seed, full=self._full)
        label = name or f"dro({ambiguity}, {loss if isinstance(loss, str) else 'custom'}, n={n}, d={d})"
        super().__init__(self._f, x0, y0, None, Y, operator=operator, reference=self._reference, name=label)
        self.seed = seed

    # -- per-instance parameters as columns ------------------------------------------------------------
    def _col(self, value, like: Tensor) -> Tensor | float:
        if isinstance(value, Tensor):
            return value.to(device=like.device, dtype=like.dtype).reshape(-1, 1)
        return float(value)

    # -- losses --------------------------------------------------------------------------------------------
    def _rows(self, idx: Tensor | None, B: int) -> tuple[Tensor, Tensor]:
        A, b = self.features.expand(B, -1, -1), self.labels.expand(B, -1)
        if idx is None:
            return A, b
        ar = torch.arange(B, device=idx.device).unsqueeze(-1)
        return A[ar, idx], b[ar, idx]

    def _losses(self, theta: Tensor, idx: Tensor | None = None, weights: Tensor | None = None):
        """Losses ``(B, m)`` at the selected samples and ``sum_j weights_j grad l_j`` ``(B, d)`` (if weights given)."""
        A, b = self._rows(idx, theta.shape[0])
        if callable(self.loss):
            if weights is None:
                return self.loss(theta, A, b), None
            values, pullback = torch.func.vjp(lambda t: self.loss(t, A, b), theta)
            return values, pullback(weights)[0]
        m = torch.einsum("bnd,bd->bn", A, theta)
        values, slope = _loss_and_slope(self.loss, m, b)
        grad = None if weights is None else torch.einsum("bn,bnd->bd", weights * slope, A)
        return values, grad

    def losses(self, theta: Tensor) -> Tensor:
        """The per-sample losses ``l_i(theta)``, ``(B, n)``."""
        return self._losses(theta)[0]

    def sample_loss_and_gradient(self, theta: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
        """Losses ``(B, m)`` and gradients ``(B, m, d)`` of the samples ``idx (B, m)`` (no ridge term)."""
        A, b = self._rows(idx, theta.shape[0])
        if callable(self.loss):
            jac = torch.func.jacrev(lambda t: self.loss(t, A, b).sum(0))(theta)  # (m, B, d)
            return self.loss(theta, A, b), jac.transpose(0, 1)
        values, slope = _loss_and_slope(self.loss, torch.einsum("bnd,bd->bn", A, theta), b)
        return values, slope.unsqueeze(-1) * A

    # -- the objective and its operator -------------------------------------------------------------------
    def penalty(self, q: Tensor) -> Tensor:
        """``lam D(q)`` per instance, ``(B,)`` (0 for the ambiguity sets without a penalty)."""
        n = self.n
        if self.ambiguity == "kl":
            return self._col(self.lam, q).squeeze(-1) * torch.xlogy(q, n * q).sum(-1) \
                if isinstance(self.lam, Tensor) else self.lam * torch.xlogy(q, n * q).sum(-1)
        if self._quad is not None:
            w = self._col(self._quad, q)
            return (w * 0.5 * n * (q - 1.0 / n).square()).sum(-1)
        return torch.zeros(q.shape[0], dtype=q.dtype, device=q.device)

    def _penalty_grad(self, q: Tensor) -> Tensor | float:
        n = self.n
        if self.ambiguity == "kl":
            return self._col(self.lam, q) * (torch.log(n * q) + 1)
        if self._quad is not None:
            return self._col(self._quad, q) * n * (q - 1.0 / n)
        return 0.0

    def _f(self, theta: Tensor, q: Tensor) -> Tensor:
        l, _ = self._losses(theta)
        mu = self._col(self.mu, theta)
        return (q * l).sum(-1) - self.penalty(q) + (0.5 * mu * theta.square()).sum(-1)

    def _full(self, z):
        theta, q = z
        l, g = self._losses(theta, weights=q)
        return g + self._col(self.mu, theta) * theta, self._penalty_grad(q) - l

    def _component(self, z, idx: Tensor):
        theta, q = z
        m = idx.shape[-1]
        scale = self.n / m
        qi = q.gather(-1, idx)
        l, g = self._losses(theta, idx, weights=scale * qi)
        Fq = self._penalty_grad(q) - torch.zeros_like(q).scatter_add(-1, idx, scale * l)
        return g + self._col(self.mu, theta) * theta, Fq

    # -- the inner maximization in closed form ---------------------------------------------------------
    def best_response(self, theta: Tensor) -> Tensor:
        """The max player's weights ``argmax_{q in Q} sum_i q_i l_i(theta) - lam D(q)``, ``(B, n)``.

        CVaR: ``1/(alpha n)`` on the ``alpha n`` largest losses (a fraction on the
        next); chi-square ball: its linear maximizer; chi-square penalty:
        ``proj_simplex(1/n + l / (lam n))``; KL: ``softmax(l / lam)``; spectral:
        the permutahedron's projection of ``1/n + l / (nu n)`` (``nu > 0``) or the sorted spectrum.
        """
        return self.weights(self.losses(theta))

    def weights(self, l: Tensor) -> Tensor:
        """The worst-case weights for given per-sample losses ``l (B, n)``: `best_response` in terms of losses."""
        Y, n = self.domain[1], self.n
        if self.ambiguity == "kl":
            return torch.softmax(l / self._col(self.lam, l), -1)
        if self._quad is not None:
            w = self._col(self._quad, l)
            if self.ambiguity == "chi2":
                return project_simplex(1.0 / n + l / (w * n))
            if isinstance(w, float) and w == 0:
                return Y.lmo(-l)
            return Y.project(1.0 / n + l / (torch.as_tensor(w, dtype=l.dtype, device=l.device).clamp_min(1e-300) * n))
        return Y.lmo(-l)

    def primal_objective(self, theta: Tensor) -> Tensor:
        """``P(theta) = max_{q in Q} f(theta, q)`` exactly, ``(B,)``: the DRO risk plus the ridge term."""
        if self.ambiguity == "kl":
            l = self.losses(theta)
            lam = self._col(self.lam, l)
            risk = (lam * (torch.logsumexp(l / lam, -1, keepdim=True) - math.log(self.n))).squeeze(-1)
            return risk + (0.5 * self._col(self.mu, theta) * theta.square()).sum(-1)
        return self._f(theta, self.best_response(theta))

    # -- instances and references ---------------------------------------------------------------------
    selectable = True  # select_into rebuilds the oracles on the selected data

    def select_into(self, new: "DROProblem", selection: Selection) -> None:
        """The data, parameters and oracle seeds of the selected instances (`saddle.VIProblem.select`)."""
        for name in ("features", "labels", "rho", "lam", "nu", "mu", "_quad"):
            setattr(new, name, take(getattr(self, name), selection))
        new.seed = take(self.operator.seeds(self.batch_size, "cpu"), selection)
        new.operator = StochasticOperator(new._component, self.n, new.seed, full=new._full)
        new.f = new._f
        super().select_into(new, selection)
        if not self.has_reference:  # the selected instances' own cvxpy solves, not the whole batch's
            new._reference = types.MethodType(DROProblem._reference, new)

    def instance(self, i: int) -> "DROProblem":
        """Deprecated: ``select(i)`` (instance i as a problem of batch size 1)."""
        warnings.warn("DROProblem.instance(i) is deprecated and will be removed in the next release; use "
                      "select(i)", DeprecationWarning, stacklevel=2)
        return self.select(i)

    def _reference(self) -> Reference:
        if callable(self.loss):
            return None
        B = self.batch_size
        thetas, qs, values = [], [], []
        A = self.features.expand(B, -1, -1).detach().cpu().double().numpy()
        b = self.labels.expand(B, -1).detach().cpu().double().numpy()
        for i in range(B):
            value, theta, q = dro_reference(A[i], b[i], loss=self.loss, ambiguity=self.ambiguity,
                                            alpha=self.alpha, rho=_item(self.rho, i), lam=_item(self.lam, i),
                                            spectrum=None if self.spectrum is None else self.spectrum.double().numpy(),
                                            nu=_item(self.nu, i), mu=_item(self.mu, i))
            thetas.append(torch.from_numpy(theta))
            qs.append(torch.from_numpy(q))
            values.append(value)
        place = lambda t: t.to(device=self.device, dtype=self.dtype)  # noqa: E731
        return Reference((place(torch.stack(thetas)), place(torch.stack(qs))), place(torch.tensor(values)),
                         unique=self.ambiguity not in ("cvar", "spectral"), source="cvxpy (Clarabel)")


def _item(value, i: int):
    if value is None or isinstance(value, Real):
        return value
    return float(value.reshape(-1)[i if value.numel() > 1 else 0])


def dro_reference(A: np.ndarray, b: np.ndarray, *, loss: str, ambiguity: str, alpha=None, rho=None, lam=None,
                  spectrum=None, nu=0.0, mu=0.1) -> tuple[float, np.ndarray, np.ndarray]:
    """One DRO instance's optimum by cvxpy (Clarabel), from its convex reformulation.

    With the epigraph ``t >= l(theta)`` (valid since the worst case is
    nondecreasing in the losses) the risk is, for ``u = 1/n``:

    - CVaR (Rockafellar and Uryasev 2000): ``min_eta eta + sum_i (t_i - eta)_+ / (alpha n)``;
    - chi-square ball (conic duality, the ball ``|q - u| <= r = sqrt(2 rho / n)``):
      ``min_eta mean(t) + r |t - eta 1|_2``;
    - chi-square penalty: ``min_eta eta + (lam n / 2) sum_i [(1/n + (t_i - eta)/(lam n))_+^2 - 1/n^2]``;
    - KL: ``lam (log sum_i exp(t_i / lam) - log n)``;
    - spectral risk: ``sum_k (sigma_k - sigma_(k-1)) * (sum of the n - k + 1 largest t)``, and with
      smoothing ``nu > 0`` the infimal convolution ``min_v R_sigma(t - v) + mean(v) + |v|^2 / (2 nu n)``;
    - ERM: ``mean(t)``.

    Returns:
        ``(value, theta (d,), q (n,))``: the optimal value of
        ``risk + (mu/2)|theta|^2``, the minimizer and the worst-case weights
        (the duals of ``t >= l(theta)``).
    """
    import cvxpy as cp

    n, d = A.shape
    theta = cp.Variable(d)
    t = cp.Variable(n)
    margin = A @ theta
    if loss == "logistic":
        l = cp.logistic(-cp.multiply(b, margin))
    elif loss == "squared":
        l = 0.5 * cp.square(margin - b)
    else:
        l = 0.5 * cp.huber(cp.pos(1 - cp.multiply(b, margin)), 1)
    epigraph = t >= l
    eta = cp.Variable()
    if ambiguity == "cvar":
        risk = eta + cp.sum(cp.pos(t - eta)) / (alpha * n)
    elif ambiguity == "chi2_ball":
        risk = cp.sum(t) / n + math.sqrt(2 * rho / n) * cp.norm(t - eta, 2)
    elif ambiguity == "chi2":
        c = lam * n
        risk = eta + 0.5 * c * cp.sum(cp.square(cp.pos(1.0 / n + (t - eta) / c))) - 0.5 * c / n
    elif ambiguity == "kl":
        risk = lam * (cp.log_sum_exp(t / lam) - math.log(n))
    elif ambiguity == "spectral":
        sigma = np.sort(np.asarray(spectrum, dtype=np.float64))
        v = cp.Variable(n) if nu > 0 else None
        arg = t - v if nu > 0 else t
        steps = np.diff(np.concatenate([[0.0], sigma]))
        risk = sum(float(s) * cp.sum_largest(arg, n - k) for k, s in enumerate(steps) if s > 1e-15)
        if nu > 0:
            risk = risk + cp.sum(v) / n + cp.sum_squares(v) / (2 * nu * n)
    else:
        risk = cp.sum(t) / n
    problem = cp.Problem(cp.Minimize(risk + 0.5 * mu * cp.sum_squares(theta)), [epigraph])
    problem.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12, max_iter=500)
    if problem.status not in (cp.OPTIMAL, cp.OPTIMAL_INACCURATE):
        raise RuntimeError(f"cvxpy did not solve the DRO reference ({ambiguity}, {loss}): {problem.status}")
    q = np.clip(np.asarray(epigraph.dual_value, dtype=np.float64), 0, None)
    return float(problem.value), np.asarray(theta.value, dtype=np.float64), q / q.sum()


@register("dro")
def dro(n: int = 100, d: int = 5, *, loss: str = "logistic", ambiguity: str = "cvar", alpha: float = 0.1,
        rho: float = 0.5, lam: float = 0.1, spectrum: str | Tensor = "superquantile", nu: float = 0.1,
        mu: float = 0.1, minority: float = 0.1, shift: float = 2.0, noise: float = 0.0, batch_size: int = 1, seed: int = 0, device=None,
        dtype=torch.float64) -> DROProblem:
    """A batch of DRO problems on synthetic group-shift data (`group_shift_data`).

    Args:
        n: samples.
        d: features.
        loss: ``"logistic"``, ``"squared"`` (regression labels) or ``"smooth_hinge"``.
        ambiguity: one of `AMBIGUITY_SETS`.
        alpha: CVaR's level (also the superquantile spectrum's).
        rho: the chi-square ball's radius.
        lam: the chi-square / KL penalty's weight.
        spectrum: ``"superquantile"``, ``"extremile"``, ``"esrm"`` or an ``(n,)`` tensor.
        nu: the spectral risk's smoothing weight.
        mu: the ridge weight.
        minority: the minority group's fraction.
        shift: the minority's shift.
        noise: label noise (`group_shift_data`; CVaR with flipped labels and a small alpha often
            has the degenerate solution theta = 0, all losses equal).
        batch_size: B instances (independent data sets; oracle seeds ``seed + b``).
        seed: data and oracle seed.
        device: the torch device.
        dtype: the floating dtype (float64 by default: references are exact).
    """
    batch = make_batch(batch_size, seed, device, dtype)
    A, b, _ = group_shift_data(n, d, minority=minority, shift=shift, noise=noise, regression=loss == "squared",
                               batch_size=batch.size, seed=batch.seed)
    if isinstance(spectrum, str):
        makers = {"superquantile": lambda: superquantile(n, alpha), "extremile": lambda: extremile(n, 2.0),
                  "esrm": lambda: esrm(n, 1.0)}
        if spectrum not in makers:
            raise ValueError(f"spectrum must be one of {sorted(makers)} or an (n,) tensor, got {spectrum!r}")
        spectrum = makers[spectrum]()
    kw = {"cvar": dict(alpha=alpha), "chi2_ball": dict(rho=rho), "chi2": dict(lam=lam), "kl": dict(lam=lam),
          "spectral": dict(spectrum=spectrum, nu=nu), "erm": {}}
    if ambiguity not in kw:
        raise ValueError(f"ambiguity must be one of {AMBIGUITY_SETS}, got {ambiguity!r}")
    return DROProblem(batch.place(A), batch.place(b), loss=loss, ambiguity=ambiguity, mu=mu, seed=batch.seed,
                      **kw[ambiguity])
