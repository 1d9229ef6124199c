"""Documents from a corpus, streamed: nothing here ever holds the whole corpus in memory.

Text and JSON files must be UTF-8: a file that is not is refused with its path and the byte
offset of the first invalid byte (found by a second, binary pass only once reading has failed,
so valid corpora are read once).
"""

from __future__ import annotations

import codecs
import gzip
import re
import zlib
from collections.abc import Iterator
from pathlib import Path

from .recipe import CorpusSpec, RecipeError

EMBEDDED = {"austen": Path(__file__).resolve().parents[2] / "data_recipes" / "corpora"
            / "austen.txt.gz"}


def _open_text(path: Path):
    return gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else \
        open(path, encoding="utf-8")


def _first_invalid_utf8(path: Path) -> tuple[int, int] | None:
    """(byte offset, byte) of the first byte of ``path`` (decompressed, for .gz) that is not
    valid UTF-8, or None if the whole file decodes."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    start = 0  # offset of the first byte not yet given to the decoder
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            held = len(decoder.getstate()[0])  # an incomplete character kept from the last chunk
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                return start - held + e.start, e.object[e.start]
            start += len(chunk)
        held = len(decoder.getstate()[0])
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as e:  # the file ends inside a character
            return start - held + e.start, e.object[e.start]
    return None


def _read_errors_named(path: Path, docs: Iterator[str]) -> Iterator[str]:
    """``docs``, with a failure to read ``path`` turned into an error that names the file."""
    try:
        yield from docs
    except RecipeError:
        raise
    except (OSError, EOFError, zlib.error) as e:
        if path.suffix != ".gz":
            raise
        raise RecipeError(f"corpus file {path} is not a readable gzip file: {e}") from None
    except Exception:
        # Decoding errors surface differently (UnicodeDecodeError from a text file, a parser
        # error from datasets' JSON reader): find out whether the bytes are the cause.
        bad = _first_invalid_utf8(path)
        if bad is None:
            raise
        offset, byte = bad
        where = " of the decompressed text" if path.suffix == ".gz" else ""
        raise RecipeError(f"corpus file {path} is not UTF-8 text: byte {byte:#04x} at byte "
                          f"offset {offset}{where} is not valid UTF-8") from None


def _text_documents(path: Path, boundary: str) -> Iterator[str]:
    """Documents of a text file; the newlines that end a document belong to the boundary (the
    separator token replaces them), so they are stripped."""
    for doc in _raw_text_documents(path, boundary):
        doc = doc.rstrip("\n")
        if doc:
            yield doc


def _raw_text_documents(path: Path, boundary: str) -> Iterator[str]:
    if boundary == "file":
        with _open_text(path) as f:
            yield f.read()
        return
    starts = re.compile(boundary[len("regex:"):]) if boundary.startswith("regex:") else None
    lines: list[str] = []
    with _open_text(path) as f:
        for line in f:
            if starts is None:
                if line.strip():
                    lines.append(line)
                    continue
                if lines:
                    yield "".join(lines)
                lines = []
            else:
                if starts.search(line) and lines:
                    yield "".join(lines)
                    lines = []
                lines.append(line)
    if lines:
        yield "".join(lines)


def _rows(dataset, field: str, where: str) -> Iterator[str]:
    for row in dataset:
        if field not in row:
            raise RecipeError(f"{where}: no column {field!r} (columns: {', '.join(row)}); set "
                              "corpus.text_field")
        yield row[field]


def _file_documents(path: Path, spec: CorpusSpec) -> Iterator[str]:
    name = path.name.lower()
    if name.endswith((".txt", ".txt.gz", ".text", ".md")):
        yield from _read_errors_named(path, _text_documents(path, spec.document_boundary))
        return
    import datasets

    kind = "json" if name.endswith((".jsonl", ".json", ".jsonl.gz")) else \
        "parquet" if name.endswith(".parquet") else None
    if kind is None:
        raise RecipeError(f"corpus file {path}: unknown format (use .txt, .txt.gz, .jsonl, .json "
                          "or .parquet)")
    ds = datasets.load_dataset(kind, data_files=str(path), split="train", streaming=True)
    rows = _rows(ds, spec.text_field, str(path))
    yield from (_read_errors_named(path, rows) if kind == "json" else rows)


def resolve_files(spec: CorpusSpec, source: str | None) -> list[Path]:
    base = Path(source) if source else Path.cwd()
    paths = []
    for f in spec.files or []:
        p = Path(f).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise RecipeError(f"corpus file {p} does not exist")
        paths.append(p)
    return paths


def check_corpus(spec: CorpusSpec, source: str | None) -> None:
    """Fail fast on corpus locations that cannot exist (before any output is written)."""
    if spec.files:
        resolve_files(spec, source)
    elif spec.saved:
        p = Path(spec.saved).expanduser()
        p = p if p.is_absolute() or not source else Path(source) / p
        if not p.is_dir():
            raise RecipeError(f"corpus.saved: dataset directory {p} does not exist")
    elif spec.embedded and not EMBEDDED[spec.embedded].is_file():
        raise RecipeError(f"embedded corpus file {EMBEDDED[spec.embedded]} is missing")


def documents(spec: CorpusSpec, source: str | None = None) -> Iterator[str]:
    """Every document of the corpus, in a fixed order, filtered by length and capped."""
    def raw() -> Iterator[str]:
        if spec.embedded:
            yield from _text_documents(EMBEDDED[spec.embedded], spec.document_boundary)
        elif spec.files:
            for path in resolve_files(spec, source):
                yield from _file_documents(path, spec)
        elif spec.saved:
            import datasets

            p = Path(spec.saved).expanduser()
            p = p if p.is_absolute() or not source else Path(source) / p
            ds = datasets.load_from_disk(str(p))
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[spec.split]
            yield from _rows(ds, spec.text_field, str(p))
        else:
            import datasets

            ds = datasets.load_dataset(spec.hub, spec.hub_config, split=spec.split, streaming=True)
            yield from _rows(ds, spec.text_field, spec.hub)

    n = 0
    for doc in raw():
        if len(doc) < spec.min_document_chars:
            continue
        yield doc
        n += 1
        if spec.max_documents is not None and n >= spec.max_documents:
            return
