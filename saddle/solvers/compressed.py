"""Compressed distributed solvers: MASHA1, MASHA2 and two baselines on a `saddle.distributed.WorkerGroup`.

Beznosikov, Richtárik, Diskin, Ryabinin and Gasnikov, "Distributed Methods with
Compressed Communication for Solving Variational Inequalities, with
Theoretical Guarantees" (arXiv 2110.03313). The problem is a
`saddle.distributed.DistributedProblem`, ``F = (1/M) sum_m F_m``, worker m
holding ``F_m``. Points are flattened to ``(B, d)``; workers' quantities are
``(B, m, d)`` (the m workers of this process: all M when simulated, one per
rank under `torch.distributed`); ``group.mean`` averages over all M workers.
The math below is written once and runs on either backend.

**MASHA1** (the paper's Algorithm 1; unbiased compressors ``Q``, e.g. `RandK`)
keeps the iterate z and a reference point w with every ``F_m(w)`` and
``F(w)``; with ``tau = 1 - p``::

    z_bar  = tau z + (1 - tau) w
    z_half = prox(z_bar - gamma F(w))
    worker m sends  q_m = Q_m(F_m(z_half) - F_m(w))                  (uplink, compressed)
    server sends    g = Q_s((1/|S|) sum_{m in S} q_m)                  (downlink; Q_s = I unless bidirectional)
    z+     = prox(z_bar - gamma (F(w) + g))
    with probability p (a coin shared by all):  w <- z+, workers send F_m(w) uncompressed
                                                and the server sends back F(w).

S is every worker, or ``participation`` workers drawn uniformly each round
(partial participation; the average over S is unbiased).

**MASHA2** (Algorithm 2; contractive compressors ``C`` with error feedback,
``Z = R^d``)::

    z_bar  = tau z + (1 - tau) w,     z_half = z_bar - gamma F(w)
    v_m    = gamma (F_m(z_half) - F_m(w)) + e_m;   worker m in S sends c_m = C_m(v_m);  e_m <- v_m - c_m
    server: v = (1/|S|) sum_{m in S} c_m + e;   sends c = C_s(v);  e <- v - c     (C_s = I unless bidirectional)
    z+     = z_half - c,   and the same coin for w as MASHA1.

With ``participation`` r the r workers of S are drawn as for MASHA1; a worker
outside S computes and sends nothing and keeps its ``e_m``. (Each worker's
message over the rounds it takes part in is its accumulated ``gamma (F_m(z_half)
- F_m(w))`` less its current error, and it takes part with probability r/M:
weighted 1/r, the aggregate is unbiased, and the errors vanish with the
differences as z, w -> z*.)

**Minibatch (stochastic) variants** (``minibatch`` b, MASHA1 and MASHA2). When
each worker's operator is a finite sum ``F_m = (1/N) sum_j F_{m,j}`` (a
`DistributedProblem` whose ``samples`` N > 1, e.g.
``distributed_bilinear(samples=N)``), the difference ``F_m(z_half) - F_m(w)``
above is replaced by its same-sample minibatch estimate::

    D_m = (1/b) sum_{j in J_m} (F_{m,j}(z_half) - F_{m,j}(w)),

with ``J_m`` a fresh subset of b of the N samples (without replacement), drawn
per worker and round from the shared seed. ``F_m(w)`` and ``F(w)`` are full
passes, computed only at the start and on the coin's synchronizations: the
loopless variance reduction of Alacaoglu and Malitsky, "Stochastic Variance
Reduction for Variational Inequality Methods" (COLT 2022; `saddle.solvers.VREG`),
inside MASHA. ``D_m`` is unbiased for ``F_m(z_half) - F_m(w)`` and vanishes as
z_half, w -> z*, so the rate stays linear; b = N is the full-operator method
(the same iterates up to rounding: ``D_m`` is then the mean over all samples).

**Step sizes** (defaults). ``L`` is the Lipschitz constant of F,
``Lbar^2 = (1/M) sum_m L_m^2``, ``omega`` the worker compressor's variance
constant, ``q_s = 1 + omega_s`` the server's, r the participating workers,
``sigma_r = (M - r) / (r (M - 1))`` the variance factor of drawing r of M
workers; with minibatches ``Lhat^2 = (1/(M N)) sum_{m,j} L_{m,j}^2`` (the
problem's ``mean_square_sample_lipschitz``) and ``s_b = (N - b) / (b (N - 1))``
the variance factor of b of N samples without replacement (``s_b = 0`` for the
full operator and for b = N)::

    L_Q^2 = q_s (L^2 + (omega / r + sigma_r) Lbar^2 + (1 + omega) s_b Lhat^2 / r)
                    (a mean-square Lipschitz constant of the compressed, sampled difference:
                     E|g - (F(z_half) - F(w))|^2 + |F(z_half) - F(w)|^2 <= L_Q^2 |z_half - w|^2)
    MASHA1:          gamma = sqrt(1 - tau) / (2 L_Q),
                     p = max(1 / (1 + omega), E / S)  (see "Default p" below),  capped by b / N with minibatches
    MASHA2:          gamma = min(sqrt(1 - tau) / (2 L_2), (r / M) delta / (4 Lbar_2)),
                     L_2^2 = L^2 + sigma_r Lbar^2 + s_b Lhat^2 / r,   Lbar_2^2 = Lbar^2 + s_b Lhat^2,
                     p = delta  (k/d for TopK; delta_worker delta_server when bidirectional),
                         min(delta, b / N) with minibatches
    DistributedEG:   gamma = 1 / (2 L)
    CompressedEG:    gamma = 1 / (2 L_Q) with tau = 0

These have the form of the paper's theorems (``gamma ~ sqrt(1 - tau) / L`` for
the variance-reduced extragradient, the compression constants entering through
``L_Q`` and ``delta``, ``p`` balancing compressed and full rounds); the numerical
constants are ours, chosen for guaranteed (not tuned) linear convergence on
strongly monotone problems. The paper's constants for its minibatch and
partial-participation variants were not available to us; ours follow from
the same arguments: the linear-rate proofs of MASHA1 and of loopless VR-EG use
only that the correction g is conditionally unbiased for ``F(z_half) - F(w)``
and that its second moment is at most ``L_Q^2 |z_half - w|^2``. Sampling workers
and samples keeps the first and enters the second through ``sigma_r`` and
``s_b``, so the rate stays linear (about ``min(p, gamma mu)`` per round) for
any p in (0, 1]. p sets the cost of a round (on average ``p`` of a
synchronization's bits and ``2 b + p N`` sample evaluations per worker) and,
through ``gamma ~ sqrt(p)``, its progress; the cap ``b / N`` keeps the sample
evaluations within twice those of a minibatch round (VR-EG's ``p = b / N``). MASHA2's error of worker
m contracts only in the rounds it takes part in (probability r/M), hence
``(r / M) delta``. All defaults reduce to the full-participation,
full-operator ones for r = M and b = N.

**Accounting**, per instance: ``operator_calls`` counts rounds of local
oracle calls (every worker evaluating its ``F_m``, or its minibatch, once, in
parallel): MASHA 1 per round plus 1 per full synchronization (the coin); the
baselines 2 per round (and 1 at init for the methods that start with full
``F_m(z_0)``). ``sample_calls`` counts the sample evaluations ``F_{m,j}`` of
one (participating) worker, the unit in which minibatch and full-operator runs
compare (as `saddle.solvers.stochastic` counts per-sample evaluations): N per
full ``F_m`` (N = 1 without samples), ``2 b`` per minibatch round (``D_m``
evaluates the b samples at z_half and at w). So MASHA makes ``N + R N + S N``
sample evaluations in R rounds with S synchronizations, and
``N + 2 b R + S N`` with minibatches.
(MASHA reads the coin on the host, the same on every rank: ``F_m(z+)`` and the
all-reduce of a synchronization happen only in the rounds, and for the
instances, whose coin came up; the solvers declare ``host_reads``.)

**The wire.** A compressed exchange sends each worker's payload
(`saddle.compress.Compressor.encode`: k values for `RandK` and `PermK`, whose
coordinates every rank regenerates from the shared seed; values and narrow
indices for `TopK`; packed codes for the quantizers) over one of two routes
(the ``transport`` setting):

- ``"all_gather"``: every worker gets all M payloads and decodes their average
  itself (`saddle.compress.Compressor.decode_sum`, ``O(M k)`` for a
  sparsifier): uplink one payload per worker, downlink the other M - 1;
- ``"server"``: the payloads are gathered on a server (rank 0), which decodes
  their average and broadcasts its reply: ``Q_s``'s payload when
  ``server_compressor`` is set (bidirectional compression), else d values.

``"auto"`` (the default) takes the server when it compresses its reply, and
otherwise the route whose downlink is smaller: for a sparse compressor at
1% on 16 workers, the all-gather's 15 k values per worker against the
server's d. The downlink is then compressed without a second compressor:
the relayed payloads are the workers' own messages, so ``L_Q`` keeps
``q_s = 1``, where a server compressor multiplies it by ``1 + omega_s``
(measured in ``benchmarks/compressed.py``: more total bits, not fewer). MASHA2 with a
server compressor keeps the server's error feedback on every rank: its
payloads are all-gathered and every rank applies ``C_s`` alike (no reply
travels). Full synchronizations and `DistributedEG`'s exchanges are
all-reduces of d values.

**Bits and bytes.** ``bits_up`` counts the bits the (participating) workers
send, ``bits_down`` the bits the workers receive (the others' payloads on the
all-gather route, the server's reply on the server route, the reduced vector
of an all-reduce), with the compressors' exact `saddle.compress.Compressor.bits`
(the wire's sizes); ``bits_sent = bits_up + bits_down``; ``syncs`` counts full
synchronizations. ``bytes_sent`` and ``bytes_received`` are measured on the
payloads handed to the group's collectives (summed over the workers; the
group's own `saddle.distributed.Traffic` counts the same); they equal the bits
/ 8 up to the padding of packed codes to a whole byte, except under partial
participation, where the symmetric collectives also carry the
non-participants' (ignored) payloads. The coin, the participating workers and
the minibatches come from the shared seed and cost nothing.

**Default p** for MASHA1: ``max(1 / (1 + omega), E / S)`` (capped by ``b / N``
with minibatches), ``E`` the bits of one round's compressed exchange (uplink
and downlink, on its route) and ``S = 2 M d`` values the bits of a
synchronization. The step grows as ``sqrt(p)`` and the rate as the step, so
the bits to an accuracy grow as ``(E + p S) / sqrt(p)``, smallest at
``p = E / S``: synchronize about as often as the compressed traffic makes it
cheap (``p = 0.08`` for RandK at 1% on 16 workers, whose all-gather downlink
is 15 k values; the paper's ``k / d`` balances the uplink alone).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
from torch import Tensor

from ..distributed.problem import DistributedProblem, flatten, unflatten
from ..compress import Compressor, Identity, RandK, RandomKey, TopK, get_compressor, uniform, value_bits
from ..point import Point
from ..problem import VIProblem
from ..sets import Reals
from ._validate import STEP, check_integer, check_number, check_positive, per_instance, renamed_setting
from .base import Solver, register

__all__ = ["CompressedState", "MASHA1", "MASHA2", "DistributedEG", "CompressedEG"]

#: How compressed messages travel (the solvers' ``transport`` setting).
TRANSPORTS = ("auto", "all_gather", "server")

# Streams of the counter-based random numbers (see saddle.compress.uniform).
_UP, _UP2, _DOWN, _DOWN2, _COIN, _PART, _SAMPLE = 1, 2, 3, 4, 5, 6, 7


class CompressedState(NamedTuple):
    """State of the compressed distributed solvers; tensors are ``(B, ...)``.

    Attributes:
        w: the reference point (MASHA) or None.
        Fw: ``(B, d)`` ``F(w)`` (MASHA) or ``F(z)`` (`DistributedEG`), flattened; None for `CompressedEG`.
        Fw_local: ``(B, m, d)`` the held workers' ``F_m(w)`` (MASHA) or None.
        error: ``(B, m, d)`` the held workers' error-feedback accumulators ``e_m`` (MASHA2) or None.
        server_error: ``(B, d)`` the server's accumulator ``e`` (bidirectional MASHA2) or None.
        anchor: ``(B, d)`` ``(1 - tau) w - gamma F(w)`` (MASHA1 on ``Z = R^d``, where
            ``z_half = tau z + anchor`` is one pass), or None.
        step_size: ``(B,)`` gamma.
        tau: ``(B,)`` ``1 - p``.
        seed: ``(B,)`` int64 seeds of the shared random numbers.
        operator_calls: ``(B,)`` rounds of local oracle calls (full ``F_m`` or a minibatch).
        sample_calls: ``(B,)`` sample evaluations ``F_{m,j}`` per worker (N per full ``F_m``).
        bits_up: ``(B,)`` bits sent by all workers to the server.
        bits_down: ``(B,)`` bits sent by the server to the workers.
        bits_sent: ``(B,)`` ``bits_up + bits_down``.
        bytes_sent: ``(B,)`` bytes all workers handed to collectives (measured on the payloads).
        bytes_received: ``(B,)`` bytes all workers received from others (measured).
        syncs: ``(B,)`` full synchronizations (coin successes).
        steps: ``(B,)`` rounds taken (the round counter of the random numbers).
    """

    w: Point | None
    Fw: Tensor | None
    Fw_local: Tensor | None
    error: Tensor | None
    server_error: Tensor | None
    anchor: Tensor | None
    step_size: Tensor
    tau: Tensor
    seed: Tensor
    operator_calls: Tensor
    sample_calls: Tensor
    bits_up: Tensor
    bits_down: Tensor
    bits_sent: Tensor
    bytes_sent: Tensor
    bytes_received: Tensor
    syncs: Tensor
    steps: Tensor


class _Distributed(Solver):
    """Shared checks, constants, keys and bit counts of the compressed solvers."""

    # compressors this solver accepts: "unbiased", "contractive" or None (any / none)
    _needs: str | None = "unbiased"
    _unconstrained: bool = False

    def _worker_compressor(self) -> Compressor:
        return get_compressor(getattr(self, "compressor", None), "compressor")

    def _server_compressor(self) -> Compressor | None:
        spec = getattr(self, "server_compressor", None)
        return None if spec is None else get_compressor(spec, "server_compressor")

    def _validate_settings(self) -> None:
        name = self.name
        check_positive(name, "step_size", self.step_size, expected=STEP)
        dev = self._worker_compressor()
        srv = self._server_compressor()
        if srv is not None and srv.per_worker:
            raise ValueError(f"{name}: server_compressor cannot be {type(srv).__name__} "
                             "(it splits coordinates among workers)")
        check_number(name, "p", getattr(self, "p", None), low=0, high=1, include_high=True, allow_none=True,
                     expected="a probability in (0, 1]")
        check_integer(name, "participation", getattr(self, "participation", None), minimum=1, allow_none=True,
                      expected="a positive integer (workers per round)")
        check_integer(name, "minibatch", getattr(self, "minibatch", None), minimum=1, allow_none=True,
                      expected="a positive integer (samples per minibatch) or None (the full local operator)")
        transport = getattr(self, "transport", "auto")
        if transport not in TRANSPORTS:
            raise ValueError(f"{name}: transport must be one of {', '.join(map(repr, TRANSPORTS))}, got {transport!r}")
        seed = getattr(self, "seed", 0)
        if not isinstance(seed, Tensor):  # a tensor of seeds is checked against the batch at init
            check_integer(name, "seed", seed, minimum=0, expected="a non-negative integer or a (B,) int64 tensor")
        for c, label in ((dev, "compressor"), (srv, "server_compressor")):
            if c is None:
                continue
            if self._needs == "unbiased" and not c.unbiased:
                raise ValueError(f"{self.name}: {label} must be unbiased (RandK, PermK, dithering, ...); "
                                 f"{type(c).__name__} is not: use masha2 for contractive compressors")

    def check(self, problem) -> None:
        if not isinstance(problem, DistributedProblem):
            raise TypeError(f"{self.name} needs a DistributedProblem (an operator split over workers, "
                            f"see saddle.distributed), got {type(problem).__name__}")
        self._validate_settings()
        d = problem.dim
        dev, srv = self._worker_compressor(), self._server_compressor()
        if self._needs == "contractive":
            for c, label in ((dev, "compressor"), (srv, "server_compressor")):
                if c is not None and (c.delta(d) is None or not c.delta(d) > 0):
                    raise ValueError(f"{self.name}: {label} must be contractive (TopK, Identity); "
                                     f"{type(c).__name__} is not: use masha1 for unbiased compressors")
        else:
            dev.omega(d, problem.workers)  # raises for k > d
        r = getattr(self, "participation", None)
        if r is not None and r > problem.workers:
            raise ValueError(f"{self.name}: participation ({r}) must be at most the number of workers "
                             f"({problem.workers})")
        b = getattr(self, "minibatch", None)
        if b is not None and b > problem.samples:
            raise ValueError(f"{self.name}: minibatch ({b}) must be at most the number of samples per worker "
                             f"N = {problem.samples} (a finite-sum problem, e.g. distributed_bilinear(samples=N))")
        if self._unconstrained and not all(isinstance(s, Reals) for s in problem.domain):
            raise ValueError(f"{self.name} needs an unconstrained problem (Z = R^d, as in the paper's "
                             f"Algorithm 2); got {problem.domain!r}: use masha1")

    # -- constants -----------------------------------------------------------------------------
    def _participants(self, problem) -> int:
        r = getattr(self, "participation", None)
        return problem.workers if r is None else r

    def _omega(self, problem) -> float:
        return self._worker_compressor().omega(problem.dim, problem.workers) or 0.0

    def _q_server(self, problem) -> float:
        srv = self._server_compressor()
        return 1.0 if srv is None else 1.0 + (srv.omega(problem.dim, 1) or 0.0)

    def _sampling(self, problem) -> float:
        """``(M - r) / (r (M - 1))``: the variance factor of averaging r of M workers drawn without replacement."""
        M, r = problem.workers, self._participants(problem)
        return 0.0 if M == 1 else (M - r) / (r * (M - 1))

    def _minibatch_factor(self, problem) -> float:
        """``s = (N - b) / (b (N - 1))``: the variance factor of a minibatch of b of N samples (0: full batch)."""
        b, N = getattr(self, "minibatch", None), problem.samples
        return 0.0 if b is None or N == 1 else (N - b) / (b * (N - 1))

    def _sample_variance(self, problem) -> Tensor | float:
        """``s Lhat^2``: bounds the minibatch's mean-square error per unit distance (0 for the full operator)."""
        s = self._minibatch_factor(problem)
        if s == 0.0:
            return 0.0
        Lhat = problem.mean_square_sample_lipschitz()
        if Lhat is None:
            raise ValueError(f"{self.name}: the default step size with minibatch needs the samples' mean-square "
                             "Lipschitz constant (DistributedProblem(sample_lipschitz=...)); or pass step_size")
        return s * Lhat**2

    def _L_Q(self, problem) -> Tensor:
        """``(B,)`` the mean-square Lipschitz constant of the compressed difference (module docstring)."""
        L, Lbar = self._constants(problem)
        r, omega = self._participants(problem), self._omega(problem)
        return torch.sqrt(self._q_server(problem) * (L**2 + (omega / r + self._sampling(problem)) * Lbar**2
                                                     + (1.0 + omega) * self._sample_variance(problem) / r))

    def _minibatch_p(self, problem, p: float) -> float:
        """The compressor's p, capped by ``b / N`` with minibatches (a full pass per N / b rounds on average)."""
        b = getattr(self, "minibatch", None)
        return p if b is None else min(p, b / problem.samples)

    def _constants(self, problem) -> tuple[Tensor, Tensor]:
        L = problem.lipschitz()
        if L is None:
            raise ValueError(f"{self.name}: the default step size needs the Lipschitz constant of F; "
                             "give the problem lipschitz= or pass step_size")
        Lbar = problem.mean_square_lipschitz()
        return L, (L if Lbar is None else Lbar)

    def _default_p(self, problem) -> float:
        return 1.0

    def _balanced_p(self, problem) -> float:
        """``min(1, E / S)``: the p at which the synchronizations' expected bits ``p S`` equal a round's
        compressed exchange ``E`` (uplink and downlink on its route; ``S = 2 M d`` values).

        With the step ``gamma ~ sqrt(p)`` and the rate ``~ gamma mu``, the bits to an accuracy
        grow as ``(E + p S) / sqrt(p)``, smallest at ``p = E / S``.
        """
        M, d, dtype = problem.workers, problem.dim, problem.dtype
        comp, srv = self._worker_compressor(), self._server_compressor()
        up = sum(comp.bits(d, dtype, m, M) for m in range(M)) * self._participants(problem) / M
        if self._route(problem) == "all_gather":
            down = (M - 1) * up
        else:
            down = M * (Identity() if srv is None else srv).bits(d, dtype, -1, 1)
        return min(1.0, (up + down) / (2 * M * d * value_bits(dtype)))

    def _default_step(self, problem, tau: Tensor) -> Tensor:
        raise NotImplementedError

    # -- state ---------------------------------------------------------------------------------
    def _common(self, problem) -> dict:
        B, dev = problem.batch_size, problem.device
        p = getattr(self, "p", None)
        p = self._default_p(problem) if p is None else float(p)
        tau = torch.full((B,), 1.0 - p, dtype=torch.float64)
        if self.step_size is None:
            gamma = self._default_step(problem, tau).to(torch.float64)
        else:
            gamma = per_instance(self.step_size, "step_size", self.name, problem, dtype=torch.float64).cpu()
            if not bool(torch.isfinite(gamma).all()) or bool((gamma <= 0).any()):
                raise ValueError(f"{self.name}: step_size must be positive and finite, got {self.step_size!r}")
        seed = getattr(self, "seed", 0)
        if isinstance(seed, Tensor):
            if seed.dtype != torch.int64 or seed.shape != (B,) or bool((seed < 0).any()):
                raise ValueError(f"{self.name}: seed must be a non-negative integer or a (B,) = ({B},) int64 tensor, "
                                 f"got {seed.dtype} of shape {tuple(seed.shape)}")
            seed = seed.to(dev)
        else:
            seed = torch.full((B,), int(seed), dtype=torch.int64, device=dev)
        zeros = torch.zeros(B, dtype=torch.int64, device=dev)
        return dict(step_size=gamma.to(device=dev, dtype=problem.dtype), tau=tau.to(device=dev, dtype=problem.dtype),
                    seed=seed, operator_calls=zeros, sample_calls=zeros, bits_up=zeros, bits_down=zeros,
                    bits_sent=zeros, bytes_sent=zeros, bytes_received=zeros, syncs=zeros, steps=zeros)

    def _full_bits(self, problem) -> int:
        """Bits of one uncompressed vector of d values."""
        return problem.dim * value_bits(problem.dtype)

    def _worker_bits(self, problem) -> Tensor:
        """``(M,)`` int64: bits of each worker's compressed message."""
        dev = self._worker_compressor()
        M = problem.workers
        return torch.tensor([dev.bits(problem.dim, problem.dtype, m, M) for m in range(M)], dtype=torch.int64,
                            device=problem.device)

    def _key(self, problem, state, stream: int, server: bool = False) -> RandomKey:
        workers = torch.tensor([-1], dtype=torch.int64, device=problem.device) if server else \
            problem.group.worker_index(problem.device)
        return RandomKey(state.seed, state.steps, stream, workers, 1 if server else problem.workers)

    def _weights(self, problem, state) -> Tensor:
        """``(B, M)`` averaging weights: ``1/M``, or ``1/r`` on the r participating workers of this round."""
        B, M = problem.batch_size, problem.workers
        r = self._participants(problem)
        if r == M:
            return torch.full((B, M), 1.0 / M, dtype=problem.dtype, device=problem.device)
        u = uniform(state.seed, state.steps, _PART, None, M)[:, 0, :]
        chosen = torch.zeros(B, M, dtype=problem.dtype, device=problem.device)
        chosen.scatter_(-1, u.topk(r, dim=-1).indices, 1.0)
        return chosen / r

    def _participating(self, problem, weights: Tensor) -> Tensor:
        """``(B, m, 1)`` bool: which of the workers held here take part in this round."""
        return (weights[:, list(problem.group.workers)] > 0).unsqueeze(-1)

    def _sample_indices(self, problem, state) -> Tensor | None:
        """``(B, m, b)`` this round's minibatch of every held worker (b of N samples without replacement), or None.

        The b largest of N shared-seed uniforms per worker (`saddle.compress.uniform` keyed by the
        seed, the round, the stream and the global worker index): a uniformly random b-subset, the
        same on every backend, with no host synchronization.
        """
        b = getattr(self, "minibatch", None)
        if b is None:
            return None
        u = uniform(state.seed, state.steps, _SAMPLE, problem.group.worker_index(problem.device), problem.samples)
        return u.topk(b, dim=-1).indices

    def _local_terms(self, problem, state, z_half: Tensor, idx: Tensor | None) -> tuple[Tensor, Tensor]:
        """``(F_m(z_half), F_m(w))``, ``(B, m, d)`` each, or their same-sample minibatch estimates on ``idx``."""
        if idx is None:
            return problem.local_F(z_half), state.Fw_local
        return problem.local_sample(z_half, idx), problem.local_sample(flatten(state.w), idx)

    def _local_difference(self, problem, state, z_half: Tensor, idx: Tensor | None) -> Tensor:
        """``(B, m, d)``: ``F_m(z_half) - F_m(w)``, or its same-sample minibatch estimate on ``idx``."""
        a, b = self._local_terms(problem, state, z_half, idx)
        return a - b

    def _round_samples(self, problem) -> int:
        """Sample evaluations per worker in one compressed round: N (full ``F_m``) or 2 b (minibatch at two points)."""
        b = getattr(self, "minibatch", None)
        return problem.samples if b is None else 2 * b

    def _coin(self, state) -> Tensor:
        """``(B,)`` bool: this round's full synchronization, with probability ``p = 1 - tau``."""
        u = uniform(state.seed, state.steps, _COIN, None, 1)[:, 0, 0]
        return u < (1.0 - state.tau.to(torch.float64))

    def _uplink(self, problem, weights: Tensor) -> Tensor:
        """``(B,)`` bits the participating workers send in one compressed exchange."""
        return ((weights > 0).long() * self._worker_bits(problem)).sum(-1)

    def _count(self, state, *, calls, samples, up, down, sent, received, syncs=None) -> dict:
        return dict(operator_calls=state.operator_calls + calls, sample_calls=state.sample_calls + samples,
                    bits_up=state.bits_up + up, bits_down=state.bits_down + down, bits_sent=state.bits_sent + up + down,
                    bytes_sent=state.bytes_sent + sent, bytes_received=state.bytes_received + received,
                    syncs=state.syncs if syncs is None else state.syncs + syncs, steps=state.steps + 1)

    def _full_exchange_counts(self, problem, common: dict) -> dict:
        """The counts of ``common`` after one exchange of full vectors (an all-reduce) at init."""
        bits, nbytes = self._full_bits(problem) * problem.workers, self._full_bytes(problem)
        return dict(operator_calls=common["operator_calls"] + 1, sample_calls=common["sample_calls"] + problem.samples,
                    bits_up=common["bits_up"] + bits, bits_down=common["bits_down"] + bits,
                    bits_sent=common["bits_sent"] + 2 * bits, bytes_sent=common["bytes_sent"] + nbytes,
                    bytes_received=common["bytes_received"] + nbytes)

    def _full_bytes(self, problem) -> int:
        """Bytes all M workers hand to (and get back from) one all-reduce of full vectors of d values."""
        return problem.workers * problem.dim * problem.dtype.itemsize

    # -- the wire ----------------------------------------------------------------------------
    def _route(self, problem, server: bool = True) -> str:
        """How a compressed exchange travels: ``"all_gather"`` or ``"server"`` (the ``transport`` setting).

        ``"auto"``: the server, when it compresses its reply (bidirectional compression,
        ``server``); else the cheaper downlink of the two: the other M - 1 workers' payloads
        (all-gather) or the server's reply of d values.
        """
        transport = getattr(self, "transport", "auto")
        if transport != "auto":
            return transport
        if server and self._server_compressor() is not None:
            return "server"
        d, dtype = problem.dim, problem.dtype
        payload = self._worker_compressor().payload_bytes(d, dtype, problem.workers)
        return "all_gather" if (problem.workers - 1) * payload < Identity().payload_bytes(d, dtype) else "server"

    def _exchange(self, problem, state, x: Tensor, streams: tuple[int, int], weights: Tensor, *,
                  subtract: Tensor | None = None, into: Tensor | None = None, scale: Tensor | None = None,
                  server: bool = True):
        """One compressed exchange of the held workers' messages ``x`` ``(B, m, d)``.

        Every worker encodes ``Q_m(x_m)`` (`saddle.compress.Compressor.encode`); on the
        ``"all_gather"`` route every rank gets all M payloads and decodes
        ``g = sum_m weights_m Q_m(x_m)`` itself (then ``Q_s(g)`` with the shared seed when
        bidirectional); on the ``"server"`` route the server decodes g and broadcasts
        its reply (``Q_s(g)``'s payload, or g in full).

        The messages are ``x - subtract`` when ``subtract`` is given (a seeded sparsifier then
        reads only its coordinates of the two). With ``into`` ``(B, d)`` and ``scale`` ``(B,)``,
        ``into + scale g`` is returned instead of g, ``into`` updated in place (``O(M k)`` for a
        sparsifier on the all-gather route). With ``server=False`` the server compressor is left
        to the caller (MASHA2's error feedback).

        Returns:
            ``(g, payload, counts)``: ``g`` ``(B, d)`` the same on every rank (or ``into + scale g``),
            the held workers' payloads ``(B, m, n)`` (to decode their own messages), and the
            counts of the exchange (``up``, ``down`` bits, ``sent``, ``received`` bytes) as a dict.
        """
        comp, srv = self._worker_compressor(), self._server_compressor() if server else None
        group, d, dtype, M = problem.group, problem.dim, problem.dtype, problem.workers
        key = self._key(problem, state, streams[0])
        senders = key._replace(workers=torch.arange(M, device=problem.device))
        payload = comp.encode(x, key) if subtract is None else comp.encode_difference(x, subtract, key)
        n = payload.shape[-1]
        up = self._uplink(problem, weights)
        if self._route(problem, server) == "all_gather":
            counts = dict(up=up, down=(M - 1) * up, sent=M * n, received=M * (M - 1) * n)
            if into is not None and srv is None:  # scatter the scaled messages straight into `into`
                w = weights * scale.to(weights.dtype).unsqueeze(-1)
                return comp.decode_sum(group.all_gather(payload), senders, d, dtype, w, out=into), payload, counts
            g = comp.decode_sum(group.all_gather(payload), senders, d, dtype, weights)
            if srv is not None:  # every rank applies the same Q_s: the server's error feedback stays everywhere
                g = srv.compress(g.unsqueeze(1), self._key(problem, state, streams[1], server=True)).squeeze(1)
            return (g if into is None else into.addcmul_(g, scale.to(g.dtype).unsqueeze(-1))), payload, counts
        reply_with = Identity() if srv is None else srv
        server_key = self._key(problem, state, streams[1], server=True)

        def reply(payloads: Tensor) -> Tensor:
            g = comp.decode_sum(payloads, senders, d, dtype, weights)
            return reply_with.encode(g.unsqueeze(1), server_key).squeeze(1)

        r = group.via_server(payload, reply, reply_with.payload_bytes(d, dtype, 1))
        g = reply_with.decode(r.unsqueeze(1), server_key, d, dtype).squeeze(1)
        if into is not None:
            g = into.addcmul_(g, scale.to(g.dtype).unsqueeze(-1))
        one = reply_with.bits(d, dtype, -1, 1)
        return g, payload, dict(up=up, down=M * one, sent=M * n, received=M * r.shape[-1])


