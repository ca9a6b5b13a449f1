"""Differentiable batched solves: forward and backward times of saddle and cvxpylayers, same run.

Two families of B random problems (``--batch``, default 256), made from ``--seed`` in float64:

- ``lp``: ``min c^T x  s.t.  A x <= b,  0 <= x <= 1`` with n = 20 variables and m = 10 rows
  (``--lp-size``); A and c standard normal, ``b = A x_f + s`` with x_f uniform in (0.05, 0.95) and
  the slack s uniform in (0.1, 1), so every LP is feasible, bounded and (with probability 1) has a
  unique, nondegenerate solution. Parameters c, A, b require grad; the loss is
  ``sum_i (w_i^T x*_i + c_i^T x*_i)`` (a fixed random w, plus the optimal value), so that both the
  solution's and the value's gradients are exercised.
- ``game``: n x n matrix games (``--game-size``, default 10), payoffs A uniform in [-1, 1],
  ``v = min_{x in simplex} max_{y in simplex} x^T A y``, written as the LP
  ``min_{x in simplex, t} t  s.t.  A^T x <= t 1``. A requires grad; the loss is
  ``sum_i (v_i + w_i^T x*_i)``.

Every method maps the leaf tensors (a batch dimension first) to ``(x*, value)``; the harness forms the
loss and calls ``loss.backward()``. The rows:

- ``cvxpylayers[BACKEND] batched``: one `cvxpylayers.torch.CvxpyLayer` per family, called once on the
  batched parameters (diffcp solves the B cone programs in a thread pool of ``--jobs`` threads);
- ``cvxpylayers[BACKEND] loop``: the same layer called once per instance in a Python loop, the
  outputs stacked, one ``loss.backward()``. With ``--loop-batch`` K < B, only the first K instances
  are timed and the times are scaled by B / K (the note column says so);
- ``HiGHS loop``: ``scipy.optimize.linprog(method="highs")`` one instance at a time, forward only (a
  reference for the forward time and for the solutions);
- ``saddle[ipm]``: `saddle_lp` / `saddle_game` with the interior-point method (LPs through
  ``linprog(method="ipm", differentiable=True)``, games in their LP form and then differentiated as
  games), Newton-polished, implicit gradients (`saddle.implicit`);
- ``saddle[r2hpdhg]``: the same with restarted Halpern PDHG (``linprog`` / ``solve(game, "r2hpdhg",
  differentiable=True)``), which polishes nearly converged instances at its checks.

saddle's forward solves stop at ``SADDLE_TOL`` (1e-6) before the Newton polish, which lands on the
solution to rounding once the active set is right (the x* error column shows it).

The CPU backend of cvxpylayers 1.2 is diffcp (its other backends, MOREAU, MPAX and CUCLARABEL, need
packages of their own or a GPU); BACKEND is the cone solver diffcp calls (``--backend``, repeatable;
default: Clarabel and SCS, diffcp's default being SCS at SCS's default tolerances). Clarabel runs with
gap and feasibility tolerances ``--tol``, SCS with ``eps_abs = eps_rel = --tol``; diffcp's derivative
mode is ``--mode`` (``dense``: a direct solve of the small derivative system; diffcp's default,
``lsqr``, stops near 1e-6 relative error on these problems).

Times are wall-clock medians of ``--repeats`` runs, the methods interleaved; forward and backward are
timed separately (the loss itself is charged to neither). The ratio columns are ``baseline / method``
(> 1: faster than the baseline, ``--baseline``, measured in the same run); the CPU column is
``time.process_time`` (all threads). The error columns compare each method's x* and value with HiGHS's,
and its gradient of the loss with central finite differences (h = ``--fd-step``) of the loss computed
by HiGHS, on the first ``--check`` instances: ``max_i |g_i - g_fd,i|_inf / |g_fd,i|_inf``, all the
parameters of an instance together (per-parameter errors are printed under the table). x*(c) is
piecewise constant, so the loss's gradient with respect to c is x* itself. The differences carry
rounding errors of their own, about 1e-15 / h (on 8 instances the errors were near 1e-8 at h = 1e-7,
1e-9 at h = 1e-6, 1e-10 to 2e-9 at h = 1e-5): errors near 1e-9 at the default h are the check's floor,
not the layer's.

    python benchmarks/differentiable.py                        # B=256, both families, Clarabel and SCS
    python benchmarks/differentiable.py --backend Clarabel --repeats 5 --check 10
    python benchmarks/differentiable.py --family lp --batch 1024 --loop-batch 128
"""

