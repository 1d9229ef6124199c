"""Validate axolab's performance and memory model against real CPU training on every grid.

For each world size (``--ranks 4,8``) one set of gloo ranks builds a small Llama with axolab's
own code path (``axolab.train.build_model``, ``_train_step``, ``sync_gradients``,
``clip_grad_norm_``, AdamW) on every valid (data, z, y, x) grid, then runs rounds: each round
calibrates the machine (``axolab.perfmodel.calibrate.measure_rank``: matmul and attention
rates, memory bandwidth, per-op cost, gloo collectives per group size) and times
``--steps-per-round`` steps of every grid in a row, each barrier to barrier, the grids in a
rotating order. Interleaving matters on a shared machine: background load changes within
minutes, and this way it weighs on every grid and on the calibration alike. The calibration is
saved as OUT/machine-N.json. Per grid it records:

  step time   the median of every timed step (``--steps`` rounds of ``--steps-per-round``
              steps, after ``--warmup`` rounds; each step's time is the slowest rank's). A step
              the scheduler happened to stall (8 ranks on 2 cores stall often) does not move
              a median. One median over all 15 steps rather than the median of the 5 round
              medians: on the stored runs it agrees with itself better (split-half Spearman
              over random halves of the rounds 0.87 against 0.86, runs 45-48) and it uses every
              sample once instead of summarizing twice (see ``grid_time``)
  bytes       what each grid axis's collectives sent in one step, counted by wrapping the
              collectives axolab calls, against the model's ring-formula bytes
  memory      peak bytes of live tensors in one step: the profiler's allocation events of the
              CPU allocator (torch.profiler, profile_memory) on top of the parameters,
              buffers and AdamW states alive before the step. This is what a GPU's
              max_memory_allocated measures; it leaves out the interpreter and libraries
              (metrics.jsonl's memory_mb on CPU is the process's peak RSS, ~400 MB of which
              is torch itself) and gloo's internal buffers.

It prints per grid predicted vs measured time and memory, then the Spearman rank correlation of
predicted and measured step times (target >= 0.9), whether the predicted-best grid is within
10% of the measured best, and the memory model's error (target within 20%). Two lines say how
far the timing noise goes: the Spearman correlation with the rounds drawn again (bootstrap, 5th
to 95th percentile), and the measurement against itself (each round's step times against the
median of the other rounds'), which a model cannot be expected to beat. Measurements are
kept in OUT/measured-N-<settings>.json; a rerun with the same settings reuses a world size
already measured (delete the file to measure again).

Usage:
  python benchmarks/perfmodel_validation.py [--ranks 4,8] [--steps 5] [--steps-per-round 3]
      [--warmup 1]
      [--model small-llama] [--seq-len 128] [--global-batch 8] [--micro-batch M]
      [--precision fp32] [--checkpointing] [--grids 1x1x2x2,2x1x1x2]
      [--out results/perfmodel_validation]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import torch


class RandomTokens:
    """Stands in for a PackedDataset: fixed random sequences, read by row index."""

    def __init__(self, rows: int, seq_len: int, vocab: int, seed: int = 0):
        gen = torch.Generator().manual_seed(seed)
        self.table = torch.randint(0, vocab, (rows, seq_len), generator=gen)
        self.rows, self.seq_len = rows, seq_len
        self.shuffled = True

    def read(self, rows) -> torch.Tensor:
        return self.table[torch.as_tensor(rows)]

    def labels(self, rows, ids: torch.Tensor) -> torch.Tensor:
        return ids.clone()  # packed rows: every token is a target


def _count_collectives(grid, counts):
    """Wrap the collectives axolab's comm module calls; returns a function that unwraps."""
    import torch.distributed as dist

    import axolab.parallel.comm as pc

    axis_of = {id(a.group): a.name for a in (grid.world, grid.model, grid.batch, grid.data,
                                             grid.z, grid.y, grid.x) if a.group is not None}
    originals = (dist.all_reduce, pc._ALL_GATHER, pc._REDUCE_SCATTER)

    def wrap(fn, op, which):
        def counted(*args, **kw):
            t = args[which]
            counts[(axis_of.get(id(kw.get("group")), "?"), op)] += t.numel() * t.element_size()
            counts[(axis_of.get(id(kw.get("group")), "?"), "calls")] += 1
            return fn(*args, **kw)
        return counted

    dist.all_reduce = wrap(originals[0], "all_reduce", 0)
    pc._ALL_GATHER = wrap(originals[1], "all_gather", 0)       # (output, input): gathered size
    pc._REDUCE_SCATTER = wrap(originals[2], "reduce_scatter", 1)  # (output, input): full size

    def restore():
        dist.all_reduce, pc._ALL_GATHER, pc._REDUCE_SCATTER = originals
    return restore


