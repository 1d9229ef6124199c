"""The collectives a parallelized model has in flight, and the bookkeeping that overlaps them.

One :class:`Runtime` per model (``model.axolab_runtime``) holds:

- prefetched weight blocks: the Z all-gather of the next depth-sharded layer, started while the
  current one computes. The order is learned from the first forward; a block is used only if
  its shard has not changed since the gather started (``Tensor._version``), so an optimizer
  step in between can never feed stale weights.
- deferred reduce-scatters of weight gradients over Z, completed a few layers later or at the
  end of backward, where their results are added to ``param.grad``.
- data-parallel gradient buckets, all-reduced as soon as every gradient in them is complete.

The end of backward is marked with the autograd engine's ``queue_callback`` (as torch's DDP
and FSDP do), so once ``loss.backward()`` returns every gradient is complete.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import deque
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import comm
from .matmul import MatmulTuner, plain
from .options import Optimizations


def _weak_hook(method):
    """A tensor hook that reaches its runtime through a weak reference. The parameter owns the
    hook and the runtime owns the model that owns the parameter: a strong reference would close
    a cycle through the tensor that Python's collector cannot see, and a dropped model (with its
    process groups and their threads) would never be freed."""
    ref = weakref.WeakMethod(method)

    def hook(*args):
        bound = ref()
        return None if bound is None else bound(*args)

    return hook


@dataclass
class _Prefetch:
    work: object
    flat: torch.Tensor
    version: int
    dtype: torch.dtype


@dataclass
class _Bucket:
    axis: object
    params: list
    ready: set
    work: object = None
    flat: torch.Tensor | None = None


class Runtime:
    def __init__(self, grid, options: Optimizations, model):
        self.grid, self.options, self.model = grid, options, model
        self._attached: tuple = ()
        self.matmul = MatmulTuner() if options.tune_matmul else plain
        self.order: list = []  # the model's linear layers in first-forward order
        self.index: dict[int, int] = {}
        self.prefetched: dict[int, _Prefetch] = {}
        self.pending: deque = deque()  # (work, out, param, flat) of deferred reduce-scatters
        self.deferred: set[int] = set()  # params whose Z gradient arrives outside autograd
        self.shared: set[int] = set()  # ... that also get an autograd gradient (tied weights)
        self.shared_params: list = []
        self.buckets: list[_Bucket] = []
        self.bucket_of: dict[int, _Bucket] = {}
        self.data_sync = True
        self.data_reduced = False
        self._in_backward = False

    # ---- setup ------------------------------------------------------------------------------
    def ensure_attached(self) -> None:
        """(Re)register gradient hooks and buckets when the model's parameters are new objects
        (a meta-device model materialized, a checkpoint loaded by assignment)."""
        from .grads import grad_specs

        specs = grad_specs(self.model)
        key = tuple(id(s.param) for s in specs)
        if key != self._attached:
            self._attach(specs)
            self._attached = key

    def _attach(self, specs) -> None:
        from .linear import ParallelLinear
        from .modules import parallel_modules

        for hook in getattr(self, "_hooks", []):
            hook.remove()
        self._hooks: list = []
        self.deferred, self.buckets, self.bucket_of = set(), [], {}
        modules = [m for _, m in parallel_modules(self.model)]
        autograd_users: set[int] = set()
        for module in modules:
            for spec in module.grad_specs():
                if isinstance(module, ParallelLinear) and spec.param is module.weight \
                        and self.defers_depth_grad(module):
                    self.deferred.add(id(spec.param))
                else:
                    autograd_users.add(id(spec.param))
        self.shared = self.deferred & autograd_users
        self.shared_params = list({id(s.param): s.param for s in specs
                                   if id(s.param) in self.shared}.values())
        if self.options.bucket_data_grads:
            self._make_buckets(specs)

    def defers_depth_grad(self, module) -> bool:
        return self.options.overlap_depth_grad and module.layout.depth.size > 1

    def _make_buckets(self, specs) -> None:
        # Reverse registration order is roughly the order backward completes gradients.
        limit = self.options.bucket_mb * 2**20
        open_buckets: dict[tuple, _Bucket] = {}
        sizes: dict[tuple, float] = {}
        for spec in reversed(specs):
            axis = self.grid.data if spec.reduce == "data" else self.grid.batch
            if axis.size == 1:
                continue
            key = (spec.reduce, spec.param.dtype)
            nbytes = spec.param.numel() * spec.param.element_size()
            bucket = open_buckets.get(key)
            if bucket is None or sizes[key] + nbytes > limit:
                bucket = _Bucket(axis, [], set())
                self.buckets.append(bucket)
                open_buckets[key], sizes[key] = bucket, 0.0
            bucket.params.append(spec.param)
            sizes[key] += nbytes
            self.bucket_of[id(spec.param)] = bucket
            if id(spec.param) not in self.deferred or id(spec.param) in self.shared:
                self._hooks.append(spec.param.register_post_accumulate_grad_hook(
                    _weak_hook(self._on_accumulated)))

    # ---- weights: gather with prefetch --------------------------------------------------------
    def block(self, module, shard: torch.Tensor, backward: bool,
              dtype: torch.dtype) -> torch.Tensor:
        """``module``'s weight block in ``dtype``, gathered over Z (or taken from a prefetch);
        starts the prefetch of the layer that runs next. Under bf16 autocast the shards are
        cast before the gather, which halves its bytes."""
        layout = module.layout
        if id(module) not in self.index or self.order[0] is module:
            self.ensure_attached()  # first call, or the start of a forward pass
        if id(module) not in self.index:
            self.index[id(module)] = len(self.order)
            self.order.append(module)
        if layout.depth.size == 1:
            return shard[:layout.block_numel].view(layout.local_rows, layout.local_cols).to(dtype)
        entry = self.prefetched.pop(id(module), None)
        if entry is not None:
            entry.work.wait()
        if entry is not None and entry.version == shard._version and entry.dtype == dtype:
            flat = entry.flat
        else:
            flat = comm.all_gather_flat(shard.detach().to(dtype), layout.depth)
        if self.options.prefetch_weights:
            i = self.index[id(module)] + (-1 if backward else 1)
            if 0 <= i < len(self.order):
                self._prefetch(self.order[i], dtype)
        return flat[:layout.block_numel].view(layout.local_rows, layout.local_cols)

    def _prefetch(self, module, dtype: torch.dtype) -> None:
        if id(module) in self.prefetched:
            return
        shard = module.weight.detach().to(dtype)
        flat, work = comm.all_gather_flat(shard, module.layout.depth, async_op=True)
        self.prefetched[id(module)] = _Prefetch(work, flat, module.weight._version, dtype)

    def _drop_prefetches(self) -> None:
        for entry in self.prefetched.values():
            entry.work.wait()
        self.prefetched.clear()

    # ---- gradients ----------------------------------------------------------------------------
    def begin_backward(self) -> None:
        """Called by every layer's backward; the first one of a backward pass arranges for
        :meth:`finish_backward` to run when the pass ends."""
        if self._in_backward:
            return
        self._in_backward = True
        self.data_reduced = False
        torch.autograd.Variable._execution_engine.queue_callback(self.finish_backward)

    def reduce_scatter_later(self, param: torch.nn.Parameter, flat: torch.Tensor) -> None:
        """Start the Z reduce-scatter of ``param``'s block gradient; it is added to
        ``param.grad`` when it completes."""
        out, work = comm.reduce_scatter_flat(flat, self.grid.z, async_op=True)
        self.pending.append((work, out, param, flat))
        while len(self.pending) > self.options.max_in_flight:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        work, out, param, _ = self.pending.popleft()
        work.wait()
        if param.grad is None:
            param.grad = out
        else:
            param.grad.add_(out)
        if id(param) not in self.shared:
            self._ready(param)

    def _on_accumulated(self, param) -> None:
        self.begin_backward()
        if id(param) not in self.deferred:
            self._ready(param)

    def _ready(self, param) -> None:
        bucket = self.bucket_of.get(id(param))
        if bucket is None or not self.data_sync:
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

    def finish_backward(self) -> None:
        """End of a backward pass: complete deferred reduce-scatters and gradient buckets."""
        self._in_backward = False
        while self.pending:
            self._complete_oldest()
        for param in self.shared_params:  # both of their gradients are in now
            self._ready(param)
        self._drop_prefetches()
        if self.buckets and self.data_sync:
            for bucket in self.buckets:
                self._launch(bucket)  # buckets with a parameter that got no gradient
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
                bucket.ready.clear()
            self.data_reduced = True
        for bucket in self.buckets:
            bucket.ready.clear()

    @contextlib.contextmanager
    def no_data_sync(self):
        previous, self.data_sync = self.data_sync, False
        try:
            yield
        finally:
            self.data_sync = previous


def runtime_of(model) -> Runtime | None:
    return getattr(model, "axolab_runtime", None)


@contextlib.contextmanager
def no_data_sync(model):
    """Backward passes inside leave data-parallel gradients unreduced (gradient accumulation:
    all micro-steps but the last). Without bucketed reduction it changes nothing."""
    runtime = runtime_of(model)
    if runtime is None:
        yield
        return
    with runtime.no_data_sync():
        yield
