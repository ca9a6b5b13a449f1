"""The sharpness problem ``min_w max_{|e| <= rho} L(w + e)``: sharpness-aware minimization as a saddle problem.

Foret et al. (SAM, arXiv 2010.01412) minimize the worst loss in a ball of
radius rho around the weights. As a saddle problem the min player is the
weight vector ``w`` and the max player the perturbation ``e`` in
`saddle.Ball` (rho), with ``f(w, e) = L(w + e)``; the `saddle.SAM` solver
takes one extragradient step of it per iteration (see `saddle.solvers.sam`).

- the adaptive geometry (ASAM, Kwon et al., arXiv 2102.11600) measures
  ``e`` in the metric ``T_w = diag(|w| + eta)``: the ball ``{|T_w^-1 e| <= rho}``,
  whose linear maximizer is ``rho T_w^2 g / |T_w g|``
  (`SharpnessProblem.perturbation_scale`);
- m-sharpness (Foret et al. Sec. 4.1): the data split into G micro-batches,
  each with its own perturbation ``e_g``, ``f(w, e) = (1/G) sum_g L_g(w + e_g)``
  with ``e = (e_1, ..., e_G)`` in a product of G balls (`saddle.Ball` with
  ``groups=G``).
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, jvp, vmap

from saddle import Ball, SaddleProblem

from . import register
from .batch import check_positive_int, make_batch

__all__ = ["SharpnessProblem", "sharpness", "classification_data", "largest_hessian_eigenvalue", "accuracy"]


def _check_rho(rho, B: int, like: Tensor) -> Tensor:
    if isinstance(rho, bool) or not isinstance(rho, (Real, Tensor)):
        raise TypeError(f"rho must be a float or a (B,) tensor, got {type(rho).__name__}")
    t = torch.as_tensor(rho, dtype=like.dtype).to(like.device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] != B):
        raise ValueError(f"rho must be a float or a (B,) = ({B},) tensor, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
        raise ValueError(f"rho must be finite and >= 0, got {rho!r}")
    return t.expand(B).clone()


class SharpnessProblem(SaddleProblem):
    """A batch of sharpness problems ``min_w max_{e in Ball(rho)} f(w, e)`` (made by `sharpness`).

    ``f(w, e) = L(w + e)`` with ``w`` of shape ``(B, n)`` and ``e`` of shape
    ``(B, n)``; with G micro-batch groups ``e`` is ``(B, G n)`` and
    ``f(w, e) = (1/G) sum_g L_g(w + e_g)``.

    Args:
        loss: ``L``: ``(B, n) -> (B,)``, the loss of each instance's weights
            (instances must not interact).
        w0: the start ``(B, n)``.
        rho: the radius, a float or ``(B,)`` tensor.
        adaptive: use ASAM's metric ``T_w = diag(|w| + eta)`` for the perturbation.
        eta: the offset in ``T_w`` (Kwon et al. use 0.01).
        group_loss: with G > 1 groups, ``(B, G, n) -> (B, G)``: the loss of
            micro-batch g at the weights ``[:, g]``.
        groups: G, the number of micro-batches (m-sharpness).
        name: a display name.

    Attributes:
        rho: ``(B,)`` radii; adaptive, eta, groups as given.
    """

    def __init__(self, loss: Callable[[Tensor], Tensor], w0: Tensor, rho=0.05, *, adaptive: bool = False,
                 eta: float = 0.01, group_loss: Callable[[Tensor], Tensor] | None = None, groups: int = 1,
                 name: str | None = None):
        if not callable(loss):
            raise TypeError(f"loss must be callable, got {type(loss).__name__}")
        if not isinstance(w0, Tensor) or w0.dim() != 2:
            raise ValueError(f"w0 must be a (B, n) tensor, got {getattr(w0, 'shape', type(w0).__name__)}")
        if not isinstance(adaptive, bool):
            raise TypeError(f"adaptive must be a bool, got {type(adaptive).__name__}")
        if isinstance(eta, bool) or not isinstance(eta, Real) or not eta >= 0 or math.isinf(eta):
            raise ValueError(f"eta must be a finite float >= 0, got {eta!r}")
        groups = check_positive_int(groups, "groups")
        if groups > 1 and not callable(group_loss):
            raise ValueError("groups > 1 needs group_loss, the loss of each micro-batch")
        B, n = w0.shape
        self.rho = _check_rho(rho, B, w0)
        self.adaptive, self.eta, self.groups = adaptive, float(eta), groups
        self.loss = loss
        self._group_loss = group_loss

        def f(w: Tensor, e: Tensor) -> Tensor:
            if groups == 1:
                return loss(w + e)
            return group_loss(w.unsqueeze(1) + e.unflatten(-1, (groups, n))).mean(-1)

        e0 = torch.zeros(B, groups * n, dtype=w0.dtype, device=w0.device)
        super().__init__(f, w0, e0, Y=Ball(self.rho, groups=groups), name=name or "sharpness")

    def perturbation_scale(self, w: Tensor) -> Tensor | None:
        """The diagonal of ASAM's metric ``T_w = |w| + eta``, ``(B, n)``; None for SAM's Euclidean ball.

        The problem's perturbation geometry (`saddle.VIProblem.perturbation_scale`),
        which `saddle.SAM` and `saddle.ASAM` use.
        """
        return w.abs() + self.eta if self.adaptive else None

    def sharpness(self, w: Tensor) -> Tensor:
        """The first-order estimate of the sharpness ``max_e L(w + e) - L(w)`` per instance, ``(B,)``.

        ``L(w + e^) - L(w)`` at SAM's perturbation ``e^`` (in the problem's geometry).
        """
        from saddle.solvers.sam import SAM

        e0 = torch.zeros_like(self.z0[1])
        _, Fe = self.F((w, e0))
        e = SAM().perturbation(self, w, Fe)
        return self.objective((w, e)) - self.objective((w, e0))


def _flat_parameters(model: nn.Module) -> tuple[list[str], list[torch.Size], Tensor]:
    names, shapes, flat = [], [], []
    for name, p in model.named_parameters():
        names.append(name)
        shapes.append(p.shape)
        flat.append(p.detach().reshape(-1))
    if not names:
        raise ValueError("model has no parameters")
    return names, shapes, torch.cat(flat)


def _module_loss(model: nn.Module, names, shapes, loss_fn: Callable) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """``(w (n,), inputs, targets) -> ()``: the model's loss at the flat weights ``w``."""
    sizes = [math.prod(s) for s in shapes]

    def single(w: Tensor, inputs: Tensor, targets: Tensor) -> Tensor:
        params = {k: t.reshape(s) for k, t, s in zip(names, w.split(sizes), shapes)}
        return loss_fn(functional_call(model, params, (inputs,)), targets)

    return single


