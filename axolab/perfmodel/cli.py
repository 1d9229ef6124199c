"""``axolab plan``: rank grids for a model on N GPUs of a machine; ``axolab plan calibrate``.

    axolab plan --model llama-3.1-405b --gpus 4096 --machine frontier --seq-len 8192
    axolab plan --model small-llama --gpus 4 --machine-file this.json --global-batch 8 --json
    axolab plan calibrate --out this.json --ranks 4

Exit status: 0 when a grid fits, 2 when none does (the answer says how much memory the best
grid needs and from how many GPUs on it fits) or the input is invalid.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from ..optimizations import DEPTH_GRAD_DTYPES, Optimizations
from .machines import presets
from .memory import GIB
from .workload import PRECISIONS


def add_plan_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``plan`` (and ``plan calibrate``) on an argparse subparsers object."""
    p = subparsers.add_parser(
        "plan", help="rank (data, z, y, x) grids by predicted step time; check memory",
        description="Predict step time and peak memory of every valid 4D grid and rank them.")
    p.add_argument("--model", help="preset (llama-3.1-405b, small-llama, ...) or a directory / "
                                    "config.json of a Hugging Face model")
    p.add_argument("--gpus", type=int, help="number of GPUs (ranks)")
    p.add_argument("--machine", default="frontier",
                   help=f"preset: {', '.join(presets())}; or this-machine (measured now, "
                        "roughly; prefer --machine-file). Default: frontier")
    p.add_argument("--machine-file", help="machine JSON from `axolab plan calibrate` "
                                          "(overrides --machine)")
    p.add_argument("--global-batch", type=int, help="sequences per step (default: one per GPU)")
    p.add_argument("--seq-len", type=int, default=4096, help="tokens per sequence (4096)")
    p.add_argument("--micro-batch", type=int,
                   help="sequences per rank per forward/backward (default: largest that fits)")
    p.add_argument("--precision", choices=PRECISIONS, default="bf16")
    p.add_argument("--no-activation-checkpointing", action="store_true",
                   help="keep every layer's activations instead of recomputing them")
    p.add_argument("--late-backward-prefetch", action="store_true",
                   help="plan for a run with late_backward_prefetch=True (one layer held "
                        "gathered in backward instead of two)")
    p.add_argument("--depth-grad-dtype", choices=DEPTH_GRAD_DTYPES, default="fp32",
                   help="plan for a run with depth_grad_dtype (the weight gradients' Z "
                        "reduce-scatter in fp32, or bf16: half the bytes)")
    p.add_argument("--no-overlap-communication", action="store_true",
                   help="plan for a run with overlap_communication=False (every collective "
                        "blocking); by default collectives overlap as axolab's Optimizations do")
    p.add_argument("--memory-fraction", type=float, default=0.9,
                   help="usable fraction of GPU memory (0.9; the rest is allocator slack)")
    p.add_argument("--top", type=int, default=10, help="rows to show (10; 0 for all)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = p.add_subparsers(dest="plan_command", metavar="{calibrate}")
    c = sub.add_parser("calibrate", help="measure this machine with N CPU ranks; write a "
                                         "machine file for --machine-file")
    c.add_argument("--out", required=True, help="machine JSON file to write")
    c.add_argument("--ranks", type=int, default=4, help="CPU ranks started at once (4)")
    c.add_argument("--name", default="this-machine", help="machine name in the file")
    p.set_defaults(func=run_plan)
    c.set_defaults(func=run_plan)
    return p


def run_plan(args) -> int:
    """Handler of ``axolab plan`` and ``axolab plan calibrate``: prints, returns the exit code."""
    try:
        if getattr(args, "plan_command", None) == "calibrate":
            return _calibrate(args)
        return _plan(args)
    except ValueError as e:
        print(f"axolab plan: {e}", file=sys.stderr)
        return 2


def _calibrate(args) -> int:
    from .calibrate import CalibrationConfig, calibrate
    from .machines import save_machine

    machine = calibrate(CalibrationConfig(ranks=args.ranks, name=args.name))
    path = save_machine(machine, args.out)
    print(f"{path}: {machine.peak_flops_fp32 / 1e9:.1f} GFLOP/s fp32 per rank, "
          f"{machine.memory_bandwidth_gb_s:.1f} GB/s memory, "
          f"{machine.op_overhead_s * 1e6:.1f} us per op, overlap efficiency "
          f"{machine.overlap_efficiency:.2f}, ms per wait by group size: "
          + (", ".join(f"{g}: {t * 1e3:.2f}" for g, t in machine.sync_by_group)
             or f"{machine.sync_s * 1e3:.2f}"))
    print(f"{'op':>15} {'ranks':>6} {'stride':>6} {'latency us':>11} {'GB/s':>8}")
    for m in machine.collectives:
        print(f"{m.op:>15} {m.group_size:>6} {m.stride:>6} {m.latency_s * 1e6:11.0f} "
              f"{m.bandwidth_gb_s:8.2f}")
    return 0


def _model(text: str):
    from ..presets import PRESETS

    if text in PRESETS:
        return text
    path = Path(text)
    if path.exists():
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(path.parent if path.is_file() else path))
    raise ValueError(f"--model {text!r} is neither a preset ({', '.join(PRESETS)}) nor a path")


