"""Training-step speed of axolab against plain Hugging Face and PyTorch-native tensor parallelism.

Model: a transformers Llama from LlamaConfig, random init with the same seed in every variant
(default hidden 256, 4 layers, 8 heads, 4 kv heads, intermediate 688, vocab 1024: small-llama),
fp32, one fixed global batch (default 8 x 128 tokens) of random tokens. Every variant times the
whole training step: forward with labels, backward, sync_gradients (axolab), AdamW step,
zero_grad. Variants of one comparison are built side by side and timed in rounds: each round
runs every variant once (``--steps`` consecutive steps, averaged), in an order rotated by the
round, so that background load on a shared machine weighs on all of them alike; ``--warmup``
untimed rounds first (matmul tuning happens there), ``--repeats`` timed rounds, medians
reported, comparisons as ratios of medians. Multi-rank steps are timed barrier to barrier on
every rank and the slowest rank counts.

1. Overhead, one process (``--threads`` threads, default 1 like each rank): axolab on grid
   (1,1,1,1), where sync_gradients is a no-op, against the HF model with torch AdamW.
   Ratio = axolab time / HF time, target <= 1.05.
2. Tensor parallelism of degree 4 on 4 gloo ranks (one thread each, on however many cores):
   DTensor ``parallelize_module`` with ColwiseParallel on q/k/v/gate/up and RowwiseParallel on
   o/down (torchtitan's recipe), in two plans: "layers" keeps embedding, norms and lm head
   replicated; "titan" also shards the embedding (RowwiseParallel) and the lm head
   (ColwiseParallel, logits all-gathered); neither uses sequence or loss parallelism. Against
   axolab (1,1,4,1), which is the same Megatron split (q/k/v/gate/up by output over Y, o/down
   by input over Y, one all-reduce after each) plus a vocab-parallel lm head and loss, and
   against (1,1,2,2) and (1,1,1,4) (X splits the hidden size: an all-reduce after every
   linear, and attention computed redundantly by the X ranks). Ratio = best DTensor time /
   this time (speed-up), target >= 1.0. axolab runs with ``Optimizations()`` (overlaps on).
3. Model FLOP utilization: ``axolab.metrics.flops_per_token(config, seq_len)`` x tokens per
   step / step time / peak, serial (HF and axolab (1,1,1,1)) and for the fastest axolab
   variant on 4 ranks. Serial peak: ``measured_cpu_peak()`` in this process. Parallel peak: the
   sum over ranks of ``measured_cpu_peak()`` run on all 4 ranks at once (after a barrier, once
   per timed round, median per rank). A best-of-5 matmul can catch a moment with a core to
   itself and overstate a rank's share of 2 cores, so MFU is also given against the sustained
   rate of 0.5 s of back-to-back matmuls on all ranks at once (``speed_common.sustained_peak``):
   what the ranks really get, other jobs on the machine included.
4. Optimizations on 4 ranks, grids (1,2,1,2) and (2,1,2,1): ``Optimizations.none()`` vs
   ``Optimizations()`` (every overlap on; ratio = none / on) and ``Optimizations(tune_matmul=True)``
   vs ``Optimizations()`` (ratio = untuned / tuned).

One set of 4 ranks (axolab.perfmodel.ranks.run_on_ranks) runs comparisons 2-4 together. Every
variant's loss is checked against the serial HF model at step 0 and after the last step (all
run the same number of AdamW steps on the same batch), on every rank. Printed: the loss check,
the peaks, and a table (what, variant, median s, tokens/s, ratio, target, met?); ``--out``
gets settings, machine, per-round times, losses and peaks as JSON.

Usage:
  python benchmarks/training_speed.py [--repeats 5] [--warmup 1] [--steps 2] [--threads 1]
      [--hidden 256] [--layers 4] [--heads 8] [--kv-heads 4] [--intermediate 688]
      [--vocab 1024] [--seq-len 128] [--global-batch 8] [--seed 0] [--attn sdpa]
      [--out results/training_speed.json]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))  # speed_common, also in spawned ranks
import speed_common as sc  # noqa: E402

LOSS_RTOL = 1e-4  # fp32 with another summation order: agreement to ~1e-6 is expected


def combine(per_rank: list) -> dict:
    """Per variant and round the slowest rank's time; rank 0's losses and how far other ranks'
    differ from them; per rank the median of its peaks."""
    first = per_rank[0]
    return {
        "times": {n: [max(r["times"][n][i] for r in per_rank) for i in range(len(t))]
                  for n, t in first["times"].items()},
        "first_loss": first["first_loss"], "last_loss": first["last_loss"],
        "loss_spread_over_ranks": {n: max(abs(r[k][n] - first[k][n]) for r in per_rank
                                          for k in ("first_loss", "last_loss"))
                                   for n in first["times"]},
        "peak_per_rank": [statistics.median(r["peak"]) for r in per_rank],
        "sustained_per_rank": [statistics.median(r["sustained"]) for r in per_rank],
        "per_rank_peaks": [{"peak": r["peak"], "sustained": r["sustained"]} for r in per_rank],
    }


def main(argv=None) -> int:
    from axolab.metrics import flops_per_token
    from axolab.perfmodel.ranks import run_on_ranks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for flag, default in (("repeats", 5), ("warmup", 1), ("steps", 2), ("threads", 1),
                          ("hidden", 256), ("layers", 4), ("heads", 8), ("kv-heads", 4),
                          ("intermediate", 688), ("vocab", 1024), ("seq-len", 128),
                          ("global-batch", 8), ("seed", 0)):
        ap.add_argument(f"--{flag}", type=int, default=default, help=f"({default})")
    ap.add_argument("--attn", default="sdpa", help="attention implementation (sdpa)")
    ap.add_argument("--out", default="results/training_speed.json")
    a = ap.parse_args(argv)
    if a.repeats < 1 or a.warmup < 0 or a.steps < 1:
        ap.error("need --repeats >= 1, --warmup >= 0, --steps >= 1")
    s = {k: getattr(a, k) for k in ("repeats", "warmup", "steps", "threads", "hidden", "layers",
                                    "heads", "kv_heads", "intermediate", "vocab", "seq_len",
                                    "global_batch", "seed", "attn")}
    tokens = a.global_batch * a.seq_len
    model_flops = flops_per_token(sc.llama_config(s), a.seq_len) * tokens
    machine = {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
               "cpu": platform.processor() or platform.machine(), "platform": platform.platform(),
               "python": platform.python_version(), "torch": torch.__version__,
               "transformers": __import__("transformers").__version__,
               "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
               "loadavg_start": os.getloadavg()}
    print(f"Llama hidden {a.hidden}, {a.layers} layers, {a.heads}/{a.kv_heads} heads, "
          f"intermediate {a.intermediate}, vocab {a.vocab}; batch {a.global_batch} x {a.seq_len}; "
          f"{model_flops / 1e9:.2f} GFLOP per step; {a.warmup} warm-up + {a.repeats} rounds of "
          f"{a.steps} step(s); {machine['cpus_usable']} CPUs, torch {torch.__version__}",
          flush=True)

    # 1 (and serial MFU): one process, variants side by side.
    torch.set_num_threads(a.threads)
    ids = sc.global_batch(s)
    serial = sc.time_rounds({"HF + AdamW": sc.hf_step(s, ids),
                             "axolab (1,1,1,1)": sc.axolab_step(s, ids, (1, 1, 1, 1))[0]}, s)
    serial["peak_median"] = statistics.median(serial["peak"])
    serial["sustained_median"] = statistics.median(serial["sustained"])
    ref_loss = serial["first_loss"]["HF + AdamW"]
    print(f"serial done; HF step-0 loss {ref_loss:.6f}; 4 ranks next", flush=True)

    # 2-4: one set of gloo ranks times every multi-rank variant, interleaved.
    parallel = combine(run_on_ranks(sc.rank_session, sc.WORLD, s))
    machine["loadavg_end"] = os.getloadavg()

    med = {n: statistics.median(t) for res in (serial, parallel) for n, t in res["times"].items()}
    rows = []

    def row(what, variant, t, ratio=None, target="", met=None, shown=None):
        rows.append({"what": what, "variant": variant, "median_s": t,
                     "tokens_per_s": tokens / t, "ratio": ratio, "target": target,
                     "met": met, "ratio_text": shown or ("" if ratio is None else f"{ratio:.3f}x")})

    hf_t, ax_t = med["HF + AdamW"], med["axolab (1,1,1,1)"]
    row("1 overhead, 1 proc", "HF + AdamW", hf_t, 1.0)
    row("1 overhead, 1 proc", "axolab (1,1,1,1)", ax_t, ax_t / hf_t, "time <= 1.05x",
        ax_t / hf_t <= 1.05)
    dt_names = [n for n, k, _ in sc.TP_VARIANTS if k == "dtensor"]
    best_dt = min(med[n] for n in dt_names)
    for name, kind, _ in sc.TP_VARIANTS:
        r = best_dt / med[name]
        row("2 TP=4, 4 ranks", name, med[name], r, "" if kind == "dtensor" else "speed >= 1.0x",
            None if kind == "dtensor" else r >= 1.0)
    for name in ("HF + AdamW", "axolab (1,1,1,1)"):
        mfu = model_flops / med[name] / serial["peak_median"]
        row("3 MFU, 1 proc", name, med[name], mfu, shown=f"{mfu:.1%}")
    ax_names = [n for n, k, _ in sc.TP_VARIANTS + sc.OPT_VARIANTS if k == "axolab"]
    fastest = min(ax_names, key=med.get)
    for label, key in (("measured_cpu_peak", "peak_per_rank"), ("sustained", "sustained_per_rank")):
        mfu = model_flops / med[fastest] / sum(parallel[key])
        row(f"3 MFU, 4 ranks ({label})", fastest, med[fastest], mfu, shown=f"{mfu:.1%}")
    for g in sc.OPT_GRIDS:
        off, on, tuned = (med[sc.opt_name(g, o)] for o in ("none", "default", "tuned"))
        what = "4 optimizations " + sc.grid_text(g)
        row(what, "Optimizations.none()", off, 1.0)
        row(what, "Optimizations() vs none", on, off / on)
        row(what, "tune_matmul=True vs Optimizations()", tuned, on / tuned)

    # Same weights, batch and number of AdamW steps everywhere: losses must agree at the first
    # step (forward) and at the last (gradients, their sync and the optimizer too).
    ref_last = serial["last_loss"]["HF + AdamW"]
    loss_check = {}
    for n in med:
        res = parallel if n in parallel["times"] else serial
        first, last = res["first_loss"][n], res["last_loss"][n]
        spread = parallel["loss_spread_over_ranks"].get(n, 0.0)
        err0 = abs(first - ref_loss) / abs(ref_loss)
        err1 = (abs(last - ref_last) + spread) / abs(ref_last)
        loss_check[n] = {"first": first, "last": last, "rel_err_first": err0,
                         "rel_err_last": err1, "spread_over_ranks": spread,
                         "ok": err0 <= LOSS_RTOL and err1 <= LOSS_RTOL}
    print(f"\nlosses against the serial HF model (step 0 {ref_loss:.6f}, after "
          f"{(a.warmup + a.repeats) * a.steps} AdamW steps {ref_last:.6f}; rel. tolerance "
          f"{LOSS_RTOL:g}, differences between ranks included):")
    for n, c in loss_check.items():
        print(f"  {n:<26} {c['first']:.6f} (rel err {c['rel_err_first']:.1e})  {c['last']:.6f} "
              f"(rel err {c['rel_err_last']:.1e})  {'ok' if c['ok'] else 'MISMATCH'}")

    def gflops(values):
        return ", ".join(f"{v / 1e9:.1f}" for v in values)
    print(f"\npeak GFLOP/s (median over rounds): serial {gflops([serial['peak_median']])} "
          f"measured_cpu_peak, {gflops([serial['sustained_median']])} sustained; 4 ranks at once, "
          f"per rank: {gflops(parallel['peak_per_rank'])} measured_cpu_peak (sum "
          f"{gflops([sum(parallel['peak_per_rank'])])}), {gflops(parallel['sustained_per_rank'])} "
          f"sustained (sum {gflops([sum(parallel['sustained_per_rank'])])})")
    print(f"\n{'what':<36} {'variant':<36} {'median s':>9} {'tokens/s':>9} {'ratio':>8} "
          f"{'target':<14} met?")
    for r in rows:
        met = "" if r["met"] is None else ("yes" if r["met"] else "NO")
        print(f"{r['what']:<36} {r['variant']:<36} {r['median_s']:9.4f} {r['tokens_per_s']:9.0f} "
              f"{r['ratio_text']:>8} {r['target']:<14} {met}")
    print("ratios: 1 = time / HF time; 2 = best DTensor time / time (axolab (1,1,4,1) is the "
          "Megatron split that DTensor runs); 4 = time without / with")

    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "settings": s, "machine": machine, "model_flops_per_step": model_flops,
        "tokens_per_step": tokens, "rows": rows, "loss_check": loss_check,
        "loss_rtol": LOSS_RTOL, "serial": serial, "parallel": parallel,
        "variants": {"tp": sc.TP_VARIANTS, "optimizations": sc.OPT_VARIANTS},
    }, indent=1, default=str) + "\n")
    print(f"wrote {out}")
    return 0 if all(c["ok"] for c in loss_check.values()) else 1  # a wrong result is no speed


if __name__ == "__main__":
    raise SystemExit(main())
