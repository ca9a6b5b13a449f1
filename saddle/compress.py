"""Compression operators for distributed solvers, their constants and their exact bit costs.

A compressor maps the messages of a round, a ``(B, m, d)`` tensor (B
instances, m workers held by this process, d coordinates), to compressed
messages of the same shape, and says how many bits each message costs on the
wire. Two classes matter for the theory (Beznosikov et al., arXiv 2110.03313):

- **unbiased** ``Q``: ``E Q(x) = x`` and ``E |Q(x) - x|^2 <= omega |x|^2``
  (`RandK`: ``omega = d / k - 1``; `PermK`; `RandomDithering`;
  `NaturalCompression`: ``omega = 1/8``), used by `saddle.solvers.MASHA1`;
- **contractive** ``C``: ``E |C(x) - x|^2 <= (1 - delta) |x|^2`` with
  ``delta in (0, 1]`` (`TopK`: ``delta = k / d``), used with error feedback by
  `saddle.solvers.MASHA2`.

`Identity` is both (``omega = 0``, ``delta = 1``).

**Bits.** `Compressor.bits` is the exact length of one worker's message in a
fixed-length code: ``value_bits`` per transmitted value (the dtype's width:
64 for float64, 32 for float32) and ``ceil(log2 d)`` per transmitted index.
`RandK` counts its indices unless ``send_indices=False`` (the receiver can
regenerate them from the shared seed); `PermK`'s coordinates always come
from the shared seed, so it sends values only.

**Randomness** is counter-based (`uniform`): a random number is a hash of
``(seed, round, stream, worker, coordinate)``, so it is the same on every
process of a `torch.distributed` run and in the single-process simulation,
the same for an instance whether it is solved alone or in a batch, and a step
stays a pure function of its inputs (no generator state).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import NamedTuple

import torch
from torch import Tensor

__all__ = [
    "Compressor", "Identity", "RandK", "TopK", "PermK", "RandomDithering", "NaturalCompression",
    "RandomKey", "uniform", "index_bits", "value_bits", "get_compressor",
]

_M32 = 0xFFFFFFFF


def _mul32(h: Tensor, c: int) -> Tensor:
    """``(h * c) mod 2^32`` for ``0 <= h < 2^32`` without int64 overflow (16-bit halves)."""
    lo = (h & 0xFFFF) * c
    hi = (((h >> 16) * c) & 0xFFFF) << 16
    return (lo + hi) & _M32


def _fmix(h: Tensor) -> Tensor:
    """MurmurHash3's 32-bit finalizer on int64 tensors holding values in ``[0, 2^32)``."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x85EBCA6B)
    h = h ^ (h >> 13)
    h = _mul32(h, 0xC2B2AE35)
    return h ^ (h >> 16)


def _fmix_int(h: int) -> int:
    """`_fmix` on a Python int."""
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _M32
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _M32
    return h ^ (h >> 16)


def _key_hash(v):
    """The hash of a value to mix in: ``fmix((v mod 2^32) + golden)`` (int or int64 tensor)."""
    if isinstance(v, Tensor):
        return _fmix(((v ^ (v >> 32)) + 0x9E3779B9) & _M32)
    v = int(v)
    return _fmix_int(((v ^ (v >> 32)) + 0x9E3779B9) & _M32)


def _combine(h: Tensor, v) -> Tensor:
    """Mix the value ``v`` (int or int64 tensor) into the hash ``h``: ``fmix(h xor hash(v))``."""
    return _fmix(h ^ _key_hash(v))


@functools.lru_cache(maxsize=64)
def _index_hash(size: int, device: torch.device) -> Tensor:
    """``hash(i)`` for ``i < size`` (cached: the coordinates' part of every draw)."""
    return _key_hash(torch.arange(size, dtype=torch.int64, device=device))


