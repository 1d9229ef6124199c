"""axolab vs AxoNN 0.2.0, side by side on CPU ranks (gloo), on the same grid.

Both libraries run in the same spawned processes (one thread each), step after step in
alternating order (axolab first on even rounds, AxoNN first on odd ones), so background load
weighs on both alike. A step is timed barrier to barrier on rank 0 (so it is the slowest rank's
time); the table gives the median over ``--repeats`` rounds after ``--warmup`` rounds and the
ratio AxoNN / axolab (> 1: axolab is faster).

(a) llama: one training step of a small random-init HF Llama (forward, backward, gradient sync,
    AdamW). All three models start from the same serial weights (seed ``--seed``).
    axolab:  ``parallelize(model, grid)`` (every overlap on), ``grid.shard_batch``,
             ``loss.backward(); sync_gradients(model); opt.step()``.
    AxoNN:   its HF easy mode, ``with axonn.models.transformers.parallelize(model_id):`` around
             the model's construction, then ``load_state_dict`` of the serial weights. The step
             is what ``axonn.lightning.AxonnStrategy(overlap_communication=True)`` does, without
             Lightning: forward and backward each inside ``optimize_communication(True, True,
             True, model)`` (backward also in ``overlap_all_gathers_for_checkpointed_forward`` of
             the reversed modules), then ``sync_gradients(model, mean=True)``; the batch is
             split over all ranks, as that strategy's sampler does (``num_replicas=world``).
    Losses of step 0 (and step 1, after one AdamW step) are checked against the serial model.
(b) linear: a stack of ``--lin-layers`` square tensor-parallel linears, orientations
    alternating (forward, transposed, ...), ``--tokens`` tokens split over data*z, forward +
    backward with a fixed output gradient. axolab: ``ParallelLinear`` with an overlap
    ``Runtime(grid, Optimizations(), stack)``. AxoNN expert mode: ``axonn.intra_layer.Linear(
    ..., expert_mode=True, transpose=i % 2 == 1)`` with the same ``optimize_communication``
    contexts as (a); ``sync_gradients(expert_mode=True)`` when data > 1. Step-0 outputs and
    weight gradients of the two libraries are compared (same full weights and inputs).

Grid mapping (from axonn/communication.py and intra_layer/fully_connected.py):
    AxoNN world rank = ((data*G_intra_d + d)*G_intra_r + r)*G_intra_c + c (G_inter = 1), and
    axolab's is ((data*Z + z)*Y + y)*X + x. A non-transposed AxoNN Linear splits in_features
    over the "inner" group (ranks differing in c) and all-reduces its output there, and splits
    out_features over the "outer" group (differing in r); G_intra_d shards weights and splits
    the batch (FSDP-like). axolab's forward layer splits ``in`` over X (all-reduce over X) and
    ``out`` over Y; Z depth-shards weights and splits the batch. So G_intra_c = x,
    G_intra_r = y, G_intra_d = z, G_data = data, with identical rank placement (checked at run
    time); ``--grid DxZxYxX`` sets both.

Patches: AxoNN is CUDA-only and written for transformers 4.40; benchmarks/axonn_cpu.py swaps
the ``torch``/``dist`` globals of five AxoNN modules for shims (``device="cuda"`` -> CPU,
``set_device`` no-op, ``nccl`` groups -> gloo, ``cuda.synchronize`` -> wait on AxoNN's own
async handles, 0-d all-gather) and adapts its Llama attention ``__init__`` to transformers 5.
Its docstring says why each is needed. No AxoNN code is copied.

Not like for like in (a), by AxoNN 0.2.0's design:
  - only q/k/v/o and gate/up/down become AxoNN Linears; the embedding, lm head and norms stay
    serial modules, replicated on every rank and data-parallel (their gradients are
    all-reduced over the world each step). axolab shards all of them (vocab-parallel loss).
  - easy mode keeps every non-linear op data parallel over all ranks, so each Linear re-lays
    out its input and output with all-to-alls (plus two batch-size all-gathers) around the
    tensor-parallel matmul; attention runs on 1/world of the batch with all heads. axolab
    keeps activations in the 4D layout and runs attention on heads/Y for the batch/(data*z).
  - AxoNN's HF path needs the global batch divisible by the world size.

Usage:
  python benchmarks/axonn_compare.py [--grid 1x1x2x2] [--repeats 5] [--warmup 2] [--only a|b]
      [--hidden 256 --layers 4 --heads 8 --kv-heads 4 --intermediate 688 --vocab 1024
       --seq 128 --batch 8] [--lin-layers 8 --lin-dim 1024 --tokens 4096] [--out FILE.json]
Needs ``pip install --no-deps axonn==0.2.0``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # axonn_cpu.py lives next to this file

LOSS_RTOL = (2e-5, 2e-4)  # step 0 (same weights), step 1 (after one AdamW step)
TENSOR_RTOL = 1e-4  # relative norm error of outputs / gradients in (b)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _all_true(ok: bool) -> bool:
    import torch.distributed as dist

    flag = torch.tensor([1 if ok else 0])
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _timed_rounds(steps: dict, warmup: int, repeats: int):
    """Run each library's step once per round, in alternating order; times after warm-up and
    every step's return value."""
    import torch.distributed as dist

    names = list(steps)
    times = {n: [] for n in names}
    outputs = {n: [] for n in names}
    for i in range(warmup + repeats):
        for name in names if i % 2 == 0 else names[::-1]:
            dist.barrier()
            t0 = time.perf_counter()
            out = steps[name]()
            dist.barrier()
            if i >= warmup:
                times[name].append(time.perf_counter() - t0)
            outputs[name].append(out)
    return times, outputs