def _linear_prox(problem) -> bool:
    """Whether the prox step is ``z - gamma F`` (every block unconstrained, no non-smooth term)."""
    return all(isinstance(s, Reals) for s in problem.domain) and \
        type(problem).block_prox is VIProblem.block_prox


def _check_compressor_field(solver) -> None:
    if hasattr(solver, "batch_size"):
        renamed_setting(solver, "batch_size", "minibatch", None)
    solver._validate_settings()


def _masha_init(solver, problem, z0: Point, *, error: bool) -> CompressedState:
    solver.check(problem)
    common = solver._common(problem)
    Fw_local = problem.local_F(flatten(z0))
    Fw = problem.group.mean(Fw_local)
    common.update(solver._full_exchange_counts(problem, common))
    srv_err = torch.zeros_like(Fw) if error and solver._server_compressor() is not None else None
    anchor = _anchor(flatten(z0), Fw, common["tau"], common["step_size"]) if not error and _linear_prox(problem) \
        else None
    return CompressedState(w=z0, Fw=Fw, Fw_local=Fw_local, error=torch.zeros_like(Fw_local) if error else None,
                           server_error=srv_err, anchor=anchor, **common)


def _anchor(w: Tensor, Fw: Tensor, tau: Tensor, gamma: Tensor) -> Tensor:
    """``(1 - tau) w - gamma F(w)``, ``(B, d)``: MASHA1's z_half on ``Z = R^d`` is ``tau z`` plus this."""
    return torch.addcmul((1 - tau).unsqueeze(-1) * w, gamma.unsqueeze(-1), Fw, value=-1)


