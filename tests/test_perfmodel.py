"""The performance/memory model and the grid search (axolab.perfmodel): hand-computed
collective bytes, node locality by stride, grid enumeration against brute force, published
memory facts, the paper's 405B-on-Frontier settings and machine files (the `plan` CLI:
test_perfmodel_cli.py).
Measured validation against real CPU training is benchmarks/perfmodel_validation.py."""

import dataclasses
import itertools
import json
from collections import defaultdict

import pytest

from axolab.optimizations import Optimizations
from axolab.perfmodel import (GridShape, Machine, MeasuredCollective, ModelShapes, Workload,
                              collective_time, enumerate_grids, get_machine, grid_problems,
                              load_machine, memory_per_rank, model_shapes, predict, presets,
                              ring_bytes, save_machine, search, spans_one_node,
                              step_collectives)
from axolab.perfmodel.calibrate import CalibrationConfig, fit_latency_bandwidth, \
    machine_from_measurements
from axolab.perfmodel.comm import comm_time

GIB = 2**30
# One layer, H=8, I=16, 2 heads of 4 (q/k/v all 8 wide), vocab 10, untied.
TINY = ModelShapes("tiny", hidden=8, intermediate=16, layers=1, heads=2, kv_heads=2, head_dim=4,
                   vocab=10, tied_embeddings=False)


def _bytes_by(collectives, key):
    out = defaultdict(int)
    for c in collectives:
        out[key(c)] += c.full_bytes * c.count
    return dict(out)


def test_tensor_parallel_collective_bytes_by_hand():
    # grid D,Z,Y,X = 1,1,2,2; batch 2 x 3 tokens in one micro-step: n = 6 tokens; fp32 (4 B).
    work = Workload(global_batch=2, seq_len=3, precision="fp32", activation_checkpointing=False,
                    grad_clip=False)
    got = _bytes_by(step_collectives(TINY, GridShape(1, 1, 2, 2), work), lambda c: c.axis)
    # Forward layers (q, k, v, gate, up, lm head): output [n, out/Y] summed over X in forward,
    # input grad [n, in/X] summed over Y in backward. Transposed (o, down): output [n, out/X]
    # over Y, input grad [n, in/Y] over X. Norm statistics [n, 1] over X, 3 norms x fwd + bwd.
    x = (3 * 6 * 4 * 4       # q, k, v outputs: [6, 8/2] fp32 = 96 B each
         + 2 * 6 * 8 * 4     # gate, up outputs: [6, 16/2] = 192 B each
         + 6 * 4 * 4         # o_proj input grad: [6, 8/2]
         + 6 * 8 * 4         # down_proj input grad: [6, 16/2]
         + 6 * 5 * 4         # lm head logits: [6, 10/2]
         + 6 * 6 * 4)        # norm sums of squares: 6 calls of [6, 1]
    # q/k/v and gate/up are stacked (they read one input): each group's input gradient is
    # summed on the rank first and all-reduced once, [6, 8/2] for the group.
    y = (6 * 4 * 4           # q+k+v input grad: [6, 8/2]
         + 6 * 4 * 4         # gate+up input grad: [6, 8/2]
         + 6 * 4 * 4         # o_proj output: [6, 8/2]
         + 6 * 4 * 4         # down_proj output: [6, 8/2]
         + 6 * 4 * 4         # lm head input grad: [6, 8/2]
         + 6 * 4 * 4         # embedding output: [6, 8/2]
         + 3 * 6 * 4)        # cross-entropy max, sum of exp, target logit: [6] each
    assert (x, y) == (1224, 648)
    assert got == {"x": x, "y": y}  # no Z, data or batch traffic on a 1x1x2x2 grid
    sent = comm_time(TINY, GridShape(1, 1, 2, 2), work, get_machine("frontier")).bytes_by_axis
    assert sent == {"x": 1224.0, "y": 648.0}  # ring all-reduce over 2: 2*(2-1)/2 = 1x


