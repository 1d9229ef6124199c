"""Where this rank's piece of a 2D weight lives, and how to cut it from / glue it back into the full one.

Every tensor-parallel matrix (linear weights, the embedding table, the lm head) is stored the same
way: rank (x, y) owns one block ``W[row-slice, col-slice]`` of the (row-padded) full matrix; the
block is flattened and cut into Z equal chunks (zero-padded at the end) and rank z keeps chunk z
as a 1D parameter. Forward all-gathers the chunks over Z; backward reduce-scatters the gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import comm
from .grid import Axis


def padded_size(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def section_permutation(sections: tuple[int, ...], parts: int) -> torch.Tensor:
    """Stored index of each index in split order: part p holds its p-th slice of every
    section, stacked (how a section-fused matrix or vector is split over an axis)."""
    out, offset = [[] for _ in range(parts)], 0
    for n in sections:
        block = n // parts
        for p in range(parts):
            out[p].append(torch.arange(offset + p * block, offset + (p + 1) * block))
        offset += n
    return torch.cat([t for part in out for t in part])


def unpermute(full: torch.Tensor, perm: torch.Tensor | None) -> torch.Tensor:
    """Rows in split order (``full[i]`` is stored row ``perm[i]``) back to the stored order."""
    if perm is None:
        return full
    out = torch.empty_like(full)
    out[perm] = full
    return out


def chunk_pairs(flat: torch.Tensor, rows: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Matching views of a flat block and of its chunks laid out as ``rows`` ([Z, chunk],
    rank z's chunk in row z, as a Z bucket holds them): the full chunks, then the last
    partial one. Copy one way to cut a gathered block out of a bucket, the other way to put
    a gradient into one; what ``rows`` has beyond the block is the layout's padding."""
    chunk = rows.shape[1]
    full, rest = divmod(flat.numel(), chunk)
    pairs = [(flat[:full * chunk].view(full, chunk), rows[:full])]
    if rest:
        pairs.append((flat[full * chunk:], rows[full, :rest]))
    return pairs


def _runs(indices: list[int]) -> list[tuple[int, int]]:
    """Consecutive ranges covering ``indices`` in order."""
    runs: list[tuple[int, int]] = []
    for r in indices:
        if runs and runs[-1][1] == r:
            runs[-1] = (runs[-1][0], r + 1)
        else:
            runs.append((r, r + 1))
    return runs