def uniform(seed: Tensor, round: Tensor, stream: int, workers: Tensor | None, size: int) -> Tensor:
    """Counter-based uniform numbers in (0, 1), float64, shape ``(B, m, size)`` (``m = 1`` without workers).

    ``u[b, j, i] = (hash(seed_b, round_b, stream, workers_j, i) + 1/2) / 2^32``,
    the hash a chain ``h <- fmix(h xor fmix(value + golden))`` of MurmurHash3's
    32-bit finalizer; identical on every device and process.

    Args:
        seed: ``(B,)`` int64 seeds, one per instance.
        round: ``(B,)`` int64 round counters.
        stream: an integer naming what the numbers are for (compressor, coin, ...).
        workers: ``(m,)`` int64 worker indices, or None for numbers shared by all workers.
        size: the number of numbers per instance and worker.
    """
    dev = seed.device
    h = _combine(_key_hash(seed), round)
    h = _combine(h, stream).reshape(-1, 1, 1)
    w = -1 if workers is None else workers.to(dev).reshape(1, -1, 1)
    h = _combine(h, w)
    h = _fmix(h ^ _index_hash(size, dev).reshape(1, 1, -1))
    return (h.to(torch.float64) + 0.5) / 4294967296.0


class RandomKey(NamedTuple):
    """Where a compressor's random numbers come from (see `uniform`).

    Attributes:
        seed: ``(B,)`` int64 seeds.
        round: ``(B,)`` int64 round counters.
        stream: an integer distinguishing the uses within a round.
        workers: ``(m,)`` int64 indices of the workers whose messages are compressed
            (``[-1]`` for the server).
        size: the number of workers M in the group (for `PermK`).
    """

    seed: Tensor
    round: Tensor
    stream: int
    workers: Tensor
    size: int

    def uniform(self, d: int, *, shared: bool = False) -> Tensor:
        """``(B, m, d)`` uniforms per worker (``(B, 1, d)`` shared by the workers when ``shared``)."""
        return uniform(self.seed, self.round, self.stream, None if shared else self.workers, d)


def index_bits(d: int) -> int:
    """Bits of one index into ``d`` coordinates: ``ceil(log2 d)`` (0 for ``d = 1``)."""
    return max(0, math.ceil(math.log2(d))) if d > 1 else 0


def value_bits(dtype: torch.dtype) -> int:
    """Bits of one value of ``dtype`` (64 for float64, 32 for float32, 16 for half types)."""
    return torch.finfo(dtype).bits


def _check_int(value, name: str, low: int = 1) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Integral) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def _check_ratio(value, name: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, Real) or not 0 < value <= 1:
        raise ValueError(f"{name} must be a number in (0, 1], got {value!r}")


def _mask_from_indices(shape, idx: Tensor, dtype, device) -> Tensor:
    return torch.zeros(shape, dtype=dtype, device=device).scatter_(-1, idx, 1.0)


class Compressor:
    """Base class: ``compress(x, key)`` on ``(B, m, d)`` messages and ``bits(d, dtype)`` per message."""

    #: ``E Q(x) = x`` (MASHA1's compressors).
    unbiased: bool = False
    #: whether the compressor needs worker indices from a group (`PermK`).
    per_worker: bool = False

    def omega(self, d: int, workers: int = 1) -> float | None:
        """The variance constant ``omega`` of an unbiased compressor on ``d`` coordinates, or None."""
        return None

    def delta(self, d: int) -> float | None:
        """The contraction constant ``delta`` on ``d`` coordinates (``E|C(x) - x|^2 <= (1 - delta)|x|^2``), or None."""
        return None

    def compress(self, x: Tensor, key: RandomKey) -> Tensor:
        """The compressed messages, shaped like ``x`` ``(B, m, d)``."""
        raise NotImplementedError

    def bits(self, d: int, dtype: torch.dtype, worker: int = 0, workers: int = 1) -> int:
        """Exact bits of one compressed message of ``d`` coordinates of ``dtype`` sent by ``worker`` of ``workers``."""
        raise NotImplementedError

    def message_bits(self, x: Tensor, key: RandomKey) -> Tensor:
        """Bits of each message in ``x`` ``(B, m, d)``: a ``(B, m)`` int64 tensor."""
        d = x.shape[-1]
        per = [self.bits(d, x.dtype, int(w), key.size) for w in key.workers.tolist()]
        return torch.tensor(per, dtype=torch.int64, device=x.device).expand(x.shape[0], len(per))

    def _k(self, d: int) -> int:
        k = self.k if self.k is not None else max(1, round(self.ratio * d))
        if k > d:
            raise ValueError(f"{type(self).__name__}: k = {k} is larger than the dimension d = {d}")
        return k


