"""Measuring the device memory a piece of code allocates: live and peak bytes of the tensor
storages it creates on one device, seen op by op through a TorchDispatchMode.

The save path uses it to report its own transient memory, and the benchmark and tests use the
same meter on the old all-gather path, so the two figures come from one independent
measurement rather than from the code's own bookkeeping. It sees every ATen op run in this
thread while active (factories, copies, ``.contiguous()``, collectives' Python-side outputs),
not allocations a backend makes on its own threads (gloo's internal gather buffer).

On a CPU grid the "device" is host memory, where the writer also assembles whole tensors on
purpose: code wraps such intentional host buffers in :meth:`AllocationMeter.host` so only the
transient staging is counted.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class AllocationMeter(TorchDispatchMode):
    """``with AllocationMeter(device) as meter: ...`` then ``meter.peak_bytes``: the most bytes
    of storages created inside the block on ``device`` that were alive at the same time."""

    def __init__(self, device: torch.device | str):
        super().__init__()
        self.device = torch.device(device)
        self.live_bytes = 0
        self.peak_bytes = 0
        self._storages: dict[int, list[int]] = {}  # data_ptr -> [bytes, tensors alive]
        self._paused = 0

    @contextmanager
    def host(self):
        """Allocations inside are deliberate host buffers (a CPU grid's assembled tensors)."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1

    def _on_device(self, t: torch.Tensor) -> bool:
        d = t.device
        return d.type == self.device.type and (self.device.index is None or
                                               d.index == self.device.index)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor) and t.device.type != "meta"}
        out = func(*args, **kwargs)
        if not self._paused:
            for t in tree_flatten(out)[0]:
                if isinstance(t, torch.Tensor) and self._on_device(t):
                    self._note(t, inputs)
        return out

    def _note(self, t: torch.Tensor, inputs: set[int]) -> None:
        storage = t.untyped_storage()
        ptr, nbytes = storage.data_ptr(), storage.nbytes()
        if nbytes == 0:
            return
        entry = self._storages.get(ptr)
        if entry is None:
            if ptr in inputs:  # a view of, or a write into, memory from before the meter
                return
            entry = self._storages[ptr] = [nbytes, 0]
            self.live_bytes += nbytes
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1  # one more tensor keeps this storage alive
        weakref.finalize(t, self._release, ptr)

    def _release(self, ptr: int) -> None:
        entry = self._storages.get(ptr)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[ptr]


@contextmanager
def host_allocations(meter: AllocationMeter | None):
    """``meter.host()`` when measuring, nothing otherwise."""
    if meter is None:
        yield
    else:
        with meter.host():
            yield
