"""Stopping a job at a step boundary: the signals that ask for it and how a rank reports it.

On a cluster a job learns that it will be stopped from a signal: Slurm's warning before the time
limit (``--signal``, forwarded to the ranks as SIGUSR1 by axolab's batch script), SIGTERM from a
requeue or ``scancel``, or SIGTERM from the launcher when the caller goes away. A rank must not
die mid-step: the handler only records the request; the training loop agrees on it with every
other rank at the next step boundary, saves a checkpoint and exits with ``PREEMPTED_EXIT``, which
the worker turns into a marker file the launcher recognizes. A second SIGTERM is not graceful:
the rank stops at once. Torch-free (the worker and the launcher use it).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

PREEMPTED_EXIT = 75
"""Exit status of a rank that stopped early on request with its state saved (EX_TEMPFAIL)."""

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


def preempted_path(log_dir: Path, rank: int) -> Path:
    return Path(log_dir) / f"rank{rank}.preempted.json"


class StopRequest:
    """Records SIGUSR1 / SIGTERM instead of dying; ``signal_name`` says which came first."""

    def __init__(self):
        self.signal_name: str | None = None
        self.time: float | None = None
        self._previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def _handle(self, signum, frame) -> None:
        if self.requested and signum == signal.SIGTERM:
            # Asked twice: whoever sends it no longer waits for a checkpoint.
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if not self.requested:
            self.signal_name, self.time = signal.Signals(signum).name, time.time()
            print(f"axolab: {self.signal_name} received: stopping at the next step boundary "
                  "with a checkpoint", flush=True)

    def install(self) -> StopRequest:
        if threading.current_thread() is not threading.main_thread():
            return self  # Python delivers signals to the main thread only; nothing to catch here
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.restore()


def write_preempted(log_dir: Path, rank: int) -> None:
    """The worker's note that this rank stopped on request, its state saved."""
    from ..files import write_text_atomic

    write_text_atomic(preempted_path(log_dir, rank), json.dumps(
        {"rank": rank, "time": time.time(), "pid": os.getpid()}) + "\n")