def _end_round(solver, problem, state, z_new: Point, weights: Tensor, exchange: dict) -> dict:
    """A MASHA round's end: the coin, the synchronization and the counts, as `CompressedState` fields.

    With the coin, ``w <- z+`` and the workers exchange full ``F_m(w)`` (an all-reduce of
    the instances whose coin came up; none, and no ``F_m(z+)``, in most rounds: the coin
    is read on the host, the same on every rank); else w stays.
    """
    coin = solver._coin(state)
    c1, c2 = coin.view(-1, 1), coin.view(-1, 1, 1)
    w, Fw, Fw_local, anchor = state.w, state.Fw, state.Fw_local, state.anchor
    if bool(coin.any()):
        F_loc = problem.local_F(flatten(z_new))
        Fw = Fw.clone()
        Fw[coin] = problem.group.mean(F_loc[coin])
        Fw_local = torch.where(c2, F_loc, Fw_local)
        w = tuple(torch.where(c1, a, b) for a, b in zip(z_new, state.w))
        if anchor is not None:
            anchor = torch.where(c1, _anchor(flatten(w), Fw, state.tau, state.step_size), anchor)
    full, nbytes = solver._full_bits(problem) * problem.workers * coin.long(), solver._full_bytes(problem) * coin.long()
    counts = solver._count(state, calls=1 + coin.long(),
                           samples=solver._round_samples(problem) + problem.samples * coin.long(),
                           up=exchange["up"] + full, down=exchange["down"] + full,
                           sent=exchange["sent"] + nbytes, received=exchange["received"] + nbytes, syncs=coin.long())
    return dict(w=w, Fw=Fw, Fw_local=Fw_local, anchor=anchor, **counts)


