"""axolab against PyTorch FSDP2 (``fully_shard``) and FSDP2 + DTensor tensor parallelism.

What most users pick to fine-tune a Hugging Face model on a few devices is FSDP2; with a
second mesh dimension, FSDP2 + TP (torchtitan's recipe). Same model as
benchmarks/training_speed.py (random-init Llama, default small-llama), same global batch, same
AdamW, on 4 gloo ranks (one thread each), every variant built side by side and timed in
interleaved rounds (speed_common.time_rounds; medians of the slowest rank):

- FSDP2: ``fully_shard`` on every decoder layer and on the root, 4-way data parallel, each rank
  a quarter of the batch (ZeRO-3: parameters gathered per layer, gradients reduce-scattered).
- FSDP2 x TP: a 2 x 2 mesh, Colwise/Rowwise TP (q/k/v/gate/up, o/down) over "tp", then
  ``fully_shard`` over "dp"; each dp rank half of the batch.
- axolab on every grid of 4 ranks (``Optimizations()``).

Memory per rank: the bytes of the rank's own parameters, gradients and AdamW state (local
shards) plus the largest rise of the CPU allocator's live bytes during one step
(torch.profiler, profile_memory), the largest rank counted. Every variant's step-0 loss (its
global mean) is checked against the serial HF model.

Usage: python benchmarks/fsdp2_compare.py [--repeats 5] [--steps 2] [--warmup 1]
           [--grids "1,4,1,1;1,4,1,1:prefetch_weights=0"] [--out results/bench/fsdp2_compare.json]
           [shape flags of training_speed.py]
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from axolab.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_common as sc  # noqa: E402

SHAPE = {"hidden": 256, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 688,
         "vocab": 1024, "seq_len": 128, "global_batch": 8, "seed": 0}
WORLD = 4


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


def state_bytes(model, opt) -> int:
    """Bytes of this rank's parameters, gradients and optimizer state (local shards)."""
    tensors = [p for p in model.parameters()] + [p.grad for p in model.parameters()
                                                 if p.grad is not None]
    tensors += [t for st in opt.state.values() for t in st.values() if torch.is_tensor(t)]
    seen = {}
    for t in tensors:
        local = _local(t)
        seen[local.untyped_storage().data_ptr()] = local.untyped_storage().nbytes()
    return sum(seen.values())


def peak_rise(step) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for e in sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]"):
        live += e[1]
        peak = max(peak, live)
    return peak


def _step(model, ids, opt, after_backward=None):
    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if after_backward is not None:
            after_backward(model)
        opt.step()
        opt.zero_grad(set_to_none=False)  # gradients stay allocated, as in a training loop
        return loss.detach()
    return step


def _tp_plan(s: dict) -> dict:
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    plan = {}
    for i in range(s["layers"]):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                     "mlp.gate_proj", "mlp.up_proj"):
            plan[f"model.layers.{i}.{name}"] = ColwiseParallel()
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            plan[f"model.layers.{i}.{name}"] = RowwiseParallel()
    return plan


