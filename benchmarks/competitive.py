"""Competitive gradient methods: saddle (saddle.optim.CGD / ACGD, and the batched solvers) against CGDs.

CGDs is the PyPI package of the ACGD authors (its BCGD and ACGD). Single-instance
part (``--part single``): trains the same two players from the same initial
parameters on the same data with both implementations at equal settings, in
the same run, and prints a markdown table: seconds per iteration, gradient evaluations and mixed
Hessian-vector products (HVPs) per iteration, and the largest parameter
difference between the two trajectories after the run. Problems:

- ``dirac``: Mescheder et al.'s Dirac GAN, ``f(theta, psi) = -log(1 + exp(-psi theta))``,
  one generator parameter theta (min), one discriminator parameter psi (max);
  the equilibrium is (0, 0).
- ``mixture``: a GAN on a mixture of 8 Gaussians on a circle (data drawn
  inline from a seeded generator, a fresh batch each iteration, the same for
  both implementations), tanh MLPs ``latent 2 -> h -> 2`` and ``2 -> h -> 1``;
  the loss is ``E log sigmoid D(x) + E log(1 - sigmoid D(G(z)))``, which D
  maximizes and G minimizes.

Equal settings: CGDs's ``tol`` bounds the *squared* relative CG residual,
``|r|^2 < tol |b|^2`` (plus ``|r|^2 < atol``); saddle's ``tol`` bounds
``|r| <= tol |b|``, so saddle runs with ``sqrt(tol)``. CGDs alternates the
system it solves (the max player's at odd steps, the min player's at even
steps); saddle's default solves the min player's, and ``solve_for="alternate"``
follows CGDs.

Why the trajectories differ (measured on the mixture GAN in float64, width 16,
25 steps, unless said otherwise):

- Which system is solved. Both systems give the same step in exact
  arithmetic, but CG stops at relative residual ``sqrt(tol)``, so the default
  ``solve_for="min"`` differs from CGDs by about the CG error (2e-7 for CGD at
  tol 1e-12); ``solve_for="alternate"`` runs the same CG iterations as CGDs,
  and CGD then agrees with BCGD to rounding (3e-16).
- ACGD's system is ill-conditioned: ``a = lr sqrt(1 - beta^t) / (sqrt(v) + eps)``
  spreads over orders of magnitude (up to ``lr / eps``), and a CG iterate
  stopped at ``|r| = 1e-6 |b|`` depends on rounding: scaling the loss by
  ``1 + 2^-50`` moves saddle's first ACGD step by 2e-9 (its CGD step by 1e-16).
  So even with ``solve_for="alternate"`` and equal CG iteration counts, ACGD
  and CGDs.ACGD differ by about 1e-8 after 25 steps (both within their
  tolerance of the exact step), and the GAN dynamics grow it (8e-7 after 50
  steps at width 32, 2e-4 after 200 steps at width 64, with the same end
  state); with ``--tol 1e-20`` it is about 1e-10 after 25 steps.
- CGDs's own float32 start: its CG starts from ``torch.zeros(n)`` in torch's
  default dtype, so in a float64 run its first, cold solve accumulates in
  float32 (an error of about 3e-9 in the first step, which stays the floor of
  the difference). This script runs both implementations with the default
  dtype set to the parameters' dtype, so that the comparison is one of the
  methods.
- CGDs's BCGD fails on a player with a single parameter (the Dirac GAN): a
  warm-started solve there runs ``n - 1 = 0`` iterations and reads an unset
  loop variable (``UnboundLocalError`` at step 2); the table shows the error.

The HVP counts differ by one per step: CGDs forms both players' right-hand
sides (2 products) and uses one.

Counting: ``torch.autograd.grad`` and ``torch.autograd.backward`` are wrapped
for the whole run; a call that builds a graph (``create_graph=True``) is a
gradient evaluation (CGDs takes each player's gradient in its own call, saddle
both in one), any other call is one mixed HVP.

Batched part (``--part batched``): B independent instances of each problem
from the problem registry (``problems.get("dirac_gan", batch_size=B, seed=...)``:
each instance starts at its own random angle; ``problems.get(
"gaussian_mixture_gan", mode="ring", width=w, depth=1, latent_dim=2,
n_samples=N, batch_size=B, seed=...)``: each instance with its own initial
networks, fixed real samples and latent codes), solved all at once by saddle's
batched solvers (``saddle.CGD`` / ``saddle.ACGD``, ``solver.init`` and then a
fixed number of ``solver.step`` calls, no stopping test; CG with
``cg_tol = sqrt(tol)``, ``cg_max_iters = n`` and ``cg_check_every=1``), against
looping CGDs over the same instances: instance i becomes its own ``nn.Module``
pair (the registry's architecture, its parameters set from row i of the batched
start with ``torch.nn.utils.vector_to_parameters``) trained on the same loss
with instance i's own real samples and latent codes, one instance after the
other. A loop of ``saddle.optim`` (default ``solve_for="min"``, the system the
batched solvers solve) runs too, as a second baseline that works where CGDs's
BCGD fails. The table gives the time of one step of the whole batch, the
throughput in instance-steps per second, its ratio to the CGDs loop, HVPs per
instance-step (the batched solvers count the products each instance used; in
the batch every CG iteration runs until the slowest instance of the batch has
converged, the "batch max" column), and the largest parameter difference
between the batched trajectories and the looped ones after the run (max over
instances and coordinates). Timings are of the steps alone: building the
problem, the modules and the optimizers is not charged.

    python benchmarks/competitive.py              # both parts: 200 single-instance iterations (width 64), and
                                                  # 20 steps of B = 1 and 64 instances; float64 and float32
    python benchmarks/competitive.py --part batched --dtype float64
    python benchmarks/competitive.py --quick      # smoke run, under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.metadata
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

from saddle import problems
import saddle
import saddle.optim

try:
    import CGDs
except ImportError:  # pragma: no cover - the benchmark needs it; the library does not
    CGDs = None


# ------------------------------------------------------------------ counting
class Counter:
    """Counts autograd calls: gradient evaluations (create_graph=True) and HVPs (the rest)."""

    def __init__(self):
        self.grad = self.hvp = 0

    @contextlib.contextmanager
    def wrap(self):
        grad, backward = torch.autograd.grad, torch.autograd.backward

        def counted(fn):
            def call(*args, **kwargs):
                if kwargs.get("create_graph"):
                    self.grad += 1
                else:
                    self.hvp += 1
                return fn(*args, **kwargs)
            return call

        torch.autograd.grad, torch.autograd.backward = counted(grad), counted(backward)
        try:
            yield self
        finally:
            torch.autograd.grad, torch.autograd.backward = grad, backward


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype):
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


# ------------------------------------------------------------------ problems
class Dirac:
    """The Dirac GAN: generator theta (min), discriminator psi (max)."""

    name = "dirac"

    def __init__(self, dtype, seed: int, **_):
        self.G = nn.Module()
        self.G.theta = nn.Parameter(torch.tensor(1.0, dtype=dtype))
        self.D = nn.Module()
        self.D.psi = nn.Parameter(torch.tensor(1.0, dtype=dtype))

    def loss(self, G, D, step: int) -> torch.Tensor:
        return -F.softplus(-D.psi * G.theta)

    def describe(self, G, D) -> str:
        return f"|(theta, psi)| = {math.hypot(G.theta.item(), D.psi.item()):.1e}"


class Mixture:
    """A GAN on 8 Gaussians on the unit circle (std 0.05), tanh MLPs of width ``hidden``."""

    name = "mixture"

    def __init__(self, dtype, seed: int, hidden: int = 64, batch: int = 128):
        torch.manual_seed(seed)
        self.G = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 2)).to(dtype)
        self.D = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(dtype)
        self.dtype, self.seed, self.batch = dtype, seed, batch

    def data(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + step)
        angles = torch.randint(0, 8, (self.batch,), generator=g).to(self.dtype) * (2 * math.pi / 8)
        centers = torch.stack([angles.cos(), angles.sin()], 1)
        real = centers + 0.05 * torch.randn(self.batch, 2, generator=g, dtype=self.dtype)
        return real, torch.randn(self.batch, 2, generator=g, dtype=self.dtype)

    def loss(self, G, D, step: int) -> torch.Tensor:
        real, z = self.data(step)
        return -F.softplus(-D(real)).mean() - F.softplus(D(G(z))).mean()

    def describe(self, G, D) -> str:
        real, z = self.data(-1)
        fake = G(z).detach()
        # mean distance of a generated point to its nearest mode: 0.04 when every sample sits on a mode
        angles = torch.arange(8, dtype=self.dtype) * (2 * math.pi / 8)
        modes = torch.stack([angles.cos(), angles.sin()], 1)
        return f"mean distance to nearest mode {torch.cdist(fake, modes).min(1).values.mean().item():.2f}"


# ------------------------------------------------------------------ runners
def make(impl: str, method: str, G, D, s):
    """The optimizer of one implementation at settings ``s`` (lr, beta, eps, tol as CGDs means it)."""
    if impl == "CGDs":
        if method == "ACGD":
            return CGDs.ACGD(max_params=D.parameters(), min_params=G.parameters(), lr_max=s.lr, lr_min=s.lr,
                             beta=s.beta, eps=s.eps, tol=s.tol, atol=s.atol)
        return CGDs.BCGD(max_params=D.parameters(), min_params=G.parameters(), lr_max=s.lr, lr_min=s.lr,
                         tol=s.tol, atol=s.atol, collect_info=False)
    solve_for = impl.split("solve_for=")[1] if "solve_for=" in impl else "min"
    kw = dict(min_params=G.parameters(), max_params=D.parameters(), lr=s.lr, cg_tol=math.sqrt(s.tol),
              solve_for=solve_for)
    if method == "ACGD":
        return saddle.optim.ACGD(beta=s.beta, eps=s.eps, **kw)
    return saddle.optim.CGD(**kw)


def run(problem, impl: str, method: str, s, iters: int) -> dict:
    G, D = copy.deepcopy(problem.G), copy.deepcopy(problem.D)
    opt = make(impl, method, G, D, s)
    counter = Counter()
    # CGDs starts CG from torch.zeros(n) in torch's default dtype: in a float64 run its first solve
    # would accumulate in float32 (see the module docstring); running under the parameters' dtype
    # makes the comparison one of the methods.
    dtype = next(G.parameters()).dtype
    with counter.wrap(), default_dtype(dtype):
        start = time.perf_counter()
        for k in range(iters):
            loss = problem.loss(G, D, k)
            try:
                opt.step(loss=loss)
            except Exception as e:  # report an implementation's failure in its row, run the others
                return {"impl": impl, "method": method, "error": f"fails at step {k + 1}: {type(e).__name__}: {e}"}
        seconds = time.perf_counter() - start
    params = torch.cat([p.detach().reshape(-1) for p in [*G.parameters(), *D.parameters()]])
    finite = bool(torch.isfinite(params).all())
    return {"impl": impl, "method": method, "seconds": seconds / iters, "grad": counter.grad / iters,
            "hvp": counter.hvp / iters, "params": params,
            "state": problem.describe(G, D) if finite else "diverged (non-finite parameters)"}


# ------------------------------------------------------------------ batched instances
def batched_problem(pname: str, B: int, dtype, seed: int, size: tuple[int, int] | None):
    """B instances from the problem registry; ``size`` = (width, n_samples) of the mixture GAN."""
    if pname == "dirac":
        return problems.get("dirac_gan", batch_size=B, seed=seed, dtype=dtype)
    width, n_samples = size
    return problems.get("gaussian_mixture_gan", mode="ring", width=width, depth=1, latent_dim=2, n_samples=n_samples,
                        batch_size=B, seed=seed, dtype=dtype)


def _module(flat, vector: torch.Tensor) -> nn.Module:
    """The registry's architecture ``flat.template`` as an ordinary module with the parameters ``vector``."""
    module = copy.deepcopy(flat.template).to_empty(device=vector.device).to(vector.dtype)
    torch.nn.utils.vector_to_parameters(vector.detach().clone(), module.parameters())
    return module