@register("masha1", category="distributed", host_reads=True)
@dataclass(frozen=True)
class MASHA1(_Distributed):
    """MASHA1: variance-reduced extragradient with unbiased compression (arXiv 2110.03313, Algorithm 1).

    See the module docstring for the step, the default step size and the accounting.

    Args:
        compressor: the workers' unbiased compressor (default ``RandK(ratio=0.1)``).
        server_compressor: an unbiased compressor for the server's reply
            (bidirectional compression), or None (the reply is sent in full).
        step_size: gamma, a float or ``(B,)`` tensor (default from the theory, see above).
        p: the probability of a full synchronization (``tau = 1 - p``; default
            ``max(1 / (1 + omega), E / S)``: the synchronizations' bits balance the compressed
            exchanges', module docstring; capped by ``b / N`` with minibatches).
        participation: workers drawn uniformly per round (partial participation), or None (all).
        seed: the seed of the shared random numbers, an int or a ``(B,)`` int64 tensor.
        minibatch: b, the samples per worker and round of the minibatch variant
            (``1 <= b <= N`` for a problem whose workers hold N samples), or None (the full ``F_m``).
        transport: how the compressed messages travel: ``"all_gather"``, ``"server"`` or
            ``"auto"`` (the server when it compresses its reply, else the smaller downlink; module docstring).
        batch_size: deprecated name of ``minibatch`` (a ``DeprecationWarning``; removed in the next release).
    """

    compressor: Compressor = RandK(ratio=0.1)
    server_compressor: Compressor | None = None
    step_size: object = None
    p: float | None = None
    participation: int | None = None
    seed: object = 0
    minibatch: int | None = None
    transport: str = "auto"
    batch_size: int | None = field(default=None, repr=False)  # deprecated name of minibatch

    def __post_init__(self):
        _check_compressor_field(self)

    def _default_p(self, problem):
        return self._minibatch_p(problem, max(1.0 / (1.0 + self._omega(problem)), self._balanced_p(problem)))

    def _default_step(self, problem, tau):
        return torch.sqrt(1.0 - tau) / (2.0 * self._L_Q(problem))

    def init(self, problem, z0):
        return _masha_init(self, problem, z0, error=False)

    def step(self, problem, z, state):
        dims, gamma, tau = problem.dims, state.step_size, state.tau.unsqueeze(-1)
        weights = self._weights(problem, state)
        idx = self._sample_indices(problem, state)
        if state.anchor is not None:
            # Z = R^d: z_half = z_bar - gamma F(w) = tau z + anchor, and z+ = z_half - gamma g, which adds
            # the M sparse messages to z_half in place (O(M k) for a sparsifier instead of O(d))
            z_half = torch.addcmul(state.anchor, tau, flatten(z))
            F_half, F_ref = self._local_terms(problem, state, z_half, idx)
            z_new, _, exchange = self._exchange(problem, state, F_half, (_UP, _DOWN), weights, subtract=F_ref,
                                                into=z_half, scale=-gamma)
            z_new = unflatten(z_new, dims)
        else:
            z_bar = unflatten(torch.lerp(flatten(state.w), flatten(z), tau), dims)  # tau z + (1 - tau) w
            z_half = problem.prox(z_bar, unflatten(state.Fw, dims), gamma)
            F_half, F_ref = self._local_terms(problem, state, flatten(z_half), idx)
            g, _, exchange = self._exchange(problem, state, F_half, (_UP, _DOWN), weights, subtract=F_ref)
            z_new = problem.prox(z_bar, unflatten(state.Fw + g, dims), gamma)
        return z_new, state._replace(**_end_round(self, problem, state, z_new, weights, exchange))


