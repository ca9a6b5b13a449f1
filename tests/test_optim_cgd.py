"""saddle.optim.CGD and ACGD against dense second derivatives, the Dirac GAN, and torch.optim conventions.

The references differentiate the loss as a function of the flattened
parameters with ``torch.autograd.functional`` (full Hessian) and solve with
``torch.linalg.solve``: no product, conjugate gradient or flattening code of
the optimizer is reused.
"""

from __future__ import annotations

import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import saddle
from saddle.optim import ACGD, CGD

DT = torch.float64


# ----------------------------------------------------------------- problems
class Game:
    """A loss of two players' parameter lists, callable on the parameters or on flat vectors."""

    def __init__(self, kind: str, dtype=DT):
        g = torch.Generator().manual_seed(1)
        if kind == "quadratic":
            # bilinear + quadratic terms + a nonlinear coupling, on several parameter tensors each
            self.xs = [nn.Parameter(torch.randn(2, 3, generator=g, dtype=dtype)),
                       nn.Parameter(torch.randn(3, generator=g, dtype=dtype))]
            self.ys = [nn.Parameter(torch.randn(3, 2, generator=g, dtype=dtype)),
                       nn.Parameter(torch.randn((), generator=g, dtype=dtype))]
            self.fn = self._quadratic
        elif kind == "mlp":
            torch.manual_seed(2)
            self.G = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 2)).to(dtype)
            self.D = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1)).to(dtype)
            self.z = torch.randn(6, 2, generator=g, dtype=dtype)
            self.real = torch.randn(6, 2, generator=g, dtype=dtype) + 1.0
            self.xs, self.ys = list(self.G.parameters()), list(self.D.parameters())
            self.fn = self._mlp
        else:
            raise ValueError(kind)

    @staticmethod
    def _quadratic(xs, ys):
        W, u = xs
        V, s = ys
        return (0.3 * (W ** 2).sum() + torch.trace(W @ V) + s * (u @ V.sum(1)) + 0.1 * (u ** 2).sum() * s ** 2
                - 0.4 * (V ** 2).sum() - 0.2 * s ** 2 + torch.sin(u).sum() * torch.cos(s) + W.sum() * V[0, 1] ** 2)

    def _mlp(self, xs, ys):
        G = dict(zip([n for n, _ in self.G.named_parameters()], xs))
        D = dict(zip([n for n, _ in self.D.named_parameters()], ys))
        fake = functional_call(self.G, G, (self.z,))
        # the GAN loss the discriminator maximizes: log sigmoid(D(real)) + log(1 - sigmoid(D(fake)))
        return -F.softplus(-functional_call(self.D, D, (self.real,))).mean() - F.softplus(
            functional_call(self.D, D, (fake,))).mean()

    def loss(self):
        return self.fn(self.xs, self.ys)

    def flat(self):
        return (torch.cat([p.detach().reshape(-1) for p in self.xs]),
                torch.cat([p.detach().reshape(-1) for p in self.ys]))

    def dense(self):
        """Gradients and the mixed Hessian D_xy at the current parameters, from flat vectors."""
        def unflat(v, like):
            return [t.view_as(p) for t, p in zip(v.split([p.numel() for p in like]), like)]

        def f(x, y):
            return self.fn(unflat(x, self.xs), unflat(y, self.ys))

        x, y = self.flat()
        gx, gy = torch.autograd.functional.jacobian(f, (x, y))
        H = torch.autograd.functional.hessian(f, (x, y))
        return gx, gy, H[0][1]


def cgd_reference(gx, gy, Dxy, eta):
    """The CGD step from the closed formulas of Schäfer & Anandkumar (x minimizes, y maximizes)."""
    Dyx = Dxy.T
    Ix, Iy = torch.eye(len(gx), dtype=DT), torch.eye(len(gy), dtype=DT)
    dx = -eta * torch.linalg.solve(Ix + eta ** 2 * Dxy @ Dyx, gx + eta * Dxy @ gy)
    dy = eta * torch.linalg.solve(Iy + eta ** 2 * Dyx @ Dxy, gy - eta * Dyx @ gx)
    return dx, dy


