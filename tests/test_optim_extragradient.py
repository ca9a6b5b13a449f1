"""saddle.optim.ExtraSGD, ExtraAdam and OptimisticAdam: hand-written formulas, games, torch.optim conventions.

The references are written here on flat float64 vectors with the analytic
gradient of the test loss: no optimizer, autograd or ``_foreach`` code is
shared with the implementation. OptimisticAdam is checked against
Daskalakis et al.'s one-sequence recursion w~_{t+1} = w~_t - 2 lr d_t + lr d_{t-1}.
"""

from __future__ import annotations

import copy
import io
import math
import re
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from saddle.optim import ExtraAdam, ExtraSGD, OptimisticAdam

DT = torch.float64
ATOL = 1e-12


# ------------------------------------------------------------------ a small smooth loss
class Smooth:
    """L(w) = 0.5 w^T Q w + c^T w + sum(cos w) on w = (a.flatten(), b), a: (2, 3), b: (3,).

    ``grad`` is the analytic gradient ``Q w + c - sin w`` on flat vectors."""

    def __init__(self):
        g = torch.Generator().manual_seed(3)
        M = torch.randn(9, 9, generator=g, dtype=DT)
        self.Q = M @ M.T / 9 + torch.eye(9, dtype=DT)
        self.c = torch.randn(9, generator=g, dtype=DT)
        self.w0 = torch.randn(9, generator=g, dtype=DT)

    def params(self):
        return [nn.Parameter(self.w0[:6].clone().view(2, 3)), nn.Parameter(self.w0[6:].clone())]

    def loss(self, params):
        w = torch.cat([p.reshape(-1) for p in params])
        return 0.5 * w @ self.Q @ w + self.c @ w + torch.cos(w).sum()

    def grad(self, w):
        return self.Q @ w + self.c - torch.sin(w)


def flat(params):
    return torch.cat([p.detach().reshape(-1) for p in params])


def backward(opt, fn, params):
    opt.zero_grad()
    fn(params).backward()


# Per-group hyperparameters: group 0 holds a (6 coordinates), group 1 holds b (3 coordinates).
LRS = (0.1, 0.05)
BETAS = ((0.9, 0.99), (0.5, 0.9))


def per_coord(values):
    return torch.cat([torch.full((6,), float(values[0]), dtype=DT), torch.full((3,), float(values[1]), dtype=DT)])


def groups(params, **extra):
    return [{"params": [params[0]], "lr": LRS[0], "betas": BETAS[0], **extra}, {"params": [params[1]], "lr": LRS[1],
                                                                                 "betas": BETAS[1], **extra}]


# ------------------------------------------------------------- (1) iterates equal the formulas
def test_extra_sgd_with_momentum_and_weight_decay_matches_formula():
    prob = Smooth()
    mu, wd = 0.7, 0.03
    params = prob.params()
    opt = ExtraSGD([{"params": [params[0]], "lr": LRS[0]}, {"params": [params[1]], "lr": LRS[1]}], lr=1.0,
                   momentum=mu, weight_decay=wd)
    lr = per_coord(LRS)
    w, buf = prob.w0.clone(), None
    for _ in range(8):
        g = prob.grad(w) + wd * w
        buf = g.clone() if buf is None else mu * buf + g
        w_half = w - lr * buf
        g = prob.grad(w_half) + wd * w_half
        buf = mu * buf + g
        w = w - lr * buf

        backward(opt, prob.loss, params)
        opt.extrapolation()
        torch.testing.assert_close(flat(params), w_half, rtol=0, atol=ATOL)
        backward(opt, prob.loss, params)
        opt.step()
        torch.testing.assert_close(flat(params), w, rtol=0, atol=ATOL)


def test_extra_sgd_without_momentum_is_the_extragradient_method():
    prob = Smooth()
    params = prob.params()
    opt = ExtraSGD(params, lr=0.1)
    w = prob.w0.clone()
    for _ in range(5):
        w = w - 0.1 * prob.grad(w - 0.1 * prob.grad(w))
        backward(opt, prob.loss, params)
        opt.extrapolation()
        backward(opt, prob.loss, params)
        opt.step()
    torch.testing.assert_close(flat(params), w, rtol=0, atol=ATOL)
    assert not opt.state  # no momentum buffers


