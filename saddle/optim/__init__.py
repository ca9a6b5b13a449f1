"""``torch.optim.Optimizer`` adapters of saddle's methods, for training ``nn.Module`` players.

`CGD` and `ACGD` train a min player and a max player on one loss with
competitive gradient steps (conjugate gradients on Hessian-vector products).
`SAM` wraps any optimizer with sharpness-aware minimization (and ASAM).
"""

from .competitive import ACGD, CGD
from .sam import SAM

__all__ = ["SAM", "CGD", "ACGD"]