def _machine(args):
    from .machines import get_machine, load_machine

    if args.machine_file:
        return load_machine(args.machine_file)
    if args.machine == "this-machine":
        from .calibrate import quick_machine

        machine = quick_machine(args.gpus)
        print(f"note: {machine.source}", file=sys.stderr)
        return machine
    return get_machine(args.machine)


def _plan(args) -> int:
    from .search import min_gpus_to_fit, search

    if not args.model or not args.gpus:
        raise ValueError("--model and --gpus are required (or use `axolab plan calibrate`)")
    model, machine = _model(args.model), _machine(args)
    options = dict(global_batch=args.global_batch, seq_len=args.seq_len,
                   micro_batch=args.micro_batch, precision=args.precision,
                   activation_checkpointing=not args.no_activation_checkpointing,
                   optimizations=dataclasses.replace(
                       Optimizations.none(), depth_grad_dtype=args.depth_grad_dtype)
                   if args.no_overlap_communication
                   else Optimizations(prefetch_late_in_backward=args.late_backward_prefetch,
                                      depth_grad_dtype=args.depth_grad_dtype),
                   memory_fraction=args.memory_fraction)
    rows = search(model, args.gpus, machine, **options)
    fits = rows[0].fits
    need = None if fits else min_gpus_to_fit(model, args.gpus, machine, **options)
    message = None if fits else _no_fit_message(args, machine, rows, need)
    shown = rows[:args.top] if args.top else rows
    if args.json:
        print(json.dumps({
            "model": args.model, "gpus": args.gpus, "machine": machine.name,
            "global_batch": args.global_batch or args.gpus, "seq_len": args.seq_len,
            "precision": args.precision, "depth_grad_dtype": args.depth_grad_dtype,
            "activation_checkpointing": not args.no_activation_checkpointing,
            "fits": fits, "min_gpus_to_fit": need, "message": message,
            "mfu_counts": "model FLOPs, without activation-checkpointing recomputation",
            "grids": len(rows), "rows": [r.to_dict() for r in shown]}, indent=2))
    else:
        print(_table(args, machine, rows, shown))
        if message:
            print(message)
    return 0 if fits else 2


def _no_fit_message(args, machine, rows, need) -> str:
    best = min(rows, key=lambda r: r.memory.total)
    text = (f"{args.model} does not fit on {args.gpus} GPUs of {machine.name}: the best grid "
            f"({best.grid}, micro-batch {best.micro_batch}) needs "
            f"{best.memory.total / GIB:.1f} GiB per GPU, {best.memory_available / GIB:.1f} GiB "
            f"usable of {machine.memory_gib:.3g} GiB; ")
    if need is None:
        return text + "no power-of-two multiple of the GPU count up to 2^20 fits"
    return text + f"needs at least {need} GPUs"


def _table(args, machine, rows, shown) -> str:
    head = (f"{args.model} on {args.gpus} GPUs of {machine.name} "
            f"({machine.gpus_per_node}/node, {machine.memory_gib:.3g} GiB each): "
            f"global batch {args.global_batch or args.gpus} x {args.seq_len} tokens, "
            f"{args.precision}, Z gradients in {args.depth_grad_dtype}, "
            f"checkpointing {'off' if args.no_activation_checkpointing else 'on'}"
            f"; {len(rows)} valid grids, {sum(r.fits for r in rows)} fit")
    cols = ("rank", "D x Z x Y x X", "micro", "step s", "compute", "comm", "exposed", "x", "y",
            "z", "data",
            "GiB", "fits", "MFU")
    top = rows[0]  # every row counts the same model FLOPs; MFU is defined by them
    flops = top.mfu * top.step_time_s * args.gpus * machine.peak_flops(args.precision)
    recompute = "" if args.no_activation_checkpointing else \
        "; the compute column also times the recomputed forward of checkpointing"
    lines = [head, f"MFU counts model FLOPs, {flops:.4g} FLOP per step (6 x parameters x "
             f"tokens plus attention, without recomputation){recompute}",
             "  ".join(f"{c:>9}" for c in cols)]
    for i, r in enumerate(shown, 1):
        ax = r.comm.by_axis
        cells = (i, str(r.grid), r.micro_batch, f"{r.step_time_s:.3g}", f"{r.compute.total:.3g}",
                 f"{r.comm.total:.3g}", f"{r.exposed_comm_s:.3g}", *(f"{ax.get(a, 0.0):.2g}" for a in ("x", "y", "z")),
                 f"{ax.get('data', 0.0) + ax.get('batch', 0.0):.2g}",
                 f"{r.memory.total / GIB:.3g}", "yes" if r.fits else "NO", f"{r.mfu:.1%}")
        lines.append("  ".join(f"{c:>9}" for c in cells))
    return "\n".join(lines)
