"""Training batches: the same global batch at the same step on every grid shape.

The order is a seeded permutation per epoch, indexed by the global step, so it depends on the
seed and the step only; each rank then reads just its batch shard's rows from the memory-mapped
dataset.
"""

from __future__ import annotations

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

    def read(self, rows: np.ndarray) -> torch.Tensor:
        if len(rows) == 0:
            return torch.empty(0, self.seq_len, dtype=torch.long)
        return torch.from_numpy(np.asarray(self.ds[rows.tolist()]["input_ids"], dtype=np.int64))


def global_batch_rows(step: int, batch: int, rows: int, seed: int) -> np.ndarray:
    """Row indices of the global batch at ``step``: consecutive slices of per-epoch seeded
    permutations (a batch may span an epoch boundary)."""
    start, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), rows)
        perm = np.random.default_rng([seed, epoch]).permutation(rows)
        out.extend(perm[offset:offset + batch - len(out)].tolist())
    return np.asarray(out, dtype=np.int64)


def shard_rows(rows: np.ndarray, shards: int, index: int) -> np.ndarray:
    per = len(rows) // shards
    return rows[index * per:(index + 1) * per]
