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

**The wire.** `Compressor.encode` turns the messages into the bytes that
cross the network, a ``(B, m, n)`` uint8 tensor with the same n for every
worker (collectives need equal sizes), and `Compressor.decode` /
`Compressor.decode_sum` turn gathered payloads back into vectors;
``decode(encode(x)) == compress(x)`` bit for bit. Payloads hold values in the
messages' dtype, indices in the narrowest integer type that holds d
(`index_dtype`: uint8, int16, int32 or int64), and packed codes (dithering,
natural compression) ``width`` bits each, little-endian, the last byte padded.

**Bits.** `Compressor.bits` is the exact length of one worker's payload in
bits: ``value_bits`` per value (the dtype's width: 64 for float64, 32 for
float32), ``index_bits(d)`` per transmitted index (the width of
`index_dtype`), the codes' widths. The payload holds ``ceil(bits / 8)`` bytes:
the one documented header is the padding of packed codes to a whole byte
(fewer than 8 bits per message; none for the sparsifiers and `Identity`).
`RandK` and `PermK` send values only: every rank regenerates the kept
coordinates from the shared seed (`RandK(send_indices=True)` sends them too).

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
    "RandomKey", "uniform", "index_bits", "index_dtype", "value_bits", "get_compressor",
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


def index_dtype(d: int) -> torch.dtype:
    """The narrowest integer dtype that holds the indices ``0 .. d - 1``: uint8, int16, int32 or int64."""
    for dtype in (torch.uint8, torch.int16, torch.int32):
        if d - 1 <= torch.iinfo(dtype).max:
            return dtype
    return torch.int64


def index_bits(d: int) -> int:
    """Bits of one index into ``d`` coordinates on the wire: the width of `index_dtype` (8, 16, 32 or 64)."""
    return torch.iinfo(index_dtype(d)).bits


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


def _to_bytes(t: Tensor) -> Tensor:
    """``(..., n)`` of any dtype as its raw bytes ``(..., n * itemsize)`` uint8 (native byte order)."""
    return t.contiguous().view(torch.uint8) if t.dtype != torch.uint8 else t


def _from_bytes(b: Tensor, dtype: torch.dtype) -> Tensor:
    """The inverse of `_to_bytes`: ``(..., n * itemsize)`` uint8 read as ``(..., n)`` of ``dtype``."""
    if dtype == torch.uint8:
        return b
    size = torch.empty((), dtype=dtype).element_size()
    if b.stride(-1) != 1 or any(stride % size for stride in b.stride()[:-1]):
        # a slice of a payload (values, then indices); `contiguous` keeps the strides of size-1 dimensions
        b = b.clone(memory_format=torch.contiguous_format)
    return b.view(dtype)


def _pack(codes: Tensor, width: int) -> Tensor:
    """``(..., n)`` integer codes below ``2^width`` packed ``width`` bits each: ``(..., ceil(n width / 8))`` uint8."""
    shifts = torch.arange(width, device=codes.device)
    bits = ((codes.to(torch.int64).unsqueeze(-1) >> shifts) & 1).flatten(-2)
    bits = torch.nn.functional.pad(bits, (0, -bits.shape[-1] % 8))
    return (bits.unflatten(-1, (-1, 8)) << torch.arange(8, device=codes.device)).sum(-1).to(torch.uint8)


def _unpack(packed: Tensor, width: int, n: int) -> Tensor:
    """The inverse of `_pack`: ``(..., n)`` int64 codes."""
    bits = ((packed.to(torch.int64).unsqueeze(-1) >> torch.arange(8, device=packed.device)) & 1).flatten(-2)
    return (bits[..., :n * width].unflatten(-1, (n, width)) << torch.arange(width, device=packed.device)).sum(-1)


