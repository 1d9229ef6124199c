"""Measure this machine: matmul throughput, memory bandwidth, kernel overhead, and gloo
collectives per group size, with N CPU ranks running at once (as the ranks of a grid do).

Every measurement runs on all ranks simultaneously, so it includes the contention of N
processes sharing the cores and memory; collectives are timed on every group of a size at once,
as the groups of one grid axis run. The result is a :class:`~axolab.perfmodel.machines.Machine`
that ``axolab plan --machine-file`` and :func:`axolab.perfmodel.search` use.
"""

from __future__ import annotations

import os
import platform
import socket
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

from .comm import ring_bytes
from .machines import COLLECTIVE_OPS, Machine, MeasuredCollective


@dataclass(frozen=True)
class CalibrationConfig:
    """What ``axolab plan calibrate`` measures."""

    ranks: int = 4
    """CPU processes started at once (the planner's GPUs per node)."""
    sizes_bytes: tuple[int, ...] = (4096, 262144, 2**22)
    """Tensor sizes each collective is timed at; latency and bandwidth are fitted over them."""
    repeats: int = 5
    """Calls per timing (the mean is taken; the median over rounds is kept)."""
    rounds: int = 3
    """Timing rounds per size."""
    matmul_size: int = 512
    """Side of the square fp32 / bf16 matmuls timed for the FLOP/s."""
    name: str = "this-machine"
    """Name written into the machine file."""

    def __post_init__(self):
        if self.ranks < 1 or self.repeats < 1 or self.rounds < 1 or not self.sizes_bytes:
            raise ValueError(f"calibration needs ranks, repeats and rounds >= 1 and at least one "
                             f"size; got ranks={self.ranks}, repeats={self.repeats}, "
                             f"rounds={self.rounds}, sizes={self.sizes_bytes}")


def _timed(fn, min_time: float = 0.2, max_calls: int = 200) -> float:
    """Seconds per call of ``fn`` over about ``min_time`` (after one warm-up call)."""
    fn()
    calls, t0 = 0, time.perf_counter()
    while calls < max_calls and (calls < 3 or time.perf_counter() - t0 < min_time):
        fn()
        calls += 1
    return (time.perf_counter() - t0) / calls


def _attention_rate() -> tuple[float, float]:
    """(FLOP/s, seconds per call) of causal attention forward + backward, fitted over two
    sequence lengths: on CPUs small attention calls are dominated by a fixed cost."""
    import torch
    import torch.nn.functional as F

    points = []
    for seq in (128, 512):
        q, k, v = (torch.randn(1, 8, seq, 32, requires_grad=True) for _ in range(3))

        def call():
            F.scaled_dot_product_attention(q, k, v, is_causal=True).sum().backward()

        flops = 3 * 4 * seq * seq * 32 * 8 * 0.5  # forward + 2x backward, half masked
        points.append((flops, _timed(call, min_time=0.1)))
    latency, rate = fit_latency_bandwidth(points)
    return rate, latency


def _compute_rates(n: int) -> dict:
    import torch

    out = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[f"flops_{name}"] = 2 * n**3 / _timed(lambda: a @ b)
    x, y = torch.randn(2**22), torch.empty(2**22)
    out["bandwidth"] = 2 * x.numel() * 4 / _timed(lambda: torch.add(x, 1.0, out=y))
    # A chain of tiny autograd ops, forward and backward: the per-kernel cost of eager
    # PyTorch (dispatch, autograd bookkeeping) that small layers pay on every op.
    w = torch.randn(8, requires_grad=True)

    def chain():
        h = w
        for _ in range(20):
            h = h * 1.0001
        h.sum().backward()

    out["op_overhead"] = _timed(chain) / 42
    out["attention_flops"], out["attention_call"] = _attention_rate()
    return out