def _peak_step_bytes(step) -> float:
    """Largest rise of live CPU-allocator bytes during ``step()``, from profiler events."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = sorted((e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events()
                    if e.name() == "[memory]")
    live = peak = 0
    for _, nbytes in events:
        live += nbytes
        peak = max(peak, live)
    return float(peak)


def _live_state_bytes(model, opt) -> float:
    tensors = list(model.parameters()) + list(model.buffers()) + \
        [t for s in opt.state.values() for t in s.values() if torch.is_tensor(t)]
    seen = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return float(sum(seen.values()))


def _build(dims, s: dict, ranks=None):
    """A grid, axolab's model and AdamW on it, and one training step (axolab.train.run's loop
    body without logging and checkpoints); ``ranks``: the world's ranks the grid takes (all)."""
    from axolab.parallel import Grid, clip_grad_norm_, sync_gradients
    from axolab.train import _param_groups, _train_step, build_model
    from axolab.activation_checkpointing import enable_activation_checkpointing

    grid = Grid.init(*dims, ranks=ranks)
    if grid is None:
        return None  # a rank of the world outside ``ranks``
    cfg = SimpleNamespace(model=s["model"], seed=0, global_batch=s["global_batch"], epochs=None,
                          loss="standard", precision=s["precision"],
                          overlap_communication=s["overlap"], tune_matmul=False,
                          late_backward_prefetch=False,
                          depth_grad_dtype=s.get("depth_grad_dtype", "fp32"))
    model = build_model(cfg, grid, 0)
    if s["checkpointing"]:
        enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, 0.1), lr=1e-4)
    data = RandomTokens(256, s["seq_len"], model.config.vocab_size)
    micro = s["micro_batch"] or s["global_batch"] // grid.batch_shards
    step_no = iter(range(10**6))

    def step():
        _train_step(cfg, model, grid, data, next(step_no), micro, None)
        sync_gradients(model)
        clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return grid, model, opt, step


def session(grids: list, s: dict, calibration) -> dict:
    """On every rank: build every grid, then in each round calibrate the machine and time one
    step of every grid (rotating the order), so that the background load of a shared machine
    weighs on all grids and on the calibration alike. Then count one step's collective bytes
    and profile one step's memory per grid."""
    import torch.distributed as dist

    from axolab.perfmodel.calibrate import measure_rank

    built = {dims: _build(dims, s) for dims in grids}
    times = {dims: [] for dims in grids}
    rounds = []
    for r in range(s["warmup"] + s["steps"]):
        if r >= s["warmup"]:
            rounds.append(measure_rank(calibration))
        for dims in grids[r % len(grids):] + grids[:r % len(grids)]:
            each = []
            for _ in range(s.get("steps_per_round", 1)):
                dist.barrier()
                t0 = time.perf_counter()
                built[dims][3]()
                dist.barrier()
                each.append(time.perf_counter() - t0)
            if r >= s["warmup"]:
                times[dims].append(each)
    out = {"calibration": rounds, "grids": {}}
    for dims, (grid, model, opt, step) in built.items():
        counts = defaultdict(float)
        restore = _count_collectives(grid, counts)
        try:
            step()
        finally:
            restore()
        before = _live_state_bytes(model, opt)
        peak = before + _peak_step_bytes(step)
        sizes = {a.name: a.size for a in (grid.x, grid.y, grid.z, grid.data, grid.batch,
                                          grid.model, grid.world)}
        out["grids"]["x".join(map(str, dims))] = {
            "times": times[dims], "peak_bytes": peak, "state_bytes": before, "sizes": sizes,
            "counts": {f"{a}/{op}": v for (a, op), v in counts.items()}}
    for grid, *_ in built.values():
        grid.destroy()
    return out


