"""Writing a notebook from cell sources: how axolab's own notebooks are made, and how a
script can make a parameterized notebook for `axolab run` without opening Jupyter."""

from __future__ import annotations

from pathlib import Path


def write_notebook(path: str | Path, cells: list[tuple[str | None, str]]) -> Path:
    """Write ``cells`` ((tag or None, source) pairs, all code cells) as a python3 notebook;
    tag the defaults cell "parameters" for papermill."""
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    for i, (tag, source) in enumerate(cells):
        cell = nbformat.v4.new_code_cell(source)
        cell["id"] = f"cell-{i}"  # stable ids: regenerating a notebook changes only its code
        if tag:
            cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    nbformat.validate(nb)
    nbformat.write(nb, str(path))
    return Path(path)
