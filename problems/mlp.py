"""Batched MLPs on flat parameter rows: B networks of one architecture evaluated at once.

A network's parameters are one flat vector, laid out as
``torch.nn.utils.parameters_to_vector`` lays out an ``nn.Sequential`` of
``nn.Linear`` layers and activations (`mlp`); B networks are the rows of a
``(B, n)`` tensor. `BatchedMLP` evaluates all B at once: each layer's weights
``(B, out, in)`` and biases ``(B, out)`` are views of the rows, and a layer is
one ``torch.baddbmm``, ``h <- act(b + h W^T)`` on ``h (B, N, in)``. So a
network is an ordinary differentiable function of its flat parameters:
gradients, Hessian-vector products and mixed second derivatives (plain
``torch.autograd`` double backward, or ``torch.func`` transforms) all work
through it. `BatchedMLP.value_and_input_grad` writes out a scalar network's
backward pass, so input gradients (the R1 penalty of `problems.gan`)
differentiate again like the rest.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn
from torch.func import stack_module_state

__all__ = ["BatchedMLP", "mlp", "init_default", "ACTIVATIONS"]

def mlp(n_in: int, n_out: int, width: int, depth: int, activation: str) -> nn.Sequential:
    """An ``nn.Sequential`` of ``depth`` hidden ``nn.Linear`` layers of ``width`` units and activations, float64."""
    act = _ACTIVATION[_check_activation(activation)][0]
    layers: list[nn.Module] = []
    size = n_in
    for _ in range(depth):
        layers += [nn.Linear(size, width, dtype=torch.float64), act()]
        size = width
    layers.append(nn.Linear(size, n_out, dtype=torch.float64))
    return nn.Sequential(*layers)


def init_default(module: nn.Module, gen: torch.Generator) -> nn.Module:
    """PyTorch's default ``nn.Linear`` initialization (uniform in ``+-1/sqrt(fan_in)``), from ``gen``."""
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, nn.Linear):
                bound = 1.0 / math.sqrt(layer.in_features)
                nn.init.uniform_(layer.weight, -bound, bound, generator=gen)
                nn.init.uniform_(layer.bias, -bound, bound, generator=gen)
    return module


