"""The ``saddle`` command: ``saddle compare`` (the main job), ``saddle solve`` and ``saddle bench``.

Problems and solvers are given as ``NAME`` or ``NAME:key=value,key=value``,
e.g. ``--problem matrix_game:n=100`` or ``--solver extragradient:step_size=0.05``;
values are Python literals (numbers, strings, booleans, None).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

import torch

DEFAULT_PROBLEMS = ("matrix_game:n=50", "bilinear:n=50")
DEFAULT_SOLVERS = ("pdhg", "extragradient", "optimistic", "gda")


def parse_spec(text: str) -> tuple[str, dict]:
    """``"name:k=v,k2=v2"`` -> ``("name", {"k": v, "k2": v2})`` with literal values."""
    name, _, rest = text.partition(":")
    kwargs = {}
    if rest:
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            if not eq or not key.strip():
                raise argparse.ArgumentTypeError(f"{text!r}: expected NAME:key=value,..., got item {item!r}")
            try:
                kwargs[key.strip()] = ast.literal_eval(value.strip())
            except (ValueError, SyntaxError):
                kwargs[key.strip()] = value.strip()
    return name.strip(), kwargs


def _dtype(text: str) -> torch.dtype:
    dtypes = {"float64": torch.float64, "float32": torch.float32}
    if text not in dtypes:
        raise argparse.ArgumentTypeError(f"dtype must be one of {sorted(dtypes)}, got {text!r}")
    return dtypes[text]


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch-size", "-B", type=int, default=64, help="instances per problem (default: 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random problem data (default: 0)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    p.add_argument("--dtype", type=_dtype, default=torch.float64, help="float64 or float32 (default: float64)")
    p.add_argument("--tol", type=float, default=1e-8,
                   help="stop an instance when its measure is below this (default: 1e-8)")
    p.add_argument("--measure", choices=("gap", "residual"), default=None,
                   help="stopping measure (default: the duality gap where computable, else the residual)")
    p.add_argument("--max-iters", type=int, default=10_000, help="iteration limit per instance (default: 10000)")
    p.add_argument("--max-operator-calls", type=int, default=None, help="operator-call budget per instance")
    p.add_argument("--check-every", type=int, default=10, help="iterations between checks (default: 10)")
    p.add_argument("--progress", action="store_true", help="show a progress bar per solve")


def build_parser() -> argparse.ArgumentParser:
    import problems

    import saddle

    parser = argparse.ArgumentParser(prog="saddle", description="Batched solvers for minimax problems, saddle-point "
                                     "problems and variational inequalities.")
    sub = parser.add_subparsers(dest="command", required=True)

    cmp = sub.add_parser(
        "compare", help="run several solvers on the same problems and print a table and a convergence plot",
        description="Run several solvers on the same batch of problems under the same stopping rule; print, per "
        "problem, a table of statuses, operator calls, wall time, final gap or residual and the error against "
        "the problem's exact reference, and write a plot of the measure against operator calls.",
        epilog=f"problems: {', '.join(problems.names())}\nsolvers: {', '.join(saddle.solver_names())}\n\n"
        "example: saddle compare --problem matrix_game:n=20 --solver extragradient --solver optimistic -B 16",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    cmp.add_argument("--problem", "-p", action="append", default=None, metavar="NAME[:k=v,...]",
                     help=f"a problem to solve (repeatable; default: {' and '.join(DEFAULT_PROBLEMS)})")
    cmp.add_argument("--solver", "-s", action="append", default=None, metavar="NAME[:k=v,...]",
                     help=f"a solver to run (repeatable; default: {', '.join(DEFAULT_SOLVERS)})")
    cmp.add_argument("--output", "-o", default="saddle-compare.png",
                     help="where to write the convergence plot (PNG; default: saddle-compare.png)")
    cmp.add_argument("--no-plot", action="store_true", help="do not write the plot")
    _common(cmp)

    slv = sub.add_parser("solve", help="solve one problem with one solver and print the result",
                         description="Solve a batch of one problem with one solver and print the Solution summary.")
    slv.add_argument("problem", metavar="PROBLEM[:k=v,...]")
    slv.add_argument("--solver", "-s", default="extragradient", metavar="NAME[:k=v,...]")
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
    bench.add_argument("--device", default=None, help="passed to the scripts that take --device (e.g. cuda)")
    bench.add_argument("--timeout", type=float, default=3600.0, help="seconds per script (default: 3600)")
    bench.add_argument("--output", "-o", default="saddle-bench.md", help="the report (default: saddle-bench.md)")
    return parser


def _make_problem(spec: str, args):
    import problems

    name, kwargs = parse_spec(spec)
    kwargs.setdefault("batch_size", args.batch_size)
    kwargs.setdefault("seed", args.seed)
    kwargs.setdefault("device", args.device)
    kwargs.setdefault("dtype", args.dtype)
    return problems.get(name, **kwargs)


def _make_solver(spec: str):
    from .solvers.base import get_solver

    name, kwargs = parse_spec(spec)
    return get_solver(name, **kwargs)


def _compare(args) -> int:
    from .comparison import compare, format_table

    problem_specs = args.problem or list(DEFAULT_PROBLEMS)
    solver_specs = args.solver or list(DEFAULT_SOLVERS)
    solvers = {spec: _make_solver(spec) for spec in solver_specs}
    results = []
    for spec in problem_specs:
        problem = _make_problem(spec, args)
        rows = compare(problem, solvers, tol=args.tol, measure=args.measure, max_iters=args.max_iters,
                       check_every=args.check_every, max_operator_calls=args.max_operator_calls,
                       progress=args.progress)
        ref = problem.reference
        title = (f"{problem.name}: B={problem.batch_size}, {problem.dtype}, {problem.device}, tol={args.tol:g} "
                 f"on the {rows[0].measure}; reference: {ref.source if ref is not None else 'none'}")
        print(format_table(rows, title=title))
        print()
        results.append((problem, rows))
    if not args.no_plot:
        path = _plot(results, args.output)
        print(f"convergence plot written to {path}")
    return 0


def _plot(results, output: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plot import convergence

    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 4.5), squeeze=False)
    for ax, (problem, rows) in zip(axes[0], results):
        convergence({r.solver: r.solution for r in rows}, measure=rows[0].measure, ax=ax,
                    title=f"{problem.name}, B={problem.batch_size}")
    fig.tight_layout()
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _solve(args) -> int:
    from .comparison import reference_errors
    from .solve import solve

    problem = _make_problem(args.problem, args)
    solver = _make_solver(args.solver)
    measure = args.measure or ("gap" if problem.duality_gap(problem.z0) is not None else "residual")
    sol = solve(problem, solver, tol=args.tol, measure=measure, max_iters=args.max_iters,
                check_every=args.check_every, max_operator_calls=args.max_operator_calls, progress=args.progress)
    print(sol)
    value_error, distance = reference_errors(problem, sol.z)
    if value_error is not None:
        print(f"value error vs reference: max {value_error.max().item():.3e}")
    if distance is not None:
        print(f"distance to reference:    max {distance.max().item():.3e}")
    return 0 if bool(sol.success.all()) else 1


def _bench(args) -> int:
    from .bench import find_scripts, report, run_benchmarks

    folder = Path(args.folder) if args.folder else Path(__file__).resolve().parents[1] / "benchmarks"
    scripts = find_scripts(folder)
    if args.only:
        unknown = set(args.only) - {s.stem for s in scripts}
        if unknown:
            raise ValueError(f"--only: no benchmark script(s) {sorted(unknown)} in {folder}; there are "
                             f"{', '.join(s.stem for s in scripts)}")
        scripts = [s for s in scripts if s.stem in args.only]
    runs = run_benchmarks(scripts, quick=not args.full, device=args.device, timeout=args.timeout)
    text = report(runs, device=args.device)
    Path(args.output).write_text(text)
    print(text.split("## Script outputs")[0].rstrip())
    print(f"\nreport written to {args.output}")
    return 0 if all(r.returncode == 0 for r in runs) else 1


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "bench":
            return _bench(args)
        return _solve(args)
    except (ValueError, TypeError) as err:
        print(f"saddle {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