@register("masha2", category="distributed", host_reads=True)
@dataclass(frozen=True)
class MASHA2(_Distributed):
    """MASHA2: variance-reduced extragradient with contractive compression and error feedback (Algorithm 2).

    Beznosikov, Richtárik, Diskin, Ryabinin and Gasnikov 2022 (arXiv 2110.03313),
    Algorithm 2. For unconstrained problems (``Z = R^d``). See the module docstring for the
    step, the default step size and the accounting.

    Args:
        compressor: the workers' contractive compressor (default ``TopK(ratio=0.1)``).
        server_compressor: a contractive compressor for the server's reply, with
            its own error feedback (bidirectional compression), or None.
        step_size: gamma, a float or ``(B,)`` tensor (default from the theory).
        p: the probability of a full synchronization (default ``delta``, ``k / d`` for `TopK`;
            ``min(delta, b / N)`` with minibatches).
        seed: the seed of the shared random numbers (the coin, the participants, the minibatches).
        participation: workers drawn uniformly per round (partial participation; the others
            send nothing and keep their errors), or None (all).
        minibatch: b, the samples per worker and round of the minibatch variant
            (``1 <= b <= N``), or None (the full ``F_m``).
        transport: ``"all_gather"``, ``"server"`` or ``"auto"`` (module docstring); with a server
            compressor the payloads are all-gathered (the server's error feedback lives on every rank).
        batch_size: deprecated name of ``minibatch`` (a ``DeprecationWarning``; removed in the next release).
    """

    compressor: Compressor = TopK(ratio=0.1)
    server_compressor: Compressor | None = None
    step_size: object = None
    p: float | None = None
    seed: object = 0
    participation: int | None = None
    minibatch: int | None = None
    transport: str = "auto"
    batch_size: int | None = field(default=None, repr=False)  # deprecated name of minibatch

    _needs = "contractive"
    _unconstrained = True

    def __post_init__(self):
        _check_compressor_field(self)

    def _delta(self, problem) -> float:
        d = self._worker_compressor().delta(problem.dim)
        srv = self._server_compressor()
        return d * (1.0 if srv is None else srv.delta(problem.dim))

    def _default_p(self, problem):
        return self._minibatch_p(problem, self._delta(problem))

    def _default_step(self, problem, tau):
        L, Lbar = self._constants(problem)
        r, M = self._participants(problem), problem.workers
        var = self._sample_variance(problem)
        L2 = torch.sqrt(L**2 + self._sampling(problem) * Lbar**2 + var / r)
        Lbar2 = torch.sqrt(Lbar**2 + var)
        return torch.minimum(torch.sqrt(1.0 - tau) / (2.0 * L2), self._delta(problem) * r / M / (4.0 * Lbar2))

    def init(self, problem, z0):
        return _masha_init(self, problem, z0, error=True)

    def step(self, problem, z, state):
        dims, gamma, tau = problem.dims, state.step_size.unsqueeze(-1), state.tau.unsqueeze(-1)
        z_bar = torch.lerp(flatten(state.w), flatten(z), tau)  # tau z + (1 - tau) w, one pass
        z_half = z_bar - gamma * state.Fw
        delta = self._local_difference(problem, state, z_half, self._sample_indices(problem, state))
        v = gamma.unsqueeze(-1) * delta + state.error
        weights = self._weights(problem, state)
        comp, srv = self._worker_compressor(), self._server_compressor()
        if srv is None:
            g, payload, exchange = self._exchange(problem, state, v, (_UP, _DOWN), weights)
        else:  # the server's error feedback: every rank gets the average (all-gather) and applies C_s alike
            g, payload, exchange = self._exchange(problem, state, v, (_UP, _DOWN), weights, server=False)
        c = comp.decode(payload, self._key(problem, state, _UP), problem.dim, problem.dtype)
        if self._participants(problem) == problem.workers:
            error = v - c
        else:  # the non-participants' messages have weight 0: they keep their errors
            error = torch.where(self._participating(problem, weights), v - c, state.error)
        server_error = state.server_error
        if server_error is not None:
            vs = g + server_error
            g = srv.compress(vs.unsqueeze(1), self._key(problem, state, _DOWN, server=True)).squeeze(1)
            server_error = vs - g
        z_new = unflatten(z_half - g, dims)
        return z_new, state._replace(error=error, server_error=server_error,
                                     **_end_round(self, problem, state, z_new, weights, exchange))