def adam_reference(amsgrad: bool, eps: float):
    """Adam's direction on flat vectors with per-coordinate betas; the state counts gradients."""
    b1, b2 = per_coord([b[0] for b in BETAS]), per_coord([b[1] for b in BETAS])
    state = {"t": 0, "m": torch.zeros(9, dtype=DT), "v": torch.zeros(9, dtype=DT), "vmax": torch.zeros(9, dtype=DT)}

    def direction(g):
        state["t"] += 1
        t = state["t"]
        state["m"] = b1 * state["m"] + (1 - b1) * g
        state["v"] = b2 * state["v"] + (1 - b2) * g * g
        state["vmax"] = torch.maximum(state["vmax"], state["v"])
        m_hat = state["m"] / (1 - b1 ** t)
        v_hat = (state["vmax"] if amsgrad else state["v"]) / (1 - b2 ** t)
        return m_hat / (v_hat.sqrt() + eps)

    return direction, state


@pytest.mark.parametrize("amsgrad", [False, True])
def test_extra_adam_with_weight_decay_matches_formula(amsgrad):
    prob = Smooth()
    wd, eps = 0.05, 1e-3
    params = prob.params()
    opt = ExtraAdam(groups(params), eps=eps, weight_decay=wd, amsgrad=amsgrad)
    lr = per_coord(LRS)
    direction, ref_state = adam_reference(amsgrad, eps)
    w = prob.w0.clone()
    for _ in range(8):
        w_half = w - lr * direction(prob.grad(w) + wd * w)  # moments updated at the extrapolation too
        w = w - lr * direction(prob.grad(w_half) + wd * w_half)

        backward(opt, prob.loss, params)
        opt.extrapolation()
        torch.testing.assert_close(flat(params), w_half, rtol=0, atol=ATOL)
        backward(opt, prob.loss, params)
        opt.step()
        torch.testing.assert_close(flat(params), w, rtol=0, atol=ATOL)
    state = opt.state[params[1]]
    assert state["step"] == 16  # two gradients per iteration
    torch.testing.assert_close(state["exp_avg"], ref_state["m"][6:], rtol=0, atol=ATOL)
    torch.testing.assert_close(state["exp_avg_sq"], ref_state["v"][6:], rtol=0, atol=ATOL)


@pytest.mark.parametrize("wd", [0.0, 0.05])
def test_optimistic_adam_follows_daskalakis_recursion(wd):
    prob = Smooth()
    eps, T = 1e-3, 10
    params = prob.params()
    opt = OptimisticAdam(groups(params), eps=eps, weight_decay=wd)
    lr = per_coord(LRS)
    # Daskalakis et al., Algorithm 1, on the one sequence of points where gradients are taken.
    direction, _ = adam_reference(False, eps)
    points, w_tilde, d_prev = [], prob.w0.clone(), torch.zeros(9, dtype=DT)
    for _ in range(T + 1):
        points.append(w_tilde)
        d = direction(prob.grad(w_tilde) + wd * w_tilde)
        w_tilde = w_tilde - 2 * lr * d + lr * d_prev
        d_prev = d

    for t in range(T):
        opt.extrapolation()  # no gradient needed
        torch.testing.assert_close(flat(params), points[t], rtol=0, atol=ATOL)
        backward(opt, prob.loss, params)
        opt.step()
    assert opt.state[params[0]]["step"] == T  # one gradient per iteration
    opt.extrapolation()
    torch.testing.assert_close(flat(params), points[T], rtol=0, atol=ATOL)


def test_optimistic_adam_first_extrapolation_moves_nothing():
    prob = Smooth()
    params = prob.params()
    opt = OptimisticAdam(params, lr=0.1)
    opt.extrapolation()
    assert torch.equal(flat(params), prob.w0)


# ------------------------------------------------------------- games: extrapolation converges, Adam does not
# Adam-type steps have magnitude ~lr whatever the scale of the gradients, so with a tiny eps every method
# stalls at a distance ~lr from the equilibrium (measured: ~0.02 for ExtraAdam at lr=0.01). With eps at
# the scale of the gradients the normalized step becomes a gradient step (lr / eps) near the solution, and
# the difference between extrapolated and simultaneous steps shows. beta1 = 0: momentum slows or stops the
# convergence of extragradient methods on bilinear games (Gidel et al. 2019, "negative momentum").
GAME = dict(betas=(0.0, 0.999), eps=1.0)


def play(kind, f, x, y, lr, iters):
    """Train x (minimizes f) and y (maximizes f) with one optimizer each; return |(x, y)| before and after."""
    if kind == "Adam":
        ox, oy = torch.optim.Adam([x], lr=lr, **GAME), torch.optim.Adam([y], lr=lr, maximize=True, **GAME)
    else:
        cls = {"ExtraAdam": ExtraAdam, "OptimisticAdam": OptimisticAdam}[kind]
        ox, oy = cls([x], lr=lr, **GAME), cls([y], lr=lr, maximize=True, **GAME)
    start = torch.cat([x.detach().reshape(-1), y.detach().reshape(-1)]).norm().item()
    for _ in range(iters):
        ox.zero_grad()
        oy.zero_grad()
        if kind == "Adam":
            f(x, y).backward()
            ox.step()
            oy.step()
            continue
        if kind == "ExtraAdam":
            f(x, y).backward()  # OptimisticAdam extrapolates with its previous direction
        ox.extrapolation()
        oy.extrapolation()
        ox.zero_grad()
        oy.zero_grad()
        f(x, y).backward()
        ox.step()
        oy.step()
    return start, torch.cat([x.detach().reshape(-1), y.detach().reshape(-1)]).norm().item()


