"""Data recipes: a YAML file that says which corpus, tokenizer, canaries and packing to use.

The YAML maps 1:1 onto the dataclasses below (a docstring per field). Loading is strict: an
unknown key is an error that names it and suggests the closest valid one, because a typo such as
``repetition: [1, 2]`` silently ignored would produce a study that measures nothing.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class RecipeError(ValueError):
    """A recipe that cannot be built, with the field and the numbers at fault."""


@dataclass
class CorpusSpec:
    """Where the documents come from. Exactly one of embedded / files / saved / hub."""

    embedded: str | None = None
    """Name of a corpus shipped with axolab: "austen" (six Jane Austen novels)."""
    files: list[str] | None = None
    """Local files: .txt / .txt.gz (split into documents by ``document_boundary``), .jsonl /
    .json (one document per line, text in ``text_field``) or .parquet. Relative paths are
    relative to the recipe file."""
    saved: str | None = None
    """A dataset directory written by ``datasets.Dataset.save_to_disk``."""
    hub: str | None = None
    """A Hugging Face Hub dataset name (e.g. wikimedia/wikipedia), streamed through ``datasets``."""
    hub_config: str | None = None
    """The Hub dataset's configuration name (e.g. 20231101.en)."""
    split: str = "train"
    """Split of a Hub or saved dataset dict to read."""
    text_field: str = "text"
    """Column holding the document text (jsonl, parquet, saved and Hub corpora)."""
    document_boundary: str = "blank_lines"
    """How plain text is cut into documents: "blank_lines" (paragraphs), "file" (one document
    per file), or "regex:PATTERN" (a new document starts at each line matching PATTERN)."""
    max_documents: int | None = None
    """Read at most this many documents (small studies and tests)."""
    min_document_chars: int = 1
    """Skip documents shorter than this many characters."""


@dataclass
class TokenizerSpec:
    """Either a pretrained tokenizer or one trained on the corpus."""

    path: str | None = None
    """A Hugging Face tokenizer directory or Hub name (e.g. meta-llama/Llama-3.1-8B)."""
    train_bpe_vocab: int | None = None
    """Train a byte-level BPE of this vocabulary size on the corpus with ``tokenizers``."""
    expect_vocab_size: int | None = None
    """If set, the tokenizer must have exactly this many tokens (the model's embedding rows)."""
    eos_token: str | None = None
    """Document separator token; default: the tokenizer's eos token (``<|endoftext|>`` for a
    trained BPE)."""


@dataclass
class CanarySpec:
    """One group of canaries with one repetition schedule."""

    kind: str = "random"
    """"secret" (a template with random fillers), "random" (uniform random tokens) or
    "document" (whole corpus documents held out and injected)."""
    repetitions: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    """The repetition counts of the schedule."""
    per_count: int = 4
    """How many distinct canaries are injected at each repetition count."""
    controls: int | None = None
    """Never-injected canaries of the same kind (non-members); default: as many as members."""
    template: str | None = None
    """For "secret": text with fillers: {dN} N digits, {aN} N lowercase letters, {xN} N hex."""
    candidates: int = 1000
    """For "secret": unused fillers kept per canary for exposure ranking."""
    length: int = 32
    """For "random": tokens per canary."""
    min_tokens: int = 32
    """For "document": shortest document eligible."""
    max_tokens: int | None = None
    """For "document": longest document eligible (default: the sequence length)."""
    placement: str = "uniform"
    """"uniform" (occurrences spread over the training stream) or "clustered" (a canary's
    occurrences in consecutive sequences)."""
    name: str | None = None
    """Label of the group in the manifest (default: the kind)."""


@dataclass
class PackingSpec:
    """How documents become fixed-length training sequences."""

    seq_len: int = 256
    """Tokens per sequence."""
    validation_fraction: float = 0.05
    """Fraction of documents (by a seeded hash) kept for validation; never holds canaries."""
    separate_canaries: bool = True
    """Surround each injected canary with the separator token, as its own document."""
    allow_split: bool = False
    """Allow canaries to straddle a sequence boundary (needed for canaries longer than seq_len)."""


