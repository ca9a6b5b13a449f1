"""SAM and ASAM: the solver, the optimizer and the SAM formula agree; SAM finds flatter minima; saddles.

References are independent: the SAM formula of Foret et al. (arXiv 2010.01412,
eq. 2 and the update after it) and ASAM's (Kwon et al., arXiv 2102.11600,
eq. 9) written out per parameter with ``torch.autograd.grad``; closed-form
iterates on quadratics; dense Hessians for the power iteration.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from saddle import problems
import saddle
from saddle.problems.sharpness import classification_data, largest_hessian_eigenvalue
from saddle.optim import SAM as SAMOptimizer

cross_entropy = nn.functional.cross_entropy


def small_mlp(dtype=torch.float64, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2)).to(dtype)


def data(dtype=torch.float64, n=32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, dtype=dtype, generator=gen), torch.randint(0, 2, (n,), generator=gen)


def flat(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def formula_steps(model, X, Y, steps, *, rho, lr, momentum=0.0, adaptive=False, eta=0.01, weight_decay=0.0):
    """SAM / ASAM written out per parameter: e = rho T^2 g / |T g|; w <- SGD step with grad L(w + e)."""
    params = list(model.parameters())
    bufs = [None] * len(params)
    for _ in range(steps):
        g = torch.autograd.grad(cross_entropy(model(X), Y), params)
        T = [(p.detach().abs() + eta) if adaptive else torch.ones_like(p) for p in params]
        norm = math.sqrt(sum(float(((t * gi) ** 2).sum()) for t, gi in zip(T, g)))
        e = [rho * t * t * gi / norm for t, gi in zip(T, g)]
        with torch.no_grad():
            for p, ei in zip(params, e):
                p.add_(ei)
        g2 = torch.autograd.grad(cross_entropy(model(X), Y), params)
        with torch.no_grad():
            for i, (p, ei, gi) in enumerate(zip(params, e, g2)):
                p.sub_(ei)
                d = gi + weight_decay * p
                if momentum:
                    bufs[i] = d.clone() if bufs[i] is None else momentum * bufs[i] + d
                    d = bufs[i]
                p.sub_(lr * d)
    return flat(model)


def optimizer_steps(model, X, Y, steps, *, rho, lr, momentum=0.0, adaptive=False, eta=0.01, weight_decay=0.0):
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=rho, adaptive=adaptive, adaptive_eta=eta, lr=lr,
                       momentum=momentum, weight_decay=weight_decay)
    for _ in range(steps):
        cross_entropy(model(X), Y).backward()
        opt.step(lambda: cross_entropy(model(X), Y).backward())
        opt.zero_grad()
    return flat(model)


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_optimizer_solver_and_formula_agree(dtype, tol, adaptive, momentum):
    X, Y = data(dtype)
    settings = dict(rho=0.1, lr=0.3, momentum=momentum, adaptive=adaptive, weight_decay=1e-3)
    want = formula_steps(small_mlp(dtype), X, Y, 6, **settings)
    got_opt = optimizer_steps(small_mlp(dtype), X, Y, 6, **settings)
    problem = problems.get("sharpness", model=small_mlp(dtype), data=(X, Y), loss_fn=cross_entropy, rho=0.1,
                           adaptive=adaptive, dtype=dtype)
    solver = "asam" if adaptive else "sam"
    sol = saddle.solve(problem, solver, step_size=0.3, momentum=momentum, weight_decay=1e-3, max_iters=6, tol=0.0)
    assert sol.x.dtype == dtype
    torch.testing.assert_close(got_opt, want, rtol=0, atol=tol)
    torch.testing.assert_close(sol.x[0], want, rtol=0, atol=tol)
    assert sol.operator_calls.tolist() == [12]
    assert torch.equal(sol.y, torch.zeros_like(sol.y))  # the perturbation is reset after every step


def test_batched_rho_equals_single_solves_and_rho_zero_is_gradient_descent():
    X, Y = data()
    rho = torch.tensor([0.0, 0.05, 0.2])
    batch = problems.get("sharpness", model=small_mlp(), data=(X, Y), loss_fn=cross_entropy, rho=rho, batch_size=3)
    sol = saddle.solve(batch, "sam", step_size=0.2, max_iters=5, tol=0.0)
    for i, r in enumerate(rho.tolist()):
        one = problems.get("sharpness", model=small_mlp(), data=(X, Y), loss_fn=cross_entropy, rho=r)
        torch.testing.assert_close(sol.x[i], saddle.solve(one, "sam", step_size=0.2, max_iters=5, tol=0.0).x[0],
                                   rtol=0, atol=1e-13)
    model = small_mlp()
    sgd = torch.optim.SGD(model.parameters(), lr=0.2)
    for _ in range(5):
        sgd.zero_grad()
        cross_entropy(model(X), Y).backward()
        sgd.step()
    torch.testing.assert_close(sol.x[0], flat(model), rtol=0, atol=1e-13)


def test_quadratic_closed_form_and_per_instance_radius():
    # L(w) = 1/2 w^T H w: grad = H w, e = rho H w / |H w|, w+ = w - lr H (w + e).
    gen = torch.Generator().manual_seed(3)
    M = torch.randn(4, 4, dtype=torch.float64, generator=gen)
    H = M @ M.T + torch.eye(4, dtype=torch.float64)
    w0 = torch.randn(2, 4, dtype=torch.float64, generator=gen)
    rho = torch.tensor([0.1, 0.4], dtype=torch.float64)
    problem = problems.get("sharpness", loss=lambda w: 0.5 * ((w @ H) * w).sum(-1), w0=w0, rho=rho)
    sol = saddle.solve(problem, "sam", step_size=0.05, max_iters=3, tol=0.0)
    w = w0.clone()
    for _ in range(3):
        g = w @ H
        e = rho[:, None] * g / g.norm(dim=-1, keepdim=True)
        w = w - 0.05 * ((w + e) @ H)
    torch.testing.assert_close(sol.x, w, rtol=0, atol=1e-14)
    # ASAM on the same quadratic: e = rho T^2 g / |T g|, T = |w| + eta.
    adaptive = problems.get("sharpness", loss=lambda w: 0.5 * ((w @ H) * w).sum(-1), w0=w0, rho=rho,
                            adaptive=True, eta=0.05)
    sol = saddle.solve(adaptive, "sam", step_size=0.05, max_iters=3, tol=0.0)
    w = w0.clone()
    for _ in range(3):
        g, T = w @ H, w.abs() + 0.05
        e = rho[:, None] * T * T * g / (T * g).norm(dim=-1, keepdim=True)
        w = w - 0.05 * ((w + e) @ H)
    torch.testing.assert_close(sol.x, w, rtol=0, atol=1e-14)


def test_m_sharpness_perturbs_each_micro_batch():
    X, Y = data(n=24)
    G = 3
    problem = problems.get("sharpness", model=small_mlp(), data=(X, Y), loss_fn=cross_entropy, rho=0.1,
                           micro_batches=G)
    assert problem.z0[1].shape == (1, G * problem.z0[0].shape[1])
    sol = saddle.solve(problem, "sam", step_size=0.3, max_iters=2, tol=0.0)
    model = small_mlp()
    params = list(model.parameters())
    for _ in range(2):
        total = [torch.zeros_like(p) for p in params]
        for xs, ys in zip(X.chunk(G), Y.chunk(G)):
            g = torch.autograd.grad(cross_entropy(model(xs), ys), params)
            norm = torch.sqrt(sum((gi ** 2).sum() for gi in g))
            twin = copy.deepcopy(model)
            with torch.no_grad():
                for p, gi in zip(twin.parameters(), g):
                    p.add_(0.1 * gi / norm)
            g2 = torch.autograd.grad(cross_entropy(twin(xs), ys), list(twin.parameters()))
            total = [t + gi / G for t, gi in zip(total, g2)]
        with torch.no_grad():
            for p, t in zip(params, total):
                p.sub_(0.3 * t)
    torch.testing.assert_close(sol.x[0], flat(model), rtol=0, atol=1e-12)
    # One micro-batch is plain SAM.
    one = problems.get("sharpness", model=small_mlp(), data=(X, Y), loss_fn=cross_entropy, rho=0.1, micro_batches=1)
    assert one.z0[1].shape == one.z0[0].shape


def test_optimizer_param_groups_have_their_own_rho_and_share_the_norm():
    X, Y = data()
    model = small_mlp()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    opt = SAMOptimizer([{"params": first, "rho": 0.05}, {"params": second}], torch.optim.SGD, rho=0.2, lr=0.1)
    w = flat(model)
    cross_entropy(model(X), Y).backward()
    g = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.first_step(zero_grad=True)
    n_first = sum(p.numel() for p in first)
    rho = torch.cat([torch.full((n_first,), 0.05, dtype=torch.float64),
                     torch.full((g.numel() - n_first,), 0.2, dtype=torch.float64)])
    torch.testing.assert_close(flat(model), w + rho * g / g.norm(), rtol=0, atol=1e-15)
    cross_entropy(model(X), Y).backward()
    g2 = torch.cat([p.grad.reshape(-1) for p in model.parameters()])
    opt.second_step()
    torch.testing.assert_close(flat(model), w - 0.1 * g2, rtol=0, atol=1e-15)


def test_state_dict_round_trip_resumes_bit_identically_and_schedulers_drive_the_base():
    X, Y = data()

    def make():
        model = small_mlp()
        opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.2, momentum=0.9)
        return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)

    def run(model, opt, sched, steps):
        for _ in range(steps):
            cross_entropy(model(X), Y).backward()
            opt.step(lambda: cross_entropy(model(X), Y).backward())
            opt.zero_grad()
            sched.step()

    model, opt, sched = make()
    run(model, opt, sched, 7)
    assert opt.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.2 * 0.5 ** 3)
    model_a, opt_a, sched_a = make()
    run(model_a, opt_a, sched_a, 4)
    saved = (copy.deepcopy(model_a.state_dict()), copy.deepcopy(opt_a.state_dict()), sched_a.state_dict())
    model_b, opt_b, sched_b = make()
    model_b.load_state_dict(saved[0])
    opt_b.load_state_dict(saved[1])
    sched_b.load_state_dict(saved[2])
    run(model_b, opt_b, sched_b, 3)
    assert torch.equal(flat(model_b), flat(model))


def test_optimizer_refuses_misuse_clearly():
    model = small_mlp()
    with pytest.raises(TypeError, match="base_optimizer"):
        SAMOptimizer(model.parameters(), torch.optim.SGD(model.parameters(), lr=0.1), lr=0.1)
    with pytest.raises(ValueError, match="rho"):
        SAMOptimizer(model.parameters(), torch.optim.SGD, rho=-0.1, lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.rho"):
        SAMOptimizer([{"params": model.parameters(), "rho": float("nan")}], torch.optim.SGD, lr=0.1)
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(RuntimeError, match="backward"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="first_step"):
        opt.second_step()
    with pytest.raises(RuntimeError, match="closure"):
        opt.step()
    X, Y = data()
    cross_entropy(model(X), Y).backward()
    opt.first_step()
    with pytest.raises(RuntimeError, match="twice"):
        opt.first_step()
    with pytest.raises(RuntimeError, match="state_dict"):
        opt.state_dict()


def test_problem_and_solver_refuse_bad_input_clearly():
    X, Y = data(n=10)
    with pytest.raises(ValueError, match="micro_batches=3 must divide"):
        problems.get("sharpness", model=small_mlp(), data=(X, Y), loss_fn=cross_entropy, micro_batches=3)
    with pytest.raises(ValueError, match="micro_batches > 1 needs the model form"):
        problems.get("sharpness", loss=lambda w: w.square().sum(-1), w0=torch.zeros(3), micro_batches=2)
    with pytest.raises(ValueError, match="rho must be finite and >= 0"):
        problems.get("sharpness", loss=lambda w: w.square().sum(-1), w0=torch.zeros(3), rho=-1.0)
    with pytest.raises(ValueError, match="loss needs w0"):
        problems.get("sharpness", loss=lambda w: w.square().sum(-1))
    with pytest.raises(ValueError, match="same number of samples"):
        problems.get("sharpness", model=small_mlp(), data=(X, Y[:5]), loss_fn=cross_entropy)
    with pytest.raises(ValueError, match="momentum"):
        saddle.SAM(momentum=1.5)
    with pytest.raises(ValueError, match="nesterov"):
        saddle.SAM(nesterov=True)
    unbounded = problems.get("bilinear", n=3, batch_size=1)
    with pytest.raises(ValueError, match="bounded"):
        saddle.solve(unbounded, "sam", max_iters=1)
    box_game = saddle.SaddleProblem(lambda x, y: (x * y).sum(-1), torch.zeros(1, 2, dtype=torch.float64),
                                    torch.zeros(1, 2, dtype=torch.float64), Y=saddle.Box(-1.0, 1.0))
    with pytest.raises(ValueError, match="Euclidean Ball"):
        saddle.solve(box_game, "asam", max_iters=1)


def test_sam_on_a_box_uses_the_box_lmo():
    # Y = Box(-r, r): the linear maximizer of <g, e> is r sign(g) (an l-inf SAM).
    gen = torch.Generator().manual_seed(5)
    c = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    f = lambda w, e: 0.5 * (w + e - c).square().sum(-1)  # noqa: E731
    w0 = torch.zeros(2, 3, dtype=torch.float64)
    problem = saddle.SaddleProblem(f, w0, torch.zeros_like(w0), Y=saddle.Box(-0.1, 0.1))
    sol = saddle.solve(problem, "sam", step_size=0.5, max_iters=1, tol=0.0)
    e = 0.1 * torch.sign(w0 - c)
    torch.testing.assert_close(sol.x, w0 - 0.5 * (w0 + e - c), rtol=0, atol=1e-15)


def test_power_iteration_matches_the_dense_hessian():
    problem = problems.get("sharpness", width=6, n_samples=64, batch_size=2, seed=2)
    w = problem.z0[0]
    got = largest_hessian_eigenvalue(problem.loss, w, iters=300)
    for i in range(2):
        H = torch.func.hessian(lambda v: problem.loss(v.unsqueeze(0))[0])(w[i])
        eig = torch.linalg.eigvalsh(H)
        want = eig[eig.abs().argmax()]
        torch.testing.assert_close(got[i], want, rtol=1e-6, atol=0)


def test_sam_reaches_a_flatter_minimum_than_gradient_descent():
    """Same start, same steps; rho = 0 is plain gradient descent (shown above)."""
    X, Y = classification_data(256, seed=0)
    from saddle.problems.sharpness import _default_model
    model = _default_model(16, 2, torch.Generator().manual_seed(0))
    rho = torch.tensor([0.0, 0.1], dtype=torch.float64)
    problem = problems.get("sharpness", model=model, data=(X, Y), loss_fn=cross_entropy, rho=rho, batch_size=2)
    sol = saddle.solve(problem, "sam", step_size=0.5, max_iters=2000, tol=0.0, check_every=500)
    loss = problem.loss(sol.x)
    sharp = largest_hessian_eigenvalue(problem.loss, sol.x, iters=100)
    # Comparable training loss (both fit the spirals: cross-entropy ~0.04 from 0.70) ...
    assert float(loss.max()) < 0.05
    assert abs(float(loss[1] - loss[0])) < 0.15 * float(loss[0])
    # ... at a much flatter point: measured 3.6 (gradient descent) vs 0.83 (SAM) on 2026-11-23.
    assert float(sharp[1]) < 0.5 * float(sharp[0])


def strict_saddle(y0, rho):
    """L(w) = (w_1^2 - w_2^2) / 2 from w = (0, y0): a strict saddle at 0, escape direction w_2."""
    y0 = torch.as_tensor(y0, dtype=torch.float64)
    w0 = torch.stack([torch.zeros_like(y0), y0], -1)
    return problems.get("sharpness", loss=lambda w: 0.5 * (w[:, 0] ** 2 - w[:, 1] ** 2), w0=w0, rho=rho)


def test_sam_is_held_at_a_strict_saddle_that_gradient_descent_escapes():
    lr, rho, steps = 0.1, 0.5, 60
    y0 = torch.tensor([0.4, 0.6, 0.4], dtype=torch.float64)
    radius = torch.tensor([rho, rho, 0.0], dtype=torch.float64)  # SAM inside, SAM outside, gradient descent
    problem = strict_saddle(y0, radius)
    ys = []  # the callback sees every iteration, from 0
    saddle.solve(problem, "sam", step_size=lr, max_iters=steps, tol=0.0, check_every=1,
                 callback=lambda p: ys.append(p.z[0][:, 1].clone()))
    ys = torch.stack(ys)  # (steps + 1, 3)
    # Closed form while y > 0 and x = 0: |g| = y, e = -rho, so y+ - rho = (1 + lr)(y - rho) (GD: y+ = (1 + lr) y).
    k = torch.arange(8, dtype=torch.float64)
    torch.testing.assert_close(ys[:8, 1], rho + (1 + lr) ** k * (0.6 - rho), rtol=0, atol=1e-12)
    torch.testing.assert_close(ys[:8, 2], (1 + lr) ** k * 0.4, rtol=0, atol=1e-12)
    # Started within rho of the saddle, SAM is pulled into it and stays within lr * rho; it escapes from
    # outside; gradient descent escapes from the same start.
    assert float(ys[20:, 0].abs().max()) <= lr * rho + 1e-12
    assert float(ys[-1, 1]) > 10.0 and float(ys[-1, 2]) > 10.0


# ---------------------------------------------------------------- mixed precision: torch.amp.GradScaler
def scaled_sam_step(model, opt, scaler, X, Y, *, inject=None, autocast=None):
    """The documented loop: both passes scaled, the first through ``opt.first_pass``."""
    def loss():
        if autocast is None:
            return cross_entropy(model(X), Y)
        with torch.autocast("cpu", dtype=autocast):
            out = model(X)
        return cross_entropy(out.float(), Y)

    scaler.scale(loss()).backward()
    if inject:
        inject(0)
    scaler.step(opt.first_pass, zero_grad=True)
    scaler.scale(loss()).backward()
    if inject:
        inject(1)
    scaler.step(opt)
    scaler.update()
    opt.zero_grad()


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_grad_scaler_iterates_equal_the_formula_and_the_unscaled_optimizer(adaptive, momentum):
    X, Y = data(torch.float32)
    settings = dict(rho=0.1, lr=0.3, momentum=momentum, adaptive=adaptive, weight_decay=1e-3)
    want = formula_steps(small_mlp(torch.float32), X, Y, 6, **settings)  # the independent answer
    plain = optimizer_steps(small_mlp(torch.float32), X, Y, 6, **settings)
    model = small_mlp(torch.float32)
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, adaptive=adaptive, lr=0.3, momentum=momentum,
                       weight_decay=1e-3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10, growth_interval=1)  # a new scale every step
    for _ in range(6):
        scaled_sam_step(model, opt, scaler, X, Y)
    assert scaler.get_scale() == 2.0 ** 16
    torch.testing.assert_close(flat(model), want, rtol=0, atol=1e-6)
    assert torch.equal(flat(model), plain)  # scaling by 2^k and unscaling is exact


@pytest.mark.parametrize("value", [float("inf"), float("nan")])
@pytest.mark.parametrize("which", [0, 1])
def test_grad_scaler_skips_a_step_with_a_non_finite_gradient(value, which):
    X, Y = data(torch.float32)
    model = small_mlp(torch.float32)
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.3, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    for _ in range(2):
        scaled_sam_step(model, opt, scaler, X, Y)
    w = flat(model)
    base_state = copy.deepcopy(opt.base_optimizer.state_dict())
    seen = []

    def inject(pass_index):
        if pass_index == which:
            model[0].weight.grad[1, 2] = value
        if pass_index == 1:
            seen.append(flat(model))  # where the second gradient was taken

    scaled_sam_step(model, opt, scaler, X, Y, inject=inject)
    if which == 0:  # the perturbation was skipped: the second pass ran at w, not along a NaN direction
        assert torch.equal(seen[0], w)
    else:
        assert torch.isfinite(seen[0]).all() and not torch.equal(seen[0], w)
    assert torch.equal(flat(model), w)  # bitwise unchanged
    assert scaler.get_scale() == 2.0 ** 11  # backed off
    after = opt.base_optimizer.state_dict()
    for key, buf in base_state["state"].items():
        assert torch.equal(after["state"][key]["momentum_buffer"], buf["momentum_buffer"])
    # The next step is the plain one from there.
    twin = small_mlp(torch.float32)
    twin.load_state_dict(model.state_dict())
    opt_twin = SAMOptimizer(twin.parameters(), torch.optim.SGD, rho=0.1, lr=0.3, momentum=0.9)
    opt_twin.load_state_dict(copy.deepcopy(opt.state_dict()))
    scaled_sam_step(model, opt, scaler, X, Y)
    cross_entropy(twin(X), Y).backward()
    opt_twin.step(lambda: cross_entropy(twin(X), Y).backward())
    assert torch.equal(flat(model), flat(twin))


def test_grad_scaler_under_bfloat16_autocast_is_the_unscaled_autocast_loop():
    X, Y = data(torch.float32)
    runs = []
    for scaled in (False, True):
        model = small_mlp(torch.float32)
        opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.05, adaptive=True, lr=0.3)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 16, enabled=scaled)
        for _ in range(5):
            scaled_sam_step(model, opt, scaler, X, Y, autocast=torch.bfloat16)
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])  # a disabled scaler is the plain loop; bfloat16 scales exactly


def test_grad_scaler_float16_overflow_backs_off_without_moving():
    """A float16 autocast with a too large scale: the overflowing steps leave the weights exactly where they were."""
    X, Y = data(torch.float32)
    model = small_mlp(torch.float32)
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.05, lr=0.3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24)
    skipped = 0
    for _ in range(12):
        before, scale = flat(model), scaler.get_scale()
        scaled_sam_step(model, opt, scaler, X, Y, autocast=torch.float16)
        assert torch.isfinite(flat(model)).all()
        if scaler.get_scale() < scale:
            skipped += 1
            assert torch.equal(flat(model), before)
        else:
            assert not torch.equal(flat(model), before)
    assert 0 < skipped < 12


def test_grad_scaler_misuse_is_refused():
    X, Y = data(torch.float32)
    model = small_mlp(torch.float32)
    opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.3)
    w = flat(model)
    scaler = torch.amp.GradScaler("cpu")
    # unscale_(opt) before a direct first_step: the second gradient would reach SGD scaled.
    scaler.scale(cross_entropy(model(X), Y)).backward()
    scaler.unscale_(opt)
    opt.first_step(zero_grad=True)
    scaler.scale(cross_entropy(model(X), Y)).backward()
    with pytest.raises(RuntimeError, match="first_pass"):
        scaler.step(opt)
    assert torch.equal(flat(model), w)  # back at w
    assert not hasattr(opt, "found_inf") and not hasattr(opt, "grad_scale")
    # A scaled first pass must be finished by the scaler, and step() refuses a closure under it.
    scaler = torch.amp.GradScaler("cpu")
    opt.zero_grad()
    scaler.scale(cross_entropy(model(X), Y)).backward()
    scaler.step(opt.first_pass, zero_grad=True)
    scaler.scale(cross_entropy(model(X), Y)).backward()
    with pytest.raises(RuntimeError, match=r"scaler.step\(opt\)"):
        opt.second_step()
    with pytest.raises(RuntimeError, match=r"scaler.step\(opt\)"):
        opt.step()
    scaler.step(opt)
    scaler.update()
    assert not torch.equal(flat(model), w)
    # Without a scaler, step() after first_step() is second_step().
    opt.zero_grad()
    cross_entropy(model(X), Y).backward()
    opt.first_step(zero_grad=True)
    cross_entropy(model(X), Y).backward()
    opt.step()
    assert opt._saved is None


def test_grad_scaler_unscale_to_clip_the_second_gradient():
    """scaler.unscale_(opt) after the second backward pass hands over unscaled gradients, as for any optimizer."""
    X, Y = data(torch.float32)
    runs = []
    for scaled in (False, True):
        model = small_mlp(torch.float32)
        opt = SAMOptimizer(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.5, momentum=0.5)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 14, enabled=scaled)
        for _ in range(4):
            scaler.scale(cross_entropy(model(X), Y)).backward()
            scaler.step(opt.first_pass, zero_grad=True)
            scaler.scale(cross_entropy(model(X), Y)).backward()
            scaler.unscale_(opt)
            nn.utils.clip_grad_norm_(model.parameters(), 0.05)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad()
        runs.append(flat(model))
    assert torch.equal(runs[0], runs[1])


class _Stretched(saddle.SaddleProblem):
    """``L(w + e) = 1/2 |w + e - c|^2`` with the perturbation measured in the fixed metric ``T = diag(t)``."""

    def __init__(self, c, t, rho):
        self.t = t
        # Attributes an older SAM read by name; the hook is the only thing that may count now.
        self.adaptive, self.eta = True, 5.0
        super().__init__(lambda w, e: 0.5 * (w + e - c).square().sum(-1), torch.zeros_like(c), torch.zeros_like(c),
                         Y=saddle.Ball(rho))

    def perturbation_scale(self, w):
        return self.t.expand_as(w)


def test_solvers_take_the_perturbation_geometry_from_the_problems_hook_only():
    gen = torch.Generator().manual_seed(11)
    c = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    t = torch.tensor([0.5, 1.0, 3.0], dtype=torch.float64)
    rho, lr = 0.2, 0.3
    problem = _Stretched(c, t, rho)
    w0 = problem.z0[0]
    # L = 1/2 |w + e - c|^2: g = w - c, e = rho T^2 g / |T g|, w+ = w - lr (w + e - c).
    g = w0 - c
    e = rho * t * t * g / (t * g).norm(dim=-1, keepdim=True)
    sol = saddle.solve(problem, "sam", step_size=lr, max_iters=1, tol=0.0)
    torch.testing.assert_close(sol.x, w0 - lr * (w0 + e - c), rtol=0, atol=1e-15)
    # ASAM without its own eta uses the problem's metric; with one, |w| + eta (not the problem's attributes).
    asam = saddle.solve(problem, "asam", step_size=lr, max_iters=1, tol=0.0)
    torch.testing.assert_close(asam.x, sol.x, rtol=0, atol=0)
    T = w0.abs() + 0.5
    e = rho * T * T * g / (T * g).norm(dim=-1, keepdim=True)
    sol = saddle.solve(problem, saddle.ASAM(eta=0.5, step_size=lr), max_iters=1, tol=0.0)
    torch.testing.assert_close(sol.x, w0 - lr * (w0 + e - c), rtol=0, atol=1e-15)


def test_plain_problems_have_the_euclidean_geometry_and_asam_defaults_to_eta_0_01():
    gen = torch.Generator().manual_seed(12)
    c = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    w0 = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    problem = saddle.SaddleProblem(lambda w, e: 0.5 * (w + e - c).square().sum(-1), w0, torch.zeros_like(w0),
                                   Y=saddle.Ball(0.2))
    assert problem.perturbation_scale(w0) is None
    g, T = w0 - c, w0.abs() + 0.01
    e = 0.2 * T * T * g / (T * g).norm(dim=-1, keepdim=True)
    sol = saddle.solve(problem, "asam", step_size=0.3, max_iters=1, tol=0.0)
    torch.testing.assert_close(sol.x, w0 - 0.3 * (w0 + e - c), rtol=0, atol=1e-15)


def test_sharpness_estimate_is_the_loss_increase_at_the_perturbation():
    # L(w) = 1/2 w^T H w: the first-order sharpness is L(w + e) - L(w) with e = rho T^2 H w / |T H w|.
    gen = torch.Generator().manual_seed(13)
    M = torch.randn(3, 3, dtype=torch.float64, generator=gen)
    H = M @ M.T + torch.eye(3, dtype=torch.float64)
    w = torch.randn(2, 3, dtype=torch.float64, generator=gen)
    loss = lambda v: 0.5 * ((v @ H) * v).sum(-1)  # noqa: E731
    for adaptive in (False, True):
        problem = problems.get("sharpness", loss=loss, w0=w, rho=0.1, adaptive=adaptive, eta=0.02)
        T = w.abs() + 0.02 if adaptive else torch.ones_like(w)
        g = w @ H
        e = 0.1 * T * T * g / (T * g).norm(dim=-1, keepdim=True)
        torch.testing.assert_close(problem.sharpness(w), loss(w + e) - loss(w), rtol=1e-13, atol=1e-15)