def instance(problem, pname: str, i: int):
    """Instance i of a batched problem as ``(G, D, loss)``: a module pair and ``loss(G, D)``, at its start."""
    x, y = problem.z0[0][i], problem.z0[1][i]
    if pname == "dirac":
        G, D = nn.Module(), nn.Module()
        G.theta, D.psi = nn.Parameter(x.detach().clone()), nn.Parameter(y.detach().clone())

        def loss(G, D):  # the registry's own f on the one instance: (1, 1) blocks
            return problem.f(G.theta.unsqueeze(0), D.psi.unsqueeze(0))[0]
        return G, D, loss
    G, D = _module(problem.generator, x), _module(problem.discriminator, y)
    real, latent = problem.real[i], problem.latent[i]

    def loss(G, D):  # E log sigmoid D(real) + E log(1 - sigmoid D(G(z))), as problems.gan's standard loss
        return -F.softplus(-D(real).squeeze(-1)).mean() - F.softplus(D(G(latent)).squeeze(-1)).mean()
    return G, D, loss


def _vector(G, D) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in [*G.parameters(), *D.parameters()]])


def check_instances(problem, pname: str) -> None:
    """The looped instances see the batched problem's objective: f_i at the start, to rounding."""
    value = problem.objective(problem.z0)
    for i in sorted({0, problem.batch_size - 1}):
        G, D, loss = instance(problem, pname, i)
        with torch.no_grad():
            got = loss(G, D)
        if not torch.allclose(got, value[i], rtol=1e-5 if problem.dtype == torch.float32 else 1e-12, atol=0):
            raise AssertionError(f"instance {i} of {problem.name}: loop loss {got.item()} != "
                                 f"batched f {value[i].item()}")


