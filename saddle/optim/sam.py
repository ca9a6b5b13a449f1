"""Sharpness-aware minimization as a ``torch.optim`` optimizer wrapping a base optimizer.

``SAM(params, base_optimizer, rho)`` takes each step in two passes (Foret et
al., arXiv 2010.01412; the interface of the widely used davda54/sam code):

1. ``first_step()``: with the gradient ``g = grad L(w)`` in ``.grad``, move
   the parameters to ``w + e``, ``e = rho T^2 g / |T g|`` (the linear maximizer
   of the loss over the ball; ``T = I``, or ``T = diag(|w| + eta)`` when
   ``adaptive=True``, ASAM, Kwon et al. arXiv 2102.11600), the norm taken over
   all parameters of all groups;
2. ``second_step()``: with ``grad L(w + e)`` in ``.grad``, restore ``w``
   exactly and let the base optimizer step from ``w`` with that gradient.

The perturbation is `saddle.solvers.sam.sam_perturbation`, the function the
`saddle.SAM` solver uses, on multi-tensor ``torch._foreach_*`` kernels.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..solvers._validate import check_number
from ..solvers.sam import perturbation_norm, sam_perturbation
from ._amp import FirstPass, any_inf, forget_scaler, scaler_call, unscale_grads

__all__ = ["SAM"]


def _check_ball(rho, adaptive_eta, where: str) -> None:
    """The perturbation ball's radius ``rho`` and ASAM's ``adaptive_eta``: finite numbers >= 0."""
    check_number("SAM", f"{where}rho", rho, low=0, include_low=True)
    check_number("SAM", f"{where}adaptive_eta", adaptive_eta, low=0, include_low=True)


class SAM(Optimizer):
    """Sharpness-aware minimization around any ``torch.optim`` optimizer.

    Args:
        params: the parameters (an iterable of tensors, a model's
            ``parameters()``, or parameter groups as dicts; a group may set its
            own ``rho``, ``adaptive``, ``adaptive_eta`` and base-optimizer options).
        base_optimizer: the class of the base optimizer (``torch.optim.SGD``,
            ``torch.optim.Adam``, ...); it is built on the same parameter groups,
            so learning-rate schedulers attached to this optimizer drive it.
        rho: the radius of the perturbation ball (default 0.05; Foret et al.).
        adaptive: ASAM's scale-invariant ball ``{|T_w^-1 e| <= rho}``, ``T_w = diag(|w| + eta)``.
        adaptive_eta: eta in ``T_w`` (0.01, Kwon et al.'s code and `saddle.ASAM`'s
            default; 0 gives davda54/sam's ``T_w = |w|``).
        **base_kwargs: options of the base optimizer (``lr``, ``momentum``, ...).

    Use either the two explicit passes::

        loss_fn(model(x), y).backward()
        opt.first_step(zero_grad=True)
        loss_fn(model(x), y).backward()
        opt.second_step(zero_grad=True)

    or, after the first backward, ``opt.step(closure)`` with a closure that
    recomputes the loss and calls ``backward()`` (it runs at ``w + e``).
    ``step()`` without a closure after ``first_step()`` is ``second_step()``.

    Mixed precision (``torch.amp.GradScaler``): run the first pass through the
    scaler too, as `first_pass`::

        scaler.scale(loss_fn(model(x), y)).backward()
        scaler.step(opt.first_pass, zero_grad=True)   # unscale, check; w -> w + e, or stay at w on inf/NaN
        scaler.scale(loss_fn(model(x), y)).backward()
        scaler.step(opt)                              # back to w; base step unless either pass had inf/NaN
        scaler.update()
        opt.zero_grad()

    The iterates are those of the unscaled loop (bit for bit in float32: the
    scales are powers of two). An inf/NaN in either gradient leaves the
    weights and the base optimizer's state bitwise unchanged, and ``update()``
    lowers the scale. Do not call ``scaler.unscale_(opt)`` before the first
    step, nor ``first_step()`` directly with an enabled scaler: ``scaler.step(opt)``
    raises then, since the second gradient would reach the base optimizer scaled.

    Memory: one buffer the size of the parameters (the saved ``w``),
    allocated at the first step and reused.

    m-sharpness (a perturbation per micro-batch) is one step of this optimizer
    per micro-batch only in data-parallel training (each process perturbs with
    its own gradient); in one process use `problems.sharpness.sharpness` with
    ``micro_batches`` and the `saddle.SAM` solver. BatchNorm statistics: the
    second forward pass runs at ``w + e``; put BatchNorm layers in ``eval()``
    (or momentum 0) for it if they must only see ``w``.
    """

    # GradScaler.step(opt) always calls step(), with grad_scale and found_inf set: step() unscales the
    # second gradient, restores w and skips the base step on inf/NaN (see saddle/optim/_amp.py).
    _step_supports_amp_scaling = True

    def __init__(self, params, base_optimizer: type[Optimizer], rho: float = 0.05, adaptive: bool = False,
                 adaptive_eta: float = 0.01, **base_kwargs):
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise TypeError("SAM: base_optimizer must be a torch.optim.Optimizer class (e.g. torch.optim.SGD), got "
                            f"{base_optimizer!r}")
        _check_ball(rho, adaptive_eta, "")
        if not isinstance(adaptive, bool):
            raise TypeError(f"SAM: adaptive must be a bool, got {type(adaptive).__name__}")
        defaults = dict(rho=rho, adaptive=adaptive, adaptive_eta=adaptive_eta, **base_kwargs)
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            _check_ball(group["rho"], group["adaptive_eta"], f"param_groups[{i}].")
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # one list: schedulers and the base see the same lr
        self.defaults.update(self.base_optimizer.defaults)
        self._saved: list[tuple[list[Tensor], list[Tensor]]] | None = None  # (params, copies of w) per group
        # Not part of state_dict: scratch space (a copy of the parameters) reused by every step.
        self._workspace: dict[Tensor, Tensor] = {}
        self._first_ok: Tensor | None = None  # after a scaled first pass: its gradient was finite (on device)
        self._first_pass_handle: FirstPass | None = None

    @property
    def first_pass(self) -> FirstPass:
        """`first_step` as an optimizer of its own, for ``GradScaler.step`` (see the class docstring).

        ``scaler.step(opt.first_pass, zero_grad=...)`` unscales the gradients,
        checks them for inf/NaN (recorded for ``scaler.update()``) and calls
        ``first_step``; on inf/NaN the parameters stay at ``w`` (no move along a
        non-finite direction; decided on the device, no host read) and the
        ``scaler.step(opt)`` that follows skips the base step. With no scaler or
        a disabled one it is ``first_step``.
        """
        handle = getattr(self, "_first_pass_handle", None)
        if handle is None:
            handle = self._first_pass_handle = FirstPass(self)
        return handle

    def _copies(self, params: list[Tensor]) -> list[Tensor]:
        """Persistent buffers for the copy of ``w``, per parameter (allocated once: on CPU a fresh
        multi-megabyte buffer costs page faults at every step)."""
        for p in params:
            if p not in self._workspace:
                self._workspace[p] = torch.empty_like(p)
        return [self._workspace[p] for p in params]

    def _with_grads(self, group) -> list[Tensor]:
        return [p for p in group["params"] if p.grad is not None]

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """Move the parameters from ``w`` to ``w + e`` using the gradients in ``.grad``."""
        self._first_step(zero_grad, None)

    def _first_pass(self, zero_grad: bool, scaler) -> None:  # called by FirstPass.step
        self._first_step(zero_grad, scaler)

    @torch.no_grad()
    def _first_step(self, zero_grad: bool, scaler: tuple | None) -> None:
        """`first_step`; ``scaler = (grad_scale, found_inf)`` when called through ``GradScaler.step``."""
        if self._saved is not None:
            raise RuntimeError("SAM: first_step was called twice without second_step in between")
        groups = [(g, self._with_grads(g)) for g in self.param_groups]
        if not any(params for _, params in groups):
            raise RuntimeError("SAM: no parameter has a gradient; call loss.backward() before first_step/step")
        if scaler is not None:
            unscale_grads((p for _, params in groups for p in params), scaler[0])
        scaled, pieces = [], []
        for group, params in groups:
            grads = [p.grad for p in params]
            scales = torch._foreach_add(torch._foreach_abs(params), group["adaptive_eta"]) \
                if group["adaptive"] and params else None
            pieces.append((grads, scales))
            scaled += grads if scales is None else torch._foreach_mul(grads, scales)
        # One norm over all groups (as in Foret et al. and davda54/sam); each group has its own rho.
        norm = perturbation_norm([t.to(scaled[0].dtype) for t in scaled]) if len({t.dtype for t in scaled}) > 1 \
            else perturbation_norm(scaled)
        saved = []
        for (group, params), (grads, scales) in zip(groups, pieces):
            if not params:
                saved.append(([], []))
                continue
            copies = self._copies(params)
            torch._foreach_copy_(copies, params)  # w, restored exactly by second_step
            sam_perturbation(grads, group["rho"], scales=scales, norm=norm.to(grads[0].dtype), add_to=params)
            saved.append((params, copies))
        if scaler is not None:
            # On inf/NaN (found by the scaler, or an overflowing norm) stay at w: a device-side select,
            # so no host read here; scaler.step(opt) then skips the base step.
            found_inf = scaler[1]
            ok = torch.isfinite(norm)
            ok = ok & (torch.as_tensor(found_inf, device=ok.device) == 0)
            for params, copies in saved:
                for p, w in zip(params, copies):
                    torch.where(ok.to(p.device), p, w, out=p)
            self._first_ok = ok
        self._saved = saved
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``w`` exactly and take the base optimizer's step with the gradients at ``w + e``."""
        if self._saved is None:
            raise RuntimeError("SAM: second_step needs a first_step before it")
        if self._first_ok is not None:
            raise RuntimeError("SAM: the first step went through a GradScaler (scaler.step(opt.first_pass)); "
                               "finish it with scaler.step(opt), which unscales the second gradient and skips the "
                               "step on inf/NaN")
        self._restore()
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def _restore(self) -> None:
        for params, copies in self._saved:
            if params:
                torch._foreach_copy_(params, copies)
        self._saved = None

    @torch.no_grad()
    def _scaled_second_step(self, closure, scaler: tuple) -> None:
        """`second_step` called by ``GradScaler.step(opt)``: restore ``w``; unscale and step unless inf/NaN."""
        grad_scale, found_inf = scaler
        try:
            if closure is not None:
                raise RuntimeError("SAM: GradScaler.step(opt) takes no closure; run the second backward pass "
                                   "yourself (see the SAM docstring's mixed-precision recipe)")
            if self._saved is None:
                raise RuntimeError("SAM: scaler.step(opt) needs a first step before it: "
                                   "scaler.step(opt.first_pass) after the first backward pass")
            first_ok, self._first_ok = self._first_ok, None
            self._restore()
            if first_ok is None:
                raise RuntimeError("SAM: first_step() was called directly while a GradScaler is in use; call "
                                   "scaler.step(opt.first_pass) instead, so that the scaler checks the first "
                                   "gradient and the second one is unscaled (the weights are back at w)")
            skip = torch.as_tensor(found_inf, dtype=torch.float32, device=first_ok.device) + (~first_ok).float()
            if not any_inf(skip):  # the step's one host read, as GradScaler.step makes for any optimizer
                unscale_grads((p for g in self.param_groups for p in g["params"]), grad_scale)
                self.base_optimizer.step()
        except BaseException:
            forget_scaler(self)
            raise

    def step(self, closure: Callable[[], Tensor] | None = None):
        """One SAM step: `first_step`, ``closure()`` at ``w + e`` (it must call ``backward()``), `second_step`.

        The gradient at ``w`` must already be in ``.grad``. Returns the
        closure's loss (at ``w + e``). Without a closure, after `first_step`,
        it is `second_step` (so that ``GradScaler.step(opt)`` works, see the class
        docstring).
        """
        scaler = scaler_call(self)
        if scaler is not None:
            return self._scaled_second_step(closure, scaler)
        if closure is None:
            if self._saved is None:
                raise RuntimeError("SAM.step needs a closure that recomputes the loss and calls backward() (or "
                                   "call first_step() and second_step() yourself)")
            self.second_step()
            return None
        self.first_step(zero_grad=True)
        with torch.enable_grad():
            loss = closure()
        self.second_step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base_optimizer.zero_grad(set_to_none)

    def state_dict(self) -> dict:
        """This optimizer's groups plus the base optimizer's state (momentum buffers, Adam moments)."""
        if self._saved is not None:
            raise RuntimeError("SAM: state_dict between first_step and second_step would save the perturbed "
                               "weights; save after second_step")
        state = super().state_dict()
        state["base_optimizer"] = self.base_optimizer.state_dict()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        state_dict = dict(state_dict)
        if "base_optimizer" not in state_dict:
            raise ValueError("SAM.load_state_dict: the state has no 'base_optimizer' entry (was it saved by "
                             "saddle.optim.SAM?)")
        base = state_dict.pop("base_optimizer")
        super().load_state_dict(state_dict)
        self.base_optimizer.load_state_dict(base)
        self.param_groups = self.base_optimizer.param_groups
