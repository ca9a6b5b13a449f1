"""The public API is documented, and the documentation pages' examples run.

Docstrings (walking ``saddle.__all__``, ``saddle.optim.__all__``, the
``__all__`` of every module of ``saddle`` and ``problems``, the solver
registry and the problem registry):

- every public class, function and module has its own docstring (not the
  signature a dataclass writes in its place) with at least one sentence, and
  every public method and property of those classes has one (inherited from
  the base class where it overrides a documented method);
- every registered solver's class docstring names a reference (an arXiv id,
  an author-year citation, a venue-year, or a book) and states its step (an
  equation) and its settings (an ``Args:`` section);
- every registered problem factory has an ``Args:`` section or a closed form,
  and its docstring or its module's names a reference from the literature;
  the few textbook families listed in ``TEXTBOOK_PROBLEMS`` name instead the
  independent solver or closed form their exact answers come from.

Documentation pages:

- as the site renders them (after the hooks of ``mkdocs.yml``), the "which
  solver" table of ``docs/concepts.md`` has one row for every registered
  solver and the API reference renders every public name and every solver;
  a solver registered without editing the pages gets a generated row and an
  API entry (``docs/hooks/registered_solvers.py``);
- the new pages and every notebook are in the nav, the notebooks are stored
  executed with their plots (the site renders them with ``execute: false``);
- the Python code blocks of ``docs/index.md``, ``docs/getting_started.md``,
  ``docs/distributed.md`` and ``docs/determinism.md`` run, in order, in one
  namespace per page, and print what their comments say where it matters;
  the "your own distributed problem" script of ``docs/distributed.md`` also
  runs under ``torchrun`` with two processes (slow).
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import io
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from saddle import problems
import saddle
import saddle.optim
import saddle.testing

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"

# -------------------------------------------------------------------------- collecting the API

# A citation: an arXiv id, a DOI, a capitalized name (author, venue, journal, book) followed within the
# same sentence by a year 1900-2029, or an explicit book.
REFERENCE = re.compile(
    r"arXiv[: ]*\d{4}\.\d{4,5}"
    r"|doi\.org/|\bdoi:"
    r"|\b[A-Z][A-Za-zÀ-ÿ'-]+(?:[^.\n]|\.(?! )|(?<=\bal)\. |\n(?!\s*\n)){0,120}?\b(?:19\d\d|20[0-2]\d)\b"
    r"|\bbook\b",
)

# Solver classes whose docstrings live in files this test's authors may not edit yet: their module
# docstring carries the reference instead. Remove a name once its class docstring cites the paper.
REFERENCE_IN_MODULE_DOCSTRING: set[str] = set()

# Textbook problem families without a literature reference in their docstrings; they must name where
# their exact answers come from. Remove a name once its docstring (or its module's) cites a source.
TEXTBOOK_PROBLEMS: set[str] = set()
EXACT_SOURCE = re.compile(r"HiGHS|cvxpy|closed[- ]form|linear solve|only saddle point|equilibrium \(|"
                          r"unique equilibrium|value 0", re.I)


def _modules(package) -> list:
    out = [package]
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if any(part.startswith("_") for part in info.name.split(".")):
            continue  # __main__ and private modules (saddle.optim._amp)
        out.append(importlib.import_module(info.name))
    return out


MODULES = _modules(saddle) + _modules(problems)


def _public_objects() -> dict[str, object]:
    """``{qualified name: object}`` for every public class, function and module."""
    found: dict[str, object] = {}

    def add(name, obj):
        if inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj):
            found.setdefault(name, obj)

    for name in saddle.__all__:
        add(f"saddle.{name}", getattr(saddle, name))
    for name in saddle.optim.__all__:
        add(f"saddle.optim.{name}", getattr(saddle.optim, name))
    for module in MODULES:
        add(module.__name__, module)
        for name in getattr(module, "__all__", ()):
            add(f"{module.__name__}.{name}", getattr(module, name))
    for name in saddle.solver_names():
        add(f"solver {name!r}", type(saddle.get_solver(name)))
    for name in problems.names():
        add(f"problem {name!r}", problems._REGISTRY[name])
    return found


PUBLIC = _public_objects()


def own_docstring(obj) -> str:
    """The object's own docstring, cleaned; "" if absent or generated (a dataclass's signature)."""
    doc = obj.__dict__.get("__doc__") if inspect.isclass(obj) else getattr(obj, "__doc__", None)
    if not isinstance(doc, str):
        return ""
    doc = inspect.cleandoc(doc)
    if inspect.isclass(obj) and doc.startswith(obj.__name__ + "("):
        return ""
    return doc


def is_sentence(doc: str) -> bool:
    """At least one sentence: three or more words, with a verb-like length, ending in punctuation or a colon."""
    words = re.findall(r"[A-Za-z][A-Za-z'-]*", doc)
    return len(doc) >= 20 and len(words) >= 3 and re.search(r"[.:;)`]\s*(\n|$)", doc + "\n") is not None


def _solver_class(name: str) -> type:
    return type(saddle.get_solver(name))


# -------------------------------------------------------------------------- docstrings

def test_the_walk_finds_the_api():
    assert len(PUBLIC) > 200
    for name in ["saddle.solve", "saddle.Extragradient", "saddle.optim.SAM", "saddle.distributed.main",
                 "saddle.problems.get", "solver 'masha1'", "problem 'dro'"]:
        assert name in PUBLIC, name


@pytest.mark.parametrize("name", sorted(PUBLIC))
def test_public_object_has_a_docstring(name):
    doc = own_docstring(PUBLIC[name])
    assert doc, f"{name} has no docstring"
    assert is_sentence(doc), f"{name}'s docstring is not a sentence: {doc!r}"


def _public_methods():
    seen, out = set(), []
    for obj in PUBLIC.values():
        if not inspect.isclass(obj) or obj in seen or not obj.__module__.startswith(("saddle", "problems")):
            continue
        seen.add(obj)
        for attr, value in vars(obj).items():
            if attr.startswith("_"):
                continue
            if isinstance(value, property):
                out.append((obj, attr, value))
            elif isinstance(value, (staticmethod, classmethod)) or inspect.isfunction(value):
                out.append((obj, attr, getattr(obj, attr)))
    return out


METHODS = _public_methods()


@pytest.mark.parametrize("cls,attr,member", METHODS, ids=[f"{c.__module__}.{c.__name__}.{a}" for c, a, _ in METHODS])
def test_public_method_has_a_docstring(cls, attr, member):
    # inspect.getdoc inherits the docstring of the method it overrides (e.g. Solver.step).
    doc = inspect.getdoc(member)
    assert doc and len(doc.split()) >= 2, f"{cls.__name__}.{attr} has no docstring"


@pytest.mark.parametrize("name", saddle.solver_names())
def test_solver_docstring_names_a_reference_an_equation_and_its_settings(name):
    cls = _solver_class(name)
    doc = own_docstring(cls)
    if name in REFERENCE_IN_MODULE_DOCSTRING:
        module_doc = inspect.getdoc(inspect.getmodule(cls)) or ""
        assert REFERENCE.search(module_doc), f"{name}: no reference in {cls.__module__}'s docstring"
    else:
        assert REFERENCE.search(doc), f"{name} ({cls.__name__}): the docstring names no reference"
    assert "=" in doc, f"{name}: the docstring states no equation"
    fields = [f for f in getattr(cls, "__dataclass_fields__", {})]
    if fields:
        assert "Args:" in doc, f"{name}: the docstring documents no settings"


def test_the_exception_lists_are_current():
    # Keep the lists honest: every entry exists, and an entry whose docstring gains a reference must go.
    assert REFERENCE_IN_MODULE_DOCSTRING <= set(saddle.solver_names())
    assert TEXTBOOK_PROBLEMS <= set(problems.names())
    for name in REFERENCE_IN_MODULE_DOCSTRING:
        assert not REFERENCE.search(own_docstring(_solver_class(name))), \
            f"{name}'s class docstring now names a reference: remove it from REFERENCE_IN_MODULE_DOCSTRING"
    for name in TEXTBOOK_PROBLEMS:
        factory = problems._REGISTRY[name]
        docs = own_docstring(factory) + "\n" + (inspect.getdoc(inspect.getmodule(factory)) or "")
        assert not REFERENCE.search(docs), \
            f"problem {name!r} now names a reference: remove it from TEXTBOOK_PROBLEMS"


@pytest.mark.parametrize("name", problems.names())
def test_problem_factory_docstring_names_a_reference(name):
    factory = problems._REGISTRY[name]
    doc = own_docstring(factory)
    module_doc = inspect.getdoc(inspect.getmodule(factory)) or ""
    assert "Args:" in doc or re.search(r"=|\bmin", doc + module_doc), f"{name}: neither arguments nor a formula"
    if name in TEXTBOOK_PROBLEMS:
        assert EXACT_SOURCE.search(doc + "\n" + module_doc), f"{name}: no source for the exact reference"
    else:
        assert REFERENCE.search(doc) or REFERENCE.search(module_doc), f"{name}: no reference"


def test_reference_pattern():
    for text in ["Korpelevich 1976", "(Schäfer and Anandkumar 2019, arXiv 1905.12103)", "ICML 2023",
                 "Mehta, Roulet, Pillutla and Harchaoui, ICLR 2024", "arXiv 2110.03313", "Nemirovski (2004)",
                 "(Juditsky et al. 2011)"]:
        assert REFERENCE.search(text), text
    for text in ["a float64 tensor of shape (B, 2019)", "step 0.5", "the 2nd call", "float32 or float64."]:
        assert not REFERENCE.search(text), text


# -------------------------------------------------------------------------- the pages

def _load_hooks() -> list:
    """The MkDocs hooks that mkdocs.yml lists, loaded from their files as mkdocs loads them."""
    config = (ROOT / "mkdocs.yml").read_text()
    listed = re.search(r"^hooks:\n((?:  - .*\n)+)", config, flags=re.M)
    hooks = []
    for path in re.findall(r"  - (\S+)", listed.group(1)):
        spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        hooks.append(module)
    return hooks


HOOKS = _load_hooks()
REGISTRY_HOOK = next(h for h in HOOKS if h.__name__ == "registered_solvers")


def rendered(page: str) -> str:
    """The Markdown of ``docs/<page>`` after every hook of mkdocs.yml, as the site shows it."""
    text = (DOCS / page).read_text()
    for hook in HOOKS:
        text = hook.on_page_markdown(text, page=None, config=None, files=None)
    return text


def test_which_solver_table_has_one_row_per_registered_solver():
    text = rendered("concepts.md")
    names = re.findall(r"^\| `(\w+)` \|", text, flags=re.M)
    duplicated = sorted({n for n in names if names.count(n) > 1})
    assert not duplicated, f"docs/concepts.md's which-solver table has several rows for {duplicated}"
    missing = set(saddle.solver_names()) - set(names)
    assert not missing, f"docs/concepts.md's which-solver table has no row for {sorted(missing)}"
    assert set(names) <= set(saddle.solver_names()) | {"name"}, sorted(set(names) - set(saddle.solver_names()))
    assert "<!--" not in text  # every marker was filled
    for section in ["## Variational inequalities", "## Monotonicity", "## Measuring progress: merit functions",
                    "## Why gradient descent-ascent fails", "## Which solver"]:
        assert section in text, section


def test_api_reference_renders_every_public_name():
    text = rendered("api.md")
    assert "<!--" not in text  # every marker was filled
    found = REGISTRY_HOOK.directives(text)
    missing = []
    for name in saddle.__all__:
        obj = getattr(saddle, name)
        if not inspect.ismodule(obj) and not REGISTRY_HOOK.renders(found, obj, f"saddle.{name}", name=name):
            missing.append(f"saddle.{name}")
    for name in saddle.optim.__all__:
        if not REGISTRY_HOOK.renders(found, getattr(saddle.optim, name), f"saddle.optim.{name}", name=name):
            missing.append(f"saddle.optim.{name}")
    for name in saddle.solver_names():
        if not REGISTRY_HOOK.renders_solver(found, _solver_class(name)):
            missing.append(f"solver {name!r}")
    for name in problems.names():
        factory = problems._REGISTRY[name]
        if not REGISTRY_HOOK.renders(found, factory, f"problems.{factory.__name__}"):
            missing.append(f"problems: {name}")
    assert not missing, f"docs/api.md does not render {missing}"
    targets = [target for target, _ in found]
    duplicated = sorted({t for t in targets if targets.count(t) > 1})
    assert not duplicated, f"docs/api.md renders {duplicated} more than once"


@dataclass(frozen=True)
class Halpern(saddle.Solver):
    """Halpern-anchored extragradient (Diakonikolas 2020): z+ = P(z0/(k+2) + (k+1)/(k+2) P(z - eta F(w))).

    A solver registered only for the length of a test (it never runs).

    Args:
        step_size: eta.
    """

    category = "first-order"
    calls_per_step = 2
    converges_on = ("monotone",)
    rate = "sublinear"

    step_size: float = 0.1


def test_a_newly_registered_solver_appears_on_both_pages():
    entry = f"::: {__name__}.Halpern"
    with saddle.testing.registered("halpern_eg", Halpern):
        concepts, api = rendered("concepts.md"), rendered("api.md")
    row = re.search(r"^\| `halpern_eg` \|.*\|$", concepts, flags=re.M)
    assert row, "no row for the newly registered solver"
    cells = [c.strip() for c in re.split(r"(?<!\\)\|", row.group(0))[1:-1]]
    assert len(cells) == 6  # the columns of the hand-written table
    assert cells[1] == Halpern.__doc__.split("\n")[0]
    assert cells[2] == "2"
    assert "monotone" in cells[4] and "sublinear" in cells[4]
    assert cells[5] == "category: first-order"
    # the row continues the hand-written table: it follows one of its rows, with no line in between
    lines = concepts.split("\n")
    assert lines[lines.index(row.group(0)) - 1].startswith("| `")
    assert entry in api
    assert api.index("### More first-order solvers") < api.index(entry) < api.index("### Step sizes")
    # unregistered, it is gone, and nothing else is generated
    assert "halpern_eg" not in rendered("concepts.md") and entry not in rendered("api.md")


def test_new_pages_are_in_the_nav_and_linked_from_the_home_page():
    nav = (ROOT / "mkdocs.yml").read_text()
    index = (DOCS / "index.md").read_text()
    for page in ["getting_started.md", "concepts.md", "distributed.md", "determinism.md", "benchmarks.md",
                 "api.md"]:
        assert page in nav, page
        assert f"]({page}" in index, page
    for notebook in sorted((DOCS / "notebooks").glob("*.ipynb")):
        assert f"notebooks/{notebook.name}" in nav, notebook.name


@pytest.mark.parametrize("notebook", sorted((DOCS / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_notebooks_are_stored_executed_with_their_plots(notebook):
    # mkdocs-jupyter renders the stored outputs (execute: false): a notebook saved unexecuted, or with its
    # outputs cleared, would publish without its plots.
    import json

    cells = [c for c in json.loads(notebook.read_text())["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") is not None for c in cells), "a code cell was not executed"
    images = [o for c in cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert images, "no plot in the stored outputs"


def python_blocks(page: Path) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", page.read_text(), flags=re.S | re.M)


def run_page(page: Path) -> tuple[dict, str]:
    """Execute the page's Python blocks in order in one namespace; the namespace and what they printed."""
    import matplotlib

    matplotlib.use("Agg")
    namespace: dict = {"__name__": "__docs__"}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for i, block in enumerate(python_blocks(page)):
            exec(compile(block, f"{page.name}, python block {i + 1}", "exec"), namespace)
    import matplotlib.pyplot as plt

    plt.close("all")
    return namespace, out.getvalue()


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the pages may write files (plots, checkpoints)
    threads = torch.get_num_threads()
    yield tmp_path
    torch.set_num_threads(threads)