def _axonn_backward(model, loss_or_output, grad=None, overlap=True):
    """AxonnStrategy.backward with overlap_communication=True (axonn/lightning)."""
    from axonn.intra_layer import (
        optimize_communication,
        overlap_all_gathers_for_checkpointed_forward,
    )

    ctx = contextlib.ExitStack()
    if overlap:
        ctx.enter_context(optimize_communication(True, True, True, model))
        reverse = torch.nn.ModuleList(list(model.modules())[::-1])
        ctx.enter_context(overlap_all_gathers_for_checkpointed_forward(reverse))
    with ctx:
        loss_or_output.backward(grad)


def _axonn_forward(model, overlap, *args, **kwargs):
    """AxonnStrategy.setup_module's forward wrapper with overlap_communication=True."""
    from axonn.intra_layer import optimize_communication

    ctx = optimize_communication(True, True, True, model) if overlap else contextlib.nullcontext()
    with ctx:
        return model(*args, **kwargs)


# ---- (a) whole training step of a small HF Llama ---------------------------------------------
def _llama_config(s: dict):
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                       num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                       num_key_value_heads=s["kv_heads"], intermediate_size=s["intermediate"],
                       max_position_embeddings=max(2048, s["seq"]),
                       tie_word_embeddings=False, attention_dropout=0.0,
                       architectures=["LlamaForCausalLM"])


def _serial(s: dict, cfg):
    from transformers import LlamaForCausalLM

    torch.manual_seed(s["seed"])
    return LlamaForCausalLM(cfg)


def compare_llama(s: dict, grid) -> dict:
    import tempfile

    import torch.distributed as dist
    from axonn.intra_layer import sync_gradients as axonn_sync
    from axonn.models.transformers import parallelize as axonn_parallelize
    from transformers import LlamaForCausalLM

    from axolab.parallel import Optimizations, parallelize, sync_gradients

    cfg = _llama_config(s)
    world, rank = dist.get_world_size(), dist.get_rank()
    if s["batch"] % world:
        raise ValueError(f"AxoNN's HF path splits the batch over all {world} ranks: --batch "
                         f"{s['batch']} must divide by it")
    ids = torch.randint(0, s["vocab"], (s["batch"], s["seq"]),
                        generator=torch.Generator().manual_seed(s["seed"] + 1))
    serial = _serial(s, cfg)
    state = {k: v.clone() for k, v in serial.state_dict().items()}
    reference = None
    if rank == 0:  # serial losses at step 0 and after one AdamW step, on the whole batch
        opt = torch.optim.AdamW(serial.parameters(), lr=s["lr"])
        loss0 = serial(input_ids=ids, labels=ids).loss
        loss0.backward()
        opt.step()
        with torch.no_grad():
            reference = [loss0.item(), serial(input_ids=ids, labels=ids).loss.item()]
    del serial

    ours = parallelize(_serial(s, cfg), grid, optimizations=Optimizations())
    ours_opt = torch.optim.AdamW(ours.parameters(), lr=s["lr"])
    ours_ids = grid.shard_batch(ids)

    with tempfile.TemporaryDirectory() as model_id:  # parallelize() reads config.json from it
        cfg.save_pretrained(model_id)
        with axonn_parallelize(model_id):
            theirs = LlamaForCausalLM(_llama_config(s))
    theirs.load_state_dict(dict(state))  # AxoNN's hook cuts full matrices into its shards
    theirs_opt = torch.optim.AdamW(theirs.parameters(), lr=s["lr"])
    per = s["batch"] // world
    theirs_ids = ids[rank * per:(rank + 1) * per]
    overlap = not s["axonn_no_overlap"]

    def ours_step():
        loss = ours(input_ids=ours_ids, labels=ours_ids).loss
        loss.backward()
        sync_gradients(ours)
        ours_opt.step()
        ours_opt.zero_grad(set_to_none=True)
        return loss.detach()

    def theirs_step():
        loss = _axonn_forward(theirs, overlap, input_ids=theirs_ids, labels=theirs_ids).loss
        _axonn_backward(theirs, loss, overlap=overlap)
        axonn_sync(theirs, mean=True)
        theirs_opt.step()
        theirs_opt.zero_grad(set_to_none=True)
        return loss.detach()  # this rank's share of the batch; averaged below, off the clock

    times, outs = _timed_rounds({"axolab": ours_step, "axonn": theirs_step},
                                s["warmup"], s["repeats"])
    losses = {"axolab": [t.item() for t in outs["axolab"][:2]], "axonn": []}
    for t in outs["axonn"][:2]:
        t = t.clone()
        dist.all_reduce(t)
        losses["axonn"].append(t.item() / world)
    if rank != 0:
        return {}
    match = all(abs(v - reference[i]) <= LOSS_RTOL[i] * abs(reference[i])
                for name in losses for i, v in enumerate(losses[name]))
    return {"times": times, "losses": losses, "serial_losses": reference, "match": match}