def bilinear_game():
    g = torch.Generator().manual_seed(0)
    U, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=DT))
    V, _ = torch.linalg.qr(torch.randn(5, 5, generator=g, dtype=DT))
    A = U @ torch.diag(torch.linspace(1, 2, 5, dtype=DT)) @ V.T  # singular values in [1, 2]
    x0, y0 = torch.randn(5, generator=g, dtype=DT), torch.randn(5, generator=g, dtype=DT)
    return A, x0, y0


@pytest.mark.parametrize("kind", ["ExtraAdam", "OptimisticAdam", "Adam"])
def test_bilinear_game(kind):
    A, x0, y0 = bilinear_game()
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    start, end = play(kind, lambda x, y: x @ A @ y, x, y, lr=0.3, iters=1000)
    # measured: ExtraAdam 6e-15, OptimisticAdam 9e-17, Adam 30 (from 2.2)
    if kind == "Adam":
        assert end > 2 * start
    else:
        assert end < 1e-8


@pytest.mark.parametrize("kind", ["ExtraAdam", "OptimisticAdam", "Adam"])
def test_dirac_gan(kind):
    # Mescheder et al.'s Dirac GAN, f(theta, psi) = -log(1 + exp(-psi theta)) - log 2
    # (problems.gan.dirac_gan's standard loss); the generator theta minimizes, the discriminator psi maximizes.
    def f(theta, psi):
        return -F.softplus(-psi * theta) - math.log(2)

    theta, psi = torch.tensor(1.0, dtype=DT, requires_grad=True), torch.tensor(0.5, dtype=DT, requires_grad=True)
    start, end = play(kind, f, theta, psi, lr=0.5, iters=600)
    # measured: ExtraAdam 5e-7, OptimisticAdam 1e-7, Adam 3.6 (from 1.1)
    if kind == "Adam":
        assert end > 2 * start
    else:
        assert end < 1e-4


def test_dirac_gan_loss_is_the_problem_familys():
    from saddle import problems

    problem = problems.get("dirac_gan", batch_size=6, seed=2)
    theta, psi = problem.z0
    torch.testing.assert_close(problem.f(theta, psi), -F.softplus(-psi * theta).sum(-1) - math.log(2),
                               rtol=0, atol=1e-15)


# Adam's own regime (eps = 1e-8): with a constant lr every Adam-type method settles at a distance of order lr
# (measured on the game above: ~2.5 lr for ExtraAdam and OptimisticAdam, ~190 lr for Adam), so lr decays
# geometrically, the same schedule for all three. The extrapolated methods follow the shrinking lr down to
# the equilibrium; simultaneous Adam, whose total remaining step length runs out far from it, stalls.
def play_decaying(kind, f, x, y, iters, lr, gamma=0.998, betas=(0.0, 0.99)):
    """As `play`, with default eps and ExponentialLR(gamma) on both players; the final |(x_i, y_i)| per row."""
    if kind == "Adam":
        ox, oy = torch.optim.Adam([x], lr=lr, betas=betas), torch.optim.Adam([y], lr=lr, betas=betas, maximize=True)
    else:
        cls = {"ExtraAdam": ExtraAdam, "OptimisticAdam": OptimisticAdam}[kind]
        ox, oy = cls([x], lr=lr, betas=betas), cls([y], lr=lr, betas=betas, maximize=True)
    schedulers = [torch.optim.lr_scheduler.ExponentialLR(o, gamma) for o in (ox, oy)]
    for _ in range(iters):
        ox.zero_grad()
        oy.zero_grad()
        if kind != "OptimisticAdam":
            f(x, y).backward()
        if kind == "Adam":
            ox.step()
            oy.step()
        else:
            ox.extrapolation()
            oy.extrapolation()
            ox.zero_grad()
            oy.zero_grad()
            f(x, y).backward()
            ox.step()
            oy.step()
        for scheduler in schedulers:
            scheduler.step()
    return torch.cat([x.detach().reshape(x.shape[0], -1), y.detach().reshape(y.shape[0], -1)], 1).norm(dim=1)


