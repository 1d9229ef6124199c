"""Start an SPMD job (one process per rank) from a notebook cell or the command line.

Outside Slurm the ranks are started on this machine by :mod:`axolab.launch.local_ranks`;
inside a Slurm allocation (a batch script, or a kernel started in one) by ``srun`` over the
allocation, with the rendezvous on the job's first node. Either way every rank runs
:mod:`axolab.launch.worker`, which keeps its output in ``LOG_DIR/rank<R>.log`` and reports a
Python error in ``rank<R>.error.json``.

This process only watches: it echoes rank 0's output, shows progress, and turns a failed job
into a :class:`LaunchError` naming the rank that failed first. It never imports
torch.distributed or touches CUDA, so a notebook kernel stays usable after any launch.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from ..cluster import first_slurm_host
from ..net import free_port
from .environment import SlurmAllocation, slurm_allocation
from .preemption import preempted_path
from .warm_ranks import start_job
from .worker import LAUNCHER_HOST, LAUNCHER_PID, error_path, log_path


class LaunchError(RuntimeError):
    """A launched job failed: which rank failed first (None if none reported), and where the
    logs are."""

    def __init__(self, message: str, rank: int | None = None, exitcode: int | None = None,
                 log_dir: Path | None = None):
        super().__init__(message)
        self.rank, self.exitcode, self.log_dir = rank, exitcode, log_dir


class JobPreempted(LaunchError):
    """The ranks stopped early on request (a Slurm time-limit warning, a requeue, SIGTERM) after
    saving their state; running the same job again resumes where it stopped."""



def launch_command(module: str, args: Sequence[str], nprocs: int, log_dir: Path,
                   allocation: SlurmAllocation | None) -> tuple[list[str], dict[str, str]]:
    """The command that starts ``nprocs`` ranks, and the environment variables it adds."""
    worker = ["-m", "axolab.launch.worker", str(log_dir), module, *map(str, args)]
    # The ranks watch this process and stop if it dies (worker._follow_launcher).
    env = {"PYTHONUNBUFFERED": "1", LAUNCHER_PID: str(os.getpid()),
           LAUNCHER_HOST: socket.gethostname()}
    if allocation is None:
        # Share the cores out: every rank with all of them oversubscribes the machine.
        env["OMP_NUM_THREADS"] = os.environ.get(
            "OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nprocs)))
        return [sys.executable, "-m", "axolab.launch.local_ranks", str(nprocs),
                sys.executable, *worker], env
    # One rank per task: its own cores, not all the node's (oversubscribed threads crawl).
    env["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS",
                                            os.environ.get("SLURM_CPUS_PER_TASK", "1"))
    env["MASTER_ADDR"] = first_slurm_host() or socket.gethostname()
    # This process runs on the job's first node (the batch host), so a port free here is free
    # where rank 0 listens.
    env["MASTER_PORT"] = str(free_port())
    return ["srun", f"--ntasks={nprocs}", "--kill-on-bad-exit=1", sys.executable, *worker], env


class _Tail:
    """New complete lines of a growing text file."""

    def __init__(self, path: Path):
        self.path, self.offset, self.partial = path, (path.stat().st_size if path.exists() else 0), ""

    def lines(self) -> list[str]:
        if not self.path.exists():
            return []
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        self.offset += len(chunk)
        text = self.partial + chunk.decode("utf-8", "replace")
        *done, self.partial = text.split("\n")
        # A progress bar redraws with carriage returns; keep what it shows last.
        return [line.rsplit("\r", 1)[-1] for line in done]


def _failure(log_dir: Path, nprocs: int, rc: int, launcher_log: Path) -> LaunchError:
    stopped = [r for r in range(nprocs) if preempted_path(log_dir, r).exists()]
    if stopped:
        return JobPreempted(
            f"the job stopped early on request (a time-limit warning, requeue or SIGTERM): "
            f"{len(stopped)} of {nprocs} ranks saved their state and exited; run it again to "
            f"resume (logs in {log_dir})", rank=None, exitcode=rc, log_dir=log_dir)
    reports = {}
    for rank in range(nprocs):
        path = error_path(log_dir, rank)
        if path.exists():
            reports[rank] = json.loads(path.read_text())
    text = launcher_log.read_text(errors="replace") if launcher_log.exists() else ""
    tail = text.splitlines()[-25:]
    # A rank killed by a signal (SIGKILL, the OOM killer) cannot report; the Python errors
    # of its peers (broken connections) are consequences, so the killed rank is the cause.
    killed = [r for r in _signalled_ranks(text) if r not in reports]
    if killed or not reports:
        # local_ranks names the first rank to fail; srun says "task N: Killed".
        cause = re.search(r"axolab: rank (\d+) exited with code (-?\d+)", text) \
            or re.search(r"task (\d+): (Killed|Terminated|Segmentation)", text)
        rank = killed[0] if killed else (int(cause.group(1)) if cause else None)
        who = f"rank {rank} was" if rank is not None else "a rank was"
        also = (f" ({len(reports)} other rank(s) then failed with Python errors; logs in "
                f"{log_dir})" if reports else "")
        own = _last_lines(log_path(log_dir, rank), 50) if rank is not None else []
        return LaunchError(
            f"the job failed (exit code {rc}): {who} killed (a signal, out of memory) without "
            f"a Python error{also}. Launcher output:\n" + "\n".join(tail) +
            (f"\nLast lines of rank {rank}'s log:\n" + "\n".join(own) if own else "") +
            f"\n(logs in {log_dir})", rank=rank, exitcode=rc, log_dir=log_dir)
    # Once one rank fails, its peers fail too (broken connections); the first is the cause.
    first = min(reports.values(), key=lambda r: r["time"])
    return LaunchError(
        f"rank {first['rank']} failed on {first['host']}: {first['exception']}: "
        f"{first['message']}\n\n{first['traceback']}\n"
        f"({len(reports)} of {nprocs} ranks reported an error; logs in {log_dir})",
        rank=first["rank"], exitcode=rc, log_dir=log_dir)


def _last_lines(path: Path, n: int) -> list[str]:
    """The last ``n`` lines of a rank's log (a C++ abort message, the faulthandler stack)."""
    if not path.is_file():
        return []
    with open(path, "rb") as f:
        f.seek(max(0, f.seek(0, os.SEEK_END) - 16384))
        return f.read().decode("utf-8", "replace").splitlines()[-n:]


