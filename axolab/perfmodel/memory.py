"""Peak memory of one rank during an axolab training step.

Persistent: the rank's parameter shard, AdamW's two moments (axolab trains fp32 parameters,
which are their own master copy: 4 + 8 bytes per parameter), and, from the first backward to
``zero_grad``, fp32 gradients (4 more). On top of that the step passes through three phases,
and the peak is the largest:

- forward/backward of a micro-step: saved activations, the vocab-sharded logits and the
  cross-entropy's fp32 softmax, the transient gathered weight block of the largest layer
  (with its bf16 copy and the weight-gradient buffers of backward), and the gradients
  already accumulated by earlier micro-steps;
- ``sync_gradients``: the gradients plus the flat buffer they are concatenated into;
- ``optimizer.step``: the gradients plus the foreach temporaries (GPU) of AdamW;
- a checkpoint save (after ``zero_grad``, so without gradients): the writer's staging buffer
  of ``checkpoint_chunk_bytes``, the only device memory a save adds (each full tensor is
  assembled in host memory, the other ranks send views of their shards).

Activations are counted tensor by tensor from what autograd saves in axolab's Llama layer (norm
inputs in the residual dtype, the inputs each matmul keeps in the compute dtype, attention
q/k/v/output and log-sum-exp, four MLP intermediates), at their sharded sizes: ``[b, S, H/X]``
for the residual stream, ``/Y`` for heads and the MLP, on ``b = micro-batch`` rows.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from .comm import block_elements, local_parameters
from .grid import GridShape
from .machines import Machine
from .shapes import ModelShapes
from .workload import Workload

GIB = 2**30
# axolab.checkpoint.save.DEFAULT_CHUNK_BYTES, repeated so the planner does not import torch
# (tests/test_perfmodel.py checks that the two agree).
CHECKPOINT_CHUNK_BYTES = 64 * 2**20


@dataclass(frozen=True)
class MemoryBreakdown:
    """Bytes per rank; ``total`` is the modelled peak."""

    parameters: float
    """The rank's parameter shard (fp32)."""
    gradients: float
    """Its gradient (fp32, same shape)."""
    optimizer: float
    """AdamW exp_avg and exp_avg_sq."""
    activations: float
    """Saved activations of one micro-step at the start of backward, including the layer
    being recomputed under activation checkpointing."""
    logits: float
    """Logits shard ``[b, S, V/Y]`` and the loss's fp32 softmax/temporaries."""
    weight_buffers: float
    """The largest layer's gathered block, its compute-dtype copy and gradient buffers."""
    step_buffers: float
    """The larger of the flat gradient bucket of sync_gradients and AdamW temporaries."""
    checkpoint_chunk: float
    """Device staging of a checkpoint save on a writing rank: one chunk of
    ``checkpoint_chunk_bytes`` (less for a model whose largest tensor is smaller), on top of
    the persistent state (gradients are freed by then)."""
    total: float
    """Modelled peak (persistent + the largest phase)."""

    def as_gib(self) -> dict:
        return {f.name: getattr(self, f.name) / GIB for f in fields(self)}