def combine(per_rank: list) -> tuple[list, list]:
    """Per grid: each step's time on the slowest rank (``step_times_each[round]``), each round's
    median of them (``step_times``) and the largest peak; calibration rounds by rank."""
    rows = []
    for key, mine in per_rank[0]["grids"].items():
        every = [r["grids"][key] for r in per_rank]
        each = [[max(e["times"][i][k] for e in every) for k in range(len(steps))]
                for i, steps in enumerate(mine["times"])]
        rows.append({"grid": [int(v) for v in key.split("x")],
                     "step_times": [statistics.median(steps) for steps in each],
                     "step_times_each": each,
                     "peak_bytes": max(e["peak_bytes"] for e in every),
                     "state_bytes": max(e["state_bytes"] for e in every),
                     "counts": mine["counts"], "sizes": mine["sizes"]})
    rounds = [[r["calibration"][i] for r in per_rank]
              for i in range(len(per_rank[0]["calibration"]))]
    return rows, rounds


def grid_time(rounds: list[list[float]]) -> float:
    """A grid's measured step time from its timed steps, ``rounds[round][step]``: the median of
    all of them. The step-time distribution on a shared host is skewed by stalls; a median
    ignores them, and one median of every step varies less than a median of per-round medians,
    each of which already rests on only ``--steps-per-round`` samples."""
    return statistics.median(t for steps in rounds for t in steps)


def row_steps(row) -> list[list[float]]:
    """A measured row's steps by round; files written before steps were kept (one median per
    round) read as rounds of one step."""
    return row.get("step_times_each") or [[t] for t in row["step_times"]]


def _measured_bytes(row) -> dict:
    """Ring bytes per axis from the counted full-tensor bytes (as the model counts them)."""
    from axolab.perfmodel.comm import ring_bytes

    out = defaultdict(float)
    for key, full in row["counts"].items():
        axis, op = key.split("/")
        if op != "calls":
            out[axis] += ring_bytes(op, full, row["sizes"][axis])
    return dict(out)


def round_agreement(times: list[list[list[float]]]) -> list[float]:
    """How well the measurement agrees with itself: for each round, the Spearman correlation
    over the grids of that round's times with the other rounds' (``times[grid][round][step]``,
    each summarized by :func:`grid_time`). A model cannot be expected to rank the grids better
    than one round of the measurement ranks them against the rest."""
    from scipy.stats import spearmanr

    rounds = len(times[0])
    if rounds < 2 or len(times) < 3:
        return []
    return [float(spearmanr([grid_time([t[i]]) for t in times],
                            [grid_time(t[:i] + t[i + 1:]) for t in times])[0])
            for i in range(rounds)]


