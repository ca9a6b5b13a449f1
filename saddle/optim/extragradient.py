r"""Extragradient and optimistic optimizers (``ExtraSGD``, ``ExtraAdam``, ``OptimisticAdam``) for ``torch.optim``.

Each player of a game (e.g. the generator and the discriminator of a GAN)
gets its own optimizer, with ``maximize=True`` for a player that ascends its
loss. One iteration takes two calls, with the gradients recomputed in between:

1. ``extrapolation()``: save the parameters ``w`` and move them to the
   extrapolated point ``w~``;
2. the user computes the losses and gradients again, at ``w~``;
3. ``step()``: restore ``w`` exactly and apply the update computed from the
   gradients at ``w~``.

``ExtraSGD`` and ``ExtraAdam`` are the extragradient methods of Gidel, Berard,
Vignoud, Vincent & Lacoste-Julien, "A Variational Inequality Perspective on
Generative Adversarial Networks" (ICLR 2019, arXiv 1802.10551), with the
interface of their reference code (GauthierGidel/Variational-Inequality-GAN):
``extrapolation()`` moves ``w`` by the update computed from the gradient at
``w`` (two gradient evaluations per iteration). ``OptimisticAdam`` is the
optimistic Adam of Daskalakis, Ilyas, Syrgkanis & Zeng, "Training GANs with
Optimism" (ICLR 2018, arXiv 1711.00141) written as extrapolation from the past
(Gidel et al., Sec. 3; Popov 1980): ``extrapolation()`` reuses the previous
update direction, so one gradient evaluation per iteration.

The optimizers run on multi-tensor ``torch._foreach_*`` kernels, one call per
parameter group, and keep the saved copy of ``w`` in a buffer allocated at
the first iteration and reused.

Mixed precision (``torch.amp.GradScaler``): ``scaler.step(opt.first_pass)``
is ``extrapolation()`` with the first gradient unscaled and checked by the
scaler, and ``scaler.step(opt)`` is ``step()`` with the second one unscaled and
checked; on inf/NaN in either, the parameters are left at ``w`` and the update
is skipped (see `_Extrapolating.first_pass` and docs/optimizers.md).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..solvers._validate import check_number
from ._amp import FirstPass, any_inf, forget_scaler, scaler_call, unscale_grads

__all__ = ["ExtraSGD", "ExtraAdam", "OptimisticAdam"]


# ------------------------------------------------------------------ checks
def _nonnegative(name: str, arg: str, value) -> None:
    check_number(name, arg, value, low=0, include_low=True)


def _flag(name: str, arg: str, value) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: {arg} must be a bool, got {type(value).__name__}")


def _betas(name: str, arg: str, value) -> None:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name}: {arg} must be a pair (beta1, beta2), got {value!r}")
    for i, beta in enumerate(value):
        check_number(name, f"{arg}[{i}]", beta, low=0, high=1, include_low=True, expected="in [0, 1)")


_CHECKS: dict[str, Callable[[str, str, Any], None]] = {
    "lr": _nonnegative, "momentum": _nonnegative, "weight_decay": _nonnegative, "eps": _nonnegative,
    "betas": _betas, "amsgrad": _flag, "maximize": _flag,
}


class _Extrapolating(Optimizer):
    """Shared engine: the ``extrapolation()`` / ``step()`` protocol, saved copies, checks and state dicts.

    Subclasses define ``_prepare(group, params)`` (update the state with the
    gradients in ``.grad`` and return what ``_apply`` needs, computed at the
    current parameters) and ``_apply(group, params, prepared)`` (add the update
    to ``params``), and may override ``_extrapolate``.
    """

    # GradScaler.step(opt) always calls step(), with grad_scale and found_inf set: step() unscales,
    # and on inf/NaN restores w and skips the update (see saddle/optim/_amp.py).
    _step_supports_amp_scaling = True
    # Whether extrapolation() reads the gradients (OptimisticAdam's reuses the previous direction).
    _extrapolation_reads_gradients = True

    def __init__(self, params, defaults: dict[str, Any]):
        name = type(self).__name__
        for key, value in defaults.items():
            _CHECKS[key](name, key, value)
        self._saved: list[tuple[list[Tensor], list[Tensor]]] | None = None  # (params, copies of w) per group
        # Not part of state_dict: scratch space (the copy of w) reused by every iteration.
        self._workspace: dict[Tensor, Tensor] = {}
        self._amp_first: str | None = None  # "moved" / "skipped" after scaler.step(opt.first_pass)
        self._first_pass_handle: FirstPass | None = None
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_saved", None)
        self.__dict__.setdefault("_workspace", {})
        self.__dict__.setdefault("_amp_first", None)
        self.__dict__.setdefault("_first_pass_handle", None)

    @property
    def first_pass(self) -> FirstPass:
        """``extrapolation()`` as an optimizer of its own, for ``GradScaler.step``.

        With mixed precision, after the first (scaled) backward pass,
        ``scaler.step(opt.first_pass)`` unscales the gradients, checks them for
        inf/NaN (recorded for ``scaler.update()``) and calls ``extrapolation()``;
        on inf/NaN it moves nothing and changes no state, and the
        ``scaler.step(opt)`` after the second backward pass skips the update.
        ``scaler.step(opt.first_pass, zero_grad=True)`` also zeroes the
        gradients. With no scaler or a disabled one it is ``extrapolation()``.
        One host read (the scaler's verdict), as ``GradScaler.step`` makes for
        any optimizer.
        """
        handle = self.__dict__.get("_first_pass_handle")
        if handle is None:
            handle = self._first_pass_handle = FirstPass(self)
        return handle

    def _first_pass(self, zero_grad: bool, scaler) -> None:  # called by FirstPass.step
        name = type(self).__name__
        if not self._extrapolation_reads_gradients:
            raise RuntimeError(f"{name}: extrapolation() uses no gradient; with a GradScaler call "
                               f"opt.extrapolation() before the backward pass and scaler.step(opt) after it")
        if scaler is None:
            self.extrapolation()
        else:
            if self._saved is not None:
                raise RuntimeError(f"{name}: extrapolation() was called twice without step() in between")
            self._check_grads("scaler.step(opt.first_pass)")
            grad_scale, found_inf = scaler
            if any_inf(found_inf):  # the one host read: the state must not see a non-finite gradient
                self._saved = [([], []) for _ in self.param_groups]
                self._amp_first = "skipped"
            else:
                unscale_grads((p for g in self.param_groups for p in g["params"]), grad_scale)
                self.extrapolation()
                self._amp_first = "moved"
        if zero_grad:
            self.zero_grad()

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group; its own hyperparameters (``lr``, ``betas``...) are checked."""
        name = type(self).__name__
        if not isinstance(param_group, dict):
            raise TypeError(f"{name}: a parameter group must be a dict, got {type(param_group).__name__}")
        index = len(self.param_groups)
        for key, value in param_group.items():
            if key in _CHECKS and key in self.defaults:
                _CHECKS[key](name, f"param_groups[{index}].{key}", value)
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            if not p.is_floating_point():
                raise TypeError(f"{name}: parameters must be real floating-point tensors, got {p.dtype}")

    # ---------------------------------------------------------------- helpers
    def _copies(self, params: list[Tensor]) -> list[Tensor]:
        """Persistent buffers for the copy of ``w``, one per parameter (allocated once: on CPU a fresh
        multi-megabyte buffer costs page faults at every iteration)."""
        copies = []
        for p in params:
            buf = self._workspace.get(p)
            if buf is None or buf.shape != p.shape or buf.dtype != p.dtype or buf.device != p.device:
                buf = self._workspace[p] = torch.empty_like(p, memory_format=torch.preserve_format)
            copies.append(buf)
        return copies

    @staticmethod
    def _with_grads(group: dict[str, Any]) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    def _check_grads(self, where: str) -> None:
        name = type(self).__name__
        found = False
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    if p.grad.is_sparse:
                        raise RuntimeError(f"{name} does not support sparse gradients")
                    found = True
        if not found:
            raise RuntimeError(f"{name}: no parameter has a gradient; call loss.backward() before {where}")

    def _gradients(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor]:
        """The gradients of the minimized loss: ``-grad`` if maximizing, plus ``weight_decay * p``."""
        grads = [p.grad for p in params]
        if group["maximize"]:
            grads = torch._foreach_neg(grads)
        if group["weight_decay"] != 0:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        return grads

    def _moved(self, group: dict[str, Any]) -> list[Tensor]:
        """The parameters of ``group`` that ``extrapolation()`` moves (and ``step()`` restores)."""
        return self._with_grads(group)

    def _extrapolate(self, group: dict[str, Any], params: list[Tensor]) -> None:
        self._apply(group, params, self._prepare(group, params))

    def _prepare(self, group: dict[str, Any], params: list[Tensor]):
        raise NotImplementedError

    def _apply(self, group: dict[str, Any], params: list[Tensor], prepared) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- protocol
    def extrapolation(self, closure: Callable[[], Tensor] | None = None):
        """Save the parameters ``w`` and move them to the extrapolated point ``w~``.

        Args:
            closure: optional; re-evaluates the loss at ``w`` and calls
                ``backward()`` (the gradients must be in ``.grad`` otherwise).

        Returns:
            the closure's loss, or None.
        """
        name = type(self).__name__
        if self._saved is not None:
            raise RuntimeError(f"{name}: extrapolation() was called twice without step() in between")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._before_extrapolation()
        saved = []
        with torch.no_grad():
            for group in self.param_groups:
                params = self._moved(group)
                copies = self._copies(params)
                if params:
                    torch._foreach_copy_(copies, params)  # w, restored exactly by step()
                    self._extrapolate(group, params)
                saved.append((params, copies))
        self._saved = saved
        return loss

    def _before_extrapolation(self) -> None:
        self._check_grads("extrapolation()")

    def step(self, closure: Callable[[], Tensor] | None = None):
        """Restore the saved ``w`` and update it with the gradients at the extrapolated point.

        Args:
            closure: optional; re-evaluates the loss at the extrapolated point
                and calls ``backward()`` (the gradients at ``w~`` must be in
                ``.grad`` otherwise).

        Returns:
            the closure's loss, or None.

        Raises:
            RuntimeError: without a preceding ``extrapolation()``.
        """
        scaler = scaler_call(self)
        if scaler is not None:
            return self._scaled_step(closure, scaler)
        name = type(self).__name__
        if self._saved is None:
            raise RuntimeError(f"{name}.step: call extrapolation() first; an iteration is extrapolation(), "
                               f"new gradients at the extrapolated point, then step()")
        if self._amp_first is not None:
            raise RuntimeError(f"{name}: the extrapolation went through a GradScaler (scaler.step(opt.first_pass)); "
                               f"finish the iteration with scaler.step(opt), which unscales the new gradients and "
                               f"skips the update on inf/NaN")
        return self._update(closure)

    def _restore(self) -> None:
        with torch.no_grad():
            for moved, copies in self._saved:
                if moved:
                    torch._foreach_copy_(moved, copies)
        self._saved = None

    def _scaled_step(self, closure, scaler) -> None:
        """`step` called by ``GradScaler.step(opt)``: unscale and update, or restore ``w`` and skip on inf/NaN."""
        name = type(self).__name__
        grad_scale, found_inf = scaler
        try:
            if closure is not None:
                raise RuntimeError(f"{name}: GradScaler.step(opt) takes no closure; run the backward pass yourself")
            if self._saved is None:
                raise RuntimeError(f"{name}.step: call extrapolation() first (with a GradScaler: "
                                   f"scaler.step(opt.first_pass) after the first backward pass)")
            first, self._amp_first = self._amp_first, None
            if first is None and self._extrapolation_reads_gradients:
                self._restore()
                raise RuntimeError(f"{name}: extrapolation() was called directly while a GradScaler is in use, "
                                   f"with scaled gradients; call scaler.step(opt.first_pass) instead (the "
                                   f"parameters are back at w)")
            if first == "skipped" or any_inf(found_inf):  # the step's one host read
                self._restore()  # w, exactly; no state changes
            else:
                unscale_grads((p for g in self.param_groups for p in g["params"]), grad_scale)
                self._update(None)
        except BaseException:
            forget_scaler(self)
            raise

    def _update(self, closure):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_grads("step()")
        saved = self._saved + [([], [])] * (len(self.param_groups) - len(self._saved))
        with torch.no_grad():
            for group, (moved, copies) in zip(self.param_groups, saved):
                params = self._with_grads(group)
                prepared = self._prepare(group, params) if params else None  # at w~ (weight decay too)
                if moved:
                    torch._foreach_copy_(moved, copies)
                if params:
                    self._apply(group, params, prepared)
        self._saved = None
        return loss

    # ------------------------------------------------------------ state dict
    def state_dict(self) -> dict[str, Any]:
        """The ``torch.optim`` state (per-parameter buffers and step counts) and the parameter groups.

        Raises:
            RuntimeError: between ``extrapolation()`` and ``step()``, where the
                parameters are at the extrapolated point (save after ``step()``).
        """
        if self._saved is not None:
            raise RuntimeError(f"{type(self).__name__}: state_dict() between extrapolation() and step() would "
                               f"pair the extrapolated parameters with a saved w it does not hold; save after step()")
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a `state_dict` (state and groups); refused between ``extrapolation()`` and ``step()``."""
        if self._saved is not None:
            raise RuntimeError(f"{type(self).__name__}: load_state_dict() between extrapolation() and step(); "
                               f"call step() first (or load into a fresh optimizer)")
        super().load_state_dict(state_dict)


class ExtraSGD(_Extrapolating):
    r"""Extragradient with (optionally) momentum SGD updates (Gidel et al., ICLR 2019, arXiv 1802.10551).

    With ``g(w) = grad L(w) + weight_decay * w`` (``-grad L`` when
    ``maximize=True``), learning rate ``lr`` and momentum ``mu``, one
    iteration is

        extrapolation():  b <- mu b + g(w_t)      w~ = w_t - lr b
        step():           b <- mu b + g(w~)       w_{t+1} = w_t - lr b

    (``b`` starts as the first gradient, as in ``torch.optim.SGD``; with
    ``mu = 0``, ``b = g`` and this is the extragradient method
    ``w_{t+1} = w_t - lr g(w_t - lr g(w_t))``.) The momentum buffer is updated
    at both calls, as in the reference code's extragradient SGD.

    Args:
        params: the parameters (an iterable of tensors, a model's
            ``parameters()``, or parameter-group dicts with their own ``lr``,
            ``momentum``, ``weight_decay``, ``maximize``).
        lr: the learning rate (>= 0); schedulers from
            ``torch.optim.lr_scheduler`` change it through ``param_groups``, and
            each call uses the group's value at that time.
        momentum: heavy-ball momentum ``mu`` (>= 0; default 0).
        weight_decay: L2 penalty coefficient (>= 0), evaluated at the point
            where the gradient is taken.
        maximize: ascend the loss (the max player of a game).

    Per-parameter state: ``momentum_buffer`` (shape of the parameter; only
    with ``momentum > 0``). Memory: that buffer plus one copy of the
    parameters (the saved ``w``), allocated once.

    ``state_dict()`` is refused between ``extrapolation()`` and ``step()``;
    saved after ``step()`` it resumes bit-identically.

    Example:
        >>> opt = saddle.optim.ExtraSGD(model.parameters(), lr=0.01)
        >>> loss_fn(model).backward(); opt.extrapolation(); opt.zero_grad()
        >>> loss_fn(model).backward(); opt.step(); opt.zero_grad()
    """

    def __init__(self, params, lr: float, momentum: float = 0, weight_decay: float = 0, maximize: bool = False):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, maximize=maximize))

    def _prepare(self, group, params):
        grads = self._gradients(group, params)
        momentum = group["momentum"]
        if momentum == 0:
            return grads
        bufs, old, old_grads = [], [], []
        for p, g in zip(params, grads):
            state = self.state[p]
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = torch.clone(g).detach()
            else:
                old.append(buf)
                old_grads.append(g)
            bufs.append(buf)
        if old:
            torch._foreach_mul_(old, momentum)
            torch._foreach_add_(old, old_grads)
        return bufs

    def _apply(self, group, params, directions):
        torch._foreach_add_(params, directions, alpha=-float(group["lr"]))


class _AdamMoments(_Extrapolating):
    """Adam's moment updates and normalized direction, shared by `ExtraAdam` and `OptimisticAdam`."""

    _buffers: tuple[str, ...] = ("exp_avg", "exp_avg_sq")

    def _moments(self, group, params):
        """Update ``m``, ``v`` (and ``max v``) with the gradients; return ``(m, denom, bias_correction1)``,
        ``denom = sqrt(v_hat) + eps``, so that the direction is ``m / bias_correction1 / denom``."""
        grads = self._gradients(group, params)
        beta1, beta2 = group["betas"]
        amsgrad = group.get("amsgrad", False)
        exp_avgs, exp_avg_sqs, maxes, steps = [], [], [], []
        for p in params:
            state = self.state[p]
            if "step" not in state:
                state["step"] = 0
                for key in self._buffers:
                    state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if amsgrad:
                    state["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["step"] += 1
            steps.append(state["step"])
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if amsgrad:
                maxes.append(state["max_exp_avg_sq"])
        torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        torch._foreach_mul_(exp_avg_sqs, beta2)
        torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        if amsgrad:
            torch._foreach_maximum_(maxes, exp_avg_sqs)
        denom = torch._foreach_sqrt(maxes if amsgrad else exp_avg_sqs)
        torch._foreach_div_(denom, [math.sqrt(1 - beta2 ** t) for t in steps])
        torch._foreach_add_(denom, group["eps"])
        return exp_avgs, denom, [1 - beta1 ** t for t in steps]


class ExtraAdam(_AdamMoments):
    r"""Extragradient with Adam updates, ExtraAdam (Gidel et al., ICLR 2019, arXiv 1802.10551).

    With ``g(w) = grad L(w) + weight_decay * w`` (``-grad L`` when
    ``maximize=True``) and Adam's update

        m <- beta1 m + (1 - beta1) g,    v <- beta2 v + (1 - beta2) g^2,    t <- t + 1,
        u = m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - beta1^t),  v_hat = v / (1 - beta2^t)

    (``v_hat`` replaced by ``max`` over the past ``v_hat`` with
    ``amsgrad=True``), one iteration is

        extrapolation():  update (m, v, t) with g(w_t);  w~ = w_t - lr u
        step():           update (m, v, t) with g(w~);   w_{t+1} = w_t - lr u

    The moments and the step count ``t`` are updated at both calls, as in the
    reference code (``t`` counts gradients: two per iteration). The
    direction ``u`` is ``torch.optim.Adam``'s (``eps`` added to
    ``sqrt(v_hat)``); the reference code adds ``eps`` to ``sqrt(v)``, which is
    the same up to a rescaled ``eps``.

    Args:
        params: the parameters (tensors, a model's ``parameters()``, or
            parameter-group dicts with their own ``lr``, ``betas``, ...).
        lr: the learning rate (>= 0); schedulers change it through
            ``param_groups``, and each call uses the group's value at that time.
        betas: ``(beta1, beta2)``, each in [0, 1) (default ``(0.9, 0.999)``,
            Adam's and the reference code's).
        eps: added to ``sqrt(v_hat)`` (>= 0).
        weight_decay: L2 penalty coefficient (>= 0), evaluated at the point
            where the gradient is taken.
        amsgrad: use the running maximum of ``v`` (Reddi et al. 2018).
        maximize: ascend the loss (the max player of a game).

    Per-parameter state (each buffer shaped like its parameter): ``step``
    (an int), ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with ``amsgrad``,
    ``max_exp_avg_sq``. Memory: these plus one copy of the parameters (the
    saved ``w``), allocated once.

    ``state_dict()`` is refused between ``extrapolation()`` and ``step()``;
    saved after ``step()`` it resumes bit-identically.
    """

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0, amsgrad: bool = False, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize))

    def _prepare(self, group, params):
        return self._moments(group, params)

    def _apply(self, group, params, prepared):
        exp_avgs, denom, bias_correction1 = prepared
        lr = float(group["lr"])
        torch._foreach_addcdiv_(params, exp_avgs, denom, [-lr / b for b in bias_correction1])


