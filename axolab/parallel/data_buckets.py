"""Data-parallel gradient buckets, all-reduced as soon as all their gradients are complete.

Gradients are grouped by the axis they are still partial over (D for depth-sharded weights,
D*Z for replicated vectors) and dtype, in reverse registration order (roughly the order
backward completes them), up to ``bucket_mb`` each. A bucket is launched asynchronously when its
last gradient is marked ready and waited for at the end of backward, where the reduced values
are copied back into ``param.grad``. Frozen parameters (``requires_grad=False``) are left out.

A gradient that changes after its bucket was launched (a weight with two contributions in one
backward: two forward passes summed into one loss) is all-reduced again, whole, at the end of
backward. Gradients that an earlier backward already reduced and that are still there when the
next one starts (micro-steps accumulated without ``no_data_sync``) are divided by the size of
their axis first, so that the next reduction counts them once: every backward reduces only what
it adds. When nothing is bucketed (``Optimizations(bucket_data_grads=False)``),
``sync_gradients`` reduces and records the same way, so that calling it after every micro-step
gives the sum it computes once after the last; and a gradient still as the last reduction left
it is never reduced again (``sync_gradients`` called twice).
"""

from __future__ import annotations

import contextlib
import weakref
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
    sent: list = field(default_factory=list)  # the parameters in ``flat``, in its order
    late: set = field(default_factory=set)  # ... whose gradient grew after the launch


def _copy_back(params: list, flat: torch.Tensor, skip=frozenset()) -> None:
    """Copy the slices of ``flat`` (the params' gradients concatenated, in order) back into
    each ``param.grad``, except the params whose id is in ``skip``."""
    offset = 0
    for p in params:
        n = p.numel()
        if id(p) not in skip:
            p.grad.copy_(flat[offset:offset + n].view_as(p.grad))
        offset += n