def bootstrap_spearman(predicted: list[float], times: list[list[list[float]]],
                       samples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """5th and 95th percentiles of the predicted-vs-measured Spearman correlation when the
    rounds are drawn again with replacement (``times[grid][round][step]``; each grid's time
    the median of the drawn rounds' steps, as :func:`grid_time`): how much the correlation
    owes to which rounds happened to be measured."""
    import numpy as np
    from scipy.stats import spearmanr

    t = np.asarray(times, dtype=float)  # grids x rounds x steps
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(samples):
        drawn = t[:, rng.integers(0, t.shape[1], t.shape[1]), :]
        draws.append(spearmanr(predicted, np.median(drawn.reshape(len(t), -1), axis=1))[0])
    lo, hi = np.nanpercentile(draws, [5, 95])
    return float(lo), float(hi)


def compare(world: int, rows: list, machine, s: dict) -> dict:
    from scipy.stats import spearmanr

    from axolab.optimizations import Optimizations
    from axolab.perfmodel import GridShape, Workload, model_shapes, predict

    shapes = model_shapes(s["model"])
    work = Workload(s["global_batch"], s["seq_len"], s["micro_batch"], s["precision"],
                    s["checkpointing"],
                    Optimizations() if s["overlap"] else Optimizations.none())
    table = []
    for row in rows:
        grid = GridShape(*row["grid"])
        p = predict(shapes, grid, work, machine, memory_fraction=1.0)
        measured_bytes = _measured_bytes(row)
        bytes_ok = all(abs(measured_bytes.get(a, 0.0) - p.comm.bytes_by_axis.get(a, 0.0))
                       <= 1e-6 * max(1.0, p.comm.bytes_by_axis.get(a, 0.0))
                       for a in set(measured_bytes) | set(p.comm.bytes_by_axis))
        table.append({"grid": str(grid), "predicted_s": p.step_time_s,
                      "measured_s": grid_time(row_steps(row)),
                      "compute_s": p.compute.total, "comm_s": p.comm.total,
                      "exposed_s": p.exposed_comm_s,
                      "predicted_gib": p.memory.total / 2**30,
                      "measured_gib": row["peak_bytes"] / 2**30, "bytes_match": bytes_ok,
                      "bytes": {a: (p.comm.bytes_by_axis.get(a, 0.0), measured_bytes.get(a, 0.0))
                                for a in sorted(set(measured_bytes) | set(p.comm.bytes_by_axis))}})
    print(f"\n{world} ranks, {s['model']}, batch {s['global_batch']} x {s['seq_len']}, "
          f"{s['precision']}, checkpointing {'on' if s['checkpointing'] else 'off'}, overlap "
          f"{'on' if s['overlap'] else 'off'} (machine overlap efficiency "
          f"{machine.overlap_efficiency:.2f})")
    print(f"{'grid':>10} {'pred s':>8} {'meas s':>8} {'compute':>8} {'comm':>8} {'exposed':>8} "
          f"{'pred MiB':>9} {'meas MiB':>9} {'mem err':>8} bytes")
    for r in sorted(table, key=lambda r: r["measured_s"]):
        err = r["predicted_gib"] / r["measured_gib"] - 1
        print(f"{r['grid']:>10} {r['predicted_s']:8.3f} {r['measured_s']:8.3f} "
              f"{r['compute_s']:8.3f} {r['comm_s']:8.3f} {r['exposed_s']:8.3f} "
              f"{r['predicted_gib'] * 1024:9.1f} "
              f"{r['measured_gib'] * 1024:9.1f} {err:+8.1%} "
              f"{'match' if r['bytes_match'] else 'DIFFER ' + json.dumps(r['bytes'])}")
    summary = {"world": world, "grids": len(table)}
    if len(table) >= 2:
        rho = spearmanr([r["predicted_s"] for r in table], [r["measured_s"] for r in table])[0]
        best_pred = min(table, key=lambda r: r["predicted_s"])
        best = min(r["measured_s"] for r in table)
        gap = best_pred["measured_s"] / best - 1
        summary.update(spearman=float(rho), predicted_best=best_pred["grid"], best_gap=gap)
        print(f"Spearman rank correlation {rho:.3f} (target >= 0.9); predicted best "
              f"{best_pred['grid']} is {gap:.1%} slower than the measured best "
              f"({'within' if gap <= 0.10 else 'NOT within'} 10%)")
        times = [row_steps(row) for row in rows]
        self_agreement = round_agreement(times)
        if self_agreement:
            lo, hi = bootstrap_spearman([r["predicted_s"] for r in table], times)
            summary.update(round_agreement=self_agreement, spearman_bootstrap_5_95=[lo, hi])
            print(f"  with the rounds drawn again (bootstrap): {lo:.3f}-{hi:.3f}; the "
                  f"measurement against itself (each round against the others' median): "
                  f"{', '.join(f'{v:.3f}' for v in self_agreement)}")
    errs = [abs(r["predicted_gib"] / r["measured_gib"] - 1) for r in table]
    summary.update(memory_max_error=max(errs), memory_median_error=statistics.median(errs),
                   bytes_match=all(r["bytes_match"] for r in table), rows=table)
    print(f"memory model error: median {summary['memory_median_error']:.1%}, max "
          f"{summary['memory_max_error']:.1%} (target within 20%); collective bytes per axis "
          f"{'match the model on every grid' if summary['bytes_match'] else 'DIFFER'}")
    return summary


def main(argv=None) -> int:
    from axolab.grid_shape import GridShape, parse_grids
    from axolab.perfmodel.grid import grid_problems
    from axolab.perfmodel import enumerate_grids, load_machine, model_shapes, save_machine
    from axolab.perfmodel.calibrate import CalibrationConfig, machine_from_measurements
    from axolab.perfmodel.ranks import run_on_ranks

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ranks", default="4,8", help="world sizes, comma-separated (4,8)")
    ap.add_argument("--steps", type=int, default=5, help="timed rounds (5)")
    ap.add_argument("--steps-per-round", type=int, default=3,
                    help="steps of a grid in a row in each round (3); a grid's time is the "
                    "median of all its timed steps")
    ap.add_argument("--warmup", type=int, default=1, help="untimed rounds first (1)")
    ap.add_argument("--model", default="small-llama")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--global-batch", type=int, default=8)
    ap.add_argument("--micro-batch", type=int)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    ap.add_argument("--no-overlap", action="store_true",
                    help="train with overlap_communication=False (Optimizations.none())")
    ap.add_argument("--grids", help="only these grids: 1x1x2x2,2x1x1x2 (or 1,1,2,2;2,1,1,2)")
    ap.add_argument("--out", default="results/perfmodel_validation")
    a = ap.parse_args(argv)
    s = dict(model=a.model, seq_len=a.seq_len, global_batch=a.global_batch,
             micro_batch=a.micro_batch, precision=a.precision, checkpointing=a.checkpointing,
             steps=a.steps, warmup=a.warmup, overlap=not a.no_overlap,
             steps_per_round=a.steps_per_round)
    for name in ("steps", "steps_per_round"):
        if s[name] < 1:
            ap.error(f"--{name.replace('_', '-')} must be at least 1, not {s[name]}")
    if a.warmup < 0:
        ap.error(f"--warmup must be 0 or more, not {a.warmup}")
    try:
        worlds = [int(w) for w in a.ranks.split(",")]
        wanted = {g.dims for g in parse_grids(a.grids)} if a.grids else None
    except ValueError as e:
        ap.error(str(e))
    candidates = {w: [(g.data, g.z, g.y, g.x) for g in
                      enumerate_grids(w, model_shapes(a.model), a.global_batch)] for w in worlds}
    for dims in sorted(wanted or ()):  # every grid asked for is measured, or nothing starts
        world = dims[0] * dims[1] * dims[2] * dims[3]
        if dims not in candidates.get(world, ()):
            ap.error(f"grid {'x'.join(map(str, dims))}: " + (
                f"{world} ranks is not among --ranks {a.ranks}" if world not in candidates else
                "; ".join(grid_problems(model_shapes(a.model), GridShape(*dims),
                                        a.global_batch))))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    tag = (f"{a.model}-b{a.global_batch}-s{a.seq_len}-m{a.micro_batch or 0}-{a.precision}"
           f"{'-ckpt' if a.checkpointing else ''}{'-blocking' if a.no_overlap else ''}"
           f"{f'-k{a.steps_per_round}' if a.steps_per_round > 1 else ''}")
    summaries = []
    for world in worlds:
        grids = [g for g in candidates[world] if wanted is None or g in wanted]
        measured_file = out / f"measured-{world}-{tag}.json"
        if measured_file.exists():  # resumable: a world size already measured is reused
            saved = json.loads(measured_file.read_text())
            rows = [r for r in saved["rows"] if tuple(r["grid"]) in grids]
        else:
            print(f"{world} ranks: {len(grids)} grids, {a.warmup} + {a.steps} rounds of "
                  f"{a.steps_per_round} steps each", flush=True)
            # 10 calls per collective timing: with 3, one placement's fitted latency moved
            # 0.4-15 ms between calibrations of 8 ranks on 2 cores.
            cal = CalibrationConfig(ranks=world, rounds=1, repeats=10)
            rows, rounds = combine(run_on_ranks(session, world, grids, s, cal))
            machine = machine_from_measurements(rounds, cal)
            save_machine(machine, out / f"machine-{world}-{tag}.json")
            measured_file.write_text(json.dumps({"settings": s, "rows": rows}) + "\n")
        machine = load_machine(out / f"machine-{world}-{tag}.json")
        summaries.append(compare(world, rows, machine, s))
    (out / f"summary-{tag}.json").write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