@pytest.mark.parametrize("kind", ["ExtraAdam", "OptimisticAdam", "Adam"])
def test_games_with_adams_eps_and_a_decaying_lr(kind):
    from saddle import problems

    A, x0, y0 = bilinear_game()
    end = play_decaying(kind, lambda x, y: ((x @ A) * y).sum(), x0.clone().view(1, 5).requires_grad_(),
                        y0.clone().view(1, 5).requires_grad_(), iters=3500, lr=0.1)
    # Four Dirac GANs at once (Adam's updates are coordinate-wise, so the instances do not interact).
    dirac = problems.get("dirac_gan", batch_size=4, seed=0)
    dirac_end = play_decaying(kind, lambda x, y: dirac.f(x, y).sum(), dirac.z0[0].clone().requires_grad_(),
                              dirac.z0[1].clone().requires_grad_(), iters=3500, lr=0.2)
    # measured: bilinear ExtraAdam 2.1e-4, OptimisticAdam 2.0e-4, Adam 1.1 (from 2.7); Dirac GANs (from 1.0)
    # ExtraAdam 1.9e-4, OptimisticAdam 2.0e-4, Adam 0.31 to 0.41. Same orders for seeds 1-3 of the game.
    if kind == "Adam":
        assert end.min() > 0.5 and dirac_end.min() > 0.15
    else:
        assert end.max() < 1e-3 and dirac_end.max() < 1e-3


# ------------------------------------------------------------- (4) state_dict resumes bit-identically
def make_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))


OPTIMIZERS = {
    "ExtraSGD": lambda p: ExtraSGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "ExtraAdam": lambda p: ExtraAdam(p, lr=0.01, amsgrad=True, weight_decay=1e-3),
    "OptimisticAdam": lambda p: OptimisticAdam(p, lr=0.01),
}


def model_loss(model):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(8, 3, generator=g)
    return lambda _=None: (model(x).squeeze(1) - x.sum(1).sin()).pow(2).mean()


def iterate(opt, loss):
    opt.zero_grad()
    loss().backward()
    opt.extrapolation()
    opt.zero_grad()
    loss().backward()
    opt.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_resume_is_bit_identical(name):
    N, M = 3, 4
    model = make_model()
    opt = OPTIMIZERS[name]([{"params": model[0].parameters()}, {"params": model[2].parameters(), "lr": 0.02}])
    for _ in range(N):
        iterate(opt, model_loss(model))
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    for _ in range(M):
        iterate(opt, model_loss(model))

    buffer.seek(0)
    saved = torch.load(buffer)
    resumed = make_model(seed=1)
    resumed.load_state_dict(saved["model"])
    opt2 = OPTIMIZERS[name]([{"params": resumed[0].parameters()}, {"params": resumed[2].parameters(), "lr": 0.5}])
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[1]["lr"] == 0.02
    for _ in range(M):
        iterate(opt2, model_loss(resumed))
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)
        for key, value in opt.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt2.state[q][key])), key


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_state_dict_is_refused_between_extrapolation_and_step(name):
    model = make_model()
    opt = OPTIMIZERS[name](model.parameters())
    iterate(opt, model_loss(model))
    saved = opt.state_dict()
    model_loss(model)().backward()
    opt.extrapolation()
    with pytest.raises(RuntimeError, match="between extrapolation"):
        opt.state_dict()
    with pytest.raises(RuntimeError, match="between extrapolation"):
        opt.load_state_dict(saved)
    opt.step()
    opt.state_dict()


