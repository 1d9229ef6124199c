"""Disk-backed token streams and sequence writers, so builds run in bounded memory.

Pass 1 appends each document's token ids (uint32) to a flat file and remembers where documents
start; pass 2 reads them back in chunks, skipping held-out documents, and writes fixed-length
sequences as Arrow record batches that become a Hugging Face dataset.
"""

from __future__ import annotations

from array import array
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK = 1 << 20  # tokens read per disk access


class TokenFile:
    """Append-only uint32 token file with document boundaries."""

    def __init__(self, path: Path):
        self.path = path
        self._f = open(path, "wb")
        # Compact arrays, not lists: a large corpus has millions of documents.
        self.starts = array("q")   # token offset of each document
        self.doc_ids = array("q")  # the document's index in the corpus stream
        self.size = 0

    def append(self, doc_id: int, ids: np.ndarray) -> None:
        self.starts.append(self.size)
        self.doc_ids.append(doc_id)
        self._f.write(ids.astype(np.uint32, copy=False).tobytes())
        self.size += len(ids)

    def close(self) -> None:
        self._f.close()

    def doc_range(self, i: int) -> tuple[int, int]:
        stop = self.starts[i + 1] if i + 1 < len(self.starts) else self.size
        return self.starts[i], stop

    def read(self, start: int, stop: int) -> np.ndarray:
        return np.fromfile(self.path, dtype=np.uint32, count=stop - start, offset=4 * start)


class TokenReader:
    """Reads a TokenFile's documents (front to back, or in ``order``, which may list a document
    more than once), skipping some, ``take(n)`` tokens at a time."""

    def __init__(self, store: TokenFile, skip_docs: set[int] = frozenset(),
                 order: list[int] | None = None):
        ranges: list[list[int]] = []
        for i in range(len(store.starts)) if order is None else order:
            if i in skip_docs:
                continue
            a, b = store.doc_range(i)
            if ranges and ranges[-1][1] == a:
                ranges[-1][1] = b
            else:
                ranges.append([a, b])
        self.store, self.ranges = store, ranges
        self.total = sum(b - a for a, b in ranges)
        self._r, self._pos = 0, ranges[0][0] if ranges else 0
        self._buf = np.empty(0, dtype=np.uint32)

    def take(self, n: int) -> np.ndarray:
        parts, need = [], n
        while need:
            if not len(self._buf):
                self._refill()
            k = min(need, len(self._buf))
            parts.append(self._buf[:k])
            self._buf = self._buf[k:]
            need -= k
        return np.concatenate(parts) if len(parts) != 1 else parts[0]

    def _refill(self) -> None:
        while self._r < len(self.ranges) and self._pos >= self.ranges[self._r][1]:
            self._r += 1
            if self._r < len(self.ranges):
                self._pos = self.ranges[self._r][0]
        if self._r >= len(self.ranges):
            raise EOFError("token stream exhausted")
        stop = min(self.ranges[self._r][1], self._pos + CHUNK)
        self._buf = self.store.read(self._pos, stop)
        self._pos = stop


class _ArrowRows:
    """An Arrow stream of rows with ``features``, written batch by batch; ``close`` returns it
    as a memory-mapped table for ``datasets.Dataset``."""

    def __init__(self, path: Path, features):
        self.path, self.features = path, features
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_stream(self._sink, features.arrow_schema)
        self.rows = 0

    def _flush(self) -> None:
        raise NotImplementedError

    def close(self):
        """Flush and return (table, DatasetInfo)."""
        import datasets
        from datasets.table import MemoryMappedTable

        self._flush()
        if self.rows == 0:  # an empty split (validation_fraction: 0) still loads as a dataset
            empty = pa.RecordBatch.from_pylist([], schema=self.features.arrow_schema)
            self._writer.write_batch(empty)
        self._writer.close()
        self._sink.close()
        return MemoryMappedTable.from_file(str(self.path)), datasets.DatasetInfo(
            features=self.features)


class SequenceWriter(_ArrowRows):
    """Collects a stream of token segments into rows of ``seq_len`` and writes Arrow batches;
    a partial last row is dropped at ``close``."""

    def __init__(self, path: Path, seq_len: int, rows_per_batch: int = 1024):
        import datasets

        super().__init__(path, datasets.Features(
            {"input_ids": datasets.List(datasets.Value("int32"), length=seq_len)}))
        self.seq_len = seq_len
        self._buf = np.empty(rows_per_batch * seq_len, dtype=np.int32)
        self._fill = 0

    def write(self, tokens: np.ndarray) -> None:
        while len(tokens):
            k = min(len(tokens), len(self._buf) - self._fill)
            self._buf[self._fill:self._fill + k] = tokens[:k]
            self._fill += k
            tokens = tokens[k:]
            if self._fill == len(self._buf):
                self._flush()

    def _flush(self) -> None:
        n = self._fill // self.seq_len
        if n:
            values = pa.array(self._buf[:n * self.seq_len], type=pa.int32())
            column = pa.FixedSizeListArray.from_arrays(values, self.seq_len)
            self._writer.write_batch(pa.record_batch([column], schema=self.features.arrow_schema))
            self.rows += n
        rest = self._fill - n * self.seq_len
        self._buf[:rest] = self._buf[n * self.seq_len:self._fill]
        self._fill = rest



class PaddedRowWriter(_ArrowRows):
    """Rows of one document each: ``write_row(tokens)`` pads to ``seq_len`` with ``pad`` and
    records the real length in the column ``length``, which the loss reads to skip padding."""

    def __init__(self, path: Path, seq_len: int, pad: int, rows_per_batch: int = 1024):
        import datasets

        super().__init__(path, datasets.Features(
            {"input_ids": datasets.List(datasets.Value("int32"), length=seq_len),
             "length": datasets.Value("int32")}))
        self.seq_len, self.pad = seq_len, pad
        self._ids = np.full((rows_per_batch, seq_len), pad, dtype=np.int32)
        self._lengths = np.zeros(rows_per_batch, dtype=np.int32)
        self._fill = 0

    def write_row(self, tokens: np.ndarray) -> None:
        if not 0 < len(tokens) <= self.seq_len:
            raise ValueError(f"a padded row holds 1..{self.seq_len} tokens, got {len(tokens)}")
        self._ids[self._fill, :len(tokens)] = tokens
        self._ids[self._fill, len(tokens):] = self.pad
        self._lengths[self._fill] = len(tokens)
        self._fill += 1
        if self._fill == len(self._lengths):
            self._flush()

    def _flush(self) -> None:
        if not self._fill:
            return
        n = self._fill
        values = pa.array(self._ids[:n].reshape(-1), type=pa.int32())
        column = pa.FixedSizeListArray.from_arrays(values, self.seq_len)
        lengths = pa.array(self._lengths[:n], type=pa.int32())
        self._writer.write_batch(pa.record_batch([column, lengths],
                                                 schema=self.features.arrow_schema))
        self.rows += n
        self._fill = 0

