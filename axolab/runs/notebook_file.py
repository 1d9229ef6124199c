"""Writing a notebook from cell sources: how axolab's own notebooks are made, and how a
script can make a parameterized notebook for `axolab run` without opening Jupyter."""

from __future__ import annotations

from pathlib import Path

MARKDOWN = "markdown"
"""The first element of a cell pair that makes the cell a markdown (text) cell."""


def write_notebook(path: str | Path, cells: list[tuple[str | None, str]]) -> Path:
    """Write ``cells`` as a python3 notebook. Each is a ``(kind, source)`` pair: ``None`` for
    a code cell, ``"markdown"`` for a markdown cell, any other string for a code cell with
    that tag (tag the defaults cell "parameters" for papermill)."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for i, (kind, source) in enumerate(cells):
        if kind == MARKDOWN:
            cell = nbformat.v4.new_markdown_cell(source)
        else:
            cell = nbformat.v4.new_code_cell(source)
            if kind:
                cell.metadata["tags"] = [kind]
        cell["id"] = f"cell-{i}"  # stable ids: regenerating a notebook changes only its cells
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return Path(path)
