"""Weight blocks gathered over Z, in buckets, the next bucket's gather started while this one
computes.

The order of the model's linear layers is learned from the first forward pass; backward walks
it in reverse. Once the order is known, consecutive layers of one decoder layer (the
``gather_unit`` parallelize gives them) are grouped into buckets of up to ``bucket_bytes`` of
gathered blocks (``Optimizations.gather_bucket_mb``) and each bucket is gathered by one
collective: a decoder layer's seven blocks cost one round trip instead of seven, and no more
than one layer is held gathered beyond the one prefetched, as with FSDP's per-layer units.
The lm head (last in forward, first in backward) keeps its forward block for backward, and so
does the last decoder layer's last bucket unless backward prefetches late (its blocks are then
held through the loss); a layer recomputed by activation checkpointing keeps its recompute's
blocks for its backward, which follows at once: every other layer is gathered twice a step,
with or without checkpointing.
A gathered block is used only if its shard has not changed since the gather started
(``Tensor._version``), so an optimizer step in between can never feed stale weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comm
from .layout import chunk_pairs


@dataclass
class _Gather:
    """One Z all-gather of a bucket's shards: ``flat`` holds rank z's concatenated shards at
    ``[z * total, (z + 1) * total)``; members are cut out when they are used."""

    members: tuple
    offsets: tuple
    total: int
    versions: tuple
    dtype: torch.dtype
    flat: torch.Tensor
    work: object = None

    def block(self, module, out: torch.Tensor | None = None) -> torch.Tensor | None:
        """``module``'s gathered [local_rows, local_cols] block (written into ``out`` when
        given), or None if its shard changed since the gather."""
        i = next(j for j, m in enumerate(self.members) if m is module)
        if self.work is not None:
            self.work.wait()
            self.work = None
        if self.versions[i] != module.weight._version:
            return None
        layout = module.layout
        if len(self.members) == 1:  # the gathered chunks are the block, padded at the end
            block = self.flat[:layout.block_numel].view(layout.local_rows, layout.local_cols)
            return block if out is None else out.copy_(block)
        # Rank z's chunk of this member sits in row z of the [Z, total] buffer: cut it out,
        # row by row, into the block's own storage.
        if out is None:
            out = self.flat.new_empty(layout.local_rows, layout.local_cols)
        start, chunk = self.offsets[i], module.weight.numel()
        rows = self.flat.view(-1, self.total)[:, start:start + chunk]
        for dst, src in chunk_pairs(out.view(-1), rows):
            dst.copy_(src)
        return out


class WeightPrefetcher:
    def __init__(self, enabled: bool, bucket_bytes: float = 0.0, late_in_backward: bool = False):
        self.enabled, self.bucket_bytes = enabled, bucket_bytes
        self.late_in_backward = late_in_backward
        self.in_backward = False  # a backward pass is running (forward calls are recompute)
        self.order: list = []  # the linear layers in first-forward order
        self.index: dict[int, int] = {}
        self.sealed = False  # the order is complete and grouped into buckets
        self.buckets: list[tuple] = []  # the layers that gather, in order, grouped
        self.bucket_of: dict[int, int] = {}
        self.pending: dict[int, _Gather] = {}  # layer -> the gather holding its unused block

    def starts_pass(self, module) -> bool:
        """Whether ``module`` opens a forward pass (or is seen for the first time)."""
        return id(module) not in self.index or self.order[0] is module

    def record(self, module) -> None:
        """Learn ``module``'s place in the forward order (first pass only); seeing the first
        layer again completes the order."""
        if id(module) not in self.index:
            self.index[id(module)] = len(self.order)
            self.order.append(module)
        elif module is self.order[0]:
            self._seal()

    def _seal(self) -> None:
        """Group the layers that gather into buckets (once the order is complete)."""
        if self.sealed:
            return
        self.sealed = True
        current, size = [], 0
        for module in self.order:
            if module.layout.depth.size == 1:
                continue
            nbytes = module.weight.numel() * module.layout.depth.size * \
                module.weight.element_size()
            unit = getattr(module, "gather_unit", None)
            # One dtype per bucket: its gradients share one reduce-scatter buffer.
            if current and (size + nbytes > self.bucket_bytes or unit is None
                            or unit != getattr(current[-1], "gather_unit", None)
                            or module.weight.dtype != current[-1].weight.dtype):
                self.buckets.append(tuple(current))
                current, size = [], 0
            current.append(module)
            size += nbytes
        if current:
            self.buckets.append(tuple(current))
        self.bucket_of = {id(m): b for b, members in enumerate(self.buckets) for m in members}

    def block(self, module, shard: torch.Tensor, backward: bool, dtype: torch.dtype,
              out: torch.Tensor | None = None, backward_needs: bool = False) -> torch.Tensor:
        """``module``'s [local_rows, local_cols] weight block in ``dtype``, written into
        ``out`` when given (a stacked group's rows). Under bf16 autocast the shard is cast
        before the gather, which halves its bytes. ``backward_needs``: a forward call whose
        backward will ask for the block again."""
        layout = module.layout
        self.record(module)
        if backward:
            self._seal()
        if layout.depth.size == 1:
            block = shard[:layout.block_numel].view(layout.local_rows, layout.local_cols)
            return block.to(dtype) if out is None else out.copy_(block)
        gather = self.pending.pop(id(module), None)
        block = gather.block(module, out) if gather is not None and gather.dtype == dtype \
            else None
        if block is None:
            gather = self._start(self.bucket_members(module), dtype, async_op=False)
            block = gather.block(module, out)
            for other in gather.members:
                if other is not module:
                    self.pending[id(other)] = gather
        if self.in_backward and not backward:
            # Activation-checkpoint recompute: this layer's backward comes next and needs the
            # same blocks; keep them instead of gathering them a third time, and prefetch
            # forward only within the layer (the layers after it are done).
            self.pending[id(module)] = gather
            if self.enabled:
                self._prefetch_after(module, False, dtype, within_unit=True)
            return block
        if self.enabled:
            if backward_needs and self.sealed and self._first_in_backward(module):
                # The last layers of the forward pass are the first of backward: their
                # gathered blocks are kept for it rather than gathered again, the lm head's
                # with nothing to hide behind (FSDP likewise keeps the root's parameters
                # gathered after forward, and torchtitan the last decoder layer's).
                self.pending[id(module)] = gather
            self._prefetch_after(module, backward, dtype)
        return block

    def _first_in_backward(self, module) -> bool:
        """Whether ``module`` is the forward pass's last layer (the lm head) or, unless
        backward prefetches late (to hold less), in the last bucket of gathered blocks before
        it (the last decoder layer: held through the loss then, where the activations peak)."""
        if module is self.order[-1]:
            return True
        b = self.bucket_of.get(id(module))
        if b is None or self.late_in_backward:
            return False
        last = len(self.buckets) - 1
        if any(m is self.order[-1] for m in self.buckets[last]):
            last -= 1
        return b == last

    def bucket_members(self, module) -> tuple:
        """The layers gathered with ``module`` (itself alone before the order is complete)."""
        b = self.bucket_of.get(id(module))
        return (module,) if b is None else self.buckets[b]

    def _prefetch_after(self, module, backward: bool, dtype: torch.dtype,
                        within_unit: bool = False) -> None:
        step = -1 if backward else 1
        b = self.bucket_of.get(id(module))
        if b is not None:
            if backward and self.late_in_backward and module is not self.buckets[b][0]:
                return  # not yet the bucket's last block in backward order
            nxt = b + step
            members = self.buckets[nxt] if 0 <= nxt < len(self.buckets) else ()
        else:  # order not complete yet: the next layer alone
            i = self.index[id(module)] + step
            members = (self.order[i],) if 0 <= i < len(self.order) and \
                self.order[i].layout.depth.size > 1 else ()
        if within_unit:
            unit = getattr(module, "gather_unit", None)
            if unit is None or any(getattr(m, "gather_unit", None) != unit for m in members):
                return
        if members and not any(id(m) in self.pending for m in members):
            gather = self._start(members, dtype, async_op=True)
            for m in members:
                self.pending[id(m)] = gather

    def _start(self, members: tuple, dtype: torch.dtype, async_op: bool) -> _Gather:
        # Each shard is cast straight into this rank's slot of the gathered buffer, which is
        # the all-gather's input: no concatenated copy of the bucket's shards.
        depth = members[0].layout.depth
        sizes = [m.weight.numel() for m in members]
        total = sum(sizes)
        flat = members[0].weight.new_empty(depth.size * total, dtype=dtype)
        offsets, offset = [], depth.index * total
        for m, n in zip(members, sizes):
            flat[offset:offset + n].copy_(m.weight.detach())
            offsets.append(offset - depth.index * total)
            offset += n
        work = comm.all_gather_in_place(flat, depth, async_op=async_op)
        return _Gather(tuple(members), tuple(offsets), total,
                       tuple(m.weight._version for m in members), dtype, flat, work)

    def drop(self) -> None:
        """Complete and forget every gather in flight (end of a backward pass)."""
        self.in_backward = False
        for gather in {id(g): g for g in self.pending.values()}.values():
            if gather.work is not None:
                gather.work.wait()
                gather.work = None
        self.pending.clear()