# ---- (b) stack of tensor-parallel linears ----------------------------------------------------
def compare_linear(s: dict, grid) -> dict:
    import torch.distributed as dist
    from axonn.intra_layer import Linear
    from axonn.intra_layer import sync_gradients as axonn_sync

    from axolab.parallel import Optimizations
    from axolab.parallel.linear import ParallelLinear
    from axolab.parallel.overlap import Runtime

    d, n, overlap = s["lin_dim"], s["lin_layers"], not s["axonn_no_overlap"]
    gen = torch.Generator().manual_seed(s["seed"] + 2)
    weights = [torch.randn(d, d, generator=gen) / d ** 0.5 for _ in range(n)]
    x_full = torch.randn(s["tokens"], d, generator=gen)
    g_full = torch.randn(s["tokens"], d, generator=gen)
    if s["tokens"] % grid.batch_shards:
        raise ValueError(f"--tokens {s['tokens']} must divide by data*z = {grid.batch_shards}")

    def cols(t, axis):  # this rank's feature slice along ``axis`` (X or Y)
        w = t.shape[-1] // axis.size
        return t[:, axis.index * w:(axis.index + 1) * w].contiguous()

    x = cols(grid.shard_batch(x_full), grid.x)  # first layer: in over X (AxoNN: inner group)
    last_out = grid.x if (n - 1) % 2 else grid.y  # transposed: out over X; forward: over Y
    g = cols(grid.shard_batch(g_full), last_out)

    ours = torch.nn.Sequential(*[ParallelLinear(d, d, grid, transposed=i % 2 == 1)
                                 for i in range(n)])
    for layer, w in zip(ours, weights):
        layer.load_full("weight", w)
    # What parallelize() attaches to its linears: one runtime given the layers' gradient specs.
    runtime = Runtime(grid, Optimizations(),
                      lambda: [spec for layer in ours for spec in layer.grad_specs()])
    for layer in ours:
        layer.runtime = runtime
    theirs = torch.nn.Sequential(*[Linear(d, d, bias=False, expert_mode=True, transpose=i % 2 == 1)
                                   for i in range(n)])
    for layer, w in zip(theirs, weights):
        layer.load_state_dict({"weight": w.clone()})

    def ours_step():
        ours.zero_grad(set_to_none=True)
        y = ours(x)
        y.backward(g)
        return y.detach()

    def theirs_step():
        theirs.zero_grad(set_to_none=True)
        y = _axonn_forward(theirs, overlap, x)
        _axonn_backward(theirs, y, g, overlap=overlap)
        if grid.data.size > 1:
            axonn_sync(theirs, expert_mode=True)
        return y.detach()

    times, outs = _timed_rounds({"axolab": ours_step, "axonn": theirs_step},
                                s["warmup"], s["repeats"])
    # After the last round each side holds the gradients of the same (unchanged) weights.
    errors = [_rel_err(outs["axonn"][0], outs["axolab"][0])]
    for a, b in zip(theirs, ours):
        errors.append(_rel_err(a.weight.grad.reshape(-1), b.weight.grad[:a.weight.numel()]))
    match = _all_true(max(errors) <= TENSOR_RTOL)
    if dist.get_rank() != 0:
        return {}
    return {"times": times, "max_rel_err": max(errors), "match": match}


