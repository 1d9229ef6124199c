"""Reading a recipe file: YAML that refuses a key given twice, errors as one line.

PyYAML keeps the last of two equal keys silently, so a recipe with two ``seq_len`` lines would
build with either; here it is refused with both line numbers.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from .errors import RecipeError


class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: PyYAML would keep the
    last one silently, so a recipe with two ``seq_len`` lines would build with either."""


def _mapping_without_duplicates(loader, node, deep=False):
    first_line: dict = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in first_line:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice (first on line "
                    f"{first_line[key] + 1})", key_node.start_mark)
        except TypeError:  # an unhashable key: construct_mapping names it
            continue
        first_line[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
                              _mapping_without_duplicates)


def read_yaml(path: Path):
    """The YAML document in ``path``; every problem is one RecipeError line naming the file
    (and the line and column, for a syntax error)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_StrictLoader)
    except UnicodeDecodeError as e:
        raise RecipeError(f"recipe file {path} is not UTF-8 text (byte {e.object[e.start]:#04x} "
                          f"at byte offset {e.start})") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(e.problem or e.context or "").split())
        raise RecipeError(f"recipe file {path} is not valid YAML{where}: {problem}") from None
    except yaml.YAMLError as e:
        problem = " ".join(str(e).split())
        raise RecipeError(f"recipe file {path} is not valid YAML: {problem}") from None
