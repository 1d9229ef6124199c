"""Ranks that start in a fraction of a second: a warm process forks the jobs of one caller.

A rank of a training or evaluation job spends its first seconds importing torch, transformers
and axolab (about 7 s of a core here; on a cluster's shared file system often much more), and
every rank of every job pays it again. For the jobs a notebook kernel or the CLI starts on its
own machine, :func:`start_job` instead asks a rank starter (one per caller and environment,
started on first use) that has imported all of that once: it forks a launcher for the job,
which forks the ranks (:class:`axolab.launch.local_ranks.ForkedRank`); processes the caller starts use the same
starter while it lives (``OWNER``). Each job still gets its
own session (process group), environment, working directory and log, and its ranks run their
module as ``__main__`` exactly as ``python -m`` would.

A starter whose imported source files changed on disk since it imported them (a user editing
axolab or their own job module between launches) hands over to a new one, so a job always runs
the code on disk, as a fresh interpreter would. The starter holds no CUDA context and starts no thread of its own (forking a process with
either is unsafe); it only imports. It lives while its caller does and exits after
``IDLE_S`` without jobs. Protocol, one Unix-socket connection per job, JSON lines: the caller
sends ``{"argv", "env", "cwd", "log"}``; the starter answers ``{"pid"}`` (the job's launcher,
leader of its own process group) and, when the launcher ends, ``{"returncode"}``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from setproctitle import getproctitle, setproctitle

from .local_ranks import run_ranks, wait_polling

PRELOAD = ("torch", "torch.distributed", "transformers.modeling_utils",
           "transformers.models.llama.modeling_llama", "axolab.train", "axolab.memorization.job")
"""What the starter imports before it forks anything: what every training and evaluation rank
imports first."""

IDLE_S = 600.0
"""A starter with no job for this long exits (it holds the imported libraries' memory)."""

ENV_PREFIXES = ("HF_", "TRANSFORMERS_", "TORCH", "PYTORCH_", "OMP_", "MKL_", "KMP_", "OPENBLAS_",
                "PYTHON", "LD_", "CUDA_", "TOKENIZERS_", "VIRTUAL_ENV", "PATH", "SLURM_JOB_ID")
"""Variables that libraries may read when they are imported (and the Slurm job a caller runs
in, whose cgroup its ranks must stay in): a job whose caller has other values than a starter
was started with gets another starter."""

OWNER = "AXOLAB_RANK_STARTER_OWNER"
"""Set by a caller that started a starter, to its pid: the processes it starts (a notebook
kernel's CLI calls, papermill kernels) inherit it and use the same starter while it lives."""


def socket_path(env: dict[str, str] | None = None) -> Path:
    """Where the starter of this caller (or of the caller that started it) listens, for this
    environment."""
    env = dict(os.environ) if env is None else env
    key = json.dumps([sys.executable, sorted((k, v) for k, v in env.items()
                                             if k.startswith(ENV_PREFIXES))])
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    folder = Path(tempfile.gettempdir()) / f"axolab-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    return folder / f"ranks-{env.get(OWNER) or os.getpid()}-{digest}.sock"


class WarmJob:
    """A job's launcher started by the starter, with the part of :class:`subprocess.Popen`'s
    interface spmd uses (the launcher is not this process's child: its exit code comes over
    the connection)."""

    def __init__(self, conn: socket.socket, pid: int):
        self.conn, self.pid, self.returncode = conn, pid, None
        self._buffer = b""

    def poll(self) -> int | None:
        if self.returncode is not None:
            return self.returncode
        while select.select([self.conn], [], [], 0)[0]:
            chunk = self.conn.recv(4096)
            if not chunk:  # the starter is gone: the launcher's fate is all that is left
                if not _alive(self.pid):
                    self._finish(-signal.SIGKILL)
                return self.returncode
            self._buffer += chunk
            if b"\n" in self._buffer:
                self._finish(json.loads(self._buffer.split(b"\n", 1)[0])["returncode"])
                break
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        return wait_polling(self, timeout)

    def _finish(self, code: int) -> None:
        self.returncode = code
        self.conn.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def start_job(argv: list[str], env: dict[str, str], log: Path, *,
              start_timeout_s: float = 300.0, _retried: bool = False) -> WarmJob:
    """Start ``python -m axolab.launch.local_ranks N CMD ...`` (``argv`` without the
    interpreter) from this caller's starter, starting the starter if it is not running."""
    path = socket_path()
    conn = _connect(path)
    if conn is None:
        server_log = open(path.with_suffix(".log"), "ab")
        subprocess.Popen([sys.executable, "-m", "axolab.launch.warm_ranks", str(path),
                          str(os.getpid())], stdin=subprocess.DEVNULL, stdout=server_log,
                         stderr=subprocess.STDOUT, start_new_session=True,
                         env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
        server_log.close()
        os.environ.setdefault(OWNER, str(os.getpid()))
        deadline = time.monotonic() + 60.0
        while conn is None and time.monotonic() < deadline:
            time.sleep(0.05)
            conn = _connect(path)
        if conn is None:
            raise RuntimeError(f"the rank starter did not listen on {path} within 60 s "
                               f"(its output: {path.with_suffix('.log')})")
    conn.sendall(json.dumps({"argv": list(argv), "env": env, "cwd": os.getcwd(),
                             "log": str(log)}).encode() + b"\n")
    # The first job waits here while a new starter imports (seconds, once).
    conn.settimeout(start_timeout_s)
    reply = b""
    while not reply.endswith(b"\n"):
        chunk = conn.recv(4096)
        if not chunk:
            raise RuntimeError(f"the rank starter closed the connection before starting the job "
                               f"(its output: {path.with_suffix('.log')})")
        reply += chunk
    conn.settimeout(None)
    answer = json.loads(reply)
    if "restart" in answer:  # its code is older than the files: a new starter imports them
        conn.close()
        if _retried:
            raise RuntimeError(f"the rank starter on {path} keeps asking for a restart")
        return start_job(argv, env, log, start_timeout_s=start_timeout_s, _retried=True)
    return WarmJob(conn, answer["pid"])


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(str(path))
        return conn
    except (FileNotFoundError, ConnectionRefusedError):
        conn.close()
        return None


# ----------------------------------------------------------------------------- the starter


def _launcher(request: dict) -> None:
    """The forked child that becomes one job's launcher; never returns."""
    code = 1
    try:
        os.setsid()  # its own process group: spmd stops the job by signalling it
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        log = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.chdir(request["cwd"])
        sys.path[0] = request["cwd"]  # as `python -m` started there would have it
        os.environ.clear()
        os.environ.update(request["env"])
        argv = request["argv"]
        setproctitle(" ".join([sys.executable, *argv]))
        if argv[:2] != ["-m", "axolab.launch.local_ranks"] or not argv[2].isdigit():
            raise ValueError(f"the rank starter runs only axolab.launch.local_ranks, got {argv[:3]}")
        code = run_ranks(int(argv[2]), argv[3:], fork=True)
    except BaseException:  # noqa: BLE001 - the job's log is where its failure is read
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_request(conn: socket.socket) -> dict | None:
    data = b""
    conn.settimeout(10.0)
    while not data.endswith(b"\n"):
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    conn.settimeout(None)
    return json.loads(data)


def _source_stamps(previous: dict[str, int] | None = None) -> dict[str, int]:
    """Modification times of the source files of the modules imported here (of those in
    ``previous``, when given: a file deleted since reads as -1)."""
    if previous is None:
        files = {getattr(m, "__file__", None) for m in list(sys.modules.values())}
        files = sorted(f for f in files if f)
    else:
        files = list(previous)
    stamps = {}
    for f in files:
        try:
            stamps[f] = os.stat(f).st_mtime_ns
        except OSError:
            stamps[f] = -1
    return stamps


def serve(path: Path, parent: int) -> None:
    """Accept jobs on ``path`` until the caller ``parent`` is gone or no job came for IDLE_S."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(str(path))
    except OSError:  # another starter for this caller won the race
        if _connect(path) is not None:
            return
        path.unlink(missing_ok=True)  # left by a starter that was killed
        listener.bind(str(path))
    listener.listen(16)
    # setproctitle takes over the memory of argv and the environment on first use, which it
    # cannot do once a job's launcher has replaced the environment: so here, first.
    setproctitle(getproctitle())
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception as exc:  # noqa: BLE001 - the job itself will then fail clearly
            print(f"axolab rank starter: could not preload {name}: {exc}", flush=True)
    sources = _source_stamps()
    jobs: dict[int, socket.socket] = {}
    idle_since = time.monotonic()
    try:
        while listener is not None or jobs:
            if os.getppid() != parent:
                break  # nobody is left to ask for jobs; running launchers go on alone
            if not jobs and time.monotonic() - idle_since > IDLE_S:
                break
            if listener is None:
                time.sleep(0.1)
            elif select.select([listener], [], [], 0.1)[0]:
                conn, _ = listener.accept()
                request = _read_request(conn)
                if request is None:
                    conn.close()
                    continue
                if _source_stamps(sources) != sources:
                    # Code imported here was edited: a job must run what is on disk now. The
                    # caller starts a new starter; this one only sees its running jobs out.
                    listener.close()  # gone before the caller, told, starts the next one
                    listener = None
                    path.unlink(missing_ok=True)
                    conn.sendall(json.dumps({"restart": "stale"}).encode() + b"\n")
                    conn.close()
                    continue
                pid = os.fork()
                if pid == 0:
                    # Nothing of the starter's stays open in the job (a connection held here
                    # would hide the starter's death from its caller).
                    for other in (listener, conn, *jobs.values()):
                        other.close()
                    _launcher(request)
                jobs[pid] = conn
                conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
            while jobs:
                pid, status = os.waitpid(-1, os.WNOHANG)
                if not pid:
                    break
                conn = jobs.pop(pid, None)
                if conn is not None:
                    code = os.waitstatus_to_exitcode(status)
                    try:
                        conn.sendall(json.dumps({"returncode": code}).encode() + b"\n")
                    except OSError:
                        pass  # the caller stopped listening
                    conn.close()
                idle_since = time.monotonic()
    finally:
        if listener is not None:
            listener.close()
            path.unlink(missing_ok=True)
        log = path.with_suffix(".log")
        if log.is_file() and log.stat().st_size == 0:
            log.unlink()


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the caller and its jobs
    serve(Path(sys.argv[1]), int(sys.argv[2]))
