"""Time to relative accuracy 1e-6 on CVaR and chi-square-ball logistic regression: saddle vs cvxpy (Clarabel).

    python benchmarks/dro.py [--sizes 10000 100000] [--d 50] [--cvxpy-limit 600] [--threads 1] [--dro-package] [--quick]

The problem is ``min_theta max_{q in Q} sum_i q_i l_i(theta) + (mu/2)|theta|^2`` with the logistic
loss on `problems.dro.group_shift_data` (mu = 0.1; CVaR at alpha = 0.5, chi-square ball rho = 0.1).

saddle's method is extragradient on the full-batch operator (float64, backtracking steps). Its
accuracy is certified without cvxpy: the primal objective ``P(theta) = max_q f(theta, q)`` is
exact (closed form) and the dual ``D(q) = min_theta f(theta, q)`` is a d-dimensional weighted
logistic regression solved to machine precision by Newton's method, so ``D(q) <= OPT <= P(theta)``.
The run stops once ``P(theta_k) - D(q_j) <= 1e-6 |D|``; the time reported is the first time
``P(theta_k)`` was within 1e-6 relative of the final lower bound, not counting the dual
evaluations (a certificate, not part of the method).

cvxpy solves the Rockafellar-Uryasev (CVaR) and second-order-cone (chi-square) reformulations
(`problems.dro.dro_reference`'s model, Clarabel at its default tolerances, 1e-8) in a subprocess
with a wall-clock limit: a run past it is reported as ``> limit``, a lower bound on the ratio.
Its time includes cvxpy's compilation. Clarabel often ends these models with cvxpy's status
``optimal_inaccurate``; its value is still reported (the last column compares it with saddle's).
Where Clarabel returns no solution (a ``SolverError``), SCS (eps 1e-9) is timed instead.

With ``--dro-package`` the `dro` package from PyPI (0.4.3; ``pip install --no-deps dro``: only
its linear models are imported) is timed on the same data: its ``CVaRDRO`` (logistic, no
intercept) is a cvxpy/Clarabel model of the same Rockafellar-Uryasev program *without the ridge
term*, a different problem that saddle's `DROProblem` does not pose (mu > 0 there keeps the saddle
point unique), so it gets a time but no ratio. Its ``Chi2DRO`` solves a penalized (Cressie-Read)
chi-square problem, not the chi-square ball, and is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time

import torch

import saddle
from saddle.problems.dro import DROProblem, group_shift_data

SETTINGS = (("cvar", dict(alpha=0.5)), ("chi2_ball", dict(rho=0.1)))
MU = 0.1
RTOL = 1e-6
SOLVED = ("optimal", "optimal_inaccurate")  # cvxpy statuses with a value (the agreement column checks it)

_CVXPY = r"""
import json, math, sys, time
import cvxpy as cp
import numpy as np
from saddle.problems.dro import group_shift_data
n, d, ambiguity, param, mu = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
A, b, _ = group_shift_data(n, d, seed=0, noise=0.0)
A, b = A[0].numpy(), b[0].numpy()
start = time.perf_counter()
theta, t, eta = cp.Variable(d), cp.Variable(n), cp.Variable()
cons = [t >= cp.logistic(-cp.multiply(b, A @ theta))]
if ambiguity == "cvar":
    risk = eta + cp.sum(cp.pos(t - eta)) / (param * n)
else:
    risk = cp.sum(t) / n + math.sqrt(2 * param / n) * cp.norm(t - eta, 2)
prob = cp.Problem(cp.Minimize(risk + 0.5 * mu * cp.sum_squares(theta)), cons)
solver = sys.argv[6]
try:
    prob.solve(solver=solver, **({"eps_abs": 1e-9, "eps_rel": 1e-9, "max_iters": 10**6} if solver == "SCS" else {}))
    status, value = prob.status, float(prob.value)
except cp.error.SolverError:
    status, value = "SolverError", float("nan")
