"""Mixed precision (``torch.amp.GradScaler``) for the optimizers that take two calls per iteration.

``GradScaler.step(optimizer)`` was made for one call per iteration: it unscales
the gradients, checks them for inf/NaN and calls ``optimizer.step()`` only if
they are finite; ``unscale_`` and ``step`` may each run once per optimizer
between two ``update()`` calls. SAM, ExtraSGD and ExtraAdam take two gradients
per iteration and leave the parameters at a moved point between their calls.
Two pieces make them follow the scaler's rules:

- the optimizer sets ``_step_supports_amp_scaling``, the attribute by which
  ``GradScaler.step`` hands scale handling to the optimizer (as for
  ``torch.optim.Adam(fused=True)``): the scaler checks the gradients, records
  what it found for ``update()``, sets ``optimizer.grad_scale`` (None if the
  gradients were already unscaled with ``scaler.unscale_``) and
  ``optimizer.found_inf``, and always calls ``optimizer.step()``; the optimizer
  unscales, and on inf/NaN restores the saved parameters and skips its update;
- `FirstPass`, the optimizer's ``first_pass`` attribute, is the first call
  shaped as an optimizer of its own, so that ``scaler.step(opt.first_pass)``
  unscales and checks the first gradient too, recorded for ``update()`` under
  its own entry (the scaler's once-per-update rule holds for each object).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable

import torch
from torch import Tensor

__all__ = ["FirstPass"]


class FirstPass:
    """The first call of a two-call optimizer (``SAM.first_step``, ``ExtraAdam.extrapolation``...) as an optimizer.

    Pass it to ``GradScaler.step`` after the first backward pass::

        scaler.scale(loss).backward()
        scaler.step(opt.first_pass)       # unscale, check, first call (skipped on inf/NaN)
        opt.zero_grad()
        scaler.scale(loss_at_moved_point).backward()
        scaler.step(opt)                  # unscale, check, second call (skipped, w restored, on inf/NaN)
        scaler.update()                   # backs off if either pass found inf/NaN

    ``step(zero_grad=False)`` runs the first call (``scaler.step`` forwards
    keyword arguments: ``scaler.step(opt.first_pass, zero_grad=True)``). Without
    a scaler, or with a disabled one, it is the plain first call. ``param_groups``
    are the optimizer's, so ``scaler.unscale_(opt.first_pass)`` (to clip the
    first gradient) works as for any optimizer.
    """

    # GradScaler.step: leave unscaling and skipping to step(), with grad_scale and found_inf set.
    _step_supports_amp_scaling = True

    def __init__(self, optimizer):
        self._optimizer = optimizer

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (the same list), which ``GradScaler`` unscales and checks."""
        return self._optimizer.param_groups

    def step(self, zero_grad: bool = False) -> None:
        """The optimizer's first call; unscaled and checked when called by an enabled ``GradScaler``."""
        scaler = scaler_call(self)
        try:
            self._optimizer._first_pass(zero_grad, scaler)
        except BaseException:
            forget_scaler(self)
            raise

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The optimizer's ``zero_grad``."""
        self._optimizer.zero_grad(set_to_none)

    def __repr__(self) -> str:
        return f"{type(self._optimizer).__name__}.first_pass"


def scaler_call(obj) -> tuple[Tensor | None, Tensor | int] | None:
    """``(grad_scale, found_inf)`` if ``obj.step()`` is being called by an enabled ``GradScaler``, else None.

    ``grad_scale`` is None where the gradients were already unscaled (``scaler.unscale_``).
    """
    if "found_inf" not in vars(obj):
        return None
    return vars(obj).get("grad_scale"), vars(obj)["found_inf"]


def forget_scaler(obj) -> None:
    """Drop the attributes ``GradScaler.step`` set, when ``step()`` raises before the scaler could."""
    for name in ("grad_scale", "found_inf"):
        vars(obj).pop(name, None)


def unscale_grads(params: Iterable[Tensor], grad_scale: Tensor | None) -> None:
    """Divide the gradients of ``params`` by the scale in place, as ``GradScaler.unscale_`` does.

    The same arithmetic as the scaler (a multiplication by the reciprocal,
    taken in float64): exact for its power-of-two scales.
    """
    if grad_scale is None:
        return
    inv = grad_scale.double().reciprocal().float()
    by_device: dict[torch.device, list[Tensor]] = defaultdict(list)
    for p in params:
        if p.grad is not None:
            by_device[p.grad.device].append(p.grad)
    for device, grads in by_device.items():
        torch._foreach_mul_(grads, inv.to(device))


def any_inf(found_inf: Tensor | int) -> bool:
    """The scaler's verdict on the host (one read, as ``GradScaler.step`` makes for any optimizer)."""
    return bool(found_inf)
