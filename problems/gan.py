"""GAN training as a saddle-point problem: the Dirac GAN and 2-D Gaussian-mixture GANs.

The generator's parameters are the minimizing player x, the discriminator's
the maximizing player y, and ``f(x, y)`` is the zero-sum GAN objective
(`SaddleProblem`: ``min_x max_y f``). Each family is batched: B independent
instances (different seeds for the data, latent codes and initial networks).

- `dirac_gan`: Mescheder, Geiger and Nowozin 2018, "Which training methods for
  GANs do actually converge?". The data are a Dirac at 0, the generator is a
  Dirac at theta and the discriminator is ``D(t) = psi t``:
  ``f(theta, psi) = phi(psi theta) + phi(0)`` with ``phi(t) = -log(1 + e^-t)``
  (standard GAN) or ``phi(t) = t`` (Wasserstein GAN: the bilinear game
  ``theta psi``). The unique equilibrium is (0, 0), where the Jacobian of
  ``F = (grad_theta f, -grad_psi f)`` is ``[[0, phi'(0)], [-phi'(0), 0]]``
  with eigenvalues ``+-i phi'(0)``: simultaneous GDA spirals out for every
  step (``|z - eta F(z)|^2 = |z|^2 + eta^2 |F(z)|^2`` since ``<F(z), z> = 0``;
  near 0 each step multiplies the distance by ``sqrt(1 + eta^2 phi'(0)^2)``),
  while extragradient converges. The R1 gradient penalty
  ``(gamma / 2) psi^2`` (``r1=gamma``) makes the equilibrium locally
  attracting for GDA with small steps: the Jacobian becomes
  ``[[0, phi'(0)], [-phi'(0), gamma]]``, with eigenvalues of real part > 0.
- `gaussian_mixture_gan`: MLP generator and discriminator on 2-D mixtures of
  Gaussians (8 on a ring, or 25 on a 5 x 5 grid), the usual test of mode
  collapse; `sample`, `modes_covered` and `high_quality_fraction` measure what
  a trained generator covers.

Points are flat parameter vectors: x is ``(B, n)`` with row i equal to
``torch.nn.utils.parameters_to_vector(generator_i.parameters())``, and y
likewise for the discriminator. The objective evaluates all B networks at
once as batched MLPs on the flat rows (`problems.mlp.BatchedMLP`, one
``torch.baddbmm`` a layer), so it is an ordinary differentiable function of
(x, y): gradients, Hessian-vector products and mixed second derivatives
(plain ``torch.autograd`` double backward, or ``torch.func`` transforms of the
operator, as competitive methods use) all work through it. The R1 penalty's
input gradient ``grad_r D(r)`` is the discriminator's backward pass written
out (`BatchedMLP.value_and_input_grad`), so it differentiates again like the
rest.
"""

from __future__ import annotations

import math
from numbers import Real

import torch
from torch import Tensor, nn

from saddle import SaddleProblem

from . import register
from .batch import Batch, check_positive, check_positive_int, make_batch
from .mlp import ACTIVATIONS, BatchedMLP, init_default, mlp

__all__ = ["dirac_gan", "dirac_jacobian", "gaussian_mixture_gan", "MixtureGAN", "mixture_centers", "sample",
           "modes_covered", "high_quality_fraction", "LOSSES", "ACTIVATIONS", "MODES"]

LOSSES = ("standard", "wasserstein")
MODES = ("ring", "grid")


def _check_choice(value, name: str, choices) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")
    return value


