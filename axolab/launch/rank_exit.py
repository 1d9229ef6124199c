"""How a rank process ends once its work is done: without interpreter finalization.

Finalization adds nothing a finished rank needs, only C++ destructors of torch/gloo objects
still alive (process-group worker threads, futures of async collectives); one of them
destroying a still-joinable thread aborts the rank (std::terminate, SIGABRT) after it finished,
and the launcher then fails the whole job at its very end. So a rank shuts its process group
down, runs its exit hooks, flushes, and leaves with ``os._exit``. Files a job writes are closed
or renamed by the job itself, so nothing is lost.
"""

from __future__ import annotations

import atexit
import os
import sys

# Set by axolab.launch.worker to its own pid: the worker then ends the rank itself (it still
# has reports to write), so a job module run under it only raises SystemExit.
WORKER_PID = "AXOLAB_WORKER_PID"


def release_process_group() -> None:
    """Shut the default process group down (and with it every subgroup) if one is open."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def leave(code: int) -> None:
    """End this process now with ``code``: exit hooks run, finalization does not."""
    atexit._run_exitfuncs()  # the job's own exit hooks still run, in the usual order
    flush_std_streams()
    os._exit(code)


def flush_std_streams() -> None:
    """Flush stdout and stderr, ignoring ones already closed."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass


def exit_rank(code: int) -> None:
    """The end of a job module's ``__main__`` (``torchrun -m axolab.train``, or under the
    worker): the process group is shut down on success, then the rank leaves without
    finalization; under axolab's worker, SystemExit hands ``code`` back to it instead."""
    if os.environ.get(WORKER_PID) == str(os.getpid()):
        raise SystemExit(code)
    if code == 0:
        release_process_group()
    leave(code)
