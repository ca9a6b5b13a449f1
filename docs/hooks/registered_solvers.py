"""MkDocs hook: the "which solver" table and the API page follow the solver registry.

Two markers, each replaced by what the hand-written page lacks (by nothing when
it lacks nothing):

- ``<!-- registered-solver-rows -->``, on the line right after a table whose
  rows start with a solver's name (``| `gda` | ...``): a generated row for
  every registered solver the table has no row for, from the class docstring's
  first line and the class metadata (`Solver.calls_per_step`, `converges_on`,
  `rate`, `category`). The hand-written rows say more; these are the fallback.
- ``<!-- registered-solver-entries -->``: a ``::: module.Class`` entry for every
  registered solver that no ``:::`` directive of the page renders, under one
  heading per `Solver.category`.

So a newly registered solver appears on both pages with no edit to them. The
functions are also what ``tests/test_docstrings.py`` checks the pages with.
"""

from __future__ import annotations

import inspect
import re

ROWS_MARKER = "<!-- registered-solver-rows -->"
ENTRIES_MARKER = "<!-- registered-solver-entries -->"

_ROW_NAME = re.compile(r"^\| `(\w+)` \|", flags=re.M)
_DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:    .*\n)*)", flags=re.M)
_MEMBERS = re.compile(r"members: (\[[^\]]*\]|false)")


def on_page_markdown(markdown: str, **kwargs) -> str:
    """Fill both markers of a page (mkdocs calls this on every page's Markdown)."""
    return with_registered_entries(with_registered_rows(markdown))


def registered_solvers() -> dict[str, type]:
    """``{name: class}`` of every registered solver, by name."""
    import saddle  # importing saddle registers its solvers

    return {name: type(saddle.get_solver(name)) for name in saddle.solver_names()}


# -- the "which solver" table ---------------------------------------------------------------------

def table_rows(markdown: str) -> set[str]:
    """The solver names that start a row of a Markdown table (``| `name` | ...``) in ``markdown``."""
    return set(_ROW_NAME.findall(markdown))


def with_registered_rows(markdown: str) -> str:
    """``markdown`` with its rows marker replaced by a row for each registered solver its table lacks.

    The table is the block of ``|`` lines right above the marker.
    """
    if ROWS_MARKER not in markdown:
        return markdown
    before, after = markdown.split(ROWS_MARKER, 1)
    lines = before.rstrip("\n").split("\n")
    start = len(lines)
    while start > 0 and lines[start - 1].startswith("|"):
        start -= 1
    if start == len(lines):
        raise ValueError(f"{ROWS_MARKER} must be on the line right after a Markdown table")
    listed = table_rows("\n".join(lines[start:]))
    rows = [solver_row(name, cls) for name, cls in registered_solvers().items() if name not in listed]
    return before + "\n".join(rows) + after


def solver_row(name: str, cls: type) -> str:
    """The generated row ``| name | method | calls | step condition | guarantee | use it for |`` of a solver."""
    calls = "varies" if cls.calls_per_step is None else str(cls.calls_per_step)
    if cls.converges_on:
        guarantee = f"converges on {', '.join(cls.converges_on)} problems ({cls.rate} rate)"
    else:
        guarantee = "no VI guarantee stated"
    cells = [f"`{name}`", summary(cls), calls, "see the [API reference](api.md)", guarantee,
             f"category: {cls.category or 'none'}"]
    return "| " + " | ".join(cell.replace("|", r"\|") for cell in cells) + " |"


def summary(cls: type) -> str:
    """The first line of the class's own docstring (its name when it has none)."""
    doc = inspect.cleandoc(cls.__dict__.get("__doc__") or "")
    return doc.split("\n", 1)[0].strip() or cls.__name__


# -- the API page ---------------------------------------------------------------------------------

def directives(markdown: str) -> list[tuple[str, list[str] | None]]:
    """The ``::: target`` directives of a page, each with its ``members`` option (None: all, ``[]``: none)."""
    out = []
    for match in _DIRECTIVE.finditer(markdown):
        members = _MEMBERS.search(match.group(2).replace("\n", " "))
        if members is None:
            out.append((match.group(1), None))
        elif members.group(1) == "false":
            out.append((match.group(1), []))
        else:
            out.append((match.group(1), re.findall(r"\w+", members.group(1))))
    return out


def renders(found: list[tuple[str, list[str] | None]], obj, *aliases: str, name: str | None = None) -> bool:
    """Whether one of the directives ``found`` renders ``obj`` (a class or function) named ``name``.

    A directive renders it when its target is ``module.name`` or one of
    ``aliases`` (e.g. ``saddle.GDA``), or is the object's module with ``name``
    among the members shown. ``name`` defaults to the object's ``__name__``;
    ``saddle.problems`` is rendered from the repository's folder, under the name
    ``problems``.
    """
    name = obj.__name__ if name is None else name
    module = obj.__module__.replace("saddle.problems", "problems", 1)
    for target, members in found:
        if target in aliases or target == f"{module}.{name}":
            return True
        if target == module and (members is None or name in members):
            return True
    return False


def renders_solver(found: list[tuple[str, list[str] | None]], cls: type) -> bool:
    """Whether the directives ``found`` render the solver class ``cls``, also as ``saddle.<Class>``."""
    import saddle

    alias = f"saddle.{cls.__name__}"
    return renders(found, cls, *([alias] if getattr(saddle, cls.__name__, None) is cls else []))


def with_registered_entries(markdown: str) -> str:
    """``markdown`` with its entries marker replaced by ``::: module.Class`` for each solver it does not render.

    Grouped under a ``### More <category> solvers`` heading per category.
    """
    if ENTRIES_MARKER not in markdown:
        return markdown
    found = directives(markdown)
    groups: dict[str, list[str]] = {}
    for cls in registered_solvers().values():
        if not renders_solver(found, cls):
            groups.setdefault(cls.category or "uncategorized", []).append(f"::: {cls.__module__}.{cls.__name__}")
    blocks = [f"### More {category} solvers\n\n" + "\n\n".join(entries) for category, entries in groups.items()]
    return markdown.replace(ENTRIES_MARKER, "\n\n".join(blocks))
