"""Depth (Z) sharding on 8 gloo ranks: what autograd keeps of a sharded weight between the
passes, and the Z collectives of a training step (bucketed gathers and reduce-scatters, a
frozen bucket member, activation checkpointing) against one collective per matrix."""

import pytest
import torch
from models import rel_err, tiny_model


def _grid(shape):
    from axolab.parallel import Grid

    n = shape[0] * shape[1] * shape[2] * shape[3]
    return Grid.init(*shape, ranks=range(n))


def saved_between_passes(z):
    """Bytes autograd keeps from forward to backward for one layer: depth-sharding must cut the
    weight's share by Z (the gathered block is rebuilt in backward, not kept)."""
    from axolab.parallel.linear import ParallelLinear

    grid = _grid((1, z, 1, 1))
    if grid is None:
        return None
    layer = ParallelLinear(512, 512, grid)
    torch.nn.init.normal_(layer.weight)
    x = torch.randn(2, 512, requires_grad=True)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = layer(x)
    y.sum().backward()
    return sum(seen.values())


def test_depth_sharding_frees_weight_memory_between_passes(pool8):
    one = pool8.run(saved_between_passes, 1)[0]
    two = pool8.run(saved_between_passes, 2)[0]
    weight = 512 * 512 * 4
    assert one >= weight, one
    assert one - two >= 0.45 * weight, f"z=1 keeps {one} bytes, z=2 keeps {two}"


def z_collectives_per_step(bucket_mb: float, freeze: str = "", checkpointing: bool = False):
    """All-gathers and reduce-scatters over Z in the second training step of a 2-layer Llama
    (the first learns the layer order), with Z buckets or one collective per matrix; the
    step's loss and the gradients it leaves. ``freeze``: a parameter left without gradient."""
    import axolab.parallel.comm as pc
    from axolab.parallel import Optimizations, parallelize
    from axolab.activation_checkpointing import enable_activation_checkpointing

    grid = _grid((1, 2, 2, 2))
    model = parallelize(tiny_model("llama", tied=False), grid,
                        optimizations=Optimizations(gather_bucket_mb=bucket_mb))
    if freeze:
        model.get_parameter(freeze).requires_grad_(False)
    if checkpointing:
        enable_activation_checkpointing(model)
        model.train()
    ids = torch.randint(0, 99, (4, 6), generator=torch.Generator().manual_seed(0))
    ids = grid.shard_batch(ids)
    real_gather, real_scatter = pc._ALL_GATHER, pc._REDUCE_SCATTER
    gathers, scatters = [], []

    def counting(real, calls):
        def call(out, inp, *args, group=None, **kwargs):
            if group is grid.z.group:
                calls.append(inp.numel())
            return real(out, inp, *args, group=group, **kwargs)
        return call

    losses = []
    for step in range(2):
        model.zero_grad()
        gathers.clear()
        scatters.clear()
        pc._ALL_GATHER = counting(real_gather, gathers)
        pc._REDUCE_SCATTER = counting(real_scatter, scatters)
        try:
            out = model(input_ids=ids, labels=ids)
            out.loss.backward()
        finally:
            pc._ALL_GATHER, pc._REDUCE_SCATTER = real_gather, real_scatter
        losses.append(out.loss.detach())
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    last = model.model.layers[-1]
    # The last layer's matrices but its last (down_proj), as stored on this rank: kept
    # gathered from forward for backward when bucketed, gathered again when not.
    rest = sum(m.weight.numel() for m in (last.self_attn.q_proj, last.self_attn.k_proj,
                                          last.self_attn.v_proj, last.self_attn.o_proj,
                                          last.mlp.gate_proj, last.mlp.up_proj))
    return len(gathers), sum(gathers), len(scatters), sum(scatters), losses, grads, rest


def test_weight_gathers_and_gradients_go_in_buckets(pool8):
    apart = pool8.run(z_collectives_per_step, 0.0, timeout=120)
    bucketed = pool8.run(z_collectives_per_step, 16.0, timeout=120)
    linears = 2 * 7 + 1  # decoder layers' matrices and the lm head
    buckets = 2 + 1  # one per decoder layer (never across two), the lm head alone
    for a, b in zip(apart, bucketed):
        (n_a, bytes_a, rs_a, rs_bytes_a, loss_a, grads_a, rest) = a
        (n_b, bytes_b, rs_b, rs_bytes_b, loss_b, grads_b, _) = b
        # Forward and backward: one gather per matrix against one per bucket. The lm head's
        # block is kept from forward for backward, and so is the last decoder layer's last
        # bucket (all of it, or its last matrix); the embedding is gathered once.
        assert n_a - n_b == 2 * (linears - buckets), (n_a, n_b)
        assert n_b == 2 * buckets - 2 + 1, n_b
        # The same blocks move, in fewer calls, but for the last layer's kept bucket.
        assert bytes_a - bytes_b == rest > 0, (bytes_a, bytes_b, rest)
        # One gradient reduce-scatter per bucket (the embedding's stays its own).
        assert rs_a - rs_b == linears - buckets, (rs_a, rs_b)
        assert rs_bytes_a == rs_bytes_b
        assert all(torch.equal(a, b) for a, b in zip(loss_a, loss_b))
        assert grads_a.keys() == grads_b.keys()
        assert all(rel_err(grads_a[k], grads_b[k]) < 1e-6 for k in grads_a)


