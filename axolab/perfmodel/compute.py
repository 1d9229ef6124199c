"""Computation time of one training step on one rank.

Matmuls are timed one by one with a roofline (``max(flops / sustained peak, bytes / memory
bandwidth)``), because tensor parallelism shrinks them until small ones are bandwidth-bound.
Each rank multiplies its ``[out/.., in/..]`` blocks with its batch shard: forward, input
gradient and weight gradient, plus one more forward per decoder layer under activation
checkpointing. Attention runs on the rank's heads (heads / Y) for its whole batch shard and is
repeated on every X rank. Elementwise work (norms, rotary, SiLU, softmax, casts, AdamW) is
charged as memory traffic, and every kernel pays a fixed overhead.
"""

from __future__ import annotations

from dataclasses import dataclass

from .comm import local_matrices, local_parameters
from .copies import layer_weight_copies
from .grid import GridShape
from .machines import Machine
from .shapes import ModelShapes
from .workload import Workload

# Memory passes (reads + writes, in elements) of the elementwise work per element of a
# tensor, forward / backward, counted from the eager PyTorch ops axolab's Llama runs.
RESIDUAL_PASSES = (14, 26)   # 2 RMSNorms (fp32 statistics) + 2 residual adds, on [n, H/X]
HEAD_PASSES = (8, 16)        # rotary, transposes, attention in/out, on [n, (q+2kv)/Y]
MLP_PASSES = (5, 11)         # SiLU(gate) * up, on [n, I/Y]
LOSS_PASSES = 14             # fp32 cast, max, exp, sum, softmax, gather; backward, on logits
ADAMW_PASSES = 20            # torch's AdamW: decay, 2 moment updates, sqrt, div, add eps,
                             # update; each op's reads + writes (both code paths)
ADAMW_CACHED_PASSES = 7      # the same on a tensor that stays in cache between its kernels:
                             # param, grad and both moments read once, all but grad written
ADAMW_WORKING_SET = 5        # param, grad, moments and the denominator's temporary
OPS_PER_LAYER = (45, 70)     # kernels per decoder layer, forward / backward
ADAMW_OPS = 10               # torch's AdamW ops per parameter tensor (single-tensor path):
                             # step count and its read, decay, lerp_, mul_, addcmul_, sqrt,
                             # div, add_, addcdiv_; the foreach path runs them once per group
CLIP_OPS = 14                # axolab.parallel.clip_grad_norm_'s ops, however many tensors: the
                             # norms and the scaling are multi-tensor ops, on CPUs too
CAUSAL_FRACTION = 0.5        # causal attention kernels skip the masked half


@dataclass(frozen=True)
class ComputeTime:
    """Seconds of computation per step, by kind, and the windows collectives can hide behind."""

    matmul_s: float
    """Linear layers and lm head (forward, recompute, input and weight gradients)."""
    attention_s: float
    """Attention scores and values on the local heads."""
    elementwise_s: float
    """Memory-bound kernels: norms, activations, loss, casts of gathered weights."""
    optimizer_s: float
    """AdamW, gradient clipping (the norm's reads and the in-place scaling) and gradient
    bookkeeping on the local shard, with their per-tensor kernels."""
    overhead_s: float
    """Fixed per-kernel cost."""
    windows: tuple[tuple[str, float], ...] = ()
    """Computation collectives can run behind, seconds per step (see
    :mod:`axolab.perfmodel.overlap`): "forward" (decoder layers' forward and recomputed
    passes), "backward" (their backward), "last_backward" (the decoder layers' backward of the
    last micro-step, where data-parallel buckets go), "weight_grad:<name>" (every weight-gradient
    matmul of that linear layer, ``lm_head`` included), "block_backward:<name>" (both gradient
    matmuls of a decoder layer's linear layer)."""

    def window(self, key: str) -> float:
        return dict(self.windows).get(key, 0.0)

    @property
    def total(self) -> float:
        return (self.matmul_s + self.attention_s + self.elementwise_s + self.optimizer_s
                + self.overhead_s)


def matmul_time(m: int, n: int, k: int, machine: Machine, work: Workload) -> float:
    """Roofline time of an ``[m, k] @ [k, n]`` matmul in the compute dtype."""
    flops = 2.0 * m * n * k
    nbytes = (m * k + k * n + m * n) * work.compute_bytes
    peak = machine.peak_flops(work.precision) * machine.matmul_efficiency
    return max(flops / peak, nbytes / (machine.memory_bandwidth_gb_s * 1e9)) + \
        machine.op_overhead_s


def _block_matmuls(rows: int, cols: int, n: int, machine, work) -> tuple[float, float, float]:
    """One rank's ``rows x cols`` block on n tokens: (forward, input grad, weight grad)."""
    return (matmul_time(n, rows, cols, machine, work), matmul_time(n, cols, rows, machine, work),
            matmul_time(rows, cols, n, machine, work))