# ---- ranks and report ------------------------------------------------------------------------
def session(s: dict) -> dict:
    import warnings

    import axonn_cpu
    import torch.distributed as dist
    from axonn import axonn as ax

    from axolab.parallel import Grid

    # AxoNN calls the flat collectives by their pre-2.13 names; the warning is noise here.
    warnings.filterwarnings("ignore", message=r".*is deprecated\. Please use `torch\.distributed")
    data, z, y, x = s["grid"]
    grid = Grid.init(data=data, z=z, y=y, x=x)
    axonn_cpu.init(data, z, y, x)
    theirs = (ax.config.data_parallel_rank, ax.config.intra_layer_depth_parallel_rank,
              ax.config.intra_layer_row_parallel_rank, ax.config.intra_layer_column_parallel_rank)
    if not _all_true(theirs == grid.coords):
        raise RuntimeError(f"grid mapping broken on rank {dist.get_rank()}: AxoNN (data, d, r, c) "
                           f"= {theirs}, axolab (data, z, y, x) = {grid.coords}")
    results = {}
    if s["only"] in (None, "a"):
        results["llama"] = compare_llama(s, grid)
    if s["only"] in (None, "b"):
        results["linear"] = compare_linear(s, grid)
    return results


def _grid(text: str) -> tuple[int, int, int, int]:
    from axolab.grid_shape import GridShape

    try:
        return GridShape.parse(text).dims
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--grid: {e}") from None


def main(argv=None) -> int:
    from axolab.perfmodel.ranks import run_on_ranks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--grid", type=_grid, default=(1, 1, 2, 2), help="DATAxZxYxX (1x1x2x2)")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds (5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed rounds first (2)")
    ap.add_argument("--only", choices=("a", "b"), help="run only (a) llama or (b) linear")
    for flag, default in (("hidden", 256), ("layers", 4), ("heads", 8), ("kv-heads", 4),
                          ("intermediate", 688), ("vocab", 1024), ("seq", 128), ("batch", 8),
                          ("lin-layers", 8), ("lin-dim", 1024), ("tokens", 4096), ("seed", 0)):
        ap.add_argument(f"--{flag}", type=int, default=default, help=f"({default})")
    ap.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate (1e-3)")
    ap.add_argument("--axonn-no-overlap", action="store_true",
                    help="run AxoNN without optimize_communication (its default)")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before giving up")
    ap.add_argument("--out", type=Path, help="write the results as JSON")
    args = ap.parse_args(argv)
    try:
        import axonn  # noqa: F401
    except ImportError:
        print("AxoNN is not installed: pip install --no-deps axonn==0.2.0", file=sys.stderr)
        return 2
    s = vars(args) | {"out": str(args.out) if args.out else None}
    world = args.grid[0] * args.grid[1] * args.grid[2] * args.grid[3]
    results = run_on_ranks(session, world, s, timeout_s=args.timeout)[0]

    grid_text = "x".join(map(str, args.grid))
    rows = []
    print(f"{'comparison':<10} {'grid':>9} {'axolab s':>9} {'AxoNN s':>9} {'ratio':>6}  match")
    for name, r in results.items():
        ours = statistics.median(r["times"]["axolab"])
        theirs = statistics.median(r["times"]["axonn"])
        r.update(axolab_median_s=ours, axonn_median_s=theirs, ratio=theirs / ours)
        rows.append(name)
        print(f"{name:<10} {grid_text:>9} {ours:9.4f} {theirs:9.4f} {theirs / ours:6.2f}  "
              f"{'yes' if r['match'] else 'NO'}")
    if "llama" in results:
        r = results["llama"]
        print(f"llama losses (step 0, step 1): serial {r['serial_losses']}, axolab "
              f"{r['losses']['axolab']}, AxoNN {r['losses']['axonn']}")
    if "linear" in results:
        print(f"linear: max relative error AxoNN vs axolab (output, weight grads) "
              f"{results['linear']['max_rel_err']:.2e}")
    if not all(r["match"] for r in results.values()):
        print("!!! MISMATCH: a library disagrees with the serial model / the other library; "
              "its timings are not comparable !!!")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in s.items()}
        args.out.write_text(json.dumps({"settings": settings, "results": results}, indent=1) + "\n")
    return 0 if all(r["match"] for r in results.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