def test_a_bucket_with_a_frozen_member_still_reduces_the_others(pool8):
    frozen = "model.layers.0.self_attn.k_proj.weight"
    apart = pool8.run(z_collectives_per_step, 0.0, frozen, timeout=120)
    bucketed = pool8.run(z_collectives_per_step, 16.0, frozen, timeout=120)
    for a, b in zip(apart, bucketed):
        grads_a, grads_b = a[5], b[5]
        assert frozen not in grads_b and grads_a.keys() == grads_b.keys()
        assert "model.layers.0.self_attn.q_proj.weight" in grads_b
        assert all(rel_err(grads_a[k], grads_b[k]) < 1e-6 for k in grads_a)


def test_a_recomputed_layer_keeps_its_blocks_for_its_backward(pool8):
    plain = pool8.run(z_collectives_per_step, 16.0, "", False, timeout=120)
    recomputed = pool8.run(z_collectives_per_step, 16.0, "", True, timeout=120)
    for a, b in zip(plain, recomputed):
        # Forward, then each layer's recompute and backward from one gather: as many gathers
        # as without checkpointing (it was one more per layer, and a wasted forward prefetch).
        assert b[0] == a[0] and b[1] == a[1], (a[:2], b[:2])
        assert all(torch.equal(x, y) for x, y in zip(a[4], b[4]))
        assert a[5].keys() == b[5].keys()
        assert all(rel_err(a[5][k], b[5][k]) < 1e-5 for k in a[5])


def weight_copies_per_layer(shape, bf16: bool = False, bucket_mb: float = 16.0):
    """Elements the copies of one decoder layer's weights move in one training step (forward,
    backward, gradient reductions), counted as torch dispatches them (``aten::copy_`` under
    torch.profiler, nested ones included: casts and clones copy through it) on models one
    layer apart. Activation copies are told apart by shape: theirs lead with the micro-batch
    (3) or its tokens (48), or have more than two dimensions; a weight block, Z chunk or
    [Z, chunks] bucket has one or two and leads with neither. Norm weights (32 elements,
    reduced by sync_gradients) are left out."""
    import contextlib

    from axolab.parallel import Optimizations, parallelize, sync_gradients

    grid = _grid(shape)
    if grid is None:
        return None
    counts = []
    for layers in (1, 2):
        serial = tiny_model("llama", tied=False)
        serial.model.layers = serial.model.layers[:layers]
        model = parallelize(serial, grid, optimizations=Optimizations(gather_bucket_mb=bucket_mb))
        ids = torch.randint(0, model.config.vocab_size, (3 * grid.batch_shards, 16),
                            generator=torch.Generator().manual_seed(0))

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else \
                    contextlib.nullcontext():
                out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids))
            out.loss.backward()
            sync_gradients(model)
            model.zero_grad(set_to_none=True)
        step()  # the first step learns the layer order and buckets
        with torch.profiler.profile(record_shapes=True) as prof:
            step()
        counts.append(sum(
            n for e in prof.events() if e.name == "aten::copy_" and e.input_shapes
            for s in [e.input_shapes[0]] if 1 <= len(s) <= 2 and s[0] not in (3, 48)
            for n in [int(torch.tensor(s).prod())] if n > 32))
    return counts[1] - counts[0]


@pytest.mark.parametrize("shape,bf16,bucket_mb", [
    ((1, 2, 1, 1), False, 16.0),  # Z: a layer's blocks in one bucket, cut out and put back
    ((1, 2, 1, 1), False, 0.0),  # Z, each block gathered alone: chunk copies only
    ((1, 2, 1, 1), True, 16.0),  # Z under bf16: chunks cast into the gather, grads cast back
    ((1, 1, 2, 1), False, 16.0),  # no Z: q/k/v and gate/up stacked for one matmul each
    ((1, 1, 2, 1), True, 16.0),  # no Z, bf16: the other blocks cast, grads cast back
    ((1, 1, 1, 1), True, 16.0),  # one rank: autocast's own casts of nn.Linear weights
])
def test_weight_copies_are_what_the_planner_charges(pool8, shape, bf16, bucket_mb):
    """The planner's per-layer copies (perfmodel.copies) against the profiler's count."""
    from axolab.optimizations import Optimizations
    from axolab.perfmodel import GridShape, Workload, model_shapes
    from axolab.perfmodel.copies import layer_weight_copies

    work = Workload(3 * shape[0] * shape[1], 16, None, "bf16" if bf16 else "fp32", False,
                    Optimizations(gather_bucket_mb=bucket_mb))
    shapes = model_shapes(tiny_model("llama", tied=False).config)
    copies = layer_weight_copies(shapes, GridShape(*shape), work)
    predicted = sum(c.elements for c in copies)
    if shape[1] > 1 and not bucket_mb:
        # A lone block's gradient is sent as it is; gloo's reduce-scatter (direct exchange)
        # copies this rank's own slice into the result, which the planner leaves out (1/Z
        # of a block, CPU only): one chunk per matrix.
        predicted += sum(-(-(lin.out_features * lin.in_features) // shape[1])
                         for lin in shapes.layer_linears)
    measured = pool8.run(weight_copies_per_layer, shape, bf16, bucket_mb, timeout=120)
    world = shape[0] * shape[1] * shape[2] * shape[3]
    for rank, m in enumerate(measured[:world]):
        assert m == predicted, (rank, m, predicted, copies)
