"""Problems split over workers: ``F(z) = (1/M) sum_m F_m(z)``, worker m holding its own ``F_m``.

A `DistributedProblem` is a `saddle.VIProblem` whose operator is the
`WorkerGroup` mean of a local operator, a function ``(B, d) -> (B, m, d)``
giving the held workers' ``F_m`` at a common flattened point (`flatten`:
the blocks of a point side by side). `AffineWorkers` is the local operator of
affine workers ``F_m(z) = A_m z + c_m``, optionally finite sums of N samples
for the minibatch variants of the compressed solvers. `StructuredWorkers` is
an affine local operator whose ``A_m`` is diagonal + 2x2-block skew + low rank,
stored in O(d r) numbers and applied in O(d r) operations (no d x d matrix), so
d can reach 10^7.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor

from ..operator import Operator
from ..point import Point
from ..problem import VIProblem
from ..selection import Selection, as_selection, take
from .groups import WorkerGroup

__all__ = ["DistributedProblem", "AffineWorkers", "StructuredWorkers", "flatten", "unflatten"]


def flatten(z: Point) -> Tensor:
    """The blocks of a point side by side: ``(B, d)`` with ``d = sum n_i``."""
    return z[0] if len(z) == 1 else torch.cat(z, dim=-1)


def unflatten(v: Tensor, dims: Sequence[int]) -> Point:
    """Split the last dimension of ``v`` into blocks of sizes ``dims``: the inverse of `flatten`."""
    return tuple(torch.split(v, list(dims), dim=-1))


class AffineWorkers:
    """Affine local operators ``F_m(z) = A_m z + c_m`` on flattened points (the workers held here).

    Optionally a finite sum per worker, ``F_m = (1/N) sum_j F_{m,j}`` with affine
    components ``F_{m,j}(z) = A_{m,j} z + c_{m,j}`` (N samples per worker), for the
    minibatch variants of the compressed solvers. The full ``F_m`` is always
    computed from ``A_m, c_m`` (the components' average must equal it).

    Args:
        A: ``(B, m, d, d)`` the local matrices of the workers held by this process.
        c: ``(B, m, d)`` the local offsets.
        components: None, or ``(A_j, c_j)`` of shapes ``(B, m, N, d, d)`` and ``(B, m, N, d)``:
            every held worker's N sample operators.
    """

    def __init__(self, A: Tensor, c: Tensor, components: tuple[Tensor, Tensor] | None = None):
        if A.dim() != 4 or c.dim() != 3 or A.shape[:3] != c.shape or A.shape[-1] != A.shape[-2]:
            raise ValueError(f"A must be (B, m, d, d) and c (B, m, d); got {tuple(A.shape)} and {tuple(c.shape)}")
        if components is not None:
            Aj, cj = components
            B, m, d = c.shape
            if Aj.dim() != 5 or cj.dim() != 4 or Aj.shape[:2] != (B, m) or Aj.shape[3:] != (d, d) or \
                    cj.shape != Aj.shape[:4]:
                raise ValueError(f"components must be (B, m, N, d, d) and (B, m, N, d) with (B, m, d) = {(B, m, d)}; "
                                 f"got {tuple(Aj.shape)} and {tuple(cj.shape)}")
        self.A, self.c, self.components = A, c, components

    @property
    def samples(self) -> int:
        """N, the number of samples (components) per worker (1: no finite-sum structure)."""
        return 1 if self.components is None else self.components[0].shape[2]

    def __call__(self, v: Tensor) -> Tensor:
        """``(B, d) -> (B, m, d)``: every held worker's ``F_m`` at the common point ``v``."""
        return (self.A @ v[:, None, :, None]).squeeze(-1) + self.c

    def sample(self, v: Tensor, idx: Tensor) -> Tensor:
        """The held workers' minibatch means ``(1/b) sum_i F_{m, idx[:, m, i]}(v)``: ``(B, m, d)``.

        Args:
            v: ``(B, d)`` the common point.
            idx: ``(B, m, b)`` int64 sample indices in ``[0, N)``, per instance and held worker.
        """
        if self.components is None:
            return self(v)  # N = 1: the only sample is F_m
        Aj, cj = self.components
        B, m = idx.shape[:2]
        bi = torch.arange(B, device=idx.device).view(B, 1, 1)
        mi = torch.arange(m, device=idx.device).view(1, m, 1)
        values = (Aj[bi, mi, idx] @ v[:, None, None, :, None]).squeeze(-1) + cj[bi, mi, idx]  # (B, m, b, d)
        return values.mean(2)

    def select(self, index) -> "AffineWorkers":
        """The workers of the selected instances: an int, a slice, a ``(B,)`` mask or positions (`saddle.selection`)."""
        selection = as_selection(index, self.c.shape[0])
        comp = None if self.components is None else tuple(take(t, selection) for t in self.components)
        return AffineWorkers(take(self.A, selection), take(self.c, selection), comp)


class StructuredWorkers:
    """Affine local operators with structured matrices, ``F_m(z) = A_m (z - z_star) + e_m`` (the workers held here).

    ``A_m = diag(a_m) + K_m + U_m U_m^T``: a diagonal, a skew-symmetric ``K_m``
    that is block diagonal with 2x2 blocks on the coordinate pairs ``(0, 1), (2, 3), ...``
    (``(K_m z)_{2i} = s_{m,i} z_{2i+1}``, ``(K_m z)_{2i+1} = -s_{m,i} z_{2i}``; with d odd
    the last coordinate has no pair and no skew term), and a low-rank PSD ``U_m U_m^T``.
    No d x d matrix is formed: the data are O(d r) numbers per worker and a call
    is ``F_m(z) = a_m * z + K_m z + U_m (U_m^T z) + c_m``, a few elementwise
    operations and two batched products of cost O(d r), with
    ``c_m = e_m - A_m z_star`` computed once here (in the data's dtype).

    The symmetric part of ``A_m`` is ``diag(a_m) + U_m U_m^T`` (the skew part
    cancels), so ``F_m`` is ``min(a_m)``-strongly monotone, and
    ``|A_m|_2 <= max(a_m) + max|s_m| + |U_m|_F^2``.

    Args:
        a: ``(B, m, d)`` the diagonals.
        s: ``(B, m, d // 2)`` the skew coefficients of the coordinate pairs.
        U: ``(B, m, d, r)`` the low-rank factors (r >= 0).
        e: ``(B, m, d)`` the offsets: ``F_m(z_star) = e_m``.
        z_star: ``(B, d)`` the common centre, or None (then ``F_m(z) = A_m z + e_m``).

    All tensors must be floating, of one dtype and on one device.
    """

    def __init__(self, a: Tensor, s: Tensor, U: Tensor, e: Tensor, z_star: Tensor | None = None):
        for name, t in (("a", a), ("s", s), ("U", U), ("e", e), ("z_star", z_star)):
            if t is None:
                continue
            if not isinstance(t, Tensor) or not t.dtype.is_floating_point:
                raise ValueError(f"{name} must be a floating tensor, got "
                                 f"{t.dtype if isinstance(t, Tensor) else type(t).__name__}")
            if t.dtype != a.dtype or t.device != a.device:
                raise ValueError(f"{name} is {t.dtype} on {t.device} but a is {a.dtype} on {a.device}: "
                                 "give every tensor in one dtype on one device")
        if a.dim() != 3:
            raise ValueError(f"a must be (B, m, d), got shape {tuple(a.shape)}")
        B, m, d = a.shape
        if s.shape != (B, m, d // 2):
            raise ValueError(f"s must be (B, m, d // 2) = {(B, m, d // 2)}, got shape {tuple(s.shape)}")
        if U.dim() != 4 or U.shape[:3] != (B, m, d):
            raise ValueError(f"U must be (B, m, d, r) with (B, m, d) = {(B, m, d)}, got shape {tuple(U.shape)}")
        if e.shape != (B, m, d):
            raise ValueError(f"e must be (B, m, d) = {(B, m, d)}, got shape {tuple(e.shape)}")
        if z_star is not None and z_star.shape != (B, d):
            raise ValueError(f"z_star must be (B, d) = {(B, d)}, got shape {tuple(z_star.shape)}")
        self.a, self.s = a, s
        # the factors as rows, (B, m, r, d): each read once, contiguously, per product (a thin batched
        # matrix product on the (d, r) layout is several times slower on CPUs)
        self.U_rows = U.transpose(-1, -2).contiguous()
        self.c = e if z_star is None else e - self._apply(z_star)

    @property
    def samples(self) -> int:
        """N = 1: no finite-sum structure."""
        return 1

    @property
    def rank(self) -> int:
        """r, the rank of the low-rank parts."""
        return self.U_rows.shape[-2]

    @property
    def U(self) -> Tensor:
        """``(B, m, d, r)`` the low-rank factors (a view)."""
        return self.U_rows.mT

    def _apply(self, v: Tensor) -> Tensor:
        """``A_m v`` for every held worker: ``(B, d) -> (B, m, d)``."""
        return self.__call__(v, offset=False)

    def __call__(self, v: Tensor, *, offset: bool = True) -> Tensor:
        """``(B, d) -> (B, m, d)``: every held worker's ``F_m`` at the common point ``v`` (``A_m v`` without offset)."""
        B, m, d = self.a.shape
        if v.shape != (B, d):
            raise ValueError(f"v must be (B, d) = {(B, d)}, got shape {tuple(v.shape)}")
        vb = v.unsqueeze(1)                                                 # (B, 1, d)
        out = torch.addcmul(self.c, self.a, vb) if offset else self.a * vb  # a_m * v (+ c_m): (B, m, d), fresh
        h = self.s.shape[-1]
        if h:  # the skew pairs, in place on the fresh result
            pairs = vb[..., :2 * h].unflatten(-1, (h, 2))                   # (B, 1, h, 2)
            o = out[..., :2 * h].unflatten(-1, (h, 2))
            o[..., 0].addcmul_(self.s, pairs[..., 1])
            o[..., 1].addcmul_(self.s, pairs[..., 0], value=-1)
        r = self.U_rows.shape[-2]
        dots = torch.bmm(self.U_rows.view(B, m * r, d), v.unsqueeze(-1)).view(B, m, r, 1)  # U_m^T v, all workers
        for j in range(r):  # U_m (U_m^T v): r updates
            out.addcmul_(self.U_rows[:, :, j], dots[:, :, j])
        return out

    def select(self, index) -> "StructuredWorkers":
        """The workers of the selected instances: an int, a slice, a ``(B,)`` mask or positions (`saddle.selection`)."""
        selection = as_selection(index, self.a.shape[0])
        return StructuredWorkers(take(self.a, selection), take(self.s, selection), take(self.U, selection),
                                 take(self.c, selection))


class DistributedProblem(VIProblem):
    """A VI whose operator is the average of M workers' operators, ``F = (1/M) sum_m F_m``.

    ``F`` (used by the driver's convergence checks) is ``group.mean`` of the
    local operators, so under `torch.distributed` it is a collective: every
    process evaluates it at the same time (they all run the same loop).

    Args:
        local_operator: a function ``(B, d) -> (B, m, d)`` giving the held workers'
            ``F_m`` at a common flattened point (e.g. `AffineWorkers`).
        domain: the set Z, as for `VIProblem`.
        z0: the starting point, as for `VIProblem`.
        group: the `WorkerGroup`.
        local_lipschitz: ``(B, M)`` Lipschitz constants ``L_m`` of every worker's
            operator (known to every process), if known.
        sample_lipschitz: ``(B, M)`` for a finite-sum local operator (one with
            ``samples`` N > 1 and ``sample(v, idx)``, e.g. `AffineWorkers` with
            components): ``Lhat_m = sqrt((1/N) sum_j L_{m,j}^2)``, the mean-square
            Lipschitz constant of worker m's samples, if known.
        **kwargs: passed to `VIProblem` (``lipschitz``, ``strong_monotonicity``,
            ``reference``, ``name``, ...).
    """

    def __init__(self, local_operator: Callable[[Tensor], Tensor], domain, z0, *, group: WorkerGroup,
                 local_lipschitz=None, sample_lipschitz=None, **kwargs):
        if not isinstance(group, WorkerGroup):
            raise TypeError(f"group must be a WorkerGroup, got {type(group).__name__}")
        if not callable(local_operator):
            raise TypeError(f"local_operator must be callable, got {type(local_operator).__name__}")
        self.group = group
        self.local_operator = local_operator
        super().__init__(self._full_operator, domain, z0, **kwargs)
        self._local_lipschitz = self._per_worker(local_lipschitz, "local_lipschitz")
        if self.samples > 1 and not callable(getattr(local_operator, "sample", None)):
            raise TypeError("a local operator with samples > 1 needs a sample(v, idx) method")
        self._sample_lipschitz = self._per_worker(sample_lipschitz, "sample_lipschitz")

    def _per_worker(self, value, name: str) -> Tensor | None:
        """A per-instance, per-worker constant as a ``(B, M)`` float64 CPU tensor (None stays None)."""
        if value is None:
            return None
        value = torch.as_tensor(value, dtype=torch.float64).cpu()
        if value.shape != (self.batch_size, self.group.size):
            raise ValueError(f"{name} must have shape (B, M) = ({self.batch_size}, {self.group.size}), "
                             f"got {tuple(value.shape)}")
        return value

    @property
    def workers(self) -> int:
        """The number of workers M."""
        return self.group.size

    @property
    def dim(self) -> int:
        """The flattened dimension d = sum of the block sizes."""
        return sum(self.dims)

    @property
    def samples(self) -> int:
        """N, the samples per worker of a finite-sum local operator ``F_m = (1/N) sum_j F_{m,j}`` (1 if none)."""
        N = getattr(self.local_operator, "samples", 1)
        return 1 if N is None else int(N)

    def local_F(self, v: Tensor) -> Tensor:
        """The held workers' operators at the flattened point ``v`` ``(B, d)``: ``(B, m, d)``."""
        return self.local_operator(v)

    def local_sample(self, v: Tensor, idx: Tensor) -> Tensor:
        """The held workers' minibatch means ``(1/b) sum_i F_{m, idx[:, m, i]}(v)``, ``(B, m, d)``.

        ``idx`` is ``(B, m, b)`` int64 in ``[0, N)``; with N = 1 the only sample is ``F_m``.
        """
        if self.samples == 1 and not callable(getattr(self.local_operator, "sample", None)):
            return self.local_F(v)
        return self.local_operator.sample(v, idx)

    def _full_operator(self, z: Point) -> Point:
        # all_sum, not group.mean: F here serves the driver's checks (monitoring), not the solver's
        # exchanges, so it is neither counted in group.traffic nor throttled
        return unflatten(self.group.all_sum(self.local_F(flatten(z)).sum(1)) / self.group.size, self.dims)

    def local_lipschitz(self) -> Tensor | None:
        """``(B, M)`` the workers' Lipschitz constants (float64, CPU), or None."""
        return self._local_lipschitz

    def mean_square_lipschitz(self) -> Tensor | None:
        """``(B,)`` ``Lbar = sqrt((1/M) sum_m L_m^2)``; the global L when the local ones are unknown."""
        if self._local_lipschitz is not None:
            return self._local_lipschitz.square().mean(-1).sqrt()
        return self.lipschitz()

    def mean_square_sample_lipschitz(self) -> Tensor | None:
        """``(B,)`` ``Lhat = sqrt((1/M) sum_m Lhat_m^2)`` over all workers' samples, or None if unknown.

        With one sample per worker it is `mean_square_lipschitz`.
        """
        if self._sample_lipschitz is not None:
            return self._sample_lipschitz.square().mean(-1).sqrt()
        return self.mean_square_lipschitz() if self.samples == 1 else None

    @property
    def selectable(self) -> bool:
        """Whether a selection evaluates only its own instances: when the local operator selects its data."""
        return callable(getattr(self.local_operator, "select", None))

    def select_into(self, new: "DistributedProblem", selection: Selection) -> None:
        """`VIProblem.select_into`, plus the local operator and the per-worker constants of the selected instances.

        The local operator selects its own data (``local_operator.select(index)``, as `AffineWorkers`
        does); one without ``select`` is a ``TypeError``.
        """
        if not callable(getattr(self.local_operator, "select", None)):
            raise TypeError(f"the local operator ({type(self.local_operator).__name__}) has no select(index) "
                            "method, so the selected instances' workers cannot be built")
        new.local_operator = self.local_operator.select(selection)
        new.operator = Operator(new._full_operator)
        new._local_lipschitz = take(self._local_lipschitz, selection)
        new._sample_lipschitz = take(self._sample_lipschitz, selection)
        super().select_into(new, selection)
