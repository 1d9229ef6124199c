"""Every collective of one axolab training step, the bytes it moves and the time it takes.

The list follows the code, not an idealized algorithm (see DESIGN.md "The 4D grid" and
axolab/parallel): per micro-step, each linear layer all-gathers its weight block over Z in
forward and again in backward (and once more when activation checkpointing recomputes the
layer), reduce-scatters the weight gradient over Z, all-reduces its output over its input axis
in forward and its input gradient over its output axis in backward. Norms all-reduce a sum of
squares over X; the vocab-parallel loss does three small all-reduces over Y. Per step,
gradients are all-reduced over D (depth-sharded weights) and over D*Z (replicated vectors).

Costs use ring algorithms: an all-reduce sends 2(g-1)/g of the tensor per rank, an all-gather
or reduce-scatter (g-1)/g of the full (gathered) tensor. A group stays inside a node when its
ranks, laid out X fastest, fit in one node; otherwise it is limited by the node's network share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .grid import GridShape
from .machines import COLLECTIVE_OPS, Machine
from .shapes import SHARED_INPUTS, LinearShape, ModelShapes
from .workload import Workload


@dataclass(frozen=True)
class Collective:
    """One kind of collective call in a step, repeated ``count`` times."""

    op: str
    """all_reduce, all_gather or reduce_scatter."""
    axis: str
    """Grid axis whose groups run it: x, y, z, data, batch (D*Z) or model (Z*Y*X)."""
    full_bytes: int
    """Bytes of the whole tensor: the reduced tensor, or the gathered output."""
    count: int
    """Calls per optimizer step."""
    what: str
    """What it carries (for reports)."""
    hides_behind: str = ""
    """The computation it runs behind when the run's Optimizations let it (see
    :mod:`axolab.perfmodel.overlap`): "forward" (a decoder layer's forward), "backward" (a
    decoder layer's backward), "weight_grad:<name>" (that layer's weight-gradient matmul),
    "block_backward:<name>" (both gradient matmuls of that layer, stacked names joined by
    "+": where a late backward prefetch hides), "data" (what is left of the last
    micro-step's backward); "" for the critical path."""


def ring_bytes(op: str, full_bytes: float, group_size: int) -> float:
    """Bytes one rank sends in a ring ``op`` over ``group_size`` ranks."""
    if op not in COLLECTIVE_OPS:
        raise ValueError(f"collective op {op!r}: expected one of {COLLECTIVE_OPS}")
    if group_size < 1:
        raise ValueError(f"group size must be >= 1, got {group_size}")
    factor = 2.0 if op == "all_reduce" else 1.0
    return factor * (group_size - 1) / group_size * full_bytes


def spans_one_node(group_size: int, stride: int, gpus_per_node: int, world: int) -> bool:
    """Whether every group of ``group_size`` ranks ``stride`` apart lies inside one node.

    Ranks fill nodes in order, so the groups of one axis interleave within blocks of
    ``group_size * stride`` consecutive ranks; the groups are node-local iff such a block fits
    in a node and nodes hold whole blocks (or the whole world fits in one node).
    """
    if group_size <= 1 or world <= gpus_per_node:
        return True
    span = group_size * stride
    return span <= gpus_per_node and gpus_per_node % span == 0


def link_bandwidth(machine: Machine, group_size: int, stride: int, world: int) -> float:
    """Bytes/s per rank available to a ring over such groups.

    Inside a node, the machine's bandwidth for that group size and placement
    (:meth:`Machine.intra_bandwidth`). Across nodes, the node's NICs are
    shared by the groups that leave the node at once: with stride >= gpus_per_node every rank
    of a node is in a different group (each gets ``inter_node_gb_s``); with a smaller stride
    only ``stride`` rings cross the node boundary, so each gets ``gpus_per_node / stride``
    shares (never more than the node's own links).
    """
    if spans_one_node(group_size, stride, machine.gpus_per_node, world):
        return machine.intra_bandwidth(group_size, stride) * 1e9
    crossing = min(stride, machine.gpus_per_node)
    share = machine.inter_node_gb_s * machine.gpus_per_node / crossing
    return min(share, machine.intra_node_gb_s) * 1e9


def collective_time(machine: Machine, op: str, full_bytes: float, group_size: int, stride: int,
                    world: int) -> float:
    """Seconds for one ``op`` on every group of the axis at once (they run in parallel)."""
    if group_size <= 1:
        return 0.0
    sent = ring_bytes(op, full_bytes, group_size)
    local = spans_one_node(group_size, stride, machine.gpus_per_node, world)
    measured = machine.measured(op, group_size, stride) if local else None
    if measured is not None:
        return measured.latency_s + sent / (measured.bandwidth_gb_s * 1e9)
    alpha = machine.intra_node_latency_s if local else machine.inter_node_latency_s
    # NCCL all-reduces switch to trees on large groups (log-depth latency, up and down); its
    # all-gathers and reduce-scatters are rings only (NCCL_ALGO: Tree is for AllReduce), so
    # they pay g-1 steps: what makes a 4096-wide Z group slow however large its messages.
    steps = 2 * math.ceil(math.log2(group_size)) if op == "all_reduce" else group_size - 1
    return alpha * steps + sent / link_bandwidth(machine, group_size, stride, world)


def block_elements(lin: LinearShape, grid: GridShape, rows: int | None = None) -> int:
    """Elements of the ``[out/.., in/..]`` block rank (x, y) owns (``rows``: padded rows)."""
    in_axis, out_axis = ("y", "x") if lin.transposed else ("x", "y")
    rows = rows if rows is not None else lin.out_features
    return (rows // grid.size(out_axis)) * (lin.in_features // grid.size(in_axis))


def _block(lin: LinearShape, grid: GridShape, rows: int | None = None) -> tuple[int, int]:
    """(elements of this rank's gathered block, of its Z chunk), Z-padding included."""
    chunk = -(-block_elements(lin, grid, rows) // grid.z)
    return chunk * grid.z, chunk


def local_matrices(shapes: ModelShapes, grid: GridShape) -> list[tuple[int, int]]:
    """The weight matrices one rank stores (Z chunks), as (elements of one, how many): each
    decoder-layer matrix ``layers`` times, the embedding and an untied lm head once."""
    vp = shapes.padded_vocab(grid.y)
    heads = [shapes.embedding] + ([] if shapes.tied_embeddings else [shapes.lm_head])
    return [(_block(lin, grid)[1], shapes.layers) for lin in shapes.layer_linears] + \
        [(_block(lin, grid, vp)[1], 1) for lin in heads]


def local_parameters(shapes: ModelShapes, grid: GridShape) -> int:
    """Parameter elements one rank stores: Z chunks of every matrix, its slice of the norm
    weights and biases (replicated over the other axes)."""
    return sum(elements * count for elements, count in local_matrices(shapes, grid)) + \
        shapes.local_vectors(grid.x, grid.y)


def layer_buckets(shapes: ModelShapes, grid: GridShape, work: Workload,
                  bucket_bytes: float) -> list[list[LinearShape]]:
    """One decoder layer's matrices in the Z buckets axolab's prefetcher groups them into:
    consecutive blocks up to ``bucket_bytes`` of gathered blocks as stored (a block larger
    than that alone); a bucket never spans two layers."""
    buckets, current, size = [], [], 0
    for lin in shapes.layer_linears:
        nbytes = _block(lin, grid)[0] * work.param_bytes
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append(lin)
        size += nbytes
    buckets.append(current)
    return buckets


def _z_buckets(shapes: ModelShapes, grid: GridShape, work: Workload,
               bucket_bytes: float) -> dict:
    """The Z buckets of one micro-step as axolab's prefetcher groups them: each decoder
    layer's matrices up to ``bucket_bytes`` of gathered blocks as stored (a bucket never spans
    two layers), the lm head alone. Each bucket is gathered once in forward and once in
    backward (an activation-checkpoint recompute keeps its blocks for the layer's backward),
    where the last bucket comes first: the lm head keeps its forward block with the
    prefetcher on, and without it is gathered with nothing to hide behind; the bucket before
    it (the last decoder layer's last) keeps its forward blocks too unless backward prefetches
    late. Its gradients are reduce-scattered together once.
    Returns {(gathered elements, backward tag): (forward gathers, backward gathers,
    reduce-scatters, blocks)}."""
    vp = shapes.padded_vocab(grid.y)
    per_layer = [[_block(lin, grid)[0] for lin in bucket]
                 for bucket in layer_buckets(shapes, grid, work, bucket_bytes)]
    buckets = per_layer * shapes.layers + [[_block(shapes.lm_head, grid, vp)[0]]]
    opts = work.optimizations
    # Kept from forward for backward (or its recompute): the lm head's bucket with the
    # prefetcher on, and the last decoder layer's last bucket unless backward prefetches late.
    kept = {len(buckets) - 1} if opts.prefetch_weights else set()
    if opts.prefetch_weights and not opts.prefetch_late_in_backward and len(buckets) > 1:
        kept.add(len(buckets) - 2)
    out: dict = {}
    for i, bucket in enumerate(buckets):
        last = i == len(buckets) - 1
        key = (sum(bucket), "" if last else "backward")
        f, b, r, n = out.get(key, (0, 0, 0, len(bucket)))
        out[key] = (f + 1, b + (0 if i in kept else 1), r + 1, n)
    return out


def step_collectives(shapes: ModelShapes, grid: GridShape, work: Workload) -> list[Collective]:
    """The collectives of one optimizer step on one rank (axes of size 1 have none)."""
    micro = work.micro(grid.batch_shards)
    steps = work.local_batch(grid.batch_shards) // micro
    n = micro * work.seq_len  # tokens per micro-step on this rank
    fwd = 2 if work.activation_checkpointing else 1  # forward passes of each decoder layer
    pb, cb, L = work.param_bytes, work.compute_bytes, shapes.layers
    vp = shapes.padded_vocab(grid.y)
    out: list[Collective] = []

    opts = work.optimizations

    def add(op, axis, nbytes, count, what, hides_behind=""):
        if grid.size(axis) > 1 and count > 0:
            out.append(Collective(op, axis, int(nbytes), int(count), what, hides_behind))

    def linear(lin: LinearShape, layers: int, passes: int, rows: int | None = None,
               output_passes: int | None = None, comm_rows: int | None = None,
               what: str | None = None, head: bool = False):
        """comm_rows: output rows its activation collectives carry (a stacked group's sum;
        0 for a group member whose collectives the group's first member carries)."""
        in_axis, out_axis = ("y", "x") if lin.transposed else ("x", "y")
        rows = rows or lin.out_features
        comm_rows = rows if comm_rows is None else comm_rows
        what = what or lin.name
        gathered, _ = _block(lin, grid, rows)
        # Weight blocks are cast to the compute dtype before the Z all-gather (half the bytes
        # under bf16); their gradients are reduce-scattered in the parameter dtype, or in
        # bf16 with Optimizations.depth_grad_dtype="bf16". The
        # prefetcher starts each layer's gather while the layer before it computes; with it
        # the lm head keeps its forward block for backward, else its backward gather has
        # nothing before it to hide behind.
        prefetch = opts.prefetch_weights
        # A recomputed layer keeps its blocks for its backward, which follows at once; the
        # last decoder layer's last matrix keeps its forward block for its backward (or its
        # recompute) unless backward prefetches late.
        if not opts.gather_bucket_mb:
            kept = steps if prefetch and not opts.prefetch_late_in_backward and \
                not head and lin.name == shapes.layer_linears[-1].name else 0
            add("all_gather", "z", gathered * cb,
                layers * steps * passes - (kept if passes > 1 else 0), f"{lin.name} weight",
                "forward" if prefetch else "")
            add("all_gather", "z", gathered * cb,
                0 if (head and prefetch) or passes > 1 else layers * steps - kept,
                f"{lin.name} weight (backward)", "backward" if prefetch else "")
        if not (opts.gather_bucket_mb and opts.overlap_depth_grad):  # else per bucket
            add("reduce_scatter", "z", gathered * work.depth_grad_bytes, layers * steps,
                f"{lin.name} weight grad",
                "backward" if opts.overlap_depth_grad else "")
        if not comm_rows:
            return
        add("all_reduce", in_axis, n * comm_rows // grid.size(out_axis) * cb,
            layers * steps * (output_passes or passes), f"{what} output")
        grad_bytes = pb if lin.input_is_residual else cb
        add("all_reduce", out_axis, n * lin.in_features // grid.size(in_axis) * grad_bytes,
            layers * steps, f"{what} input grad",
            f"weight_grad:{what}" if opts.overlap_input_grad else "")

    linears = shapes.layer_linears
    # Sibling layers that read one input are stacked where they communicate
    # (Optimizations.fuse_shared_inputs): one output all-reduce and one input-gradient
    # all-reduce per group.
    stacked: dict[str, tuple[int, str]] = {}
    if opts.fuse_shared_inputs and (grid.x > 1 or grid.y > 1):
        by_name = {lin.name: lin for lin in linears}
        for group in SHARED_INPUTS:
            if all(name in by_name for name in group):
                stacked.update({name: (0, "") for name in group[1:]})
                stacked[group[0]] = (sum(by_name[n].out_features for n in group), "+".join(group))
    for lin in linears:
        comm_rows, what = stacked.get(lin.name, (None, None))
        # torch's non-reentrant checkpoint stops recomputing a layer once the last tensor
        # backward needs is back: the last matmul runs again (it saves its input), but the
        # all-reduce of its output, a Function of its own after the matmul's
        # (axolab.parallel.linear.linear_in_grid), does not.
        linear(lin, L, fwd, output_passes=1 if lin is linears[-1] else None,
               comm_rows=comm_rows, what=what or None)
    linear(shapes.lm_head, 1, 1, vp, head=True)
    if opts.gather_bucket_mb and grid.z > 1:
        first = linears[0].name
        first_block = stacked.get(first, (0, ""))[1] or first  # with its stacked siblings
        for (elements, backward_tag), (count_f, count_b, count_r, blocks) in \
                _z_buckets(shapes, grid, work, opts.gather_bucket_mb * 2**20).items():
            what = f"weight bucket of {blocks} block(s)"
            add("all_gather", "z", elements * cb, count_f * steps, what,
                "forward" if opts.prefetch_weights else "")
            if backward_tag and opts.prefetch_late_in_backward:
                # Started when the bucket before it (in backward) reaches its last block: the
                # first block of a decoder layer, with its stacked siblings.
                backward_tag = f"block_backward:{first_block}"
            add("all_gather", "z", elements * cb, count_b * steps, what + " (backward)",
                backward_tag if opts.prefetch_weights else "")
            if opts.overlap_depth_grad:  # blocking reduce-scatters go one matrix at a time
                add("reduce_scatter", "z", elements * work.depth_grad_bytes, count_r * steps,
                    what + " grad",
                    "backward")
    # Norm statistics: a [n, 1] fp32 sum over X in forward (each pass) and in backward.
    add("all_reduce", "x", n * 4, steps * (2 * L * fwd + 1), "norm sum of squares")
    add("all_reduce", "x", n * 4, steps * (2 * L + 1), "norm sum of squares grad")
    # Embedding: gathered once per micro-step (its backward needs no weight), output summed
    # over Y in the table's dtype, no backward all-reduce (reduce_from's backward is identity).
    emb_gathered, _ = _block(shapes.embedding, grid, vp)
    add("all_gather", "z", emb_gathered * pb, steps, "embedding weight")
    add("reduce_scatter", "z", emb_gathered * pb, steps, "embedding weight grad")
    add("all_reduce", "y", n * (shapes.hidden // grid.x) * pb, steps, "embedding output")
    # Vocab-parallel cross-entropy: row max, sum of exp and target logit over Y, in fp32.
    add("all_reduce", "y", n * 4, 3 * steps, "cross-entropy statistics")
    add("all_reduce", "batch", 8, steps, "token id check")
    add("all_reduce", "batch", 16, steps, "kept-token and bad-label counts")
    add("all_reduce", "batch", 4, steps, "loss sum")
    add("all_reduce", "batch", 8, 1, "kept tokens of the step")
    # sync_gradients: one bucket per axis and dtype.
    vectors = shapes.local_vectors(grid.x, grid.y)
    bucketed = "data" if opts.bucket_data_grads else ""
    add("all_reduce", "data", (local_parameters(shapes, grid) - vectors) * pb, 1,
        "weight gradients", bucketed)
    add("all_reduce", "batch", vectors * pb, 1, "norm/bias gradients", bucketed)
    if work.grad_clip:
        add("all_reduce", "model", 4, 1, "gradient norm")
    return out


@dataclass(frozen=True)
class CommTime:
    """Communication time of one step, by axis and by the computation it may hide behind."""

    by_axis: dict
    """Seconds per axis (x, y, z, data, batch, model), every collective charged in full."""
    bytes_by_axis: dict
    """Bytes one rank sends per step, per axis (ring formulas)."""
    calls: int
    """Collective calls per step."""
    timed: tuple = ()
    """(hides_behind tag, seconds per step) of every collective kind, for the overlap model."""
    bucketed_bytes: float = 0.0
    """Full bytes of the data-parallel gradient all-reduces that run in buckets."""

    @property
    def total(self) -> float:
        # fsum over the collectives themselves (``timed`` lists every one, as ``by_axis``
        # sums them): the same float as the overlap model's total, whatever the order.
        return math.fsum(seconds for _, seconds in self.timed)


def comm_time(shapes: ModelShapes, grid: GridShape, work: Workload, machine: Machine) -> CommTime:
    by_axis: dict[str, float] = {}
    sent: dict[str, float] = {}
    timed = []
    calls, bucketed = 0, 0.0
    for c in step_collectives(shapes, grid, work):
        g, s = grid.size(c.axis), grid.stride(c.axis)
        t = c.count * collective_time(machine, c.op, c.full_bytes, g, s, grid.world)
        if not c.hides_behind:  # a wait on the critical path: the slowest rank's delay too
            t += c.count * machine.sync_for(g)
        by_axis[c.axis] = by_axis.get(c.axis, 0.0) + t
        sent[c.axis] = sent.get(c.axis, 0.0) + c.count * ring_bytes(c.op, c.full_bytes, g)
        timed.append((c.hides_behind, t))
        calls += c.count
        if c.hides_behind == "data":
            bucketed += c.full_bytes
    return CommTime(by_axis, sent, calls, tuple(timed), bucketed)