@dataclass(frozen=True)
class Identity(Compressor):
    """No compression: ``Q(x) = x``; ``omega = 0``, ``delta = 1``; ``d`` values per message."""

    unbiased = True

    def omega(self, d, workers=1):
        return 0.0

    def delta(self, d):
        return 1.0

    def compress(self, x, key):
        return x

    def bits(self, d, dtype, worker=0, workers=1):
        return d * value_bits(dtype)


@dataclass(frozen=True)
class RandK(Compressor):
    """Random sparsification: keep k uniformly random coordinates, scaled by ``d / k``.

    ``Q(x) = (d / k) sum_{i in S} x_i e_i`` with S a uniform k-subset: unbiased with
    ``omega = d / k - 1``. Each worker draws its own S.

    Args:
        k: the number of coordinates kept (or give ``ratio``).
        ratio: ``k = max(1, round(ratio * d))`` when ``k`` is None (default 0.1).
        send_indices: count ``ceil(log2 d)`` bits per index (False: the
            receiver regenerates S from the shared seed; values only).
    """

    k: int | None = None
    ratio: float | None = None
    send_indices: bool = True

    unbiased = True

    def __post_init__(self):
        _check_int(self.k, "k")
        _check_ratio(self.ratio, "ratio")
        if self.k is None and self.ratio is None:
            object.__setattr__(self, "ratio", 0.1)
        if not isinstance(self.send_indices, bool):
            raise TypeError(f"send_indices must be a bool, got {type(self.send_indices).__name__}")

    def omega(self, d, workers=1):
        return d / self._k(d) - 1.0

    def compress(self, x, key):
        d = x.shape[-1]
        k = self._k(d)
        idx = key.uniform(d).topk(k, dim=-1).indices
        mask = _mask_from_indices(x.shape, idx, x.dtype, x.device)
        return x * mask * (d / k)

    def bits(self, d, dtype, worker=0, workers=1):
        k = self._k(d)
        return k * (value_bits(dtype) + (index_bits(d) if self.send_indices else 0))


@dataclass(frozen=True)
class TopK(Compressor):
    """Greedy sparsification: keep the k coordinates of largest magnitude (unscaled).

    Contractive with ``delta = k / d`` (``|C(x) - x|^2 <= (1 - k/d) |x|^2``); biased.

    Args:
        k: the number of coordinates kept (or give ``ratio``).
        ratio: ``k = max(1, round(ratio * d))`` when ``k`` is None (default 0.1).
    """

    k: int | None = None
    ratio: float | None = None

    def __post_init__(self):
        _check_int(self.k, "k")
        _check_ratio(self.ratio, "ratio")
        if self.k is None and self.ratio is None:
            object.__setattr__(self, "ratio", 0.1)

    def delta(self, d):
        return self._k(d) / d

    def compress(self, x, key):
        k = self._k(x.shape[-1])
        idx = x.abs().topk(k, dim=-1).indices
        return x * _mask_from_indices(x.shape, idx, x.dtype, x.device)

    def bits(self, d, dtype, worker=0, workers=1):
        return self._k(d) * (value_bits(dtype) + index_bits(d))