def run_loop(problem, pname: str, impl: str, method: str, s, iters: int) -> dict:
    """``impl`` ("CGDs" or "saddle") looped over the instances of ``problem``, one after the other."""
    counter, seconds, vectors = Counter(), 0.0, []
    for i in range(problem.batch_size):
        G, D, loss = instance(problem, pname, i)
        opt = make(impl, method, G, D, s)
        with counter.wrap(), default_dtype(problem.dtype):
            start = time.perf_counter()
            for k in range(iters):
                try:
                    opt.step(loss=loss(G, D))
                except Exception as e:  # noqa: BLE001 - reported in the row
                    return {"error": f"fails at step {k + 1} (instance {i}): {type(e).__name__}: {e}"}
            seconds += time.perf_counter() - start
        vectors.append(_vector(G, D))
    steps = problem.batch_size * iters
    return {"seconds": seconds / iters, "hvp": counter.hvp / steps, "grad": counter.grad / steps,
            "params": torch.stack(vectors), "cg": None}


def run_batched(problem, method: str, s, iters: int) -> dict:
    """saddle's batched solver on all instances at once: ``init``, then ``iters`` steps."""
    n = problem.z0[0].shape[1]
    common = dict(step_size=s.lr, cg_tol=math.sqrt(s.tol), cg_max_iters=n, cg_check_every=1)
    solver = saddle.ACGD(beta=s.beta, eps=s.eps, **common) if method == "ACGD" else saddle.CGD(**common)
    z = problem.z0
    state = solver.init(problem, z)
    iterations = []
    start = time.perf_counter()
    for _ in range(iters):
        z, state = solver.step(problem, z, state)
        iterations.append(state.cg_iterations)
    seconds = time.perf_counter() - start
    cg = torch.stack(iterations).double()  # (iters, B)
    return {"seconds": seconds / iters, "hvp": state.hvp_calls.double().mean().item() / iters, "grad": 1.0,
            "params": torch.cat([z[0], z[1]], -1).detach(), "cg": (cg.mean().item(), cg.max(1).values.mean().item())}


