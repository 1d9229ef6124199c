"""Data recipes: a YAML file that says which corpus, tokenizer, canaries and packing to use.

The YAML maps 1:1 onto the dataclasses below (a docstring per field). Loading is strict: an
unknown key is an error that names it and suggests the closest valid one, because a typo such as
``repetition: [1, 2]`` silently ignored would produce a study that measures nothing. Every value
is checked against its field's annotation (``seq_len: "64"`` is refused, naming the field, the
value and the type wanted), a key given twice in one mapping is refused, and a YAML syntax error
is reported as one line with the file, line and column.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Literal
from pathlib import Path

from ..typecheck import check_field_types
from .errors import RecipeError
from .recipe_yaml import read_yaml


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

    kind: Literal["secret", "random", "document"] = "random"
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
    corpus: CorpusSpec | None = None
    """For "document": a second source of documents, the target set (a file, a
    ``save_to_disk`` dataset or a Hub dataset, as ``corpus``). Its documents are sampled
    (seeded) among those of min_tokens..max_tokens tokens and injected into the corpus stream
    at the group's repetition counts (a source that shares text with the corpus is also seen
    there). Default: documents held out of the corpus itself."""
    placement: Literal["uniform", "clustered"] = "uniform"
    """"uniform" (occurrences spread over the training stream) or "clustered" (a canary's
    occurrences in consecutive sequences)."""
    window: list[float] | None = None
    """[start, end): the fraction of the training split (in stored order, so of training time)
    the group's occurrences are confined to, e.g. [0, 0.25] for canaries seen only in the first
    quarter of training (forgetting curves). A recipe with a window is read by the trainer in
    stored order, without the per-epoch shuffle (see ``packing.passes``)."""
    name: str | None = None
    """Label of the group in the manifest and the prefix of its canary ids (default: the kind
    and the group's position, e.g. "random1"). Distinct groups need distinct names."""

    def label(self, index: int) -> str:
        """The group's name in the manifest; ``index`` is its position in ``canaries``."""
        return self.name or f"{self.kind}{index}"


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
    rows: Literal["packed", "padded"] = "packed"
    """"packed": documents concatenated and cut into rows of seq_len. "padded": one document
    per row, as the goldfish paper trains on its target documents: each canary occurrence and
    each corpus document (cut into seq_len pieces when longer) starts its own row, padded with
    the separator token; the column ``length`` holds the real tokens, and the loss skips the
    padding. The validation split is packed either way."""
    background: bool = True
    """False: the training split holds only the canary occurrences, the target set (train on
    it for E epochs with the trainer's ``epochs``); the corpus then only gives the validation
    split and, with ``train_bpe_vocab``, the tokenizer's training text."""
    passes: int = 1
    """Passes over the corpus written one after another into the training split, each in its
    own seeded document order. More than one (or any canary ``window``) makes the split
    fixed-order: the trainer reads it in stored order, so a window is a span of training steps.
    Train one epoch over such a split."""


@dataclass
class Recipe:
    """A complete, declarative description of a memorization dataset."""

    name: str
    """Short name; the default output directory is results/data/<name>, so it must be a plain
    directory name (letters, digits, ``_ . -``, not starting with a dot)."""
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

    @property
    def fixed_order(self) -> bool:
        """Whether the training split is meant to be read in stored order (no shuffle)."""
        return self.packing.passes > 1 or any(g.window is not None for g in self.canaries)

    def validate(self, where: str = "recipe") -> None:
        """Refuse, naming the field and the value, anything that cannot be built. ``build``
        calls it again, since notebooks change recipes in code after loading them."""
        _check_types(self, where)
        _validate(self)


_FILLER = re.compile(r"\{([dax])(\d+)\}")
# Extraction prompts with a canary's first tokens and checks that the model continues with the
# rest: a canary of one token has no prefix or no suffix, and only fails later, at evaluation.
MIN_CANARY_TOKENS = 2
# Exposure ranks a secret among its never-injected candidates and fits a three-parameter
# skew-normal to their log-perplexities: with fewer than 10 (about three per parameter) the fit
# is noise and the rank resolves under log2(11) = 3.5 bits. 0 turns exposure off.
MIN_SECRET_CANDIDATES = 10
# A name that is one path component and nothing else: no separators, no "..", no hidden files.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def _dataclass_of(hint):
    """(dataclass, is_list) when ``hint`` is a dataclass or a list of one, else (None, False)."""
    if dataclasses.is_dataclass(hint):
        return hint, False
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]  # an optional dataclass
        if len(inner) == 1 and dataclasses.is_dataclass(inner[0]):
            return inner[0], False
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    return None, False


