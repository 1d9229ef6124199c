"""Weight gradients reduce-scattered over Z without waiting for them, a bucket at a time.

A linear layer's backward hands its full block gradient here. Gradients are grouped in the
buckets the weight gathers use (one decoder layer's blocks, up to
``Optimizations.gather_bucket_mb``; :class:`~axolab.parallel.prefetch.WeightPrefetcher`), so a
layer's seven matrices cost one reduce-scatter instead of seven, as FSDP reduce-scatters a
wrapped layer. Each block is written straight into its columns of the bucket's ``[Z, chunks]``
buffer (rank z's chunks side by side in row z, what the reduce-scatter hands rank z); the
bucket's reduce-scatter starts once every member has arrived and runs while the backward of
earlier layers computes. It completes a few buckets later (at most ``max_in_flight``
outstanding, each holding its full gradients) or at the end of backward, when each member's
slice is added to its ``param.grad``. A bucket whose members did not all arrive (a frozen
weight, a layer used twice) is sent at the end of backward with zeros in the missing slots,
and only the members that arrived receive a gradient.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from . import comm
from .grid import Axis


@dataclass
class _Collecting:
    members: tuple
    offsets: tuple
    buffer: torch.Tensor  # [Z, sum of the members' chunks]
    params: dict = field(default_factory=dict)  # member index -> the weight that arrived


def _write_block(dst: torch.Tensor, block: torch.Tensor, accumulate: bool) -> None:
    """Write ``block`` flattened into ``dst`` ([Z, chunk], rows strided) as the layout cuts it:
    chunk z in row z, zero-padded at the end."""
    flat, chunk = block.reshape(-1), dst.shape[1]
    full, rest = divmod(flat.numel(), chunk)
    if accumulate:
        dst[:full].add_(flat[:full * chunk].view(full, chunk))
        if rest:
            dst[full, :rest].add_(flat[full * chunk:])
        return
    dst[:full].copy_(flat[:full * chunk].view(full, chunk))
    if full < dst.shape[0]:
        dst[full, :rest].copy_(flat[full * chunk:])
        dst[full, rest:].zero_()
        dst[full + 1:].zero_()


class DeferredDepthGrads:
    def __init__(self, depth: Axis, max_in_flight: int,
                 on_complete: Callable[[torch.nn.Parameter], None],
                 bucket_of: Callable[[object], tuple] = lambda module: (module,)):
        self.depth, self.max_in_flight, self.on_complete = depth, max_in_flight, on_complete
        self.bucket_of = bucket_of  # module -> the modules whose gradients go with it
        self.collecting: dict[tuple, _Collecting] = {}  # member ids -> bucket being filled
        # (work, out, [(param, offset, numel)], buffer); buffer is kept alive until done
        self.pending: deque = deque()

    def start(self, module, block_grad: torch.Tensor) -> None:
        """Queue ``module``'s full block gradient; its bucket is reduce-scattered once every
        member's gradient is in."""
        members = self.bucket_of(module)
        key = tuple(id(m) for m in members)
        bucket = self.collecting.get(key)
        if bucket is None:
            chunks = [m.layout.chunk for m in members]
            offsets = tuple(sum(chunks[:i]) for i in range(len(chunks)))
            buffer = block_grad.new_empty(self.depth.size, sum(chunks))
            bucket = self.collecting[key] = _Collecting(members, offsets, buffer)
        i = next(j for j, m in enumerate(members) if m is module)
        start, chunk = bucket.offsets[i], module.layout.chunk
        _write_block(bucket.buffer[:, start:start + chunk], block_grad,
                     accumulate=i in bucket.params)
        bucket.params[i] = module.weight
        if len(bucket.params) == len(members):
            self._send(self.collecting.pop(key))

    def _send(self, bucket: _Collecting) -> None:
        if len(bucket.params) < len(bucket.members):  # zero the slots nobody wrote
            for i, m in enumerate(bucket.members):
                if i not in bucket.params:
                    bucket.buffer[:, bucket.offsets[i]:bucket.offsets[i] + m.layout.chunk] = 0
        out, work = comm.reduce_scatter_flat(bucket.buffer, self.depth, async_op=True)
        slots = [(param, bucket.offsets[i], bucket.members[i].layout.chunk)
                 for i, param in sorted(bucket.params.items())]
        self.pending.append((work, out, slots, bucket.buffer))
        while len(self.pending) > self.max_in_flight:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        work, out, slots, _ = self.pending.popleft()
        work.wait()
        for param, start, numel in slots:
            grad = out if len(slots) == 1 else out[start:start + numel]
            if param.grad is None:
                # A copy, not a view of the bucket: each gradient owns its storage.
                param.grad = grad if len(slots) == 1 else grad.clone()
            else:
                param.grad.add_(grad)
            self.on_complete(param)

    def drain(self) -> None:
        """End of backward: send the buckets still filling (in the order they started) and
        complete every reduce-scatter."""
        for key in list(self.collecting):
            self._send(self.collecting.pop(key))
        while self.pending:
            self._complete_oldest()
