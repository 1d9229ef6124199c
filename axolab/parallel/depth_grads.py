"""Weight gradients reduce-scattered over Z without waiting for them, a bucket at a time.

A linear layer's backward hands its full block gradient here. Gradients are grouped in the
buckets the weight gathers use (one decoder layer's blocks, up to
``Optimizations.gather_bucket_mb``; :class:`~axolab.parallel.prefetch.WeightPrefetcher`), so a
layer's seven matrices cost one reduce-scatter instead of seven, as FSDP reduce-scatters a
wrapped layer. Once every member's gradient has arrived, each block is written into its
columns of the bucket's ``[Z, chunks]`` buffer (rank z's chunks side by side in row z, what the
reduce-scatter hands rank z) and the reduce-scatter starts; it runs while the backward of
earlier layers computes. It completes when a later bucket is sent (at most ``max_in_flight``
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
from .layout import chunk_pairs


@dataclass
class _Collecting:
    members: tuple
    parts: list = field(default_factory=list)  # (member index, weight, full block gradient)

    def complete(self) -> bool:
        return len({i for i, _, _ in self.parts}) == len(self.members)


def _zero_padding(rows: torch.Tensor, numel: int) -> None:
    """Zero what a block of ``numel`` elements leaves of its ``[Z, chunk]`` slots: the rest of
    its last partial chunk and the chunks after it (see :func:`chunk_pairs`)."""
    full, rest = divmod(numel, rows.shape[1])
    if rest:
        rows[full, rest:].zero_()
        full += 1
    rows[full:].zero_()


class DeferredDepthGrads:
    def __init__(self, depth: Axis, max_in_flight: int,
                 on_complete: Callable[[torch.nn.Parameter], None],
                 bucket_of: Callable[[object], tuple] = lambda module: (module,)):
        self.depth, self.max_in_flight, self.on_complete = depth, max_in_flight, on_complete
        self.bucket_of = bucket_of  # module -> the modules whose gradients go with it
        self.collecting: dict[tuple, _Collecting] = {}  # member ids -> bucket being filled
        # (work, out, [(param, offset, numel)], buffer, whether out is a view of buffer);
        # buffer is kept alive until done
        self.pending: deque = deque()

    def start(self, module, block_grad: torch.Tensor) -> None:
        """Queue ``module``'s full block gradient; its bucket is reduce-scattered once every
        member's gradient is in."""
        members = self.bucket_of(module)
        key = tuple(id(m) for m in members)
        bucket = self.collecting.setdefault(key, _Collecting(members))
        i = next(j for j, m in enumerate(members) if m is module)
        bucket.parts.append((i, module.weight, block_grad))
        if bucket.complete():
            self._send(self.collecting.pop(key))

    def _send(self, bucket: _Collecting) -> None:
        # The bucket's buffer is filled only now, as FSDP copies a layer's gradients in: the
        # full gradients of a layer are not held twice while its backward still computes.
        # The oldest reduce-scatters complete first (collectives of one group run in order
        # anyway): no more than max_in_flight buffers are ever held.
        while len(self.pending) >= self.max_in_flight:
            self._complete_oldest()
        chunks = [m.layout.chunk for m in bucket.members]
        offsets = [sum(chunks[:i]) for i in range(len(chunks))]
        first = bucket.parts[0][2]
        scratch = not (len(bucket.members) == 1 and len(bucket.parts) == 1 and
                       first.numel() == chunks[0] * self.depth.size)
        if not scratch:
            buffer = first.reshape(-1)  # one unpadded block: sent as it is
        else:
            # Each member's first gradient is copied in and only what it leaves (the layout's
            # padding) zeroed, as are the slots of members that never arrived: zero-filling
            # the whole buffer first would write a layer's gradients once more.
            buffer = first.new_empty(self.depth.size, sum(chunks))
            filled = set()
            for i, _, grad in bucket.parts:  # a member that arrived twice adds up
                rows = buffer[:, offsets[i]:offsets[i] + chunks[i]]
                flat = grad.reshape(-1)
                for src, dst in chunk_pairs(flat, rows):
                    dst.add_(src) if i in filled else dst.copy_(src)
                if i not in filled:
                    _zero_padding(rows, flat.numel())
                    filled.add(i)
            for i in set(range(len(bucket.members))) - filled:
                buffer[:, offsets[i]:offsets[i] + chunks[i]].zero_()
        # A buffer built here is scratch: the sum is written over this rank's own rows of it.
        out, work = comm.reduce_scatter_flat(buffer.view(-1), self.depth, async_op=True,
                                             in_place=scratch)
        weights = {i: weight for i, weight, _ in bucket.parts}
        slots = [(weights[i], offsets[i], chunks[i]) for i in sorted(weights)]
        self.pending.append((work, out, slots, buffer, scratch and buffer.device.type == "cpu"))

    def _complete_oldest(self) -> None:
        work, out, slots, _, view = self.pending.popleft()
        work.wait()
        for param, start, numel in slots:
            grad = out[start:start + numel]
            if param.grad is None:
                # A copy, not a view of the bucket: each gradient owns its storage (a bucket
                # reduced in bf16 is copied into the parameter's dtype anyway).
                param.grad = grad.to(param.dtype) if grad.dtype != param.dtype else \
                    grad if len(slots) == 1 and not view else grad.clone()
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

    def abandon(self) -> None:
        """Forget a backward pass that raised: buckets still filling are dropped, the
        reduce-scatters in flight waited for and their results dropped."""
        self.collecting.clear()
        while self.pending:
            self.pending.popleft()[0].wait()