def _build(cls, data, where: str):
    """``cls`` from a mapping, nested dataclasses (and lists of them) included; the values are
    not checked here (``_check_types`` does, on the finished object)."""
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping of field names to values, got "
                          f"{type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.name != "source"]
    unknown = [k for k in data if k not in names]
    if unknown:
        k = unknown[0]
        close = difflib.get_close_matches(str(k), names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise RecipeError(f"{where}: unknown field {k!r}{hint}; valid fields: {', '.join(names)}")
    kwargs = {}
    for k, v in data.items():
        inner, is_list = _dataclass_of(hints[k])
        if inner is not None and is_list:
            if not isinstance(v, list):
                raise RecipeError(f"{where}: {k}={v!r} must be a list of mappings")
            v = [_build(inner, item, f"{where}: {k}[{i}]") for i, item in enumerate(v)]
        elif inner is not None and v is not None:
            v = _build(inner, v, f"{where}: {k}")
        kwargs[k] = v
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in kwargs
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise RecipeError(f"{where}: missing required field(s) {', '.join(missing)}")
    return cls(**kwargs)


def _check_types(obj, where: str) -> None:
    """Every field of ``obj`` and of the dataclasses inside it against its annotation."""
    try:
        check_field_types(obj, where)
    except ValueError as e:
        raise RecipeError(str(e)) from None
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_types(value, f"{where}: {f.name}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                if dataclasses.is_dataclass(item):
                    _check_types(item, f"{where}: {f.name}[{i}]")


def _at_least(where: str, values: dict, low: int) -> None:
    for name, value in values.items():
        if value is not None and value < low:
            raise RecipeError(f"{where}.{name}={value} must be at least {low}")


def _validate_corpus(c: CorpusSpec, where: str = "corpus") -> None:
    sources = [n for n in ("embedded", "files", "saved", "hub") if getattr(c, n)]
    if len(sources) != 1:
        raise RecipeError(f"{where}: give exactly one of embedded, files, saved, hub (got "
                          f"{sources or 'none'})")
    if c.embedded and c.embedded != "austen":
        raise RecipeError(f"{where}.embedded: unknown corpus {c.embedded!r}; shipped: austen")
    if not (c.document_boundary in ("blank_lines", "file")
            or c.document_boundary.startswith("regex:")):
        raise RecipeError(f"{where}.document_boundary: {c.document_boundary!r} is not "
                          "blank_lines, file or regex:PATTERN")
    if c.document_boundary.startswith("regex:"):
        pattern = c.document_boundary[len("regex:"):]
        try:
            re.compile(pattern)
        except re.error as e:
            raise RecipeError(f"{where}.document_boundary: {pattern!r} is not a valid regular "
                              f"expression: {e}") from None
    _at_least(where, {"max_documents": c.max_documents}, 1)
    _at_least(where, {"min_document_chars": c.min_document_chars}, 0)


def _validate_canaries(r: Recipe) -> None:
    seen: dict[str, int] = {}
    for i, g in enumerate(r.canaries):
        where = f"canaries[{i}]"
        if not g.repetitions or any(n < 1 for n in g.repetitions):
            raise RecipeError(f"{where}.repetitions={g.repetitions}: need positive integers")
        _at_least(where, {"per_count": g.per_count}, 1)
        for name in ("length", "min_tokens"):
            if getattr(g, name) < MIN_CANARY_TOKENS:
                raise RecipeError(f"{where}.{name}={getattr(g, name)} must be at least "
                                  f"{MIN_CANARY_TOKENS}: extraction prompts with a canary's "
                                  "first tokens and checks the rest")
        _at_least(where, {"controls": g.controls, "candidates": g.candidates}, 0)
        if g.kind == "secret" and 0 < g.candidates < MIN_SECRET_CANDIDATES:
            raise RecipeError(f"{where}.candidates={g.candidates}: exposure needs at least "
                              f"{MIN_SECRET_CANDIDATES} candidates per secret (or 0 for none)")
        if g.max_tokens is not None and g.max_tokens < g.min_tokens:
            raise RecipeError(f"{where}.max_tokens={g.max_tokens} is below min_tokens="
                              f"{g.min_tokens}")
        if g.corpus is not None:
            if g.kind != "document":
                raise RecipeError(f"{where}.corpus: only document canaries come from a corpus "
                                  f"of their own (this group is {g.kind!r})")
            _validate_corpus(g.corpus, f"{where}.corpus")
        if g.window is not None:
            if len(g.window) != 2 or not 0 <= g.window[0] < g.window[1] <= 1:
                raise RecipeError(f"{where}.window={g.window}: expected [start, end) with "
                                  "0 <= start < end <= 1 (fractions of the training split)")
            if r.packing.allow_split:
                raise RecipeError(f"{where}.window: confining occurrences to a window needs "
                                  "packing.allow_split: false")
        if g.kind == "secret":
            if not g.template or not _FILLER.search(g.template):
                raise RecipeError(f"{where}: a secret canary needs a template with a filler such "
                                  f"as {{d6}}, got {g.template!r}")
        # Canary ids are "<group>-<n>" and placement looks groups up by name: two groups with
        # one name would share ids and one group's placement.
        label = g.label(i)
        if label in seen:
            raise RecipeError(f"{where}: group name {label!r} is also the name of "
                              f"canaries[{seen[label]}]; give each canary group its own name")
        seen[label] = i


def _validate(r: Recipe) -> None:
    if not _PLAIN_NAME.fullmatch(r.name):
        raise RecipeError(f"name={r.name!r} must be a plain directory name (letters, digits, "
                          "'_', '.', '-', not starting with '.'): results/data/<name> is where "
                          "the dataset goes")
    _at_least("recipe", {"seed": r.seed}, 0)
    _validate_corpus(r.corpus)
    t = r.tokenizer
    if (t.path is None) == (t.train_bpe_vocab is None):
        raise RecipeError("tokenizer: give exactly one of path or train_bpe_vocab")
    if t.train_bpe_vocab is not None and t.train_bpe_vocab < 260:
        raise RecipeError(f"tokenizer.train_bpe_vocab={t.train_bpe_vocab} is below the 256 byte "
                          "tokens plus specials a byte-level BPE needs")
    _at_least("tokenizer", {"expect_vocab_size": t.expect_vocab_size}, 1)
    p = r.packing
    if p.seq_len < 2:
        raise RecipeError(f"packing.seq_len={p.seq_len} must be at least 2")
    if not 0 <= p.validation_fraction < 1:
        raise RecipeError(f"packing.validation_fraction={p.validation_fraction} must be in [0, 1)")
    if p.rows == "padded" and p.allow_split:
        raise RecipeError("packing.allow_split: a padded row holds one whole canary; it "
                          "cannot be combined with rows: padded")
    _at_least("packing", {"passes": p.passes}, 1)
    if not p.background:
        if not r.canaries:
            raise RecipeError("packing.background: false leaves only the canaries in the "
                              "training split, and the recipe has none")
        if p.rows != "padded":
            raise RecipeError("packing.background: false (a training split of canaries only) "
                              "needs packing.rows: padded, one canary occurrence per row")
        if p.passes != 1:
            raise RecipeError(f"packing.passes={p.passes} repeats the corpus, but "
                              "packing.background is false (no corpus in the training split); "
                              "repeat the target set with the trainer's epochs")
    _validate_canaries(r)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe YAML file."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file {path} does not exist")
    data = read_yaml(path)
    if data is None:
        raise RecipeError(f"recipe file {path} is empty: expected a mapping with name, corpus, "
                          "tokenizer, canaries, ...")
    recipe = _build(Recipe, data, path.name)
    recipe.source = str(path.resolve().parent)
    recipe.validate(path.name)
    return recipe


def recipe_from_dict(data: dict, source: str | Path | None = None) -> Recipe:
    """A recipe from a mapping (notebooks build them in code)."""
    recipe = _build(Recipe, data, "recipe")
    recipe.source = str(source) if source else None
    recipe.validate("recipe")
    return recipe
