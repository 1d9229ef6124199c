"""3D tensor-parallel Linear in its two orientations.

forward layer (q/k/v, gate/up, lm head): ``in`` split over X, ``out`` over Y.
    input [.., in/X] (replicated over Y) -> local matmul -> all-reduce over X -> [.., out/Y]
transposed layer (o_proj, down_proj): ``in`` split over Y, ``out`` over X.
    input [.., in/Y] (replicated over X) -> local matmul -> all-reduce over Y -> [.., out/X]
The orientations alternate through a transformer block, so activations never need re-layout.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import comm
from .base import GradSpec, ParallelModule
from .grid import Grid
from .layout import BlockLayout, VectorLayout
from ..optimizations import Optimizations
from .overlap import Runtime


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    kind = x.device.type
    if torch.is_autocast_enabled(kind):
        return torch.get_autocast_dtype(kind)
    return x.dtype


class _LinearInGrid(torch.autograd.Function):
    """``copy_to(x, out_axis) @ block^T`` as one Function (``linear_in_grid`` sums the output
    over ``in_axis`` after it), so backward can order its work around the collectives
    (:class:`axolab.parallel.overlap.Runtime` holds what is in flight, and with every
    optimization off issues them blocking, in order):

    - the block is all-gathered over Z in forward and again in backward instead of being kept
      alive between the two, so a rank holds only its 1/Z chunk of every weight between the
      passes (the point of depth-sharding);
    - the block comes from a prefetched Z all-gather when there is one;
    - the input gradient's all-reduce over the output axis (``copy_to``'s backward) starts
      before the weight-gradient matmul and is waited for after it;
    - the weight gradient's Z reduce-scatter is left running; the runtime adds it to
      ``param.grad`` a few layers later.

    ``modules`` are one layer, or several forward layers that read the same input (q/k/v,
    gate/up; :class:`axolab.parallel.fused_input.SharedInput`): their blocks are stacked
    (output rows), so the group costs one matmul and one all-reduce each way instead of one
    per layer. The output holds the layers' outputs side by side.
    """

    @staticmethod
    def forward(ctx, x, modules, *shards):
        runtime = modules[0].runtime
        dtype = _compute_dtype(x)
        xc = x.to(dtype)
        with torch.autocast(x.device.type, enabled=False):
            block = runtime.stacked_block(modules, shards, backward=False, dtype=dtype,
                                          backward_needs=ctx.needs_input_grad[0])
            y = runtime.matmul("forward", xc.reshape(-1, xc.shape[-1]), block)
        ctx.modules, ctx.dtype, ctx.in_dtype = modules, dtype, x.dtype
        ctx.save_for_backward(xc, *shards)
        # Not a view of y (what .view would give): callers may modify the output in place
        # (OLMo clamps q/k/v with clamp_), which autograd forbids on a custom Function's view.
        # The sum over the input axis is the caller's (linear_in_grid), outside this Function.
        return torch.ops.aten._unsafe_view(y, (*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, g):
        xc, *shards = ctx.saved_tensors
        modules = ctx.modules
        runtime, options = modules[0].runtime, modules[0].runtime.options
        runtime.begin_backward()
        g2 = g.to(ctx.dtype).reshape(-1, g.shape[-1])
        x2 = xc.reshape(-1, xc.shape[-1])
        dx = work = None
        if ctx.needs_input_grad[0]:
            block = runtime.stacked_block(modules, shards, backward=True, dtype=ctx.dtype)
            dx = runtime.matmul("input_grad", g2, block).to(ctx.in_dtype)
            axis = modules[0].out_axis
            if axis.size > 1:
                if options.overlap_input_grad:
                    work = torch.distributed.all_reduce(dx, group=axis.group, async_op=True)
                else:
                    comm.all_reduce_sum_(dx, axis)
            dx = dx.view(*g.shape[:-1], dx.shape[-1])
        dshards = [None] * len(modules)
        if any(ctx.needs_input_grad[2:]):
            dblock = runtime.matmul("weight_grad", g2, x2)
            rows = [m.layout.local_rows for m in modules]
            for i, (m, shard, part) in enumerate(zip(modules, shards, dblock.split(rows))):
                if not ctx.needs_input_grad[2 + i]:
                    continue  # a frozen member of a stacked group gets no gradient
                # Reduced over Z in the runtime's gradient dtype (the parameter's, or bf16:
                # the matmul's own output under autocast, sent as it is).
                part = part.to(runtime.depth_grad_dtype(shard))
                if runtime.defers_depth_grad(m):
                    runtime.reduce_scatter_later(m, part)
                else:
                    dshards[i] = m.layout.scatter_block_grad(part).to(shard.dtype)
        if work is not None:
            work.wait()
        return (dx, None, *dshards)


def linear_in_grid(x: torch.Tensor, modules: tuple) -> torch.Tensor:
    """``x`` through the forward layers ``modules`` at once (their outputs side by side), or
    through one layer of either orientation; no bias.

    The output's sum over the input axis is a Function of its own, after the matmul's: under
    activation checkpointing, torch stops a layer's recompute once backward's last saved
    tensor is back, and a custom Function's tensors are saved when its forward returns, so
    the last linear layer of a recomputed block (down_proj) skips its all-reduce, whose result
    backward never reads. Inside the matmul's Function it would run on every recompute."""
    y = _LinearInGrid.apply(x, modules, *(m.weight for m in modules))
    return comm.reduce_from_(y, modules[0].in_axis)


