"""Weight blocks gathered over Z, the next layer's gather started while this one computes.

The order of the model's linear layers is learned from the first forward pass; backward walks
it in reverse. A prefetched block is used only if its shard has not changed since the gather
started (``Tensor._version``), so an optimizer step in between can never feed stale weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from . import comm


@dataclass
class _InFlight:
    work: object
    flat: torch.Tensor
    version: int
    dtype: torch.dtype


class WeightPrefetcher:
    def __init__(self, enabled: bool):
        self.enabled = enabled
        self.order: list = []  # the linear layers in first-forward order
        self.index: dict[int, int] = {}
        self.in_flight: dict[int, _InFlight] = {}

    def starts_pass(self, module) -> bool:
        """Whether ``module`` opens a forward pass (or is seen for the first time)."""
        return id(module) not in self.index or self.order[0] is module

    def record(self, module) -> None:
        """Learn ``module``'s place in the forward order (first pass only)."""
        if id(module) not in self.index:
            self.index[id(module)] = len(self.order)
            self.order.append(module)

    def block(self, module, shard: torch.Tensor, backward: bool,
              dtype: torch.dtype) -> torch.Tensor:
        """``module``'s [local_rows, local_cols] weight block in ``dtype``. Under bf16 autocast
        the shard is cast before the gather, which halves its bytes."""
        layout = module.layout
        self.record(module)
        if layout.depth.size == 1:
            return shard[:layout.block_numel].view(layout.local_rows, layout.local_cols).to(dtype)
        entry = self.in_flight.pop(id(module), None)
        if entry is not None:
            entry.work.wait()
        if entry is not None and entry.version == shard._version and entry.dtype == dtype:
            flat = entry.flat
        else:
            flat = comm.all_gather_flat(shard.detach().to(dtype), layout.depth)
        if self.enabled:
            i = self.index[id(module)] + (-1 if backward else 1)
            if 0 <= i < len(self.order):
                self._start(self.order[i], dtype)
        return flat[:layout.block_numel].view(layout.local_rows, layout.local_cols)

    def _start(self, module, dtype: torch.dtype) -> None:
        if id(module) in self.in_flight or module.layout.depth.size == 1:
            return
        shard = module.weight.detach().to(dtype)
        flat, work = comm.all_gather_flat(shard, module.layout.depth, async_op=True)
        self.in_flight[id(module)] = _InFlight(work, flat, module.weight._version, dtype)

    def drop(self) -> None:
        """Complete and forget every gather in flight (end of a backward pass)."""
        for entry in self.in_flight.values():
            entry.work.wait()
        self.in_flight.clear()