print(json.dumps({"time": time.perf_counter() - start, "value": value, "status": status}))
"""


def run_cvxpy(n, d, ambiguity, param, limit, solver="CLARABEL"):
    """``{"time", "value", "status"}`` of one cvxpy solve in a subprocess, or None past ``limit`` seconds."""
    cmd = [sys.executable, "-c", _CVXPY, str(n), str(d), ambiguity, str(param), str(MU), solver]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=limit, check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def describe_cvxpy(cvx, limit, t_saddle, P, solver):
    """Table cells (time, ratio, agreement) for one cvxpy run."""
    if cvx is None:
        return f"> {limit:.0f} s (stopped, {solver})", f"> {limit / t_saddle:.0f}x", "-"
    if cvx["status"] not in SOLVED:
        return f"{solver} {cvx['status']} after {cvx['time']:.1f} s", "-", "-"
    agree = f"{(P - cvx['value']) / abs(cvx['value']):+.1e}"
    label = "" if solver == "CLARABEL" else f" ({solver})"
    label += " (optimal_inaccurate)" if cvx["status"] == "optimal_inaccurate" else ""
    return f"{cvx['time']:.2f} s{label}", f"{cvx['time'] / t_saddle:.1f}x", agree


_DRO_PACKAGE = r"""
import importlib.util, json, os, sys, time, types
from saddle.problems.dro import group_shift_data
# Import dro.linear_model.cvar_dro without dro/__init__.py, which imports torchvision, xgboost,
# lightgbm, ucimlrepo and torchattacks for its other models.
root = os.path.dirname(importlib.util.find_spec("dro").origin)
for name, path in (("dro", root), ("dro.linear_model", os.path.join(root, "linear_model"))):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from dro.linear_model.cvar_dro import CVaRDRO
n, d, alpha = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
A, b, _ = group_shift_data(n, d, seed=0, noise=0.0)
start = time.perf_counter()
model = CVaRDRO(input_dim=d, model_type="logistic", fit_intercept=False, alpha=alpha)
model.fit(A[0].numpy(), b[0].numpy())
print(json.dumps({"time": time.perf_counter() - start, "value": model.robust_obj}))
"""


def run_dro_package(n, d, alpha, limit):
    """Time the `dro` package's CVaRDRO (no ridge term: a different problem) or None if absent / past limit."""
    import importlib.util

    if importlib.util.find_spec("dro") is None:
        return None
    try:
        out = subprocess.run([sys.executable, "-c", _DRO_PACKAGE, str(n), str(d), str(alpha)], capture_output=True,
                             text=True, timeout=limit, check=True)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError):
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def dual_objective(problem: DROProblem, q: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``D(q) = min_theta f(theta, q)`` by Newton's method (logistic loss, no penalty on q), ``(B,)``."""
    A, b, mu = problem.features.expand(q.shape[0], -1, -1), problem.labels.expand(q.shape[0], -1), MU
    f = lambda th: (q * torch.nn.functional.softplus(-b * torch.einsum("bnd,bd->bn", A, th))).sum(-1) \
        + 0.5 * mu * th.square().sum(-1)  # noqa: E731
    eye = torch.eye(theta.shape[-1], dtype=theta.dtype)
    for _ in range(30):
        s = torch.sigmoid(-b * torch.einsum("bnd,bd->bn", A, theta))
        grad = torch.einsum("bn,bnd->bd", -q * b * s, A) + mu * theta
        H = torch.einsum("bnd,bn,bne->bde", A, q * s * (1 - s), A) + mu * eye
        step = torch.linalg.solve(H, grad.unsqueeze(-1)).squeeze(-1)
        value, t = f(theta), 1.0
        while t > 1e-10 and (f(theta - t * step) > value).any():
            t /= 2
        theta = theta - t * step
        if grad.abs().max() < 1e-13:
            break
    return f(theta)


def run_saddle(problem: DROProblem, max_iters: int = 200_000, certify_every: int = 200):
    history, lower, excluded = [], [-math.inf], [0.0]
    start = time.perf_counter()

    def cb(p):
        P = float(problem.primal_objective(p.z[0])[0])
        history.append((time.perf_counter() - start - excluded[0], P))
        if len(history) % (certify_every // 10) == 0:
            t0 = time.perf_counter()
            lower[0] = max(lower[0], float(dual_objective(problem, p.z[1], p.z[0])[0]))
            excluded[0] += time.perf_counter() - t0
        return math.isfinite(lower[0]) and min(P for _, P in history) - lower[0] <= RTOL * abs(lower[0])

    sol = saddle.solve(problem, "extragradient", tol=0.0, max_iters=max_iters, check_every=10, callback=cb,
                       history=False)
    D = lower[0]
    # history[i] is iteration 10 (i + 1)
    hit, hit_iter = next(((t, 10 * (i + 1)) for i, (t, P) in enumerate(history) if P - D <= RTOL * abs(D)),
                         (float("nan"), int(sol.iterations[0])))
    return hit, hit_iter, min(P for _, P in history), D


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--d", type=int, default=50)
    parser.add_argument("--cvxpy-limit", type=float, default=600.0, help="seconds per cvxpy solve")
    parser.add_argument("--quick", action="store_true", help="n = 2000 only (seconds; for `saddle bench`)")
    parser.add_argument("--dro-package", action="store_true",
                        help="also time the `dro` package's CVaRDRO (pip install --no-deps dro)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (Clarabel is single-threaded)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.quick:
        args.sizes = [2000]
    print(f"| problem | n | saddle EG | iterations | cvxpy (Clarabel) | ratio | P - D (saddle) | "
          f"P_saddle vs cvxpy |", flush=True)
    print("|---|---|---|---|---|---|---|---|", flush=True)
    for n in args.sizes:
        A, b, _ = group_shift_data(n, args.d, seed=0, noise=0.0)
        for ambiguity, kw in SETTINGS:
            problem = DROProblem(A[0], b[0], loss="logistic", ambiguity=ambiguity, mu=MU, **kw)
            t_saddle, iters, P, D = run_saddle(problem)
            param = next(iter(kw.values()))
            cvx = run_cvxpy(n, args.d, ambiguity, param, args.cvxpy_limit)
            cells = [describe_cvxpy(cvx, args.cvxpy_limit, t_saddle, P, "CLARABEL")]
            if cvx is not None and cvx["status"] not in SOLVED:  # Clarabel failed: the other conic solver
                cells.append(describe_cvxpy(run_cvxpy(n, args.d, ambiguity, param, args.cvxpy_limit, "SCS"),
                                            args.cvxpy_limit, t_saddle, P, "SCS"))
            t_cvx, ratio, agree = (" / ".join(c[i] for c in cells) for i in range(3))
            print(f"| {ambiguity} | {n} | {t_saddle:.2f} s | {iters} | {t_cvx} | {ratio} | {(P - D) / abs(D):.1e} | "
                  f"{agree} |", flush=True)
            if ambiguity == "cvar" and args.dro_package:
                pkg = run_dro_package(n, args.d, param, args.cvxpy_limit)
                t_pkg = "not run (absent, failed or past the limit)" if pkg is None else f"{pkg['time']:.2f} s"
                print(f"| cvar, `dro` CVaRDRO (no ridge: another problem) | {n} | | | {t_pkg} | | | |", flush=True)


if __name__ == "__main__":
    main()
