"""Ranks agree or refuse: the start-up exchange of ``python -m saddle.distributed`` under torchrun.

Every rank sends the others one fixed-size report (`RankReport`: a hash of each option in
`SHARED_OPTIONS`, a digest of the problem it built, its own setup error) with one ``all_gather``,
before any collective whose size depends on the options. Every rank then computes the same
`refusal` from the same reports, so ranks started with different options, ranks that built
different problems, or one rank that could not set up, end every rank with one message naming
the option, the ranks and the cause.
"""

from __future__ import annotations

import hashlib
import json
from typing import NamedTuple, Sequence

import torch
from torch import Tensor

from .groups import WorkerGroup
from .problem import DistributedProblem

__all__ = ["SHARED_OPTIONS", "RankReport", "require_agreement", "shared_options", "problem_digest", "encode",
           "decode", "refusal", "format_ranks", "hash64"]

# The options every rank must be started with, in the digest's order: all but --save (only rank 0
# writes), --timeout (a process's own patience) and --simulate (no ranks).
SHARED_OPTIONS = ("problem", "size", "samples", "batch_size", "seed", "solver", "compressor", "keep",
                  "server_compressor", "step_size", "sync_prob", "participation", "minibatch", "max_iters", "tol",
                  "measure", "check_every", "backend", "fail_rank", "fail_at", "fail_mode", "dtype", "transport",
                  "bandwidth")
# A rank's report has a fixed size whatever the options, so that ranks which disagree (or run other
# versions of this module) exchange it without a collective mismatch: int64 slots (the options'
# layout, the problem, an error flag, one hash per shared option), then ASCII JSON of the values and
# of the rank's error, zero-padded.
_DIGEST_SLOTS = 32
_TEXT_BYTES = 4096
assert 3 + len(SHARED_OPTIONS) <= _DIGEST_SLOTS


def shared_options(args, group: WorkerGroup) -> dict[str, str]:
    """``{"--flag": value}`` of every option in `SHARED_OPTIONS` (the backend as resolved)."""
    value = dict(vars(args), backend=group.backend)
    return {"--" + name.replace("_", "-"): str(value[name]) for name in SHARED_OPTIONS}


class RankReport(NamedTuple):
    """What a rank tells the others at start-up (``values`` is None if its text could not be read)."""

    layout: int
    problem: int
    options: tuple[int, ...]
    values: dict[str, str] | None
    error: str | None


def hash64(text: str) -> int:
    """A signed 64-bit blake2b hash of ``text`` (fits an int64 tensor slot)."""
    return _int64(hashlib.blake2b(text.encode(), digest_size=8).digest())


def _int64(digest: bytes) -> int:
    return int.from_bytes(digest, "little", signed=True)


def problem_digest(problem: DistributedProblem) -> int:
    """A 64-bit hash of what every rank knows of the whole problem: name, shapes, start and constants.

    The constants come from every worker's data, so ranks that generated different data (another
    torch version, say) differ here. They are rounded to float32 first, so that last-bit differences
    between machines' linear algebra libraries do not count.
    """
    h = hashlib.blake2b(f"{problem.name} {problem.dims} {problem.batch_size}".encode(), digest_size=8)
    for t in (*problem.z0, problem.lipschitz(), problem.strong_monotonicity(), problem.local_lipschitz(),
              problem.mean_square_sample_lipschitz()):
        if t is not None:
            h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return _int64(h.digest())


def encode(report: RankReport) -> Tensor:
    """A report as ``(8 * _DIGEST_SLOTS + _TEXT_BYTES,)`` uint8: the int64 slots, then the JSON text."""
    slots = torch.zeros(_DIGEST_SLOTS, dtype=torch.int64)
    head = [report.layout, report.problem, int(report.error is not None), *report.options]
    slots[:len(head)] = torch.tensor(head, dtype=torch.int64)
    text = json.dumps({"values": {k: v[:60] for k, v in (report.values or {}).items()},
                       "error": None if report.error is None else report.error[:1000]}).encode()[:_TEXT_BYTES]
    buffer = torch.zeros(_TEXT_BYTES, dtype=torch.uint8)
    buffer[:len(text)] = torch.frombuffer(bytearray(text), dtype=torch.uint8)
    return torch.cat([slots.view(torch.uint8), buffer])