def batched_rows(pname: str, dtype, method: str, s, B: int, size, args) -> list[dict]:
    problem = batched_problem(pname, B, dtype, args.seed, size)
    check_instances(problem, pname)
    warm = batched_problem(pname, 1, dtype, args.seed + 1, size)  # lazy initializations, not charged
    for impl in ("CGDs", "saddle"):
        run_loop(warm, pname, impl, method, s, 2)
    run_batched(warm, method, s, 2)
    rows = {"CGDs": None, "saddle.optim": None, "batched": None}
    for _ in range(args.repeat):  # deterministic runs: keep the fastest time
        for key, fn in (("CGDs", lambda: run_loop(problem, pname, "CGDs", method, s, args.batched_iters)),
                        ("saddle.optim", lambda: run_loop(problem, pname, "saddle", method, s, args.batched_iters)),
                        ("batched", lambda: run_batched(problem, method, s, args.batched_iters))):
            row = fn()
            if "error" in row or rows[key] is None or row["seconds"] < rows[key]["seconds"]:
                rows[key] = row
    out = []
    for key, label in (("CGDs", "CGDs loop"), ("saddle.optim", "saddle.optim loop"), ("batched", "saddle batched")):
        out.append({**rows[key], "impl": label})
    return out


def print_batched(args) -> None:
    sizes = [tuple(int(v) for v in spec.lower().split("x")) for spec in args.mixture_size]
    print("\n## Batched: saddle's batched solvers vs looping CGDs over the instances\n")
    print(f"{args.batched_iters} steps per instance, fastest of {args.repeat} runs, {args.threads} thread(s); "
          f"mixture GAN: width x samples {', '.join(args.mixture_size)}, latent 2, one hidden layer\n")
    print("| problem | dtype | method | B | implementation | ms / step (batch) | instance-steps / s "
          "| vs CGDs loop | HVPs / instance-step | CG iters / step (mean / batch max) "
          "| max abs param diff vs CGDs loop | vs saddle.optim loop |")
    print("|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for pname in args.problems:
            for size in ([None] if pname == "dirac" else sizes):
                label = pname if size is None else f"mixture {size[0]}x{size[1]}"
                for method in args.methods:
                    s = settings_for(method, args)
                    for B in sorted({1, args.instances}):
                        rows = batched_rows(pname, dtype, method, s, B, size, args)
                        ref, optim = rows[0], rows[1]
                        for row in rows:
                            head = f"| {label} | {dtype_name} | {method} (lr {s.lr:g}) | {B} | {row['impl']} "
                            if "error" in row:
                                print(head + f"| | | | | | {row['error']} | |")
                                continue
                            rate = B / row["seconds"]
                            speed = f"{ref['seconds'] / row['seconds']:.2f}x" if "error" not in ref else "n/a"
                            cg = "-" if row["cg"] is None else f"{row['cg'][0]:.1f} / {row['cg'][1]:.1f}"

                            def diff(other):
                                if "error" in other or other is row:
                                    return "-" if other is row else "n/a"
                                d = (row["params"] - other["params"]).abs().max().item()
                                return f"{d:.1e}" if math.isfinite(d) else "non-finite"
                            print(head + f"| {1e3 * row['seconds']:.2f} | {rate:,.0f} | {speed} | {row['hvp']:.1f} "
                                  f"| {cg} | {diff(ref)} | {diff(optim)} |")


def settings_for(method: str, args):
    lr = args.lr if args.lr is not None else (0.5 if method == "CGD" else 0.05)
    return argparse.Namespace(lr=lr, beta=args.beta, eps=args.eps, tol=args.tol, atol=1e-20)


def print_single(args) -> None:
    print("\n## Single instance: saddle.optim vs CGDs\n")
    print(f"{args.iters} iterations, fastest of {args.repeat} runs, {args.threads} thread(s); mixture GAN: width "
          f"{args.hidden}, a fresh batch of {args.batch} each iteration\n")
    print("| problem | dtype | method | implementation | ms / iter | CGDs time / this | grads / iter "
          "| HVPs / iter | CGDs HVPs / this | max abs param diff vs CGDs | end state |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for dtype_name in args.dtypes:
        dtype = getattr(torch, dtype_name)
        for pname in args.problems:
            cls = {"dirac": Dirac, "mixture": Mixture}[pname]
            problem = cls(dtype, args.seed, hidden=args.hidden, batch=args.batch)
            for method in args.methods:
                s = settings_for(method, args)
                impls = ["CGDs", "saddle", "saddle solve_for=alternate"]
                for impl in impls:  # warm-up: lazy initializations are not charged to the first timed run
                    run(problem, impl, method, s, 2)
                rows = [run(problem, impl, method, s, args.iters) for impl in impls]
                for _ in range(args.repeat - 1):  # the runs are deterministic: keep the fastest time
                    for row, impl in zip(rows, impls):
                        again = run(problem, impl, method, s, args.iters)
                        if "error" not in row:
                            row["seconds"] = min(row["seconds"], again["seconds"])
                ref = rows[0]
                for row in rows:
                    head = f"| {pname} | {dtype_name} | {method} (lr {s.lr:g}) | {row['impl']} "
                    if "error" in row:
                        print(head + f"| | | | | | | {row['error']} |")
                        continue
                    ok = "error" not in ref
                    time_ratio = f"{ref['seconds'] / row['seconds']:.2f}" if ok else "n/a"
                    hvp_ratio = f"{ref['hvp'] / max(row['hvp'], 1e-300):.2f}" if ok else "n/a"
                    diff = f"{(row['params'] - ref['params']).abs().max().item():.1e}" if ok else "n/a"
                    print(head + f"| {1e3 * row['seconds']:.2f} | {time_ratio} | {row['grad']:.1f} "
                          f"| {row['hvp']:.1f} | {hvp_ratio} | {diff} | {row['state']} |")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["single", "batched"], action="append", default=None,
                        help="which table (repeatable; default both)")
    parser.add_argument("--problem", choices=["dirac", "mixture"], action="append", default=None,
                        help="problem (repeatable; default both)")
    parser.add_argument("--method", choices=["CGD", "ACGD"], action="append", default=None,
                        help="method (repeatable; default both; CGD is CGDs's BCGD)")
    parser.add_argument("--iters", type=int, default=200, help="single instance: iterations per run (default 200)")
    parser.add_argument("--hidden", type=int, default=64,
                        help="single instance: MLP width of the mixture GAN (default 64)")
    parser.add_argument("--batch", type=int, default=128,
                        help="single instance: batch of the mixture GAN (default 128)")
    parser.add_argument("--instances", type=int, default=64, help="batched: instances B (default 64; B = 1 runs too)")
    parser.add_argument("--batched-iters", type=int, default=20, help="batched: steps per instance (default 20)")
    parser.add_argument("--mixture-size", action="append", default=None, metavar="WIDTHxSAMPLES",
                        help="batched: mixture GAN width and number of fixed samples (repeatable; default 64x128 "
                             "and 16x32)")
    parser.add_argument("--lr", type=float, default=None,
                        help="learning rate of both players (default 0.5 for CGD, 0.05 for ACGD)")
    parser.add_argument("--beta", type=float, default=0.99, help="ACGD's beta (default 0.99)")
    parser.add_argument("--eps", type=float, default=1e-5, help="ACGD's eps (default 1e-5)")
    parser.add_argument("--tol", type=float, default=1e-12,
                        help="CG tolerance in CGDs's convention, on squared residuals (default 1e-12, CGDs's; "
                             "saddle runs with its square root)")
    parser.add_argument("--dtype", choices=["float64", "float32"], action="append", default=None,
                        help="dtype (repeatable; default both)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="timed runs per row, the fastest kept (default 3; 2 with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: single instance 50 iterations at width 32; batched 5 steps, mixture 16x32; "
                             "float64 only; 2 timed runs per row")
    args = parser.parse_args(argv)
    if CGDs is None:
        raise SystemExit("this benchmark compares against the CGDs package: pip install CGDs")
    if args.quick:
        args.iters, args.hidden, args.batch, args.batched_iters = 50, 32, 64, 5
        args.mixture_size = args.mixture_size or ["16x32"]
        args.dtype = args.dtype or ["float64"]
        args.repeat = args.repeat or 2
    args.repeat = args.repeat or 3
    torch.set_num_threads(args.threads)
    args.problems = args.problem or ["dirac", "mixture"]
    args.methods = args.method or ["CGD", "ACGD"]
    args.dtypes = args.dtype or ["float64", "float32"]
    args.mixture_size = args.mixture_size or ["64x128", "16x32"]
    parts = args.part or ["single", "batched"]

    try:
        version = importlib.metadata.version("CGDs")
    except importlib.metadata.PackageNotFoundError:  # pragma: no cover - e.g. a source checkout of CGDs
        version = ""
    print(f"# Competitive gradient: saddle vs CGDs {version}".rstrip())
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"tol {args.tol:g} (CGDs) = {math.sqrt(args.tol):g} (saddle)")
    if "single" in parts:
        print_single(args)
    if "batched" in parts:
        print_batched(args)


if __name__ == "__main__":
    main()