def test_index_examples_run(in_tmp):
    ns, out = run_page(DOCS / "index.md")
    assert "{'CONVERGED': 16}" in out


def test_getting_started_examples_run(in_tmp):
    page = DOCS / "getting_started.md"
    assert len(python_blocks(page)) >= 5
    ns, out = run_page(page)
    assert "32 CONVERGED" in out
    assert (ns["values"] - ns["games"].reference.value).abs().max() < 1e-10
    assert "Status.DIVERGED" in out and "Status.CONVERGED" in out
    assert ns["solution"].success.all()  # the last solution: the user's own problem
    assert (in_tmp / "convergence.png").is_file()
    assert [r.solver for r in ns["rows"]] == ["extragradient", "optimistic", "gda"]


def test_distributed_examples_run(in_tmp):
    page = DOCS / "distributed.md"
    ns, out = run_page(page)
    eg_run, masha_run = ns["eg_run"], ns["masha_run"]
    assert eg_run.success.all() and masha_run.success.all()
    # MASHA1 sends fewer uplink bits than uncompressed extragradient for the same accuracy
    assert masha_run.counts["bits_up"].item() < eg_run.counts["bits_up"].item() / 2
    # the bit accounting the page spells out
    assert ns["one"].counts["bits_up"].item() == ns["full"] + ns["compressed"]
    assert ns["one"].counts["bits_down"].item() == ns["full"] + 3 * ns["compressed"]  # all-gathered to 3 others
    assert 8 * ns["one"].counts["bytes_received"].item() == ns["full"] + 3 * ns["compressed"]
    assert "masha1 on distributed_bilinear(n=20, M=4): SimulatedGroup(size=4)" in out
    assert "[rank 0] iteration" in out
    assert "2 CONVERGED" in out  # the user's own distributed problem


def test_determinism_examples_run(in_tmp):
    ns, out = run_page(DOCS / "determinism.md")
    assert out.split() == ["True"] * 5, out


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun") is None and importlib.util.find_spec("torch.distributed.run") is None,
                    reason="no torchrun")
def test_distributed_page_script_runs_under_torchrun(tmp_path):
    # The page's "your own distributed problem" script, saved as my_game.py and started with torchrun.
    script = next(b for b in python_blocks(DOCS / "distributed.md") if "TorchDistributedGroup()" in b)
    (tmp_path / "my_game.py").write_text(script)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "my_game.py"]
    out = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.count("Solution(solver=MASHA1") == 1  # rank 0 only
    assert "2 CONVERGED" in out.stdout
