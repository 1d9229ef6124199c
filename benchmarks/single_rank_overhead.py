"""What axolab adds to a training step on one rank, found with torch's profiler.

The same Llama (benchmarks/speed_common.py, default small-llama) as the plain Hugging Face
model and as axolab on grid (1,1,1,1), same weights, same batch, AdamW. First both are timed
side by side in interleaved rounds (``speed_common.time_rounds``: medians, ratio axolab / HF,
target <= 1.03). Then each runs ``--profile-steps`` steps under ``torch.profiler`` (CPU
activities), and the operators are compared by total self CPU time: the table lists the ones
where axolab spends more than HF, largest difference first, with call counts, so an overhead
shows up as the operator (and count) that causes it rather than as a guess.

Usage: python benchmarks/single_rank_overhead.py [--repeats 7] [--steps 2] [--profile-steps 3]
           [--top 15] [--out results/bench/single_rank_overhead.json] [shape flags of
           training_speed.py: --hidden --layers --heads --kv-heads --intermediate --vocab
           --seq-len --global-batch --threads --seed --attn]
"""

from __future__ import annotations

import argparse
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
         "vocab": 1024, "seq_len": 128, "global_batch": 8, "seed": 0, "threads": 1}


def operator_times(step, steps: int) -> dict[str, dict]:
    """Self CPU time (us) and calls per operator over ``steps`` profiled steps (after one)."""
    from torch.profiler import ProfilerActivity, profile

    step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return {e.key: {"self_us": e.self_cpu_time_total / steps, "calls": e.count / steps}
            for e in prof.key_averages()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--profile-steps", type=int, default=3)
    ap.add_argument("--top", type=int, default=15)
    for flag, default in SHAPE.items():
        ap.add_argument(f"--{flag.replace('_', '-')}", dest=flag, type=int, default=default)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--out", default="results/bench/single_rank_overhead.json")
    a = ap.parse_args(argv)
    s = {k: getattr(a, k) for k in (*SHAPE, "repeats", "warmup", "steps", "attn")}
    torch.set_num_threads(a.threads)
    ids = sc.global_batch(s)
    steps = {"HF + AdamW": sc.hf_step(s, ids),
             "axolab (1,1,1,1)": sc.axolab_step(s, ids, (1, 1, 1, 1))[0]}
    timed = sc.time_rounds(steps, s)
    med = {n: statistics.median(t) for n, t in timed["times"].items()}
    ratio = med["axolab (1,1,1,1)"] / med["HF + AdamW"]
    losses = timed["first_loss"]
    print(f"step-0 loss: HF {losses['HF + AdamW']:.6f}, axolab {losses['axolab (1,1,1,1)']:.6f}")
    print(f"median step: HF {med['HF + AdamW'] * 1e3:.1f} ms, axolab "
          f"{med['axolab (1,1,1,1)'] * 1e3:.1f} ms; ratio {ratio:.3f} (target <= 1.03)")

    ops = {name: operator_times(step, a.profile_steps) for name, step in steps.items()}
    hf, ax = ops["HF + AdamW"], ops["axolab (1,1,1,1)"]
    rows = []
    for key in set(hf) | set(ax):
        h, x = hf.get(key, {"self_us": 0.0, "calls": 0}), ax.get(key, {"self_us": 0.0, "calls": 0})
        rows.append({"op": key, "hf_us": h["self_us"], "axolab_us": x["self_us"],
                     "diff_us": x["self_us"] - h["self_us"], "hf_calls": h["calls"],
                     "axolab_calls": x["calls"]})
    rows.sort(key=lambda r: -r["diff_us"])
    total = {n: sum(v["self_us"] for v in o.values()) for n, o in ops.items()}
    print(f"\nprofiled self CPU per step: HF {total['HF + AdamW'] / 1e3:.1f} ms, axolab "
          f"{total['axolab (1,1,1,1)'] / 1e3:.1f} ms")
    print(f"{'operator':44s} {'HF us':>9s} {'axolab us':>10s} {'diff us':>9s} {'calls HF/ax':>12s}")
    for r in rows[:a.top]:
        print(f"{r['op'][:44]:44s} {r['hf_us']:9.0f} {r['axolab_us']:10.0f} {r['diff_us']:9.0f} "
              f"{r['hf_calls']:5.0f}/{r['axolab_calls']:<5.0f}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    machine = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
               "torch": torch.__version__,
               "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    write_text_atomic(out, json.dumps({"settings": s, "machine": machine, "times": timed["times"],
                               "median_s": med, "ratio": ratio, "losses": losses,
                               "operators": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