def classification_data(n: int = 256, *, classes: int = 2, noise: float = 0.15, seed: int = 0,
                        dtype=torch.float64) -> tuple[Tensor, Tensor]:
    """A 2-D classification set: ``classes`` interleaved spiral arms, ``n`` points.

    Returns ``(inputs (n, 2), labels (n,) int64)``; point i of arm c lies at
    radius ``t`` in ``[0.2, 1]`` and angle ``2 pi (c / classes) + 3 t``, plus
    Gaussian noise of standard deviation ``noise``, from the seed.
    """
    n = check_positive_int(n, "n")
    classes = check_positive_int(classes, "classes")
    if classes < 2:
        raise ValueError(f"classes must be >= 2, got {classes}")
    if isinstance(noise, bool) or not isinstance(noise, Real) or noise < 0:
        raise ValueError(f"noise must be a float >= 0, got {noise!r}")
    gen = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n) % classes
    t = 0.2 + 0.8 * torch.rand(n, dtype=torch.float64, generator=gen)
    angle = 2 * math.pi * labels.double() / classes + 3.0 * t
    points = torch.stack([t * torch.cos(angle), t * torch.sin(angle)], -1)
    points = points + noise * torch.randn(n, 2, dtype=torch.float64, generator=gen)
    return points.to(dtype), labels


