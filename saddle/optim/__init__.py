"""``torch.optim.Optimizer`` adapters of saddle's methods, for training ``nn.Module`` players.

`CGD` and `ACGD` train a min player and a max player on one loss with
competitive gradient steps (conjugate gradients on Hessian-vector products).
`SAM` wraps any optimizer with sharpness-aware minimization (and ASAM).
`ExtraSGD`, `ExtraAdam` and `OptimisticAdam` train each player with its own
optimizer in extragradient (``extrapolation()`` then ``step()``) or optimistic steps.
"""

from .competitive import ACGD, CGD
from .extragradient import ExtraAdam, ExtraSGD, OptimisticAdam
from .sam import SAM

__all__ = ["SAM", "CGD", "ACGD", "ExtraSGD", "ExtraAdam", "OptimisticAdam"]