def nash_reference(gx, gy, Dxy, ax, ay):
    """The Nash equilibrium of the local game with diagonal step sizes, from the coupled block system:
    dx = -A_x (g_x + D_xy dy),  dy = A_y (g_y + D_yx dx)."""
    nx = len(gx)
    M = torch.cat([torch.cat([torch.diag(1 / ax), Dxy], 1), torch.cat([-Dxy.T, torch.diag(1 / ay)], 1)])
    d = torch.linalg.solve(M, torch.cat([-gx, gy]))
    return d[:nx], d[nx:]


def acgd_formula(gx, gy, Dxy, ax, ay):
    """ALGORITHMS.md's preconditioned system for ACGD, dense."""
    rx = ax.sqrt()
    S = torch.eye(len(gx), dtype=DT) + rx[:, None] * Dxy @ (ay[:, None] * Dxy.T) * rx[None, :]
    c = torch.linalg.solve(S, rx * (gx + Dxy @ (ay * gy)))
    dx = -rx * c
    return dx, ay * (gy + Dxy.T @ dx)


# ----------------------------------------------------- CGD against the formulas
@pytest.mark.parametrize("kind", ["quadratic", "mlp"])
@pytest.mark.parametrize("solve_for", ["min", "max", "alternate"])
def test_cgd_steps_match_dense_formula(kind, solve_for):
    game = Game(kind)
    eta = 0.3
    opt = CGD(min_params=game.xs, max_params=game.ys, lr=eta, cg_tol=1e-14, solve_for=solve_for)
    for _ in range(4):
        gx, gy, Dxy = game.dense()
        dx, dy = cgd_reference(gx, gy, Dxy, eta)
        x0, y0 = game.flat()
        opt.step(game.loss)
        x1, y1 = game.flat()
        torch.testing.assert_close(x1 - x0, dx, rtol=0, atol=1e-10)
        torch.testing.assert_close(y1 - y0, dy, rtol=0, atol=1e-10)
    assert opt.counts["steps"] == 4


@pytest.mark.parametrize("kind", ["quadratic", "mlp"])
def test_cgd_per_group_learning_rates_are_diagonal_step_sizes(kind):
    game = Game(kind)
    lrs = [(0.2, 0.5), (0.1, 0.05)]  # (min groups, max groups): first tensor vs the rest of each player
    opt = CGD(min_params=[{"params": game.xs[:1], "lr": lrs[0][0]}, {"params": game.xs[1:], "lr": lrs[0][1]}],
              max_params=[{"params": game.ys[:1], "lr": lrs[1][0]}, {"params": game.ys[1:]}], lr=lrs[1][1],
              cg_tol=1e-14)

    def sizes(params, lr):
        n0 = params[0].numel()
        n1 = sum(p.numel() for p in params[1:])
        return torch.cat([torch.full((n0,), lr[0], dtype=DT), torch.full((n1,), lr[1], dtype=DT)])

    for _ in range(3):
        gx, gy, Dxy = game.dense()
        dx, dy = nash_reference(gx, gy, Dxy, sizes(game.xs, lrs[0]), sizes(game.ys, lrs[1]))
        x0, y0 = game.flat()
        opt.step(loss=game.loss())
        x1, y1 = game.flat()
        torch.testing.assert_close(x1 - x0, dx, rtol=0, atol=1e-10)
        torch.testing.assert_close(y1 - y0, dy, rtol=0, atol=1e-10)


@pytest.mark.parametrize("kind", ["quadratic", "mlp"])
@pytest.mark.parametrize("solve_for", ["min", "alternate"])
def test_acgd_steps_match_dense_formula(kind, solve_for):
    game = Game(kind)
    lr, beta, eps = 0.05, 0.9, 1e-3
    opt = ACGD(min_params=game.xs, max_params=game.ys, lr=lr, beta=beta, eps=eps, cg_tol=1e-14, solve_for=solve_for)
    vx = vy = 0.0
    for t in range(1, 5):
        gx, gy, Dxy = game.dense()
        vx = beta * vx + (1 - beta) * gx ** 2
        vy = beta * vy + (1 - beta) * gy ** 2
        ax = lr * math.sqrt(1 - beta ** t) / (vx.sqrt() + eps)
        ay = lr * math.sqrt(1 - beta ** t) / (vy.sqrt() + eps)
        dx, dy = nash_reference(gx, gy, Dxy, ax, ay)
        fx, fy = acgd_formula(gx, gy, Dxy, ax, ay)
        torch.testing.assert_close(fx, dx, rtol=0, atol=1e-12)  # the two references agree
        torch.testing.assert_close(fy, dy, rtol=0, atol=1e-12)
        x0, y0 = game.flat()
        opt.step(game.loss)
        x1, y1 = game.flat()
        torch.testing.assert_close(x1 - x0, dx, rtol=0, atol=1e-10)
        torch.testing.assert_close(y1 - y0, dy, rtol=0, atol=1e-10)
    state = opt.state[game.xs[0]]
    assert state["step"] == 4
    torch.testing.assert_close(state["square_avg"].reshape(-1), vx[:game.xs[0].numel()], rtol=1e-12, atol=0)


