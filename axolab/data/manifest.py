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


def canary_table(data_dir: str | Path):
    """The manifest as a pandas DataFrame, one row per canary: id, group, kind, repetitions
    (scheduled), injected (occurrences actually placed), member, tokens and text."""
    import pandas as pd

    return pd.DataFrame([{"id": c.id, "group": c.group, "kind": c.kind,
                          "repetitions": c.repetitions, "injected": len(c.occurrences),
                          "member": c.member, "tokens": len(c.token_ids), "text": c.text}
                         for c in load_canaries(data_dir)])
