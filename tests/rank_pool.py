"""A pool of CPU ranks (gloo) that stay up for the whole test session.

Starting a process group costs seconds on a small machine, so the tests start one pool and run
many checks inside it: ``pool.run(fn, *args)`` calls the importable function
``fn(*args)`` on every rank and returns the per-rank results, or raises with the failing ranks'
tracebacks. A rank that hangs (a collective one rank never entered) is reported after ``timeout``.
"""

from __future__ import annotations

import datetime
import os
import queue
import traceback

import torch.multiprocessing as mp

from axolab.net import free_port



def _worker(rank: int, world: int, port: int, tasks, results) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=240))
    while True:
        task = tasks.get()
        if task is None:
            break
        fn, args = task
        try:
            value = fn(*args)
        except BaseException:  # reported to the test, which fails with this text; the pool
            results.put((rank, False, traceback.format_exc()))  # is then restarted
            continue
        _release_subgroups(dist)
        results.put((rank, True, value))
    dist.destroy_process_group()


def _release_subgroups(dist) -> None:
    """Checks create grids (and their process groups) freely; dropping them after each check
    keeps a long session from piling up gloo connections and threads. A model a check built
    is freed by the collector (modules refer to each other), and its groups' threads with it."""
    import gc

    from torch.distributed import distributed_c10d as c10d

    gc.collect()
    dist.barrier()
    for group in list(getattr(getattr(c10d, "_world", None), "pg_map", {})):
        if group is not c10d.GroupMember.WORLD:
            dist.destroy_process_group(group)


class RankPool:
    def __init__(self, world: int):
        self.world = world
        self._start()

    def _start(self) -> None:
        # Forked from one server that imported torch and transformers once, instead of each
        # rank importing them again (seconds of a core per rank).
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch.distributed", "transformers.modeling_utils",
                                    "axolab.parallel"])
        self.results = ctx.Queue()
        self.tasks = [ctx.Queue() for _ in range(self.world)]
        port = free_port()
        self.procs = [ctx.Process(target=_worker, args=(r, self.world, port, self.tasks[r],
                                                        self.results), daemon=True)
                      for r in range(self.world)]
        for p in self.procs:
            p.start()

    def _restart(self) -> None:
        # After a failed check the ranks may disagree on which collective comes next.
        for p in self.procs:
            p.kill()
            p.join(timeout=30)
        self._start()

    def run(self, fn, *args, timeout: float = 300.0) -> list:
        for q in self.tasks:
            q.put((fn, args))
        out, errors = [None] * self.world, {}
        for _ in range(self.world):
            try:
                rank, ok, value = self.results.get(timeout=timeout)
            except queue.Empty:
                self._restart()
                raise RuntimeError(f"{fn.__name__} timed out after {timeout}s; ranks that answered: "
                                   f"{[r for r, v in enumerate(out) if v is not None]}; "
                                   f"errors: {errors}")
            if ok:
                out[rank] = value
            else:
                errors[rank] = value
        if errors:
            self._restart()
            first = min(errors)
            raise AssertionError(f"{fn.__name__} failed on ranks {sorted(errors)}; rank {first}:\n"
                                 f"{errors[first]}")
        return out

    def close(self) -> None:
        # The session is over: the ranks hold nothing worth a graceful shutdown of their gloo
        # group (seconds on a small machine), so they are stopped outright.
        for p in self.procs:
            p.kill()
        for p in self.procs:
            p.join(timeout=30)
