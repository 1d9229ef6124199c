"""axolab's CPU reduce-scatter and all-gather against gloo's own, side by side in one run.

gloo runs ``reduce_scatter_tensor`` as a clone of the input, a ring all-reduce of the clone and
a copy of one slice; axolab (``axolab.parallel.comm``) sends each slice straight to the rank
that owns it and sums what arrives. gloo's all-gather is a ring of size-1 dependent steps;
axolab's sends each rank's part straight to every other rank in one step. All are timed on the
same ranks, in interleaved rounds, at the sizes a decoder layer's gradients have in the
benchmarks' small-llama (0.7, 2.9 and 11.6 MB) and at the embedding's (4.2 MB), with gloo's
all-reduce of the same size for scale. Per size: the median over rounds of the slowest rank,
and gloo / axolab for each collective.

Usage: python benchmarks/collective_speed.py [--ranks 4] [--rounds 9] [--calls 10]
           [--out results/bench/collective_speed.json]
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import statistics
import time

from axolab.files import write_text_atomic

SIZES_MB = (0.725, 2.9, 4.194, 11.6)
OPS = ("gloo reduce_scatter", "axolab reduce_scatter", "gloo all_gather", "axolab all_gather",
       "all_reduce")


def _on_rank(sizes_mb: tuple, rounds: int, calls: int) -> dict:
    import torch
    import torch.distributed as dist

    from axolab.parallel import comm

    n, me = dist.get_world_size(), dist.get_rank()
    gloo_scatter = comm._REDUCE_SCATTER_TENSOR  # torch's own, as FSDP2 calls them
    gloo_gather = comm._ALL_GATHER_TENSOR
    out: dict = {}
    for mb in sizes_mb:
        numel = int(mb * 1e6 / 4) // n * n
        full = torch.randn(numel, generator=torch.Generator().manual_seed(me))
        part = torch.empty(numel // n)
        want = torch.empty(numel // n)
        gloo_scatter(want, full.clone())
        comm._reduce_scatter(part, full)
        # The two reduce-scatters agree (summation order differs: fp32 rounding only); the
        # two all-gathers exactly.
        err = float((part - want).abs().max() / want.abs().max())
        gathered, gathered_gloo = torch.empty(numel), torch.empty(numel)
        comm._all_gather(gathered, part)
        gloo_gather(gathered_gloo, part)
        if not torch.equal(gathered, gathered_gloo):
            raise AssertionError(f"{mb} MB: axolab's all-gather differs from gloo's")
        calls_by_op = {
            "gloo reduce_scatter": lambda: gloo_scatter(part, full),
            "axolab reduce_scatter": lambda: comm._reduce_scatter(part, full),
            "all_reduce": lambda: dist.all_reduce(full.clone()),
            "gloo all_gather": lambda: gloo_gather(full, part),
            "axolab all_gather": lambda: comm._all_gather(full, part),
        }
        times = {op: [] for op in OPS}
        for r in range(rounds):
            for op in OPS[r % len(OPS):] + OPS[:r % len(OPS)]:  # order rotated by round
                dist.barrier()
                t0 = time.perf_counter()
                for _ in range(calls):
                    calls_by_op[op]()
                times[op].append((time.perf_counter() - t0) / calls)
        out[str(mb)] = {"times": times, "relative_error": err}
    return out


def main(argv: list[str] | None = None) -> int:
    from axolab.perfmodel.ranks import run_on_ranks

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--calls", type=int, default=10)
    ap.add_argument("--out", default="results/bench/collective_speed.json")
    args = ap.parse_args(argv)
    if args.ranks < 2 or args.rounds < 1 or args.calls < 1:
        ap.error(f"--ranks {args.ranks} (>= 2), --rounds {args.rounds} and --calls "
                 f"{args.calls} (>= 1)")
    per_rank = run_on_ranks(_on_rank, args.ranks, SIZES_MB, args.rounds, args.calls)
    print(f"{args.ranks} gloo ranks, one thread each; median over {args.rounds} rounds of "
          f"{args.calls} calls, slowest rank, ms per call")
    print(f"{'MB':>7} " + " ".join(f"{op:>22}" for op in OPS) +
          "  gloo/axolab (reduce_scatter, all_gather)")
    summary = {}
    for mb in map(str, SIZES_MB):
        med = {op: statistics.median(max(rank[mb]["times"][op][i] for rank in per_rank)
                                     for i in range(args.rounds)) for op in OPS}
        ratio = med["gloo reduce_scatter"] / med["axolab reduce_scatter"]
        gather_ratio = med["gloo all_gather"] / med["axolab all_gather"]
        err = max(rank[mb]["relative_error"] for rank in per_rank)
        summary[mb] = {"median_s": med, "gloo_over_axolab": ratio,
                       "gloo_over_axolab_all_gather": gather_ratio, "relative_error": err}
        print(f"{mb:>7} " + " ".join(f"{med[op] * 1e3:>22.2f}" for op in OPS) +
              f"  {ratio:>10.2f}x {gather_ratio:>6.2f}x")
    result = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": platform.platform(), "ranks": args.ranks, "rounds": args.rounds,
              "calls": args.calls, "summary": summary, "per_rank": per_rank}
    write_text_atomic(args.out, json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