# ------------------------------------------------------------- (5) maximize
@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_maximize_equals_minimizing_the_negated_loss(name):
    up, down = make_model(), make_model()
    loss_up, loss_down = model_loss(up), model_loss(down)
    make = OPTIMIZERS[name]
    opt_up, opt_down = make(up.parameters()), make(down.parameters())
    for group in opt_up.param_groups:
        group["maximize"] = True
    for _ in range(5):
        iterate(opt_up, loss_up)
        iterate(opt_down, lambda: -loss_down())
    for p, q in zip(up.parameters(), down.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(next(up.parameters()), next(make_model().parameters()))


def test_maximize_ascends():
    w = nn.Parameter(torch.zeros(2, dtype=DT))
    opt = ExtraAdam([w], lr=0.1, maximize=True)
    for _ in range(3):
        iterate(opt, lambda: -((w - 1) ** 2).sum())
    assert (w > 0.2).all()


# ------------------------------------------------------------- (6) errors
@pytest.mark.parametrize("cls, kwargs, error, match", [
    (ExtraSGD, dict(lr=-0.1), ValueError, "lr must be"),
    (ExtraSGD, dict(lr="0.1"), TypeError, "lr must be a number"),
    (ExtraSGD, dict(lr=0.1, momentum=-0.5), ValueError, "momentum"),
    (ExtraSGD, dict(lr=0.1, weight_decay=-1), ValueError, "weight_decay"),
    (ExtraSGD, dict(lr=0.1, maximize=1), TypeError, "maximize must be a bool"),
    (ExtraAdam, dict(lr=float("nan")), ValueError, "lr must be"),
    (ExtraAdam, dict(betas=(1.0, 0.9)), ValueError, r"betas\[0\] must be in \[0, 1\)"),
    (ExtraAdam, dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\]"),
    (ExtraAdam, dict(betas=0.9), TypeError, "betas must be a pair"),
    (ExtraAdam, dict(eps=-1e-8), ValueError, "eps"),
    (ExtraAdam, dict(amsgrad="yes"), TypeError, "amsgrad must be a bool"),
    (OptimisticAdam, dict(lr=-1), ValueError, "OptimisticAdam: lr"),
    (OptimisticAdam, dict(betas=(0.5, 1.0)), ValueError, r"betas\[1\]"),
    (OptimisticAdam, dict(weight_decay=float("inf")), ValueError, "weight_decay"),
])
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls([nn.Parameter(torch.zeros(2))], **kwargs)


def test_bad_group_arguments_and_parameters():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"param_groups\[1\]\.lr"):
        ExtraAdam([{"params": [a]}, {"params": [b], "lr": -1.0}])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.betas\[0\]"):
        OptimisticAdam([{"params": [a], "betas": (2.0, 0.9)}])
    with pytest.raises(TypeError, match="floating-point"):
        ExtraSGD([torch.zeros(2, dtype=torch.long)], lr=0.1)


@pytest.mark.parametrize("cls", [ExtraSGD, ExtraAdam, OptimisticAdam])
def test_protocol_errors(cls):
    w = nn.Parameter(torch.ones(2))
    opt = cls([w], lr=0.1)
    w.sum().backward()
    with pytest.raises(RuntimeError, match="call extrapolation\\(\\) first"):
        opt.step()
    opt.extrapolation()
    with pytest.raises(RuntimeError, match="twice without step"):
        opt.extrapolation()
    opt.zero_grad()
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        opt.step()
    w.sum().backward()
    opt.step()  # the failed call left the iteration open
    with pytest.raises(RuntimeError, match="call extrapolation"):
        opt.step()


def test_extrapolation_needs_gradients_except_for_optimistic_adam():
    w = nn.Parameter(torch.ones(2))
    with pytest.raises(RuntimeError, match="no parameter has a gradient"):
        ExtraAdam([w]).extrapolation()
    OptimisticAdam([w]).extrapolation()