def test_cgd_on_device(device):
    game = Game("quadratic")
    gx, gy, Dxy = game.dense()
    dx, dy = cgd_reference(gx, gy, Dxy, 0.3)
    x0, y0 = game.flat()
    xs = [nn.Parameter(p.detach().to(device)) for p in game.xs]
    ys = [nn.Parameter(p.detach().to(device)) for p in game.ys]
    CGD(min_params=xs, max_params=ys, lr=0.3, cg_tol=1e-14).step(lambda: game.fn(xs, ys))
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in xs]).cpu() - x0, dx, rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in ys]).cpu() - y0, dy, rtol=0, atol=1e-10)


def test_mixed_dtypes_follow_the_promoted_dtype():
    game = Game("quadratic")
    gx, gy, Dxy = game.dense()
    dx, dy = cgd_reference(gx, gy, Dxy, 0.3)
    x0, y0 = game.flat()
    xs = [nn.Parameter(game.xs[0].detach().float()), nn.Parameter(game.xs[1].detach().clone())]
    ys = [nn.Parameter(p.detach().clone()) for p in game.ys]
    CGD(min_params=xs, max_params=ys, lr=0.3, cg_tol=1e-12).step(lambda: game.fn([xs[0].double(), xs[1]], ys))
    assert xs[0].dtype == torch.float32
    torch.testing.assert_close(torch.cat([p.detach().double().reshape(-1) for p in xs]) - x0, dx,
                               rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([p.detach().reshape(-1) for p in ys]) - y0, dy, rtol=0, atol=1e-6)


def test_frozen_parameters_are_skipped():
    game = Game("mlp")
    frozen = game.G[0].bias
    frozen.requires_grad_(False)
    before = frozen.detach().clone()
    opt = CGD(min_params=game.G.parameters(), max_params=game.D.parameters(), lr=0.1)
    opt.step(game.loss)
    assert torch.equal(frozen, before)
    assert frozen not in opt.state


# -------------------------------------------------------------- Dirac GAN
def test_dirac_gan_cgd_converges_where_simultaneous_sgd_does_not():
    # Mescheder et al.'s Dirac GAN: generator theta (min), linear discriminator psi (max), data at 0.
    def dirac(theta, psi):
        return -F.softplus(-psi * theta)  # = -log(1 + exp(-psi theta))

    theta, psi = nn.Parameter(torch.tensor(1.0, dtype=DT)), nn.Parameter(torch.tensor(1.0, dtype=DT))
    opt = CGD(min_params=[theta], max_params=[psi], lr=1.0, cg_tol=1e-12)
    for _ in range(200):
        opt.step(lambda: dirac(theta, psi))
    assert math.hypot(theta.item(), psi.item()) < 1e-6

    theta2, psi2 = nn.Parameter(torch.tensor(1.0, dtype=DT)), nn.Parameter(torch.tensor(1.0, dtype=DT))
    gen = torch.optim.SGD([theta2], lr=1.0)
    disc = torch.optim.SGD([psi2], lr=1.0, maximize=True)
    for _ in range(200):
        gen.zero_grad()
        disc.zero_grad()
        dirac(theta2, psi2).backward()
        gen.step()
        disc.step()
    assert math.hypot(theta2.item(), psi2.item()) > math.sqrt(2)  # farther than it started