def _linear(h: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``b + h W^T``: h ``(B, N, in)``, W ``(B, out, in)``, b ``(B, out)`` -> ``(B, N, out)`` (or without B).

    One ``torch.baddbmm`` for a batch, one ``torch.addmm`` (what ``nn.Linear``
    runs) for a single instance, a broadcasting ``matmul`` for other shapes.
    """
    if h.dim() == 3 and weight.dim() == 3:
        return torch.baddbmm(bias.unsqueeze(-2), h, weight.transpose(-1, -2))
    if h.dim() == 2 and weight.dim() == 2:
        return torch.addmm(bias, h, weight.t())
    return torch.matmul(h, weight.transpose(-1, -2)) + bias.unsqueeze(-2)


def _tanh_slope(pre: Tensor, out: Tensor) -> Tensor:
    return 1 - out * out


def _relu_slope(pre: Tensor, out: Tensor) -> Tensor:
    return (pre > 0).to(pre.dtype)


def _leaky_relu_slope(pre: Tensor, out: Tensor) -> Tensor:
    return torch.full_like(pre, 0.2).masked_fill(pre > 0, 1.0)  # in pre's dtype (scalar where() gives float32)


def _elu_slope(pre: Tensor, out: Tensor) -> Tensor:
    return torch.exp(pre.clamp(max=0))  # e^h for h <= 0, 1 above: finite, and differentiable where ELU' is


# activation: (its nn module, sigma(h), sigma'(h) from (h, sigma(h))), the module's function and slope
_ACTIVATION = {
    "tanh": (nn.Tanh, torch.tanh, _tanh_slope),
    "relu": (nn.ReLU, torch.relu, _relu_slope),
    "leaky_relu": (lambda: nn.LeakyReLU(0.2), lambda h: nn.functional.leaky_relu(h, 0.2), _leaky_relu_slope),
    "elu": (nn.ELU, nn.functional.elu, _elu_slope),
}

#: The activations `mlp` and `BatchedMLP` know (leaky ReLU with slope 0.2).
ACTIVATIONS = tuple(_ACTIVATION)


def _check_activation(activation) -> str:
    if not isinstance(activation, str) or activation not in _ACTIVATION:
        raise ValueError(f"activation must be one of {', '.join(map(repr, ACTIVATIONS))}; got {activation!r}")
    return activation


class BatchedMLP:
    """An MLP family's parameters as flat ``(B, n)`` blocks, the way back, and the batched network.

    The order and layout are those of ``torch.nn.utils.parameters_to_vector``
    of the ``nn.Sequential`` made by `mlp`: the parameters in
    ``named_parameters`` order (``0.weight``, ``0.bias``, ``2.weight``, ...),
    each flattened row-major. The network is evaluated directly on those
    blocks: layer k is ``h_k = sigma(h_{k-1} W_k^T + b_k)`` with ``W_k`` of
    shape ``(B, out_k, in_k)`` and ``b_k`` of shape ``(B, out_k)`` (no
    activation after the last layer), one ``torch.baddbmm`` for all B
    instances.

    Args:
        modules: the B networks, each an ``nn.Sequential`` of `mlp`'s architecture; their
            parameters, stacked, are the start ``(B, n)``.
        activation: the hidden layers' activation, one of `ACTIVATIONS` (the modules' own).
    """

    def __init__(self, modules: list[nn.Module], activation: str):
        params, _ = stack_module_state(modules)
        self.names = list(params)
        self.shapes = [tuple(params[k].shape[1:]) for k in self.names]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.start = torch.cat([params[k].detach().reshape(len(modules), -1) for k in self.names], -1)
        self.template = copy.deepcopy(modules[0]).to("meta")  # architecture only: the weights come from x
        self.activation = activation
        _, self._sigma, self._slope = _ACTIVATION[_check_activation(activation)]
        index = {k: i for i, k in enumerate(self.names)}
        # (weight, bias) positions in the split of a flat vector, layer by layer
        self._layers = [(index[f"{name}.weight"], index[f"{name}.bias"])
                        for name, layer in self.template.named_children() if isinstance(layer, nn.Linear)]
        if 2 * len(self._layers) != len(self.names):
            raise ValueError("the template must be a sequence of nn.Linear layers and activations")

    @property
    def size(self) -> int:
        """n, the number of parameters of one network (the length of a flat row)."""
        return sum(self.sizes)

    def unflatten(self, flat: Tensor) -> dict[str, Tensor]:
        """One instance's flat vector ``(n,)`` (or a batch ``(B, n)``) as a dict of parameter tensors."""
        lead = flat.shape[:-1]
        return {k: t.reshape(*lead, *s) for k, t, s in zip(self.names, flat.split(self.sizes, -1), self.shapes)}

    def layers(self, flat: Tensor) -> list[tuple[Tensor, Tensor]]:
        """The weights ``(B, out, in)`` and biases ``(B, out)`` of each layer, in order (views of ``flat`` (B, n)).

        One instance's ``flat`` ``(n,)`` gives ``(out, in)`` and ``(out,)``.
        """
        lead = flat.shape[:-1]
        parts = [t.reshape(*lead, *s) for t, s in zip(flat.split(self.sizes, -1), self.shapes)]
        return [(parts[w], parts[b]) for w, b in self._layers]

    def _forward(self, flat: Tensor, inputs: Tensor) -> tuple[Tensor, list[tuple[Tensor, Tensor]]]:
        """The output and every hidden layer's ``(pre-activation, activation)``."""
        layers = self.layers(flat)
        hidden, h = [], inputs
        for W, b in layers[:-1]:
            pre = _linear(h, W, b)
            h = self._sigma(pre)
            hidden.append((pre, h))
        W, b = layers[-1]
        return _linear(h, W, b), hidden

    def __call__(self, flat: Tensor, inputs: Tensor) -> Tensor:
        """The networks of ``flat`` ``(B, n)`` applied to ``inputs`` ``(B, N, d_in)``: ``(B, N, d_out)``.

        Instance i's network (``flat[i]``) sees only ``inputs[i]``. One
        instance: ``flat`` ``(n,)`` and ``inputs`` ``(N, d_in)`` give ``(N, d_out)``.
        """
        return self._forward(flat, inputs)[0]

    def value_and_input_grad(self, flat: Tensor, inputs: Tensor) -> tuple[Tensor, Tensor]:
        """A scalar network's outputs ``D(r)`` ``(B, N)`` and input gradients ``grad_r D(r)`` ``(B, N, d_in)``.

        The gradient is the backward pass written out,
        ``grad_r D = W_1^T diag(sigma'(h_1)) W_2^T ... diag(sigma'(h_L)) w^T``
        (``h_k`` the pre-activations, ``w`` the output layer's ``(1, width)``
        weight), so it is an ordinary expression of ``flat`` and ``inputs``:
        differentiable again by ``torch.autograd`` and ``torch.func`` alike.
        One instance: ``(n,)`` and ``(N, d_in)`` give ``(N,)`` and ``(N, d_in)``.
        """
        out, hidden = self._forward(flat, inputs)
        if out.shape[-1] != 1:
            raise ValueError(f"the input gradient needs a scalar network, this one has {out.shape[-1]} outputs")
        layers = self.layers(flat)
        g = layers[-1][0]  # (B, 1, width): d out / d h_L, the same for every input
        for (pre, h), (W, _) in zip(reversed(hidden), reversed(layers[:-1])):
            g = torch.matmul(g * self._slope(pre, h), W)  # (B, N, in)
        return out.squeeze(-1), g
