"""Tests of the GAN problem families (`problems.gan`).

The Dirac GAN is checked against hand-derived closed forms (objective,
gradients, Jacobian at the equilibrium, the GDA growth factor
``sqrt(1 + eta^2 phi'(0)^2)``); the mixture GAN's batched objective
(batched MLPs written out on the flat parameters, ``torch.baddbmm`` per layer,
and the R1 input gradient written out as the backward pass) against single
instances evaluated with ordinary ``nn.Sequential`` modules
(``torch.func.functional_call``) and autograd, and its second derivatives
(``torch.func`` and plain ``torch.autograd`` double backward) against
autograd Hessians and finite differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import vector_to_parameters

from saddle import problems
import saddle
from saddle.problems.gan import (MixtureGAN, dirac_jacobian, high_quality_fraction, mixture_centers, modes_covered,
                          sample)
from saddle import Status, merit

F64 = torch.float64

def np64(t):
    return t.detach().cpu().double().numpy()


# ---------------------------------------------------------------------------------------------
# Dirac GAN
# ---------------------------------------------------------------------------------------------


def sigmoid(t):
    return 1.0 / (1.0 + np.exp(-t))


def dirac_closed_form(loss, gamma, th, ps):
    """f, grad_theta f, grad_psi f of phi(psi theta) + phi(0) - gamma/2 psi^2, by hand."""
    t = th * ps
    if loss == "standard":  # phi(t) = -log(1 + e^-t), phi'(t) = sigmoid(-t)
        f = -np.log1p(np.exp(-t)) - math.log(2.0)
        d = sigmoid(-t)
    else:  # phi(t) = t
        f = t
        d = np.ones_like(t)
    return f - 0.5 * gamma * ps**2, ps * d, th * d - gamma * ps


@pytest.mark.parametrize("loss, gamma", [("standard", 0.0), ("standard", 0.7), ("wasserstein", 0.0),
                                         ("wasserstein", 0.3)])
def test_dirac_objective_and_gradients_match_closed_forms(loss, gamma):
    B = 6
    p = problems.get("dirac_gan", loss=loss, r1=gamma, batch_size=B, seed=2)
    assert p.dims == (1, 1) and p.dtype == F64
    rng = np.random.default_rng(0)
    th, ps = 2 * rng.standard_normal(B), 2 * rng.standard_normal(B)
    z = (torch.from_numpy(th).reshape(B, 1), torch.from_numpy(ps).reshape(B, 1))
    f, g_th, g_ps = dirac_closed_form(loss, gamma, th, ps)
    np.testing.assert_allclose(np64(p.objective(z)), f, rtol=1e-13, atol=1e-14)
    Fx, Fy = p.F(z)
    np.testing.assert_allclose(np64(Fx)[:, 0], g_th, rtol=1e-13, atol=1e-14)
    np.testing.assert_allclose(np64(Fy)[:, 0], -g_ps, rtol=1e-13, atol=1e-14)
    # the start lies on the circle of radius 1 (the default), at different angles
    r = np64(merit.distance(p, p.z0))
    np.testing.assert_allclose(r, 1.0, rtol=1e-14)
    assert len(np.unique(np64(p.z0[0]))) == B


@pytest.mark.parametrize("loss, gamma", [("standard", 0.0), ("standard", 0.5), ("wasserstein", 0.0)])
def test_dirac_equilibrium(loss, gamma):
    p = problems.get("dirac_gan", loss=loss, r1=gamma, batch_size=3)
    zs = p.reference.solution
    assert all(torch.equal(b, torch.zeros(3, 1, dtype=F64)) for b in zs)
    assert p.reference.unique
    assert torch.equal(merit.residual(p, zs), torch.zeros(3, dtype=F64))
    expected_value = -2 * math.log(2.0) if loss == "standard" else 0.0
    np.testing.assert_allclose(np64(p.reference.value), expected_value, rtol=1e-15)
    np.testing.assert_allclose(np64(p.objective(zs)), expected_value, rtol=1e-15)
    # the Jacobian of F at (0, 0), column by column with torch.func.jvp, is [[0, a], [-a, gamma]]
    a = 0.5 if loss == "standard" else 1.0
    cols = []
    for e in ((1.0, 0.0), (0.0, 1.0)):
        v = tuple(torch.full((3, 1), c, dtype=F64) for c in e)
        cols.append(torch.cat(p.operator.jvp(zs, v), -1))
    J = np64(torch.stack(cols, -1))
    np.testing.assert_allclose(J, np.broadcast_to([[0.0, a], [-a, gamma]], (3, 2, 2)), rtol=0, atol=1e-15)
    np.testing.assert_allclose(np64(dirac_jacobian(loss, gamma)), J[0], rtol=0, atol=1e-15)
    if gamma == 0:
        np.testing.assert_allclose(np.sort(np.linalg.eigvals(J[0]).imag), [-a, a], atol=1e-15)
        np.testing.assert_allclose(np.linalg.eigvals(J[0]).real, 0.0, atol=1e-15)


@pytest.mark.parametrize("loss, a", [("standard", 0.5), ("wasserstein", 1.0)])
def test_dirac_gda_spirals_out_at_the_closed_form_rate(loss, a):
    """Near (0, 0) each GDA step multiplies the distance by rho = |1 -+ i eta a| = sqrt(1 + eta^2 a^2)."""
    eta, r0, every, N = 0.2, 1e-4, 10, 200
    p = problems.get("dirac_gan", loss=loss, radius=r0, batch_size=4, seed=1)
    sol = saddle.solve(p, "gda", step_size=eta, max_iters=N, tol=0.0, check_every=every)
    assert (sol.status == Status.MAX_ITERS).all()
    rho = math.sqrt(1 + eta**2 * a**2)
    # the spectral radius of I - eta J, from the eigenvalues of J
    assert abs(np.abs(np.linalg.eigvals(np.eye(2) - eta * np64(dirac_jacobian(loss)))).max() - rho) < 1e-15
    d = np64(sol.history["distance"])  # (T, B), every 10 iterations
    assert (np.diff(d, axis=0) > 0).all()  # the distance grows at every check
    growth = (d[1:] / d[:-1]) ** (1 / every)  # observed growth per step
    tol = 1e-14 if loss == "wasserstein" else 1e-7  # exact for the bilinear game; O(r^2) otherwise
    np.testing.assert_allclose(growth, rho, rtol=tol)
    np.testing.assert_allclose(np64(merit.distance(p, sol.z)), r0 * rho**N, rtol=1e-6)


def test_dirac_gda_does_not_converge_from_afar():
    """Globally, |z - eta F(z)|^2 = |z|^2 + eta^2 |F(z)|^2 (since <F(z), z> = 0): the distance only grows."""
    p = problems.get("dirac_gan", batch_size=8, seed=3)
    sol = saddle.solve(p, "gda", step_size=0.1, max_iters=300, tol=1e-8)
    assert (sol.status != Status.CONVERGED).all()
    d = np64(sol.history["distance"])
    assert (np.diff(d, axis=0) > 0).all() and (d[-1] > 1.0).all()


@pytest.mark.parametrize("loss", ["standard", "wasserstein"])
def test_dirac_extragradient_converges(loss):
    p = problems.get("dirac_gan", loss=loss, batch_size=8, seed=4)
    sol = saddle.solve(p, "extragradient", step_size=0.5, max_iters=5000, tol=1e-8, measure="distance")
    assert (sol.status == Status.CONVERGED).all()
    assert (np64(merit.distance(p, sol.z)) <= 1e-8).all()


def r1_eigenvalues(a, gamma):
    """Roots of lambda^2 - gamma lambda + a^2 (the characteristic polynomial of [[0, a], [-a, gamma]])."""
    disc = complex(gamma**2 - 4 * a**2)
    return np.array([(gamma + disc**0.5) / 2, (gamma - disc**0.5) / 2])


@pytest.mark.parametrize("gamma", [0.3, 1.5])  # complex and real eigenvalues
def test_dirac_r1_makes_gda_locally_convergent(gamma):
    a, eta = 0.5, 0.2
    lam = r1_eigenvalues(a, gamma)
    np.testing.assert_allclose(np.sort_complex(np.linalg.eigvals(np64(dirac_jacobian("standard", gamma)))),
                               np.sort_complex(lam), atol=1e-14)
    assert (lam.real > 0).all()
    rho = np.abs(1 - eta * lam).max()
    assert rho < 1
    p = problems.get("dirac_gan", r1=gamma, radius=1e-3, batch_size=4, seed=5)
    sol = saddle.solve(p, "gda", step_size=eta, max_iters=20_000, tol=1e-10, measure="distance")
    assert (sol.status == Status.CONVERGED).all()
    # the asymptotic rate per step is the spectral radius of I - eta J (measured over 500 steps, all running)
    sol = saddle.solve(p, "gda", step_size=eta, max_iters=600, tol=0.0, check_every=100)
    d = np64(sol.history["distance"])
    rate = (d[-1] / d[1]) ** (1 / 500)
    np.testing.assert_allclose(rate, rho, rtol=2e-3)


def test_dirac_given_start_and_lipschitz():
    p = problems.get("dirac_gan", x0=0.3, y0=[0.1, -0.2], batch_size=2)
    np.testing.assert_array_equal(np64(p.z0[0])[:, 0], [0.3, 0.3])
    np.testing.assert_array_equal(np64(p.z0[1])[:, 0], [0.1, -0.2])
    assert p.lipschitz() is None  # the standard loss has no global Lipschitz constant
    w = problems.get("dirac_gan", loss="wasserstein", r1=0.5, batch_size=2)
    np.testing.assert_allclose(np64(w.lipschitz()), np.linalg.norm([[0, 1], [-1, 0.5]], 2), rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# Gaussian-mixture GAN: the batched objective equals single instances
# ---------------------------------------------------------------------------------------------

SMALL = dict(latent_dim=3, width=8, depth=2, n_samples=32)
ACT = {"tanh": nn.Tanh, "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.2), "elu": nn.ELU}


def mlp(n_in, n_out, width, depth, activation):
    layers, size = [], n_in
    for _ in range(depth):
        layers += [nn.Linear(size, width, dtype=F64), ACT[activation]()]
        size = width
    return nn.Sequential(*layers, nn.Linear(size, n_out, dtype=F64))


def single_objective(p, i, kw, activation="tanh"):
    """f of instance i as a function of (x_i, y_i), with ordinary modules (as documented) and autograd."""
    G = mlp(kw["latent_dim"], 2, kw["width"], kw["depth"], activation)
    D = mlp(2, 1, kw["width"], kw["depth"], activation)

    def f(x, y):
        gp = dict(zip([k for k, _ in G.named_parameters()], _split(x, G)))
        dp = dict(zip([k for k, _ in D.named_parameters()], _split(y, D)))
        fake = torch.func.functional_call(G, gp, (p.latent[i],))
        real = p.real[i].clone().requires_grad_(True)
        d_real = torch.func.functional_call(D, dp, (real,))[:, 0]
        d_fake = torch.func.functional_call(D, dp, (fake,))[:, 0]
        if p.loss == "standard":
            value = torch.log(torch.sigmoid(d_real)).mean() + torch.log(1 - torch.sigmoid(d_fake)).mean()
        else:
            value = d_real.mean() - d_fake.mean()
        if p.r1:
            (slope,) = torch.autograd.grad(d_real.sum(), real, create_graph=True)
            value = value - 0.5 * p.r1 * (slope**2).sum(-1).mean()
        return value

    return f, G, D


def _split(flat, module):
    out, start = [], 0
    for _, prm in module.named_parameters():
        out.append(flat[start:start + prm.numel()].reshape(prm.shape))
        start += prm.numel()
    assert start == flat.numel()
    return out


def perturbed(p, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return tuple(b + scale * torch.randn(b.shape, dtype=F64, generator=g) for b in p.z0)


@pytest.mark.parametrize("loss, gamma, activation", [("standard", 0.0, "tanh"), ("standard", 0.5, "elu"),
                                                     ("wasserstein", 0.2, "tanh"), ("wasserstein", 0.0, "relu"),
                                                     ("standard", 0.3, "leaky_relu"), ("wasserstein", 0.5, "relu")])
def test_mixture_batch_equals_single_instances(loss, gamma, activation):
    B = 3
    kw = dict(SMALL)
    p = problems.get("gaussian_mixture_gan", loss=loss, r1=gamma, activation=activation, batch_size=B, seed=7,
                     **kw)
    assert isinstance(p, MixtureGAN)
    for z in (p.z0, perturbed(p)):
        fz = p.objective(z)
        Fx, Fy = p.F(z)
        assert fz.shape == (B,) and Fx.shape == z[0].shape and Fy.shape == z[1].shape
        for i in range(B):
            f, G, D = single_objective(p, i, kw, activation)
            x = z[0][i].clone().requires_grad_(True)
            y = z[1][i].clone().requires_grad_(True)
            value = f(x, y)
            gx, gy = torch.autograd.grad(value, (x, y))
            assert abs(value.item() - fz[i].item()) <= 1e-12
            np.testing.assert_allclose(np64(Fx[i]), np64(gx), rtol=0, atol=1e-12)
            np.testing.assert_allclose(np64(Fy[i]), -np64(gy), rtol=0, atol=1e-12)


def test_mixture_flat_layout_is_parameters_to_vector():
    """x_i is parameters_to_vector of the generator: loading it into a module reproduces the generator."""
    kw = dict(SMALL)
    p = problems.get("gaussian_mixture_gan", batch_size=2, seed=3, **kw)
    x = perturbed(p)[0]
    G = mlp(kw["latent_dim"], 2, kw["width"], kw["depth"], "tanh")
    assert x.shape[1] == sum(q.numel() for q in G.parameters())
    vector_to_parameters(x[1], G.parameters())
    with torch.no_grad():
        expected = G(p.latent[1])
        np.testing.assert_allclose(np64(p.generator(x[1], p.latent[1])), np64(expected), rtol=0, atol=1e-14)
        # sample() with a seed uses N(0, I) latent codes drawn from that seed
        s = sample(p, x, 50, seed=11)
        g = torch.Generator().manual_seed(11)
        codes = torch.randn(2, 50, kw["latent_dim"], dtype=F64, generator=g)
        np.testing.assert_allclose(np64(s[1]), np64(G(codes[1])), rtol=0, atol=1e-14)
    assert s.shape == (2, 50, 2)
    assert torch.equal(s, sample(p, x, 50, seed=11))


def test_mixture_start_is_default_init_and_data_are_the_mixture():
    p = problems.get("gaussian_mixture_gan", batch_size=2, seed=0, n_samples=2000, latent_dim=4, width=16)
    # PyTorch's default init: every weight and bias in +-1/sqrt(fan_in)
    for flat, net in ((p.z0[0], p.generator), (p.z0[1], p.discriminator)):
        params = net.unflatten(flat[0])
        for name, t in params.items():
            fan_in = {"0": 4 if net is p.generator else 2, "2": 16, "4": 16}[name.split(".")[0]]
            assert t.abs().max() <= 1 / math.sqrt(fan_in)
    np.testing.assert_allclose(np64(p.centers), np64(mixture_centers("ring", 2.0)))
    # the real samples are the ring's modes with std 0.02: every mode is covered and about
    # P(|N(0, s^2 I_2)| <= 3 s) = 1 - exp(-9/2) of them are high quality
    assert (modes_covered(p.real, p.centers, p.std) == 8).all()
    frac = np64(high_quality_fraction(p.real, p.centers, p.std))
    expected = 1 - math.exp(-4.5)
    assert (np.abs(frac - expected) <= 4 * math.sqrt(expected * (1 - expected) / 2000)).all()
    assert p.latent.shape == (2, 2000, 4)
    np.testing.assert_allclose(np64(p.latent).std(), 1.0, rtol=0.02)


# ---------------------------------------------------------------------------------------------
# Second derivatives (what competitive methods need)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("loss, gamma", [("standard", 0.0), ("wasserstein", 0.4)])
def test_mixture_second_derivatives(loss, gamma):
    """torch.func.jvp / vjp of F equal the autograd Hessian blocks and central differences."""
    kw = dict(latent_dim=2, width=3, depth=1, n_samples=8)
    B = 2
    p = problems.get("gaussian_mixture_gan", loss=loss, r1=gamma, batch_size=B, seed=5, **kw)
    z = perturbed(p, seed=1)
    n, m = p.dims
    g = torch.Generator().manual_seed(2)
    v = tuple(torch.randn(b.shape, dtype=F64, generator=g) for b in z)
    Jv = torch.cat(p.operator.jvp(z, v), -1)
    JTv = torch.cat(p.operator.vjp(z, v), -1)
    for i in range(B):
        f, _, _ = single_objective(p, i, kw)
        H = torch.autograd.functional.hessian(lambda w: f(w[:n], w[n:]), torch.cat([z[0][i], z[1][i]]))
        # J_F = [[H_xx, H_xy], [-H_yx, -H_yy]]
        J = torch.cat([H[:n], -H[n:]], 0)
        assert H[:n, n:].abs().max() > 1e-3  # the mixed block is not trivial
        vi = torch.cat([v[0][i], v[1][i]])
        np.testing.assert_allclose(np64(Jv[i]), np64(J @ vi), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np64(JTv[i]), np64(J.T @ vi), rtol=0, atol=1e-12)
    # the mixed block alone: jvp of grad_y f in a direction of x, against central differences
    vx = (v[0], torch.zeros_like(v[1]))
    mixed = p.operator.jvp(z, vx)[1]  # = -H_yx v_x
    h = 1e-5
    Fp = p.F((z[0] + h * v[0], z[1]))[1]
    Fm = p.F((z[0] - h * v[0], z[1]))[1]
    np.testing.assert_allclose(np64(mixed), np64((Fp - Fm) / (2 * h)), rtol=0, atol=1e-8)


@pytest.mark.parametrize("loss, gamma, activation", [("standard", 0.0, "tanh"), ("standard", 0.7, "tanh"),
                                                     ("wasserstein", 0.4, "elu"), ("standard", 0.3, "leaky_relu")])
def test_mixture_mixed_products_are_the_hessian_blocks(loss, gamma, activation):
    """SaddleOperator.mixed_products (plain autograd double backward, and torch.func) against autograd Hessians.

    With ``H`` the Hessian of instance i's f in ``(x_i, y_i)`` (through ordinary
    modules), ``D_xy f v = H[:n, n:] v`` and ``D_yx f u = H[n:, :n] u``; the R1
    term makes them third derivatives of the networks.
    """
    kw = dict(latent_dim=2, width=4, depth=2, n_samples=6)
    B = 3
    p = problems.get("gaussian_mixture_gan", loss=loss, r1=gamma, activation=activation, batch_size=B, seed=4, **kw)
    z = perturbed(p, seed=3)
    n, _ = p.dims
    g = torch.Generator().manual_seed(5)
    u = torch.randn(z[0].shape, dtype=F64, generator=g)
    v = torch.randn(z[1].shape, dtype=F64, generator=g)
    plain = p.operator.mixed_products(z)
    func = p.operator.mixed_products(z, transformable=True)
    Fx, Fy = p.F(z)
    for mp in (plain, func):
        np.testing.assert_allclose(np64(mp.grad_x), np64(Fx), rtol=0, atol=1e-13)
        np.testing.assert_allclose(np64(mp.grad_y), -np64(Fy), rtol=0, atol=1e-13)
    xy, yx = plain.xy(v), plain.yx(u)
    np.testing.assert_allclose(np64(func.xy(v)), np64(xy), rtol=0, atol=1e-13)
    np.testing.assert_allclose(np64(func.yx(u)), np64(yx), rtol=0, atol=1e-13)
    for i in range(B):
        f, _, _ = single_objective(p, i, kw, activation)
        H = torch.autograd.functional.hessian(lambda w: f(w[:n], w[n:]), torch.cat([z[0][i], z[1][i]]))
        assert H[:n, n:].abs().max() > 1e-3
        np.testing.assert_allclose(np64(xy[i]), np64(H[:n, n:] @ v[i]), rtol=0, atol=1e-12)
        np.testing.assert_allclose(np64(yx[i]), np64(H[n:, :n] @ u[i]), rtol=0, atol=1e-12)


def test_mixture_networks_one_instance_batched_and_vmapped():
    """The flat-parameter networks on one instance, on the batch, and under vmap agree with the modules."""
    kw = dict(SMALL)
    p = problems.get("gaussian_mixture_gan", activation="elu", batch_size=3, seed=2, **kw)
    x, y = perturbed(p, seed=4)
    G = mlp(kw["latent_dim"], 2, kw["width"], kw["depth"], "elu")
    D = mlp(2, 1, kw["width"], kw["depth"], "elu")
    points = p.real + 0.5 * torch.randn(p.real.shape, dtype=F64, generator=torch.Generator().manual_seed(1))
    batched_g, batched_d = p.generator(x, p.latent), p.discriminator(y, points)
    assert batched_g.shape == (3, kw["n_samples"], 2) and batched_d.shape == (3, kw["n_samples"], 1)
    vmapped = torch.func.vmap(p.generator)(x, p.latent)
    d_out, slope = p.discriminator.value_and_input_grad(y, points)
    for i in range(3):
        vector_to_parameters(x[i], G.parameters())
        vector_to_parameters(y[i], D.parameters())
        r = points[i].clone().requires_grad_(True)
        want_d = D(r)
        (want_slope,) = torch.autograd.grad(want_d.sum(), r)
        with torch.no_grad():
            want_g = G(p.latent[i])
            for got in (p.generator(x[i], p.latent[i]), batched_g[i], vmapped[i]):
                np.testing.assert_allclose(np64(got), np64(want_g), rtol=0, atol=1e-14)
            np.testing.assert_allclose(np64(batched_d[i]), np64(want_d), rtol=0, atol=1e-14)
            np.testing.assert_allclose(np64(d_out[i]), np64(want_d[:, 0]), rtol=0, atol=1e-14)
            np.testing.assert_allclose(np64(slope[i]), np64(want_slope), rtol=0, atol=1e-14)
    assert [tuple(w.shape) for w, _ in p.generator.layers(x)] == [(3, 8, 3), (3, 8, 8), (3, 2, 8)]


def test_mixture_torch_func_composes():
    """grad of a jvp (third derivatives, as with R1) and jvp of grad_y through the batched objective."""
    p = problems.get("gaussian_mixture_gan", r1=1.0, batch_size=2, latent_dim=2, width=4, depth=1, n_samples=6)
    x, y = p.z0
    grad_y = torch.func.grad(lambda a, b: p.objective((a, b)).sum(), argnums=1)
    vx = torch.ones_like(x)
    _, mixed = torch.func.jvp(lambda a: grad_y(a, y), (x,), (vx,))
    assert mixed.shape == y.shape and mixed.abs().max() > 0
    # D_yx vx by central differences of grad_y along vx (float64: truncation and rounding ~1e-9).
    h = 1e-5
    fd = (grad_y(x + h * vx, y) - grad_y(x - h * vx, y)) / (2 * h)
    torch.testing.assert_close(mixed, fd, rtol=1e-6, atol=1e-8)
    third = torch.func.grad(lambda b: torch.func.jvp(lambda a: grad_y(a, b), (x,), (vx,))[1].sum())(y)
    assert third.shape == y.shape
    # <third, u> is the derivative of sum(D_yx vx) along u in y.
    u = torch.randn(y.shape, generator=torch.Generator().manual_seed(0), dtype=y.dtype)
    total = lambda b: torch.func.jvp(lambda a: grad_y(a, b), (x,), (vx,))[1].sum()  # noqa: E731
    directional = (total(y + h * u) - total(y - h * u)) / (2 * h)
    torch.testing.assert_close((third * u).sum(), directional, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_metrics_on_synthetic_samples():
    centers = mixture_centers("ring")
    std = 0.02
    B, N = 4, 700
    s = torch.zeros(B, N, 2, dtype=F64)
    s[0] = centers[torch.arange(N) % 7]  # exactly at 7 of the 8 centers
    s[1] = centers[torch.arange(N) % 8] + 2.9 * std * torch.tensor([0.6, 0.8], dtype=F64)  # inside 3 std
    s[2] = 10.0  # far from every mode
    s[3] = centers[torch.arange(N) % 8] + 3.1 * std * torch.tensor([0.6, 0.8], dtype=F64)  # just outside
    covered = modes_covered(s, centers, std)
    assert covered.dtype == torch.int64
    assert covered.tolist() == [7, 8, 0, 0]
    np.testing.assert_array_equal(np64(high_quality_fraction(s, centers, std)), [1.0, 1.0, 0.0, 0.0])


def test_modes_covered_threshold():
    """A mode needs max(1, ceil(min_fraction N)) high-quality samples; the rest may be anywhere."""
    centers = mixture_centers("grid")
    assert centers.shape == (25, 2)
    N = 2500
    s = torch.full((1, N, 2), 100.0, dtype=F64)
    s[0, :20] = centers[0]  # 20 of 2500: covered (PacGAN's rule)
    s[0, 20:39] = centers[1]  # 19: not covered
    s[0, 39:40] = centers[2]  # 1: covered only with min_fraction=0
    assert modes_covered(s, centers, 0.05).item() == 1
    assert modes_covered(s, centers, 0.05, min_fraction=0).item() == 3
    np.testing.assert_allclose(np64(high_quality_fraction(s, centers, 0.05)), [40 / N])
    # per-instance centers (B, K, 2)
    assert modes_covered(s, centers.unsqueeze(0), 0.05, min_fraction=0).item() == 3
    with pytest.raises(ValueError, match="min_fraction"):
        modes_covered(s, centers, 0.05, min_fraction=2)
    with pytest.raises(ValueError, match="samples"):
        modes_covered(s[0], centers, 0.05)
    with pytest.raises(ValueError, match="std"):
        high_quality_fraction(s, centers, 0.0)


# ---------------------------------------------------------------------------------------------
# Registry, seeds, dtype, device, resampling, bad arguments
# ---------------------------------------------------------------------------------------------


def test_registered():
    assert {"dirac_gan", "gaussian_mixture_gan"} <= set(problems.names())


@pytest.mark.parametrize("name, kw", [("dirac_gan", {}), ("gaussian_mixture_gan", SMALL),
                                      ("gaussian_mixture_gan", dict(SMALL, mode="grid", loss="wasserstein"))])
def test_seeds_dtype_device(name, kw, device):
    a = problems.get(name, batch_size=3, seed=5, device=device, **kw)
    b = problems.get(name, batch_size=3, seed=5, device=device, **kw)
    c = problems.get(name, batch_size=3, seed=6, device=device, **kw)
    assert a.batch_size == 3 and a.device.type == device
    probe = perturbed(a) if name != "dirac_gan" else a.z0
    for u, w in zip(a.z0 + a.F(probe), b.z0 + b.F(probe)):
        assert torch.equal(u, w)
    assert not torch.allclose(a.z0[0], c.z0[0])
    assert not torch.allclose(a.z0[0][0], a.z0[0][1])  # instances are different draws
    p32 = problems.get(name, batch_size=3, seed=5, device=device, dtype=torch.float32, **kw)
    assert all(t.dtype == torch.float32 for t in p32.z0 + p32.F(p32.z0))
    assert p32.objective(p32.z0).dtype == torch.float32
    # the same seed gives the same problem in every dtype
    np.testing.assert_allclose(np64(p32.objective(p32.z0)), np64(a.objective(a.z0)), rtol=1e-4, atol=1e-5)
    if name == "gaussian_mixture_gan":
        assert sample(p32, p32.z0[0], 10).dtype == torch.float32
        assert modes_covered(sample(a, a.z0[0], 10), a.centers, a.std).shape == (3,)


def test_resample():
    kw = dict(SMALL)
    fixed = problems.get("gaussian_mixture_gan", batch_size=2, **kw)
    assert torch.equal(fixed.objective(fixed.z0), fixed.objective(fixed.z0))
    p = problems.get("gaussian_mixture_gan", batch_size=2, resample=True, **kw)
    q = problems.get("gaussian_mixture_gan", batch_size=2, resample=True, **kw)
    f1, f2 = p.objective(p.z0), p.objective(p.z0)
    assert not torch.equal(f1, f2)  # fresh samples at every evaluation
    assert torch.equal(f1, q.objective(q.z0)) and torch.equal(f2, q.objective(q.z0))  # reproducible from the seed
    assert torch.isfinite(torch.cat(p.F(p.z0), -1)).all()


def test_mixture_problem_solvers_take_the_steps_of_their_formulas():
    """GDA and extragradient on the mixture GAN follow their update formulas, with F from autograd on f."""
    p = problems.get("gaussian_mixture_gan", batch_size=2, **SMALL)

    def F(x, y):  # (grad_x f, -grad_y f) of the batched objective, independent of the problem's operator
        x, y = x.detach().requires_grad_(True), y.detach().requires_grad_(True)
        gx, gy = torch.autograd.grad(p.objective((x, y)).sum(), (x, y))
        return gx, -gy

    eta, K = 0.05, 20
    for solver in ("gda", "extragradient"):
        sol = saddle.solve(p, solver, step_size=eta, max_iters=K, tol=1e-10)
        assert (sol.iterations == K).all()
        x, y = p.z0
        for _ in range(K):
            Fx, Fy = F(x, y)
            if solver == "extragradient":
                Fx, Fy = F(x - eta * Fx, y - eta * Fy)
            x, y = x - eta * Fx, y - eta * Fy
        torch.testing.assert_close(sol.x, x, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(sol.y, y, rtol=1e-10, atol=1e-12)


BAD = [
    ("dirac_gan", dict(loss="hinge"), "loss"),
    ("dirac_gan", dict(r1=-1.0), "r1"),
    ("dirac_gan", dict(radius=0.0), "radius"),
    ("dirac_gan", dict(x0=1.0), "x0 and y0"),
    ("dirac_gan", dict(x0=[1.0, 2.0], y0=0.0, batch_size=3), "x0"),
    ("dirac_gan", dict(x0=0.0, y0=math.nan), "y0"),
    ("dirac_gan", dict(batch_size=0), "batch_size"),
    ("dirac_gan", dict(seed=-1), "seed"),
    ("dirac_gan", dict(device="nodevice"), "device"),
    ("gaussian_mixture_gan", dict(mode="spiral"), "mode"),
    ("gaussian_mixture_gan", dict(loss="non_saturating"), "loss"),
    ("gaussian_mixture_gan", dict(activation="gelu"), "activation"),
    ("gaussian_mixture_gan", dict(latent_dim=0), "latent_dim"),
    ("gaussian_mixture_gan", dict(width=2.5), "width"),
    ("gaussian_mixture_gan", dict(depth=-1), "depth"),
    ("gaussian_mixture_gan", dict(n_samples=0), "n_samples"),
    ("gaussian_mixture_gan", dict(std=0.0), "std"),
    ("gaussian_mixture_gan", dict(scale=-2.0), "scale"),
    ("gaussian_mixture_gan", dict(r1=math.inf), "r1"),
    ("gaussian_mixture_gan", dict(resample="yes"), "resample"),
    ("gaussian_mixture_gan", dict(batch_size=1.5), "batch_size"),
]


@pytest.mark.parametrize("name, kw, match", BAD, ids=[f"{n}-{m}" for n, _, m in BAD])
def test_bad_arguments_name_them(name, kw, match):
    with pytest.raises(ValueError, match=match):
        problems.get(name, **kw)


def test_sample_bad_arguments():
    p = problems.get("gaussian_mixture_gan", batch_size=2, **SMALL)
    with pytest.raises(ValueError, match=r"\bx\b"):
        sample(p, p.z0[1], 5)
    with pytest.raises(ValueError, match=r"\bn\b"):
        sample(p, p.z0[0], 0)
    with pytest.raises(ValueError, match="seed"):
        sample(p, p.z0[0], 5, seed=-3)
    with pytest.raises(TypeError, match="MixtureGAN"):
        sample(problems.get("dirac_gan"), p.z0[0], 5)


@pytest.mark.parametrize("activation", ["tanh", "relu", "leaky_relu", "elu"])
def test_batched_mlp_is_its_modules_on_flat_rows(activation):
    # problems.mlp on its own: B networks as the rows of one tensor give each nn.Sequential's outputs and
    # (for a scalar network) its autograd input gradients.
    from saddle.problems.mlp import BatchedMLP, init_default, mlp

    gen = torch.Generator().manual_seed(3)
    nets = [init_default(mlp(2, 1, 5, 2, activation), gen) for _ in range(3)]
    batched = BatchedMLP(nets, activation)
    inputs = torch.randn(3, 7, 2, dtype=F64, generator=gen, requires_grad=True)
    value, slope = batched.value_and_input_grad(batched.start, inputs)
    for i, net in enumerate(nets):
        assert torch.equal(batched.start[i], nn.utils.parameters_to_vector(net.parameters()).detach())
        out = net(inputs[i])
        torch.testing.assert_close(batched(batched.start, inputs)[i], out, rtol=0, atol=1e-14)
        torch.testing.assert_close(value[i], out[:, 0], rtol=0, atol=1e-14)
        (grad,) = torch.autograd.grad(out.sum(), inputs)
        torch.testing.assert_close(slope[i], grad[i], rtol=0, atol=1e-14)
    with pytest.raises(ValueError, match="activation must be one of 'tanh', 'relu', 'leaky_relu', 'elu'; got 'gelu'"):
        mlp(2, 1, 5, 2, "gelu")
