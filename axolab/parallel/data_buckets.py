"""Data-parallel gradient buckets, all-reduced as soon as all their gradients are complete.

Gradients are grouped by the axis they are still partial over (D for depth-sharded weights,
D*Z for replicated vectors) and dtype, in reverse registration order (roughly the order
backward completes them), up to ``bucket_mb`` each. A bucket is launched asynchronously when its
last gradient is marked ready and waited for at the end of backward, where the reduced values
are copied back into ``param.grad``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .base import GradSpec
from .grid import Axis, Grid


@dataclass
class _Bucket:
    axis: Axis
    params: list = field(default_factory=list)
    ready: set = field(default_factory=set)
    work: object = None
    flat: torch.Tensor | None = None


class DataGradBuckets:
    def __init__(self, grid: Grid, bucket_mb: float):
        self.grid, self.limit = grid, bucket_mb * 2**20
        self.buckets: list[_Bucket] = []
        self.bucket_of: dict[int, _Bucket] = {}
        self.sync = True  # False inside no_sync(): gradients are accumulated, not reduced
        self._reduced = False

    def build(self, specs: list[GradSpec]) -> list[GradSpec]:
        """Bucket the gradients of ``specs`` that need a reduction; returns those specs."""
        self.buckets, self.bucket_of = [], {}
        open_buckets: dict[tuple, _Bucket] = {}
        sizes: dict[tuple, float] = {}
        bucketed = []
        for spec in reversed(specs):
            axis = spec.axis(self.grid)
            if axis.size == 1:
                continue
            key = (spec.reduce, spec.param.dtype)
            nbytes = spec.param.numel() * spec.param.element_size()
            bucket = open_buckets.get(key)
            if bucket is None or sizes[key] + nbytes > self.limit:
                bucket = _Bucket(axis)
                self.buckets.append(bucket)
                open_buckets[key], sizes[key] = bucket, 0.0
            bucket.params.append(spec.param)
            sizes[key] += nbytes
            self.bucket_of[id(spec.param)] = bucket
            bucketed.append(spec)
        return bucketed

    def ready(self, param) -> None:
        """``param.grad`` is complete for this backward pass."""
        bucket = self.bucket_of.get(id(param))
        if bucket is None or not self.sync:
            return
        bucket.ready.add(id(param))
        if len(bucket.ready) == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        grads = [p.grad for p in bucket.params if p.grad is not None]
        if not grads or bucket.work is not None:
            return
        bucket.flat = torch.cat([g.reshape(-1) for g in grads])
        bucket.work = dist.all_reduce(bucket.flat, group=bucket.axis.group, async_op=True)

    def finish(self) -> None:
        """End of backward: launch what is left (parameters that got no gradient), wait for
        every bucket and copy the sums back."""
        if self.buckets and self.sync:
            for bucket in self.buckets:
                self._launch(bucket)
            for bucket in self.buckets:
                if bucket.work is not None:
                    bucket.work.wait()
                    offset = 0
                    for p in bucket.params:
                        if p.grad is not None:
                            n = p.grad.numel()
                            p.grad.copy_(bucket.flat[offset:offset + n].view_as(p.grad))
                            offset += n
                bucket.work, bucket.flat = None, None
            self._reduced = True
        for bucket in self.buckets:
            bucket.ready.clear()

    def take_reduced(self) -> bool:
        """Whether the last backward already reduced every data-parallel gradient (then
        :func:`axolab.parallel.sync_gradients` has nothing left to do); resets the answer."""
        reduced, self._reduced = self._reduced, False
        return reduced

    def begin(self) -> None:
        self._reduced = False

    @contextlib.contextmanager
    def no_sync(self):
        previous, self.sync = self.sync, False
        try:
            yield
        finally:
            self.sync = previous
