"""A real one-node Slurm cluster (Debian's slurm-wlm and munge) for the tests.

Everything lives in one temporary directory: the munge key and socket, slurm.conf (from
tests/slurm/slurm.conf.in), state, spool and logs; the daemons run in the foreground under
this process and are stopped when the cluster is. Needs root (slurmd starts jobs as their user).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

from axolab.net import free_port

TEMPLATE = Path(__file__).parent / "slurm" / "slurm.conf.in"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol")


def unavailable_reason() -> str | None:
    """Why a cluster cannot be started here, or None."""
    missing = [d for d in DAEMONS if shutil.which(d) is None
               and not Path(f"/usr/sbin/{d}").exists()]
    if missing:
        return (f"Slurm is not installed ({', '.join(missing)} missing): "
                "apt-get install slurm-wlm munge (.ci/run does)")
    if os.geteuid() != 0:
        return "the test Slurm cluster needs root (slurmd runs jobs as their user)"
    return None


def _exe(name: str) -> str:
    return shutil.which(name) or f"/usr/sbin/{name}"



class SlurmCluster:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.procs: list[subprocess.Popen] = []

    def start(self, timeout_s: float = 60) -> "SlurmCluster":
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        text = TEMPLATE.read_text()
        for name, value in (("HOST", socket.gethostname().split(".")[0]), ("DIR", str(self.root)),
                            ("CTLD_PORT", str(free_port())), ("SLURMD_PORT", str(free_port()))):
            text = text.replace(f"@{name}@", value)
        self.conf.write_text(text)
        logs = open(self.root / "log" / "daemons.out", "ab")
        munge = self.root / "munge"
        self._spawn([_exe("munged"), "--foreground", "--force", f"--socket={munge}/munge.sock",
                     f"--key-file={key}", f"--log-file={self.root}/log/munged.log",
                     f"--pid-file={munge}/munged.pid", f"--seed-file={munge}/seed",
                     "--num-threads=4"], logs)
        self._wait(lambda: (munge / "munge.sock").exists(), timeout_s, "munged")
        self._spawn([_exe("slurmctld"), "-D", "-i"], logs)
        self._spawn([_exe("slurmd"), "-D"], logs)
        self._wait(self._idle, timeout_s, "the node to become idle")
        return self

    def _spawn(self, cmd: list[str], logs) -> None:
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=logs, stderr=logs,
                                           stdin=subprocess.DEVNULL))

    def _idle(self) -> bool:
        res = subprocess.run([_exe("sinfo"), "-h", "-o", "%T"], env=self.env, capture_output=True,
                             text=True)
        return res.returncode == 0 and res.stdout.strip() == "idle"

    def _wait(self, ready, timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            dead = [p.args[0] for p in self.procs if p.poll() is not None]
            if dead or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"test Slurm cluster: waiting for {what} failed "
                                   f"(exited: {dead}); logs in {self.root / 'log'}")
            time.sleep(0.3)

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run([_exe("scontrol"), *args], env=self.env, capture_output=True,
                              text=True, check=check)

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()