def _check_nonnegative(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 <= value < math.inf:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Dirac GAN
# ---------------------------------------------------------------------------------------------


def _phi(loss: str):
    """``phi`` and ``phi'(0)`` of the loss: ``-log(1 + e^-t) = -softplus(-t)`` or ``t``."""
    if loss == "standard":
        return (lambda t: -nn.functional.softplus(-t)), 0.5
    return (lambda t: t), 1.0


def _start(value, name: str, B: int) -> Tensor:
    """A float or B floats as a ``(B, 1)`` float64 column."""
    t = torch.as_tensor(value, dtype=torch.float64) if isinstance(value, (Real, Tensor, list, tuple)) else None
    if t is None or t.dim() > 1 or (t.dim() == 1 and t.shape[0] != B):
        raise ValueError(f"{name} must be a float or a sequence of batch_size = {B} floats, got {value!r}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {value!r}")
    return t.reshape(-1, 1).expand(B, 1).clone()


@register("dirac_gan")
def dirac_gan(*, loss: str = "standard", r1: float = 0.0, radius: float = 1.0, x0=None, y0=None,
              batch_size: int = 1, seed: int = 0, device=None, dtype=torch.float64) -> SaddleProblem:
    """A batch of Dirac GANs ``min_theta max_psi phi(psi theta) + phi(0) - (r1 / 2) psi^2``.

    The data distribution is a Dirac at 0, the generator a Dirac at theta
    (x = theta, shape ``(B, 1)``), the discriminator ``D(t) = psi t``
    (y = psi, shape ``(B, 1)``); the objective is Mescheder et al.'s
    ``L(theta, psi) = phi(D(theta)) + phi(-D(0))`` minus the R1 penalty
    ``(gamma / 2) E_data |D'(t)|^2 = (gamma / 2) psi^2``.

    Args:
        loss: ``"standard"``: ``phi(t) = -log(1 + exp(-t))``, ``phi'(0) = 1/2``;
            ``"wasserstein"``: ``phi(t) = t``, ``phi'(0) = 1`` (the bilinear game
            ``theta psi``).
        r1: gamma >= 0, the weight of the R1 gradient penalty on the discriminator.
        radius: the starting points lie on the circle of this radius around
            the equilibrium, at seeded uniformly random angles (one per instance).
        x0: the starting theta instead (a float, or batch_size floats); give
            x0 and y0 both or neither.
        y0: the starting psi instead, as x0.

    The unique equilibrium is (0, 0) with value ``2 phi(0)`` (the `solution`
    and reference value). The Jacobian of F at (0, 0) is
    ``[[0, phi'(0)], [-phi'(0), r1]]``. For the Wasserstein loss F is linear and
    its Lipschitz constant (the spectral norm of that matrix) is reported; the
    standard loss has no global Lipschitz constant.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    loss = _check_choice(loss, "loss", LOSSES)
    gamma = _check_nonnegative(r1, "r1")
    radius = check_positive(radius, "radius")
    B = batch.size
    if (x0 is None) != (y0 is None):
        raise ValueError("x0 and y0 must be given together (or neither)")
    if x0 is None:
        angle = 2 * math.pi * torch.rand(B, 1, dtype=torch.float64, generator=batch.generator())
        theta0, psi0 = radius * torch.cos(angle), radius * torch.sin(angle)
    else:
        theta0, psi0 = _start(x0, "x0", B), _start(y0, "y0", B)
    phi = _phi(loss)[0]

    def f(x, y):
        t = (x * y).sum(-1)
        value = phi(t) + phi(torch.zeros_like(t))
        if gamma:
            value = value - 0.5 * gamma * y.square().sum(-1)
        return value

    zero = batch.place(torch.zeros(B, 1))
    value = batch.place(torch.full((B,), -2 * math.log(2.0) if loss == "standard" else 0.0, dtype=torch.float64))
    lipschitz = None
    if loss == "wasserstein":
        lipschitz = torch.linalg.matrix_norm(torch.tensor([[0.0, 1.0], [-1.0, gamma]], dtype=torch.float64), ord=2)
    name = f"dirac_gan(loss={loss!r}{f', r1={gamma}' if gamma else ''})"
    return SaddleProblem(f, batch.place(theta0), batch.place(psi0), solution=(zero, zero), value=value,
                         lipschitz=lipschitz, name=name)


def dirac_jacobian(loss: str = "standard", r1: float = 0.0) -> Tensor:
    """The Jacobian of F at the Dirac GAN's equilibrium, ``[[0, phi'(0)], [-phi'(0), r1]]`` (float64, 2 x 2)."""
    _check_choice(loss, "loss", LOSSES)
    slope = _phi(loss)[1]
    return torch.tensor([[0.0, slope], [-slope, _check_nonnegative(r1, "r1")]], dtype=torch.float64)


# ---------------------------------------------------------------------------------------------
# Gaussian mixtures
# ---------------------------------------------------------------------------------------------


def mixture_centers(mode: str = "ring", scale: float = 2.0) -> Tensor:
    """The mixture's means, float64 ``(K, 2)``.

    ``"ring"``: 8 points ``scale (cos 2 pi k / 8, sin 2 pi k / 8)``; ``"grid"``:
    the 25 points ``scale (i, j)``, ``i, j in {-2, ..., 2}``.
    """
    _check_choice(mode, "mode", MODES)
    scale = check_positive(scale, "scale")
    if mode == "ring":
        angle = 2 * math.pi * torch.arange(8, dtype=torch.float64) / 8
        return scale * torch.stack([torch.cos(angle), torch.sin(angle)], -1)
    axis = torch.arange(-2, 3, dtype=torch.float64)
    return scale * torch.cartesian_prod(axis, axis)


class MixtureGAN(SaddleProblem):
    """A batch of GANs on a 2-D Gaussian mixture (made by `gaussian_mixture_gan`).

    Attributes:
        generator: the B generators as one flat-parameter function
            ``generator(x (B, n), latent (B, N, latent_dim)) -> (B, N, 2)`` (or one
            instance: ``(n,)``, ``(N, latent_dim)`` -> ``(N, 2)``); its
            ``template`` is the architecture (an ``nn.Sequential`` on the meta
            device) and ``unflatten`` maps flat vectors to named parameters.
        discriminator: the B discriminators likewise,
            ``discriminator(y (B, m), points (B, N, 2)) -> (B, N, 1)``.
        centers: the mixture's means ``(K, 2)``.
        std: the mixture's standard deviation.
        latent_dim: the generator's input dimension.
        loss: ``"standard"`` or ``"wasserstein"``.
        r1: gamma of the R1 penalty.
        resample: whether every evaluation draws fresh samples and codes.
        real: the fixed real samples ``(B, N, 2)`` the objective averages over
            (``resample=False``).
        latent: the fixed latent codes ``(B, N, latent_dim)``.
    """

    def __init__(self, *, generator: BatchedMLP, discriminator: BatchedMLP, real: Tensor, latent: Tensor,
                 centers: Tensor, std: float, loss: str, r1: float, resample: bool, batch: Batch, name: str):
        self.generator, self.discriminator = generator, discriminator
        self.real, self.latent = real, latent
        self.centers, self.std, self.loss, self.r1, self.resample = centers, std, loss, r1, resample
        self.latent_dim = latent.shape[-1]
        self._stream = None
        if resample:
            self._stream = torch.Generator(device=batch.device).manual_seed(batch.seed + 1)
        super().__init__(self._objective, batch.place(generator.start), batch.place(discriminator.start), name=name)

    def draw(self, n: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Fresh real samples ``(B, n, 2)`` and latent codes ``(B, n, latent_dim)`` on the problem's device."""
        B, K = self.real.shape[0], self.centers.shape[0]
        device, dtype = self.real.device, self.real.dtype
        idx = torch.randint(K, (B, n), generator=generator, device=device)
        noise = torch.randn(B, n, 2, generator=generator, device=device, dtype=dtype)
        latent = torch.randn(B, n, self.latent_dim, generator=generator, device=device, dtype=dtype)
        return self.centers[idx] + self.std * noise, latent

    def _value(self, x: Tensor, y: Tensor, real: Tensor, latent: Tensor) -> Tensor:
        """f of every instance on the given data: ``(B,)``.

        Args:
            x: the generators' parameters ``(B, n)``.
            y: the discriminators' parameters ``(B, m)``.
            real: real samples ``(B, N, 2)``.
            latent: latent codes ``(B, N', latent_dim)``.

        ``f_i = mean_j log sigmoid(D_i(real_ij)) + mean_j log(1 - sigmoid(D_i(G_i(latent_ij))))``
        (standard loss; ``mean_j D_i(real_ij) - mean_j D_i(G_i(latent_ij))``
        for the Wasserstein loss), minus ``(r1 / 2) mean_j |grad_r D_i(real_ij)|^2``.
        The instances are independent (instance i's f depends on row i of
        every argument only). The R1 slopes ``grad_r D_i(real_ij)`` ``(B, N, 2)``
        are the discriminator's backward pass written out
        (`BatchedMLP.value_and_input_grad`), an ordinary expression of y and real:
        f composes with ``torch.func`` transforms and with ``torch.autograd``
        double backward alike. The discriminator runs on the real and the
        generated points separately: on one concatenated batch, each mixed
        product would also differentiate through the real points' half, which
        does not depend on x (measured: twice the product time). A single
        instance (``x (n,)``, ``y (m,)``, ``real (N, 2)``, ``latent (N', latent_dim)``
        -> ``()``) works too.
        """
        D = self.discriminator
        if self.r1:
            d_real, slope = D.value_and_input_grad(y, real)
        else:
            d_real = D(y, real).squeeze(-1)
        d_fake = D(y, self.generator(x, latent)).squeeze(-1)
        if self.loss == "standard":
            # E log sigmoid(D(real)) + E log(1 - sigmoid(D(fake)))
            value = -nn.functional.softplus(-d_real).mean(-1) - nn.functional.softplus(d_fake).mean(-1)
        else:
            value = d_real.mean(-1) - d_fake.mean(-1)
        if self.r1:
            value = value - 0.5 * self.r1 * slope.square().sum(-1).mean(-1)
        return value

    def _objective(self, x: Tensor, y: Tensor) -> Tensor:
        if self.resample:
            real, latent = self.draw(self.real.shape[1], self._stream)
        else:
            real, latent = self.real, self.latent
        return self._value(x, y, real, latent)


@register("gaussian_mixture_gan")
def gaussian_mixture_gan(*, mode: str = "ring", loss: str = "standard", latent_dim: int = 16, width: int = 64,
                         depth: int = 2, activation: str = "tanh", n_samples: int = 256, std: float | None = None,
                         scale: float = 2.0, r1: float = 0.0, resample: bool = False, batch_size: int = 1,
                         seed: int = 0, device=None, dtype=torch.float64) -> MixtureGAN:
    """A batch of GANs learning a 2-D mixture of Gaussians: ``min_G max_D f(G, D)``.

    The generator maps ``z ~ N(0, I_latent_dim)`` to R^2, the discriminator R^2
    to a logit (standard loss) or a score (Wasserstein); both are MLPs with
    ``depth`` hidden layers of ``width`` units and the given activation, with
    PyTorch's default initialization drawn from the seed. The objective is

    - ``"standard"``: the zero-sum (minimax) GAN
      ``f = E_real log sigmoid(D(x)) + E_z log(1 - sigmoid(D(G(z))))``; the
      non-saturating generator loss is not zero-sum and so not a saddle problem;
    - ``"wasserstein"``: ``f = E_real D(x) - E_z D(G(z))`` (no weight clipping:
      use ``r1 > 0`` to keep the critic bounded);

    minus the R1 penalty ``(r1 / 2) E_real |grad_x D(x)|^2`` when ``r1 > 0``.

    Args:
        mode: ``"ring"`` (8 modes on a circle of radius ``scale``) or ``"grid"``
            (25 modes at ``scale (i, j)``, ``i, j in {-2..2}``); see `mixture_centers`.
        loss: ``"standard"`` or ``"wasserstein"``.
        latent_dim: the generator's input dimension.
        width: the hidden layers' width (both networks).
        depth: the number of hidden layers (both networks).
        activation: ``"tanh"`` (smooth: the default), ``"relu"``,
            ``"leaky_relu"`` (slope 0.2) or ``"elu"``.
        n_samples: N, the number of real samples and of latent codes per instance.
        std: the modes' standard deviation (default 0.02 for the ring, 0.05 for the grid).
        scale: the ring's radius or the grid's spacing.
        r1: gamma >= 0 of the R1 gradient penalty on real data.
        resample: False (the default): each instance's N real samples and N
            latent codes are drawn once from the seed and fixed, so f is a
            deterministic function (every solver, line search and second
            derivative sees the same objective: the empirical GAN game on that
            minibatch). True: every evaluation of f draws fresh samples and
            codes (a stochastic operator; the two calls of an extragradient
            step see different samples), from a generator on the device seeded
            with ``seed + 1``.

    With ``resample=False`` the generator only ever sees the N fixed codes:
    it can fit them (every mode, nearly every training code within 3 std)
    and still map fresh codes (`sample`) badly. In a seeded run of 3,000
    simultaneous Adam steps (lr 1e-3, betas (0.5, 0.999), float32, 8
    instances) the default N = 256 gave 8 modes on the training codes but
    3.6 of 8 modes on fresh codes; N = 1024 gave 8 of 8 on fresh codes
    (49% high quality), and ``resample=True`` 8 of 8 (79%). Judge mode
    coverage on fresh samples, and use a larger N (or ``resample=True``)
    when that is the point.

    The start is each instance's freshly initialized generator (x, ``(B, n)``)
    and discriminator (y, ``(B, m)``). There is no reference solution.
    """
    batch = make_batch(batch_size, seed, device, dtype)
    mode = _check_choice(mode, "mode", MODES)
    loss = _check_choice(loss, "loss", LOSSES)
    activation = _check_choice(activation, "activation", ACTIVATIONS)
    latent_dim = check_positive_int(latent_dim, "latent_dim")
    width = check_positive_int(width, "width")
    depth = check_positive_int(depth, "depth")
    n_samples = check_positive_int(n_samples, "n_samples")
    std = (0.02 if mode == "ring" else 0.05) if std is None else check_positive(std, "std")
    scale = check_positive(scale, "scale")
    gamma = _check_nonnegative(r1, "r1")
    resample = _check_bool(resample, "resample")

    B, gen = batch.size, batch.generator()
    centers = mixture_centers(mode, scale)
    K = centers.shape[0]
    generators = [init_default(mlp(latent_dim, 2, width, depth, activation), gen) for _ in range(B)]
    discriminators = [init_default(mlp(2, 1, width, depth, activation), gen) for _ in range(B)]
    idx = torch.randint(K, (B, n_samples), generator=gen)
    real = centers[idx] + std * torch.randn(B, n_samples, 2, dtype=torch.float64, generator=gen)
    latent = torch.randn(B, n_samples, latent_dim, dtype=torch.float64, generator=gen)

    G, D = BatchedMLP(generators, activation), BatchedMLP(discriminators, activation)
    name = (f"gaussian_mixture_gan(mode={mode!r}, loss={loss!r}{f', r1={gamma}' if gamma else ''}"
            f"{', resample=True' if resample else ''})")
    return MixtureGAN(generator=G, discriminator=D, real=batch.place(real), latent=batch.place(latent),
                      centers=batch.place(centers), std=std, loss=loss, r1=gamma, resample=resample, batch=batch,
                      name=name)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def sample(problem: MixtureGAN, x: Tensor, n: int, *, seed: int = 0) -> Tensor:
    """``n`` samples of each instance's generator with parameters ``x`` ``(B, n_x)``: ``(B, n, 2)``.

    The latent codes are drawn from ``seed`` (on the CPU in float64, then
    moved), so the same x and seed give the same samples on every device.
    Evaluated without gradients.
    """
    if not isinstance(problem, MixtureGAN):
        raise TypeError(f"problem must be a MixtureGAN (from gaussian_mixture_gan), got {type(problem).__name__}")
    n = check_positive_int(n, "n")
    if not isinstance(x, Tensor) or x.shape != problem.z0[0].shape:
        raise ValueError(f"x must be a {tuple(problem.z0[0].shape)} tensor of generator parameters, "
                         f"got {getattr(x, 'shape', type(x).__name__)}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    gen = torch.Generator().manual_seed(seed)
    latent = torch.randn(x.shape[0], n, problem.latent_dim, dtype=torch.float64, generator=gen)
    with torch.no_grad():
        return problem.generator(x, latent.to(device=x.device, dtype=x.dtype))


def _assign(samples: Tensor, centers: Tensor, std: float) -> tuple[Tensor, Tensor]:
    """Nearest center of every sample ``(B, N)`` and whether it is within 3 std of it ``(B, N)``."""
    if not isinstance(samples, Tensor) or samples.dim() != 3:
        raise ValueError(f"samples must be a (B, N, d) tensor, got {getattr(samples, 'shape', type(samples).__name__)}")
    centers = torch.as_tensor(centers).to(device=samples.device, dtype=samples.dtype)
    if centers.dim() == 2:
        centers = centers.unsqueeze(0).expand(samples.shape[0], -1, -1)
    if centers.dim() != 3 or centers.shape[-1] != samples.shape[-1] or centers.shape[0] != samples.shape[0]:
        raise ValueError(f"centers must be (K, d) or (B, K, d) matching samples {tuple(samples.shape)}, "
                         f"got {tuple(centers.shape)}")
    std = check_positive(std, "std")
    dist = torch.cdist(samples, centers)  # (B, N, K)
    nearest, index = dist.min(-1)
    return index, nearest <= 3 * std


def high_quality_fraction(samples: Tensor, centers: Tensor, std: float) -> Tensor:
    """The fraction of samples within 3 std of some mode, per instance ``(B,)``.

    Args:
        samples: ``(B, N, 2)`` (e.g. from `sample`).
        centers: the modes, ``(K, 2)`` or per instance ``(B, K, 2)``.
        std: the modes' standard deviation.

    The "high-quality samples" of VEEGAN (Srivastava et al. 2017) and PacGAN
    (Lin et al. 2018).
    """
    _, good = _assign(samples, centers, std)
    return good.to(samples.dtype).mean(-1)


def modes_covered(samples: Tensor, centers: Tensor, std: float, *, min_fraction: float = 0.008) -> Tensor:
    """The number of modes the samples cover, per instance ``(B,)`` (int64).

    Each high-quality sample (within 3 std of its nearest mode) is assigned to
    that nearest mode; a mode is covered when at least
    ``max(1, ceil(min_fraction * N))`` of the N samples are assigned to it. The
    default 0.008 is PacGAN's rule (Lin et al. 2018: a mode is lost when fewer
    than 20 of 2,500 samples are registered to it); ``min_fraction=0`` counts
    every mode with at least one high-quality sample (as in VEEGAN).

    Args:
        samples: ``(B, N, 2)``.
        centers: ``(K, 2)`` or ``(B, K, 2)``.
        std: the modes' standard deviation.
        min_fraction: in ``[0, 1]``.
    """
    if isinstance(min_fraction, bool) or not isinstance(min_fraction, Real) or not 0 <= min_fraction <= 1:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction!r}")
    index, good = _assign(samples, centers, std)
    K = torch.as_tensor(centers).shape[-2]
    counts = torch.zeros(samples.shape[0], K, dtype=torch.int64, device=samples.device)
    counts.scatter_add_(1, index, good.to(torch.int64))
    needed = max(1, math.ceil(min_fraction * samples.shape[1]))
    return (counts >= needed).sum(-1)
