"""Checkpoints of a running `saddle.solve`: safe to load, bound to their solve, written atomically.

**Content.** A checkpoint holds everything the driver loop carries between
checks: the point, the solver's state, the per-instance status, activity and
iteration counts, the loop counter, the divergence floor and the history so
far, plus the torch CPU (and CUDA) random states and the random state of a
problem that exposes ``rng_state()`` / ``set_rng_state(state)`` (stochastic
oracles holding a generator). A resumed solve is bit-identical to an
uninterrupted one on the same device.

**Format and safety.** The file is a ``torch.save`` archive of plain data
only: tensors, numbers, strings, None, and tuples, lists and dicts of them.
A solver state (a NamedTuple, possibly nested) is stored as
``{"__namedtuple__": "module:Class", "fields": [...], "values": [...]}`` and
rebuilt on the structure of the solver's fresh state (``solver.init``), so
the file names no code. It is read with ``torch.load(..., weights_only=True)``,
which refuses anything else: a crafted pickle (one whose ``__reduce__`` would
run a command) is not executed, and it, like a truncated, empty or text file,
gives one ``ValueError`` that names the file and the reason.

**Binding.** A checkpoint carries the fingerprint of its solve
(`saddle.fingerprint`): the problem's type, batch size, block sizes, dtype
and a blake2b digest of the raw bytes of each of its data attributes, every
solver setting, and every driver setting that changes the iterates
(``check_every``, ``tol``, ``measure``, ``max_operator_calls``,
``divergence_factor``, ``history``, ``compile``; not ``max_iters``: a
finished solve can be continued with a larger budget). Resuming with
anything else is a ``ValueError`` that says what differs. A problem built on
functions whose data the fingerprint cannot see (closures or lambdas that
captured tensors) is checked on the rest, with a `CheckpointWarning`, unless
it was given a fingerprint of its own (``VIProblem(..., fingerprint=...)``).
Everything is checked before anything changes: a refused resume leaves the
caller's random states alone.

**Writing.** The checkpoint path is checked before the solve starts (a
folder, a read-only file or folder is a ``ValueError``). Each write goes to a
temporary file ``.NAME.XXXXXXXX.tmp`` in the same folder, which is renamed
over the target (``os.replace``, atomic on POSIX and Windows): a crash while
writing leaves the previous checkpoint intact, and the temporary files a
killed writer left are removed at the next write. Without
``checkpoint_every`` a solve writes at most once per `CHECKPOINT_INTERVAL`
seconds (and at its end), so checkpointing costs little however fast the
iterations are.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .fingerprint import differing_parts, problem_fingerprint, settings_fingerprint, solver_fingerprint

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointWriter", "CheckpointWarning", "check_writable",
           "binding", "restore", "restore_random_states", "to_plain", "from_plain", "CHECKPOINT_VERSION",
           "CHECKPOINT_INTERVAL"]

CHECKPOINT_VERSION = 2
FORMAT = "saddle checkpoint"

#: Seconds of solving between two checkpoints when ``checkpoint_every`` is not given.
CHECKPOINT_INTERVAL = 60.0

_PLAIN = (type(None), bool, int, float, complex, str, bytes, torch.dtype)
_NAMEDTUPLE = "__namedtuple__"


class CheckpointWarning(UserWarning):
    """A resume that could check the problem's shapes and visible data only."""


# -- writing -------------------------------------------------------------------------------------