def test_depth_parallel_collective_bytes_by_hand():
    # grid 1,2,1,1: batch 2 over D*Z = 2 -> 1 sequence of 3 tokens per rank.
    work = Workload(global_batch=2, seq_len=3, precision="fp32", activation_checkpointing=False,
                    grad_clip=True)
    got = _bytes_by(step_collectives(TINY, GridShape(1, 2, 1, 1), work),
                    lambda c: (c.op, c.axis))
    # Layer blocks (elements): q, k, v, o 8x8 = 64; gate, up, down 16x8 = 128 -> 640, fp32.
    layer = 640 * 4
    head, emb = 10 * 8 * 4, 10 * 8 * 4
    # Forward only: the lm head's forward block, and the last decoder layer's (the only one
    # here), are kept for backward; embedding fwd. Prefetching late in backward, the layer is
    # gathered again in backward.
    assert got[("all_gather", "z")] == layer + head + emb
    late = Workload(global_batch=2, seq_len=3, precision="fp32", activation_checkpointing=False,
                    grad_clip=True, optimizations=Optimizations(prefetch_late_in_backward=True))
    assert _bytes_by(step_collectives(TINY, GridShape(1, 2, 1, 1), late),
                     lambda c: (c.op, c.axis))[("all_gather", "z")] == 2 * layer + head + emb
    assert got[("reduce_scatter", "z")] == layer + head + emb
    # Over the batch group: id check (8 B), counts (16), loss (4), kept tokens (8), and the
    # norm-weight gradient bucket: 3 norms x 8 x 4 B. Over the model group: the grad norm.
    assert got[("all_reduce", "batch")] == 8 + 16 + 4 + 8 + 3 * 8 * 4
    assert got[("all_reduce", "model")] == 4
    assert set(got) == {("all_gather", "z"), ("reduce_scatter", "z"), ("all_reduce", "batch"),
                        ("all_reduce", "model")}


def test_checkpointing_regathers_and_skips_the_last_output_all_reduce():
    grid = GridShape(1, 2, 2, 1)
    # Prefetching late in backward: TINY's only decoder layer is then not kept gathered from
    # forward for backward (see the end of the test).
    apart = Optimizations(gather_bucket_mb=0, prefetch_late_in_backward=True)
    base = Workload(4, 3, precision="fp32", activation_checkpointing=False, grad_clip=False,
                    optimizations=apart)
    ckpt = Workload(4, 3, precision="fp32", activation_checkpointing=True, grad_clip=False,
                    optimizations=apart)
    calls = {w: {c.what: c.count for c in step_collectives(TINY, grid, w)} for w in (base, ckpt)}
    # One gather per forward pass (recompute adds one), one in backward unless recomputed:
    # the recompute's block is kept for the layer's backward.
    assert calls[base]["q_proj weight"] == 1 and calls[ckpt]["q_proj weight"] == 2
    assert calls[base]["q_proj weight (backward)"] == 1
    assert "q_proj weight (backward)" not in calls[ckpt]
    # Bucketed (the default): the layer's 7 blocks in one gather in forward and one for the
    # recompute and backward together, the lm head alone (not recomputed, its forward block
    # kept for backward), the same bytes.
    bucketed = {w: {c.what: (c.count, c.full_bytes) for c in step_collectives(
        TINY, grid, dataclasses.replace(w, optimizations=Optimizations(
            prefetch_late_in_backward=True)))} for w in (base, ckpt)}
    layer = (4 * 64 + 3 * 128) // 2 * 4  # the layer's blocks at Y = 2, fp32
    head = 10 * 8 // 2 * 4
    assert bucketed[base]["weight bucket of 7 block(s)"] == (1, layer)
    assert bucketed[ckpt]["weight bucket of 7 block(s)"] == (1, layer)
    assert bucketed[ckpt]["weight bucket of 7 block(s) (backward)"] == (1, layer)
    assert bucketed[ckpt]["weight bucket of 1 block(s)"] == (1, head)
    # The bucket's gradients are reduce-scattered together, once per micro-step.
    assert bucketed[ckpt]["weight bucket of 7 block(s) grad"] == (1, layer)
    assert bucketed[base]["weight bucket of 1 block(s) grad"] == (1, head)
    assert not any(w.endswith("proj weight grad") for w in bucketed[base])
    assert calls[ckpt]["o_proj output"] == 2 * calls[base]["o_proj output"]
    assert calls[ckpt]["down_proj output"] == calls[base]["down_proj output"]
    # By default the last decoder layer's last bucket (here: the layer, or its down_proj
    # gathered alone) keeps its forward blocks for backward or its recompute.
    for w in (base, ckpt):
        opts = dataclasses.replace(w.optimizations, prefetch_late_in_backward=False)
        kept = {c.what: c.count for c in step_collectives(
            TINY, grid, dataclasses.replace(w, optimizations=opts))}
        assert kept["down_proj weight"] == 1 and "down_proj weight (backward)" not in kept
        assert kept["q_proj weight"] + kept.get("q_proj weight (backward)", 0) == 2
        bucket = {c.what: c.count for c in step_collectives(
            TINY, grid, dataclasses.replace(w, optimizations=Optimizations()))}
        assert bucket["weight bucket of 7 block(s)"] == 1
        assert "weight bucket of 7 block(s) (backward)" not in bucket


