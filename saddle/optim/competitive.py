"""Competitive gradient descent (CGD) and adaptive CGD (ACGD) as ``torch.optim`` optimizers.

Both optimizers train two players at once on one loss ``f``: the *min player*
(``min_params``, e.g. a generator) minimizes ``f`` and the *max player*
(``max_params``, e.g. a discriminator) maximizes it. Each step plays the Nash
equilibrium of a local bilinear approximation of the game, regularized by
per-coordinate step sizes ``a_x`` (min player) and ``a_y`` (max player):

    dx = -a_x (grad_x f + D_xy dy),      dy = +a_y (grad_y f + D_yx dx),

with ``D_xy = d^2 f / dx dy`` and ``D_yx = D_xy^T``. Eliminating ``dy`` and
substituting ``dx = -a_x^(1/2) c`` gives one symmetric positive definite system,

    (I + a_x^(1/2) D_xy a_y D_yx a_x^(1/2)) c = a_x^(1/2) (grad_x f + D_xy a_y grad_y f),

solved by conjugate gradients on mixed Hessian-vector products (double
backward, never a dense Hessian); the other player's step is then recovered
exactly from the second equation. The local game is the batched solvers' own
(`saddle.solvers.competitive.local_game`, on a batch of one). CGD uses
``a = lr`` of each parameter group (with one ``lr`` this is Schäfer &
Anandkumar's CGD, arXiv 1905.12103); ACGD uses the Adam-like
``a = lr sqrt(1 - beta^t) / (sqrt(v) + eps)`` with ``v`` a running mean of
squared gradients (Schäfer, Zheng & Anandkumar, arXiv 1910.05852).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from ..operator import MixedProducts
from ..solvers._validate import check_choice, check_flag, check_integer, check_number
from ..solvers.competitive import local_game

__all__ = ["CGD", "ACGD"]

_PLAYERS = ("min", "max")
_SOLVE_FOR = ("min", "max", "alternate")
_COUNT_KEYS = ("steps", "grad", "hvp", "cg_iterations")
_CG_KEYS = ("cg_tol", "cg_max_iters", "solve_for", "warm_start")
# Keyword names before the optimizers took the batched solvers' names (deprecated; removed in the next release).
_RENAMED = {"tol": "cg_tol", "max_cg_iters": "cg_max_iters"}
_CG_DEFAULTS = {"cg_tol": 1e-6, "cg_max_iters": None}


def _cg_settings(name: str, cg_tol, cg_max_iters, deprecated: dict[str, Any]) -> tuple[Any, Any]:
    """``(cg_tol, cg_max_iters)``, taking the deprecated ``tol`` / ``max_cg_iters`` with a warning."""
    settings = {"cg_tol": cg_tol, "cg_max_iters": cg_max_iters}
    for old, value in deprecated.items():
        if old not in _RENAMED:
            raise TypeError(f"{name}.__init__() got an unexpected keyword argument {old!r}")
        new = _RENAMED[old]
        if settings[new] != _CG_DEFAULTS[new]:
            raise TypeError(f"{name}: pass {new} only ({old} is its deprecated name)")
        warnings.warn(f"{name}: {old} is deprecated, use {new}", DeprecationWarning, stacklevel=4)
        settings[new] = value
    return settings["cg_tol"], settings["cg_max_iters"]


def _flat(pieces: Iterable[Tensor | None], params: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Concatenate per-parameter tensors (None for zero) into one detached vector of ``dtype``."""
    parts = [(p.new_zeros(p.shape) if g is None else g.detach() if g.requires_grad else g).reshape(-1)
             for g, p in zip(pieces, params)]
    parts = [t if t.dtype == dtype else t.to(dtype) for t in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _flat_graph(grads: Iterable[Tensor | None], params: list[Tensor], dtype: torch.dtype) -> Tensor:
    """Concatenate a player's gradients (None for zero) into one vector of ``dtype`` that keeps their graph."""
    parts = [(p.new_zeros(p.shape) if g is None else g).reshape(-1) for g, p in zip(grads, params)]
    parts = [t if t.dtype == dtype else t.to(dtype) for t in parts]
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def _unflat(vector: Tensor, params: list[Tensor]) -> list[Tensor]:
    """Split a flat vector into pieces shaped (and typed) like ``params``."""
    parts = [vector] if len(params) == 1 else vector.split([p.numel() for p in params])
    pieces = [v.view_as(p) for v, p in zip(parts, params)]
    return [v if v.dtype == p.dtype else v.to(p.dtype) for v, p in zip(pieces, params)]


class _Competitive(Optimizer):
    """Shared engine of `CGD` and `ACGD`: subclasses define the step sizes ``a``."""

    def __init__(self, min_params, max_params, defaults: dict[str, Any], *, cg_tol: float,
                 cg_max_iters: int | None, solve_for: str, warm_start: bool, deprecated: dict[str, Any]):
        name = type(self).__name__
        cg_tol, cg_max_iters = _cg_settings(name, cg_tol, cg_max_iters, deprecated)
        check_number(name, "cg_tol", cg_tol, low=0, include_low=True)
        check_integer(name, "cg_max_iters", cg_max_iters, minimum=0, allow_none=True)
        check_choice(name, "solve_for", solve_for, _SOLVE_FOR)
        check_flag(name, "warm_start", warm_start)
        self.cg_tol = float(cg_tol)
        self.cg_max_iters = cg_max_iters
        self.solve_for = solve_for
        self.warm_start = warm_start
        groups = self._player_groups(min_params, "min") + self._player_groups(max_params, "max")
        super().__init__(groups, defaults)
        self.counts: dict[str, int] = dict.fromkeys(_COUNT_KEYS, 0)
        self.info: dict[str, Any] = {}

    @property
    def tol(self) -> float:
        """Deprecated name of `cg_tol`."""
        warnings.warn(f"{type(self).__name__}.tol is deprecated, use cg_tol", DeprecationWarning, stacklevel=2)
        return self.cg_tol

    @property
    def max_cg_iters(self) -> int | None:
        """Deprecated name of `cg_max_iters`."""
        warnings.warn(f"{type(self).__name__}.max_cg_iters is deprecated, use cg_max_iters", DeprecationWarning,
                      stacklevel=2)
        return self.cg_max_iters

    # ----------------------------------------------------------------- groups
    def _player_groups(self, params, player: str) -> list[dict[str, Any]]:
        name, arg = type(self).__name__, f"{player}_params"
        if isinstance(params, nn.Module):
            raise TypeError(f"{name}: {arg} must be an iterable of parameters or of parameter-group dicts, "
                            f"got the module {type(params).__name__}: pass its .parameters()")
        if isinstance(params, Tensor) or isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(f"{name}: {arg} must be an iterable of parameters or of parameter-group dicts, "
                            f"got {type(params).__name__}")
        params = list(params)
        if not params:
            raise ValueError(f"{name}: {arg} is empty")
        if not isinstance(params[0], dict):
            params = [{"params": params}]
        groups = []
        for group in params:
            if not isinstance(group, dict):
                raise TypeError(f"{name}: {arg} mixes parameter-group dicts with other entries")
            if group.get("player", player) != player:
                raise ValueError(f"{name}: a group of {arg} says player={group['player']!r}")
            groups.append({**group, "player": player})
        return groups

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        check_number(type(self).__name__, "lr", group["lr"], low=0, include_low=True)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; it must say whose it is: ``player="min"`` or ``"max"``."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: param_group must be a dict, got {type(param_group).__name__}")
        player = param_group.get("player")
        if player not in _PLAYERS:
            raise ValueError(f"{name}: every parameter group needs player='min' or 'max', got {player!r}")
        params = param_group.get("params")
        if params is None:
            raise ValueError(f"{name}: a parameter group of the {player} player has no 'params'")
        params = [params] if isinstance(params, Tensor) else list(params)
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        if not tensors:
            raise ValueError(f"{name}: {player}_params is empty")
        for p in tensors:
            if isinstance(p, Tensor) and not p.is_floating_point():
                raise TypeError(f"{name}: {player}_params must be real floating-point tensors, got {p.dtype}")
        ids = {id(p) for p in tensors}
        if len(ids) != len(tensors):
            raise ValueError(f"{name}: {player}_params holds a parameter twice")
        for group in self.param_groups:
            if any(id(q) in ids for q in group["params"]):
                where = ("both min_params and max_params" if group["player"] != player
                         else f"two groups of {player}_params")
                raise ValueError(f"{name}: a parameter is in {where}")
        self._check_hyperparameters({**self.defaults, **param_group})
        super().add_param_group({**param_group, "params": params})

    # ------------------------------------------------------------- state dict
    def state_dict(self) -> dict[str, Any]:
        """``torch.optim`` state (per-parameter tensors, groups), the work ``counts`` and the CG settings."""
        state = super().state_dict()
        state["counts"] = dict(self.counts)
        state["cg"] = {key: getattr(self, key) for key in _CG_KEYS}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict`: state, groups (learning rates...), counts and CG settings."""
        state_dict = dict(state_dict)
        counts, settings = state_dict.pop("counts", None), state_dict.pop("cg", None)
        super().load_state_dict(state_dict)
        if counts is not None:
            self.counts = {k: int(counts.get(k, 0)) for k in _COUNT_KEYS}
        if settings is not None:
            settings = {_RENAMED.get(key, key): value for key, value in settings.items()}  # older state dicts
            for key in _CG_KEYS:
                setattr(self, key, settings[key])

    # ------------------------------------------------------------------ step
    def _step_sizes(self, group: dict[str, Any], p: Tensor, grad: Tensor) -> Tensor | float:
        """The step size of parameter ``p`` (a number or a tensor shaped like p), given its gradient."""
        raise NotImplementedError

    def _players(self) -> dict[str, tuple[list[Tensor], list[dict[str, Any]]]]:
        players = {player: ([], []) for player in _PLAYERS}
        for group in self.param_groups:
            params, groups = players[group["player"]]
            for p in group["params"]:
                if p.requires_grad:
                    params.append(p)
                    groups.append(group)
        name = type(self).__name__
        for player, (params, _) in players.items():
            if not params:
                raise ValueError(f"{name}: no parameter of {player}_params requires grad")
        devices = {p.device for params, _ in players.values() for p in params}
        if len(devices) > 1:
            raise ValueError(f"{name}: all parameters must be on one device, found {sorted(map(str, devices))}")
        return players

    def step(self, closure: Callable[[], Tensor] | None = None, *, loss: Tensor | None = None) -> Tensor:
        """One competitive step of both players.

        Args:
            closure: re-evaluates the model and returns the loss ``f``, a scalar
                that the min player minimizes and the max player maximizes. It
                must not call ``loss.backward()``: the optimizer differentiates
                ``f`` twice itself (``.grad`` fields are neither read nor written).
            loss: instead of a closure, the loss already computed (with its
                autograd graph) at the current parameters.

        Returns:
            the loss (before the step).
        """
        name = type(self).__name__
        if (closure is None) == (loss is None):
            raise TypeError(f"{name}.step: pass exactly one of closure and loss")
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if not isinstance(loss, Tensor):
            raise TypeError(f"{name}.step: the loss must be a Tensor, got {type(loss).__name__}")
        if loss.numel() != 1:
            raise ValueError(f"{name}.step: the loss must be a scalar, got shape {tuple(loss.shape)}")
        if not loss.requires_grad:
            raise ValueError(f"{name}.step: the loss does not require grad: it must be computed from the "
                             f"parameters with autograd enabled")
        players = self._players()
        xs, ys = players["min"][0], players["max"][0]
        params = {"min": xs, "max": ys}
        dtype = xs[0].dtype
        for p in xs + ys:
            dtype = torch.promote_types(dtype, p.dtype)

        with torch.enable_grad():
            grads = torch.autograd.grad(loss.reshape(()), xs + ys, create_graph=True, allow_unused=True)
        self.counts["grad"] += 1
        graph = {"min": grads[:len(xs)], "max": grads[len(xs):]}
        # Each player's gradient as one flat vector that keeps its graph: a mixed product is then one
        # backward from one output (cheaper than from one output per parameter tensor).
        flat_graph = {player: _flat_graph(graph[player], params[player], dtype) for player in _PLAYERS}
        g = {player: flat_graph[player].detach() for player in _PLAYERS}

        # Step sizes a (flat, one entry per coordinate) per player.
        a = {}
        for player, (ps, groups) in players.items():
            sizes = []
            for p, group, grad in zip(ps, groups, graph[player]):
                size = self._step_sizes(group, p, p.new_zeros(p.shape) if grad is None else grad.detach())
                if not (isinstance(size, Tensor) and size.dtype == dtype and size.shape == p.shape):
                    size = torch.as_tensor(size, dtype=dtype, device=p.device).expand(p.shape)
                sizes.append(size.reshape(-1))
            a[player] = sizes[0] if len(sizes) == 1 else torch.cat(sizes)

        def mixed(player: str, v: Tensor) -> Tensor:
            """D_{player, opponent} v = grad_player <grad_opponent f, v>: one backward through the gradient graph."""
            out = flat_graph["max" if player == "min" else "min"]
            if not out.requires_grad:  # grad_opponent f is constant: the product is zero
                return torch.zeros_like(g[player])
            with torch.enable_grad():
                prods = torch.autograd.grad(out, params[player], grad_outputs=v, retain_graph=True,
                                            allow_unused=True)
            self.counts["hvp"] += 1
            return _flat(prods, params[player], dtype)

        solved = self.solve_for
        if solved == "alternate":  # as the CGDs package: the max player's system first, then in turn
            solved = "max" if self.counts["steps"] % 2 == 0 else "min"
        other = "max" if solved == "min" else "min"
        # The solved player is local_game's x-player: for the max player, the game of -f with the roles
        # swapped (flip = -1), whose CG unknown and recovered vector are minus this optimizer's c (its
        # convention, kept in the state: d_p = -a_p^1/2 c_p for the min player, +a_p^1/2 c_p for the max).
        flip = 1.0 if solved == "min" else -1.0
        products = MixedProducts(flip * g[solved].unsqueeze(0), flip * g[other].unsqueeze(0),
                                 lambda v: flip * mixed(solved, v[0]).unsqueeze(0),
                                 lambda u: flip * mixed(other, u[0]).unsqueeze(0))
        x0 = None
        if self.warm_start and all("cg_solution" in self.state[t] for t in params[solved]):
            x0 = flip * _flat([self.state[t]["cg_solution"] for t in params[solved]], params[solved], dtype).unsqueeze(0)
        cap = g[solved].numel() if self.cg_max_iters is None else self.cg_max_iters
        # One system (B = 1): test CG's early exit after every iteration. An iteration run past the
        # stop would be masked (the result and counts are the same), but it still costs two
        # Hessian-vector products through both players, far more than the host read that
        # avoids it (on the CPU the loop runs unmasked with one free read per iteration).
        game = local_game(products, a[solved].unsqueeze(0), a[other].unsqueeze(0), x0, tol=self.cg_tol,
                          max_iters=cap, check_every=1)
        result = game.cg
        d = {solved: game.dx[0], other: game.dy[0]}
        c = {solved: flip * result.x[0], other: flip * game.c_y[0]}

        with torch.no_grad():
            for player in _PLAYERS:
                for t, dt, ct in zip(params[player], _unflat(d[player], params[player]),
                                     _unflat(c[player], params[player])):
                    t.add_(dt)
                    self.state[t]["cg_solution"] = ct
        # The step's diagnostics in one host read, in the solve's dtype and at least float32 (every value
        # exactly: counts below 2^24, the residuals in their own precision).
        dtype = torch.promote_types(result.residual.dtype, torch.float32)
        read = torch.stack([result.iterations[0].to(dtype), result.matvecs[0].to(dtype), result.residual[0],
                            result.converged[0].to(dtype), torch.linalg.vector_norm(game.rhs).to(dtype)]).tolist()
        iterations, matvecs, residual, converged, rhs_norm = read
        iterations = int(iterations)
        self.counts["steps"] += 1
        self.counts["cg_iterations"] += iterations
        self.info = {"solved_for": solved, "cg_iterations": iterations, "cg_matvecs": int(matvecs),
                     "cg_residual": residual, "cg_converged": bool(converged), "rhs_norm": rhs_norm}
        return loss


class CGD(_Competitive):
    r"""Competitive gradient descent (Schäfer & Anandkumar 2019) for two players' parameters.

    ``min_params`` minimize the loss ``f`` returned by the closure, ``max_params``
    maximize it (e.g. ``min_params=G.parameters()``, ``max_params=D.parameters()``
    for a GAN whose loss the discriminator maximizes). With one learning rate
    ``lr = eta`` a step is

        dx = -eta (I + eta^2 D_xy D_yx)^{-1} (grad_x f + eta D_xy grad_y f)
        dy = +eta (I + eta^2 D_yx D_xy)^{-1} (grad_y f - eta D_yx grad_x f)

    (x: min player, y: max player, ``D_xy = d^2 f / dx dy``). One of the two
    systems is solved by conjugate gradients on Hessian-vector products (the
    min player's by default), and the other player's step is recovered exactly
    as ``dy = eta (grad_y f + D_yx dx)``. Per-group learning rates (e.g. the
    CGDs package's ``lr_min``/``lr_max``) act as diagonal step sizes
    ``a_x``, ``a_y``; see the module docstring for the system then solved.

    Args:
        min_params: parameters (or parameter-group dicts) of the player that
            minimizes the loss. Keyword-only, as is ``max_params``: the CGDs
            package takes ``(max_params, min_params)`` positionally, so a
            positional call could silently swap the roles.
        max_params: parameters (or parameter-group dicts) of the player that
            maximizes the loss.
        lr: the step size ``eta`` (default for every group; >= 0). Schedulers
            from ``torch.optim.lr_scheduler`` change it through ``param_groups``.
        cg_tol: relative residual tolerance of the conjugate-gradient solve,
            ``|r| <= cg_tol |b|`` (the CGDs package's ``tol`` is on squared norms:
            its ``tol=1e-12`` is ``cg_tol=1e-6`` here). The batched solvers'
            name; ``tol`` is its deprecated alias.
        cg_max_iters: cap on CG iterations per step (default: the dimension of
            the solved player, where exact CG terminates); ``max_cg_iters`` is
            its deprecated alias.
        solve_for: whose system CG solves: ``"min"``, ``"max"``, or
            ``"alternate"`` (max on odd steps, min on even steps, as the CGDs
            package does). Exact solves give the same step either way.
        warm_start: start CG from the previous step's solution (its residual
            is recomputed for the new system, one extra product).
        **deprecated: ``tol`` and ``max_cg_iters``, the old names of ``cg_tol``
            and ``cg_max_iters`` (a ``DeprecationWarning``; removed in the next release).

    ``state_dict`` holds, besides the ``torch.optim`` state and groups, the
    ``counts`` and the CG settings (``cg_tol``, ``cg_max_iters``, ``solve_for``,
    ``warm_start``); ``load_state_dict`` restores them all (also from state
    dicts saved with the old names).

    Attributes:
        counts: work done so far: ``steps``,
            ``grad`` (gradients of the loss w.r.t. both players, one backward
            each, one per step), ``hvp`` (mixed Hessian-vector products, one
            backward through the gradient graph each: 1 for the right-hand
            side, 2 per CG product, 1 for the recovery) and ``cg_iterations``.
            Per step, ``hvp = 2 + 2 * (cg_iterations + warm start)``.
        info: the last step's ``solved_for``, ``cg_iterations``,
            ``cg_matvecs``, ``cg_residual`` (``|b - A c|``), ``cg_converged``
            and ``rhs_norm`` (``|b|``).

    Parameters may be on any device (all on one) and of any real
    floating-point dtypes (the solve runs in their promoted dtype). Parameters
    with ``requires_grad=False`` are skipped. Per-parameter state (the warm
    start ``cg_solution``) lives in ``state`` as in any ``torch.optim``
    optimizer.

    Example:
        >>> opt = saddle.optim.CGD(min_params=G.parameters(), max_params=D.parameters(), lr=1e-2)
        >>> def closure():
        ...     return gan_loss(G, D, batch)      # D maximizes, G minimizes; no backward()
        >>> opt.step(closure)                     # or: opt.step(loss=gan_loss(G, D, batch))
    """

    def __init__(self, *, min_params, max_params, lr: float = 1e-3, cg_tol: float = 1e-6,
                 cg_max_iters: int | None = None, solve_for: str = "min", warm_start: bool = True, **deprecated):
        super().__init__(min_params, max_params, {"lr": lr}, cg_tol=cg_tol, cg_max_iters=cg_max_iters,
                         solve_for=solve_for, warm_start=warm_start, deprecated=deprecated)

    def _step_sizes(self, group, p, grad):
        return float(group["lr"])


class ACGD(_Competitive):
    r"""Adaptive competitive gradient descent (Schäfer, Zheng & Anandkumar 2019, arXiv 1910.05852).

    CGD with Adam-like diagonal step sizes per coordinate: with ``g`` the
    gradient of the loss w.r.t. the player's parameters at step ``t``,

        v <- beta v + (1 - beta) g^2,       a = lr sqrt(1 - beta^t) / (sqrt(v) + eps),

    then, with ``A_x = diag(a)`` of the min player and ``A_y`` of the max player,

        (I + A_x^1/2 D_xy A_y D_yx A_x^1/2) c = A_x^1/2 (grad_x f + D_xy A_y grad_y f),
        dx = -A_x^1/2 c,        dy = A_y (grad_y f + D_yx dx).

    The defaults (``lr=1e-3``, ``beta=0.99``, ``eps=1e-5``) are those of the
    co-author's CGDs package, whose ``ACGD(max_params, min_params, lr_max,
    lr_min, beta, eps, tol)`` this matches (pass ``solve_for="alternate"`` and
    ``cg_tol = sqrt(its tol)`` to follow it step for step).

    Args:
        min_params: parameters (or groups) of the player that minimizes the loss, as in `CGD`.
        max_params: parameters (or groups) of the player that maximizes the loss.
        lr: the base step size (default for every group; >= 0).
        beta: decay of the running mean of squared gradients, in [0, 1).
        eps: added to ``sqrt(v)``, > 0.
        cg_tol: relative residual tolerance of CG, as in `CGD`.
        cg_max_iters: cap on CG iterations per step, as in `CGD`.
        solve_for: ``"min"``, ``"max"`` or ``"alternate"``, as in `CGD`.
        warm_start: start CG from the previous step's solution, as in `CGD`.
        **deprecated: ``tol`` and ``max_cg_iters``, as in `CGD`.

    Attributes:
        counts, info: as in `CGD` (the same products per step).

    Per-parameter state: ``step``, ``square_avg`` (``v``) and ``cg_solution``.
    """

    def __init__(self, *, min_params, max_params, lr: float = 1e-3, beta: float = 0.99, eps: float = 1e-5,
                 cg_tol: float = 1e-6, cg_max_iters: int | None = None, solve_for: str = "min",
                 warm_start: bool = True, **deprecated):
        super().__init__(min_params, max_params, {"lr": lr, "beta": beta, "eps": eps}, cg_tol=cg_tol,
                         cg_max_iters=cg_max_iters, solve_for=solve_for, warm_start=warm_start,
                         deprecated=deprecated)

    def _check_hyperparameters(self, group):
        super()._check_hyperparameters(group)
        name = type(self).__name__
        check_number(name, "beta", group["beta"], low=0, high=1, include_low=True)
        check_number(name, "eps", group["eps"], low=0)

    def _step_sizes(self, group, p, grad):
        state = self.state[p]
        if "square_avg" not in state:
            state["step"] = 0
            state["square_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["step"] += 1
        beta = float(group["beta"])
        v = state["square_avg"]
        v.mul_(beta).addcmul_(grad, grad, value=1 - beta)
        return float(group["lr"]) * math.sqrt(1 - beta ** state["step"]) / (v.sqrt() + float(group["eps"]))