def fsdp_variant(s: dict, ids: torch.Tensor, tp: int):
    """FSDP2 over WORLD // tp data-parallel ranks (with TP of degree ``tp`` inside)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor.parallel import parallelize_module

    dp = WORLD // tp
    model = sc.build_hf(s)
    if tp > 1:
        mesh = init_device_mesh("cpu", (dp, tp), mesh_dim_names=("dp", "tp"))
        parallelize_module(model, mesh["tp"], _tp_plan(s))
        dp_mesh, dp_rank = mesh["dp"], mesh.get_local_rank("dp")
    else:
        dp_mesh = init_device_mesh("cpu", (dp,), mesh_dim_names=("dp",))
        dp_rank = dist.get_rank()
    for layer in model.model.layers:
        fully_shard(layer, mesh=dp_mesh)
    fully_shard(model, mesh=dp_mesh)
    rows = ids.shape[0] // dp
    return model, ids[dp_rank * rows:(dp_rank + 1) * rows]


def rank_session(s: dict) -> dict:
    import torch.distributed as dist

    from axolab.grid_shape import all_grids
    from axolab.parallel import Grid, Optimizations, parallelize, sync_gradients

    ids = sc.global_batch(s)
    steps, models, grids = {}, {}, []
    for name, tp in (("FSDP2", 1), ("FSDP2 x TP (2 x 2)", 2)):
        model, local = fsdp_variant(s, ids, tp)
        opt = torch.optim.AdamW(model.parameters(), lr=sc.LR)
        steps[name], models[name] = _step(model, local, opt), (model, opt)
    wanted = s.get("grids") or [((g.data, g.z, g.y, g.x), {}) for g in all_grids(WORLD)]
    for dims, changes in wanted:
        grid = Grid.init(*dims)
        grids.append(grid)
        model = parallelize(sc.build_hf(s), grid,
                            optimizations=dataclasses.replace(Optimizations(), **changes))
        opt = torch.optim.AdamW(model.parameters(), lr=sc.LR)
        name = " ".join([f"axolab {sc.grid_text(dims)}",
                         *(f"{k}={v}" for k, v in changes.items())])
        steps[name] = _step(model, grid.shard_batch(ids), opt, sync_gradients)
        models[name] = (model, opt)
    out = sc.time_rounds(steps, s, barrier=dist.barrier)
    # Each variant's loss is its own ranks' mean: FSDP ranks hold batch shards, axolab's loss
    # is the global mean already on every rank. Both the step-0 loss and the loss after the
    # last timed step (every variant took as many AdamW steps on the same batch).
    for key in ("first_loss", "last_loss"):
        for name in list(out[key]):
            if name.startswith("FSDP2"):
                t = torch.tensor([out[key][name]], dtype=torch.float64)
                dist.all_reduce(t)
                out[key][name] = t.item() / WORLD
    out["memory"] = {}
    for name, step in steps.items():
        dist.barrier()
        rise = peak_rise(step)
        out["memory"][name] = state_bytes(*models[name]) + rise
    for grid in grids:
        grid.destroy()
    return out


def _grid_setting(text: str, ap: argparse.ArgumentParser) -> tuple:
    """"d,z,y,x" or "d,z,y,x:field=value/field=value" (Optimizations fields changed from
    their defaults) -> (dims, changes)."""
    from axolab.optimizations import Optimizations

    from axolab.grid_shape import GridShape

    grid, _, fields = text.partition(":")
    try:
        shape = GridShape.parse(grid)
    except ValueError as e:
        ap.error(str(e))
    if shape.world != WORLD:
        ap.error(f"grid {grid!r} has {shape.world} ranks, not {WORLD}")
    dims = shape.dims
    defaults, changes = Optimizations(), {}
    for item in filter(None, fields.split("/")):
        key, _, value = item.partition("=")
        if not hasattr(defaults, key):
            ap.error(f"{key!r} is not a field of Optimizations")
        kind = type(getattr(defaults, key))
        changes[key] = value.lower() in ("1", "true", "yes") if kind is bool else kind(value)
    return dims, changes


def main(argv: list[str] | None = None) -> int:
    from axolab.perfmodel.ranks import run_on_ranks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    for flag, default in SHAPE.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, default=default)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--grids", default="", help="axolab grids as d,z,y,x separated by ';' "
                    "(default: every grid of 4 ranks)")
    ap.add_argument("--out", default="results/bench/fsdp2_compare.json")
    a = ap.parse_args(argv)
    s = {k: getattr(a, k) for k in (*SHAPE, "repeats", "warmup", "steps", "attn")}
    s["grids"] = [_grid_setting(g, ap) for g in a.grids.split(";") if g]
    torch.manual_seed(0)
    ids = sc.global_batch(s)
    serial = sc.build_hf(s)
    with torch.no_grad():
        ref = serial(input_ids=ids, labels=ids).loss.item()
    per_rank = run_on_ranks(rank_session, WORLD, s)
    names = list(per_rank[0]["times"])
    med = {n: statistics.median(max(r["times"][n][i] for r in per_rank)
                                for i in range(a.repeats)) for n in names}
    mem = {n: max(r["memory"][n] for r in per_rank) for n in names}
    loss = {n: per_rank[0]["first_loss"][n] for n in names}
    last = {n: per_rank[0]["last_loss"][n] for n in names}
    fsdp = med["FSDP2"]
    best = min((n for n in names if n.startswith("axolab")), key=med.get)
    print(f"serial step-0 loss {ref:.6f}; {WORLD} gloo ranks, one thread each; medians of "
          f"{a.repeats} rounds of {a.steps} steps")
    print(f"{'variant':22s} {'step s':>8s} {'FSDP2/this':>10s} {'MiB/rank':>9s} "
          f"{'vs FSDP2':>8s} {'loss err':>9s} {'last err':>9s}")
    for n in sorted(names, key=med.get):
        print(f"{n:22s} {med[n]:8.3f} {fsdp / med[n]:9.2f}x {mem[n] / 2**20:9.1f} "
              f"{mem[n] / mem['FSDP2']:7.2f}x {abs(loss[n] - ref) / ref:9.1e} "
              f"{abs(last[n] - last['FSDP2']) / last['FSDP2']:9.1e}")
    print("loss err: step-0 loss against the serial model; last err: loss after the last timed "
          "step against FSDP2's (as many AdamW steps on the same batch)")
    print(f"best axolab grid: {best}, {fsdp / med[best]:.2f}x FSDP2's speed (target >= 1.2), "
          f"{mem[best] / mem['FSDP2']:.2f}x its memory per rank (target <= 1.0)")
    small = [n for n in names if n.startswith("axolab") and mem[n] <= mem["FSDP2"]]
    if small:
        lean = min(small, key=med.get)
        print(f"fastest axolab variant with no more memory than FSDP2: {lean}, "
              f"{fsdp / med[lean]:.2f}x its speed, {mem[lean] / mem['FSDP2']:.2f}x its memory")
    else:
        print("no axolab variant used as little memory per rank as FSDP2")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "torch": torch.__version__,
               "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_text_atomic(out, json.dumps({"settings": s, "machine": machine, "median_s": med,
                               "memory_bytes": mem, "first_loss": loss, "last_loss": last,
                               "serial_loss": ref,
                               "per_rank": per_rank, "best": best}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