def layer_activation_bytes(shapes: ModelShapes, grid: GridShape, work: Workload,
                           tokens: int) -> float:
    """Bytes autograd saves for one decoder layer on ``tokens`` tokens of this rank."""
    pb, cb = work.param_bytes, work.compute_bytes
    h = shapes.hidden // grid.x
    q = shapes.heads * shapes.head_dim // grid.y
    kv = shapes.kv_heads * shapes.head_dim // grid.y
    i = shapes.intermediate // grid.y

    def norm(consumers: int) -> float:
        # input and normalized value in the residual dtype; the output is kept by each
        # consumer matmul as its compute-dtype copy (one shared tensor when no cast happens).
        out = consumers * h * cb if work.precision == "bf16" else h * pb
        return 2 * h * pb + out

    attention = (2 * q + 2 * kv) * cb + q * cb + (shapes.heads // grid.y) * 4
    mlp = 4 * i * cb
    return tokens * (norm(3) + norm(2) + attention + mlp)


def activation_bytes(shapes: ModelShapes, grid: GridShape, work: Workload, tokens: int) -> float:
    """Saved activations at the start of backward (the last layer recomputed if checkpointing),
    plus the final norm and the backward's transient gradients of one layer."""
    pb, cb = work.param_bytes, work.compute_bytes
    h = shapes.hidden // grid.x
    layer = layer_activation_bytes(shapes, grid, work, tokens)
    if work.activation_checkpointing:
        saved = shapes.layers * tokens * h * pb + layer  # layer inputs + one recomputed layer
    else:
        saved = shapes.layers * layer
    final_norm = tokens * (2 * h * pb + (h * cb if work.precision == "bf16" else h * pb))
    widest = max(h, shapes.intermediate // grid.y,
                 shapes.heads * shapes.head_dim // grid.y)
    transient = 2 * tokens * widest * pb  # gradients flowing through the layer in backward
    return saved + final_norm + transient


def logits_bytes(shapes: ModelShapes, grid: GridShape, work: Workload, tokens: int) -> float:
    """Logits ``[tokens, V/Y]`` in the compute dtype (kept in the model output) and the loss's
    fp32 copy, shifted values and softmax while the cross-entropy runs."""
    cast = 4 if work.precision == "bf16" else 0
    return tokens * (shapes.padded_vocab(grid.y) // grid.y) * (work.compute_bytes + cast + 8)


def _largest_block(shapes: ModelShapes, grid: GridShape) -> int:
    """Elements of the largest (x, y) block of any weight (the lm head or a layer's linear)."""
    vp = shapes.padded_vocab(grid.y)
    return max([block_elements(lin, grid) for lin in shapes.layer_linears]
               + [block_elements(shapes.lm_head, grid, vp)])


def checkpoint_staging_bytes(shapes: ModelShapes, grid: GridShape, work: Workload,
                             chunk_bytes: int = CHECKPOINT_CHUNK_BYTES) -> float:
    """A save's device staging on a writer: one chunk, or less when every rank's shard of the
    largest tensor fits in one (the Z*Y*X shards of the largest block, ~ the full tensor)."""
    return float(min(chunk_bytes, _largest_block(shapes, grid) * grid.x * grid.y
                     * work.param_bytes))


def weight_buffer_bytes(shapes: ModelShapes, grid: GridShape, work: Workload) -> float:
    """Weight blocks gathered over Z and held (a decoder layer's bucket, or one block, and the
    next one prefetched; the lm head alone), the block cut out of a bucket for its matmul, the
    compute-dtype copies under bf16, and in backward the weight gradients: with deferred Z
    reduce-scatters, ``max_in_flight`` sent buckets plus a block's gradient; blocking, a
    block's gradient and its padded copy (in ``Workload.depth_grad_bytes``)."""
    pb, cb = work.param_bytes, work.compute_bytes
    head = block_elements(shapes.lm_head, grid, shapes.padded_vocab(grid.y))
    layer_block = max(block_elements(lin, grid) for lin in shapes.layer_linears)
    block = max(head, layer_block)
    copies = 2 * cb if work.precision == "bf16" else 0  # forward cast, bf16 weight gradient
    opts = work.optimizations
    bucket = layer_block
    if grid.z > 1 and opts.gather_bucket_mb:
        layer = sum(block_elements(lin, grid) for lin in shapes.layer_linears)
        bucket = max(layer_block, min(layer, opts.gather_bucket_mb * 2**20 / pb))
    held = cut = 0.0
    if grid.z > 1:
        # A late backward prefetch holds the next bucket only while the last block computes.
        ahead = bucket if opts.prefetch_weights and not opts.prefetch_late_in_backward else 0
        held = (max(bucket, head) + ahead) * cb
        cut = block * cb if opts.gather_bucket_mb else 0.0
    if grid.z > 1 and opts.overlap_depth_grad:
        # At the peak, the start of a decoder layer's backward (its activations all alive):
        # the buckets in flight and the layer's first block gradient. The layer's gradients
        # and their bucket buffer are both held only at its end, its activations freed.
        grads = (opts.max_in_flight * max(bucket, head) + block) * work.depth_grad_bytes
    else:
        grads = block * (pb + work.depth_grad_bytes)
    return block * copies + held + cut + grads


def memory_per_rank(shapes: ModelShapes, grid: GridShape, work: Workload,
                    machine: Machine | None = None,
                    checkpoint_chunk_bytes: int = CHECKPOINT_CHUNK_BYTES) -> MemoryBreakdown:
    """Modelled peak memory of one rank (every rank holds the same sizes, up to padding).
    ``checkpoint_chunk_bytes``: the ``chunk_bytes`` checkpoints are saved with."""
    micro = work.micro(grid.batch_shards)
    steps = work.local_batch(grid.batch_shards) // micro
    tokens = micro * work.seq_len
    pb = work.param_bytes
    local = local_parameters(shapes, grid)
    params, grads, optimizer = local * pb, local * pb, 2 * local * pb
    acts = activation_bytes(shapes, grid, work, tokens)
    logits = logits_bytes(shapes, grid, work, tokens)
    weights = weight_buffer_bytes(shapes, grid, work)
    # Gradients already there during a micro-step's backward: all of them after the first
    # micro-step; in a single micro-step, the lm head's and embedding's come first and the
    # rest replace activations as backward frees them.
    vp = shapes.padded_vocab(grid.y)
    head_grads = 2 * (vp // grid.y) * (shapes.hidden // grid.x) // grid.z * pb
    grads_live = grads if steps > 1 else min(grads, head_grads)
    fwd_bwd = grads_live + acts + logits + weights
    flat = grads if grid.data > 1 else \
        (shapes.local_vectors(grid.x, grid.y) * pb if grid.batch_shards > 1 else 0)
    foreach = params if (machine is None or machine.foreach_optimizer) else 0
    step = max(flat, foreach)
    save = checkpoint_staging_bytes(shapes, grid, work, checkpoint_chunk_bytes)
    total = params + optimizer + max(fwd_bwd, grads + step, save)
    return MemoryBreakdown(params, grads, optimizer, acts, logits, weights, step, save, total)
