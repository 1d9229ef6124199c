"""Checking a dataclass's values against its field annotations.

Configs arrive as JSON, YAML and papermill parameters, where ``"100"``, ``true`` and ``1.5``
are all easy to write by mistake; a value of the wrong type must be refused with the field's
name before any rank starts, not fail as a traceback deep in the training loop. Torch-free.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union


def _describe(hint) -> str:
    origin = typing.get_origin(hint)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return f"a list, each item {_describe(args[0])}" if args else "a list"
    if hint is type(None):
        return "null"
    if hint is float:
        return "a number"
    if hint is int:
        return "an integer"
    if hint is bool:
        return "true or false"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def matches(value: Any, hint) -> bool:
    """Whether ``value`` (as read from JSON/YAML) is of type ``hint``. bool is not an int here
    (``true`` for a step count is a mistake), and an int is a float (``lr: 1``)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in typing.get_args(hint))
    if origin in (Union, types.UnionType):
        return any(matches(value, a) for a in typing.get_args(hint))
    if origin in (list, tuple):
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and (
            not args or all(matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def check_field_types(obj, where: str = "config") -> None:
    """Raise ValueError naming the first field whose value does not match its annotation."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if not matches(value, hints[f.name]):
            raise ValueError(f"{where}: {f.name}={value!r} must be {_describe(hints[f.name])}")
