"""Reading a built dataset's canary manifest back."""

from __future__ import annotations

import json
from pathlib import Path

from .canaries import Canary


def load_canaries(data_dir: str | Path) -> list[Canary]:
    """The canaries of a dataset built by ``axolab data build``, in manifest order."""
    path = Path(data_dir) / "canaries.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a dataset built by "
                                "`axolab data build`?")
    with open(path) as f:
        return [Canary(**json.loads(line)) for line in f if line.strip()]
