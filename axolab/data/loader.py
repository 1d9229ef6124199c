"""Training batches: the same global batch at the same step on every grid shape.

The order is a seeded permutation per epoch, indexed by the global step, so it depends on the
seed and the step only; each rank then reads just its batch shard's rows from the memory-mapped
dataset. A fixed-order split (stats.json ``row_order: stored``: several corpus passes or
windowed canaries) is read in stored order instead, so its rows meet the model when the build
placed them.

A run of ``epochs`` reads ``ceil(epochs * rows)`` rows, in ``ceil(reads / global_batch)``
steps. The last global batch is filled up past that with rows of the next epoch (in stored
order: the first rows again, where a forgetting study keeps its early canaries); those rows
are read, so that every batch shard keeps its shape, but ``trained_rows`` marks them and the
trainer ignores their targets. Every row is then trained on exactly as often as the epochs
say (whole epochs: each row that many times), in either order.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch


class PackedDataset:
    """A split written by `axolab data build` (column input_ids), memory-mapped."""

    def __init__(self, data_dir: str | Path, split: str = "train"):
        import datasets

        path = Path(data_dir) / split
        if not path.is_dir():
            raise ValueError(f"{path} not found: is {data_dir} a dataset built by "
                             "`axolab data build`?")
        self.ds = datasets.load_from_disk(str(path)).with_format("numpy")
        self.rows = len(self.ds)
        self.seq_len = int(self.ds.features["input_ids"].length)
        self.padded = "length" in self.ds.features
        """Rows of one document each, padded; ``lengths`` gives the real tokens."""
        stats_file = Path(data_dir) / "stats.json"
        stats = json.loads(stats_file.read_text()) if stats_file.is_file() else {}
        self.shuffled = split != "train" or stats.get("row_order", "shuffled") == "shuffled"
        """False for a fixed-order training split, read in stored order."""

    def read(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) == 0:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        return torch.from_numpy(np.asarray(self.ds[rows.tolist()]["input_ids"], dtype=np.int64))

    def lengths(self, rows: np.ndarray) -> torch.Tensor:
        """Real tokens of each row (``seq_len`` for every row of a packed split)."""
        if not self.padded:
            return torch.full((len(rows),), self.seq_len, dtype=torch.long)
        if len(rows) == 0:
            return torch.empty(0, dtype=torch.long)
        return torch.from_numpy(np.asarray(self.ds[rows.tolist()]["length"], dtype=np.int64))

    def labels(self, rows: np.ndarray, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` as language-model targets, with the padding of padded rows ignored (-100)."""
        if not self.padded:
            return ids.clone()
        position = torch.arange(ids.shape[1], device=ids.device)
        real = self.lengths(rows).to(ids.device)
        return ids.masked_fill(position[None, :] >= real[:, None], -100)


def epoch_order(epoch: int, rows: int, seed: int, shuffled: bool = True) -> np.ndarray:
    """The order training reads the rows in during ``epoch``: a permutation seeded by (seed,
    epoch), or the stored order when not ``shuffled``."""
    return np.random.default_rng([seed, epoch]).permutation(rows) if shuffled else \
        np.arange(rows)


def global_batch_rows(step: int, batch: int, rows: int, seed: int,
                      shuffled: bool = True) -> np.ndarray:
    """Row indices of the global batch at ``step``: consecutive slices of per-epoch seeded
    permutations (a batch may span an epoch boundary), or of the stored order when not
    ``shuffled``."""
    start, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), rows)
        perm = epoch_order(epoch, rows, seed, shuffled)
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def row_visits(position: int, rows: int, seed: int, shuffled: bool = True) -> np.ndarray:
    """How many times each of ``rows`` training rows was trained on by the first ``position``
    rows of the order :func:`global_batch_rows` reads (a checkpoint's ``data_position``, or
    :func:`rows_trained`): every whole epoch once, and the first ``position % rows`` rows of
    the epoch under way once more."""
    if position < 0 or rows < 1:
        raise ValueError(f"row visits of {position} rows read over {rows} rows")
    whole, part = divmod(position, rows)
    visits = np.full(rows, whole, dtype=np.int64)
    if part:
        visits[epoch_order(whole, rows, seed, shuffled)[:part]] += 1
    return visits


def shard_rows(rows: np.ndarray, shards: int, index: int) -> np.ndarray:
    per = len(rows) // shards
    return rows[index * per:(index + 1) * per]


def epoch_reads(epochs: float | None, rows: int) -> int | None:
    """Rows a run of ``epochs`` reads; None for a run of a number of steps."""
    return None if epochs is None else math.ceil(epochs * rows)


def rows_trained(steps: int, batch: int, reads: int | None) -> int:
    """Training rows taken as targets by the first ``steps`` steps of a run of ``reads`` row
    reads: the rows read, less those past its end that only filled its last batch."""
    return steps * batch if reads is None else min(steps * batch, reads)


def trained_rows(step: int, batch: int, reads: int | None) -> np.ndarray:
    """Which rows of the global batch at ``step`` a run of ``reads`` row reads trains on: all
    but those past its end, which only fill up its last batch.

    Their targets are ignored rather than epochs refused when they give no whole batches (a
    split's row count comes from its corpus: forgetting.yaml's 3865 rows make whole batches
    only of 5 or 773) or the last partial batch dropped (in stored order its rows hold the
    late canaries), and rather than the last batch read shorter (it would not split evenly
    over the batch shards). The loss is normalized by the kept tokens of the whole global
    batch, so the last step is exactly one step on its real rows, the same on every grid."""
    if reads is None:
        return np.ones(batch, dtype=bool)
    return np.arange(step * batch, (step + 1) * batch) < reads
