"""Run a function on N local CPU ranks (gloo), for calibration and validation benchmarks.

The same start-up as tests/rank_pool.py: spawned processes, one thread each, a process group
on a free localhost port. ``run_on_ranks(fn, n, *args)`` returns the per-rank results of
``fn(*args)`` (an importable function) or raises with the first failing rank's traceback.
"""

from __future__ import annotations

import datetime
import os
import queue
import traceback

import torch.multiprocessing as mp

from ..net import free_port



def _worker(rank: int, world: int, port: int, fn, args, results, timeout_s: float) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)  # N ranks share the machine's cores, as on a GPU node they don't
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    try:
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s))
        value = fn(*args)
        results.put((rank, True, value))
    except BaseException:
        results.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_on_ranks(fn, ranks: int, *args, timeout_s: float = 3600.0) -> list:
    """``fn(*args)`` on ``ranks`` spawned gloo ranks; the list of their return values."""
    if not isinstance(ranks, int) or ranks < 1:
        raise ValueError(f"ranks must be a positive integer, got {ranks!r}")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_worker, args=(r, ranks, port, fn, args, results, timeout_s),
                         daemon=True) for r in range(ranks)]
    for p in procs:
        p.start()
    out = [None] * ranks
    try:
        for _ in range(ranks):
            try:
                rank, ok, value = results.get(timeout=timeout_s)
            except queue.Empty:
                raise RuntimeError(f"{fn.__name__} on {ranks} ranks timed out after "
                                   f"{timeout_s} s") from None
            if not ok:  # the other ranks may be stuck in a collective: stop them all
                raise RuntimeError(f"{fn.__name__} failed on rank {rank} of {ranks}:\n{value}")
            out[rank] = value
    finally:
        for p in procs:
            p.join(timeout=5 if any(v is None for v in out) else 30)
            if p.is_alive():
                p.kill()
    return out