def _default_model(width: int, classes: int, gen: torch.Generator) -> nn.Module:
    model = nn.Sequential(nn.Linear(2, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh(),
                          nn.Linear(width, classes)).double()
    with torch.no_grad():
        for layer in model:
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=gen)
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return model


@register("sharpness")
def sharpness(loss: Callable[[Tensor], Tensor] | None = None, w0: Tensor | None = None, *,
              model: nn.Module | None = None, data: tuple[Tensor, Tensor] | None = None,
              loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None, rho=0.05, adaptive: bool = False,
              eta: float = 0.01, micro_batches: int = 1, width: int = 16, n_samples: int = 256,
              batch_size: int = 1, seed: int = 0, device=None, dtype=torch.float64) -> SharpnessProblem:
    """A batch of sharpness problems ``min_w max_{|e| <= rho} L(w + e)`` (SAM's problem).

    Three ways to give ``L``:

    - ``loss`` and ``w0``: a function of a flat parameter block,
      ``loss(w (B, n)) -> (B,)``, and the start ``w0`` of shape ``(B, n)`` or ``(n,)``;
    - ``model``, ``data = (inputs, targets)`` and ``loss_fn(outputs, targets) -> ()``
      (e.g. ``torch.nn.functional.cross_entropy``): ``L(w)`` is the loss of
      the model with its parameters replaced by the flat ``w`` (order of
      ``model.named_parameters()``), on the whole batch; every instance starts
      at the model's parameters. The model is evaluated in its current mode
      with its buffers unchanged (put models with BatchNorm in ``eval()``);
    - neither: a seeded default, an MLP (2 -> width -> width -> 2, tanh) on
      `classification_data` (``n_samples`` spiral points, cross-entropy), each
      instance with its own initialization.

    Args:
        rho: the radius, a float or ``(B,)`` tensor (per instance).
        adaptive: ASAM's geometry ``T_w = diag(|w| + eta)`` (Kwon et al.).
        eta: the offset in ``T_w`` (0.01 as in Kwon et al.'s code; 0 gives ``T_w = |w|``).
        micro_batches: G >= 1, m-sharpness with G equal micro-batches of the
            data, each with its own perturbation (model or default form only;
            the number of samples must be a multiple of G).
        width: the default MLP's hidden width.
        n_samples: the default data set's size.
        batch_size: B (the ``loss`` form takes B from ``w0`` when it is ``(B, n)``).
        seed: the seed of the default model's initialization and data.
        device: the device of the model form and the default.
        dtype: the dtype of the model form and the default (float64).

    There is no exact reference: the sharpness problem's inner maximum is
    NP-hard in general and SAM only approximates it. `largest_hessian_eigenvalue`
    and `SharpnessProblem.sharpness` measure the flatness reached.
    """
    G = check_positive_int(micro_batches, "micro_batches")
    if loss is not None:
        if model is not None or data is not None:
            raise ValueError("give either loss and w0, or model, data and loss_fn; not both")
        if w0 is None:
            raise ValueError("loss needs w0, the starting weights (B, n) or (n,)")
        if G > 1:
            raise ValueError("micro_batches > 1 needs the model form (model, data, loss_fn): a flat loss has no "
                             "micro-batches to split")
        if not isinstance(w0, Tensor):
            raise TypeError(f"w0 must be a tensor, got {type(w0).__name__}")
        w0 = w0.detach()
        if w0.dim() == 1:
            w0 = w0.unsqueeze(0).expand(batch_size, -1)
        return SharpnessProblem(loss, w0.clone(), rho, adaptive=adaptive, eta=eta, name="sharpness(loss)")

    batch = make_batch(batch_size, seed, device, dtype)
    B = batch.size
    if model is None:
        if data is not None or loss_fn is not None:
            raise ValueError("data and loss_fn need a model")
        width = check_positive_int(width, "width")
        inputs, targets = classification_data(n_samples, seed=seed)
        gen = batch.generator()
        models = [_default_model(width, 2, gen) for _ in range(B)]
        model = models[0]
        starts = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.parameters()]) for m in models])
        loss_fn = nn.functional.cross_entropy
        name = f"sharpness(mlp width={width}, n={n_samples})"
    else:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(loss_fn):
            raise ValueError("the model form needs loss_fn(outputs, targets), e.g. torch.nn.functional.cross_entropy")
        if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
            raise ValueError("data must be a pair of tensors (inputs, targets)")
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(f"data: inputs and targets must have the same number of samples, got "
                             f"{inputs.shape[0]} and {targets.shape[0]}")
        starts = None
        name = f"sharpness({type(model).__name__})"
    names, shapes, flat = _flat_parameters(model)
    w0 = (flat.expand(B, -1) if starts is None else starts).to(batch.device, batch.dtype).clone()
    # The network runs in the data's dtype (w is cast to it inside functional_call).
    model = model.to(batch.device, batch.dtype)
    inputs = inputs.to(batch.device, batch.dtype if inputs.is_floating_point() else inputs.dtype)
    targets = targets.to(batch.device)
    single = _module_loss(model, names, shapes, loss_fn)
    N = inputs.shape[0]
    if N % G:
        raise ValueError(f"micro_batches={G} must divide the number of samples {N}")

    def full_loss(w: Tensor) -> Tensor:
        return vmap(single, in_dims=(0, None, None))(w, inputs, targets)

    group_loss = None
    if G > 1:
        xs, ys = inputs.unflatten(0, (G, N // G)), targets.unflatten(0, (G, N // G))
        per_group = vmap(single, in_dims=(0, 0, 0))  # (G, n) weights, one micro-batch each -> (G,)

        def group_loss(W: Tensor) -> Tensor:
            return vmap(per_group, in_dims=(0, None, None))(W, xs, ys)

        name = f"{name[:-1]}, micro_batches={G})"
    problem = SharpnessProblem(full_loss, w0, rho, adaptive=adaptive, eta=eta, group_loss=group_loss, groups=G,
                               name=name)
    problem.model, problem.inputs, problem.targets, problem.loss_fn = model, inputs, targets, loss_fn
    problem.unflatten = lambda w: {k: t.reshape(*w.shape[:-1], *s) for k, t, s in
                                   zip(names, w.split([math.prod(s) for s in shapes], -1), shapes)}
    problem.single_loss = single
    return problem


def largest_hessian_eigenvalue(loss: Callable[[Tensor], Tensor], w: Tensor, *, iters: int = 100,
                               seed: int = 0) -> Tensor:
    """The largest eigenvalue of the Hessian of ``loss`` at ``w``, per instance, by power iteration.

    Args:
        loss: ``(B, n) -> (B,)`` (instances independent), e.g. a `SharpnessProblem`'s ``loss``.
        w: the weights ``(B, n)``.
        iters: power iterations (one Hessian-vector product each, forward-over-reverse).
        seed: the random start.

    Returns:
        ``(B,)``: the Rayleigh quotient ``v^T H v`` at the last iterate, which
        converges to the eigenvalue of largest magnitude (for a loss near a
        minimum, the largest positive one: the sharpness).
    """
    iters = check_positive_int(iters, "iters")
    gen = torch.Generator(device=w.device).manual_seed(seed)
    v = torch.randn(w.shape, dtype=w.dtype, device=w.device, generator=gen)
    v = v / v.norm(dim=-1, keepdim=True)
    g = grad(lambda u: loss(u).sum())
    value = torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    for _ in range(iters):
        Hv = jvp(g, (w,), (v,))[1]
        value = (Hv * v).sum(-1)
        v = Hv / Hv.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return value


def accuracy(problem: SharpnessProblem, w: Tensor) -> Tensor:
    """The classification accuracy of each instance's weights on the problem's data, ``(B,)``."""
    if not hasattr(problem, "model"):
        raise ValueError("accuracy needs a sharpness problem made from a model and data")
    single = lambda wi: functional_call(problem.model, problem.unflatten(wi), (problem.inputs,))  # noqa: E731
    logits = vmap(single)(w)
    return (logits.argmax(-1) == problem.targets).to(w.dtype).mean(-1)
