"""Competitive gradient methods: saddle.optim.CGD / ACGD against the CGDs package (BCGD / ACGD).

Trains the same two players from the same initial parameters on the same
data with both implementations at equal settings, in the same run, and prints
a markdown table: seconds per iteration, gradient evaluations and mixed
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

    python benchmarks/competitive.py              # 200 iterations, hidden width 64, float64 and float32
    python benchmarks/competitive.py --quick      # smoke run, under a minute on 2 cores
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import math
import platform
import time

import torch
import torch.nn.functional as F
from torch import nn

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
    kw = dict(min_params=G.parameters(), max_params=D.parameters(), lr=s.lr, tol=math.sqrt(s.tol),
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


def settings_for(method: str, args):
    lr = args.lr if args.lr is not None else (0.5 if method == "CGD" else 0.05)
    return argparse.Namespace(lr=lr, beta=args.beta, eps=args.eps, tol=args.tol, atol=1e-20)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--problem", choices=["dirac", "mixture"], action="append", default=None,
                        help="problem (repeatable; default both)")
    parser.add_argument("--method", choices=["CGD", "ACGD"], action="append", default=None,
                        help="method (repeatable; default both; CGD is CGDs's BCGD)")
    parser.add_argument("--iters", type=int, default=200, help="iterations per run (default 200)")
    parser.add_argument("--hidden", type=int, default=64, help="MLP width of the mixture GAN (default 64)")
    parser.add_argument("--batch", type=int, default=128, help="batch of the mixture GAN (default 128)")
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
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per row, the fastest kept (default 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="smoke run: 50 iterations, width 32, float64 only")
    args = parser.parse_args(argv)
    if CGDs is None:
        raise SystemExit("this benchmark compares against the CGDs package: pip install CGDs")
    if args.quick:
        args.iters, args.hidden, args.batch = 50, 32, 64
        args.dtype = args.dtype or ["float64"]
    torch.set_num_threads(args.threads)
    problems = args.problem or ["dirac", "mixture"]
    methods = args.method or ["CGD", "ACGD"]
    dtypes = args.dtype or ["float64", "float32"]

    print(f"# Competitive gradient: saddle.optim vs CGDs {getattr(CGDs, '__version__', '')}".rstrip())
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {args.threads} thread(s), "
          f"{args.iters} iterations, fastest of {args.repeat} runs, tol {args.tol:g} (CGDs) = "
          f"{math.sqrt(args.tol):g} (saddle)\n")
    print("| problem | dtype | method | implementation | ms / iter | CGDs time / this | grads / iter "
          "| HVPs / iter | CGDs HVPs / this | max abs param diff vs CGDs | end state |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---|")
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        for pname in problems:
            cls = {"dirac": Dirac, "mixture": Mixture}[pname]
            problem = cls(dtype, args.seed, hidden=args.hidden, batch=args.batch)
            for method in methods:
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


if __name__ == "__main__":
    main()
