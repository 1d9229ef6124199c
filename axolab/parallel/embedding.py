"""Parallel token embedding: a transposed layer whose input is a one-hot over the vocabulary.

The table ``E[V, H]`` is split in rows (vocab) over Y and columns (hidden) over X, depth-sharded
over Z, exactly like the lm head's weight, so tied embeddings share one parameter. A rank looks up
the ids that fall in its vocab slice, zeros the rest, and the partial rows are summed over Y,
giving the residual stream's layout ``[.., H/X]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import comm
from .base import GradSpec, ParallelModule
from .grid import Grid
from .layout import BlockLayout, padded_size
from .token_checks import TokenChecks


class ParallelEmbedding(ParallelModule):
    def __init__(self, num_embeddings: int, embedding_dim: int, grid: Grid, *,
                 padding_idx: int | None = None, scale: float | None = None, device=None,
                 dtype=None):
        super().__init__()
        # Gemma multiplies the looked-up rows by sqrt(hidden), as a tensor in the weight's dtype.
        self.scale = scale
        if embedding_dim % grid.x.size:
            raise ValueError(f"embedding dim {embedding_dim} does not divide by x={grid.x.size}")
        self.grid = grid
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx
        self.padded_vocab = padded_size(num_embeddings, grid.y.size)
        self.layout = BlockLayout(num_embeddings, embedding_dim, self.padded_vocab,
                                  grid.y, grid.x, grid.z)
        self.weight = self._new_param((self.layout.chunk,), None, device, dtype)
        # Replaced by the model's own (ParallelState.checks) when the model is parallelized.
        self.checks = TokenChecks()

    def extra_repr(self) -> str:
        return (f"vocab={self.num_embeddings} (padded {self.padded_vocab})/y, "
                f"dim={self.embedding_dim}/x, shard={self.layout.chunk}")

    def _check_ids(self, ids: torch.Tensor) -> None:
        # A plain embedding raises on a bad id; here one shard's bad id must fail every rank
        # (one tiny all-reduce over the batch), read without a host sync in a training step.
        bad = (ids < 0) | (ids >= self.num_embeddings)
        self.checks.check(ids, bad, f"input token id(s) outside the vocabulary "
                          f"[0, {self.num_embeddings})", agree=self.grid.batch)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        self._check_ids(ids)
        table = self.layout.local_block(self.weight)
        start, rows = self.layout.row_start, self.layout.local_rows
        local = ids - start
        outside = (local < 0) | (local >= rows)
        local = local.masked_fill(outside, 0)
        pad = None
        if self.padding_idx is not None and 0 <= self.padding_idx - start < rows:
            pad = self.padding_idx - start
        out = F.embedding(local, table, padding_idx=pad)
        out = out.masked_fill(outside.unsqueeze(-1), 0.0)
        out = comm.reduce_from(out, self.grid.y)
        if self.scale is not None:
            out = out * torch.tensor(self.scale, dtype=torch.float32).to(out.dtype)
        return out

    def grad_specs(self) -> list[GradSpec]:
        return [GradSpec(self.weight, "data", 1)]

    def layout_of(self, name: str):
        if name != "weight":
            raise KeyError(name)
        return self.layout
