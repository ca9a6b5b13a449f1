"""The ``saddle`` command: ``saddle compare`` (the main job), ``saddle solve`` and ``saddle bench``.

Problems and solvers are given as ``NAME`` or ``NAME:key=value,key=value``,
e.g. ``--problem matrix_game:n=100`` or ``--solver extragradient:step_size=0.05``;
values are Python literals (numbers, strings, booleans, None, lists, tuples),
read with `ast.literal_eval` and never executed; a bare word is a string
(``geometry=entropic``) and ``nan``, ``inf`` and ``-inf`` are floats. A
problem's own ``batch_size``, ``seed``, ``device`` or ``dtype`` overrides the
option of that name for that problem.

A mistake in the command line (a malformed spec, an unknown name or setting,
a value out of range, a device that is not there, an output file that cannot
be written) is reported in one line that names the option, with exit status
2, and is found before any solve, so no finished work is lost to it. Errors
from inside the library are not caught: a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import ast
import io
import math
import os
import sys
import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO, Callable, NamedTuple

import torch

DEFAULT_PROBLEMS = ("matrix_game:n=50", "bilinear:n=50")
# Both PDHG schemes: Halpern's wins on the matrix games (fewer calls, less time), PDLP's on the bilinear problem.
DEFAULT_SOLVERS = ("r2hpdhg", "pdhg", "extragradient", "optimistic", "gda")
DEFAULT_PLOT = "saddle-compare.png"
_INT64_MAX = 2**63 - 1  # torch sizes, counts and seeds are 64-bit integers
_NON_FINITE = {"nan": math.nan, "inf": math.inf, "+inf": math.inf, "-inf": -math.inf}
_DTYPES = {"float64": torch.float64, "float32": torch.float32}
_TOO_LARGE = "too large for this machine: use a smaller --batch-size or problem"


# ----------------------------------------------------------------------------------------------- specs


def parse_spec(text: str) -> tuple[str, dict]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": v, "k2": v2})``.

    Values are Python literals read with `ast.literal_eval` (never executed);
    commas inside brackets or quotes do not split items (``sizes=[1,2]``). A
    bare word is a string, ``nan``/``inf``/``-inf`` are floats, and integers
    must fit in 64 bits. Raises ``ValueError`` for a malformed spec: no name,
    an item without ``key=`` or without a value, a key given twice, a value
    that opens a bracket or a quote but is not a literal.
    """
    if not isinstance(text, str):
        raise TypeError(f"a spec must be a string, got {type(text).__name__}")
    name, colon, rest = (part.strip() for part in text.partition(":"))
    if not name:
        raise ValueError(f"{text!r}: expected NAME or NAME:key=value,..., but the name is missing")
    settings = {}
    if colon:
        for item in _split_items(rest):
            key, eq, value = (part.strip() for part in item.partition("="))
            if not eq or not key.isidentifier() or not value:
                raise ValueError(f"{text!r}: expected NAME:key=value,... with a value for each key, "
                                 f"got item {item.strip()!r}")
            if key in settings:
                raise ValueError(f"{text!r}: {key!r} is given twice")
            settings[key] = _literal(value, f"{text!r}: {key}")
    return name, settings


def _split_items(text: str) -> list[str]:
    """``text`` split at the commas that are outside brackets and quotes."""
    items, depth, quote, escaped, start = [], 0, None, False, 0
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote and not escaped else quote
            escaped = ch == "\\" and not escaped
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    return items + [text[start:]]


def _literal(value: str, where: str):
    """The Python literal ``value`` (a bare word: the string itself; ``nan``/``inf``: floats)."""
    if value.lower() in _NON_FINITE:
        return _NON_FINITE[value.lower()]
    try:
        literal = ast.literal_eval(value)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        if value[0] in "([{'\"":
            raise ValueError(f"{where}={value} is not a Python literal (check its brackets and quotes)") from None
        return value
    if isinstance(literal, int) and abs(literal) > _INT64_MAX:
        raise ValueError(f"{where}={value} does not fit in a 64-bit integer")
    return literal