@dataclass(frozen=True)
class PermK(Compressor):
    """Permutation sparsification (Szlendak et al. 2021): the workers split the coordinates.

    A random permutation ``pi`` of the d coordinates, shared by the M workers,
    gives coordinate i to worker ``rank_pi(i) mod M``; worker m sends its
    coordinates scaled by M. Each worker's message is unbiased with
    ``omega = M - 1``, and the average of the M messages of the same vector is
    exact. Worker m sends ``ceil((d - m) / M)`` values and no indices.
    """

    unbiased = True
    per_worker = True

    def omega(self, d, workers=1):
        return float(workers - 1)

    def compress(self, x, key):
        d = x.shape[-1]
        M = key.size
        rank = key.uniform(d, shared=True).argsort(dim=-1).argsort(dim=-1)  # (B, 1, d)
        mine = (rank % M) == key.workers.to(x.device).reshape(1, -1, 1)
        return torch.where(mine, x * M, torch.zeros_like(x))

    def bits(self, d, dtype, worker=0, workers=1):
        if worker < 0:
            raise ValueError("PermK splits coordinates among workers; it cannot compress the server's message")
        return max(0, (d - worker + workers - 1) // workers) * value_bits(dtype)


@dataclass(frozen=True)
class RandomDithering(Compressor):
    """Random dithering with s levels (QSGD, Alistarh et al. 2017), unbiased.

    ``Q(x)_i = |x| sign(x_i) xi_i / s`` with ``xi_i`` the level ``floor(s |x_i| / |x|)``
    rounded up with probability ``s |x_i| / |x| - floor(...)``;
    ``omega = min(d / s^2, sqrt(d) / s)``. Fixed-length code: one value for
    ``|x|`` and ``1 + ceil(log2(s + 1))`` bits per coordinate (sign and level).

    Args:
        s: the number of levels.
    """

    s: int = 1
    unbiased = True

    def __post_init__(self):
        _check_int(self.s, "s")

    def omega(self, d, workers=1):
        return min(d / self.s**2, math.sqrt(d) / self.s)

    def compress(self, x, key):
        nrm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        scaled = torch.where(nrm > 0, self.s * x.abs() / nrm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        low = scaled.floor()
        up = key.uniform(x.shape[-1]).to(x.dtype) < (scaled - low)
        return nrm * torch.sign(x) * (low + up.to(x.dtype)) / self.s

    def bits(self, d, dtype, worker=0, workers=1):
        return value_bits(dtype) + d * (1 + math.ceil(math.log2(self.s + 1)))


@dataclass(frozen=True)
class NaturalCompression(Compressor):
    """Natural compression (Horváth et al. 2019): random rounding to a power of two, unbiased.

    ``t = |x_i|`` in ``[2^a, 2^(a+1)]`` becomes ``2^(a+1)`` with probability
    ``(t - 2^a) / 2^a`` and ``2^a`` otherwise; ``omega = 1/8``. One sign bit and
    the exponent (8 bits for float32, 11 for float64, 5 for float16) per coordinate.
    """

    unbiased = True

    def omega(self, d, workers=1):
        return 0.125

    def compress(self, x, key):
        t = x.abs()
        safe = torch.where(t > 0, t, torch.ones_like(t))
        low = torch.exp2(torch.floor(torch.log2(safe)))
        up = key.uniform(x.shape[-1]).to(x.dtype) < (safe - low) / low
        out = torch.where(up, 2 * low, low)
        return torch.where(t > 0, torch.sign(x) * out, torch.zeros_like(x))

    def bits(self, d, dtype, worker=0, workers=1):
        exponent = {64: 11, 32: 8, 16: 5}[value_bits(dtype)] if dtype != torch.bfloat16 else 8
        return d * (1 + exponent)


_NAMES = {"identity": Identity, "none": Identity, "randk": RandK, "topk": TopK, "permk": PermK,
          "dithering": RandomDithering, "natural": NaturalCompression}


def get_compressor(spec, name: str = "compressor") -> Compressor:
    """A compressor from an instance, None (`Identity`) or a name: ``"randk"``, ``"topk"``, ``"permk"``, ...

    Args:
        spec: a `Compressor`, None, or a name from ``identity randk topk permk dithering natural``.
        name: the argument's name, for error messages.
    """
    if spec is None:
        return Identity()
    if isinstance(spec, Compressor):
        return spec
    if isinstance(spec, str) and spec.lower() in _NAMES:
        return _NAMES[spec.lower()]()
    raise TypeError(f"{name} must be a Compressor or one of {sorted(_NAMES)}, got {spec!r}")