@dataclass(frozen=True)
class BlockLayout:
    """A ``rows x cols`` matrix split in rows over ``row_axis``, in columns over ``col_axis``,
    and depth-sharded over ``depth``. ``padded_rows >= rows`` pads the row count so it divides
    (vocabularies); the padding rows are zero and must be masked by whoever reads them."""

    rows: int
    cols: int
    padded_rows: int
    row_axis: Axis
    col_axis: Axis
    depth: Axis
    sections: tuple[int, ...] = ()
    """Row counts of a section-fused matrix (Phi-3's ``qkv_proj`` = [q; k; v]): each section is
    split over ``row_axis`` on its own, so rank y's block stacks its slice of every section.
    The layout then works on the rows permuted into that order (each block contiguous); the
    serial, stored order is restored at the boundary (full tensors and checkpoint reads)."""
    stored_transposed: bool = False
    """The serial tensor is stored ``[cols, rows]`` (GPT-2's Conv1D keeps ``[in, out]``)."""

    def __post_init__(self):
        if self.sections:
            if sum(self.sections) != self.rows or self.padded_rows != self.rows:
                raise ValueError(f"sections {self.sections} must add up to the {self.rows} "
                                 "rows, without row padding")
            if any(n % self.row_axis.size for n in self.sections):
                raise ValueError(f"every section of {self.sections} must divide by "
                                 f"{self.row_axis.name}={self.row_axis.size}")

    @property
    def full_shape(self) -> tuple[int, int]:
        """The serial tensor's shape, as stored."""
        return (self.cols, self.rows) if self.stored_transposed else (self.rows, self.cols)

    @property
    def layout_shape(self) -> tuple[int, int]:
        """``rows x cols``: the matrix this layout splits (in its own row order)."""
        return (self.rows, self.cols)

    def row_permutation(self) -> torch.Tensor | None:
        """Stored row of each row in the layout's order (None: the same order)."""
        return section_permutation(self.sections, self.row_axis.size) if self.sections else None

    def to_stored(self, full: torch.Tensor) -> torch.Tensor:
        """A ``rows x cols`` matrix in the layout's row order, as the serial tensor is stored."""
        full = unpermute(full, self.row_permutation())
        return full.t().contiguous() if self.stored_transposed else full

    def _from_stored(self, full: torch.Tensor) -> torch.Tensor:
        full = full.t() if self.stored_transposed else full
        perm = self.row_permutation()
        return full if perm is None else full[perm]

    def _read(self, read, g0: int, g1: int, c0: int, c1: int) -> torch.Tensor:
        """Layout rows [g0, g1) x cols [c0, c1), read through ``read`` (stored coordinates)."""
        perm = self.row_permutation()
        runs = [(g0, g1)] if perm is None else _runs(perm[g0:g1].tolist())
        if self.stored_transposed:
            parts = [read(c0, c1, s0, s1).t() for s0, s1 in runs]
        else:
            parts = [read(s0, s1, c0, c1) for s0, s1 in runs]
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    @property
    def local_rows(self) -> int:
        return self.padded_rows // self.row_axis.size

    @property
    def local_cols(self) -> int:
        return self.cols // self.col_axis.size

    @property
    def block_numel(self) -> int:
        return self.local_rows * self.local_cols

    @property
    def chunk(self) -> int:
        return -(-self.block_numel // self.depth.size)

    @property
    def row_start(self) -> int:
        return self.row_axis.index * self.local_rows

    @property
    def col_start(self) -> int:
        return self.col_axis.index * self.local_cols

    @property
    def row_slice(self) -> slice:
        return slice(self.row_start, self.row_start + self.local_rows)

    @property
    def col_slice(self) -> slice:
        return slice(self.col_start, self.col_start + self.local_cols)

    @property
    def flat_range(self) -> tuple[int, int]:
        """This rank's chunk as [start, stop) of the flattened block (may run past its end)."""
        start = self.depth.index * self.chunk
        return start, start + self.chunk

    def shard_from_full(self, full: torch.Tensor) -> torch.Tensor:
        """Cut this rank's 1D chunk out of the full ``rows x cols`` matrix."""
        if tuple(full.shape) != self.full_shape:
            raise ValueError(f"expected a {'x'.join(map(str, self.full_shape))} matrix, got "
                             f"{tuple(full.shape)}")
        full = self._from_stored(full)
        rows = slice(self.row_start, min(self.row_start + self.local_rows, self.rows))
        block = full[rows, self.col_slice]
        return self.shard_from_block(block)

    def shard_from_block(self, block: torch.Tensor) -> torch.Tensor:
        """Chunk of a block given without its padding rows (fewer than local_rows allowed)."""
        missing = self.local_rows - block.shape[0]
        if missing:
            block = F.pad(block, (0, 0, 0, missing))
        start, stop = self.flat_range
        flat = F.pad(block.reshape(-1), (0, self.chunk * self.depth.size - self.block_numel))
        return flat[start:stop].clone()

    def shard_from_reader(self, read, dtype: torch.dtype) -> torch.Tensor:
        """This rank's chunk, reading only the rows it spans (see :meth:`fill_from_reader`)."""
        out = torch.empty(self.chunk, dtype=dtype)
        self.fill_from_reader(out, read)
        return out

    @torch.no_grad()
    def fill_from_reader(self, out: torch.Tensor, read, block_rows: int = 2048) -> None:
        """Fill this rank's 1D chunk ``out`` in place from ``read(r0, r1, c0, c1)``, which returns
        ``full[r0:r1, c0:c1]`` of the stored tensor (a safetensors slice). Rows are read in
        bounded blocks straight into ``out``, so loading needs about the chunk's memory, not the
        block's or the full tensor's. Vocabulary padding rows and the chunk's tail padding are
        zeroed."""
        start, stop = self.flat_range
        stop = min(stop, self.block_numel)
        if stop <= start:
            out.zero_()
            return
        out[stop - start:].zero_()
        lc, c0 = self.local_cols, self.col_start
        r0, r1 = start // lc, -(-stop // lc)
        for b0 in range(r0, r1, block_rows):
            b1 = min(b0 + block_rows, r1)
            f0, f1 = max(b0 * lc, start), min(b1 * lc, stop)  # flat range of this read
            g0, g1 = self.row_start + b0, min(self.row_start + b1, self.rows)
            have = b0 * lc + max(0, g1 - g0) * lc  # flat end of the rows that exist
            if g1 > g0 and have > f0:
                part = self._read(read, g0, g1, c0, c0 + lc).reshape(-1)
                a1 = min(f1, have)
                out[f0 - start:a1 - start].copy_(part[f0 - b0 * lc:a1 - b0 * lc])
                f0 = a1
            if f1 > f0:
                out[f0 - start:f1 - start].zero_()

    def local_block(self, shard: torch.Tensor) -> torch.Tensor:
        """Differentiable: all-gather the Z chunks and view them as this rank's block."""
        flat = comm.depth_gather(shard, self.depth)
        return flat[:self.block_numel].view(self.local_rows, self.local_cols)

    def gather_block(self, shard: torch.Tensor) -> torch.Tensor:
        """This rank's block, outside autograd (a view of the shard when Z == 1)."""
        flat = comm.all_gather_flat(shard, self.depth) if self.depth.size > 1 else shard
        return flat[:self.block_numel].view(self.local_rows, self.local_cols)

    def scatter_block_grad(self, grad_block: torch.Tensor) -> torch.Tensor:
        """Gradient of the block -> gradient of this rank's chunk, summed over Z."""
        pad = self.chunk * self.depth.size - self.block_numel
        flat = F.pad(grad_block.reshape(-1), (0, pad)) if pad else grad_block.reshape(-1)
        return comm.reduce_scatter_flat(flat, self.depth) \
            if self.depth.size > 1 else flat

    @torch.no_grad()
    def gather_full(self, shard: torch.Tensor) -> torch.Tensor:
        """The whole ``rows x cols`` matrix, assembled on every rank (export, tests)."""
        block = self.local_block(shard.detach())
        block = comm.gather_along(block, self.col_axis, dim=1)
        block = comm.gather_along(block, self.row_axis, dim=0)
        return self.to_stored(block[:self.rows].clone())


@dataclass(frozen=True)
class VectorLayout:
    """A vector (bias, norm weight) split over ``axis`` and replicated over the other axes.
    ``true_size`` < ``size`` when the vector is padded to divide (an lm head's bias)."""

    size: int
    axis: Axis
    true_size: int | None = None
    sections: tuple[int, ...] = ()
    """The bias of a section-fused layer: each section split over ``axis`` on its own."""

    def row_permutation(self) -> torch.Tensor | None:
        return section_permutation(self.sections, self.axis.size) if self.sections else None

    def to_stored(self, full: torch.Tensor) -> torch.Tensor:
        """The whole vector in the layout's order, as the serial tensor is stored."""
        return unpermute(full, self.row_permutation())

    @property
    def local_size(self) -> int:
        return self.size // self.axis.size

    @property
    def local_slice(self) -> slice:
        start = self.axis.index * self.local_size
        return slice(start, start + self.local_size)

    @property
    def full_size(self) -> int:
        return self.true_size or self.size

    @property
    def full_shape(self) -> tuple[int]:
        return (self.full_size,)

    def shard_from_full(self, full: torch.Tensor) -> torch.Tensor:
        if tuple(full.shape) != (self.full_size,):
            raise ValueError(f"expected a vector of {self.full_size}, got {tuple(full.shape)}")
        perm = self.row_permutation()
        if perm is not None:
            return full[perm][self.local_slice].clone()
        return F.pad(full, (0, self.size - self.full_size))[self.local_slice].clone()

    def shard_from_reader(self, read) -> torch.Tensor:
        """This rank's piece, reading only it: ``read(start, stop)`` returns full[start:stop]."""
        s = self.local_slice
        perm = self.row_permutation()
        if perm is not None:
            return torch.cat([read(a, b) for a, b in _runs(perm[s].tolist())])
        part = read(min(s.start, self.full_size), min(s.stop, self.full_size))
        return F.pad(part, (0, (s.stop - s.start) - part.shape[0]))

    @torch.no_grad()
    def gather_full(self, local: torch.Tensor) -> torch.Tensor:
        full = comm.gather_along(local.detach(), self.axis, dim=0)[:self.full_size].clone()
        return self.to_stored(full)