@dataclass
class Recipe:
    """A complete, declarative description of a memorization dataset."""

    name: str
    """Short name; the default output directory is results/data/<name>."""
    corpus: CorpusSpec
    """The documents."""
    tokenizer: TokenizerSpec
    """The tokenizer."""
    canaries: list[CanarySpec] = field(default_factory=list)
    """The canary groups."""
    packing: PackingSpec = field(default_factory=PackingSpec)
    """Sequence packing and the validation split."""
    seed: int = 0
    """Seed of every random choice: same recipe + seed gives byte-identical output."""
    source: str | None = None
    """Directory the recipe was loaded from (relative corpus paths resolve against it)."""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d


_FILLER = re.compile(r"\{([dax])(\d+)\}")


def _build(cls, data, where: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(k, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where}: unknown field {k!r}{hint}; valid fields: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        hint = hints[k]
        if hint is CorpusSpec or hint is TokenizerSpec or hint is PackingSpec:
            v = _build(hint, v, f"{where}.{k}")
        elif k == "canaries":
            if not isinstance(v, list):
                raise RecipeError(f"{where}.canaries: expected a list of canary groups")
            v = [_build(CanarySpec, c, f"{where}.canaries[{i}]") for i, c in enumerate(v)]
        kwargs[k] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"{where}: missing required field(s) {', '.join(missing)}")
    return cls(**kwargs)


def _validate(r: Recipe) -> None:
    c = r.corpus
    sources = [n for n in ("embedded", "files", "saved", "hub") if getattr(c, n)]
    if len(sources) != 1:
        raise RecipeError(f"corpus: give exactly one of embedded, files, saved, hub (got "
                          f"{sources or 'none'})")
    if c.embedded and c.embedded != "austen":
        raise RecipeError(f"corpus.embedded: unknown corpus {c.embedded!r}; shipped: austen")
    if not (c.document_boundary in ("blank_lines", "file") or c.document_boundary.startswith("regex:")):
        raise RecipeError(f"corpus.document_boundary: {c.document_boundary!r} is not blank_lines, "
                          "file or regex:PATTERN")
    t = r.tokenizer
    if (t.path is None) == (t.train_bpe_vocab is None):
        raise RecipeError("tokenizer: give exactly one of path or train_bpe_vocab")
    if t.train_bpe_vocab is not None and t.train_bpe_vocab < 260:
        raise RecipeError(f"tokenizer.train_bpe_vocab={t.train_bpe_vocab} is below the 256 byte "
                          "tokens plus specials a byte-level BPE needs")
    p = r.packing
    if p.seq_len < 2:
        raise RecipeError(f"packing.seq_len={p.seq_len} must be at least 2")
    if not 0 <= p.validation_fraction < 1:
        raise RecipeError(f"packing.validation_fraction={p.validation_fraction} must be in [0, 1)")
    for i, g in enumerate(r.canaries):
        where = f"canaries[{i}]"
        if g.kind not in ("secret", "random", "document"):
            raise RecipeError(f"{where}.kind={g.kind!r}: expected secret, random or document")
        if g.placement not in ("uniform", "clustered"):
            raise RecipeError(f"{where}.placement={g.placement!r}: expected uniform or clustered")
        if not g.repetitions or any((not isinstance(n, int)) or n < 1 for n in g.repetitions):
            raise RecipeError(f"{where}.repetitions={g.repetitions}: need positive integers")
        if g.per_count < 1:
            raise RecipeError(f"{where}.per_count={g.per_count} must be at least 1")
        if g.kind == "secret":
            if not g.template or not _FILLER.search(g.template):
                raise RecipeError(f"{where}: a secret canary needs a template with a filler such "
                                  f"as {{d6}}, got {g.template!r}")
        if g.kind == "random" and g.length < 1:
            raise RecipeError(f"{where}.length={g.length} must be at least 1")


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    data = yaml.safe_load(path.read_text())
    recipe = _build(Recipe, data, path.name)
    recipe.source = str(path.resolve().parent)
    _validate(recipe)
    return recipe


def recipe_from_dict(data: dict, source: str | Path | None = None) -> Recipe:
    """A recipe from a mapping (notebooks build them in code)."""
    recipe = _build(Recipe, data, "recipe")
    recipe.source = str(source) if source else None
    _validate(recipe)
    return recipe
