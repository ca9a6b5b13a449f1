"""`GraphedSteps`: a fixed number of a solver's steps captured once as a CUDA graph and replayed.

On a GPU every torch operation of a step is a kernel launch (about 5 us of CPU time each), so a
step of 20-30 operations costs 100-150 us whatever the batch. A CUDA graph records the launches of
``steps`` consecutive steps once and replays them with one call: the driver replays it for the
iterations between two checks, where nothing is read back to the host.

What a graph needs from the step, checked by one probe step before the capture (`capture_steps`):
its state is a tree of (named) tuples of tensors and fixed values; the fixed values (numbers,
strings, None) come out of a step unchanged (a Python counter that moves would be frozen in the
graph); it reads nothing back to the host and takes no data-dependent Python branch. Tensors a step
passes through untouched (the same object: preconditioners, constant data) are neither copied in
nor out.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable

import torch
from torch import Tensor

__all__ = ["GraphedSteps", "capture_steps", "cuda_capture", "GraphUnsupported"]

Step = Callable[[Any, Any], tuple]


class GraphUnsupported(ValueError):
    """The step cannot be replayed from a graph (why, in words)."""


class GraphedSteps:
    """``steps`` consecutive calls of ``step`` on ``(z, state)``, captured once and replayed.

    Args:
        step: ``(z, state) -> (z, state)``; it must not modify its inputs.
        steps: how many steps one replay runs.
        z, state: an input of the shapes every later call has (their values are only read).
        capture: ``capture(fn) -> (replay, outputs)`` runs or records ``fn`` once and returns a
            callable that reruns it into the same ``outputs`` (`cuda_capture` by default).

    Calling it with ``(z, state)`` of the same shapes copies the changing tensors into the graph's
    inputs, replays, and returns copies of the outputs (the graph overwrites its outputs at the next
    replay, while the driver may still hold the previous point): ``steps`` steps for one launch.
    """

    def __init__(self, step: Step, steps: int, z: Any, state: Any, capture: Callable | None = None):
        if steps < 1:
            raise ValueError(f"steps must be a positive integer, got {steps!r}")
        self.steps = steps
        tree = (z, state)
        self.varying = _probe(step, tree)
        leaves = _flatten(tree)
        self.inputs = {i: leaves[i].clone() for i in self.varying}
        self.constant = {i: t for i, t in enumerate(leaves) if isinstance(t, Tensor) and i not in self.varying}

        def run():
            current = _rebuild(tree, {**self.constant, **self.inputs})
            for _ in range(steps):
                current = step(*current)
            return [_flatten(current)[i] for i in self.varying]

        self.replay, self.outputs = (capture or cuda_capture)(run)
        self.shapes = [tuple(t.shape) if isinstance(t, Tensor) else None for t in leaves]

    def matches(self, z: Any, state: Any) -> bool:
        """Whether ``(z, state)`` can be replayed: the same shapes, and the same objects where the step
        passed tensors through (a solver that replaced one between chunks needs a new capture)."""
        leaves = _flatten((z, state))
        same_shapes = all(s is None or (isinstance(t, Tensor) and tuple(t.shape) == s)
                          for t, s in zip(leaves, self.shapes))
        return (len(leaves) == len(self.shapes) and same_shapes
                and all(leaves[i] is t for i, t in self.constant.items()))

    def __call__(self, z: Any, state: Any) -> tuple[Any, Any]:
        leaves = _flatten((z, state))
        for i, buffer in self.inputs.items():
            buffer.copy_(leaves[i])
        self.replay()
        out = {i: t.clone() for i, t in zip(self.varying, self.outputs)}
        return _rebuild((z, state), out)


def capture_steps(step: Step, steps: int, z: Any, state: Any, *, name: str,
                  capture: Callable | None = None) -> GraphedSteps | None:
    """`GraphedSteps`, or None with a warning (naming ``name``) when the step cannot be captured."""
    try:
        return GraphedSteps(step, steps, z, state, capture=capture)
    except Exception as err:  # a step that syncs, branches on data, or keeps a Python counter
        first = str(err).splitlines()[0] if str(err) else ""
        warnings.warn(f"compile: {name}'s step could not be captured as a CUDA graph ({type(err).__name__}: "
                      f"{first}); running eagerly", RuntimeWarning, stacklevel=3)
        return None


def cuda_capture(fn: Callable[[], list]) -> tuple[Callable[[], None], list]:
    """Record ``fn`` (CUDA work only) as a CUDA graph: ``(graph.replay, fn's output buffers)``.

    ``fn`` runs once on a side stream first (allocations, library handles: what a capture must not
    do), with the random states restored afterwards so that the replays draw what eager steps would.
    """
    device = torch.device("cuda", torch.cuda.current_device())
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.random.fork_rng(devices=[device]), torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        outputs = fn()
    return graph.replay, outputs


def _probe(step: Step, tree: tuple) -> list[int]:
    """The leaves of ``(z, state)`` that one step changes (by index); raise `GraphUnsupported` when a
    fixed value changes or the structure does."""
    with torch.random.fork_rng(devices=[t.device for t in _flatten(tree) if isinstance(t, Tensor)
                                        and t.is_cuda][:1]):
        after = step(*tree)
    before, after = _flatten(tree), _flatten(after)
    if any(isinstance(t, Tensor) and t.requires_grad for t in after):
        raise GraphUnsupported("the problem's data require grad (a graph would record the autograd graph)")
    if len(before) != len(after):
        raise GraphUnsupported("the step changes the structure of its state")
    varying = []
    for i, (a, b) in enumerate(zip(before, after)):
        if isinstance(a, Tensor) != isinstance(b, Tensor):
            raise GraphUnsupported(f"leaf {i} of the state changes between a tensor and a value")
        if isinstance(a, Tensor):
            if a.shape != b.shape or a.dtype != b.dtype:
                raise GraphUnsupported(f"leaf {i} of the state changes shape or dtype in a step")
            if b is not a:
                varying.append(i)
        elif not (a is b or a == b):
            raise GraphUnsupported(f"the state's value {a!r} changes to {b!r} in a step (a Python counter "
                                   "would be frozen in the graph)")
    return varying


def _flatten(tree: Any) -> list:
    """The leaves of a tree of (named) tuples, depth first."""
    if isinstance(tree, tuple):
        return [leaf for item in tree for leaf in _flatten(item)]
    return [tree]


def _rebuild(tree: Any, leaves: dict[int, Any]) -> Any:
    """``tree`` with its leaves of the given indices (`_flatten`'s order) replaced."""
    counter = itertools.count()

    def go(node):
        if isinstance(node, tuple):
            items = [go(item) for item in node]
            return type(node)(*items) if hasattr(node, "_fields") else tuple(items)
        i = next(counter)
        return leaves.get(i, node)

    return go(tree)