class _Spec(NamedTuple):
    """A parsed ``NAME:key=value,...`` argument: the text as given, the name and the settings."""

    text: str
    name: str
    settings: dict


def _spec(text: str) -> _Spec:
    return _Spec(text, *parse_spec(text))


# ------------------------------------------------------------------------------------ option checks


def _integer(minimum: int, what: str) -> Callable[[str], int]:
    """A check of an integer option: at least ``minimum``, at most 2**63 - 1 (``what`` describes it)."""

    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ValueError(f"expected {what}, got {text!r}") from None
        if not minimum <= value <= _INT64_MAX:
            raise ValueError(f"expected {what}{' below 2**63' if value > 0 else ''}, got {text!r}")
        return value

    return check


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"expected a non-negative finite number, got {text!r}")
    return value


def _dtype(text: str) -> torch.dtype:
    if text not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {text!r}")
    return _DTYPES[text]


def _device(value) -> torch.device:
    """The torch device ``value`` names, checked to exist on this machine (``ValueError`` if not)."""
    if isinstance(value, torch.device):
        device = value
    else:
        try:
            device = torch.device(value)
        except (RuntimeError, TypeError):
            raise ValueError(f"expected a torch device such as cpu, cuda or cuda:1, got {value!r}") from None
    if device.type == "meta":
        raise ValueError("the meta device holds no data; expected cpu, cuda, ...")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"device {str(device)!r}: CUDA is not available here (torch.cuda.is_available() "
                             "is False); use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {str(device)!r}: there are {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
        return device
    try:
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as err:  # torch reports a missing backend either way
        raise ValueError(f"device {str(device)!r} is not available here ({_first_line(err)})") from None
    return device


def _first_line(err: BaseException, limit: int = 200) -> str:
    """The first line of an error's message, cut to ``limit`` characters."""
    line = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return line if len(line) <= limit else line[:limit - 3] + "..."


def _option(check: Callable) -> Callable[[str], object]:
    """An argparse ``type`` from a check that raises ``ValueError``: argparse reports the check's message."""

    def parse(text: str):
        try:
            return check(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    parse.__name__ = check.__name__
    return parse


def _output_file(text: str, *, plot: bool = False) -> Path:
    """The file ``text`` names, checked before any work: its folder exists and takes a new file.

    For a plot the extension must be a format matplotlib can write here; a
    name without one gets ``.png`` (as matplotlib's ``savefig`` would add).
    """
    path = Path(text).expanduser()
    if not text or text.endswith(("/", os.sep)) or path.is_dir():
        raise ValueError(f"{text!r} is a folder; expected a file name such as "
                         f"{str(path / (DEFAULT_PLOT if plot else 'saddle-bench.md'))!r}")
    if plot and not path.suffix:
        path = path.with_name(path.name + ".png")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"the folder {str(folder)!r} of {text!r} does not exist")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ValueError(f"cannot write to the folder {str(folder)!r} ({err.strerror})") from None
    if plot:
        _check_plot_format(path.suffix[1:].lower())
    return path


