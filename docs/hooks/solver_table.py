"""MkDocs hook: replace ``<!-- solver-table -->`` with the registered solvers' metadata table."""

from __future__ import annotations

MARKER = "<!-- solver-table -->"


def on_page_markdown(markdown: str, **kwargs) -> str:
    if MARKER not in markdown:
        return markdown
    import saddle  # noqa: F401  (importing saddle registers the solvers)
    from saddle.solvers.base import solver_table

    return markdown.replace(MARKER, solver_table())