from __future__ import annotations

import argparse
import functools
import platform
import statistics
import time
import warnings
from typing import Callable

import numpy as np
import scipy.optimize
import torch

import saddle
from saddle.problems.reference import matrix_game_lp

#: the tolerance saddle's forward solves stop at before the Newton polish of `saddle.implicit`
SADDLE_TOL = 1e-6

FAMILIES = ("lp", "game")
BACKENDS = ("Clarabel", "SCS")
HIGHS = "HiGHS loop"


# ---------------------------------------------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------------------------------------------

def make_lp(B: int, n: int, m: int, seed: int) -> dict:
    """B random feasible bounded LPs ``min c^T x, A x <= b, 0 <= x <= 1`` (numpy float64) and the loss weights w."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((B, m, n))
    x_feasible = rng.uniform(0.05, 0.95, (B, n))
    b = np.einsum("bij,bj->bi", A, x_feasible) + rng.uniform(0.1, 1.0, (B, m))
    return {"c": rng.standard_normal((B, n)), "A": A, "b": b, "w": rng.standard_normal((B, n))}


def make_game(B: int, n: int, seed: int) -> dict:
    """B random n x n games (payoffs uniform in [-1, 1], the row player minimizes) and the loss weights w."""
    rng = np.random.default_rng(seed + 1)
    return {"A": rng.uniform(-1.0, 1.0, (B, n, n)), "w": rng.standard_normal((B, n))}


#: The parameters that require grad, in the order the layers take them.
PARAMETERS = {"lp": ("c", "A", "b"), "game": ("A",)}


def leaves(data: dict, family: str, rows: slice = slice(None)) -> dict:
    """Fresh float64 leaf tensors (``requires_grad``) of the family's parameters, the rows ``rows`` of the batch."""
    return {k: torch.tensor(data[k][rows], dtype=torch.float64, requires_grad=True) for k in PARAMETERS[family]}


def loss_of(x: torch.Tensor, value: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``sum_i (value_i + w_i^T x_i)``."""
    return value.sum() + (w * x).sum()


# ---------------------------------------------------------------------------------------------------------------
# HiGHS: the reference solutions and the finite-difference gradients
# ---------------------------------------------------------------------------------------------------------------

def highs_lp(c: np.ndarray, A: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, float]:
    res = scipy.optimize.linprog(c, A_ub=A, b_ub=b, bounds=(0.0, 1.0), method="highs")
    if res.status != 0:
        raise RuntimeError(f"HiGHS: {res.message}")
    return res.x, float(res.fun)


def highs_game(A: np.ndarray) -> tuple[np.ndarray, float]:
    """x* and the value of ``min_x max_y x^T A y`` by HiGHS with its default tolerances."""
    value, x, _ = matrix_game_lp(A, tolerance=None)
    return x, value


def highs_solve(family: str, data: dict, i: int, params: dict | None = None) -> tuple[np.ndarray, float]:
    """HiGHS's x* and value of instance i (with the parameters ``params`` in place of the data's, if given)."""
    p = params or {k: data[k][i] for k in PARAMETERS[family]}
    return highs_lp(p["c"], p["A"], p["b"]) if family == "lp" else highs_game(p["A"])


def highs_loss(family: str, data: dict, i: int, params: dict) -> float:
    x, value = highs_solve(family, data, i, params)
    return value + float(data["w"][i] @ x)


def finite_difference_gradient(family: str, data: dict, i: int, h: float) -> dict:
    """Central differences (step h) of instance i's loss computed by HiGHS, per parameter."""
    base = {k: data[k][i].copy() for k in PARAMETERS[family]}
    grad = {}
    for name in PARAMETERS[family]:
        g = np.zeros_like(base[name])
        for idx in np.ndindex(base[name].shape):
            p = {k: v.copy() for k, v in base.items()}
            p[name][idx] += h
            up = highs_loss(family, data, i, p)
            p[name][idx] -= 2 * h
            down = highs_loss(family, data, i, p)
            g[idx] = (up - down) / (2 * h)
        grad[name] = g
    return grad