@register("distributed_eg", category="distributed")
@dataclass(frozen=True)
class DistributedEG(_Distributed):
    """Uncompressed distributed extragradient: the baseline that sends every ``F_m`` in full.

    Extragradient (Korpelevich 1976) on ``F = (1/M) sum_m F_m``, the baseline of
    Beznosikov et al. (arXiv 2110.03313).
    ``z_half = prox(z - gamma F(z))``, ``z+ = prox(z - gamma F(z_half))``, each
    ``F = (1/M) sum_m F_m`` one exchange of full vectors (d values up from each
    worker and d values back to each). Two operator calls per round (``F(z+)``
    is the next round's ``F(z)``), one at init.

    Args:
        step_size: gamma, a float or ``(B,)`` tensor (default ``1 / (2 L)``).
    """

    step_size: object = None

    _needs = None

    def __post_init__(self):
        _check_compressor_field(self)

    def _default_step(self, problem, tau):
        L, _ = self._constants(problem)
        return 1.0 / (2.0 * L)

    def init(self, problem, z0):
        self.check(problem)
        common = self._common(problem)
        common.update(self._full_exchange_counts(problem, common))
        Fz = problem.group.mean(problem.local_F(flatten(z0)))
        return CompressedState(w=None, Fw=Fz, Fw_local=None, error=None, server_error=None, anchor=None, **common)

    def step(self, problem, z, state):
        dims, gamma = problem.dims, state.step_size
        z_half = problem.prox(z, unflatten(state.Fw, dims), gamma)
        F_half = problem.group.mean(problem.local_F(flatten(z_half)))
        z_new = problem.prox(z, unflatten(F_half, dims), gamma)
        F_new = problem.group.mean(problem.local_F(flatten(z_new)))
        full, nbytes = 2 * self._full_bits(problem) * problem.workers, 2 * self._full_bytes(problem)
        counts = self._count(state, calls=2, samples=2 * problem.samples, up=full, down=full, sent=nbytes,
                             received=nbytes)
        return z_new, state._replace(Fw=F_new, **counts)


