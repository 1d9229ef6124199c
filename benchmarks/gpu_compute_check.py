"""The planner's compute model against one GPU, and axolab's one-rank overhead there.

Two measurements on one CUDA device, bf16 autocast with fp32 master weights, AdamW:

1. ``overhead``: plain Hugging Face Llama vs axolab on grid (1,1,1,1), same weights and batch,
   interleaved rounds (``speed_common.time_rounds`` with a device synchronize as the barrier);
   median step times and their ratio (target <= 1.03).
2. ``layers``: decoder layers of the published Alps run's shape (hidden 9216, 72 heads, 2048
   tokens per sequence, 4 sequences per GPU: one GPU's work in a grid whose Z axis gathers
   whole layers, as in the best Alps grid at 4 sequences per GPU) with a gated MLP of the same
   matmul FLOPs (8 h^2 per token), activation checkpointing on, trained by axolab at
   (1,1,1,1). Its step is timed, then profiled (CUDA kernels summed by kind: matmul,
   attention, optimizer, the rest), and set beside ``axolab.perfmodel.predict`` for the same
   model and batch on the "alps" preset with this GPU's memory (the H200 has the H100's tensor
   cores and clocks; its HBM is faster, so the measured elementwise time is, if anything,
   below an H100's).
   Then micro-benchmarks of the same layer's pieces give the figures a preset is made of:
   bf16 matmul rate on the layer's matmul shapes (forward and both gradient products) as a
   fraction of the data-sheet peak, fused causal attention forward + backward as a fraction
   of that matmul rate, device-to-device copy bandwidth, and the cost of one tiny kernel.

Usage: python benchmarks/gpu_compute_check.py [--cases overhead,layers] [--repeats 5]
           [--steps 3] [--layers 2] [--out results/bench/gpu_compute_check.json]
           [--tiny]  (a small model on whatever device there is: a dry run of the script)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from axolab.files import write_text_atomic

sys.path.insert(0, str(Path(__file__).resolve().parent))
import speed_common as sc  # noqa: E402

PEAK_BF16 = 989e12  # H100 / H200 SXM dense bf16 (NVIDIA data sheets)
OVERHEAD_SHAPE = {"hidden": 2048, "layers": 16, "heads": 16, "kv_heads": 8,
                  "intermediate": 5632, "vocab": 32000, "seq_len": 2048, "global_batch": 4}
ALPS_LAYER_SHAPE = {"hidden": 9216, "heads": 72, "kv_heads": 72, "intermediate": 24576,
                    "vocab": 50304, "seq_len": 2048, "global_batch": 4}
TINY = {"hidden": 128, "layers": 2, "heads": 4, "kv_heads": 2, "intermediate": 344,
        "vocab": 512, "seq_len": 64, "global_batch": 2}
KINDS = (("matmul", ("gemm", "cutlass", "nvjet", "xmma", "cublas", "mm_")),
         ("attention", ("flash", "fmha", "attention", "sdpa")),
         ("optimizer", ("multi_tensor", "adam", "foreach")))


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build(s: dict, axolab: bool):
    """The HF model (or axolab's (1,1,1,1) conversion of it) built on the device, with AdamW
    and a bf16-autocast training step that returns the detached loss."""
    from axolab.parallel import Grid, parallelize, sync_gradients
    from axolab.activation_checkpointing import enable_activation_checkpointing

    dev = device()
    torch.manual_seed(s["seed"])
    with dev:
        model = sc.build_hf(s)
    if axolab:
        model = parallelize(model, Grid.init(1, 1, 1, 1))
    if s.get("checkpointing"):
        enable_activation_checkpointing(model)
        model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=sc.LR)
    ids = sc.global_batch(s).to(dev)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            loss = model(input_ids=ids, labels=ids, use_cache=False).loss
        loss.backward()
        if axolab:
            sync_gradients(model)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.detach()
    return model, step


def kernel_kinds(step, steps: int = 2) -> dict:
    """Device time (s per step) of the kernels of ``step`` by kind, from torch.profiler, and
    the largest kernels of each kind (names shortened)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    step()
    sync()
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        sync()
    totals = {k: 0.0 for k, _ in KINDS} | {"other": 0.0}
    top = {k: [] for k in totals}
    for e in prof.key_averages():
        # Kernels only: the host-side operators carry their kernels' time too, and CUPTI adds
        # markers of its own ("Command Buffer Full") that are not work.
        if e.device_type != DeviceType.CUDA or e.key.startswith("Command Buffer"):
            continue
        t = e.self_device_time_total
        name = e.key.lower()
        kind = next((k for k, keys in KINDS if any(w in name for w in keys)), "other")
        totals[kind] += t / 1e6 / steps
        top[kind].append((round(t / 1e3 / steps, 3), e.key[:90]))
    totals["all_kernels"] = sum(totals.values())
    return {"seconds": totals, "top_ms": {k: sorted(v, reverse=True)[:6] for k, v in top.items()}}


def planner(s: dict, model) -> dict:
    """axolab.perfmodel's prediction of this step on one GPU of the alps preset, memory size
    and bandwidth of the device measured on."""
    from axolab.perfmodel import GridShape, Workload, get_machine, model_shapes, predict

    machine = get_machine("alps")
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        machine = dataclasses.replace(machine, memory_gib=props.total_memory / 2**30)
    work = Workload(global_batch=s["global_batch"], seq_len=s["seq_len"], precision="bf16",
                    activation_checkpointing=bool(s.get("checkpointing")))
    p = predict(model_shapes(model.config), GridShape(1, 1, 1, 1), work, machine)
    return p.to_dict() | {"machine": dataclasses.asdict(machine)}


def timed(fn, repeats: int = 10) -> float:
    """Median seconds of one call of ``fn`` over ``repeats``, the device synchronized around
    each call."""
    fn()
    sync()
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def pieces(s: dict) -> dict:
    """Rates of the layer's parts: bf16 matmuls on its shapes, fused causal attention, copy
    bandwidth, one tiny kernel."""
    dev, bf = device(), torch.bfloat16
    n, h, i = s["global_batch"] * s["seq_len"], s["hidden"], s["intermediate"]
    qkv = (s["heads"] + 2 * s["kv_heads"]) * h // s["heads"]
    out = {"matmul": {}}
    flops = secs = 0.0
    for name, (k, m) in {"qkv": (h, qkv), "o": (h, h), "gate_up": (h, 2 * i),
                         "down": (i, h)}.items():
        x, w, g = (torch.randn(a, b, device=dev, dtype=bf) for a, b in ((n, k), (m, k), (n, m)))
        rates = {}
        for part, fn in {"forward": lambda: x @ w.t(), "input_grad": lambda: g @ w,
                         "weight_grad": lambda: g.t() @ x}.items():
            t = timed(fn)
            rates[part] = 2 * n * k * m / t
            flops, secs = flops + 2 * n * k * m, secs + t
        out["matmul"][name] = {p: r / PEAK_BF16 for p, r in rates.items()}
    out["matmul_efficiency"] = flops / secs / PEAK_BF16
    b, hd, S = s["global_batch"], h // s["heads"], s["seq_len"]
    q, kk, v = (torch.randn(b, s["heads"], S, hd, device=dev, dtype=bf, requires_grad=True)
                for _ in range(3))

    def attn():
        o = torch.nn.functional.scaled_dot_product_attention(q, kk, v, is_causal=True)
        o.backward(torch.ones_like(o))
    t = timed(attn)
    attn_flops = 3 * 4.0 * b * s["heads"] * S * S * hd * 0.5  # fwd + 2x bwd, causal half
    out["attention_rate_flops"] = attn_flops / t
    out["attention_efficiency_vs_matmul"] = attn_flops / t / (flops / secs)
    big = torch.empty(2**28 if dev.type == "cuda" else 2**22, dtype=torch.uint8, device=dev)
    dst = torch.empty_like(big)
    out["copy_gb_s"] = 2 * big.numel() / timed(lambda: dst.copy_(big)) / 1e9
    tiny = torch.zeros(8, device=dev)
    t = timed(lambda: [tiny.add_(1) for _ in range(1000)], repeats=5)
    out["tiny_kernel_s"] = t / 1000
    return out


def case_overhead(s: dict) -> dict:
    steps = {}
    for name, ax in (("HF + AdamW", False), ("axolab (1,1,1,1)", True)):
        steps[name] = build(s, ax)[1]
    r = sc.time_rounds(steps, s, barrier=sync)
    med = {n: statistics.median(t) for n, t in r["times"].items()}
    ratio = med["axolab (1,1,1,1)"] / med["HF + AdamW"]
    print(f"[overhead] step-0 loss {r['first_loss']}; median step HF "
          f"{med['HF + AdamW'] * 1e3:.1f} ms, axolab {med['axolab (1,1,1,1)'] * 1e3:.1f} ms; "
          f"ratio {ratio:.3f} (target <= 1.03)", flush=True)
    return {"shape": s, "median_s": med, "ratio": ratio, "times": r["times"],
            "first_loss": r["first_loss"], "last_loss": r["last_loss"]}


def case_layers(s: dict) -> dict:
    if torch.cuda.is_available():  # the peak of this case alone, not of one run before it
        torch.cuda.reset_peak_memory_stats()
    model, step = build(s, axolab=True)
    t = statistics.median(sc.time_rounds({"axolab": step}, s, barrier=sync)["times"]["axolab"])
    kinds = kernel_kinds(step)
    pred = planner(s, model)
    peak_mib = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None
    del model, step
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    parts = pieces(s)
    measured = kinds["seconds"]
    bd = pred["compute_breakdown_s"]
    print(f"[layers] {s['layers']} layers of h={s['hidden']}, {s['global_batch']}x"
          f"{s['seq_len']} tokens, checkpointing {bool(s.get('checkpointing'))}: measured step "
          f"{t * 1e3:.1f} ms, predicted {pred['step_time_s'] * 1e3:.1f} ms "
          f"({pred['step_time_s'] / t - 1:+.1%}); peak memory {peak_mib or 0:.0f} MiB, "
          f"predicted {sum(pred['memory_gib'].values()) * 1024:.0f} MiB", flush=True)
    for kind, key in (("matmul", "matmul_s"), ("attention", "attention_s"),
                      ("optimizer", "optimizer_s"), ("other", "elementwise_s")):
        print(f"[layers]   {kind:<9} kernels {measured[kind] * 1e3:8.1f} ms   model "
              f"{bd[key] * 1e3:8.1f} ms", flush=True)
    print(f"[layers]   all kernels {measured['all_kernels'] * 1e3:.1f} ms; model overhead "
          f"(per-kernel cost) {bd['overhead_s'] * 1e3:.1f} ms", flush=True)
    print(f"[pieces] matmul {parts['matmul_efficiency']:.3f} of {PEAK_BF16 / 1e12:.0f} TFLOP/s "
          f"(by shape: {json.dumps(parts['matmul'])}); attention "
          f"{parts['attention_efficiency_vs_matmul']:.3f} of the matmul rate; copy "
          f"{parts['copy_gb_s']:.0f} GB/s; tiny kernel {parts['tiny_kernel_s'] * 1e6:.1f} us",
          flush=True)
    return {"shape": s, "measured_step_s": t, "kernels": kinds, "peak_memory_mib": peak_mib,
            "prediction": pred, "pieces": parts}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="overhead,layers")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--tiny", action="store_true")
    ap.add_argument("--out", default="results/bench/gpu_compute_check.json")
    a = ap.parse_args(argv)
    common = {"seed": 0, "attn": "sdpa", "repeats": a.repeats, "warmup": 1, "steps": a.steps}
    shapes = {"overhead": dict(TINY if a.tiny else OVERHEAD_SHAPE),
              "layers": dict(TINY if a.tiny else ALPS_LAYER_SHAPE, layers=a.layers,
                             checkpointing=True)}
    dev = device()
    result = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
              "device": (torch.cuda.get_device_name(0) if dev.type == "cuda"
                         else platform.processor()),
              "host": platform.node()}
    print(f"device {result['device']}, torch {torch.__version__}", flush=True)
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for case in a.cases.split(","):
        fn = {"overhead": case_overhead, "layers": case_layers}[case]
        result[case] = fn(common | shapes[case])
        write_text_atomic(out, json.dumps(result, indent=1, default=str) + "\n")
        if dev.type == "cuda":
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