def _time_collective(op: str, nbytes: int, group, size: int, cfg: CalibrationConfig) -> float:
    import torch
    import torch.distributed as dist

    from axolab.parallel.comm import _ALL_GATHER as gather
    from axolab.parallel.comm import _reduce_scatter as scatter  # the code's own (on the CPU)

    numel = max(size, nbytes // 4 // size * size)
    full = torch.randn(numel)
    part = torch.empty(numel // size)

    def call():
        if op == "all_reduce":
            dist.all_reduce(full, group=group)
        elif op == "all_gather":
            gather(full, part, group=group)
        else:
            scatter(part, full, group=group)

    # One untimed call first: a group's first collective of a size pays for buffers and
    # connections a training step has long since set up. Timed cold, 4 KB all-reduces over
    # pairs of 8 ranks on 2 cores took 5.1 ms against 1.0-1.7 ms warm; calibrations of one
    # round fitted pairs a latency of 4.2-5.2 ms (1.3-2.2 ms warm, with 10 calls), which made
    # grids with X = 2, whose norms all-reduce over pairs, look about 10% slower than they ran.
    dist.barrier()
    call()
    rounds = []
    for _ in range(cfg.rounds):
        dist.barrier()  # every group starts together, as one grid axis does
        t0 = time.perf_counter()
        for _ in range(cfg.repeats):
            call()
        rounds.append((time.perf_counter() - t0) / cfg.repeats)
    return statistics.median(rounds)


def _timed_together(fn, rounds: int) -> float:
    """Median seconds of ``fn()`` over ``rounds``, every rank starting each round together."""
    import torch.distributed as dist

    times = []
    for _ in range(rounds):
        dist.barrier()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _overlap_efficiency(cfg: CalibrationConfig) -> float:
    """Fraction of the ideal hiding achieved when an all-reduce over every rank runs behind
    matmuls of about its own length, as axolab's overlapped collectives do:
    ``(t_matmuls + t_all_reduce - t_both) / min(t_matmuls, t_all_reduce)``, clipped to [0, 1]."""
    import torch
    import torch.distributed as dist

    n = cfg.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    tensor = torch.randn(max(cfg.sizes_bytes) // 4)

    def timed(fn) -> float:
        return _timed_together(fn, cfg.rounds)

    dist.all_reduce(tensor)  # warm, as in _time_collective
    t_reduce = timed(lambda: dist.all_reduce(tensor))
    one = _timed(lambda: a @ b, min_time=0.05)
    # Every rank must run the same number of matmuls: agree on the largest count.
    count = torch.tensor([max(1, round(t_reduce / one))])
    dist.all_reduce(count, op=dist.ReduceOp.MAX)

    def matmuls():
        for _ in range(int(count)):
            a @ b

    def both():
        work = dist.all_reduce(tensor, async_op=True)
        matmuls()
        work.wait()

    t_matmuls, t_both = timed(matmuls), timed(both)
    hidden = t_matmuls + t_reduce - t_both
    return min(1.0, max(0.0, hidden / min(t_matmuls, t_reduce)))


def _sync_cost(cfg: CalibrationConfig, group=None, calls: int = 40) -> float:
    """Seconds a blocking collective costs beyond its own time when ranks compute between
    collectives, as a training step does: ``(t_interleaved - t_matmuls - t_reduces) / calls``
    for matmuls of a few milliseconds, each followed by a tiny all-reduce over ``group``
    (default: every rank), all groups of the world at once. Near 0 on GPUs; on a CPU with more
    ranks than cores, each such wait lasts until the group's slowest rank is scheduled again.
    ``calls``: 40, because the result is a small difference of three timings (with 10, repeated
    measurements of 4 ranks on 2 cores ranged 0-1.5 ms; with 40, 1.4-1.6 ms)."""
    import torch
    import torch.distributed as dist

    n = cfg.matmul_size
    a, b = torch.randn(n, n), torch.randn(n, n)
    tiny = torch.zeros(1)

    def timed(fn) -> float:
        return _timed_together(fn, cfg.rounds)

    def matmuls():
        for _ in range(calls):
            a @ b

    def reduces():
        for _ in range(calls):
            dist.all_reduce(tiny, group=group)

    def interleaved():
        for _ in range(calls):
            a @ b
            dist.all_reduce(tiny, group=group)

    t_matmuls, t_reduces, t_both = timed(matmuls), timed(reduces), timed(interleaved)
    return max(0.0, (t_both - t_matmuls - t_reduces) / calls)


def measure_rank(cfg: CalibrationConfig) -> dict:
    """Runs on every rank (inside :func:`~axolab.perfmodel.ranks.run_on_ranks`)."""
    import torch.distributed as dist

    world, rank = dist.get_world_size(), dist.get_rank()
    dist.barrier()
    rates = _compute_rates(cfg.matmul_size)
    timings = []
    # Every placement a grid axis can have: groups of ``size`` ranks ``stride`` apart, all
    # groups of the world at once (the table the presets give from data sheets).
    placements = [(g, s) for g in range(2, world + 1) for s in range(1, world // g + 1)
                  if world % (g * s) == 0]
    for size, stride in placements:
        members = [[base + offset + k * stride for k in range(size)]
                   for base in range(0, world, size * stride) for offset in range(stride)]
        groups = [dist.new_group(m) for m in members]
        mine = next(grp for grp, m in zip(groups, members) if rank in m)
        for op in COLLECTIVE_OPS:
            for nbytes in cfg.sizes_bytes:
                timings.append((op, size, stride, nbytes,
                                _time_collective(op, nbytes, mine, size, cfg)))
        if stride == 1 and size < world:
            rates[f"sync_g{size}"] = _sync_cost(cfg, mine)
        for g in groups:
            dist.destroy_process_group(g)
    if world > 1:
        rates["overlap_efficiency"] = _overlap_efficiency(cfg)
        rates["sync"] = rates[f"sync_g{world}"] = _sync_cost(cfg)
    return {"rates": rates, "timings": timings}


def fit_latency_bandwidth(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Fit ``t = latency + bytes / bandwidth`` to (ring bytes, seconds) points, minimizing
    relative error (weights 1/t^2) so that small, latency-bound sizes count as much as large
    ones; returns (latency_s, bandwidth B/s), latency clipped at 0."""
    if len(points) < 2:
        b, t = points[0]
        return 0.0, b / t
    w = [1.0 / t**2 for _, t in points]
    sw = sum(w)
    mx = sum(wi * x for wi, (x, _) in zip(w, points)) / sw
    mt = sum(wi * t for wi, (_, t) in zip(w, points)) / sw
    var = sum(wi * (x - mx) ** 2 for wi, (x, _) in zip(w, points))
    cov = sum(wi * (x - mx) * (t - mt) for wi, (x, t) in zip(w, points))
    slope = cov / var if var else 0.0
    if slope <= 0:  # latency-bound over the whole range: bandwidth from the largest size
        x, t = max(points)
        return min(t for _, t in points), x / t
    return max(0.0, mt - slope * mx), 1.0 / slope


def machine_from_measurements(rounds: list[list[dict]], cfg: CalibrationConfig) -> Machine:
    """Combine measurements: ``rounds`` of per-rank results of :func:`measure_rank`. A
    collective takes as long as its slowest rank (max within a round, median over rounds);
    rates are medians over ranks and rounds."""
    every = [r for one in rounds for r in one]
    rates = {k: statistics.median(r["rates"][k] for r in every if k in r["rates"])
             for k in every[0]["rates"]}
    per_round: dict[tuple, list[float]] = {}
    for one in rounds:
        slowest: dict[tuple, float] = {}
        for r in one:
            for op, size, stride, nbytes, t in r["timings"]:
                key = (op, size, stride, nbytes)
                slowest[key] = max(slowest.get(key, 0.0), t)
        for key, t in slowest.items():
            per_round.setdefault(key, []).append(t)
    timing = {key: statistics.median(ts) for key, ts in per_round.items()}
    measured = []
    for op in COLLECTIVE_OPS:
        for size, stride in sorted({k[1:3] for k in timing}):
            pts = [(ring_bytes(op, nb, size), t) for (o, g, s, nb), t in timing.items()
                   if (o, g, s) == (op, size, stride)]
            latency, bandwidth = fit_latency_bandwidth(pts)
            measured.append(MeasuredCollective(op, size, latency, bandwidth / 1e9, stride))
    reduces = [m for m in measured if m.op == "all_reduce"]
    # The same table the presets give: ring bandwidth by group size and placement; the
    # whole machine's is the widest neighbouring group's.
    links = tuple((m.group_size, m.stride, m.bandwidth_gb_s) for m in reduces)
    whole = max(reduces, key=lambda m: (m.group_size, -m.stride)).bandwidth_gb_s \
        if reduces else 1.0
    lat = [m.latency_s for m in reduces] or [1e-4]
    return Machine(
        name=cfg.name, gpus_per_node=cfg.ranks,
        memory_gib=_total_memory_bytes() / 2**30 / cfg.ranks,
        peak_flops_bf16=rates["flops_bf16"], peak_flops_fp32=rates["flops_fp32"],
        matmul_efficiency=1.0, memory_bandwidth_gb_s=rates["bandwidth"] / 1e9,
        intra_node_gb_s=whole, inter_node_gb_s=whole, intra_node_links=links,
        intra_node_latency_s=statistics.median(lat), inter_node_latency_s=statistics.median(lat),
        op_overhead_s=rates["op_overhead"],
        attention_efficiency=min(1.0, rates["attention_flops"] / rates["flops_fp32"]),
        attention_call_s=rates["attention_call"],
        overlap_efficiency=rates.get("overlap_efficiency", 1.0), sync_s=rates.get("sync", 0.0),
        sync_by_group=tuple(sorted((int(k[len("sync_g"):]), v) for k, v in rates.items()
                                   if k.startswith("sync_g"))),
        collectives=tuple(measured),
        foreach_optimizer=False, cache_bytes_per_rank=_last_level_cache_bytes() / cfg.ranks,
        source=f"measured by axolab plan calibrate on {socket.gethostname()} "
               f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores) with "
               f"{cfg.ranks} gloo ranks of 1 thread, {time.strftime('%Y-%m-%d %H:%M')}")


def _last_level_cache_bytes() -> int:
    """Size of the CPU's largest cache (sysfs), 0 if the system does not say."""
    units = {"K": 2**10, "M": 2**20, "G": 2**30}
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            size = (index / "size").read_text().strip()
        except OSError:
            continue
        if size:
            best = max(best, int(size.rstrip("KMG") or 0) * units.get(size[-1], 1))
    return best


def _total_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def calibrate(cfg: CalibrationConfig | None = None) -> Machine:
    """Start ``cfg.ranks`` gloo ranks, measure, and return the calibrated machine."""
    from .ranks import run_on_ranks

    cfg = cfg or CalibrationConfig()
    return machine_from_measurements([run_on_ranks(measure_rank, cfg.ranks, cfg)], cfg)


def quick_machine(ranks: int | None = None) -> Machine:
    """This machine measured in this one process (no collectives): matmul rate and memory
    bandwidth shared by ``ranks`` processes, and a guessed loopback bandwidth. For a real
    answer, run ``axolab plan calibrate``."""
    ranks = ranks or os.cpu_count() or 1
    rates = _compute_rates(512)
    share = min(ranks, os.cpu_count() or 1) / ranks  # cores per rank, at most 1
    bandwidth = rates["bandwidth"] / 1e9 / ranks
    return Machine(
        name="this-machine", gpus_per_node=ranks,
        memory_gib=_total_memory_bytes() / 2**30 / ranks,
        peak_flops_bf16=rates["flops_bf16"] * share, peak_flops_fp32=rates["flops_fp32"] * share,
        matmul_efficiency=1.0, memory_bandwidth_gb_s=bandwidth, intra_node_gb_s=bandwidth / 2,
        inter_node_gb_s=bandwidth / 2, intra_node_latency_s=1e-4, inter_node_latency_s=1e-4,
        op_overhead_s=rates["op_overhead"] / share,
        attention_efficiency=min(1.0, rates["attention_flops"] / rates["flops_fp32"]),
        attention_call_s=rates["attention_call"] / share, foreach_optimizer=False,
        source="measured on the fly in one process (collectives guessed); run "
               "`axolab plan calibrate` for measured collectives")