def decode(row: Tensor) -> RankReport:
    """The inverse of `encode` (a text cut short or unreadable gives ``values=None``)."""
    slots = row[:8 * _DIGEST_SLOTS].clone().view(torch.int64).tolist()
    failed = slots[2] != 0
    try:
        payload = json.loads(bytes(row[8 * _DIGEST_SLOTS:].tolist()).rstrip(b"\0").decode("ascii"))
        values, error = payload["values"], payload["error"]
    except (ValueError, KeyError, TypeError):
        values, error = None, None
    if failed and error is None:
        error = "(its message could not be read)"
    return RankReport(slots[0], slots[1], tuple(slots[3:3 + len(SHARED_OPTIONS)]), values, error)


def refusal(reports: Sequence[RankReport]) -> str | None:
    """The one message that ends every rank, or None when every rank agrees and none failed."""
    if len({r.layout for r in reports}) > 1:
        return ("the ranks run different versions of saddle.distributed (they compare different options): "
                "install the same version on every machine")
    parts = []
    flags = ["--" + name.replace("_", "-") for name in SHARED_OPTIONS]
    differing = [_describe_option(reports, i, flag) for i, flag in enumerate(flags)
                 if len({r.options[i] for r in reports}) > 1]
    if differing:
        parts.append("the ranks were started with different options: " + "; ".join(differing)
                     + " (every rank needs the same options)")
    failed = [(rank, r.error) for rank, r in enumerate(reports) if r.error is not None]
    if failed:
        messages = {message for _, message in failed}
        if len(failed) == len(reports) and len(messages) == 1:
            parts.append(messages.pop())
        else:
            parts.extend(f"{format_ranks([rank for rank, m in failed if m == message])}: {message}"
                         for message in dict.fromkeys(m for _, m in failed))
    elif not differing and len({r.problem for r in reports}) > 1:
        groups = _by_value([r.problem for r in reports])
        parts.append("the ranks built different problems from the same options (their starting points or "
                     f"constants differ: {' vs '.join(format_ranks(g) for g in groups)}); are torch and saddle the "
                     "same versions on every machine?")
    return "; ".join(parts) if parts else None


def _describe_option(reports: Sequence[RankReport], i: int, flag: str) -> str:
    """E.g. ``"--seed 0 on rank 0 vs --seed 1 on ranks 1-3"``."""
    described = []
    for ranks in _by_value([r.options[i] for r in reports]):
        values = reports[ranks[0]].values
        value = "?" if values is None else values.get(flag, "?")
        described.append(f"{'no ' + flag if value == 'None' else flag + ' ' + value} on {format_ranks(ranks)}")
    return " vs ".join(described)


def _by_value(values: Sequence) -> list[list[int]]:
    """The indices of equal values, grouped, in order of first appearance."""
    groups: dict = {}
    for i, v in enumerate(values):
        groups.setdefault(v, []).append(i)
    return list(groups.values())


def format_ranks(ranks: Sequence[int]) -> str:
    """``"rank 3"``, ``"ranks 0, 2"``, ``"ranks 0-5, 7"``."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][-1] + 1:
            runs[-1].append(r)
        else:
            runs.append([r])
    text = ", ".join(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}" for run in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


def require_agreement(args, group: WorkerGroup, problem: DistributedProblem | None, error: str | None) -> None:
    """Exchange every rank's report and raise the same `ValueError` on all of them unless they agree.

    Args:
        args: this rank's parsed options (an ``argparse.Namespace`` with every name in `SHARED_OPTIONS`).
        group: the `TorchDistributedGroup` of the ranks (it needs ``gather_objects`` and ``device``).
        problem: the problem this rank built, or None if it could not.
        error: this rank's setup error, or None.
    """
    options = shared_options(args, group)
    report = RankReport(layout=hash64(" ".join(options)), problem=0 if problem is None else problem_digest(problem),
                        options=tuple(hash64(v) for v in options.values()), values=options, error=error)
    reports = [decode(row) for row in group.gather_objects(encode(report).to(group.device)).cpu()]
    message = refusal(reports)
    if message is not None:
        raise ValueError(message)