# ------------------------------------------------------------------ counts
class CountingGrad:
    """Wraps torch.autograd.grad: first derivatives (create_graph=True) and mixed products separately."""

    def __init__(self, monkeypatch):
        self.first = self.second = 0
        original = torch.autograd.grad

        def grad(*args, **kwargs):
            if kwargs.get("create_graph"):
                self.first += 1
            else:
                self.second += 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch.autograd, "grad", grad)


@pytest.mark.parametrize("warm_start", [True, False])
@pytest.mark.parametrize("cls", [CGD, ACGD])
def test_counts_are_the_autograd_calls_made(monkeypatch, cls, warm_start):
    game = Game("mlp")
    opt = cls(min_params=game.G.parameters(), max_params=game.D.parameters(), lr=0.1, cg_tol=1e-10,
              warm_start=warm_start)
    calls = CountingGrad(monkeypatch)
    iterations = []
    for _ in range(3):
        opt.step(game.loss)
        iterations.append(opt.info["cg_iterations"])
    assert opt.counts == {"steps": 3, "grad": calls.first, "hvp": calls.second,
                          "cg_iterations": sum(iterations)}
    assert calls.first == 3
    # rhs 1 + recovery 1 + 2 per CG product; a warm start (steps 2 and 3) costs one more product
    assert calls.second == 3 * 2 + 2 * sum(iterations) + (2 * 2 if warm_start else 0)


def test_cg_iteration_count_on_a_bilinear_game_is_the_number_of_distinct_eigenvalues():
    # f = x^T K y with K = diag(1, 2, 3): I + eta^2 K K^T has 3 distinct eigenvalues, so exact CG
    # from zero takes 3 iterations, and each step costs 1 + 2 * 3 + 1 = 8 mixed products.
    K = torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=DT))
    x = nn.Parameter(torch.tensor([1.0, -1.0, 0.5], dtype=DT))
    y = nn.Parameter(torch.tensor([0.3, 0.2, -1.0], dtype=DT))
    opt = CGD(min_params=[x], max_params=[y], lr=0.2, cg_tol=1e-12, warm_start=False)
    for _ in range(2):
        opt.step(lambda: x @ K @ y)
    assert opt.counts == {"steps": 2, "grad": 2, "hvp": 16, "cg_iterations": 6}


# ------------------------------------------------------ torch.optim conventions
@pytest.mark.parametrize("cls,kw", [(CGD, {"solve_for": "alternate"}), (ACGD, {"lr": 0.05})])
def test_state_dict_round_trip_resumes_identically(cls, kw):
    game = Game("mlp")
    opt = cls(min_params=game.G.parameters(), max_params=game.D.parameters(), cg_tol=1e-8, **{"lr": 0.2, **kw})
    for _ in range(3):
        opt.step(game.loss)
    buffer = io.BytesIO()
    torch.save({"G": game.G.state_dict(), "D": game.D.state_dict(), "opt": opt.state_dict()}, buffer)
    for _ in range(3):
        opt.step(game.loss)
    expected = [p.detach().clone() for p in game.xs + game.ys]

    resumed = Game("mlp")
    buffer.seek(0)
    saved = torch.load(buffer)
    resumed.G.load_state_dict(saved["G"])
    resumed.D.load_state_dict(saved["D"])
    opt2 = cls(min_params=resumed.G.parameters(), max_params=resumed.D.parameters())  # defaults overwritten
    opt2.load_state_dict(saved["opt"])
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"]
    for _ in range(3):
        opt2.step(resumed.loss)
    for p, q in zip(resumed.xs + resumed.ys, expected):
        assert torch.equal(p, q)
    assert opt2.counts == opt.counts


def test_step_lr_scheduler_changes_the_step():
    game = Game("quadratic")
    opt = CGD(min_params=game.xs, max_params=game.ys, lr=0.4, cg_tol=1e-14)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    for eta in (0.4, 0.2, 0.1):
        assert all(group["lr"] == pytest.approx(eta) for group in opt.param_groups)
        gx, gy, Dxy = game.dense()
        dx, dy = cgd_reference(gx, gy, Dxy, eta)
        x0, y0 = game.flat()
        opt.step(game.loss)
        scheduler.step()
        x1, y1 = game.flat()
        torch.testing.assert_close(x1 - x0, dx, rtol=0, atol=1e-10)
        torch.testing.assert_close(y1 - y0, dy, rtol=0, atol=1e-10)