def _signalled_ranks(launcher_text: str) -> list[int]:
    """Ranks the launcher saw die by a signal: local_ranks' line with a negative exit code, or
    srun's "task N: Killed". SIGTERM (-15) is left out: it is how a launcher stops the peers of
    a failed rank, not a cause."""
    found = [int(r) for r, code in re.findall(
        r"axolab: rank (\d+) exited with code (-\d+)", launcher_text) if code != "-15"]
    found += [int(r) for r in re.findall(r"task (\d+): (?:Killed|Segmentation)", launcher_text)]
    return list(dict.fromkeys(found))


def _stop(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop the launcher and every rank under it: SIGTERM, then SIGKILL."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=grace_s)
            return
        except subprocess.TimeoutExpired:
            continue


def _start_launcher(cmd: list[str], env: dict[str, str], launcher_log: Path, warm: bool):
    """The job's launcher, leader of its own process group, writing to ``launcher_log``."""
    if warm:
        try:
            return start_job(cmd[1:], env, launcher_log)
        except (OSError, RuntimeError, ValueError) as exc:
            with open(launcher_log, "a") as out:
                out.write(f"axolab: no rank starter ({exc}); starting fresh interpreters\n")
    with open(launcher_log, "ab") as out:
        return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, env=env, start_new_session=True)


def spmd(module: str, args: Sequence[str] = (), nprocs: int = 1, log_dir: str | Path = "logs",
         *, launcher: str = "auto", timeout_s: float | None = None, echo: bool = True,
         watch: Callable[[], None] | None = None, poll_s: float = 0.1,
         warm_start: bool | None = None) -> None:
    """Run ``python -m MODULE ARGS`` on ``nprocs`` ranks and wait for it.

    launcher: "auto" (srun inside a Slurm allocation, else local ranks), "local" or "slurm".
    timeout_s: stop the whole job after this long. echo: print rank 0's output lines here.
    watch: called every ``poll_s`` seconds while the job runs (progress display).
    warm_start: start local ranks by forking this caller's rank starter, which has imported
    torch and transformers once (:mod:`axolab.launch.warm_ranks`), instead of a fresh
    interpreter per rank; default on, unless the environment sets AXOLAB_WARM_START=0.
    Raises LaunchError if any rank fails; interrupting (Ctrl-C, a kernel interrupt) stops the job.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    if launcher not in ("auto", "local", "slurm"):
        raise ValueError(f"launcher={launcher!r}: expected auto, local or slurm")
    allocation = None if launcher == "local" else slurm_allocation()
    if launcher == "slurm" and allocation is None:
        raise LaunchError("launcher='slurm' but this process is not in a Slurm allocation with "
                          "srun available (no SLURM_JOB_ID)")
    if allocation is not None and nprocs > allocation.tasks:
        raise ValueError(f"{nprocs} ranks requested but Slurm job {allocation.job_id} has "
                         f"{allocation.tasks} tasks on {allocation.nodes} node(s); ask sbatch "
                         f"for more (--nodes / --ntasks-per-node)")
    log_dir = Path(log_dir).resolve()
    log_dir.mkdir(parents=True, exist_ok=True)
    for rank in range(nprocs):  # reports of an earlier attempt in this directory
        error_path(log_dir, rank).unlink(missing_ok=True)
        preempted_path(log_dir, rank).unlink(missing_ok=True)
    cmd, extra_env = launch_command(module, args, nprocs, log_dir, allocation)
    launcher_log = log_dir / "launcher.log"
    rank0 = _Tail(log_path(log_dir, 0))
    if warm_start is None:
        warm_start = os.environ.get("AXOLAB_WARM_START", "1") != "0"
    with open(launcher_log, "ab") as out:
        out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd)}\n".encode())
    proc = _start_launcher(cmd, {**os.environ, **extra_env}, launcher_log,
                           warm=warm_start and allocation is None)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def pump() -> None:
        if echo:
            for line in rank0.lines():
                print(line, flush=True)
        if watch is not None:
            watch()

    try:
        while proc.poll() is None:
            pump()
            if deadline is not None and time.monotonic() > deadline:
                _stop(proc)
                raise LaunchError(f"the job ran past timeout_s={timeout_s} and was stopped "
                                  f"(logs in {log_dir})", exitcode=None, log_dir=log_dir)
            time.sleep(poll_s)
    except BaseException:
        _stop(proc)
        raise
    pump()
    if proc.returncode != 0:
        # A launcher that was itself killed cannot have stopped its ranks; they are still in
        # its process group.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        raise _failure(log_dir, nprocs, proc.returncode, launcher_log)
