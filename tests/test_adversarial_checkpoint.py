"""Checkpoints under attack and misuse (issue 14): crafted files, other problems, bad paths, cadence.

Every probe ends in a correct resume or a ValueError/TypeError that names the
file or the argument; none runs code from the file, changes the caller's
random state, or leaves files behind.
"""

from __future__ import annotations

import os
import pickle
import signal
import stat
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saddle import problems
import saddle
from saddle import checkpoint as checkpoints
from saddle.checkpoint import CheckpointWarning, load_checkpoint
from saddle.fingerprint import digest, problem_fingerprint

ROOT = Path(__file__).resolve().parents[1]


def game(seed=2, **kw):
    return problems.get("matrix_game", **{"n": 5, "m": 4, "batch_size": 3, "seed": seed, **kw})


def written(tmp_path, problem=None, name="c.pt", **kw) -> Path:
    path = tmp_path / name
    saddle.solve(problem or game(), "extragradient", **{"max_iters": 30, "tol": 0.0, "checkpoint": path, **kw})
    return path


def assert_equal_solutions(a, b):
    assert all(torch.equal(u, v) for u, v in zip(a.z, b.z))
    assert torch.equal(a.status, b.status) and torch.equal(a.iterations, b.iterations)


class Exploit:
    """Unpickling this runs ``open(marker, "w")``: the shape of the attack in the issue (os.system)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


# -- security ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("container", ["torch.save", "pickle"])
def test_a_malicious_checkpoint_runs_nothing_and_is_refused(tmp_path, container):
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    payload = {"format": "saddle checkpoint", "version": 2, "k": Exploit(marker)}
    with open(path, "wb") as f:
        torch.save(payload, f) if container == "torch.save" else pickle.dump(payload, f, protocol=2)
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match=r"evil\.pt.* is not a saddle checkpoint: it holds Python objects"):
        saddle.solve(game(), "extragradient", max_iters=40, resume=path)
    assert not marker.exists()
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_checkpoint_holds_only_plain_data(tmp_path):
    path = written(tmp_path, problems.get("quadratic", n=6, m=4, box=0.3, batch_size=3, seed=3))
    raw = torch.load(path, weights_only=True)  # refuses any class but torch's tensors and plain containers
    state = raw["state"]
    assert state["__namedtuple__"] == "saddle.solvers.extragradient:ExtragradientState"
    assert isinstance(state["values"][0], tuple) and all(isinstance(t, torch.Tensor) for t in state["values"][0])


@pytest.mark.parametrize("content", [b"", b"not a checkpoint\n", b"PK\x03\x04" + b"\0" * 40],
                         ids=["empty", "text", "zip-header"])
def test_files_that_are_not_checkpoints_are_refused_by_name(tmp_path, content):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"resume: '.*bad\.pt' is not a saddle checkpoint"):
        saddle.solve(game(), max_iters=5, resume=path)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(fraction=st.floats(0.0, 0.999))
def test_a_truncated_checkpoint_is_refused(tmp_path_factory, fraction):
    folder = tmp_path_factory.mktemp("truncated")
    data = written(folder).read_bytes()
    path = folder / "cut.pt"
    path.write_bytes(data[:int(fraction * len(data))])
    with pytest.raises(ValueError, match=r"cut\.pt.* is not a saddle checkpoint"):
        load_checkpoint(path)


def test_resume_paths_that_are_not_files(tmp_path):
    with pytest.raises(ValueError, match="is a folder, not a checkpoint file"):
        saddle.solve(game(), max_iters=5, resume=tmp_path)
    with pytest.raises(ValueError, match="no checkpoint file at"):
        saddle.solve(game(), max_iters=5, resume=tmp_path / "missing.pt")
    with pytest.raises(TypeError, match="resume must be a path"):
        saddle.solve(game(), max_iters=5, resume=3)


def test_a_checkpoint_of_another_format_version_is_refused(tmp_path):
    path = written(tmp_path)
    payload = torch.load(path, weights_only=True)
    torch.save(dict(payload, version=1), path)
    with pytest.raises(ValueError, match="version 1; this saddle reads version 2"):
        saddle.solve(game(), max_iters=40, tol=0.0, resume=path)


def test_a_tampered_state_is_refused_before_the_solve(tmp_path):
    path = written(tmp_path)
    payload = torch.load(path, weights_only=True)
    payload["z"] = (payload["z"][0][:, :3], payload["z"][1])
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"z\[0\] is a \(3, 3\) torch.float64 tensor; this solve has \(3, 5\)"):
        saddle.solve(game(), max_iters=40, tol=0.0, resume=path)
    payload["z"] = torch.load(written(tmp_path, name="d.pt"), weights_only=True)["z"]
    payload["state"]["__namedtuple__"] = "os:system"
    torch.save(payload, path)
    with pytest.raises(ValueError, match="state is a os:system"):
        saddle.solve(game(), max_iters=40, tol=0.0, resume=path)


# -- binding to the problem and the settings ---------------------------------------------------------

def test_resuming_another_problem_with_the_same_shapes_is_refused(tmp_path):
    path = written(tmp_path, game(seed=2))
    rng = torch.get_rng_state()
    with pytest.raises(ValueError, match="another problem with the same shapes: its data differ in K"):
        saddle.solve(game(seed=3), "extragradient", max_iters=60, tol=0.0, resume=path)
    assert torch.equal(torch.get_rng_state(), rng)  # nothing global changed before the refusal
    # the problem that wrote it resumes (bit-identically, as an uninterrupted solve)
    resumed = saddle.solve(game(seed=2), "extragradient", max_iters=60, tol=0.0, resume=path)
    assert_equal_solutions(resumed, saddle.solve(game(seed=2), "extragradient", max_iters=60, tol=0.0))


def test_resuming_another_dtype_or_size_is_refused(tmp_path):
    path = written(tmp_path)
    with pytest.raises(ValueError, match="written for a torch.float64 problem; this one is torch.float32"):
        saddle.solve(game(dtype=torch.float32), "extragradient", max_iters=60, tol=0.0, resume=path)
    with pytest.raises(ValueError, match=r"a batch of 3 with blocks of sizes \[5, 4\]; this problem has 3 and "
                                         r"\[6, 4\]"):
        saddle.solve(game(n=6), "extragradient", max_iters=60, tol=0.0, resume=path)
    with pytest.raises(ValueError, match=r"a batch of 3 .*this problem has 2"):
        saddle.solve(game(batch_size=2), "extragradient", max_iters=60, tol=0.0, resume=path)
    with pytest.raises(ValueError, match="written for a .*BilinearProblem; this problem is a .*DistributedProblem"):
        saddle.solve(problems.get("distributed_matrix_game", n=5, m=4, workers=2, batch_size=3, seed=2),
                     "extragradient", max_iters=60, tol=0.0, resume=path)


@pytest.mark.parametrize("change, named", [
    ({"step_size": 0.05}, "solver setting step_size"),
    ({"tol": 1e-9}, "setting tol"),
    ({"check_every": 5}, "setting check_every"),
    ({"divergence_factor": 1e6}, "setting divergence_factor"),
    ({"max_operator_calls": 50}, "setting max_operator_calls"),
])
def test_resuming_with_other_settings_is_refused(tmp_path, change, named):
    path = written(tmp_path, step_size=0.1)
    with pytest.raises(ValueError, match=f"written with another value of the {named};"):
        saddle.solve(game(), "extragradient", **{"max_iters": 60, "tol": 0.0, "step_size": 0.1, "resume": path,
                                                 **change})


def test_step_sizes_given_as_tensors_are_compared_exactly(tmp_path):
    steps = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    path = written(tmp_path, step_size=steps)
    nudged = steps.clone()
    nudged[1] = torch.nextafter(nudged[1], torch.tensor(1.0, dtype=torch.float64))  # prints the same
    with pytest.raises(ValueError, match="solver setting step_size"):
        saddle.solve(game(), "extragradient", max_iters=60, tol=0.0, step_size=nudged, resume=path)


def closure_problem(A: torch.Tensor, **kw) -> saddle.SaddleProblem:
    return saddle.SaddleProblem(lambda x, y: ((x @ A) * y).sum(-1), torch.zeros(2, 3, dtype=torch.float64),
                                torch.zeros(2, 3, dtype=torch.float64) + 0.5,
                                saddle.sets.Simplex(), saddle.sets.Simplex(), **kw)


def test_a_closure_problem_warns_that_only_its_shapes_were_checked(tmp_path):
    A = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    path = written(tmp_path, closure_problem(A))
    with pytest.warns(CheckpointWarning, match="only its shapes, dtype and visible data were checked"):
        saddle.solve(closure_problem(A + 1.0), "extragradient", max_iters=60, tol=0.0, resume=path)


def test_a_given_fingerprint_binds_a_closure_problem(tmp_path):
    A = torch.randn(3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    path = written(tmp_path, closure_problem(A, fingerprint="A, seed 0"))
    with pytest.raises(ValueError, match="its data differ in fingerprint"):
        saddle.solve(closure_problem(A + 1.0, fingerprint="A + 1"), "extragradient", max_iters=60, tol=0.0,
                     resume=path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resumed = saddle.solve(closure_problem(A, fingerprint="A, seed 0"), "extragradient", max_iters=60, tol=0.0,
                               resume=path)
    assert_equal_solutions(resumed, saddle.solve(closure_problem(A), "extragradient", max_iters=60, tol=0.0))
    with pytest.raises(TypeError, match="fingerprint must be a string"):
        closure_problem(A, fingerprint=3)


FAMILIES = {  # the families whose data depend on the seed
    "matrix_game": {}, "bilinear": {}, "quadratic": {}, "linear_program": {}, "dro": {},
    "distributed_bilinear": {}, "gaussian_mixture_gan": {},
}


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_fingerprints_bind_the_data_not_caches_or_thread_counts(name):
    problem = problems.get(name, batch_size=2, seed=1)
    before = problem_fingerprint(problem)
    problem.reference, problem.lipschitz(), problem.strong_monotonicity()  # fill every cache
    saddle.solve(problem, "extragradient", max_iters=20)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        fresh = problem_fingerprint(problems.get(name, batch_size=2, seed=1))
    finally:
        torch.set_num_threads(threads)
    assert problem_fingerprint(problem) == before == fresh
    other = problem_fingerprint(problems.get(name, batch_size=2, seed=2))
    assert other["summary"] == before["summary"] and other["parts"] != before["parts"]
    assert before["opaque"] == []


finite = st.floats(allow_nan=False, width=64)


@settings(max_examples=60, deadline=None)
@given(a=st.lists(finite, min_size=1, max_size=6), b=st.lists(finite, min_size=1, max_size=6))
def test_tensor_digests_are_equal_exactly_when_the_bytes_are(a, b):
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    same_bytes = ta.shape == tb.shape and ta.numpy().tobytes() == tb.numpy().tobytes()
    assert (digest(ta) == digest(tb)) == same_bytes
    assert digest(ta) != digest(ta.to(torch.float32))
    assert digest(ta) == digest(ta.clone()[None].expand(2, -1)[1])  # layout does not matter, bytes do


# -- the checkpoint path, before any work ------------------------------------------------------------

def counting_game():
    calls = []
    problem = game()
    operator = problem.operator

    def F(z):
        calls.append(1)
        return operator(z)

    return saddle.VIProblem(F, problem.domain, problem.z0), calls


def unwritable(tmp_path, kind: str) -> Path:
    if kind == "folder":
        return tmp_path
    if kind == "read-only file":
        path = tmp_path / "c.pt"
        path.write_bytes(b"")
        path.chmod(stat.S_IRUSR)
        return path
    if kind == "read-only folder":
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return folder / "c.pt"
    path = tmp_path / "fifo"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("kind, message", [
    ("folder", "is a folder; expected a file path"),
    ("read-only file", "c.pt' is read-only"),
    ("read-only folder", "the folder '.*ro' is read-only"),
    ("fifo", "exists and is not a regular file"),
])
def test_an_unwritable_checkpoint_path_fails_before_any_work(tmp_path, kind, message):
    path = unwritable(tmp_path, kind)
    problem, calls = counting_game()
    try:
        with pytest.raises(ValueError, match=message):
            saddle.solve(problem, "extragradient", max_iters=100, checkpoint=path)
        assert calls == []  # refused before the first operator evaluation
    finally:
        for p in (tmp_path / "ro", tmp_path / "c.pt"):
            if p.exists():
                p.chmod(stat.S_IRWXU)
    assert not any(name.endswith(".tmp") for _, _, names in os.walk(tmp_path) for name in names)


# -- cadence and leftovers ---------------------------------------------------------------------------

@pytest.fixture
def writes(monkeypatch):
    count = []
    real = checkpoints.save_checkpoint
    monkeypatch.setattr(checkpoints, "save_checkpoint", lambda *a, **k: (count.append(1), real(*a, **k)))
    return count


def test_the_default_cadence_writes_by_time_not_per_check(tmp_path, writes, monkeypatch):
    saddle.solve(game(), "extragradient", max_iters=200, tol=0.0, checkpoint=tmp_path / "c.pt")
    assert len(writes) == 1  # the end only: the old default wrote at every check (21 times)
    writes.clear()
    monkeypatch.setattr(checkpoints, "CHECKPOINT_INTERVAL", 0.0)  # every check is past the interval
    saddle.solve(game(), "extragradient", max_iters=200, tol=0.0, checkpoint=tmp_path / "c.pt")
    assert len(writes) == 21
    writes.clear()
    monkeypatch.setattr(checkpoints, "CHECKPOINT_INTERVAL", 3600.0)
    saddle.solve(game(), "extragradient", max_iters=200, tol=0.0, checkpoint=tmp_path / "c.pt", checkpoint_every=50)
    assert len(writes) == 5  # an explicit checkpoint_every keeps its meaning: 50, 100, 150, 200 and the end


def test_orphan_temporary_files_are_removed_at_the_next_write(tmp_path):
    orphans = [tmp_path / ".c.pt.k1lled_w.tmp", tmp_path / ".c.pt.abcd1234.tmp"]
    others = [tmp_path / ".c.pt.rank1.abcd1234.tmp", tmp_path / "notes.tmp", tmp_path / ".d.pt.abcd1234.tmp"]
    for p in orphans + others:
        p.write_bytes(b"partial")
    written(tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(["c.pt"] + [p.name for p in others])


def test_a_solve_killed_with_sigkill_resumes_bit_identically(tmp_path):
    path = tmp_path / "c.pt"
    script = textwrap.dedent(f"""
        import torch, problems, saddle
        torch.set_num_threads(1)
        problem = problems.get("matrix_game", n=5, m=4, batch_size=3, seed=2)
        saddle.solve(problem, "extragradient", max_iters=10**9, tol=0.0, checkpoint={str(path)!r},
                     checkpoint_every=10, history=50)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not (path.exists() and load_checkpoint(path)["k"] >= 200) and time.monotonic() < deadline:
            assert child.poll() is None, child.stderr.read().decode()
            time.sleep(0.05)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    k = load_checkpoint(path)["k"]
    assert k >= 200
    resumed = saddle.solve(game(), "extragradient", max_iters=k + 100, tol=0.0, history=50, resume=path,
                           checkpoint=path)
    full = saddle.solve(game(), "extragradient", max_iters=k + 100, tol=0.0, history=50)
    assert_equal_solutions(resumed, full)
    assert torch.equal(resumed.history["residual"], full.history["residual"])
    assert os.listdir(tmp_path) == ["c.pt"]  # a temporary file the kill left is gone after the next write