def highs_loop(family: str, data: dict) -> tuple[np.ndarray, np.ndarray]:
    B = data["w"].shape[0]
    solutions = [highs_solve(family, data, i) for i in range(B)]
    return np.stack([x for x, _ in solutions]), np.array([v for _, v in solutions])


# ---------------------------------------------------------------------------------------------------------------
# cvxpylayers
# ---------------------------------------------------------------------------------------------------------------

def solver_args(backend: str, tol: float, mode: str, jobs: int) -> dict:
    """diffcp's keyword arguments: the cone solver, its tolerances, the derivative mode, the thread pools."""
    args = {"solve_method": backend, "mode": mode, "n_jobs_forward": jobs, "n_jobs_backward": jobs}
    if backend == "Clarabel":
        args.update(tol_gap_abs=tol, tol_gap_rel=tol, tol_feas=tol, tol_ktratio=min(tol, 1e-6), max_iter=500)
    elif backend == "SCS":
        args.update(eps_abs=tol, eps_rel=tol, max_iters=100_000)
    return args


def cvxpylayer(family: str, size: tuple, args: dict):
    """The family's `CvxpyLayer`: parameters in `PARAMETERS` order, variables (x,) for lp and (x, t) for game."""
    import cvxpy as cp
    from cvxpylayers.torch import CvxpyLayer

    if family == "lp":
        n, m = size
        x, c, A, b = cp.Variable(n), cp.Parameter(n), cp.Parameter((m, n)), cp.Parameter(m)
        problem = cp.Problem(cp.Minimize(c @ x), [A @ x <= b, x >= 0, x <= 1])
        parameters, variables = [c, A, b], [x]
    else:
        (n,) = size
        x, t, A = cp.Variable(n), cp.Variable(), cp.Parameter((n, n))
        problem = cp.Problem(cp.Minimize(t), [A.T @ x <= t, x >= 0, cp.sum(x) == 1])
        parameters, variables = [A], [x, t]
    assert problem.is_dpp()
    return CvxpyLayer(problem, parameters=parameters, variables=variables, solver_args=args)


