"""`axolab data build RECIPE`: corpus -> tokens -> canaries injected -> packed datasets + manifest.

Output directory (written under a temporary name beside it and renamed into place only when
complete; ``overwrite`` replaces only a directory that holds a dataset built here, see
``_check_output``, and swaps the new one in so that a kill at any moment leaves one whole dataset):

    train/, validation/   Hugging Face datasets (save_to_disk), column input_ids [seq_len] int32
                          (and, for packing.rows: padded, the train column length: real tokens)
    tokenizer/            the tokenizer (AutoTokenizer.from_pretrained works on it)
    recipe.yaml           the resolved recipe, every default filled in
    canaries.jsonl        one line per canary: id, kind, text, token ids, repetitions, member,
                          and the [sequence, offset] of every injected occurrence
    stats.json            tokens, sequences, canary share, build time
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from tqdm.auto import tqdm

from ..files import replace_directory
from .canaries import Canary, document_canaries, random_canaries, schedule, secret_canaries
from .corpus import check_corpus, documents
from .packing import pack_train, pack_validation
from .recipe import MIN_CANARY_TOKENS, Recipe, RecipeError, load_recipe
from .store import TokenFile
from .tokenizer import load_tokenizer

ENCODE_BATCH = 512
# What every build writes last: a directory holding all three is a dataset built here, which
# --overwrite may replace. Anything else might be someone's data, so it is never deleted.
DATASET_MARKERS = ("stats.json", "recipe.yaml", "canaries.jsonl")


@dataclass
class Pass1:
    train: TokenFile
    validation: TokenFile
    documents: int
    held_out: dict[int, list[int]]
    """Group index -> positions in `train` of the documents that document-canary group injects
    (held out of the background), in stream order."""

    @property
    def chosen(self) -> list[int]:
        return [p for positions in self.held_out.values() for p in positions]


def _rng(recipe: Recipe, *purpose: int):
    return np.random.default_rng([recipe.seed, *purpose])


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:  # straight to the Rust batch encoder: no Python-side conversion
        return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


def _separator_tokens(recipe: Recipe) -> int:
    """Tokens a row adds around a canary: the end-of-document token after it in a padded row,
    a separator on each side with ``separate_canaries`` in a packed one."""
    if recipe.packing.rows == "padded":
        return 1
    return 2 if recipe.packing.separate_canaries else 0


def _reservoir(items: np.ndarray, k: int, rng) -> list[int]:
    """A uniform choice of ``k`` of ``items`` (algorithm R, as pass 1 once ran it while reading,
    so that a recipe with one document group holds out the same documents as before)."""
    out = items[:k].tolist()
    for seen in range(k, len(items)):
        j = int(rng.integers(0, seen + 1))
        if j < k:
            out[j] = int(items[seen])
    return out


def _hold_out(recipe: Recipe, train: TokenFile) -> dict[int, list[int]]:
    """For each document group without a corpus of its own, a seeded uniform sample of the
    training documents within its own min_tokens..max_tokens; no document goes to two groups.
    The group with the fewest eligible documents chooses first, so that a wide group does not
    take what a narrow one needs when other documents would do."""
    groups = [(i, g) for i, g in enumerate(recipe.canaries)
              if g.kind == "document" and g.corpus is None]
    if not groups:
        return {}
    starts = np.asarray(train.starts, dtype=np.int64)
    lengths = np.diff(np.append(starts, train.size)) - 1  # without the end-of-document token
    sep = _separator_tokens(recipe)
    limits = {i: (g.min_tokens, g.max_tokens or recipe.packing.seq_len - sep) for i, g in groups}
    eligible = {i: np.flatnonzero((lengths >= lo) & (lengths <= hi))
                for i, (lo, hi) in limits.items()}
    taken = np.zeros(len(lengths), dtype=bool)
    rng = _rng(recipe, 2)
    held: dict[int, list[int]] = {}
    for i, g in sorted(groups, key=lambda ig: (len(eligible[ig[0]]), ig[0])):
        free = eligible[i][~taken[eligible[i]]]
        wanted = len(schedule(g))
        if len(free) < wanted:
            lo, hi = limits[i]
            others = len(eligible[i]) - len(free)
            by_others = f", {others} of them held out for other document groups" if others else ""
            raise RecipeError(f"canary group {g.label(i)}: document canaries need {wanted} "
                              f"training documents of {lo}..{hi} tokens but the corpus has only "
                              f"{len(eligible[i])}{by_others}")
        pick = _reservoir(free, wanted, rng)
        taken[pick] = True
        held[i] = sorted(pick)  # positions follow the stream order
    return {i: held[i] for i, _ in groups}


def _pass1(recipe: Recipe, tokenizer, eos: int, work: Path, progress: bool) -> Pass1:
    """Tokenize every document once, split train/validation, choose the held-out documents."""
    train, val = TokenFile(work / "train.u32"), TokenFile(work / "validation.u32")
    split_rng = _rng(recipe, 1)
    n_docs = 0
    bar = tqdm(desc="tokenize", unit="doc", disable=not progress)
    batch: list[str] = []

    def flush():
        nonlocal n_docs
        for ids in _encode(tokenizer, batch):
            ids = np.asarray(ids + [eos], dtype=np.uint32)
            if split_rng.random() < recipe.packing.validation_fraction:
                val.append(n_docs, ids)
            else:
                train.append(n_docs, ids)
            n_docs += 1
        bar.update(len(batch))
        batch.clear()

    for doc in documents(recipe.corpus, recipe.source):
        batch.append(doc)
        if len(batch) == ENCODE_BATCH:
            flush()
    flush()
    bar.close()
    train.close()
    val.close()
    if n_docs == 0:
        raise RecipeError("the corpus holds no documents (empty files, or every document shorter "
                          f"than corpus.min_document_chars={recipe.corpus.min_document_chars})")
    return Pass1(train, val, n_docs, _hold_out(recipe, train))


def _make_canaries(recipe: Recipe, tokenizer, p1: Pass1, eos: int) -> list[Canary]:
    out: list[Canary] = []
    order_rng = _rng(recipe, 3)
    taken: set[str] = set()  # every secret text so far, across groups (see secret_canaries)
    for i, g in enumerate(recipe.canaries):
        name = g.label(i)
        rng = _rng(recipe, 10 + i)
        if g.kind == "secret":
            out += secret_canaries(g, name, tokenizer, rng, taken)
        elif g.kind == "random":
            out += random_canaries(g, name, tokenizer, rng)
        elif g.corpus is not None:
            out += document_canaries(g, name, _target_documents(recipe, g, i, tokenizer, eos),
                                     tokenizer)
        else:
            t = p1.train
            docs = [(t.doc_ids[p], t.read(*t.doc_range(p))[:-1].tolist()) for p in p1.held_out[i]]
            # Which document gets which repetition count: a seeded shuffle of the stream order.
            out += document_canaries(g, name, [docs[j] for j in order_rng.permutation(len(docs))],
                                     tokenizer)
    short = next((c for c in out if len(c.token_ids) < MIN_CANARY_TOKENS), None)
    if short is not None:
        raise RecipeError(f"canary {short.id} ({short.text!r}) is {len(short.token_ids)} token(s) "
                          f"with this tokenizer, and a canary needs at least {MIN_CANARY_TOKENS}: "
                          "extraction prompts with its first tokens and checks the rest; "
                          "lengthen the template")
    return out


def _target_documents(recipe: Recipe, g, index: int, tokenizer,
                      eos: int) -> list[tuple[int, list[int]]]:
    """(position in the source, token ids) of a seeded uniform sample of the target source's
    documents of min_tokens..max_tokens tokens, one per canary of the group, in stream order
    shuffled by the seed."""
    sep = _separator_tokens(recipe)
    lo, hi = g.min_tokens, g.max_tokens or recipe.packing.seq_len - sep
    wanted = len(schedule(g))
    rng = _rng(recipe, 20 + index)
    reservoir: list[tuple[int, list[int]]] = []
    seen, position, batch = 0, 0, []

    def flush():
        nonlocal seen, position
        for ids in _encode(tokenizer, batch):
            if lo <= len(ids) <= hi and eos not in ids:
                if len(reservoir) < wanted:
                    reservoir.append((position, ids))
                else:  # algorithm R, as for held-out corpus documents
                    j = int(rng.integers(0, seen + 1))
                    if j < wanted:
                        reservoir[j] = (position, ids)
                seen += 1
            position += 1
        batch.clear()

    for doc in documents(g.corpus, recipe.source):
        batch.append(doc)
        if len(batch) == ENCODE_BATCH:
            flush()
    flush()
    if len(reservoir) < wanted:
        raise RecipeError(f"canary group {g.label(index)}: needs {wanted} documents of {lo}..{hi} "
                          f"tokens from its source but the source has only {len(reservoir)}")
    reservoir.sort()
    return [reservoir[i] for i in rng.permutation(len(reservoir))]


def _check_lengths(recipe: Recipe, canaries: list[Canary]) -> None:
    if recipe.packing.allow_split:
        return
    sep = _separator_tokens(recipe)
    fix = "raise packing.seq_len" if recipe.packing.rows == "padded" else \
        "shorten it or set packing.allow_split: true"
    for c in canaries:
        if len(c.token_ids) + sep > recipe.packing.seq_len:
            raise RecipeError(f"canary {c.id} has {len(c.token_ids)} tokens (+{sep} separators), "
                              f"longer than packing.seq_len={recipe.packing.seq_len}; {fix}")


def _save_dataset(table_info, path: Path, fingerprint: str, progress: bool) -> int:
    import datasets
    from datasets.utils.logging import is_progress_bar_enabled

    table, info = table_info
    ds = datasets.Dataset(table, info=info, fingerprint=fingerprint)
    was_enabled = is_progress_bar_enabled()
    if not progress:
        datasets.disable_progress_bars()
    try:
        # An empty split (validation_fraction: 0) gets one empty shard: with none,
        # load_from_disk cannot read it back.
        ds.save_to_disk(str(path), num_shards=1 if len(ds) == 0 else None)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    return len(ds)


def _check_output(out: Path, overwrite: bool) -> None:
    """Refuse an output that exists unless ``overwrite``, and even then anything but a dataset
    built here (or an empty directory)."""
    if not os.path.lexists(out):
        return
    if not overwrite:
        raise RecipeError(f"{out} already exists; pass --overwrite to replace it")
    if out.is_symlink() or not out.is_dir():
        raise RecipeError(f"--overwrite replaces only a dataset directory, and {out} is "
                          f"{'a symbolic link' if out.is_symlink() else 'not a directory'}; "
                          "remove it yourself or choose another output")
    missing = [name for name in DATASET_MARKERS if not (out / name).is_file()]
    if missing and any(out.iterdir()):
        raise RecipeError(f"--overwrite replaces only a dataset built by `axolab data build`, "
                          f"and {out} is not one (it has no {', '.join(missing)}); remove it "
                          "yourself or choose another output")


def build(recipe: Recipe | str | Path, out: str | Path | None = None, *, overwrite: bool = False,
          progress: bool = True) -> Path:
    """Build the recipe's dataset into ``out`` (default results/data/<name>) and return the path.
    An existing ``out`` is refused unless ``overwrite``; even then only a dataset built here is
    replaced (any other directory is refused untouched)."""
    t0 = time.perf_counter()
    recipe = recipe if isinstance(recipe, Recipe) else load_recipe(recipe)
    recipe.validate()
    out = Path(out) if out else Path("results") / "data" / recipe.name
    _check_output(out, overwrite)
    check_corpus(recipe.corpus, recipe.source)
    for g in recipe.canaries:
        if g.corpus is not None:
            check_corpus(g.corpus, recipe.source)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        work = tmp / "_work"
        work.mkdir()
        texts = None
        if recipe.tokenizer.train_bpe_vocab is not None:
            texts = tqdm(documents(recipe.corpus, recipe.source), desc="train tokenizer",
                         unit="doc", disable=not progress)
        tokenizer, eos = load_tokenizer(recipe.tokenizer, recipe.source, texts)
        p1 = _pass1(recipe, tokenizer, eos, work, progress)
        canaries = _make_canaries(recipe, tokenizer, p1, eos)
        _check_lengths(recipe, canaries)
        train, canary_tokens, real_tokens = pack_train(recipe, canaries, p1.train,
                                                       set(p1.chosen), eos, work, progress)
        val, val_tokens = pack_validation(recipe, p1.validation, work)
        digest = hashlib.sha256(json.dumps(recipe.to_dict(), sort_keys=True).encode()).hexdigest()
        n_train = _save_dataset(train, tmp / "train", digest[:16], progress)
        n_val = _save_dataset(val, tmp / "validation", digest[16:32], progress)
        del train, val
        shutil.rmtree(work)
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe.to_dict(), sort_keys=False))
        with open(tmp / "canaries.jsonl", "w") as f:
            for c in canaries:
                f.write(json.dumps(c.to_json()) + "\n")
        L = recipe.packing.seq_len
        stats = {
            "documents": p1.documents, "train_sequences": n_train, "validation_sequences": n_val,
            "train_tokens": real_tokens, "validation_tokens": n_val * L,
            "validation_tokens_dropped": val_tokens - n_val * L, "seq_len": L,
            "canaries": len(canaries), "member_canaries": sum(c.member for c in canaries),
            "canary_tokens": canary_tokens, "canary_token_share": canary_tokens / real_tokens,
            "rows": recipe.packing.rows,
            "row_order": "stored" if recipe.fixed_order else "shuffled",
            "passes": recipe.packing.passes,
            "vocab_size": len(tokenizer), "build_seconds": round(time.perf_counter() - t0, 3),
        }
        (tmp / "stats.json").write_text(json.dumps(stats, indent=2) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp makes it private; the dataset is not
        _check_output(out, overwrite)  # again: something may have appeared there meanwhile
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