def _check_plot_format(fmt: str) -> None:
    """Raise ``ValueError`` unless matplotlib can write ``fmt`` files here (tried on a tiny figure)."""
    from matplotlib.figure import Figure

    formats = Figure().canvas.get_supported_filetypes()
    if fmt not in formats:
        raise ValueError(f"matplotlib cannot write .{fmt} files; expected one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    probe = Figure(figsize=(1, 1))
    probe.text(0.5, 0.5, "x")  # text, so that formats needing a TeX installation (.pgf) are tried in full
    try:
        probe.savefig(io.BytesIO(), format=fmt)
    except (ValueError, RuntimeError, OSError, ImportError) as err:
        raise ValueError(f"matplotlib cannot write .{fmt} files on this machine "
                         f"({_first_line(err)})") from None


def _write_atomically(path: Path, write: Callable[[BinaryIO], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, then rename it to ``path`` (no partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # (open, unlike mkstemp, applies the umask)
    try:
        with open(tmp, "wb") as file:
            write(file)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------ errors


class _UsageError(Exception):
    """A mistake in the command line: `main` prints it in one line and returns 2."""

    def __init__(self, message: str, prog: str | None = None):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are `_UsageError`s (one line, and `main` returns instead of exiting)."""

    def error(self, message: str):
        raise _UsageError(message, self.prog)


def _too_large(err: BaseException) -> bool:
    """Whether ``err`` says that an allocation failed or a tensor's size overflowed."""
    message = str(err).lower()
    return (isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "can't allocate memory" in message
            or "overflow" in message)


@contextmanager
def _reported_as(option: str):
    """Report a ``ValueError``/``TypeError`` (or a failed allocation) raised inside as a usage error on ``option``."""
    try:
        yield
    except (ValueError, TypeError) as err:
        raise _UsageError(f"{option}: {err}") from err
    except (MemoryError, RuntimeError) as err:
        if not _too_large(err):
            raise
        raise _UsageError(f"{option}: {_TOO_LARGE} ({_first_line(err)})") from err


# ------------------------------------------------------------------------------------ the parser


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", "-B", type=_option(_integer(1, "a positive integer")), default=64,
                   help="instances per problem (default: 64)")
    p.add_argument("--seed", type=_option(_integer(0, "a non-negative integer")), default=0,
                   help="seed of the random problem data (default: 0)")
    p.add_argument("--device", type=_option(_device), default="cpu",
                   help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", type=_option(_dtype), default=torch.float64,
                   help="float64 or float32 (default: float64)")
    p.add_argument("--tol", type=_option(_tolerance), default=1e-8,
                   help="stop an instance when its measure is below this (default: 1e-8)")
    p.add_argument("--measure", choices=("gap", "residual"), default=None,
                   help="stopping measure (default: the duality gap where computable, else the residual)")
    p.add_argument("--max-iters", type=_option(_integer(0, "a non-negative integer")), default=10_000,
                   help="iteration limit per instance (default: 10000)")
    p.add_argument("--max-operator-calls", type=_option(_integer(1, "a positive integer")), default=None,
                   help="operator-call budget per instance")
    p.add_argument("--check-every", type=_option(_integer(1, "a positive integer")), default=10,
                   help="iterations between the first checks; they then grow apart by 10%% (default: 10)")
    p.add_argument("--progress", action="store_true", help="show a progress bar per solve")


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``saddle`` command; its errors raise `_UsageError` (see `main`)."""
    from saddle import problems

    import saddle

    parser = _Parser(prog="saddle", description="Batched solvers for minimax problems, saddle-point "
                     "problems and variational inequalities.")
    sub = parser.add_subparsers(dest="command", required=True)
    spec = _option(_spec)

    cmp = sub.add_parser(
        "compare", help="run several solvers on the same problems and print a table and a convergence plot",
        description="Run several solvers on the same batch of problems under the same stopping rule; print, per "
        "problem, a table of statuses, operator calls, wall time, final gap or residual and the error against "
        "the problem's exact reference, and write a plot of the measure against operator calls.",
        epilog=f"problems: {', '.join(problems.names())}\nsolvers: {', '.join(saddle.solver_names())}\n\n"
        "example: saddle compare --problem matrix_game:n=20 --solver extragradient --solver optimistic -B 16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("--problem", "-p", type=spec, action="append", default=None, metavar="NAME[:k=v,...]",
                     help=f"a problem to solve (repeatable; default: {' and '.join(DEFAULT_PROBLEMS)})")
    cmp.add_argument("--solver", "-s", type=spec, action="append", default=None, metavar="NAME[:k=v,...]",
                     help=f"a solver to run (repeatable; default: {', '.join(DEFAULT_SOLVERS)})")
    cmp.add_argument("--output", "-o", default=None,
                     help=f"where to write the convergence plot: .png, .pdf, .svg, ... (default: {DEFAULT_PLOT})")
    cmp.add_argument("--no-plot", action="store_true", help="do not write the plot")
    _common(cmp)

    slv = sub.add_parser("solve", help="solve one problem with one solver and print the result",
                         description="Solve a batch of one problem with one solver and print the Solution summary.")
    slv.add_argument("problem", type=spec, metavar="PROBLEM", help="the problem, as NAME[:k=v,...]")
    slv.add_argument("--solver", "-s", type=spec, default="extragradient", metavar="NAME[:k=v,...]")
    _common(slv)

    bench = sub.add_parser("bench", help="run every benchmark script and write one markdown report of the ratios",
                           description="Run the scripts in benchmarks/ (quick settings unless --full), gather every "
                           "ratio against a named baseline from their tables into one markdown table, and write the "
                           "report with each script's output.")
    bench.add_argument("--folder", default=None,
                       help="the benchmarks folder (default: benchmarks/ of this source checkout)")
    bench.add_argument("--only", action="append", default=None, metavar="NAME",
                       help="run only this script (repeatable; e.g. sam, matrix_games)")
    bench.add_argument("--full", action="store_true", help="the scripts' full settings instead of --quick")
    bench.add_argument("--device", type=_option(_device), default=None,
                       help="passed to the scripts that take --device (e.g. cuda)")
    bench.add_argument("--timeout", type=float, default=3600.0, help="seconds per script (default: 3600)")
    bench.add_argument("--output", "-o", default="saddle-bench.md", help="the report (default: saddle-bench.md)")
    return parser


# ------------------------------------------------------------------------------------ the commands
#
# Each command checks everything it was given (raising `_UsageError`) and
# returns the work to do, which `main` runs outside of any error handling.


def _make_problem(spec: _Spec, args, option: str):
    from saddle import problems

    settings = {"batch_size": args.batch_size, "seed": args.seed, "device": args.device, "dtype": args.dtype,
                **spec.settings}
    with _reported_as(f"{option} {spec.text!r}"):
        settings["device"] = _device(settings["device"])
        if isinstance(settings["dtype"], str):
            settings["dtype"] = _dtype(settings["dtype"])
        return problems.get(spec.name, **settings)


def _make_solver(spec: _Spec):
    from .solvers.base import get_solver

    with _reported_as(f"--solver {spec.text!r}"):
        return get_solver(spec.name, **spec.settings)


def _check_runs(problem, spec: _Spec, option: str, solvers: dict, args) -> str:
    """Check (no iteration run) that every solver runs on the problem under the options; return the measure."""
    from .comparison import check_comparison, has_gap

    if args.measure == "gap" and not has_gap(problem):
        raise _UsageError(f"--measure gap: {option} {spec.text!r} has no computable duality gap; "
                          "use --measure residual")
    measure = args.measure
    for label, solver in solvers.items():
        with _reported_as(f"--solver {label!r} on {option} {spec.text!r}"):
            measure = check_comparison(problem, {label: solver}, **_stopping_rule(args))
    return measure


def _stopping_rule(args) -> dict:
    return dict(tol=args.tol, measure=args.measure, max_iters=args.max_iters, check_every=args.check_every,
                max_operator_calls=args.max_operator_calls)


def _compare(args) -> Callable[[], int]:
    from .comparison import compare, format_table

    problem_specs = args.problem or [_spec(s) for s in DEFAULT_PROBLEMS]
    solver_specs = args.solver or [_spec(s) for s in DEFAULT_SOLVERS]
    repeated = sorted(text for text, n in Counter(s.text for s in solver_specs).items() if n > 1)
    if repeated:
        raise _UsageError(f"--solver: {', '.join(map(repr, repeated))} given more than once")
    if args.no_plot and args.output is not None:
        raise _UsageError("--output and --no-plot: give one of them")
    output = None
    if not args.no_plot:
        with _reported_as("--output"):
            output = _output_file(args.output or DEFAULT_PLOT, plot=True)
    solvers = {spec.text: _make_solver(spec) for spec in solver_specs}
    batch = [_make_problem(spec, args, "--problem") for spec in problem_specs]
    for spec, problem in zip(problem_specs, batch):
        _check_runs(problem, spec, "--problem", solvers, args)

    def work() -> int:
        results = []
        for problem in batch:
            rows = compare(problem, solvers, progress=args.progress, **_stopping_rule(args))
            ref = problem.reference
            title = (f"{problem.name}: B={problem.batch_size}, {problem.dtype}, {problem.device}, "
                     f"tol={args.tol:g} on the {rows[0].measure}; reference: "
                     f"{ref.source if ref is not None else 'none'}")
            print(format_table(rows, title=title))
            print()
            results.append((problem, rows))
        if output is not None:
            _plot(results, output)
            print(f"convergence plot written to {output}")
        return 0

    return work


def _plot(results, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import convergence

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (problem, rows) in zip(axes[0], results):
        convergence({r.solver: r.solution for r in rows}, measure=rows[0].measure, ax=ax,
                    title=f"{problem.name}, B={problem.batch_size}")
    fig.tight_layout()
    try:
        _write_atomically(path, lambda file: fig.savefig(file, format=path.suffix[1:].lower(), dpi=120))
    finally:
        plt.close(fig)


def _solve(args) -> Callable[[], int]:
    from .comparison import reference_errors
    from .solve import solve

    problem = _make_problem(args.problem, args, "PROBLEM")
    solver = _make_solver(args.solver)
    measure = _check_runs(problem, args.problem, "PROBLEM", {args.solver.text: solver}, args)

    def work() -> int:
        sol = solve(problem, solver, progress=args.progress, **(_stopping_rule(args) | {"measure": measure}))
        print(sol)
        value_error, distance = reference_errors(problem, sol.z)
        if value_error is not None:
            print(f"value error vs reference: max {value_error.max().item():.3e}")
        if distance is not None:
            print(f"distance to reference:    max {distance.max().item():.3e}")
        return 0 if bool(sol.success.all()) else 1

    return work


def _bench(args) -> Callable[[], int]:
    from .bench import check_timeout, find_scripts, report, run_benchmarks

    folder = Path(args.folder) if args.folder else Path(__file__).resolve().parents[1] / "benchmarks"
    with _reported_as("--folder"):
        scripts = find_scripts(folder)
    if not scripts:
        raise _UsageError(f"--folder: no benchmark scripts (*.py) in {str(folder)!r}")
    if args.only:
        unknown = set(args.only) - {s.stem for s in scripts}
        if unknown:
            raise _UsageError(f"--only: no benchmark script(s) {sorted(unknown)} in {folder}; there are "
                              f"{', '.join(s.stem for s in scripts)}")
        scripts = [s for s in scripts if s.stem in args.only]
    with _reported_as("--timeout"):
        check_timeout(args.timeout)
    with _reported_as("--output"):
        output = _output_file(args.output)
    device = None if args.device is None else str(args.device)

    def work() -> int:
        runs = run_benchmarks(scripts, quick=not args.full, device=device, timeout=args.timeout)
        text = report(runs, device=device)
        _write_atomically(output, lambda file: file.write(text.encode()))
        print(text.split("## Script outputs")[0].rstrip())
        print(f"\nreport written to {output}")
        return 0 if all(r.returncode == 0 for r in runs) else 1

    return work


_COMMANDS = {"compare": _compare, "solve": _solve, "bench": _bench}


def main(argv: list[str] | None = None) -> int:
    """Run the ``saddle`` command; returns the exit status.

    A mistake in the command line prints one line on stderr and returns 2
    before any work is done; an allocation that fails while solving (a
    problem too large for the machine) is reported the same way.
    """
    parser = build_parser()
    args = None
    try:
        args = parser.parse_args(argv)
        work = _COMMANDS[args.command](args)
    except _UsageError as err:
        message = " ".join(str(err).splitlines())
        print(f"{err.prog or f'saddle {args.command}'}: error: {message}", file=sys.stderr)
        return 2
    try:
        return work()
    except (MemoryError, RuntimeError) as err:
        if not _too_large(err):
            raise
        print(f"saddle {args.command}: error: {_TOO_LARGE} ({_first_line(err)})", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
