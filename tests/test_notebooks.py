"""The executed notebooks in docs/notebooks, and the closed forms the bilinear notebook teaches.

`test_notebook_executes` runs every ``docs/notebooks/*.ipynb`` from a fresh
``python3`` kernel, in the notebook's own folder, and checks that every code
cell ran, in order, with no error output; a new notebook is picked up without
touching this file.

The other tests check the claims of ``01_bilinear_games.ipynb`` about
``min_x max_y xy`` against closed forms derived by hand (not against another
run of the library): with ``F(z) = M z``, ``M = [[0, 1], [-1, 0]]``,

- simultaneous GDA: ``|z_k| = (1 + eta^2)^(k/2) |z_0|`` (spirals out for every eta),
- extragradient: ``|z_k| = (1 - eta^2 + eta^4)^(k/2) |z_0|`` (contracts for eta < 1),
- alternating GDA: ``x^2 + y^2 - eta x y`` is invariant (a bounded orbit),
- optimistic GDA: ``|z_{k+1}| / |z_k| -> sqrt((1 + sqrt(1 - 4 eta^2)) / 2)`` for eta < 1/2.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

from saddle import problems
import saddle

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "docs" / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))

X0, Y0 = 0.7, -1.3
RTOL = 1e-10


def _execute(path: Path):
    """Run one notebook in a fresh one-thread kernel: ``(the executed notebook, the exception of its first
    failing cell or None)``."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute(env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"})
    except Exception as error:  # nbclient.exceptions.CellExecutionError names the failing cell
        return nb, error
    return nb, None


class _Executions(dict):
    """``{notebook path: _execute(path)}``, each notebook executed the first time it is asked for."""

    def __missing__(self, path: Path):
        self[path] = _execute(path)
        return self[path]


@pytest.fixture(scope="module")
def executed(request) -> _Executions:
    # In one process the selected notebooks run side by side, one kernel per core, each kernel on one
    # thread: their work is mostly small tensor operations, so this halves the wall time on two cores.
    # Under pytest-xdist the workers already fill the cores and each runs only the notebook tests sent
    # to it (its session lists them all), so there each notebook is executed by its own test.
    runs = _Executions()
    if hasattr(request.config, "workerinput"):  # a pytest-xdist worker
        return runs
    selected = [item.callspec.params["path"] for item in request.session.items
                if item.originalname == "test_notebook_executes"]
    with ThreadPoolExecutor(max_workers=max(1, min(len(selected), os.cpu_count() or 1))) as pool:
        runs.update(zip(selected, pool.map(_execute, selected)))
    return runs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name for p in NOTEBOOKS])
def test_notebook_executes(path: Path, executed):
    nb, error = executed[path]
    assert error is None, f"{path.name}: {error}"
    code = [cell for cell in nb.cells if cell.cell_type == "code" and cell.source.strip()]
    assert code, f"{path.name} has no code"
    # Every cell ran once, in order, in this kernel (not outputs left over from an earlier run).
    assert [cell.execution_count for cell in code] == list(range(1, len(code) + 1))
    errors = [out.get("ename") for cell in code for out in cell.get("outputs", []) if out.output_type == "error"]
    assert errors == [], f"{path.name}: error outputs {errors}"


def _norms(solver: str, eta: float, iterations: int) -> torch.Tensor:
    """``|z_k|`` for k = 0..iterations of ``solver`` on xy from (X0, Y0), in float64."""
    problem = problems.get("xy", x0=X0, y0=Y0, dtype=torch.float64)
    path = saddle.plot.trace(problem, solver, iterations=iterations, step_size=eta)
    assert path.shape == (iterations + 1, 1, 2)
    assert path.dtype == torch.float64
    return path[:, 0].norm(dim=-1)


@pytest.mark.parametrize("eta", [0.05, 0.2, 0.5, 0.9])
def test_xy_gda_grows_like_sqrt_one_plus_eta_squared(eta):
    K = 60
    norms = _norms("gda", eta, K)
    ks = torch.tensor([0, 1, 2, 3, 7, 20, 41, K])
    expected = torch.tensor([(1 + eta**2) ** (k / 2) * math.hypot(X0, Y0) for k in ks.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(norms[ks], expected, rtol=RTOL, atol=0)
    assert bool((norms[1:] > norms[:-1]).all())


@pytest.mark.parametrize("eta", [0.05, 0.2, 0.5, 0.9])
def test_xy_extragradient_contracts_like_sqrt_one_minus_eta_squared_plus_eta_fourth(eta):
    K = 60
    norms = _norms("extragradient", eta, K)
    ks = torch.tensor([0, 1, 2, 3, 7, 20, 41, K])
    expected = torch.tensor([(1 - eta**2 + eta**4) ** (k / 2) * math.hypot(X0, Y0) for k in ks.tolist()],
                            dtype=torch.float64)
    torch.testing.assert_close(norms[ks], expected, rtol=RTOL, atol=0)
    assert bool((norms[1:] < norms[:-1]).all())


@pytest.mark.parametrize("eta", [0.05, 0.2, 0.5, 1.5])
def test_xy_alternating_gda_stays_on_its_ellipse(eta):
    problem = problems.get("xy", x0=X0, y0=Y0, dtype=torch.float64)
    path = saddle.plot.trace(problem, "alternating_gda", iterations=200, step_size=eta)[:, 0]
    x, y = path[:, 0], path[:, 1]
    Q = x**2 + y**2 - eta * x * y
    torch.testing.assert_close(Q, torch.full_like(Q, X0**2 + Y0**2 - eta * X0 * Y0), rtol=RTOL, atol=0)


@pytest.mark.parametrize("eta", [0.1, 0.2, 0.3])
def test_xy_optimistic_rate_is_the_spectral_radius(eta):
    # After the fast mode (modulus sqrt((1 - s)/2)) has died out, |z| contracts
    # by exactly the spectral radius per iteration.
    K = 160
    norms = _norms("optimistic", eta, K)
    s = math.sqrt(1 - 4 * eta**2)
    rho = math.sqrt((1 + s) / 2)
    ks = torch.arange(80, K)
    ratios = norms[ks + 1] / norms[ks]
    torch.testing.assert_close(ratios, torch.full_like(ratios, rho), rtol=RTOL, atol=0)