def layer_outputs(family: str, layer, p: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """``(x*, value)`` of one call of the layer on the tensors p (batched or one instance)."""
    if family == "lp":
        (x,) = layer(p["c"], p["A"], p["b"])
        return x, (p["c"] * x).sum(-1)
    x, t = layer(p["A"])
    return x, t


def cvxpylayers_batched(family: str, layer) -> Callable:
    return lambda p: layer_outputs(family, layer, p)


def cvxpylayers_loop(family: str, layer) -> Callable:
    def solve(p: dict):
        outputs = [layer_outputs(family, layer, {k: v[i] for k, v in p.items()}) for i in range(len(p["A"]))]
        return torch.stack([x for x, _ in outputs]), torch.stack([v for _, v in outputs])
    return solve


# ---------------------------------------------------------------------------------------------------------------
# saddle: stubs until its differentiable API lands
# ---------------------------------------------------------------------------------------------------------------

def saddle_lp(data: dict, method: str = "ipm") -> tuple[torch.Tensor, torch.Tensor]:
    """saddle's differentiable batched LP solve: ``{"c": (B, n), "A": (B, m, n), "b": (B, m)}`` (float64 leaves
    that require grad) -> ``(x* (B, n), optimal value (B,))``, both differentiable in c, A and b.

    The LPs are ``min c^T x  s.t.  A x <= b,  0 <= x <= 1`` (see `make_lp`). ``linprog`` solves them (the
    interior-point method by default), polishes the solutions by Newton steps and attaches the implicit
    gradients (`saddle.implicit`).
    """
    res = saddle.linprog(data["c"], data["A"], data["b"], bounds=(0, 1), method=method, tol=SADDLE_TOL,
                         differentiable=True)
    return res.x, res.fun


def saddle_game(data: dict, method: str = "ipm") -> tuple[torch.Tensor, torch.Tensor]:
    """saddle's differentiable batched matrix games: ``{"A": (B, n, n)}`` (a float64 leaf that requires grad) ->
    ``(x* (B, n), value (B,))`` of ``min_{x in simplex} max_{y in simplex} x^T A y``, differentiable in A.

    With ``method="ipm"`` the games are solved in their LP form (`problems.matrix_games.as_linear_program`, on
    detached data), and the strategies are polished and differentiated as a point of the game
    (`saddle.implicit.polish`, `saddle.implicit.attach`): the gradients need only the solution, not how it was
    found. Otherwise ``solve(game, method, differentiable=True)`` does all of it.
    """
    A = data["A"]
    B, n, _ = A.shape
    uniform = torch.full((B, n), 1.0 / n, dtype=A.dtype)
    # x^T A y = <K x, y> with K = A^T
    game = saddle.BilinearProblem(A.mT, uniform, uniform, X=saddle.Simplex(), Y=saddle.Simplex())
    if method != "ipm":
        sol = saddle.solve(game, method, tol=SADDLE_TOL, max_iters=100_000, differentiable=True)
        return sol.x, sol.value
    from saddle.problems.matrix_games import as_linear_program

    lp = as_linear_program(saddle.BilinearProblem(A.detach().mT, uniform, uniform, X=saddle.Simplex(),
                                                  Y=saddle.Simplex()))
    sol = saddle.solve(lp, "ipm", measure="gap", tol=SADDLE_TOL, check_every=5)
    z, _ = saddle.implicit.polish(game, lp.strategies(sol.z))
    z, _ = saddle.implicit.attach(game, z, valid=sol.status == 0)
    return z[0], game.objective(tuple(t.detach() for t in z))


SADDLE = {"lp": saddle_lp, "game": saddle_game}
#: the saddle rows of the table: (label, method)
SADDLE_METHODS = (("saddle[ipm]", "ipm"), ("saddle[r2hpdhg]", "r2hpdhg"))


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------

class Method:
    """A row of the table: a differentiable solve ``leaves -> (x*, value)`` on the rows ``rows`` of the batch."""

    def __init__(self, name: str, solve: Callable, rows: int, B: int):
        self.name, self.solve, self.rows, self.scale = name, solve, rows, B / rows
        self.times: list[tuple[float, float, float]] = []
        self.skipped: str | None = None
        self.inaccurate = 0  # diffcp's "Solved/Inaccurate" warnings in the last forward
        self.last: dict | None = None

    def run(self, family: str, data: dict) -> None:
        """One timed forward and backward; the times (scaled to B instances) are appended to ``times``."""
        p = leaves(data, family, slice(0, self.rows))
        w = torch.tensor(data["w"][: self.rows])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            cpu, start = time.process_time(), time.perf_counter()
            x, value = self.solve(p)
            forward = time.perf_counter() - start
        self.inaccurate = sum("Inaccurate" in str(w.message) for w in caught)
        loss = loss_of(x, value, w)
        start = time.perf_counter()
        loss.backward()
        backward = time.perf_counter() - start
        cpu = time.process_time() - cpu
        self.times.append((forward * self.scale, backward * self.scale, cpu * self.scale))
        self.last = {"x": x.detach().numpy(), "value": value.detach().numpy(),
                     "grad": {k: v.grad.numpy() for k, v in p.items()}}

    def warm_up(self, family: str, data: dict) -> None:
        """One untimed run on 2 instances (imports, thread pools); a NotImplementedError marks the row skipped."""
        try:
            x, value = self.solve(leaves(data, family, slice(0, 2)))
            loss_of(x, value, torch.tensor(data["w"][:2])).backward()
        except NotImplementedError as error:
            self.skipped = f"skipped: {error}"

    def medians(self) -> tuple[float, float, float]:
        return tuple(statistics.median(t[j] for t in self.times) for j in range(3))


def relative_errors(grad: dict, reference: list[dict], instances: int) -> tuple[float, dict]:
    """``max_i |g_i - g_fd,i|_inf / |g_fd,i|_inf`` over all the parameters together, and per parameter."""
    total, per = 0.0, {}
    for i in range(instances):
        ref = reference[i]
        diff = max(float(np.abs(grad[k][i] - ref[k]).max()) for k in ref)
        scale = max(float(np.abs(ref[k]).max()) for k in ref)
        total = max(total, diff / scale)
        for k in ref:
            e = float(np.abs(grad[k][i] - ref[k]).max()) / max(float(np.abs(ref[k]).max()), 1e-300)
            per[k] = max(per.get(k, 0.0), e)
    return total, per


def run_family(family: str, args) -> tuple[list[dict], list[str]]:
    B = args.batch
    if family == "lp":
        n, m = args.lp_size
        data, size, shape = make_lp(B, n, m, args.seed), (n, m), f"n={n}, m={m}"
    else:
        n = args.game_size
        data, size, shape = make_game(B, n, args.seed), (n,), f"{n}x{n}"
    loop_rows = min(args.loop_batch or B, B)
    check = min(args.check, loop_rows)

    methods = []
    for backend in args.backend:
        layer = cvxpylayer(family, size, solver_args(backend, args.tol, args.mode, args.jobs))
        methods.append(Method(f"cvxpylayers[{backend}] batched", cvxpylayers_batched(family, layer), B, B))
        methods.append(Method(f"cvxpylayers[{backend}] loop", cvxpylayers_loop(family, layer), loop_rows, B))
    methods += [Method(label, functools.partial(SADDLE[family], method=method), B, B)
                for label, method in SADDLE_METHODS]
    for method in methods:
        method.warm_up(family, data)
    active = [m for m in methods if m.skipped is None]

    highs_times = []
    for _ in range(args.repeats):
        cpu, start = time.process_time(), time.perf_counter()
        x_ref, v_ref = highs_loop(family, data)
        highs_times.append((time.perf_counter() - start, time.process_time() - cpu))
        for method in active:
            method.run(family, data)
    fd = [finite_difference_gradient(family, data, i, args.fd_step) for i in range(check)]

    by_name = {m.name: m for m in active}
    if args.baseline == HIGHS:
        base_forward, base_total = statistics.median(t[0] for t in highs_times), None
    elif args.baseline in by_name:
        base_forward, base_backward, _ = by_name[args.baseline].medians()
        base_total = base_forward + base_backward
    else:
        raise SystemExit(f"--baseline {args.baseline!r} is not a row of this run: "
                         f"{[HIGHS] + list(by_name)}")

    case = f"{family} ({shape}), B={B}"
    highs_forward = statistics.median(t[0] for t in highs_times)
    rows = [{"case": case, "method": HIGHS, "forward": highs_forward, "backward": None,
             "cpu": statistics.median(t[1] for t in highs_times), "ratio_forward": base_forward / highs_forward,
             "ratio_total": None, "x_error": 0.0, "value_error": 0.0, "grad_error": None,
             "note": "forward only; the reference"}]
    details = []
    for method in methods:
        if method.skipped is not None:
            rows.append({"case": case, "method": method.name, "note": method.skipped})
            continue
        forward, backward, cpu = method.medians()
        last, k = method.last, method.rows
        grad_error, per = relative_errors(last["grad"], fd, check)
        details.append(f"{case}, {method.name}: " + ", ".join(f"{name} {e:.1e}" for name, e in per.items()))
        rows.append({
            "case": case, "method": method.name, "forward": forward, "backward": backward, "cpu": cpu,
            "ratio_forward": base_forward / forward,
            "ratio_total": None if base_total is None else base_total / (forward + backward),
            "x_error": float(np.abs(last["x"] - x_ref[:k]).max()),
            "value_error": float(np.abs(last["value"] - v_ref[:k]).max()),
            "grad_error": grad_error,
            "note": "; ".join(filter(None, [
                f"timed on {k} of {B} instances, times x{B / k:g}" if k < B else "",
                f"{method.inaccurate} of {k} solves 'Solved/Inaccurate'" if method.inaccurate else ""])),
        })
    return rows, details


HEADER = ("case", "method", "forward [s]", "backward [s]", "fwd+bwd [s]", "CPU fwd+bwd [s]", "fwd: base / method",
          "fwd+bwd: base / method", "max |x - HiGHS|", "max |value - HiGHS|", "grad rel. err. vs FD", "note")


def format_row(r: dict) -> str:
    if "forward" not in r:
        cells = (r["case"], r["method"]) + ("-",) * (len(HEADER) - 3) + (r["note"],)
        return "| " + " | ".join(cells) + " |"

    def number(v, spec):
        return "-" if v is None else format(v, spec)

    total = r["forward"] + (r["backward"] or 0.0)
    cells = (r["case"], r["method"], f"{r['forward']:.3f}", number(r["backward"], ".3f"),
             "-" if r["backward"] is None else f"{total:.3f}", f"{r['cpu']:.3f}", f"{r['ratio_forward']:.2f}x",
             "-" if r["ratio_total"] is None else f"{r['ratio_total']:.2f}x", f"{r['x_error']:.1e}",
             f"{r['value_error']:.1e}", number(r["grad_error"], ".1e"), r["note"])
    return "| " + " | ".join(cells) + " |"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=FAMILIES, default=None,
                        help="problem family (repeatable; default: lp and game)")
    parser.add_argument("--batch", type=int, default=256, help="instances per family (default: 256)")
    parser.add_argument("--lp-size", type=int, nargs=2, default=[20, 10], metavar=("N", "M"),
                        help="LP variables and inequality rows (default: 20 10)")
    parser.add_argument("--game-size", type=int, default=10, help="n of the n x n games (default: 10)")
    parser.add_argument("--backend", action="append", choices=BACKENDS, default=None,
                        help="diffcp's cone solver for cvxpylayers (repeatable; default: Clarabel and SCS)")
    parser.add_argument("--tol", type=float, default=1e-10,
                        help="Clarabel's gap and feasibility tolerances, SCS's eps_abs and eps_rel (default: 1e-10)")
    parser.add_argument("--mode", default="dense", choices=("dense", "lsqr", "lsmr"),
                        help="diffcp's derivative mode (default: dense)")
    parser.add_argument("--jobs", type=int, default=-1, help="diffcp's threads per batched call (-1: all CPUs)")
    parser.add_argument("--loop-batch", type=int, default=None,
                        help="instances the per-instance loop is timed on, its times scaled to --batch (default: all)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of every method (median; default: 3)")
    parser.add_argument("--check", type=int, default=3, help="instances whose gradients are checked (default: 3)")
    parser.add_argument("--fd-step", type=float, default=1e-6, help="central-difference step (default: 1e-6)")
    parser.add_argument("--baseline", default=None,
                        help=f"the row the ratios are against (default: the first backend's batched row; or {HIGHS!r})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = parser.parse_args(argv)
    args.backend = args.backend or list(BACKENDS)
    args.baseline = args.baseline or f"cvxpylayers[{args.backend[0]}] batched"
    if args.threads:
        torch.set_num_threads(args.threads)

    import cvxpylayers
    import diffcp

    print(f"# differentiable batched solves: {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads, torch {torch.__version__}, cvxpylayers {cvxpylayers.__version__} "
          f"(diffcp {diffcp.__version__}, backends {args.backend}, tol {args.tol:g}, mode {args.mode}, "
          f"jobs {args.jobs}); medians of {args.repeats} runs; ratios: {args.baseline!r} / method; "
          f"gradients checked on {args.check} instances (h = {args.fd_step:g})")
    print("| " + " | ".join(HEADER) + " |")
    print("|" + "---|" * len(HEADER))
    all_details = []
    for family in args.family or list(FAMILIES):
        rows, details = run_family(family, args)
        for row in rows:
            print(format_row(row), flush=True)
        all_details += details
    print("\nGradient error per parameter (max over the checked instances of |g - g_fd|_inf / |g_fd|_inf):")
    for line in all_details:
        print("  " + line)


if __name__ == "__main__":
    main()