# ------------------------------------------------------------- (7) schedulers, groups, closures
@pytest.mark.parametrize("cls", [ExtraSGD, OptimisticAdam])
def test_step_lr_scheduler(cls):
    prob = Smooth()
    params = prob.params()
    opt = cls(params, lr=0.2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    w, lrs = prob.w0.clone(), []
    w_tilde, d_prev = prob.w0.clone(), torch.zeros(9, dtype=DT)
    beta1, beta2 = 0.5, 0.9
    m = v = torch.zeros(9, dtype=DT)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # e.g. "lr_scheduler.step() before optimizer.step()"
        for t in range(1, 7):
            lr = 0.2 * 0.5 ** ((t - 1) // 2)
            lrs.append(opt.param_groups[0]["lr"])
            if cls is ExtraSGD:
                w = w - lr * prob.grad(w - lr * prob.grad(w))
                backward(opt, prob.loss, params)
            else:  # w~_t = w_t - lr_t d_{t-1}, w_{t+1} = w_t - lr_t d_t
                w_tilde = w - lr * d_prev
                g = prob.grad(w_tilde)
                m, v = beta1 * m + (1 - beta1) * g, beta2 * v + (1 - beta2) * g * g
                d_prev = (m / (1 - beta1 ** t)) / ((v / (1 - beta2 ** t)).sqrt() + 1e-8)
                w = w - lr * d_prev
            opt.extrapolation()
            backward(opt, prob.loss, params)
            opt.step()
            sched.step()
    assert lrs == [0.2, 0.2, 0.1, 0.1, 0.05, 0.05]
    torch.testing.assert_close(flat(params), w, rtol=0, atol=ATOL)


def test_closures_and_parameters_without_gradient_at_the_extrapolated_point():
    a, b = nn.Parameter(torch.ones(2, dtype=DT)), nn.Parameter(torch.ones(2, dtype=DT))
    opt = ExtraSGD([a, b], lr=0.1)

    def both():
        opt.zero_grad()
        loss = (a ** 2).sum() + (b ** 2).sum()
        loss.backward()
        return loss

    def only_a():
        opt.zero_grad()
        loss = (a ** 2).sum()
        loss.backward()
        return loss

    assert opt.extrapolation(both).item() == 4.0
    assert torch.equal(b.detach(), torch.full((2,), 0.8, dtype=DT))
    loss = opt.step(only_a)  # at the extrapolated point a = 0.8
    assert loss.item() == pytest.approx(2 * 0.64)
    assert torch.equal(b.detach(), torch.ones(2, dtype=DT))  # moved, no new gradient: restored to w
    torch.testing.assert_close(a.detach(), torch.full((2,), 1 - 0.1 * 1.6, dtype=DT), rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_on_device_matches_cpu(name, device):
    prob = Smooth()
    runs = []
    for where in ("cpu", device):
        params = [nn.Parameter(p.detach().to(where)) for p in prob.params()]
        opt = OPTIMIZERS[name](params)

        def loss():
            w = torch.cat([p.reshape(-1) for p in params])
            return 0.5 * w @ prob.Q.to(where) @ w + prob.c.to(where) @ w + torch.cos(w).sum()

        for _ in range(4):
            iterate(opt, loss)
        runs.append(flat(params).cpu())
    torch.testing.assert_close(runs[1], runs[0], rtol=0, atol=1e-12)
    assert not torch.equal(runs[0], prob.w0)


def test_saved_copy_is_reused():
    w = nn.Parameter(torch.randn(1000))
    opt = ExtraAdam([w], lr=1e-3)
    ptrs = set()
    for _ in range(3):
        iterate(opt, lambda: (w ** 2).sum())
        ptrs.add(opt._workspace[w].data_ptr())
    assert len(ptrs) == 1


# ------------------------------------------------------------- (8) mixed precision: torch.amp.GradScaler
def scaled_iterate(opt, loss, scaler, *, inject=None):
    """One iteration of the documented GradScaler loop; ``inject(pass_index)`` may corrupt a gradient."""
    if not isinstance(opt, OptimisticAdam):
        opt.zero_grad()
        scaler.scale(loss()).backward()
        if inject:
            inject(0)
        scaler.step(opt.first_pass, zero_grad=True)
    else:  # OptimisticAdam: the extrapolation needs no gradient
        opt.extrapolation()
        opt.zero_grad()
    scaler.scale(loss()).backward()
    if inject:
        inject(1)
    scaler.step(opt)
    scaler.update()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_grad_scaler_iterates_equal_the_unscaled_ones_bit_for_bit(name):
    """Scaling by 2^k and unscaling is exact: the scaled loop is the plain loop, whatever the scale does."""
    plain, amp = make_model(), make_model()
    opt_plain, opt_amp = OPTIMIZERS[name](plain.parameters()), OPTIMIZERS[name](amp.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)  # the scale doubles each time
    for _ in range(6):
        iterate(opt_plain, model_loss(plain))
        scaled_iterate(opt_amp, model_loss(amp), scaler)
    assert scaler.get_scale() == 2.0 ** 16
    for p, q in zip(plain.parameters(), amp.parameters()):
        assert torch.equal(p, q)
        for key, value in opt_plain.state[p].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(opt_amp.state[q][key])), key


@pytest.mark.parametrize("cls", [ExtraSGD, ExtraAdam])
def test_grad_scaler_iterates_equal_the_formulas(cls):
    """Against the hand-written extragradient on flat float64 vectors (the analytic gradient), per group."""
    prob = Smooth()
    params = prob.params()
    lr, eps = per_coord(LRS), 1e-3
    if cls is ExtraSGD:
        opt = ExtraSGD([{"params": [params[0]], "lr": LRS[0]}, {"params": [params[1]], "lr": LRS[1]}], lr=1.0)
        direction = lambda g: g  # noqa: E731
    else:
        opt = ExtraAdam(groups(params), eps=eps)
        direction, _ = adam_reference(False, eps)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 20)
    w = prob.w0.clone()
    for _ in range(8):
        w_half = w - lr * direction(prob.grad(w))
        w = w - lr * direction(prob.grad(w_half))
        opt.zero_grad()
        scaler.scale(prob.loss(params)).backward()
        scaler.step(opt.first_pass, zero_grad=True)
        torch.testing.assert_close(flat(params), w_half, rtol=0, atol=ATOL)
        scaler.scale(prob.loss(params)).backward()
        scaler.step(opt)
        scaler.update()
        torch.testing.assert_close(flat(params), w, rtol=0, atol=ATOL)


def _poison(model, which, value=float("inf")):
    def inject(pass_index):
        if pass_index == which:
            next(model.parameters()).grad.view(-1)[0] = value
    return inject


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_grad_scaler_inf_in_the_first_gradient_skips_the_iteration(name, value):
    model = make_model()
    opt = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for _ in range(2):
        scaled_iterate(opt, model_loss(model), scaler)
    w = [p.detach().clone() for p in model.parameters()]
    state = {k: {kk: torch.as_tensor(vv).clone() for kk, vv in v.items()} for k, v in opt.state.items()}
    loss = model_loss(model)
    if name == "OptimisticAdam":  # its one gradient is the second pass: the skip is the step's
        opt.extrapolation()
        opt.zero_grad()
        scaler.scale(loss()).backward()
        _poison(model, 1, value)(1)
        scaler.step(opt)
    else:
        opt.zero_grad()
        scaler.scale(loss()).backward()
        _poison(model, 0, value)(0)
        scaler.step(opt.first_pass, zero_grad=True)
        # Not moved along the non-finite direction: the second pass runs at w.
        assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))
        scaler.scale(loss()).backward()
        scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 11  # backed off
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))  # bitwise unchanged
    for p, values in state.items():  # no state change either (moments, step counts, momentum)
        for key, value_before in values.items():
            assert torch.equal(torch.as_tensor(opt.state[p][key]), value_before), key
    # ...and the next iteration is the plain one from there.
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    opt_twin = OPTIMIZERS[name](twin.parameters())
    opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the tensors
    scaled_iterate(opt, model_loss(model), scaler)
    iterate(opt_twin, model_loss(twin))
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters()))


