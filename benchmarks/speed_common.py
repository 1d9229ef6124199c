"""Building blocks of benchmarks/training_speed.py: the model, one training step per variant,
and the interleaved timing loop. Every variant starts from the same serial weights (same seed)
and trains on the same global batch with the same AdamW, so only the parallelization differs.
"""

from __future__ import annotations

import time

import torch

LR = 1e-3  # any value: only the time of the step matters, and every variant uses the same


def llama_config(s: dict):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                      intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                      num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"],
                      max_position_embeddings=s["seq_len"], rms_norm_eps=1e-5,
                      tie_word_embeddings=False, initializer_range=0.02, attention_dropout=0.0)
    cfg._attn_implementation = s["attn"]  # the same attention kernel in every variant
    return cfg


def build_hf(s: dict):
    from transformers import LlamaForCausalLM

    torch.manual_seed(s["seed"])  # identical serial weights in every variant and on every rank
    return LlamaForCausalLM(llama_config(s)).train()


def global_batch(s: dict) -> torch.Tensor:
    gen = torch.Generator().manual_seed(s["seed"] + 1)
    return torch.randint(0, s["vocab"], (s["global_batch"], s["seq_len"]), generator=gen)


def _adamw(model):
    # Default AdamW everywhere (on CPU that is the per-tensor loop, for DTensors as well).
    return torch.optim.AdamW(model.parameters(), lr=LR)


def hf_step(s: dict, ids: torch.Tensor, model=None):
    """The plain Hugging Face model (or ``model``): forward, backward, AdamW step, zero_grad."""
    model = build_hf(s) if model is None else model
    opt = _adamw(model)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step


OPTIMIZATIONS = {"default": lambda O: O(), "none": lambda O: O.none(),
                 "tuned": lambda O: O(tune_matmul=True)}


def axolab_step(s: dict, ids: torch.Tensor, dims: tuple, opts: str = "default"):
    """axolab on grid ``dims`` (data, z, y, x): the same step plus sync_gradients. Returns the
    step and the grid (to destroy its process groups at the end)."""
    from axolab.parallel import Grid, Optimizations, parallelize, sync_gradients
    from axolab.activation_checkpointing import enable_activation_checkpointing

    grid = Grid.init(*dims)
    model = parallelize(build_hf(s), grid, optimizations=OPTIMIZATIONS[opts](Optimizations))
    if s.get("checkpointing"):
        enable_activation_checkpointing(model)
        model.train()
    opt = _adamw(model)
    x = grid.shard_batch(ids)

    def step():
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        sync_gradients(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return step, grid


def dtensor_step(s: dict, ids: torch.Tensor, mesh, plan: str):
    """PyTorch-native tensor parallelism over the whole 1-D ``mesh`` (torchtitan's Llama plan).

    ``plan="layers"``: ColwiseParallel on q/k/v/gate/up and RowwiseParallel on o/down; the
    embedding, norms and lm head stay plain replicated modules (each rank computes them in
    full; their gradients come out identical on every rank because DTensor all-reduces the
    gradient of the replicated activation entering each Colwise layer). ``plan="titan"`` also
    shards the embedding (RowwiseParallel over the vocabulary, output replicated) and the lm head
    (ColwiseParallel over the vocabulary, logits all-gathered, since HF's loss needs full
    logits): torchtitan's plan without sequence parallelism and without loss parallelism.
    Attention heads are not adjusted: HF Llama reshapes q/k/v with -1 heads, so it runs on the
    local heads as it is (the step-0 loss check confirms it).
    """
    from torch.distributed.tensor import Replicate
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)

    model = build_hf(s)
    tp = {}
    for i in range(s["layers"]):
        p = f"model.layers.{i}."
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            tp[p + name] = ColwiseParallel()
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            tp[p + name] = RowwiseParallel()
    if plan == "titan":
        tp["model.embed_tokens"] = RowwiseParallel(input_layouts=Replicate())
        tp["lm_head"] = ColwiseParallel(output_layouts=Replicate())
    parallelize_module(model, mesh, tp)
    return hf_step(s, ids, model)


