"""One rank of a launched job: `python -m axolab.launch.worker LOG_DIR MODULE [ARGS ...]`.

Runs MODULE as ``__main__`` with its output in LOG_DIR/rank<R>.log. A Python error is also
written to LOG_DIR/rank<R>.error.json (rank, host, time, exception, traceback), which is how
the launcher names the failing rank and shows its error instead of a wall of teardown noise
from the ranks that were stopped because of it.
"""

from __future__ import annotations

import faulthandler
import json
import os
import runpy
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path

from ..files import write_text_atomic
from .environment import rank_of_this_process
from .preemption import PREEMPTED_EXIT, write_preempted
from .rank_exit import WORKER_PID, leave, release_process_group

LAUNCHER_PID = "AXOLAB_LAUNCHER_PID"
LAUNCHER_HOST = "AXOLAB_LAUNCHER_HOST"


def error_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.error.json"


def log_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.log"


def _write_error(log_dir: Path, rank: int, exc: BaseException) -> None:
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "exception": type(exc).__name__, "message": str(exc),
              "traceback": "".join(traceback.format_exception(exc))}
    write_text_atomic(error_path(log_dir, rank), json.dumps(record, indent=1))


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    # A launcher killed while we run is re-parented and reaped; a zombie still counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _follow_launcher(grace_s: float = 60.0, poll_s: float = 1.0) -> None:
    """Die with the launcher: a notebook kernel or CLI that is killed (not stopped politely)
    cannot stop its ranks, and orphaned ranks would go on training beside the next attempt.
    When the launching process (same host) is gone, ask this rank to stop (SIGTERM: a training
    rank checkpoints at its next step boundary), then kill it after ``grace_s``."""
    pid = os.environ.get(LAUNCHER_PID)
    if not pid or os.environ.get(LAUNCHER_HOST) != socket.gethostname():
        return
    pid = int(pid)

    def watch() -> None:
        while _process_alive(pid):
            time.sleep(poll_s)
        print(f"axolab: the launcher (pid {pid}) is gone: stopping this rank", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(grace_s)
        os._exit(137)

    threading.Thread(target=watch, name="axolab-launcher-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m axolab.launch.worker LOG_DIR MODULE [ARGS ...]", file=sys.stderr)
        return 2
    log_dir, module, args = Path(argv[0]), argv[1], argv[2:]
    rank = rank_of_this_process()
    log_dir.mkdir(parents=True, exist_ok=True)
    # Point the process's own stdout/stderr (fds 1 and 2, so C++ and NCCL output too) at the log.
    log = open(log_path(log_dir, rank), "ab", buffering=0)
    os.dup2(log.fileno(), 1)
    os.dup2(log.fileno(), 2)
    sys.stdout.reconfigure(line_buffering=True)
    sys.stderr.reconfigure(line_buffering=True)
    # A rank that dies in C++ (abort, segfault) cannot report a Python error; its Python stack
    # at that moment, written into its log, is then the only clue.
    faulthandler.enable(file=log, all_threads=True)
    sys.argv = [module, *args]
    os.environ[WORKER_PID] = str(os.getpid())
    _follow_launcher()
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code in (None, 0):
            release_process_group()
            return 0
        if exc.code == PREEMPTED_EXIT:
            release_process_group()
            write_preempted(log_dir, rank)
            return PREEMPTED_EXIT
        _write_error(log_dir, rank, exc)
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher
        _write_error(log_dir, rank, exc)
        traceback.print_exc()
        return 1
    release_process_group()
    return 0


if __name__ == "__main__":
    leave(main(sys.argv[1:]))
