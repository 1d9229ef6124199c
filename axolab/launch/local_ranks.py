"""Start the ranks of one job on this machine: ``python -m axolab.launch.local_ranks N CMD ...``.

What a single-node ``torchrun --standalone`` does for axolab's jobs, without what it costs: it
imports torch before starting a rank (about 2 s of a small machine's cores per job, paid again
by every rank) and runs an elastic agent that axolab does not use (a failed job is resumed by
running it again, from its checkpoint). Torch-free, so it starts in milliseconds.

Each rank runs ``CMD ...`` with the variables torch.distributed's ``env://`` rendezvous reads
(RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The ranks share
this process's process group, so a signal sent to the group (how :func:`axolab.launch.spmd`
stops a job, or a terminal's Ctrl-C) reaches every rank once, and this process then waits for
them. When a rank ends with a non-zero code on its own, a line ``axolab: rank R exited with
code C`` (negative: killed by that signal) names it, the others are stopped (SIGTERM, then
SIGKILL after a grace period), and this process exits with that rank's code.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

from setproctitle import setproctitle

from ..net import free_port
from .rank_exit import flush_std_streams

GRACE_S = 10.0
"""How long the peers of a failed rank get between SIGTERM and SIGKILL (a rank that is saving
a checkpoint on SIGTERM finishes the save)."""


def exit_line(rank: int, code: int) -> str:
    """How the first failed rank is named in the launcher's output (parsed by spmd)."""
    how = ""
    if code < 0:
        try:
            how = f" ({signal.Signals(-code).name})"
        except ValueError:
            pass
    return f"axolab: rank {rank} exited with code {code}{how}"


def rank_environments(nprocs: int, port: int, base: dict[str, str]) -> list[dict[str, str]]:
    """The environment of each rank: ``base`` plus the rendezvous variables."""
    common = {"WORLD_SIZE": str(nprocs), "LOCAL_WORLD_SIZE": str(nprocs),
              "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    return [{**base, **common, "RANK": str(r), "LOCAL_RANK": str(r)} for r in range(nprocs)]


class ForkedRank:
    """A rank forked from this process (which has already imported what the job needs), with
    the part of :class:`subprocess.Popen`'s interface the launcher uses."""

    def __init__(self, cmd: list[str], env: dict[str, str]):
        module, args = module_command(cmd)
        self.returncode: int | None = None
        self.pid = os.fork()
        if self.pid == 0:
            # What `ps` shows: the command this rank runs, and which rank it is.
            title = f"{' '.join(cmd)}  (axolab rank {env['RANK']} of {env['WORLD_SIZE']})"
            _run_forked_rank(module, args, env, title)  # never returns

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return wait_polling(self, timeout)

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        if self.returncode is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


def wait_polling(proc, timeout: float | None) -> int:
    """``Popen.wait`` for a process known only through ``proc.poll()`` (not a child, or
    reaped by hand)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while proc.poll() is None:
        if deadline is not None and time.monotonic() > deadline:
            raise subprocess.TimeoutExpired([str(proc.pid)], timeout)
        time.sleep(0.02)
    return proc.returncode


def module_command(cmd: list[str]) -> tuple[str, list[str]]:
    """``MODULE, ARGS`` of a ``python -m MODULE ARGS`` command run by this interpreter; a
    ValueError for any other command (it cannot be run by forking this process)."""
    if len(cmd) < 3 or cmd[1] != "-m" or os.path.realpath(cmd[0]) != os.path.realpath(
            sys.executable):
        raise ValueError(f"only `{sys.executable} -m MODULE ...` can be forked, got {cmd[:3]}")
    return cmd[2], cmd[3:]


def _run_forked_rank(module: str, args: list[str], env: dict[str, str], title: str) -> None:
    """The child side of :class:`ForkedRank`: what ``python -m MODULE ARGS`` would do in a
    fresh interpreter, then leave without finalization (the parent's objects are not ours)."""
    code = 1
    try:
        setproctitle(title)
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.environ.clear()
        os.environ.update(env)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        torch = sys.modules.get("torch")
        if torch is not None and env.get("OMP_NUM_THREADS", "").isdigit():
            # The thread count the parent's OpenMP read at import is not this rank's share.
            torch.set_num_threads(max(1, int(env["OMP_NUM_THREADS"])))
        sys.argv = [module, *args]
        # Run from its file as __main__, as `python -m` does, not the copy imported here.
        sys.modules.pop(module, None)
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001 - reported like an uncaught error in a fresh process
        traceback.print_exc()
    finally:
        flush_std_streams()  # not leave(): the parent's exit hooks are not this rank's
        os._exit(code)


def _stop(procs: list, grace_s: float) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def _new_process(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def run_ranks(nprocs: int, cmd: list[str], *, grace_s: float = GRACE_S,
              poll_s: float = 0.05, fork: bool = False) -> int:
    """Run ``cmd`` as ``nprocs`` ranks; the job's exit code (0, or the first failure's).

    fork: start each rank by forking this process instead of a new interpreter (``cmd`` must
    be ``python -m MODULE ...``); what this process imported, the ranks need not import again
    (see :mod:`axolab.launch.warm_ranks`)."""
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    start: Callable[[list[str], dict[str, str]], object] = ForkedRank if fork else _new_process
    if fork:
        module_command(cmd)  # refused before any rank starts
    envs = rank_environments(nprocs, free_port(), dict(os.environ))
    procs = [start(cmd, env) for env in envs]
    asked_to_stop = []

    def note_stop(signum, _frame):
        # The ranks are in this process's group and got the same signal (a training rank then
        # saves at its next step boundary): stopping them again here would cut that save
        # short, so from now on this process only waits for them.
        asked_to_stop.append(signum)

    signal.signal(signal.SIGTERM, note_stop)
    signal.signal(signal.SIGINT, note_stop)
    first = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
            if failed and first is None:
                # Several can look failed at once (a crash breaks its peers' connections): a
                # death by signal is the cause rather than a Python exit, else the lowest rank.
                first = min(failed, key=lambda r: (codes[r] >= 0, r))
                print(exit_line(first, codes[first]), file=sys.stderr, flush=True)
                if not asked_to_stop:
                    _stop(procs, grace_s)
                    codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                if first is None:
                    return 0
                return codes[first] if codes[first] > 0 else 128 - codes[first]
            time.sleep(poll_s)
    finally:
        _stop(procs, 0.0)


def main(argv: list[str]) -> int:
    if len(argv) < 2 or not argv[0].isdigit():
        print("usage: python -m axolab.launch.local_ranks NPROCS CMD [ARGS ...]", file=sys.stderr)
        return 2
    return run_ranks(int(argv[0]), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