def sustained_peak(n: int = 512, seconds: float = 0.5) -> float:
    """FLOP/s of back-to-back fp32 matmuls for ``seconds``: run on every rank at once (after a
    barrier) it is each rank's share of the machine while all of them compute, which a best-of-5
    single matmul (measured_cpu_peak) can miss when the OS happens to give one rank a free core."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    k, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        k += 1
    return 2 * n**3 * k / (time.perf_counter() - t0)


def time_rounds(steps: dict, s: dict, barrier=lambda: None) -> dict:
    """Warm-up rounds, then timed rounds; each round runs every variant once, in an order
    rotated by the round number, so background load on a shared machine weighs on all variants
    alike. Each round's time of a variant is ``s['steps']`` consecutive steps, barrier to
    barrier, divided by their number. Also each variant's loss at step 0 (before any update) and
    at its last step (every variant runs as many steps on the same batch, so these must agree
    too: a check of gradients and optimizer, not only of the forward), and per timed round this
    process's matmul peak, measured_cpu_peak and sustained_peak, each taken (after a barrier)
    while every rank measures at once."""
    from axolab.metrics import measured_cpu_peak

    names = list(steps)
    times = {n: [] for n in names}
    first_loss, last_loss, peaks, sustained = {}, {}, [], []
    for r in range(s["warmup"] + s["repeats"]):
        timed = r >= s["warmup"]
        if timed:
            barrier()
            peaks.append(measured_cpu_peak())
            barrier()
            sustained.append(sustained_peak())
        for name in names[r % len(names):] + names[:r % len(names)]:
            barrier()
            t0 = time.perf_counter()
            for _ in range(s["steps"]):
                last_loss[name] = steps[name]()
                if name not in first_loss:
                    first_loss[name] = last_loss[name].item()
            barrier()
            if timed:
                times[name].append((time.perf_counter() - t0) / s["steps"])
    return {"times": times, "first_loss": first_loss, "peak": peaks, "sustained": sustained,
            "last_loss": {n: v.item() for n, v in last_loss.items()}}


def grid_text(grid: tuple) -> str:
    return f"({','.join(map(str, grid))})"


def opt_name(grid: tuple, opts: str) -> str:
    return f"axolab {grid_text(grid)} {opts}"


# The variants of the 4-rank session: (name, kind, argument). TP degree 4 everywhere in the
# comparison with DTensor; the optimization study uses grids with Z and D, where the overlaps
# (depth prefetch and reduce-scatter, data-gradient buckets) have something to hide.
WORLD = 4
TP_VARIANTS = [("dtensor layers", "dtensor", "layers"), ("dtensor titan", "dtensor", "titan"),
               ("axolab (1,1,4,1)", "axolab", ((1, 1, 4, 1), "default")),
               ("axolab (1,1,2,2)", "axolab", ((1, 1, 2, 2), "default")),
               ("axolab (1,1,1,4)", "axolab", ((1, 1, 1, 4), "default"))]
OPT_GRIDS = [(1, 2, 1, 2), (2, 1, 2, 1)]
OPT_VARIANTS = [(opt_name(g, o), "axolab", (g, o)) for g in OPT_GRIDS
                for o in ("none", "default", "tuned")]


def rank_session(s: dict) -> dict:
    """On each of the WORLD gloo ranks: build every variant (one DTensor mesh, one axolab grid
    each), then time them all in interleaved rounds."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    ids = global_batch(s)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),), mesh_dim_names=("tp",))
    steps, grids = {}, []
    for name, kind, arg in TP_VARIANTS + OPT_VARIANTS:
        if kind == "dtensor":
            steps[name] = dtensor_step(s, ids, mesh, arg)
        else:
            steps[name], grid = axolab_step(s, ids, *arg)
            grids.append(grid)
    out = time_rounds(steps, s, barrier=dist.barrier)
    for grid in grids:
        grid.destroy()
    return out
