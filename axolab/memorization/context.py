"""What precedes a canary in training: the context every canary is evaluated after.

Extraction prompts, membership scores and exposure must see a canary after exactly the tokens
that preceded it in the training rows: a context training never showed measures something
else. The built dataset says which tokens those are:

- how many, from the layout recorded with it (recipe.yaml's ``packing``): none in a padded row
  (every occurrence starts a row of its own, at offset 0: the model meets the canary from its
  first token), one separator in a packed stream with ``separate_canaries``, none without (the
  canary then follows whatever corpus text came before it, different at every occurrence);
- which, from the training rows themselves: the token(s) just before recorded occurrences
  ``[row, offset]`` of the manifest, which must be the same at every occurrence read and be
  followed by the canary's own tokens. Only when no occurrence has room before it (no member
  canary, or every occurrence at the start of a row) is the separator taken from the recipe
  (``tokenizer.eos_token``, else the saved tokenizer's end-of-sequence token), as the build
  took it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axolab.data import Canary, load_canaries

OCCURRENCES_READ = 64
"""Occurrences (one per member canary, in manifest order) whose rows are read and checked."""


def _layout(data_dir: Path) -> tuple[str, bool]:
    """(packing.rows, packing.separate_canaries) as the dataset was built."""
    import yaml

    path = data_dir / "recipe.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: is {data_dir} a dataset built by "
                                "`axolab data build`?")
    packing = (yaml.safe_load(path.read_text()) or {}).get("packing") or {}
    rows = packing.get("rows", "packed")
    if rows not in ("packed", "padded"):
        raise ValueError(f"{path}: packing.rows is {rows!r}, neither 'packed' nor 'padded'")
    return rows, bool(packing.get("separate_canaries", True))


def context_width(data_dir: str | Path) -> int:
    """How many tokens precede each canary occurrence in the dataset's training rows."""
    rows, separated = _layout(Path(data_dir))
    return 1 if rows == "packed" and separated else 0


def _recipe_separator(data_dir: Path, tokenizer=None) -> list[int]:
    """The separator the build used, from the recipe: its tokenizer.eos_token, else the
    tokenizer's own end-of-sequence token."""
    import yaml

    if tokenizer is None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(data_dir / "tokenizer"))
    recipe = yaml.safe_load((data_dir / "recipe.yaml").read_text()) or {}
    eos = (recipe.get("tokenizer") or {}).get("eos_token") or tokenizer.eos_token
    eos_id = None if eos is None else tokenizer.convert_tokens_to_ids(eos)
    if eos_id is None:
        raise ValueError(f"{data_dir}: no separator token: the recipe names no "
                         "tokenizer.eos_token and the tokenizer has none")
    return [int(eos_id)]


def canary_context(data_dir: str | Path, canaries: list[Canary] | None = None,
                   tokenizer=None) -> list[int]:
    """The token ids that precede every canary in the training rows of ``data_dir`` (empty
    when none does), read from the rows at recorded occurrences. A ValueError when the rows
    disagree with the manifest or with each other."""
    data_dir = Path(data_dir)
    rows, _ = _layout(data_dir)
    width = context_width(data_dir)
    canaries = load_canaries(data_dir) if canaries is None else canaries
    if rows == "padded":
        late = [(c.id, o) for c in canaries for o in c.occurrences if o[1] != 0]
        if late:
            raise ValueError(f"{data_dir}: padded rows, but canary {late[0][0]} is recorded at "
                             f"[row, offset] {late[0][1]}, not at the start of its row")
    if width == 0:
        return []
    picked = [(c, o) for c in canaries
              for o in [next((o for o in c.occurrences if o[1] >= width), None)]
              if o is not None][:OCCURRENCES_READ]
    if not picked:
        return _recipe_separator(data_dir, tokenizer)
    from axolab.data.loader import PackedDataset

    train = PackedDataset(data_dir, "train")
    ids = train.read(np.asarray([o[0] for _, o in picked], dtype=np.int64)).numpy()
    found: dict[tuple[int, ...], str] = {}
    for (c, (row, offset)), r in zip(picked, ids):
        n = min(len(c.token_ids), train.seq_len - offset)  # a split canary ends in a later row
        if r[offset:offset + n].tolist() != c.token_ids[:n]:
            raise ValueError(f"{data_dir}: canary {c.id} is recorded at [row, offset] "
                             f"[{row}, {offset}], but the training row holds other tokens there")
        found.setdefault(tuple(r[offset - width:offset].tolist()), c.id)
    if len(found) > 1:
        raise ValueError(f"{data_dir}: canaries are preceded by different tokens in the "
                         f"training rows ({dict(list(found.items())[:3])}, by canary), not by "
                         "one separator")
    return [int(t) for t in next(iter(found))]