def check_writable(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Raise ``ValueError`` unless a file can be written at ``path`` (checked by writing a temporary file).

    Messages start with ``what``, the name the caller gives the file (e.g. ``"--save out.pt"``).
    """
    path = Path(os.path.realpath(path))
    folder = path.parent
    if path.is_dir():
        raise ValueError(f"{what}: {str(path)!r} is a folder; expected a file path, e.g. "
                         f"{str(path / 'solve.pt')!r}")
    if not folder.is_dir():
        raise ValueError(f"{what}: the folder {str(folder)!r} does not exist")
    if path.exists():
        if not path.is_file():
            raise ValueError(f"{what}: {str(path)!r} exists and is not a regular file")
        if not os.access(path, os.W_OK) or not path.stat().st_mode & 0o222:
            raise ValueError(f"{what}: {str(path)!r} is read-only")
    if not folder.stat().st_mode & 0o222:
        raise ValueError(f"{what}: the folder {str(folder)!r} is read-only")
    try:
        fd, tmp = _temporary_file(path)
        os.close(fd)
        os.unlink(tmp)
    except OSError as err:
        raise ValueError(f"{what}: cannot write in the folder {str(folder)!r} ({err.strerror or err})") from err


def save_checkpoint(path: str | os.PathLike, payload: dict[str, Any], *, orphans_before: float | None = None) -> None:
    """Write ``payload`` (plus the random states and the format tag) to ``path`` atomically.

    NamedTuples in the payload are stored as plain dicts (`to_plain`); any
    other object raises ``TypeError`` before anything is written. Then the
    temporary files of ``path`` that a killed writer left are removed: all,
    or those last modified before the time ``orphans_before`` (``time.time()``),
    which spares those of a writer that started since.
    """
    path = Path(os.path.realpath(path))
    payload = to_plain(dict(payload, format=FORMAT, version=CHECKPOINT_VERSION, torch_rng=torch.get_rng_state()))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    fd, tmp = _temporary_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _remove_orphans(path, orphans_before)


def _temporary_file(path: Path) -> tuple[int, str]:
    return tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)


def _remove_orphans(path: Path, before: float | None) -> None:
    """Remove the temporary files of ``path`` (modified before ``before``, if given) that killed writers left."""
    orphan = re.compile(rf"\.{re.escape(path.name)}\.[A-Za-z0-9_]{{8}}\.tmp")
    for entry in os.scandir(path.parent):
        try:
            if orphan.fullmatch(entry.name) and (before is None or entry.stat().st_mtime < before):
                os.unlink(entry.path)
        except FileNotFoundError:  # removed meanwhile
            pass


class CheckpointWriter:
    """The checkpoints of one solve: where, how often, and the fingerprint they carry.

    Args:
        path: the checkpoint file (checked with `check_writable` beforehand).
        every: write every this many iterations; None: at most once per
            `CHECKPOINT_INTERVAL` seconds.
        binding: the solve's fingerprint (`binding`).
        loop: the loop variables at the start, to check now that they can be stored.
    """

    def __init__(self, path: str | os.PathLike, every: int | None, binding: dict, loop: dict[str, Any]):
        self.path, self.every, self.binding = path, every, binding
        self.last_k = 0  # the iteration of the last write (by iterations)
        to_plain(loop)
        self.started, self.saved_at = time.time(), time.monotonic()

    def due(self, k: int) -> bool:
        """Whether to write at iteration ``k`` (a check)."""
        if self.every is not None:  # a multiple of every was reached since the last write (checks grow apart)
            due = k // self.every > self.last_k // self.every
            self.last_k = k if due else self.last_k
            return due
        return time.monotonic() - self.saved_at >= CHECKPOINT_INTERVAL

    def save(self, loop: dict[str, Any]) -> None:
        """Write the loop variables ``loop`` with the solve's fingerprint."""
        save_checkpoint(self.path, dict(loop, binding=self.binding), orphans_before=self.started)
        self.saved_at = time.monotonic()


# -- plain data ----------------------------------------------------------------------------------

def to_plain(obj: Any, where: str = "checkpoint") -> Any:
    """``obj`` with every NamedTuple replaced by a plain dict (see the module docstring); tensors detached.

    Raises ``TypeError`` for anything but tensors, numbers, strings, None,
    dtypes, and tuples, lists and string-keyed dicts of them.
    """
    if isinstance(obj, Tensor):
        return obj.detach()
    if isinstance(obj, _PLAIN):
        return obj
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        cls = type(obj)
        return {_NAMEDTUPLE: f"{cls.__module__}:{cls.__qualname__}", "fields": list(obj._fields),
                "values": [to_plain(v, f"{where}.{f}") for f, v in zip(obj._fields, obj)]}
    if isinstance(obj, (tuple, list)):
        return type(obj)(to_plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, dict) and all(isinstance(k, str) for k in obj):
        return {k: to_plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    raise TypeError(f"{where} is a {type(obj).__name__}, which a checkpoint cannot store (tensors, numbers, "
                    "strings, None, and tuples, lists, dicts and NamedTuples of them only)")


def from_plain(data: Any, template: Any, where: str) -> Any:
    """Rebuild the NamedTuples of ``data`` (written by `to_plain`) on the structure of ``template``.

    A tensor where ``template`` has a tensor must have its shape and dtype
    (``ValueError`` otherwise) and is moved to its device. NamedTuple classes
    come from ``template``, or, where it has none (a field that was None at
    the start), from an already imported module; nothing is imported.
    """
    if isinstance(data, dict) and _NAMEDTUPLE in data:
        cls = _namedtuple_class(data, template, where)
        like = template if type(template) is cls else None
        return cls(*(from_plain(v, getattr(like, f, None), f"{where}.{f}") for f, v in zip(cls._fields,
                                                                                          data["values"])))
    if isinstance(data, Tensor):
        if not isinstance(template, Tensor):
            return data
        if data.shape != template.shape or data.dtype != template.dtype:
            raise ValueError(f"{where} is a {tuple(data.shape)} {data.dtype} tensor; this solve has "
                             f"{tuple(template.shape)} {template.dtype}")
        return data.to(template.device)
    if isinstance(data, (tuple, list)):
        like = template if isinstance(template, (tuple, list)) and len(template) == len(data) else [None] * len(data)
        return type(data)(from_plain(v, t, f"{where}[{i}]") for i, (v, t) in enumerate(zip(data, like)))
    if isinstance(data, dict):
        like = template if isinstance(template, dict) else {}
        return {k: from_plain(v, like.get(k), f"{where}[{k!r}]") for k, v in data.items()}
    return data


def _namedtuple_class(data: dict, template: Any, where: str) -> type:
    name, fields, values = data.get(_NAMEDTUPLE), data.get("fields"), data.get("values")
    if not (isinstance(name, str) and isinstance(fields, list) and isinstance(values, list)
            and len(fields) == len(values)):
        raise ValueError(f"{where} is malformed")
    if isinstance(template, tuple) and hasattr(template, "_fields"):
        cls = type(template)
    else:
        module, _, qualname = name.partition(":")
        cls = sys.modules.get(module)
        for part in qualname.split("."):
            cls = getattr(cls, part, None)
    if not (isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields")):
        raise ValueError(f"{where} is a {name}, which is not a NamedTuple this solve knows")
    if f"{cls.__module__}:{cls.__qualname__}" != name or list(cls._fields) != fields:
        raise ValueError(f"{where} is a {name} with fields {fields}; this solve's state there is a "
                         f"{cls.__module__}:{cls.__qualname__} with fields {list(cls._fields)}")
    return cls


# -- reading -------------------------------------------------------------------------------------

def load_checkpoint(path: str | os.PathLike, map_location=None) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, safely (``weights_only=True``), as plain data.

    NamedTuples stay in their plain form (`restore` rebuilds them); nothing
    global changes (`restore_random_states` restores the random states).
    Raises ``ValueError``, naming the file and the reason, for anything that
    is not a saddle checkpoint of this version.
    """
    shown = repr(str(path))
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise ValueError(f"resume: no checkpoint file at {shown}") from None
    except IsADirectoryError:
        raise ValueError(f"resume: {shown} is a folder, not a checkpoint file") from None
    except Exception as err:  # pickle.UnpicklingError, RuntimeError (zip), EOFError, OSError, ...
        raise ValueError(f"resume: {shown} is not a saddle checkpoint: {_load_error(err)}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"resume: {shown} is not a saddle checkpoint: it holds no saddle checkpoint header")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"resume: {shown} is a saddle checkpoint of version {payload.get('version')!r}; "
                         f"this saddle reads version {CHECKPOINT_VERSION}")
    return payload


def _load_error(err: Exception) -> str:
    """Why ``torch.load`` failed, in a line (never its advice to load unsafely)."""
    text = str(err)
    unsafe = re.search(r"GLOBAL ([\w.]+)", text)
    if unsafe or "weights_only" in text or "weights only" in text.lower():
        what = f" ({unsafe.group(1)})" if unsafe else ""
        return f"it holds Python objects{what} that only an unsafe unpickler would build; it was not loaded"
    first = text.strip().splitlines()[0].split(". ")[0] if text.strip() else ""
    return f"{type(err).__name__}: {first}" if first else f"{type(err).__name__} (truncated or empty file?)"


def binding(problem, solver, driver: dict[str, Any]) -> dict:
    """The fingerprint a checkpoint of this solve carries: problem, solver settings, driver settings."""
    return {"problem": problem_fingerprint(problem), "solver": solver_fingerprint(solver),
            "solver_repr": repr(solver), "driver": settings_fingerprint(driver)}


def restore(path: str | os.PathLike, current: dict, template: dict[str, Any], map_location=None) -> dict:
    """The loop variables saved at ``path``, checked against this solve and rebuilt on ``template``.

    Args:
        path: the checkpoint file.
        current: this solve's `binding`.
        template: this solve's loop variables at the start (the same keys as saved).
        map_location: the device of the problem.

    Raises ``ValueError`` (naming the file and what differs) if the file is
    not a checkpoint of this solve; changes nothing global (the random states
    are returned, under ``"torch_rng"`` and ``"cuda_rng"``, for
    `restore_random_states`). Warns (`CheckpointWarning`) when the problem
    could be checked on its shapes and visible data only.
    """
    saved = load_checkpoint(path, map_location=map_location)
    _check_binding(repr(str(path)), saved.get("binding"), current)
    shown = f"resume: {str(path)!r}:"
    loop = {}
    for key, like in template.items():
        if key not in saved:
            raise ValueError(f"{shown} the checkpoint has no {key!r}")
        loop[key] = from_plain(saved[key], like, f"{shown} {key}")
    _check_loop(shown, loop)
    rng = saved.get("torch_rng")
    if not (isinstance(rng, Tensor) and rng.dtype == torch.uint8 and rng.shape == torch.get_rng_state().shape):
        raise ValueError(f"{shown} the saved torch random state is malformed")
    loop["torch_rng"], loop["cuda_rng"] = rng, saved.get("cuda_rng")
    opaque = current["problem"]["opaque"]
    if opaque:
        warnings.warn(f"resume: the problem is built on functions whose data saddle cannot see "
                      f"({', '.join(opaque[:3])}{', ...' if len(opaque) > 3 else ''}), so only its shapes, dtype "
                      "and visible data were checked against the checkpoint; give the problem a fingerprint "
                      "of its data (VIProblem/SaddleProblem(..., fingerprint='...')) to bind it",
                      CheckpointWarning, stacklevel=3)
    return loop


def _check_binding(shown: str, saved: Any, current: dict) -> None:
    """Raise ``ValueError`` saying which part of the solve differs from the one that wrote the checkpoint."""
    try:
        problem, solver, _ = saved["problem"], saved["solver"], saved["driver"]  # (all three must be there)
        summary, parts = problem["summary"], problem["parts"]
    except (TypeError, KeyError):
        raise ValueError(f"resume: {shown} has no fingerprint of its solve") from None
    now = current["problem"]["summary"]
    if summary.get("type") != now["type"]:
        raise ValueError(f"resume: {shown} was written for a {summary.get('type')}; this problem is a {now['type']}")
    if summary.get("dtype") != now["dtype"]:
        raise ValueError(f"resume: {shown} was written for a {summary.get('dtype')} problem; this one is "
                         f"{now['dtype']}")
    if summary.get("batch_size") != now["batch_size"] or summary.get("dims") != now["dims"]:
        raise ValueError(f"resume: {shown} was written for a batch of {summary.get('batch_size')} with blocks of "
                         f"sizes {summary.get('dims')}; this problem has {now['batch_size']} and {now['dims']}")
    differ = differing_parts(parts, current["problem"]["parts"])
    if differ:
        raise ValueError(f"resume: {shown} was written by a solve of another problem with the same shapes: its "
                         f"data differ in {', '.join(differ)}")
    if solver.get("solver") != current["solver"]["solver"]:
        raise ValueError(f"resume: the checkpoint {shown} was written by {saved.get('solver_repr')}; this solve "
                         f"runs {current['solver_repr']}")
    for kind, what in (("solver", "solver setting"), ("driver", "setting")):
        differ = differing_parts(saved[kind], current[kind])
        if differ:
            raise ValueError(f"resume: {shown} was written with another value of the {what} {', '.join(differ)}; "
                             f"resume with the settings of the solve that wrote it ({saved.get('solver_repr')})")


def _check_loop(shown: str, loop: dict) -> None:
    """The driver's own loop variables: plain types, as `solve` wrote them."""
    k, rows, history = loop.get("k"), loop.get("rows"), loop.get("history_state")
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise ValueError(f"{shown} the loop counter k is {k!r}, not an integer >= 0")
    if not (isinstance(rows, list) and all(isinstance(r, dict) for r in rows) and isinstance(history, dict)):
        raise ValueError(f"{shown} the history is malformed")


def restore_random_states(loop: dict) -> None:
    """Set torch's CPU (and CUDA) random states to those `restore` returned."""
    torch.set_rng_state(loop["torch_rng"].cpu())
    cuda = loop.get("cuda_rng")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
