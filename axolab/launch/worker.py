"""One rank of a launched job: `python -m axolab.launch.worker LOG_DIR MODULE [ARGS ...]`.

Runs MODULE as ``__main__`` with its output in LOG_DIR/rank<R>.log. A Python error is also
written to LOG_DIR/rank<R>.error.json (rank, host, time, exception, traceback), which is how
the launcher names the failing rank and shows its error instead of a wall of teardown noise
from the ranks that were stopped because of it.
"""

from __future__ import annotations

import json
import os
import runpy
import socket
import sys
import time
import traceback
from pathlib import Path

from .environment import rank_of_this_process


def error_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.error.json"


def log_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.log"


def _write_error(log_dir: Path, rank: int, exc: BaseException) -> None:
    record = {"rank": rank, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time(),
              "exception": type(exc).__name__, "message": str(exc),
              "traceback": "".join(traceback.format_exception(exc))}
    tmp = error_path(log_dir, rank).with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, error_path(log_dir, rank))


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
    sys.argv = [module, *args]
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        if exc.code in (None, 0):
            return 0
        _write_error(log_dir, rank, exc)
        return exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:  # noqa: BLE001 - every failure must reach the launcher
        _write_error(log_dir, rank, exc)
        traceback.print_exc()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