def adamw_passes(shapes: ModelShapes, grid: GridShape, machine: Machine, pb: int) -> float:
    """Parameter-sized elements AdamW moves through memory on one rank: ADAMW_PASSES per
    element, except that the per-tensor path (CPUs) keeps a tensor whose working set fits the
    rank's cache between its kernels (ADAMW_CACHED_PASSES); vectors count as hidden-sized."""
    def passes(elements: int) -> int:
        fits = not machine.foreach_optimizer and \
            ADAMW_WORKING_SET * elements * pb <= machine.cache_bytes_per_rank
        return ADAMW_CACHED_PASSES if fits else ADAMW_PASSES

    vectors = shapes.local_vectors(grid.x, grid.y)
    return sum(m * count * passes(m) for m, count in local_matrices(shapes, grid)) + \
        vectors * passes(shapes.hidden)


def step_compute(shapes: ModelShapes, grid: GridShape, work: Workload,
                 machine: Machine) -> ComputeTime:
    micro = work.micro(grid.batch_shards)
    steps = work.local_batch(grid.batch_shards) // micro
    n = micro * work.seq_len
    passes = 2 if work.activation_checkpointing else 1
    pb, cb, L = work.param_bytes, work.compute_bytes, shapes.layers
    X, Y = grid.x, grid.y
    bw = machine.memory_bandwidth_gb_s * 1e9
    peak = machine.peak_flops(work.precision) * machine.matmul_efficiency
    vp = shapes.padded_vocab(Y)

    # One decoder layer on one micro-batch, split into one forward and the backward.
    fwd_mm = bwd_mm = 0.0
    weight_grad = []
    for lin in shapes.layer_linears:
        in_div, out_div = (Y, X) if lin.transposed else (X, Y)
        f, dx, dw = _block_matmuls(lin.out_features // out_div, lin.in_features // in_div, n,
                                   machine, work)
        fwd_mm, bwd_mm = fwd_mm + f, bwd_mm + dx + dw
        weight_grad.append((f"weight_grad:{lin.name}", L * steps * dw))
        weight_grad.append((f"block_backward:{lin.name}", L * steps * (dx + dw)))
    head_f, head_dx, head_dw = _block_matmuls(vp // Y, shapes.hidden // X, n, machine, work)
    weight_grad.append(("weight_grad:lm_head", steps * head_dw))
    head = head_f + head_dx + head_dw

    # Scores and values: 4 * S * head_dim FLOPs per token and head forward, twice that backward.
    local_heads = shapes.heads // Y
    attn = 4.0 * n * work.seq_len * shapes.head_dim * local_heads * CAUSAL_FRACTION \
        / (peak * machine.attention_efficiency)
    fwd_attn, bwd_attn = attn + machine.attention_call_s / 2, 2 * attn + \
        machine.attention_call_s / 2

    h, heads_w, i = shapes.hidden // X, \
        (shapes.heads + 2 * shapes.kv_heads) * shapes.head_dim // Y, shapes.intermediate // Y
    fwd_ew, bwd_ew = ((n * h * RESIDUAL_PASSES[k] * pb + n * heads_w * HEAD_PASSES[k] * cb
                       + n * i * MLP_PASSES[k] * cb) / bw for k in (0, 1))
    # The weight blocks' casts and copies around their gathers and gradient reductions.
    copies = layer_weight_copies(shapes, grid, work)
    fwd_ew += sum(c.nbytes for c in copies if not c.backward) / bw
    bwd_ew += sum(c.nbytes for c in copies if c.backward) / bw
    fwd_ops, bwd_ops = (ops * machine.op_overhead_s for ops in OPS_PER_LAYER)
    loss_ew = n * (vp // Y) * LOSS_PASSES * 4 / bw

    local = local_parameters(shapes, grid)
    grad_copies = 3 if grid.data > 1 else 0  # sync_gradients: cat, all-reduce, copy back
    optimizer = (adamw_passes(shapes, grid, machine, pb) + local * grad_copies) * pb / bw \
        + machine.op_overhead_s * ADAMW_OPS * \
        (2 if machine.foreach_optimizer else shapes.param_tensors)
    if work.grad_clip:  # the norm reads each gradient once, the scaling reads and writes it
        optimizer += local * 3 * pb / bw + machine.op_overhead_s * CLIP_OPS

    per_micro = L * passes, L  # forward (and recompute) passes, backward passes of a layer
    return ComputeTime(
        matmul_s=steps * (per_micro[0] * fwd_mm + per_micro[1] * bwd_mm + head),
        attention_s=steps * (per_micro[0] * fwd_attn + per_micro[1] * bwd_attn),
        elementwise_s=steps * (per_micro[0] * fwd_ew + per_micro[1] * bwd_ew + loss_ew),
        optimizer_s=optimizer,
        overhead_s=steps * (per_micro[0] * fwd_ops + per_micro[1] * bwd_ops
                            + 60 * machine.op_overhead_s),
        windows=(("forward", steps * per_micro[0] * (fwd_mm + fwd_attn + fwd_ew + fwd_ops)),
                 ("backward", steps * L * (bwd_mm + bwd_attn + bwd_ew + bwd_ops)),
                 ("last_backward", L * (bwd_mm + bwd_attn + bwd_ew + bwd_ops)),
                 *weight_grad))


def model_flops_per_step(shapes: ModelShapes, work: Workload) -> float:
    """Model FLOPs of one step (no recomputation), as axolab.metrics.flops_per_token counts."""
    per_token = 6.0 * shapes.matmul_params + 12.0 * shapes.layers * shapes.hidden * work.seq_len
    return per_token * work.global_batch * work.seq_len
