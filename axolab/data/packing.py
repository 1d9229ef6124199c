"""Pass 2 of a build: the training and validation splits as rows of ``seq_len`` tokens.

Two row layouts (``packing.rows``): "packed" concatenates documents and canary slots into one
stream cut every ``seq_len`` tokens; "padded" starts every canary occurrence and every corpus
document (or ``seq_len`` piece of one) in a row of its own and pads it, recording the real
length. Either way each canary's occurrences are placed by :mod:`.placement` and recorded as
``[row, offset]``, so the manifest can be checked against the tokens themselves.

A fixed-order split (``Recipe.fixed_order``: several passes over the corpus, or a canary
window) writes each pass in its own seeded document order and is read by the trainer in
stored order, so a row's position is its place in training time.
"""

from __future__ import annotations

import math

import numpy as np
from tqdm.auto import tqdm

from .canaries import Canary
from .placement import Request, place
from .recipe import Recipe, RecipeError
from .store import PaddedRowWriter, SequenceWriter, TokenFile, TokenReader


def _document_order(recipe: Recipe, store: TokenFile, skip: set[int]) -> list[int] | None:
    """Documents of the training split in the order they are written: corpus order for a
    shuffled split (the trainer shuffles rows), one seeded permutation per pass otherwise."""
    if not recipe.fixed_order:
        return None
    kept = np.asarray([i for i in range(len(store.starts)) if i not in skip], dtype=np.int64)
    order: list[int] = []
    for p in range(recipe.packing.passes):
        rng = np.random.default_rng([recipe.seed, 5, p])
        order.extend(kept[rng.permutation(len(kept))].tolist())
    return order


def _window(recipe: Recipe, canary: Canary, n: int) -> tuple[int, int] | None:
    group = next(g for i, g in enumerate(recipe.canaries) if g.label(i) == canary.group)
    if group.window is None:
        return None
    lo, hi = math.floor(group.window[0] * n), math.floor(group.window[1] * n)
    if hi <= lo:
        raise RecipeError(f"canary group {canary.group}: window {group.window} of a training "
                          f"split of {n} rows holds no row; widen it or use a larger corpus")
    return lo, hi


def _requests(recipe: Recipe, canaries: list[Canary], slots: dict[int, np.ndarray],
              n: int, one_per_row: bool) -> list[Request]:
    clustered = {g.label(i): g.placement == "clustered" for i, g in enumerate(recipe.canaries)}
    return [Request(i, canaries[i].repetitions, 1 if one_per_row else len(slots[i]),
                    clustered[canaries[i].group], _window(recipe, canaries[i], n))
            for i in slots]


def pack_train(recipe: Recipe, canaries: list[Canary], train: TokenFile, skip: set[int],
               eos: int, work, progress: bool):
    """The training split; returns ((table, info), canary tokens, real tokens)."""
    if recipe.packing.rows == "padded":
        return _pack_padded(recipe, canaries, train, skip, eos, work, progress)
    L, sep = recipe.packing.seq_len, recipe.packing.separate_canaries
    reader = TokenReader(train, skip, _document_order(recipe, train, skip))
    members = [i for i, c in enumerate(canaries) if c.member]
    slots = {i: np.asarray(([eos] if sep else []) + canaries[i].token_ids + ([eos] if sep else []),
                           dtype=np.uint32) for i in members}
    canary_tokens = sum(len(slots[i]) * canaries[i].repetitions for i in members)
    if canary_tokens > reader.total:
        raise RecipeError(f"more canary tokens than the corpus can hold: {canary_tokens} canary "
                          f"tokens (with separators) but only {reader.total} corpus tokens")
    n_seq = (reader.total + canary_tokens) // L
    if n_seq == 0:
        raise RecipeError(f"the corpus has {reader.total} training tokens, fewer than one "
                          f"sequence of {L}")
    requests = _requests(recipe, canaries, slots, n_seq, one_per_row=False)
    starts = place(requests, n_seq, L, recipe.packing.allow_split, np.random.default_rng(
        [recipe.seed, 4]))
    writer = SequenceWriter(work / "train.arrow", L)
    bar = tqdm(total=n_seq * L, desc="pack", unit="tok", unit_scale=True, disable=not progress)
    pos = 0
    for start, r in starts:
        i = requests[r].canary
        if start > pos:
            writer.write(reader.take(start - pos))
        writer.write(slots[i])
        canaries[i].occurrences.append(list(divmod(start + int(sep), L)))
        bar.update(start + len(slots[i]) - pos)
        pos = start + len(slots[i])
    writer.write(reader.take(n_seq * L - pos))
    bar.update(n_seq * L - pos)
    bar.close()
    return writer.close(), canary_tokens, n_seq * L


def _background_docs(recipe: Recipe, train: TokenFile, skip: set[int]) -> list[int]:
    """The corpus documents of a padded split, in the order they are written."""
    if not recipe.packing.background:
        return []
    order = _document_order(recipe, train, skip)
    return [d for d in (range(len(train.starts)) if order is None else order) if d not in skip]


def _background_rows(train: TokenFile, docs: list[int], seq_len: int):
    """Those documents cut into pieces of at most seq_len tokens, one per row."""
    for doc in docs:
        ids = train.read(*train.doc_range(doc))
        for a in range(0, len(ids), seq_len):
            yield ids[a:a + seq_len]


def _pack_padded(recipe, canaries, train: TokenFile, skip: set[int], eos: int, work, progress):
    L = recipe.packing.seq_len
    members = [i for i, c in enumerate(canaries) if c.member]
    # A target document ends with the separator, as corpus documents do: the end is learnt too.
    slots = {i: np.asarray(canaries[i].token_ids + [eos], dtype=np.uint32) for i in members}
    docs = _background_docs(recipe, train, skip)
    n_bg = sum(-(-(b - a) // L) for a, b in map(train.doc_range, docs))  # ceil, from lengths
    n_rows = n_bg + sum(canaries[i].repetitions for i in members)
    if n_rows == 0:
        raise RecipeError("the training split would hold no rows: no corpus documents and no "
                          "injected canaries")
    requests = _requests(recipe, canaries, slots, n_rows, one_per_row=True)
    # One slot per row: placement in rows of capacity one is placement in rows.
    starts = place(requests, n_rows, 1, False, np.random.default_rng([recipe.seed, 4]))
    canary_at = {row: requests[r].canary for row, r in starts}
    background = _background_rows(train, docs, L)
    writer = PaddedRowWriter(work / "train.arrow", L, eos)
    real = 0
    for row in tqdm(range(n_rows), desc="pack rows", unit="row", disable=not progress):
        if row in canary_at:
            i = canary_at[row]
            tokens = slots[i]
            canaries[i].occurrences.append([row, 0])
        else:
            tokens = next(background)
        writer.write_row(tokens)
        real += len(tokens)
    canary_tokens = sum(len(slots[i]) * canaries[i].repetitions for i in members)
    return writer.close(), canary_tokens, real


def pack_validation(recipe: Recipe, validation: TokenFile, work):
    """The validation split, always packed (held-out loss is per token either way)."""
    L = recipe.packing.seq_len
    reader = TokenReader(validation)
    writer = SequenceWriter(work / "validation.arrow", L)
    if reader.total >= L:
        writer.write(reader.take(reader.total // L * L))
    return writer.close(), reader.total