class ParallelLinear(ParallelModule):
    """``y = x W^T + b`` with W block-split over X/Y and depth-sharded over Z.

    ``padded_out`` (>= out_features) pads the output rows so they divide the output axis; the
    extra outputs are zero (the lm head masks them in the vocab-parallel loss).
    """

    def __init__(self, in_features: int, out_features: int, grid: Grid, *, transposed: bool = False,
                 bias: bool = False, padded_out: int | None = None,
                 sections: tuple[int, ...] = (), conv1d: bool = False, device=None, dtype=None):
        super().__init__()
        self.grid, self.transposed = grid, transposed
        self.in_features, self.out_features = in_features, out_features
        in_axis, out_axis = (grid.y, grid.x) if transposed else (grid.x, grid.y)
        self.in_axis, self.out_axis = in_axis, out_axis
        padded_out = padded_out or out_features
        if in_features % in_axis.size or padded_out % out_axis.size:
            raise ValueError(
                f"{'transposed' if transposed else 'forward'} linear {in_features}->{out_features}: "
                f"in_features must divide by {in_axis.name}={in_axis.size} and out_features by "
                f"{out_axis.name}={out_axis.size}")
        if sections and transposed:
            raise ValueError("a section-fused linear layer is a forward layer")
        # sections: output rows fused from several projections, each split over the output
        # axis on its own (see BlockLayout.sections); conv1d: the serial weight is stored
        # [in, out] (GPT-2's Conv1D), which only changes how it is read and written.
        self.layout = BlockLayout(out_features, in_features, padded_out, out_axis, in_axis, grid.z,
                                  tuple(sections), conv1d)
        self.weight = self._new_param((self.layout.chunk,), None, device, dtype)
        self.bias_layout = VectorLayout(padded_out, out_axis, out_features, tuple(sections)) \
            if bias else None
        self.bias = self._new_param((padded_out // out_axis.size,), None, device, dtype) if bias \
            else None
        # Set by parallelize to the model's runtime; a layer used on its own gets a blocking one.
        self.runtime = None
        # Set by parallelize when sibling layers read the same input (fused_input.SharedInput).
        self.shared_input = None

    @property
    def _local(self) -> bool:
        return (self.in_axis.size == 1 and self.out_axis.size == 1
                and self.layout.depth.size == 1 and not self.runtime.options.tune_matmul
                and self.weight.numel() == self.layout.block_numel)

    def extra_repr(self) -> str:
        kind = "transposed" if self.transposed else "forward"
        return (f"{kind}, in={self.in_features}/{self.in_axis.name}, "
                f"out={self.out_features}/{self.out_axis.name}, bias={self.bias is not None}, "
                f"shard={self.layout.chunk}")

    def local_weight(self) -> torch.Tensor:
        """This rank's [out/.., in/..] block, gathered over Z (differentiable)."""
        return self.layout.local_block(self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.runtime is None:
            self.runtime = Runtime(self.grid, Optimizations.none())
        if self._local:
            # Nothing to gather or reduce and no layout tuning: torch's own linear, the
            # serial model's kernels and autograd node, with no Python Function around it.
            self.runtime.enter(self)
            layout = self.layout  # at Z = 1 the shard is the whole block: a view, no slice
            y = F.linear(x, self.weight.view(layout.local_rows, layout.local_cols))
        elif self.shared_input is not None and self.runtime.options.fuse_shared_inputs:
            y = self.shared_input.output(self, x)
        else:
            y = linear_in_grid(x, (self,))
        return y if self.bias is None else y + self.bias

    def grad_specs(self) -> list[GradSpec]:
        specs = [GradSpec(self.weight, "data", 1, deferrable_z_grad=True)]
        if self.bias is not None:
            # The bias is split over the output axis and replicated over the input axis and Z.
            specs.append(GradSpec(self.bias, "batch", self.in_axis.size * self.grid.z.size))
        return specs

    def layout_of(self, name: str):
        if name == "weight":
            return self.layout
        if name == "bias" and self.bias is not None:
            return self.bias_layout
        raise KeyError(name)