@register("compressed_eg", category="distributed")
@dataclass(frozen=True)
class CompressedEG(_Distributed):
    """Compressed distributed extragradient without variance reduction (a baseline).

    Extragradient (Korpelevich 1976) on compressed averages, the no-variance-reduction
    baseline of Beznosikov et al. (arXiv 2110.03313).
    ``g(z) = Q_s((1/|S|) sum_{m in S} Q_m(F_m(z)))``;  ``z_half = prox(z - gamma g(z))``,
    ``z+ = prox(z - gamma g(z_half))``: two compressed exchanges and two operator
    calls per round. The compression noise does not vanish at the solution
    (``F_m(z*) != 0`` for heterogeneous workers), so it converges to a
    neighbourhood whose size shrinks with gamma.

    Args:
        compressor: the workers' unbiased compressor (default ``RandK(ratio=0.1)``).
        server_compressor: an unbiased compressor for the server's reply, or None.
        step_size: gamma, a float or ``(B,)`` tensor (default ``1 / (2 L_Q)``).
        participation: workers per round (partial participation), or None (all).
        seed: the seed of the shared random numbers.
        transport: ``"all_gather"``, ``"server"`` or ``"auto"`` (module docstring).
    """

    compressor: Compressor = RandK(ratio=0.1)
    server_compressor: Compressor | None = None
    step_size: object = None
    participation: int | None = None
    seed: object = 0
    transport: str = "auto"

    def __post_init__(self):
        _check_compressor_field(self)

    def _default_step(self, problem, tau):
        return 1.0 / (2.0 * self._L_Q(problem))

    def init(self, problem, z0):
        self.check(problem)
        return CompressedState(w=None, Fw=None, Fw_local=None, error=None, server_error=None, anchor=None,
                               **self._common(problem))

    def step(self, problem, z, state):
        dims, gamma = problem.dims, state.step_size
        weights = self._weights(problem, state)
        g1, _, e1 = self._exchange(problem, state, problem.local_F(flatten(z)), (_UP, _DOWN), weights)
        z_half = problem.prox(z, unflatten(g1, dims), gamma)
        g2, _, e2 = self._exchange(problem, state, problem.local_F(flatten(z_half)), (_UP2, _DOWN2), weights)
        z_new = problem.prox(z, unflatten(g2, dims), gamma)
        both = {name: e1[name] + e2[name] for name in e1}
        return z_new, state._replace(**self._count(state, calls=2, samples=2 * problem.samples, **both))