def test_ring_formulas():
    assert ring_bytes("all_reduce", 1000, 4) == 1500
    assert ring_bytes("all_gather", 1000, 4) == 750
    assert ring_bytes("reduce_scatter", 1000, 1) == 0
    with pytest.raises(ValueError, match="broadcast"):
        ring_bytes("broadcast", 1, 2)


def _brute_force_local(grid: GridShape, axis: str, gpn: int) -> bool:
    """Every group of ``axis`` on one node, from the explicit rank layout."""
    D, Z, Y, X = grid.data, grid.z, grid.y, grid.x
    coords = list(itertools.product(range(D), range(Z), range(Y), range(X)))
    rank = {c: ((c[0] * Z + c[1]) * Y + c[2]) * X + c[3] for c in coords}
    key = {"x": lambda c: (c[0], c[1], c[2]), "y": lambda c: (c[0], c[1], c[3]),
           "z": lambda c: (c[0], c[2], c[3]), "data": lambda c: (c[1], c[2], c[3]),
           "batch": lambda c: (c[2], c[3]), "model": lambda c: (c[0],)}[axis]
    groups = defaultdict(set)
    for c in coords:
        groups[key(c)].add(rank[c] // gpn)
    return all(len(nodes) == 1 for nodes in groups.values())


def test_intra_or_inter_node_by_stride():
    assert spans_one_node(4, 1, gpus_per_node=4, world=16)       # X=4 on 4-GPU nodes
    assert spans_one_node(2, 2, gpus_per_node=4, world=16)       # Y=2 after X=2
    assert not spans_one_node(2, 4, gpus_per_node=4, world=16)   # Y=2 after X=4
    assert not spans_one_node(3, 1, gpus_per_node=4, world=12)   # groups straddle nodes
    assert spans_one_node(8, 1, gpus_per_node=8, world=8)
    for world, gpn in ((16, 4), (32, 8), (24, 8), (12, 4)):
        for grid in enumerate_grids(world):
            for axis in ("x", "y", "z", "data", "batch", "model"):
                assert spans_one_node(grid.size(axis), grid.stride(axis), gpn, world) == \
                    _brute_force_local(grid, axis, gpn), (world, gpn, grid, axis)


def test_inter_node_collective_is_slower():
    m = get_machine("frontier")
    local = collective_time(m, "all_reduce", 2**26, 8, 1, 64)
    remote = collective_time(m, "all_reduce", 2**26, 8, 8, 64)
    assert remote > 3 * local


def _all_products(n):
    """Every (d, z, y, x) of positive integers with d*z*y*x == n, by exhaustive search."""
    return [(d, z, y, n // (d * z * y)) for d, z, y in itertools.product(range(1, n + 1), repeat=3)
            if n % (d * z * y) == 0]


def test_grid_enumeration_matches_brute_force():
    for n in range(1, 33):
        assert sorted((g.data, g.z, g.y, g.x) for g in enumerate_grids(n)) == \
            sorted(_all_products(n))
    assert len(enumerate_grids(4)) == 10 and len(enumerate_grids(8)) == 20
    tiny = model_shapes("tiny-llama")  # H=64, I=172, 4 heads, 2 kv heads
    for n, batch in ((8, 8), (16, 4), (12, 6)):
        expected = [d for d in _all_products(n) if 2 % d[2] == 0 and 4 % d[2] == 0
                    and 64 % d[3] == 0 and 172 % d[2] == 0 and batch % (d[0] * d[1]) == 0]
        got = [(g.data, g.z, g.y, g.x) for g in enumerate_grids(n, tiny, batch)]
        assert sorted(got) == sorted(expected)


def test_grid_problems_name_the_numbers():
    problems = grid_problems(model_shapes("tiny-llama"), GridShape(1, 3, 8, 1), 8)
    assert "4 attention heads do not divide by y=8" in problems
    assert "global batch 8 does not divide by data*z = 3" in problems
    with pytest.raises(ValueError, match="grid dimension z must be a positive integer, got 0"):
        GridShape(1, 0, 1, 1)
    with pytest.raises(ValueError, match="global_batch must be a positive integer, got -1"):
        Workload(-1, 8)


def test_monotonic_sanity():
    shapes, m = model_shapes("llama-3.1-8b"), get_machine("h100-node")
    work = Workload(16, 4096)
    small, big = predict(shapes, GridShape(2, 1, 2, 2), work, m), \
        predict(shapes, GridShape(2, 1, 2, 2), Workload(32, 4096), m)
    assert big.step_time_s > small.step_time_s and big.compute.total > small.compute.total
    deeper = [memory_per_rank(shapes, GridShape(1, z, 2, 2), Workload(16, 4096)).parameters
              for z in (1, 2, 4)]
    assert deeper[0] > deeper[1] > deeper[2]
    no_ckpt = Workload(16, 4096, activation_checkpointing=False)
    assert memory_per_rank(shapes, GridShape(1, 2, 2, 2), no_ckpt).activations > \
        4 * memory_per_rank(shapes, GridShape(1, 2, 2, 2), work).activations
    assert predict(shapes, GridShape(1, 2, 2, 2), no_ckpt, m).compute.total < \
        predict(shapes, GridShape(1, 2, 2, 2), work, m).compute.total
    slow = Machine(**{**m.__dict__, "name": "slow", "intra_node_gb_s": m.intra_node_gb_s / 10})
    assert comm_time(shapes, GridShape(1, 1, 2, 4), work, slow).total > \
        comm_time(shapes, GridShape(1, 1, 2, 4), work, m).total
    blocking = predict(shapes, GridShape(1, 1, 2, 4),
                       Workload(16, 4096, optimizations=Optimizations.none()), m)
    assert blocking.exposed_comm_s == pytest.approx(blocking.comm.total)
    assert blocking.step_time_s == pytest.approx(blocking.compute.total + blocking.comm.total)


def test_published_memory_facts():
    big, small = model_shapes("llama-3.1-405b"), model_shapes("llama-3.1-8b")
    assert big.params == pytest.approx(405.85e9, rel=1e-3)
    assert 2 * big.params / 1e9 == pytest.approx(810, rel=0.01)    # bf16 weights ~810 GB
    assert 2 * small.params / 1e9 == pytest.approx(16.06, rel=0.01)  # ~16 GB
    mem = memory_per_rank(small, GridShape(1, 1, 1, 1), Workload(1, 4096))
    # axolab's fp32 parameters are AdamW's master copy: 4 + 2 x 4 bytes, plus 4 for grads.
    assert mem.parameters + mem.optimizer == 12 * small.params
    assert mem.gradients == 4 * small.params
    sharded = memory_per_rank(big, GridShape(1, 8, 8, 8), Workload(512, 4096))
    assert sharded.parameters == pytest.approx(4 * big.params / 512, rel=0.01)


@pytest.mark.parametrize("gpus,seq", [(1024, 4096), (4096, 8192)])
def test_405b_fine_tuning_fits_on_frontier(gpus, seq):
    rows = search("llama-3.1-405b", gpus, "frontier", seq_len=seq, top_k=5)
    assert rows and all(r.fits for r in rows)
    assert all(r.memory.total <= 64 * GIB for r in rows)
    assert rows[0].step_time_s <= rows[-1].step_time_s


def test_405b_on_8_gcds_does_not_fit():
    rows = search("llama-3.1-405b", 8, "frontier", seq_len=4096)
    assert rows and not any(r.fits for r in rows)
    assert min(r.memory.total for r in rows) > 12 * 405e9 / 8  # weights + Adam alone


def test_config_and_preset_agree():
    from axolab.presets import model_config

    by_name = search("tiny-llama", 4, "perlmutter", global_batch=8, seq_len=256)
    by_config = search(model_config("tiny-llama"), 4, "perlmutter", global_batch=8, seq_len=256)
    assert [(r.grid, r.step_time_s) for r in by_name] == \
        [(r.grid, r.step_time_s) for r in by_config]


def test_a_model_directory_is_read_as_json(tmp_path):
    from pathlib import Path

    # A Llama-like config.json as Hugging Face writes it (grouped-query attention, untied),
    # and a Qwen2 one without head_dim or kv heads (defaults: hidden / heads, heads).
    llama, qwen = tmp_path / "llama", tmp_path / "qwen"
    llama.mkdir(), qwen.mkdir()
    (llama / "config.json").write_text(json.dumps({
        "model_type": "llama", "hidden_size": 96, "intermediate_size": 256,
        "num_hidden_layers": 3, "num_attention_heads": 6, "num_key_value_heads": 2,
        "head_dim": 16, "vocab_size": 1000, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}))
    (qwen / "config.json").write_text(json.dumps({
        "model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 500,
        "tie_word_embeddings": True}))
    want = ModelShapes(str(llama), hidden=96, intermediate=256, layers=3, heads=6, kv_heads=2,
                       head_dim=16, vocab=1000, tied_embeddings=False)
    assert model_shapes(llama) == want and model_shapes(str(llama)) == want
    assert model_shapes(llama).params == 3 * (96 * 96 + 2 * 96 * 32 + 96 * 96 + 3 * 96 * 256
                                              + 2 * 96) + 2 * 1000 * 96 + 96
    # 3 layers of 7 matrices and 2 norms, the embedding, the lm head, the final norm.
    assert model_shapes(llama).param_tensors == 3 * (7 + 2) + 3
    assert model_shapes(Path(qwen)) == ModelShapes(
        str(qwen), hidden=64, intermediate=128, layers=2, heads=4, kv_heads=4, head_dim=16,
        vocab=500, tied_embeddings=True, qkv_bias=True)
    # What transformers writes for a preset reads back as the preset's shapes.
    from dataclasses import replace

    from axolab.presets import model_config

    for preset in ("tiny-llama", "llama-3.1-405b"):
        model_config(preset).save_pretrained(tmp_path / preset)
        assert model_shapes(tmp_path / preset) == replace(model_shapes(preset),
                                                          name=str(tmp_path / preset))
    # The planner takes the directory like any other model.
    assert [r.grid for r in search(llama, 2, "h100-node", global_batch=4, seq_len=64)] == \
        [r.grid for r in search(want, 2, "h100-node", global_batch=4, seq_len=64)]

    with pytest.raises(ValueError, match="no config.json"):
        model_shapes(tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        model_shapes(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="neither a preset .*tiny-llama.* nor an existing model "
                                         "directory"):
        model_shapes(str(tmp_path / "nowhere"))
    (qwen / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 64}))
    with pytest.raises(ValueError, match="lacks intermediate_size, num_hidden_layers, "
                                         "num_attention_heads, vocab_size: not the config of a "
                                         "Llama-like decoder \\(model_type 'bert'\\)"):
        model_shapes(qwen)
    (qwen / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        model_shapes(qwen)


def test_machine_file_round_trip(tmp_path):
    for machine in presets().values():
        assert load_machine(save_machine(machine, tmp_path / f"{machine.name}.json")) == machine
    calibrated = Machine("cpu", 4, 8, 1e9, 2e10, 1.0, 10, 1, 1, collectives=(
        MeasuredCollective("all_reduce", 2, 1e-3, 0.5),
        MeasuredCollective("all_gather", 4, 2e-3, 0.25)))
    path = save_machine(calibrated, tmp_path / "cpu.json")
    assert load_machine(path) == calibrated
    assert calibrated.measured("reduce_scatter", 4).op == "all_gather"
    data = json.loads(path.read_text())
    path.write_text(json.dumps({**data, "gpus": 4}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['gpus'\]"):
        load_machine(path)


def test_calibration_fit_and_assembly():
    latency, bandwidth = fit_latency_bandwidth([(b, 1e-3 + b / 2e9) for b in (1e3, 1e5, 1e7)])
    assert latency == pytest.approx(1e-3) and bandwidth == pytest.approx(2e9)
    rates = dict(flops_fp32=2e10, flops_bf16=1e9, bandwidth=5e9, op_overhead=1e-5,
                 attention_flops=1e9, attention_call=1e-3)
    timings = [(op, g, 1, b, 1e-3 * g + b / 1e9) for op in ("all_reduce", "all_gather",
                                                             "reduce_scatter")
               for g in (2, 4) for b in (4096, 2**20)]
    rank = {"rates": rates, "timings": timings}
    machine = machine_from_measurements([[rank, rank]], CalibrationConfig(ranks=4))
    assert machine.gpus_per_node == 4 and machine.peak_flops_fp32 == 2e10
    assert machine.measured("all_reduce", 4).latency_s == pytest.approx(4e-3, rel=1e-3)


def test_checkpoint_staging_is_one_chunk_in_the_peak():
    from axolab.checkpoint import DEFAULT_CHUNK_BYTES
    from axolab.perfmodel.memory import CHECKPOINT_CHUNK_BYTES

    assert CHECKPOINT_CHUNK_BYTES == DEFAULT_CHUNK_BYTES  # the planner's copy of the default
    big = memory_per_rank(model_shapes("llama-3.1-405b"), GridShape(1, 8, 8, 8),
                          Workload(512, 4096))
    assert big.checkpoint_chunk == 64 * 2**20  # a 8.4 GB embedding, staged 64 MiB at a time
    # TINY's largest tensors are gate/up/down, 16 x 8 fp32 = 512 B: less than any chunk.
    assert memory_per_rank(TINY, GridShape(1, 1, 2, 2), Workload(2, 3)).checkpoint_chunk == 512
    # With a chunk as large as the 8B embedding (128256 x 4096 fp32) and a tiny step, the save
    # is the largest phase, and the peak is the persistent state plus the staging.
    small = model_shapes("llama-3.1-8b")
    mem = memory_per_rank(small, GridShape(1, 1, 8, 8), Workload(1, 16),
                          checkpoint_chunk_bytes=4 * GIB)
    assert mem.checkpoint_chunk == 128256 * 4096 * 4
    assert mem.gradients + mem.step_buffers < mem.checkpoint_chunk
    assert mem.total == mem.parameters + mem.optimizer + mem.checkpoint_chunk
    # With the default 64 MiB chunk the optimizer step (gradients + AdamW temporaries) is the
    # largest phase again, as it was before the save was modelled.
    default = memory_per_rank(small, GridShape(1, 1, 8, 8), Workload(1, 16))
    assert default.checkpoint_chunk == 64 * 2**20
    assert default.total == default.parameters + default.optimizer + default.gradients + \
        default.step_buffers


def test_the_model_sends_what_the_code_sends_under_bf16_and_stacking():
    """Weight blocks are gathered over Z in the compute dtype (bf16: 2 B) and their gradients
    reduce-scattered in fp32; q/k/v and gate/up each share one output and one input-gradient
    all-reduce where X or Y > 1 (as parallelize stacks them), with the bytes of the parts."""
    from axolab.parallel.plans import Plan
    from axolab.perfmodel.shapes import SHARED_INPUTS

    assert SHARED_INPUTS == Plan(styles={}).shared_inputs
    work = Workload(global_batch=2, seq_len=3, precision="bf16", activation_checkpointing=False,
                    grad_clip=False)
    apart = dataclasses.replace(work, optimizations=Optimizations(gather_bucket_mb=0))
    depth = {(c.op, c.what): c for c in step_collectives(TINY, GridShape(1, 2, 1, 1), apart)}
    assert depth[("all_gather", "q_proj weight")].full_bytes == 64 * 2  # 8x8 block, bf16
    assert depth[("reduce_scatter", "q_proj weight grad")].full_bytes == 64 * 4
    tp = step_collectives(TINY, GridShape(1, 1, 2, 2), work)
    whats = [c.what for c in tp]
    assert "q_proj+k_proj+v_proj output" in whats and "gate_proj+up_proj input grad" in whats
    assert not any(w.startswith(("k_proj ", "v_proj ", "up_proj ")) for w in whats)
    fp32 = Workload(global_batch=2, seq_len=3, precision="fp32", activation_checkpointing=False,
                    grad_clip=False)
    by_what = {c.what: c.full_bytes for c in step_collectives(TINY, GridShape(1, 1, 2, 2), fp32)}
    assert by_what["q_proj+k_proj+v_proj output"] == 3 * 6 * 4 * 4  # the parts' bytes, summed
    # A grid where nothing communicates within a layer stacks nothing.
    assert "q_proj+k_proj+v_proj output" not in {
        c.what for c in step_collectives(TINY, GridShape(2, 1, 1, 1), fp32)}


def _adamw_passes(foreach: bool, n: int = 1000) -> float:
    """Parameter-sized tensors torch's AdamW reads and writes in one step, counted op by op
    as it dispatches (an in-place op writes its first argument)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten

    def sized(tree):
        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor) and t.numel() == n]

    class Count(TorchDispatchMode):
        tensors = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            reads = {id(t): t for t in sized((args, kwargs))}
            writes = sized(out) if out is not None else sized(args[0])  # foreach: in place
            Count.tensors += len(reads) + len(writes)
            return out

    param = torch.nn.Parameter(torch.randn(n))
    opt = torch.optim.AdamW([param], lr=1e-3, foreach=foreach)
    param.grad = torch.randn(n)
    opt.step()  # the first step creates the moments
    with Count():
        opt.step()
    return Count.tensors


def test_adamw_time_is_the_bytes_torch_adamw_moves():
    from axolab.perfmodel import step_compute
    from axolab.perfmodel.comm import local_parameters
    from axolab.perfmodel.compute import ADAMW_PASSES

    # The per-tensor loop (CPU) and the multi-tensor path (GPUs) move the same bytes.
    assert _adamw_passes(foreach=False) == _adamw_passes(foreach=True) == ADAMW_PASSES
    from dataclasses import replace

    from axolab.perfmodel.compute import ADAMW_OPS, CLIP_OPS

    shapes = model_shapes("small-llama")
    work = Workload(global_batch=4, seq_len=64, grad_clip=False)
    gpu = get_machine("alps")
    cpu = replace(gpu, foreach_optimizer=False)
    for grid, copies in ((GridShape(1, 2, 1, 2), 0), (GridShape(2, 1, 2, 1), 3)):
        local_bytes = local_parameters(shapes, grid) * 4
        # At full memory bandwidth, plus with D > 1 sync_gradients' concatenation,
        # reduction and copy back; the ops once per parameter group (decayed or not) on the
        # multi-tensor path, once per tensor (39 in small-llama) on the per-tensor one.
        moved = local_bytes * (ADAMW_PASSES + copies) / 4000e9
        assert step_compute(shapes, grid, work, gpu).optimizer_s == \
            pytest.approx(moved + 2 * ADAMW_OPS * gpu.op_overhead_s), grid
        assert step_compute(shapes, grid, work, cpu).optimizer_s == \
            pytest.approx(moved + 39 * ADAMW_OPS * gpu.op_overhead_s), grid
        # Clipping reads every gradient for its norm, then reads and writes it to scale it.
        clipped = replace(work, grad_clip=True)
        assert step_compute(shapes, grid, clipped, gpu).optimizer_s == pytest.approx(
            moved + 2 * ADAMW_OPS * gpu.op_overhead_s + local_bytes * 3 / 4000e9
            + CLIP_OPS * gpu.op_overhead_s), grid

    # The per-tensor path moves a tensor through memory once when its param, grad, moments and
    # temporary fit the rank's cache. small-llama, one rank: matrices of 176128 (MLP), 65536
    # (q, o), 32768 (k, v) and 262144 (embedding, lm head) elements, 2304 of norm vectors.
    from axolab.perfmodel.compute import ADAMW_CACHED_PASSES
    one = GridShape(1, 1, 1, 1)
    local = local_parameters(shapes, one)
    assert local == 4 * (3 * 176128 + 2 * 65536 + 2 * 32768) + 2 * 262144 + 9 * 256
    overhead = 39 * ADAMW_OPS * gpu.op_overhead_s
    for cache, moved in ((0, local * ADAMW_PASSES),
                         (1e12, local * ADAMW_CACHED_PASSES),
                         (5 * 4 * 176128, (local - 2 * 262144) * ADAMW_CACHED_PASSES
                          + 2 * 262144 * ADAMW_PASSES)):
        machine = replace(cpu, cache_bytes_per_rank=cache)
        assert step_compute(shapes, one, work, machine).optimizer_s == \
            pytest.approx(moved * 4 / 4000e9 + overhead), cache
    # GPUs run each kernel over every tensor: no cache reuse whatever the cache.
    assert step_compute(shapes, one, work, replace(gpu, cache_bytes_per_rank=1e12)
                        ).optimizer_s == pytest.approx(local * ADAMW_PASSES * 4 / 4000e9
                                                       + 2 * ADAMW_OPS * gpu.op_overhead_s)


def test_calibration_reads_the_largest_cache_lscpu_reports():
    import shutil
    import subprocess

    from axolab.perfmodel.calibrate import _last_level_cache_bytes

    if shutil.which("lscpu") is None:
        pytest.skip("no lscpu")
    units = {"KiB": 2**10, "MiB": 2**20, "GiB": 2**30}
    sizes = []
    for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
        name, _, value = line.partition(":")
        if name.strip().startswith(("L1d", "L2", "L3")) and value.split()[1:2]:
            number, unit = value.split()[:2]
            # lscpu sums the instances of a level; sysfs gives one instance's size.
            instances = int(value.split("(")[1].split()[0]) if "(" in value else 1
            sizes.append(float(number) * units[unit] / instances)
    if not sizes:
        pytest.skip("lscpu reports no cache sizes")
    assert _last_level_cache_bytes() == max(sizes)


def _dispatched_ops(fn) -> int:
    """Operations torch dispatches while ``fn()`` runs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        ops = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.ops += 1
            return func(*args, **(kwargs or {}))

    with Count():
        fn()
    return Count.ops


def test_optimizer_and_clip_kernels_per_tensor_are_what_torch_dispatches():
    """The kernels the model charges on a CPU (no multi-tensor AdamW), counted as torch
    dispatches them on a one-rank grid, on two models one decoder layer (nine parameter
    tensors) apart: torch's AdamW runs ADAMW_OPS per tensor; axolab's clip_grad_norm_ runs
    CLIP_OPS whatever the number of tensors."""
    import torch

    from axolab.parallel import Grid, clip_grad_norm_, parallelize
    from axolab.perfmodel.compute import ADAMW_OPS, CLIP_OPS
    from models import tiny_model

    def counts(layers: int) -> tuple[int, int, int]:
        serial = tiny_model("llama", tied=False)
        serial.model.layers = serial.model.layers[:layers]
        model = parallelize(serial, Grid.init())
        for p in model.parameters():
            p.grad = torch.randn_like(p)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=False)
        opt.step()  # the first step creates the moments
        return (_dispatched_ops(opt.step), _dispatched_ops(lambda: clip_grad_norm_(model, 1e-3)),
                len(list(model.parameters())))

    (adamw1, clip1, n1), (adamw2, clip2, n2) = counts(1), counts(2)
    assert n2 - n1 == 7 + 2  # one layer's matrices and norms
    assert (adamw2 - adamw1) / (n2 - n1) == ADAMW_OPS
    assert clip1 == clip2 == CLIP_OPS