@pytest.mark.parametrize("name", ["ExtraSGD", "ExtraAdam"])
def test_grad_scaler_inf_in_the_second_gradient_restores_w(name):
    model = make_model()
    opt = OPTIMIZERS[name](model.parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    scaled_iterate(opt, model_loss(model), scaler)
    w = [p.detach().clone() for p in model.parameters()]
    twin = make_model()
    twin.load_state_dict(model.state_dict())
    opt_twin = OPTIMIZERS[name](twin.parameters())
    opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))  # load_state_dict would share the tensors
    scaled_iterate(opt, model_loss(model), scaler, inject=_poison(model, 1))
    assert scaler.get_scale() == 2.0 ** 11
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), w))  # back at w, bitwise
    # As documented, the first (finite) gradient's update of the moments / momentum is kept: the state
    # is that of a plain extrapolation from w.
    opt_twin.zero_grad()
    model_loss(twin)().backward()
    opt_twin.extrapolation()
    for p, q in zip(model.parameters(), twin.parameters()):
        for key, value in opt_twin.state[q].items():
            assert torch.equal(torch.as_tensor(opt.state[p][key]), torch.as_tensor(value)), key


def test_grad_scaler_with_two_players_sharing_a_backward_pass():
    """The GAN loop of docs/optimizers.md with a scaler equals the plain loop; each player skips on its own."""
    def players(seed=0):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 2)), nn.Sequential(nn.Linear(2, 8), nn.ReLU(),
                                                                                      nn.Linear(8, 1))

    gen = torch.Generator().manual_seed(1)
    batches = [(torch.randn(16, 2, generator=gen) + 2, torch.randn(16, 2, generator=gen)) for _ in range(5)]

    def value(G, D, real, z):
        return -F.softplus(-D(real)).mean() - F.softplus(D(G(z))).mean()

    runs = []
    for scaled in (False, True):
        G, D = players()
        opt_g = ExtraAdam(G.parameters(), lr=1e-2, betas=(0.5, 0.9))
        opt_d = ExtraAdam(D.parameters(), lr=1e-2, betas=(0.5, 0.9), maximize=True)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2, enabled=scaled)
        for real, z in batches:
            opt_g.zero_grad()
            opt_d.zero_grad()
            scaler.scale(value(G, D, real, z)).backward()
            scaler.step(opt_g.first_pass, zero_grad=True)
            scaler.step(opt_d.first_pass, zero_grad=True)
            scaler.scale(value(G, D, real, z)).backward()
            scaler.step(opt_g)
            scaler.step(opt_d)
            scaler.update()
        runs.append(torch.cat([flat(G.parameters()), flat(D.parameters())]))
        if scaled:
            assert scaler.get_scale() == 2.0 ** 10
            # An overflow in the discriminator's gradients only: it skips, the generator steps.
            g_before, d_before = flat(G.parameters()), flat(D.parameters())
            opt_g.zero_grad()
            opt_d.zero_grad()
            scaler.scale(value(G, D, *batches[0])).backward()
            D[0].weight.grad[0, 0] = float("inf")
            scaler.step(opt_g.first_pass, zero_grad=True)
            scaler.step(opt_d.first_pass, zero_grad=True)
            scaler.scale(value(G, D, *batches[0])).backward()
            scaler.step(opt_g)
            scaler.step(opt_d)
            scaler.update()
            assert torch.equal(flat(D.parameters()), d_before)
            assert not torch.equal(flat(G.parameters()), g_before)
            assert scaler.get_scale() == 2.0 ** 9
    assert torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grad_scaler_under_autocast(dtype):
    """Autocast on the CPU: bfloat16 scales exactly (the plain autocast loop bit for bit); float16 with a too
    large initial scale overflows, skips with the weights unchanged and backs off until it fits."""
    torch.manual_seed(0)
    x = torch.randn(64, 3)
    target = x.sum(1, keepdim=True).sin()

    def make():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 32), nn.Tanh(), nn.Linear(32, 1))

    def loss_of(model):
        def loss():
            with torch.autocast("cpu", dtype=dtype):
                out = model(x)
            return F.mse_loss(out.float(), target)
        return loss

    plain, amp = make(), make()
    opt_plain, opt_amp = ExtraAdam(plain.parameters(), lr=1e-2), ExtraAdam(amp.parameters(), lr=1e-2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    steps = 0
    for _ in range(14):
        before, scale = flat(amp.parameters()), scaler.get_scale()
        scaled_iterate(opt_amp, loss_of(amp), scaler)
        if scaler.get_scale() < scale:  # skipped: nothing moved
            assert torch.equal(flat(amp.parameters()), before)
        else:
            steps += 1
            iterate(opt_plain, loss_of(plain))
    if dtype == torch.bfloat16:
        assert steps == 14
        assert torch.equal(flat(plain.parameters()), flat(amp.parameters()))
    else:
        # 2^24 overflows float16 (max 65504) until the scale has backed off (measured: 8 skips, to 2^16).
        assert 0 < steps < 14
        # Scaled float16 keeps small gradients that the unscaled float16 loop loses: close, not equal
        # (measured 2e-6 apart).
        torch.testing.assert_close(flat(amp.parameters()), flat(plain.parameters()), rtol=0, atol=1e-4)


@pytest.mark.parametrize("cls", [ExtraSGD, ExtraAdam])
def test_grad_scaler_misuse_is_refused_with_w_restored(cls):
    model = make_model()
    opt = cls(model.parameters(), lr=0.1)
    loss = model_loss(model)
    w = flat(model.parameters())
    scaler = torch.amp.GradScaler("cpu")
    # The direct call moves with the scaled gradients: scaler.step(opt) restores w and refuses.
    scaler.scale(loss()).backward()
    opt.extrapolation()
    opt.zero_grad()
    scaler.scale(loss()).backward()
    with pytest.raises(RuntimeError, match="first_pass"):
        scaler.step(opt)
    assert torch.equal(flat(model.parameters()), w)
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
    scaler = torch.amp.GradScaler("cpu")
    # A scaled extrapolation must be finished by the scaler.
    opt.zero_grad()
    scaler.scale(loss()).backward()
    scaler.step(opt.first_pass, zero_grad=True)
    scaler.scale(loss()).backward()
    with pytest.raises(RuntimeError, match=r"scaler.step\(opt\)"):
        opt.step()
    scaler.step(opt)
    scaler.update()
    # OptimisticAdam's extrapolation reads no gradient: it is not a scaler's pass.
    with pytest.raises(RuntimeError, match="uses no gradient"):
        OptimisticAdam(model.parameters()).first_pass.step()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_a_disabled_grad_scaler_is_the_plain_loop(name):
    plain, amp = make_model(), make_model()
    opt_plain, opt_amp = OPTIMIZERS[name](plain.parameters()), OPTIMIZERS[name](amp.parameters())
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for _ in range(3):
        iterate(opt_plain, model_loss(plain))
        scaled_iterate(opt_amp, model_loss(amp), scaler)
    assert all(torch.equal(p, q) for p, q in zip(plain.parameters(), amp.parameters()))


def test_grad_scaler_unscale_for_clipping():
    """scaler.unscale_ on either pass (to clip the unscaled gradients) works as for any torch optimizer."""
    runs = []
    for scaled in (False, True):
        model = make_model()
        opt = ExtraSGD(model.parameters(), lr=0.5, momentum=0.5)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12, enabled=scaled)
        loss = model_loss(model)
        for _ in range(4):
            opt.zero_grad()
            scaler.scale(loss()).backward()
            scaler.unscale_(opt.first_pass)
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(opt.first_pass, zero_grad=True)
            scaler.scale(loss()).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
        runs.append(flat(model.parameters()))
    assert torch.equal(runs[0], runs[1])


# ------------------------------------------------------------- the documentation's examples run
def test_docs_examples_run():
    page = Path(__file__).resolve().parents[1] / "docs" / "optimizers.md"
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    assert len(blocks) >= 3
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, str(page), "exec"), namespace)
