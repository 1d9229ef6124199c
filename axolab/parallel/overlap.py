"""The collectives a parallelized model has in flight: one :class:`Runtime` per model.

It composes three schedulers, each in its own module:

- :class:`~axolab.parallel.prefetch.WeightPrefetcher`: the Z all-gather of the next
  depth-sharded layer, started while the current one computes;
- :class:`~axolab.parallel.depth_grads.DeferredDepthGrads`: Z reduce-scatters of weight
  gradients, in the prefetcher's buckets, completed a few buckets later or at the end of
  backward;
- :class:`~axolab.parallel.data_buckets.DataGradBuckets`: data-parallel gradient buckets,
  all-reduced as soon as every gradient in them is complete.

The runtime receives the gradient specs of the model's parallel modules (a callable, because
loading a checkpoint by assignment replaces parameter objects; a tied weight is listed once per
module using it) and wires the schedulers together: which parameters get
their Z gradient outside autograd, and when a gradient counts as complete. The end of backward
is marked with the autograd engine's ``queue_callback`` (as torch's DDP and FSDP do), so once
``loss.backward()`` returns every gradient is complete. That callback does not run when backward
raises: the next forward pass finds the runtime still marked in backward with no backward
running, and forgets what the failed pass left in flight. Every parallel linear layer runs
through a runtime; with :meth:`Optimizations.none` it issues blocking collectives in program
order.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch

from .base import GradSpec, unique_specs
from .data_buckets import DataGradBuckets
from .depth_grads import DeferredDepthGrads
from .matmul import MatmulTuner, plain
from ..optimizations import Optimizations
from .prefetch import WeightPrefetcher


def _weak_hook(method):
    """A tensor hook that reaches its runtime through a weak reference. The parameter owns the
    hook and the runtime owns the modules that own the parameter: a strong reference would close
    a cycle through the tensor that Python's collector cannot see, and a dropped model (with its
    process groups and their threads) would never be freed."""
    ref = weakref.WeakMethod(method)

    def hook(*args):
        bound = ref()
        return None if bound is None else bound(*args)

    return hook


def _no_specs() -> list[GradSpec]:
    return []


class Runtime:
    def __init__(self, grid, options: Optimizations,
                 specs: Callable[[], list[GradSpec]] = _no_specs):
        self.grid, self.options, self.specs = grid, options, specs
        self.matmul = MatmulTuner() if options.tune_matmul else plain
        self.weights = WeightPrefetcher(options.prefetch_weights,
                                        options.gather_bucket_mb * 2**20,
                                        options.prefetch_late_in_backward)
        # Gradients are reduce-scattered in the buckets their weights are gathered in.
        self.depth_grads = DeferredDepthGrads(grid.z, options.max_in_flight, self._depth_done,
                                              self.weights.bucket_members)
        self.data_grads = DataGradBuckets(grid, options.bucket_mb)
        self.deferred: set[int] = set()  # params whose Z gradient arrives outside autograd
        self.shared: set[int] = set()  # ... that also get an autograd gradient (tied weights)
        self._shared_params: list = []
        self._attached: tuple = ()
        self._hooks: list = []
        self._in_backward = False

    # ---- setup ------------------------------------------------------------------------------
    def ensure_attached(self) -> None:
        """(Re)register gradient hooks and buckets when the model's parameters are new objects
        (a meta-device model materialized, a checkpoint loaded by assignment) or were frozen or
        unfrozen; called at the start of each forward pass."""
        if self._in_backward and torch._C._current_graph_task_id() == -1:
            self._abandon_backward()
        specs = self.specs()
        key = tuple((id(s.param), s.param.requires_grad) for s in specs)
        if key != self._attached:
            self._attach(specs)
            self._attached = key

    def _attach(self, specs: list[GradSpec]) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks = []
        # specs lists a tied weight once per module that uses it.
        defer = self.options.overlap_depth_grad and self.grid.z.size > 1
        self.deferred = {id(s.param) for s in specs if s.deferrable_z_grad and defer}
        self.shared = self.deferred & {id(s.param) for s in specs if not s.deferrable_z_grad}
        unique = unique_specs(specs)
        self._shared_params = [s.param for s in unique if id(s.param) in self.shared]
        if self.options.bucket_data_grads:
            # Frozen parameters are not bucketed (a hook cannot be registered on them).
            for spec in self.data_grads.build(unique):
                if id(spec.param) not in self.deferred or id(spec.param) in self.shared:
                    self._hooks.append(spec.param.register_post_accumulate_grad_hook(
                        _weak_hook(self._on_accumulated)))

    def depth_grad_dtype(self, shard: torch.Tensor) -> torch.dtype:
        """The dtype a weight gradient is reduce-scattered over Z in
        (``Optimizations.depth_grad_dtype``); the parameter's own on a grid without Z."""
        if self.options.depth_grad_dtype == "bf16" and self.grid.z.size > 1:
            return torch.bfloat16
        return shard.dtype

    def defers_depth_grad(self, module) -> bool:
        return self.options.overlap_depth_grad and module.layout.depth.size > 1

    # ---- forward and backward of a linear layer ---------------------------------------------
    def block(self, module, shard: torch.Tensor, backward: bool, dtype: torch.dtype,
              out: torch.Tensor | None = None, backward_needs: bool = False) -> torch.Tensor:
        """``module``'s weight block in ``dtype`` (see WeightPrefetcher.block)."""
        if self.weights.starts_pass(module):
            self.ensure_attached()  # first call, or the start of a forward pass
        return self.weights.block(module, shard, backward, dtype, out, backward_needs)

    def stacked_block(self, modules: tuple, shards, backward: bool, dtype: torch.dtype,
                      backward_needs: bool = False) -> torch.Tensor:
        """The blocks of ``modules`` stacked (output rows), each written straight into its
        rows; in backward the last one first (the prefetcher's order reversed).
        ``backward_needs``: a forward call whose backward will need the blocks again."""
        if len(modules) == 1:
            return self.block(modules[0], shards[0], backward, dtype,
                              backward_needs=backward_needs)
        first = modules[0].layout
        out = shards[0].new_empty(sum(m.layout.local_rows for m in modules), first.local_cols,
                                  dtype=dtype)
        parts = list(zip(modules, shards, out.split([m.layout.local_rows for m in modules])))
        for m, shard, rows in (reversed(parts) if backward else parts):
            self.block(m, shard, backward, dtype, out=rows, backward_needs=backward_needs)
        return out

    def enter(self, module) -> None:
        """A layer computing without the runtime (nothing to gather or reduce): it still
        opens a forward pass (gradient hooks attached) and keeps its place in the order."""
        if self.weights.starts_pass(module):
            self.ensure_attached()
        self.weights.record(module)

    def begin_backward(self, accumulated=None) -> None:
        """Called by every layer's backward (and gradient hook: ``accumulated``); the first one
        of a backward pass arranges for :meth:`finish_backward` to run when the pass ends."""
        if self._in_backward:
            return
        self._in_backward = True
        self.weights.in_backward = True
        self.data_grads.begin(accumulated)
        torch.autograd.Variable._execution_engine.queue_callback(self.finish_backward)

    def reduce_scatter_later(self, module, block_grad: torch.Tensor) -> None:
        """Queue the Z reduce-scatter of ``module``'s full block gradient (with its bucket);
        it is added to ``module.weight.grad`` when it completes."""
        self.depth_grads.start(module, block_grad)

    # ---- when a gradient is complete ---------------------------------------------------------
    def _depth_done(self, param) -> None:
        if id(param) not in self.shared:  # a tied weight also waits for its autograd part
            self.data_grads.ready(param)

    def _on_accumulated(self, param) -> None:
        self.begin_backward(param)
        if id(param) not in self.deferred:
            self.data_grads.ready(param)

    def finish_backward(self) -> None:
        """End of a backward pass: complete deferred reduce-scatters and gradient buckets."""
        self._in_backward = False
        self.depth_grads.drain()
        for param in self._shared_params:  # both of their gradients are in now
            self.data_grads.ready(param)
        self.weights.drop()
        self.data_grads.finish()

    def _abandon_backward(self) -> None:
        """A backward pass raised (its end-of-pass callback never ran) and none is running
        now: wait for the collectives it left in flight (every rank started them), drop their
        results (its gradients are incomplete anyway) and leave backward mode, so the next
        pass starts clean instead of completing the failed pass's reduce-scatters into its
        gradients."""
        self._in_backward = False
        self.depth_grads.abandon()
        self.data_grads.abandon()
        self.weights.drop()