class DataGradBuckets:
    def __init__(self, grid: Grid, bucket_mb: float):
        self.grid, self.limit = grid, bucket_mb * 2**20
        self.buckets: list[_Bucket] = []
        self.bucket_of: dict[int, _Bucket] = {}
        self.sync = True  # False inside no_sync(): gradients are accumulated, not reduced
        self._reduced = False
        # (param, weak reference to its reduced gradient, the gradient's _version): what the
        # last backward reduced, checked by the next one (see begin)
        self._carried: list = []

    def build(self, specs: list[GradSpec]) -> list[GradSpec]:
        """Bucket the gradients of ``specs`` that need a reduction; returns those specs."""
        self.buckets, self.bucket_of = [], {}
        open_buckets: dict[tuple, _Bucket] = {}
        sizes: dict[tuple, float] = {}
        bucketed = []
        for spec in reversed(specs):
            axis = spec.axis(self.grid)
            if axis.size == 1 or not spec.param.requires_grad:
                continue  # nothing to reduce, or frozen: no gradient (nor hook) to wait for
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
        if bucket.work is not None:
            # Complete once already, and launched (a weight used by two forward passes whose
            # losses were summed: each use's gradient marks it ready): see finish.
            bucket.late.add(id(param))
            return
        bucket.ready.add(id(param))
        if len(bucket.ready) == len(bucket.params):
            self._launch(bucket)

    def _launch(self, bucket: _Bucket) -> None:
        if bucket.work is not None:
            return
        sent = [p for p in bucket.params if p.grad is not None]
        if not sent:
            return
        bucket.sent = sent
        bucket.flat = torch.cat([p.grad.reshape(-1) for p in sent])
        bucket.work = dist.all_reduce(bucket.flat, group=bucket.axis.group, async_op=True)

    @torch.no_grad()
    def finish(self) -> None:
        """End of backward: launch what is left (parameters that got no gradient), wait for
        every bucket and copy the sums back."""
        if self.buckets and self.sync:
            for bucket in self.buckets:
                self._launch(bucket)
            late = []
            for bucket in self.buckets:
                if bucket.work is None:
                    continue
                bucket.work.wait()
                changed = [p for p in bucket.sent if id(p) in bucket.late]
                _copy_back(bucket.sent, bucket.flat, skip=bucket.late)
                if changed:
                    late.append((bucket.axis, changed))
                bucket.work, bucket.flat, bucket.sent = None, None, []
                bucket.late.clear()
            # A parameter marked ready again after its bucket was launched got another
            # gradient contribution since (every contribution, accumulated by autograd or
            # added by a Z reduce-scatter, marks it ready): the bucket reduced only those
            # before. It reduced a copy, so ``p.grad`` still holds this rank's whole local
            # sum: reducing that now gives the full gradient, and the bucket's value is
            # dropped. (Counted, not read off ``Tensor._version``: gradients cut from one
            # stacked block share their version counter.) Every rank runs the same backward,
            # so all ranks of a group find the same parameters late and all-reduce them here
            # in the same (bucket, parameter) order.
            for axis, params in late:
                flat = torch.cat([p.grad.reshape(-1) for p in params])
                dist.all_reduce(flat, group=axis.group)
                _copy_back(params, flat)
            # Read once every copy is done: gradients cut from one stacked block share a
            # version counter.
            self._carried = [(p, weakref.ref(p.grad), p.grad._version, bucket.axis.size)
                             for bucket in self.buckets for p in bucket.params
                             if p.grad is not None]
            self._reduced = True
        for bucket in self.buckets:
            bucket.ready.clear()

    def abandon(self) -> None:
        """Forget a backward pass that raised before it finished: wait for the buckets it
        launched (every rank launched them) and drop their results."""
        for bucket in self.buckets:
            if bucket.work is not None:
                bucket.work.wait()
            bucket.work, bucket.flat, bucket.sent = None, None, []
            bucket.ready.clear()
            bucket.late.clear()
        self._reduced = False

    def carry(self, reduced: list) -> None:
        """``reduced``: (param, axis size) of the gradients :func:`sync_gradients` just summed
        over their axis; kept as a finished backward keeps its buckets' (see begin)."""
        still = self.still_reduced() - {id(p) for p, _ in reduced}
        self._carried = [e for e in self._carried if id(e[0]) in still] + \
            [(p, weakref.ref(p.grad), p.grad._version, size) for p, size in reduced]

    def still_reduced(self) -> set[int]:
        """Ids of the parameters whose gradient is still the sum the last reduction left
        (the same tensor at the same ``_version``): reducing them again would count every
        rank's part once per rank."""
        return {id(p) for p, ref, version, _ in self._carried
                if p.grad is not None and p.grad is ref() and p.grad._version == version}

    def take_reduced(self) -> bool:
        """Whether the last backward already reduced every data-parallel gradient (then
        :func:`axolab.parallel.sync_gradients` has nothing left to do); resets the answer."""
        reduced, self._reduced = self._reduced, False
        return reduced

    @torch.no_grad()
    def begin(self, accumulated=None) -> None:
        """Start of a backward pass (before any gradient of it reached a bucketed parameter,
        except ``accumulated``, whose hook called this).

        Gradients the last backward reduced and that are untouched since (not zeroed: the
        same tensor at the same ``_version``) hold the sum over their axis, the same on every
        rank of it. This backward adds its local gradients to them and reduces the result
        again, which would count them once per rank: they are divided by the axis size first,
        so that the reduction adds them up to their sum once (micro-steps accumulated without
        ``no_data_sync`` come out as with it, and as with ``bucket_data_grads=False``)."""
        self._reduced = False
        carried, self._carried = self._carried, []
        untouched = []
        # All checked before any is divided: gradients cut from one stacked block share a
        # version counter.
        for p, ref, version, size in carried:
            grad = p.grad
            if not p.requires_grad or grad is None or grad is not ref():
                continue  # frozen since, zeroed (set to None) or replaced
            if grad._version == version:
                untouched.append((grad, size))
            elif p is accumulated and grad._version == version + 1:
                # This backward's gradient was already added to the reduced one: the two
                # cannot be told apart any more (only when backward reaches such a parameter
                # before any parallel linear layer).
                raise ValueError(
                    "a backward pass added to gradients an earlier backward already reduced "
                    "over the data-parallel ranks; zero the gradients between steps and run "
                    "all micro-steps but the last inside axolab.parallel.no_data_sync(model)")
        for grad, size in untouched:
            grad.div_(size)

    @contextlib.contextmanager
    def no_sync(self):
        previous, self.sync = self.sync, False
        try:
            yield
        finally:
            self.sync = previous
