"""Assembling one full tensor on one rank, from the model group's shards, in bounded chunks.

Every rank of a model copy (the Z*Y*X group) holds one flat local tensor of the same length:
a Z-chunk of an (x, y) block for :class:`BlockLayout`, or a slice of a vector replicated over
the other axes for :class:`VectorLayout`. The writer allocates the full tensor in host memory
and the group runs ``gather`` rounds: in each, every rank sends the next ``piece`` elements of
its local tensor (a view, nothing copied) and the writer receives all of them into one staging
buffer of at most ``chunk_bytes`` on the device, copies them to host memory and places each
rank's piece where it belongs. No other rank ever holds more than its own shard.

A gather rather than point-to-point sends: NCCL gives every pair of ranks that use send/recv
its own communicator (lazily created, with its own buffers), which across a model group of
hundreds of ranks costs far more than the data; a gather runs on the group's communicator.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.distributed as dist

from axolab.parallel.layout import BlockLayout, VectorLayout

from .meter import AllocationMeter, host_allocations


@dataclass(frozen=True)
class Piece:
    """Where the elements of one rank's local tensor go in the full tensor.

    ``block``: ``(row0, col0, width, flat0)`` for a block layout (local element ``i`` is element
    ``flat0 + i`` of the row-major block whose top-left corner is ``(row0, col0)``); ``offset``
    for a vector (local element ``i`` is ``full[offset + i]``). ``valid``: how many local
    elements are real data; the rest are vocabulary or Z padding and are dropped."""

    valid: int
    block: tuple[int, int, int, int] | None = None
    offset: int = 0


def _axis_at(axis, coords: dict[str, int]):
    return dataclasses.replace(axis, index=coords[axis.name]) if axis.size > 1 else axis


def piece_of(layout, coords: dict[str, int]) -> Piece | None:
    """The piece held by the rank at grid coordinates ``coords`` ({"z", "y", "x"}); None for
    a rank whose copy duplicates another's (a replicated vector off the canonical ranks)."""
    if isinstance(layout, BlockLayout):
        at = dataclasses.replace(layout, row_axis=_axis_at(layout.row_axis, coords),
                                 col_axis=_axis_at(layout.col_axis, coords),
                                 depth=_axis_at(layout.depth, coords))
        start, stop = at.flat_range
        real_rows = max(0, min(at.local_rows, at.rows - at.row_start))
        valid = max(0, min(stop, real_rows * at.local_cols) - start)
        return Piece(valid, block=(at.row_start, at.col_start, at.local_cols, start))
    if isinstance(layout, VectorLayout):
        if any(coords[name] for name in coords if name != layout.axis.name):
            return None
        at = dataclasses.replace(layout, axis=_axis_at(layout.axis, coords))
        start = at.local_slice.start
        return Piece(max(0, min(at.local_size, at.full_size - start)), offset=start)
    raise TypeError(f"no streamed assembly for layout {type(layout).__name__}")


def place(full: torch.Tensor, piece: Piece, local_start: int, data: torch.Tensor) -> None:
    """Copy ``data`` = local elements ``[local_start, local_start + len(data))`` of ``piece``
    into ``full`` (host memory), dropping padding."""
    n = min(data.numel(), piece.valid - local_start)
    if n <= 0:
        return
    data = data[:n]
    if piece.block is None:
        full[piece.offset + local_start:piece.offset + local_start + n].copy_(data)
        return
    row0, col0, width, flat0 = piece.block
    pos = 0
    while pos < n:
        r, c = divmod(flat0 + local_start + pos, width)
        if c == 0 and n - pos >= width:  # whole rows at once
            rows = (n - pos) // width
            full[row0 + r:row0 + r + rows, col0:col0 + width].copy_(
                data[pos:pos + rows * width].view(rows, width))
            pos += rows * width
        else:  # the partial row at either end of the piece
            take = min(width - c, n - pos)
            full[row0 + r, col0 + c:col0 + c + take].copy_(data[pos:pos + take])
            pos += take


def model_coords(grid) -> list[dict[str, int]]:
    """Grid coordinates of each rank of the model group, in group order ((z*Y + y)*X + x)."""
    Y, X = grid.y.size, grid.x.size
    return [{"z": m // (Y * X), "y": (m // X) % Y, "x": m % X} for m in range(grid.model.size)]


class Assembler:
    """Streams full tensors to their writers over one model group (collective: every rank of
    the group calls :meth:`assemble` for the same tensors in the same order)."""

    def __init__(self, grid, chunk_bytes: int, largest_local_bytes: int,
                 meter: AllocationMeter | None = None):
        self.grid, self.chunk_bytes, self.meter = grid, chunk_bytes, meter
        self.coords = model_coords(grid)
        # A round never needs more than every rank's whole shard of the largest tensor: a
        # small model does not get a 64 MiB buffer.
        self.staging_cap = min(chunk_bytes, grid.model.size * largest_local_bytes)
        self._staging: torch.Tensor | None = None
        self.staging_bytes = 0

    def check_chunk(self, element_size: int) -> None:
        """Refuse, before any communication, a chunk too small to carry one element of every
        rank: the staging buffer could not then stay within it."""
        need = self.grid.model.size * element_size
        if self.chunk_bytes < need:
            raise ValueError(f"chunk_bytes={self.chunk_bytes} is smaller than one "
                             f"{element_size}-byte element from each of the "
                             f"{self.grid.model.size} ranks of a model copy ({need} bytes)")

    def _stage(self, ranks: int, n: int, dtype: torch.dtype) -> torch.Tensor:
        """``[ranks, n]`` view of the one reused staging buffer (allocated on first use)."""
        if self._staging is None:
            self._staging = torch.empty(self.staging_cap, dtype=torch.uint8,
                                        device=self.grid.device)
            self.staging_bytes = self.staging_cap
        nbytes = ranks * n * dtype.itemsize
        return self._staging[:nbytes].view(dtype).view(ranks, n)

    @torch.no_grad()
    def assemble(self, layout, local: torch.Tensor, writer: int) -> torch.Tensor | None:
        """The full tensor on the group's rank ``writer`` (host memory), None elsewhere."""
        group, ranks = self.grid.model, self.grid.model.size
        me = group.index
        local = local.detach().reshape(-1)
        full = None
        if me == writer:
            with host_allocations(self.meter):
                shape = layout.layout_shape if isinstance(layout, BlockLayout) \
                    else layout.full_shape
                full = torch.empty(shape, dtype=local.dtype, device="cpu")
            pieces = [piece_of(layout, c) for c in self.coords]
        step = max(1, self.chunk_bytes // (ranks * local.element_size()))
        for start in range(0, local.numel(), step):
            n = min(step, local.numel() - start)
            mine = local[start:start + n]  # a view: sending costs no memory
            if ranks == 1:
                received = mine.unsqueeze(0)
            else:
                received = self._stage(ranks, n, local.dtype) if me == writer else None
                dist.gather(mine, list(received) if received is not None else None,
                            dst=group.ranks[writer], group=group.group)
            if me == writer:
                with host_allocations(self.meter):
                    host = received.cpu()  # synchronous: the buffer is free for the next round
                for rank, piece in enumerate(pieces):
                    if piece is not None:
                        place(full, piece, start, host[rank])
        if full is not None:
            full = layout.to_stored(full)  # section-fused rows, Conv1D's [in, out]: as stored
        return full
