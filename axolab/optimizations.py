"""Switches of the performance optimizations; none of them changes what is computed."""

from __future__ import annotations

from dataclasses import dataclass

DEPTH_GRAD_DTYPES = ("fp32", "bf16")


@dataclass(frozen=True)
class Optimizations:
    """How a parallelized model overlaps communication with computation and picks matmul
    layouts. Every switch leaves losses and gradients unchanged (to fp32 rounding), except
    ``depth_grad_dtype="bf16"``, which rounds the weight gradients' Z sums to bf16."""

    overlap_input_grad: bool = True
    """Start the all-reduce of a linear layer's input gradient before computing its weight
    gradient, and wait for it after: the two are independent."""
    overlap_depth_grad: bool = True
    """Reduce-scatter weight gradients over Z without waiting, a bucket (``gather_bucket_mb``)
    at a time: the backward of earlier layers runs meanwhile; at most ``max_in_flight`` are
    outstanding, the rest complete at the end of backward."""
    prefetch_weights: bool = True
    """All-gather the next layer's Z-sharded weights while this layer computes, in forward, in
    activation-checkpoint recompute and in backward (where the order is reversed)."""
    prefetch_late_in_backward: bool = False
    """In backward, start the next bucket's gather when the current bucket's last block is
    used (its gradient matmuls hide the gather) instead of when its first block is: one
    decoder layer held gathered for most of backward instead of two, for less overlap (as
    FSDP's ``BACKWARD_POST`` against its default ``BACKWARD_PRE``)."""
    gather_bucket_mb: float = 16.0
    """Gather the Z-sharded weight blocks of one decoder layer's linear layers in one
    all-gather, up to this many MiB of gathered blocks as stored: a layer in one round trip
    instead of one per matrix, as FSDP gathers a wrapped layer. Buckets never span two decoder
    layers (the memory of one layer, plus the next one prefetched); a bucket's blocks stay
    gathered until each is used. With ``overlap_depth_grad`` their gradients are
    reduce-scattered in the same buckets. 0: one all-gather (and reduce-scatter) per
    matrix."""
    bucket_data_grads: bool = True
    """All-reduce gradients over the data-parallel axes in buckets launched from backward
    hooks as soon as a bucket's gradients are complete, instead of all at once afterwards
    (in :func:`axolab.parallel.sync_gradients`). Gradients are summed, not averaged as by
    DDP, so a gradient must be reduced exactly once: with this switch each backward outside
    :func:`axolab.parallel.no_data_sync` reduces what it adds (gradients an earlier backward
    reduced and that are still there, not zeroed, are divided by their axis size before it
    adds to them), and without it ``sync_gradients`` reduces whatever has accumulated.
    Micro-steps accumulated with or without ``no_data_sync`` thus give the same gradients
    either way, whether ``sync_gradients`` is called once after the last of them or after
    each (with this switch off it records what it reduced and the next backward divides it
    the same way); wrapping all but the last in ``no_data_sync`` spares their reductions.
    A weight whose gradient grows after its bucket was launched (used by two forward passes
    whose losses are summed) is reduced again at the end of backward; frozen parameters are
    not bucketed. Like DDP's,
    the end-of-backward bookkeeping assumes non-reentrant activation checkpointing
    (``use_reentrant=False``, what axolab's training loop uses)."""
    bucket_mb: float = 16.0
    """Bucket size for ``bucket_data_grads``, in MiB of gradients."""
    max_in_flight: int = 1
    """Depth reduce-scatters outstanding at once; each holds the full gradients of its bucket
    (a decoder layer's, see ``gather_bucket_mb``). Collectives of one group run in order, so
    one outstanding already overlaps with the backward of the layer before, as in FSDP."""
    fuse_shared_inputs: bool = True
    """Compute sibling forward layers that read the same input (q/k/v, gate/up; the plan's
    ``shared_inputs``) as one stacked matmul: one all-reduce each way for the group instead
    of one per layer (see :mod:`axolab.parallel.fused_input`)."""
    depth_grad_dtype: str = "fp32"
    """dtype the linear layers' weight gradients are reduce-scattered over Z in. "fp32" (the
    dtype of the parameters) sums the Z ranks' gradients exactly as the serial model would,
    to fp32 rounding. "bf16" sends half the bytes: under bf16 autocast a weight gradient
    leaves its matmul in bf16, and is reduce-scattered as it is; its sum over Z is rounded to
    bf16 before it is added to the fp32 ``.grad`` (what FSDP2's
    ``MixedPrecisionPolicy(reduce_dtype=torch.bfloat16)`` does, and what AxoNN's depth
    reduce-scatter does in Megatron-AxoNN's bf16 runs, whose weights are bf16). The embedding
    table's gradient and the data-parallel all-reduces stay fp32."""
    tune_matmul: bool = False
    """Time the equivalent layouts of each matmul shape (``x W^T`` as NT, NN on a transposed
    copy, or the transposed problem) once and use the fastest in forward and backward."""

    def __post_init__(self):
        if self.gather_bucket_mb < 0:
            raise ValueError(f"gather_bucket_mb must be >= 0, got {self.gather_bucket_mb}")
        if self.depth_grad_dtype not in DEPTH_GRAD_DTYPES:
            raise ValueError(f"depth_grad_dtype {self.depth_grad_dtype!r}: expected one of "
                             f"{DEPTH_GRAD_DTYPES}")
        if self.bucket_mb <= 0 or self.max_in_flight < 1:
            raise ValueError(f"bucket_mb must be > 0 and max_in_flight >= 1, got "
                             f"{self.bucket_mb} and {self.max_in_flight}")

    @classmethod
    def none(cls) -> "Optimizations":
        """Every optimization off: blocking collectives in program order."""
        return cls(overlap_input_grad=False, overlap_depth_grad=False, prefetch_weights=False,
                   gather_bucket_mb=0.0, bucket_data_grads=False, fuse_shared_inputs=False,
                   tune_matmul=False)
