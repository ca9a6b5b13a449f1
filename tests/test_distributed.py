"""The torch.distributed backend (gloo, one process per worker, started with torchrun).

- the same iterates and bit counts as the simulated backend, to 1e-10 in float64, for the same seeds;
- a worker that raises, dies or hangs makes the whole run fail with a clear error well within a minute.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import torch

from saddle import problems
import saddle
from saddle.compress import RandK, TopK

from _helpers import ROOT, worker_env

pytestmark = pytest.mark.slow

def _torchrun(nproc: int, args: list[str], timeout: float = 90.0) -> tuple[subprocess.CompletedProcess, float]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "saddle.distributed", *args]
    env = worker_env()
    start = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return out, time.perf_counter() - start


CASES = [(2, "masha2", "topk", "topk"), (4, "masha1", "randk", None)]


@pytest.mark.parametrize("nproc,solver,compressor,server", CASES)
def test_gloo_processes_reproduce_the_simulated_iterates(tmp_path, nproc, solver, compressor, server):
    save = tmp_path / "run.pt"
    args = ["--problem", "distributed_bilinear", "--size", "6", "--batch-size", "2", "--seed", "3",
            "--solver", solver, "--compressor", compressor, "--keep", "3", "--max-iters", "100", "--tol", "0",
            "--check-every", "50", "--backend", "gloo", "--timeout", "30", "--save", str(save)]
    if server:
        args += ["--server-compressor", server]
    out, _ = _torchrun(nproc, args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "[rank 0] iteration" in out.stdout and "bits sent" in out.stdout
    remote = torch.load(save)
    problem = problems.get("distributed_bilinear", n=6, workers=nproc, batch_size=2, seed=3)
    comp = {"randk": RandK, "topk": TopK}[compressor](k=3)
    kw = {"server_compressor": TopK()} if server else {}
    local = saddle.solve(problem, solver, compressor=comp, seed=3, max_iters=100, tol=0.0, check_every=50, **kw)
    for a, b in zip(remote["z"], local.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for name, value in local.counts.items():
        assert torch.equal(remote["counts"][name], value), name
    assert (local.state.syncs > 0).all()


@pytest.mark.parametrize("compressor", ["permk", "dithering", "natural"])
def test_gloo_payloads_of_every_compressor_reproduce_the_simulated_run(tmp_path, compressor):
    # the payloads of PermK (values of the seeded coordinates), dithering and natural compression (packed
    # codes) decode on every rank to the simulated messages: the same iterates, bits and bytes
    save = tmp_path / "run.pt"
    args = ["--problem", "distributed_bilinear", "--size", "5", "--seed", "2", "--solver", "masha1",
            "--compressor", compressor, "--max-iters", "60", "--tol", "0", "--check-every", "30",
            "--backend", "gloo", "--timeout", "30", "--save", str(save)]
    out, _ = _torchrun(3, args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    remote = torch.load(save, weights_only=True)
    problem = problems.get("distributed_bilinear", n=5, workers=3, seed=2)
    local = saddle.solve(problem, "masha1", compressor=compressor, seed=2, max_iters=60, tol=0.0, check_every=30)
    for a, b in zip(remote["z"], local.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for name, value in local.counts.items():
        assert torch.equal(remote["counts"][name], value), name
    assert 3 * remote["traffic"]["sent"] == int(local.counts["bytes_sent"].sum())


def test_gloo_processes_reproduce_minibatch_masha2_with_partial_participation(tmp_path):
    # --samples N splits each worker's operator into N samples; --minibatch b draws b of them per worker and
    # round from the shared seed (keyed by the global worker index, so the backends draw alike).
    save = tmp_path / "run.pt"
    args = ["--problem", "distributed_bilinear", "--size", "6", "--samples", "3", "--batch-size", "2", "--seed", "3",
            "--solver", "masha2", "--compressor", "topk", "--keep", "3", "--participation", "2", "--minibatch", "1",
            "--max-iters", "100", "--tol", "0", "--check-every", "50", "--backend", "gloo", "--timeout", "30",
            "--save", str(save)]
    out, _ = _torchrun(3, args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    remote = torch.load(save)
    problem = problems.get("distributed_bilinear", n=6, workers=3, samples=3, batch_size=2, seed=3)
    local = saddle.solve(problem, "masha2", compressor=TopK(k=3), participation=2, minibatch=1, seed=3,
                         max_iters=100, tol=0.0, check_every=50)
    for a, b in zip(remote["z"], local.z):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for name, value in local.counts.items():
        assert torch.equal(remote["counts"][name], value), name
    assert "sample_calls" in local.counts and (local.state.syncs > 0).all()


@pytest.mark.parametrize("transport", ["all_gather", "server"])
def test_gloo_moves_the_counted_bytes_in_float32(tmp_path, transport):
    """Each rank's group counts what it handed to its collectives and got back; with one worker per rank
    and collectives of equal sizes, M times rank 0's count is the state's per-instance total, and the
    simulated run counts the same, in float32 and on both routes."""
    M, save = 3, tmp_path / "run.pt"
    args = ["--problem", "distributed_quadratic", "--size", "40", "--dtype", "float32", "--batch-size", "2",
            "--seed", "1", "--solver", "masha1", "--compressor", "randk", "--keep", "4", "--transport", transport,
            "--max-iters", "60", "--tol", "0", "--check-every", "30", "--backend", "gloo", "--timeout", "30",
            "--save", str(save)]
    out, _ = _torchrun(M, args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    remote = torch.load(save, weights_only=True)
    counts, traffic = remote["counts"], remote["traffic"]
    assert M * traffic["sent"] == int(counts["bytes_sent"].sum())
    assert M * traffic["received"] == int(counts["bytes_received"].sum())
    problem = problems.get("distributed_quadratic", n=40, workers=M, batch_size=2, seed=1, dtype=torch.float32)
    local = saddle.solve(problem, "masha1", compressor=RandK(k=4), transport=transport, seed=1, max_iters=60,
                         tol=0.0, check_every=30)
    for a, b in zip(remote["z"], local.z):  # the all-reduces of the synchronizations sum in gloo's order
        torch.testing.assert_close(a, b)
    for name, value in local.counts.items():
        assert torch.equal(counts[name], value), name
    assert problem.group.traffic.sent == M * traffic["sent"]


def test_the_bandwidth_throttle_makes_a_round_last_its_bytes_over_the_bandwidth(tmp_path):
    # distributed_eg, d = 4000 float64: two all-reduces of 32 kB per round, 64 kB handed over and 64 kB back
    # per rank; at 0.01 Gbit/s (1.25 MB/s) a round lasts at least 128 kB / 1.25 MB/s = 0.1 s
    save = tmp_path / "run.pt"
    args = ["--problem", "distributed_quadratic", "--size", "4000", "--solver", "distributed_eg", "--max-iters", "12",
            "--tol", "0", "--check-every", "4", "--backend", "gloo", "--bandwidth", "0.01", "--save", str(save)]
    out, _ = _torchrun(2, args)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    remote = torch.load(save, weights_only=True)
    per_round = 2 * 2 * 4000 * 8
    assert remote["traffic"]["sent"] + remote["traffic"]["received"] == 12 * per_round + per_round // 2  # and init
    assert 0.1 <= remote["round_time"] < 0.3


@pytest.mark.parametrize("mode", ["raise", "exit", "hang"])
def test_a_failing_worker_fails_the_whole_run_quickly(mode):
    args = ["--size", "6", "--max-iters", "1000000", "--tol", "0", "--check-every", "20", "--timeout", "5",
            "--fail-rank", "1", "--fail-at", "40", "--fail-mode", mode]
    out, elapsed = _torchrun(2, args, timeout=120)
    assert out.returncode != 0
    assert elapsed < 60
    log = out.stdout + out.stderr
    assert "ChildFailedError" in log
    expected = {"raise": "injected failure on rank 1", "exit": "exitcode  : 3",
                "hang": "Timed out"}[mode]
    assert expected in log, log[-3000:]