class OptimisticAdam(_AdamMoments):
    r"""Optimistic Adam (Daskalakis, Ilyas, Syrgkanis & Zeng, ICLR 2018, arXiv 1711.00141) as extrapolation
    from the past.

    Daskalakis et al.'s recursion, with ``g_t`` the gradient at the iterate ``w~_t``
    (``g(w) = grad L(w) + weight_decay * w``, or ``-grad L + ...`` when
    ``maximize=True``):

        m_t = beta1 m_{t-1} + (1 - beta1) g_t,      v_t = beta2 v_{t-1} + (1 - beta2) g_t^2,
        d_t = m_hat_t / (sqrt(v_hat_t) + eps),      m_hat_t = m_t / (1 - beta1^t),  v_hat_t = v_t / (1 - beta2^t),
        w~_{t+1} = w~_t - 2 lr d_t + lr d_{t-1}     (d_0 = 0; t = 1, 2, ...).

    This optimizer keeps the sequence ``w_t`` with ``w~_t = w_t - lr d_{t-1}``
    instead (the single-call "extrapolation from the past" of Gidel et al.,
    Sec. 3, and Popov), with the same two calls as `ExtraAdam`:

        extrapolation():  w~_t = w_t - lr d_{t-1}         (no new gradient)
        step():           update (m, v, t) with g_t = g(w~_t);  w_{t+1} = w_t - lr d_t

    Then ``w~_{t+1} = w_{t+1} - lr d_t = w~_t + lr d_{t-1} - 2 lr d_t``: the
    points where the gradients are taken follow optimistic Adam exactly
    (with a constant ``lr``; a scheduler's ``lr`` is read at each call). After
    ``step()`` the parameters hold ``w_{t+1}``, which one more
    ``extrapolation()`` turns into the optimistic iterate ``w~_{t+1}``. One
    gradient per iteration; the first ``extrapolation()`` moves nothing.

    Args:
        params: the parameters (tensors, a model's ``parameters()``, or
            parameter-group dicts with their own ``lr``, ``betas``, ...).
        lr: the learning rate (>= 0); schedulers change it through ``param_groups``.
        betas: ``(beta1, beta2)``, each in [0, 1). The default ``(0.5, 0.9)``
            is the usual GAN setting (WGAN-GP, Gulrajani et al. 2017) and the
            default of Optimisers.jl's ``OAdam``; pass ``(0.9, 0.999)`` for
            ``torch.optim.Adam``'s.
        eps: added to ``sqrt(v_hat)`` (>= 0).
        weight_decay: L2 penalty coefficient (>= 0), evaluated at ``w~_t``.
        maximize: ascend the loss (the max player of a game).

    Per-parameter state (each buffer shaped like its parameter): ``step`` (an
    int, one per iteration), ``exp_avg`` (m), ``exp_avg_sq`` (v) and
    ``prev_direction`` (``d_t``, used by the next ``extrapolation()``).
    Memory: these plus one copy of the parameters (the saved ``w``).

    ``state_dict()`` is refused between ``extrapolation()`` and ``step()``;
    saved after ``step()`` it resumes bit-identically.
    """

    _buffers = ("exp_avg", "exp_avg_sq", "prev_direction")
    _extrapolation_reads_gradients = False

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.5, 0.9), eps: float = 1e-8,
                 weight_decay: float = 0, maximize: bool = False):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, maximize=maximize))

    def _before_extrapolation(self) -> None:  # no gradient needed: the move reuses d_{t-1}
        pass

    def _moved(self, group):
        return [p for p in group["params"] if "prev_direction" in self.state.get(p, ())]

    def _extrapolate(self, group, params):
        directions = [self.state[p]["prev_direction"] for p in params]
        torch._foreach_add_(params, directions, alpha=-float(group["lr"]))

    def _prepare(self, group, params):
        exp_avgs, denom, bias_correction1 = self._moments(group, params)
        directions = [self.state[p]["prev_direction"] for p in params]
        torch._foreach_copy_(directions, exp_avgs)
        torch._foreach_div_(directions, denom)
        torch._foreach_div_(directions, bias_correction1)  # d_t = m_hat / (sqrt(v_hat) + eps)
        return directions

    def _apply(self, group, params, directions):
        torch._foreach_add_(params, directions, alpha=-float(group["lr"]))