def test_add_param_group_and_zero_grad():
    game = Game("mlp")
    opt = CGD(min_params=game.G[0].parameters(), max_params=game.D.parameters(), lr=0.1)
    opt.add_param_group({"params": game.G[2].parameters(), "player": "min", "lr": 0.05})
    assert [g["player"] for g in opt.param_groups] == ["min", "max", "min"]
    assert opt.param_groups[2]["lr"] == 0.05
    game.loss().backward()
    opt.step(game.loss)
    opt.zero_grad()
    assert all(p.grad is None for p in game.xs + game.ys)
    with pytest.raises(ValueError, match="player"):
        opt.add_param_group({"params": [nn.Parameter(torch.zeros(2))]})


def test_bad_arguments_raise():
    game = Game("quadratic")
    xs, ys = game.xs, game.ys
    for kw, err, match in [
        ({"lr": -1.0}, ValueError, "lr"),
        ({"lr": float("nan")}, ValueError, "lr"),
        ({"lr": "0.1"}, TypeError, "lr"),
        ({"cg_tol": -1e-3}, ValueError, "cg_tol"),
        ({"cg_max_iters": -1}, ValueError, "cg_max_iters"),
        ({"cg_max_iters": 2.5}, TypeError, "cg_max_iters"),
        ({"max_iters": 5}, TypeError, "max_iters"),
        ({"solve_for": "x"}, ValueError, "solve_for"),
        ({"warm_start": 1}, TypeError, "warm_start"),
    ]:
        with pytest.raises(err, match=match):
            CGD(min_params=xs, max_params=ys, **kw)
    for kw, match in [({"beta": 1.0}, "beta"), ({"beta": -0.1}, "beta"), ({"eps": 0.0}, "eps")]:
        with pytest.raises(ValueError, match=match):
            ACGD(min_params=xs, max_params=ys, **kw)
    with pytest.raises(ValueError, match="min_params is empty"):
        CGD(min_params=[], max_params=ys)
    with pytest.raises(ValueError, match="max_params is empty"):
        CGD(min_params=xs, max_params=iter([]))
    with pytest.raises(ValueError, match="both min_params and max_params"):
        CGD(min_params=xs, max_params=[ys[0], xs[1]])
    with pytest.raises(ValueError, match="twice"):
        CGD(min_params=[xs[0], xs[0]], max_params=ys)
    with pytest.raises(TypeError, match="parameters()"):
        CGD(min_params=nn.Linear(2, 2), max_params=ys)
    with pytest.raises(TypeError, match="max_params"):
        CGD(min_params=xs, max_params=ys[0])
    with pytest.raises(ValueError, match="player='max'"):
        CGD(min_params=[{"params": xs, "player": "max"}], max_params=ys)
    with pytest.raises(TypeError):
        CGD(xs, ys)  # the players are keyword-only: CGDs takes (max_params, min_params)

    opt = CGD(min_params=xs, max_params=ys)
    with pytest.raises(TypeError, match="exactly one"):
        opt.step()
    with pytest.raises(TypeError, match="exactly one"):
        opt.step(game.loss, loss=game.loss())
    with pytest.raises(ValueError, match="scalar"):
        opt.step(lambda: xs[1] * ys[1])
    with pytest.raises(ValueError, match="require grad"):
        with torch.no_grad():
            loss = game.loss()
        opt.step(loss=loss)
    with pytest.raises(TypeError, match="Tensor"):
        opt.step(lambda: 1.0)
    frozen = CGD(min_params=xs, max_params=[nn.Parameter(torch.zeros(2, dtype=DT), requires_grad=False)])
    with pytest.raises(ValueError, match="no parameter of max_params requires grad"):
        frozen.step(game.loss)
    assert opt.counts["steps"] == 0


def test_saddle_optim_is_importable_from_the_top_level():
    assert saddle.optim.CGD is CGD and saddle.optim.ACGD is ACGD