class Compressor:
    """Base class: ``compress(x, key)`` on ``(B, m, d)`` messages, their wire format and ``bits(d, dtype)``.

    A subclass defines `compress` and `bits`, and the wire: `encode` / `decode`
    (dense), or, for a sparsifier, ``_sparse(x, key)`` giving the kept
    coordinates and their (scaled) values, from which the base class builds
    all four. `decode_sum` averages gathered payloads without forming the M
    dense messages when the compressor is sparse (``O(M k)``, not ``O(M d)``).
    """

    #: ``E Q(x) = x`` (MASHA1's compressors).
    unbiased: bool = False
    #: whether the compressor needs worker indices from a group (`PermK`).
    per_worker: bool = False
    #: whether ``_sparse`` / ``_sparse_decode`` define the compressor (k values per message).
    sparse: bool = False

    def omega(self, d: int, workers: int = 1) -> float | None:
        """The variance constant ``omega`` of an unbiased compressor on ``d`` coordinates, or None."""
        return None

    def delta(self, d: int) -> float | None:
        """The contraction constant ``delta`` on ``d`` coordinates (``E|C(x) - x|^2 <= (1 - delta)|x|^2``), or None."""
        return None

    def compress(self, x: Tensor, key: RandomKey) -> Tensor:
        """The compressed messages, shaped like ``x`` ``(B, m, d)``."""
        if self.sparse:
            idx, vals = self._sparse(x, key)
            return torch.zeros_like(x).scatter_add_(-1, idx, vals)
        raise NotImplementedError

    def bits(self, d: int, dtype: torch.dtype, worker: int = 0, workers: int = 1) -> int:
        """Exact bits of one compressed message of ``d`` coordinates of ``dtype`` sent by ``worker`` of ``workers``."""
        raise NotImplementedError

    def payload_bytes(self, d: int, dtype: torch.dtype, workers: int = 1) -> int:
        """Bytes of one message on the wire, the same for every worker: ``ceil(bits / 8)``."""
        return math.ceil(self.bits(d, dtype, 0, workers) / 8)

    def encode(self, x: Tensor, key: RandomKey) -> Tensor:
        """The messages ``x`` ``(B, m, d)`` as payloads: ``(B, m, payload_bytes)`` uint8."""
        if self.sparse:
            idx, vals = self._sparse(x, key)
            return self._sparse_payload(idx, vals, x.shape[-1])
        raise NotImplementedError

    def encode_difference(self, a: Tensor, b: Tensor, key: RandomKey) -> Tensor:
        """``encode(a - b)``, bit for bit; a sparsifier whose coordinates come from the seed reads
        only its k coordinates of ``a`` and ``b`` (``O(k)``, not the ``O(d)`` of forming ``a - b``)."""
        return self.encode(a - b, key)

    def decode(self, payload: Tensor, key: RandomKey, d: int, dtype: torch.dtype) -> Tensor:
        """The compressed messages ``(B, m, d)`` of the senders ``key.workers`` from their payloads ``(B, m, n)``."""
        if self.sparse:
            idx, vals = self._sparse_decode(payload, key, d, dtype)
            return torch.zeros(*payload.shape[:-1], d, dtype=dtype, device=payload.device).scatter_add_(-1, idx, vals)
        raise NotImplementedError

    def decode_sum(self, payload: Tensor, key: RandomKey, d: int, dtype: torch.dtype, weights: Tensor,
                   out: Tensor | None = None) -> Tensor:
        """``sum_m weights[:, m] Q_m`` over the senders of the payloads ``(B, m, n)``: ``(B, d)``.

        Args:
            payload: ``(B, m, n)`` uint8, the messages of the workers ``key.workers``.
            key: the senders' key (the one they encoded with, ``workers`` naming them).
            d: the number of coordinates.
            dtype: the values' dtype.
            weights: ``(B, m)`` a weight per instance and sender.
            out: ``(B, d)`` to add the sum to, in place (``O(M k)`` for a sparsifier), or None (zeros).
        """
        w = weights.to(dtype).unsqueeze(-1)
        if out is None:
            out = torch.zeros(payload.shape[0], d, dtype=dtype, device=payload.device)
        if self.sparse:
            idx, vals = self._sparse_decode(payload, key, d, dtype)
            return out.scatter_add_(-1, idx.flatten(1), (vals * w).flatten(1))
        return out.add_((self.decode(payload, key, d, dtype) * w).sum(1))

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

    # -- sparsifiers: k (index, value) pairs per message ----------------------------------------
    def _sparse(self, x: Tensor, key: RandomKey) -> tuple[Tensor, Tensor]:
        """``(idx, vals)``, both ``(B, m, k)``: the kept coordinates and their values as sent (scaled)."""
        raise NotImplementedError

    def _sparse_payload(self, idx: Tensor, vals: Tensor, d: int) -> Tensor:
        """The wire: the values' bytes (the receivers regenerate the indices from the shared seed)."""
        return _to_bytes(vals)

    def _sparse_decode(self, payload: Tensor, key: RandomKey, d: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


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

    def encode(self, x, key):
        return _to_bytes(x)

    def decode(self, payload, key, d, dtype):
        return _from_bytes(payload, dtype)


@dataclass(frozen=True)
class RandK(Compressor):
    """Random sparsification: keep k random coordinates, one per block, each scaled by its block's size.

    The d coordinates are cut into k contiguous blocks ``I_j`` of ``floor(d / k)`` or
    ``ceil(d / k)`` coordinates; each worker keeps one uniformly random coordinate
    of every block, scaled by ``|I_j|``: ``Q(x) = sum_j |I_j| x_{i_j} e_{i_j}``.
    Unbiased with ``E|Q(x) - x|^2 = sum_j (|I_j| - 1) |x_{I_j}|^2``, so
    ``omega = ceil(d / k) - 1`` (``d / k - 1`` when k divides d, as for a uniform
    k-subset). Drawing the k coordinates costs ``O(k)`` (one shared-seed number
    per block), not ``O(d)``: every rank regenerates any worker's coordinates.

    Args:
        k: the number of coordinates kept (or give ``ratio``).
        ratio: ``k = max(1, round(ratio * d))`` when ``k`` is None (default 0.1).
        send_indices: also send the k indices (`index_dtype` each); by default only
            the values travel (the receivers regenerate the indices from the seed).
    """

    k: int | None = None
    ratio: float | None = None
    send_indices: bool = False

    unbiased = True
    sparse = True

    def __post_init__(self):
        _check_int(self.k, "k")
        _check_ratio(self.ratio, "ratio")
        if self.k is None and self.ratio is None:
            object.__setattr__(self, "ratio", 0.1)
        if not isinstance(self.send_indices, bool):
            raise TypeError(f"send_indices must be a bool, got {type(self.send_indices).__name__}")

    def omega(self, d, workers=1):
        return float(-(-d // self._k(d)) - 1)

    def _draw(self, key: RandomKey, d: int) -> tuple[Tensor, Tensor]:
        """``(B, m, k)`` the kept coordinates of the workers ``key.workers`` and ``(k,)`` their blocks' sizes."""
        k = self._k(d)
        dev = key.seed.device
        starts = torch.arange(k + 1, dtype=torch.int64, device=dev) * d // k
        sizes = starts[1:] - starts[:-1]
        offset = (key.uniform(k) * sizes).to(torch.int64)  # floor, < size since u < 1
        return starts[:-1] + offset, sizes

    def _sparse(self, x, key):
        return self._sparse_of(lambda idx: x.gather(-1, idx), key, x.shape[-1])

    def _sparse_of(self, values_at, key, d):
        idx, sizes = self._draw(key, d)
        vals = values_at(idx)
        return idx, vals * sizes.to(vals.dtype)

    def encode_difference(self, a, b, key):
        idx, vals = self._sparse_of(lambda i: a.gather(-1, i) - b.gather(-1, i), key, a.shape[-1])
        return self._sparse_payload(idx, vals, a.shape[-1])

    def _sparse_payload(self, idx, vals, d):
        values = _to_bytes(vals)
        return torch.cat([values, _to_bytes(idx.to(index_dtype(d)))], -1) if self.send_indices else values

    def _sparse_decode(self, payload, key, d, dtype):
        k = self._k(d)
        vals = _from_bytes(payload[..., :k * (value_bits(dtype) // 8)], dtype)
        if self.send_indices:
            return _from_bytes(payload[..., k * (value_bits(dtype) // 8):], index_dtype(d)).to(torch.int64), vals
        return self._draw(key, d)[0], vals

    def bits(self, d, dtype, worker=0, workers=1):
        k = self._k(d)
        return k * (value_bits(dtype) + (index_bits(d) if self.send_indices else 0))


@dataclass(frozen=True)
class TopK(Compressor):
    """Greedy sparsification: keep the k coordinates of largest magnitude (unscaled).

    Contractive with ``delta = k / d`` (``|C(x) - x|^2 <= (1 - k/d) |x|^2``); biased.
    The payload holds the k values and their k indices (`index_dtype`).

    Args:
        k: the number of coordinates kept (or give ``ratio``).
        ratio: ``k = max(1, round(ratio * d))`` when ``k`` is None (default 0.1).
    """

    k: int | None = None
    ratio: float | None = None

    sparse = True

    def __post_init__(self):
        _check_int(self.k, "k")
        _check_ratio(self.ratio, "ratio")
        if self.k is None and self.ratio is None:
            object.__setattr__(self, "ratio", 0.1)

    def delta(self, d):
        return self._k(d) / d

    def _sparse(self, x, key):
        idx = x.abs().topk(self._k(x.shape[-1]), dim=-1).indices
        return idx, x.gather(-1, idx)

    def _sparse_payload(self, idx, vals, d):
        return torch.cat([_to_bytes(vals), _to_bytes(idx.to(index_dtype(d)))], -1)

    def _sparse_decode(self, payload, key, d, dtype):
        split = self._k(d) * (value_bits(dtype) // 8)
        return (_from_bytes(payload[..., split:], index_dtype(d)).to(torch.int64),
                _from_bytes(payload[..., :split], dtype))

    def bits(self, d, dtype, worker=0, workers=1):
        return self._k(d) * (value_bits(dtype) + index_bits(d))


@dataclass(frozen=True)
class PermK(Compressor):
    """Permutation sparsification (Szlendak et al. 2021): the M workers split the coordinates.

    The coordinates are cut into ``ceil(d / M)`` blocks of M consecutive ones; a
    random shift ``s_j`` per block, shared by the workers, gives coordinate
    ``j M + t`` to worker ``(t + s_j) mod M``. Worker m sends its coordinates
    scaled by M: unbiased with ``omega = M - 1`` (each coordinate goes to a
    uniformly random worker), and the average of the M messages of the same
    vector is exact (each coordinate goes to exactly one). A worker holds
    ``floor(d / M)`` or ``ceil(d / M)`` coordinates depending on the last block's
    shift; every payload holds ``ceil(d / M)`` values (zero where a worker has
    none), no indices, and costs ``O(d / M)`` to draw.
    """

    unbiased = True
    per_worker = True
    sparse = True

    def omega(self, d, workers=1):
        return float(workers - 1)

    def _draw(self, key: RandomKey, d: int) -> tuple[Tensor, Tensor]:
        """``(B, m, ceil(d / M))`` the coordinates of the workers ``key.workers`` (clamped) and where they exist."""
        M = key.size
        blocks = -(-d // M)
        shift = (key.uniform(blocks, shared=True) * M).to(torch.int64)  # (B, 1, blocks)
        w = key.workers.to(key.seed.device).reshape(1, -1, 1)
        idx = torch.arange(blocks, device=key.seed.device) * M + (w - shift) % M
        exists = idx < d
        return idx.clamp(max=d - 1), exists

    def _sparse(self, x, key):
        return self._sparse_of(lambda idx: x.gather(-1, idx), key, x.shape[-1])

    def _sparse_of(self, values_at, key, d):
        idx, exists = self._draw(key, d)
        vals = values_at(idx) * key.size
        return idx, torch.where(exists, vals, torch.zeros_like(vals))

    def encode_difference(self, a, b, key):
        idx, vals = self._sparse_of(lambda i: a.gather(-1, i) - b.gather(-1, i), key, a.shape[-1])
        return self._sparse_payload(idx, vals, a.shape[-1])

    def _sparse_decode(self, payload, key, d, dtype):
        return self._draw(key, d)[0], _from_bytes(payload, dtype)

    def bits(self, d, dtype, worker=0, workers=1):
        if worker < 0:
            raise ValueError("PermK splits coordinates among workers; it cannot compress the server's message")
        return -(-d // workers) * value_bits(dtype)


@dataclass(frozen=True)
class RandomDithering(Compressor):
    """Random dithering with s levels (QSGD, Alistarh et al. 2017), unbiased.

    ``Q(x)_i = |x| sign(x_i) xi_i / s`` with ``xi_i`` the level ``floor(s |x_i| / |x|)``
    rounded up with probability ``s |x_i| / |x| - floor(...)``;
    ``omega = min(d / s^2, sqrt(d) / s)``. Payload: ``|x|`` as one value, then one
    packed code per coordinate of ``1 + ceil(log2(s + 1))`` bits (the level, then the sign).

    Args:
        s: the number of levels.
    """

    s: int = 1
    unbiased = True

    def __post_init__(self):
        _check_int(self.s, "s")

    def omega(self, d, workers=1):
        return min(d / self.s**2, math.sqrt(d) / self.s)

    def _level_bits(self) -> int:
        return math.ceil(math.log2(self.s + 1))

    def _levels(self, x, key):
        nrm = torch.linalg.vector_norm(x, dim=-1, keepdim=True)
        scaled = torch.where(nrm > 0, self.s * x.abs() / nrm.clamp_min(torch.finfo(x.dtype).tiny), 0.0)
        low = scaled.floor()
        up = key.uniform(x.shape[-1]).to(x.dtype) < (scaled - low)
        return nrm, low + up.to(x.dtype)

    def compress(self, x, key):
        nrm, level = self._levels(x, key)
        return nrm * torch.sign(x) * level / self.s

    def encode(self, x, key):
        nrm, level = self._levels(x, key)
        codes = level.to(torch.int64) | ((x < 0).to(torch.int64) << self._level_bits())
        return torch.cat([_to_bytes(nrm), _pack(codes, 1 + self._level_bits())], -1)

    def decode(self, payload, key, d, dtype):
        head = value_bits(dtype) // 8
        nrm = _from_bytes(payload[..., :head], dtype)
        codes = _unpack(payload[..., head:], 1 + self._level_bits(), d)
        level = (codes & ((1 << self._level_bits()) - 1)).to(dtype)
        sign = torch.where((codes >> self._level_bits()) == 1, -1.0, 1.0).to(dtype)
        return nrm * sign * level / self.s

    def bits(self, d, dtype, worker=0, workers=1):
        return value_bits(dtype) + d * (1 + self._level_bits())


# (integer view dtype, mantissa bits, exponent bits) of each float dtype, for natural compression's codes
_FLOAT_LAYOUT = {torch.float64: (torch.int64, 52, 11), torch.float32: (torch.int32, 23, 8),
                 torch.float16: (torch.int16, 10, 5), torch.bfloat16: (torch.int16, 7, 8)}


@dataclass(frozen=True)
class NaturalCompression(Compressor):
    """Natural compression (Horváth et al. 2019): random rounding to a power of two, unbiased.

    ``t = |x_i|`` in ``[2^a, 2^(a+1)]`` becomes ``2^(a+1)`` with probability
    ``(t - 2^a) / 2^a`` and ``2^a`` otherwise; ``omega = 1/8``. Payload: one packed
    code per coordinate, the sign bit and the exponent field of the dtype (8 bits
    for float32, 11 for float64, 5 for float16), so 9, 12 or 6 bits. Magnitudes
    below the dtype's smallest normal number are sent as zero (no exponent code
    holds them).
    """

    unbiased = True

    def omega(self, d, workers=1):
        return 0.125

    def compress(self, x, key):
        t = x.abs()
        tiny = torch.finfo(x.dtype).tiny
        safe = torch.where(t >= tiny, t, torch.ones_like(t))
        low = torch.exp2(torch.floor(torch.log2(safe)))
        up = key.uniform(x.shape[-1]).to(x.dtype) < (safe - low) / low
        out = torch.where(up, 2 * low, low)
        return torch.where(t >= tiny, torch.sign(x) * out, torch.zeros_like(x))

    def _layout(self, dtype):
        if dtype not in _FLOAT_LAYOUT:
            raise TypeError(f"NaturalCompression needs a float dtype, got {dtype}")
        return _FLOAT_LAYOUT[dtype]

    def encode(self, x, key):
        view, mantissa, exponent = self._layout(x.dtype)
        raw = self.compress(x, key).view(view).to(torch.int64)
        codes = ((raw >> mantissa) & ((1 << exponent) - 1)) | ((raw < 0).to(torch.int64) << exponent)
        return _pack(codes, 1 + exponent)

    def decode(self, payload, key, d, dtype):
        view, mantissa, exponent = self._layout(dtype)
        codes = _unpack(payload, 1 + exponent, d)
        field = codes & ((1 << exponent) - 1)
        bias = (1 << (exponent - 1)) - 1
        magnitude = torch.ldexp(torch.ones(field.shape, dtype=dtype, device=payload.device), field - bias)
        magnitude = torch.where(field > 0, magnitude, torch.zeros_like(magnitude))
        return torch.where((codes >> exponent) == 1, -magnitude, magnitude)

    def bits(self, d, dtype, worker=0, workers=1):
        return d * (1 + self._layout(dtype)[2])


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
