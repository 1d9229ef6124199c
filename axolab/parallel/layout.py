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
        if tuple(full.shape) != (self.rows, self.cols):
            raise ValueError(f"expected a {self.rows}x{self.cols} matrix, got {tuple(full.shape)}")
        block = full[self.row_start:min(self.row_start + self.local_rows, self.rows), self.col_slice]
        return self.shard_from_block(block)

    def shard_from_block(self, block: torch.Tensor) -> torch.Tensor:
        """Chunk of a block given without its padding rows (fewer than local_rows allowed)."""
        missing = self.local_rows - block.shape[0]
        if missing:
            block = F.pad(block, (0, 0, 0, missing))
        start, stop = self.flat_range
        flat = F.pad(block.reshape(-1), (0, self.chunk * self.depth.size - self.block_numel))
        return flat[start:stop].clone()

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
        flat = F.pad(grad_block.reshape(-1), (0, self.chunk * self.depth.size - self.block_numel))
        return comm.reduce_scatter_flat(flat, self.depth) if self.depth.size > 1 else flat

    @torch.no_grad()
    def gather_full(self, shard: torch.Tensor) -> torch.Tensor:
        """The whole ``rows x cols`` matrix, assembled on every rank (export, tests)."""
        block = self.local_block(shard.detach())
        block = comm.gather_along(block, self.col_axis, dim=1)
        block = comm.gather_along(block, self.row_axis, dim=0)
        return block[:self.rows].clone()


@dataclass(frozen=True)
class VectorLayout:
    """A vector (bias, norm weight) split over ``axis`` and replicated over the other axes."""

    size: int
    axis: Axis

    @property
    def local_size(self) -> int:
        return self.size // self.axis.size

    @property
    def local_slice(self) -> slice:
        start = self.axis.index * self.local_size
        return slice(start, start + self.local_size)

    def shard_from_full(self, full: torch.Tensor) -> torch.Tensor:
        if tuple(full.shape) != (self.size,):
            raise ValueError(f"expected a vector of {self.size}, got {tuple(full.shape)}")
        return full[self.local_slice].clone()

    @torch.no_grad()
    def gather_full(self, local: torch.Tensor) -> torch.Tensor:
        return comm.gather_along(local.detach(), self.axis, dim=0).clone()