# --------------------------------------------- the same method as the batched solver
@pytest.mark.parametrize("name", ["cgd", "acgd"])
def test_optimizer_matches_the_batched_solver(name):
    if name not in saddle.solver_names():
        pytest.skip(f"the batched solver {name!r} (saddle.solvers.competitive) is not registered yet")
    game = Game("mlp")
    x0, y0 = game.flat()
    lr = 0.2 if name == "cgd" else 0.05

    def unflat(v, like):
        return [t.view_as(p) for t, p in zip(v.split([p.numel() for p in like]), like)]

    def f(x, y):  # (B, n), (B, m) -> (B,): the same loss on the flattened parameters
        return torch.stack([game.fn(unflat(xi, game.xs), unflat(yi, game.ys)) for xi, yi in zip(x, y)])

    problem = saddle.SaddleProblem(f, x0[None].clone(), y0[None].clone())
    # float64 tensors: exactly the optimizer's numbers, whatever the solver does with Python floats
    # (converted through float32, 0.2 becomes 0.20000000298 and the iterates differ by ~1e-10).
    settings = {"step_size": lr} if name == "cgd" else {"step_size": lr, "beta": 0.99, "eps": 1e-5}
    solver = saddle.get_solver(name, cg_tol=1e-13, cg_check_every=1,
                               **{k: torch.tensor(v, dtype=DT) for k, v in settings.items()})
    z = problem.z0
    state = solver.init(problem, z)
    opt = (CGD if name == "cgd" else ACGD)(min_params=game.xs, max_params=game.ys, lr=lr, cg_tol=1e-13)
    for _ in range(4):
        z, state = solver.step(problem, z, state)
        opt.step(game.loss)
        x1, y1 = game.flat()
        torch.testing.assert_close(z[0][0], x1, rtol=0, atol=1e-12)
        torch.testing.assert_close(z[1][0], y1, rtol=0, atol=1e-12)
        assert opt.info["cg_iterations"] == int(state.cg_iterations[0])
    assert opt.counts["hvp"] == int(state.hvp_calls[0])
    assert opt.counts["grad"] == int(state.operator_calls[0])


@pytest.mark.parametrize("cls", [CGD, ACGD])
def test_old_cg_setting_names_are_deprecated_aliases(cls):
    """``tol`` / ``max_cg_iters`` (before the batched solvers' names) still work, with a DeprecationWarning."""
    runs = []
    for kw in ({"cg_tol": 1e-3, "cg_max_iters": 2}, {"tol": 1e-3, "max_cg_iters": 2}):
        game = Game("mlp")
        if "tol" in kw:
            with pytest.warns(DeprecationWarning) as warned:
                opt = cls(min_params=game.G.parameters(), max_params=game.D.parameters(), lr=0.2, **kw)
            assert sorted(str(w.message) for w in warned) == [
                f"{cls.__name__}: max_cg_iters is deprecated, use cg_max_iters",
                f"{cls.__name__}: tol is deprecated, use cg_tol"]
            assert all(w.filename == __file__ for w in warned)  # points at the caller
        else:
            opt = cls(min_params=game.G.parameters(), max_params=game.D.parameters(), lr=0.2, **kw)
        assert (opt.cg_tol, opt.cg_max_iters) == (1e-3, 2)
        for _ in range(2):
            opt.step(game.loss)
        assert opt.info["cg_iterations"] <= 2  # the cap took effect
        runs.append([p.detach().clone() for p in game.xs + game.ys])
    assert all(torch.equal(p, q) for p, q in zip(*runs))
    with pytest.warns(DeprecationWarning, match="use cg_max_iters"):
        assert opt.max_cg_iters == 2
    with pytest.raises(TypeError, match="pass cg_tol only"):
        cls(min_params=game.G.parameters(), max_params=game.D.parameters(), cg_tol=1e-4, tol=1e-3)


def test_state_dicts_saved_with_the_old_setting_names_load():
    game = Game("quadratic")
    opt = CGD(min_params=game.xs, max_params=game.ys, cg_tol=1e-9, cg_max_iters=7)
    state = opt.state_dict()
    assert state["cg"] == {"cg_tol": 1e-9, "cg_max_iters": 7, "solve_for": "min", "warm_start": True}
    state["cg"] = {"tol": 1e-9, "max_cg_iters": 7, "solve_for": "max", "warm_start": False}  # as saved before
    fresh = CGD(min_params=game.xs, max_params=game.ys)
    fresh.load_state_dict(state)
    assert (fresh.cg_tol, fresh.cg_max_iters, fresh.solve_for, fresh.warm_start) == (1e-9, 7, "max", False)
