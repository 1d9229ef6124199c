"""One writer per run directory: an advisory lock on RUN_DIR/.lock.

Two trainings into one run directory interleave their metrics and collide in the checkpoint
save. The training's lead rank holds ``flock`` on the lock file for the whole run; the kernel
releases it when the process ends however it ends (a kill included), so a lock is never left
stale. The holder writes who it is into the file, so the second writer's error can say which
process, host and job owns the directory. (On cluster file systems flock is kept coherent
across nodes by Lustre mounted with -o flock, GPFS, and NFSv4; a node-local /tmp is not shared.)
Torch-free.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = ".lock"


class RunDirLocked(RuntimeError):
    """Another process is writing this run directory."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another process"
    where = f"pid {info.get('pid')} on {info.get('host')}"
    if info.get("slurm_job_id"):
        where += f" (Slurm job {info['slurm_job_id']})"
    return where


class RunDirLock:
    """``with RunDirLock(run_dir, wait_s=...)``: hold the run directory's lock or raise
    RunDirLocked naming its holder. ``wait_s`` covers a predecessor still shutting down (a
    requeued job's ranks exit while the next attempt starts)."""

    def __init__(self, run_dir: str | Path, wait_s: float = 0.0, purpose: str = "training"):
        self.run_dir, self.wait_s, self.purpose = Path(run_dir), wait_s, purpose
        self.path = self.run_dir / LOCK_NAME
        self.fd: int | None = None

    def acquire(self) -> RunDirLock:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        deadline = time.monotonic() + self.wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    raise RunDirLocked(
                        f"{self.run_dir} is in use by {_holder(self.path)}: another run is "
                        f"writing there; wait for it to end, stop it, or use another run "
                        f"directory") from None
                time.sleep(0.2)
        info = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                "purpose": self.purpose, "slurm_job_id": os.environ.get("SLURM_JOB_ID")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> RunDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def check_unlocked(run_dir: str | Path) -> None:
    """Raise RunDirLocked now if a live process holds ``run_dir`` (a launcher's early check,
    before any rank starts); creates nothing when the directory has never been locked."""
    path = Path(run_dir) / LOCK_NAME
    if not path.is_file():
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise RunDirLocked(f"{Path(run_dir)} is in use by {_holder(path)}: another run is "
                           "writing there; wait for it to end, stop it, or use another run "
                           "directory") from None
    finally:
        os.close(fd)
