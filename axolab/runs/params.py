"""Notebook parameters: what a notebook's ``parameters`` cell declares, and typed values for it.

A value typed on the command line is a string; it is converted to the type of the notebook's
default (``steps = 10`` makes ``-p steps 20`` the int 20, ``name = "x"`` keeps ``-p name 007``
the string "007"). The converted values are what reach the notebook, locally and on Slurm
alike (they travel as JSON, never through a shell).
"""

from __future__ import annotations

import ast
import difflib
import itertools
import json
from pathlib import Path
from typing import Any


class ParameterError(ValueError):
    """A parameter the notebook does not declare, or a value of the wrong type."""


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "list": list, "dict": dict,
          "tuple": tuple}


def has_parameters_cell(notebook: str | Path) -> bool:
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    return any("parameters" in cell.get("metadata", {}).get("tags", []) for cell in nb.cells)


def declared_parameters(notebook: str | Path) -> dict[str, type | None]:
    """Name -> type of each parameter of the notebook (None where the default is None or not a
    literal). Raises ParameterError for a notebook without a cell tagged ``parameters``."""
    import papermill

    notebook = Path(notebook)
    if not notebook.is_file():
        raise ParameterError(f"notebook {notebook} does not exist")
    if not has_parameters_cell(notebook):
        raise ParameterError(
            f"{notebook} has no cell tagged 'parameters', so nothing could be set in it; tag "
            "the cell holding its defaults (Jupyter: View > Cell Toolbar > Tags)")
    out = {}
    for name, info in papermill.inspect_notebook(str(notebook)).items():
        kind = _TYPES.get(info.get("inferred_type_name") or "")
        if kind is None:
            try:
                default = ast.literal_eval(info["default"])
                kind = None if default is None else type(default)
            except (ValueError, SyntaxError):
                kind = None
        out[name] = kind
    return out


def _from_string(name: str, raw: str, kind: type | None) -> Any:
    if kind is str:
        return raw
    if kind is bool:
        low = raw.strip().lower()
        if low in ("true", "yes", "1"):
            return True
        if low in ("false", "no", "0"):
            return False
        raise ParameterError(f"parameter {name}: {raw!r} is not a bool (true/false)")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError:
            raise ParameterError(f"parameter {name}: {raw!r} is not a{'n' if kind is int else ''} "
                                 f"{kind.__name__}") from None
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if kind is None:
            return raw  # no typed default: a plain word is a string
        raise ParameterError(f"parameter {name}: {raw!r} is not a {kind.__name__} literal") from None
    if kind is not None and not isinstance(value, kind):
        raise ParameterError(f"parameter {name}: {raw!r} is a {type(value).__name__}, the "
                             f"notebook's default is a {kind.__name__}")
    return value


def coerce(name: str, value: Any, kind: type | None) -> Any:
    """``value`` as the notebook's type for ``name``: strings are parsed, others checked."""
    if isinstance(value, str):
        return _from_string(name, value, kind)
    if value is None or kind is None:
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is tuple and isinstance(value, list):
        return value
    if isinstance(value, bool) and kind is not bool:
        raise ParameterError(f"parameter {name}: {value!r} is a bool, the notebook's default "
                             f"is a {kind.__name__}")
    if not isinstance(value, kind):
        raise ParameterError(f"parameter {name}: {value!r} is a {type(value).__name__}, the "
                             f"notebook's default is a {kind.__name__}")
    return value


def check_parameters(notebook: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """The typed parameters for ``notebook``; unknown names are refused with the closest match."""
    declared = declared_parameters(notebook)
    for name in values:
        if name not in declared:
            close = difflib.get_close_matches(name, declared, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ParameterError(f"{Path(notebook).name} has no parameter {name!r}{hint} "
                                 f"(it declares: {', '.join(declared) or 'none'})")
    typed = {name: coerce(name, value, declared[name]) for name, value in values.items()}
    json.dumps(typed)  # they travel as JSON (to Slurm tasks, into parameters.json)
    return typed


def parse_grid_option(spec: str) -> tuple[str, list[str]]:
    """``key=v1,v2`` (or ``key=[...]`` for values that contain commas) -> (key, [raw values])."""
    key, sep, values = spec.partition("=")
    if not sep or not key or not values:
        raise ParameterError(f"--grid {spec!r}: expected key=value1,value2")
    if values.lstrip().startswith("["):
        try:
            items = ast.literal_eval(values)
        except (ValueError, SyntaxError):
            raise ParameterError(f"--grid {spec!r}: {values!r} is not a list literal") from None
        return key, list(items)
    return key, values.split(",")


def expand_grid(grid: dict[str, list], fixed: dict[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of ``grid`` (in the order given), each point merged over ``fixed``."""
    overlap = set(grid) & set(fixed)
    if overlap:
        raise ParameterError(f"{', '.join(sorted(overlap))} given both as a fixed value and as "
                             "a grid axis")
    for key, values in grid.items():
        if not values:
            raise ParameterError(f"grid axis {key} has no values")
    keys = list(grid)
    return [{**fixed, **dict(zip(keys, combo))} for combo in itertools.product(*grid.values())]
