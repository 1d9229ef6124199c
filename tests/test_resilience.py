"""Kills and stops at the worst moments: a rank SIGKILLed mid-run, a SIGKILL inside a checkpoint
write and inside a metrics write, a graceful stop on SIGUSR1 (Slurm's time-limit warning) and a
launcher that dies. Every interrupted 2-rank run resumes to exactly the uninterrupted losses, no
rank outlives its launcher, and a second writer of a run directory is refused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from axolab.config import TrainConfig, config_from_dict
from axolab.data import build
from axolab.files import read_jsonl
from axolab.launch import JobPreempted
from axolab.launch import run as launch_run
from axolab.metrics import read_metrics
from axolab.runlock import RunDirLocked

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent
STEPS = 24
COMMON = dict(steps=STEPS, global_batch=8, micro_batch=2, lr=3e-3, warmup_steps=3,
              eval_interval=0, checkpoint_interval=6, keep_checkpoints=2, grid=[2, 1, 1, 1],
              collective_timeout_s=60, progress=False)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build(ROOT / "data_recipes" / "tiny.yaml", tmp_path_factory.mktemp("d") / "tiny",
                 progress=False)


def _config(dataset, run_dir: Path, **kw) -> Path:
    cfg = config_from_dict(TrainConfig, {**COMMON, "data": str(dataset),
                                         "run_dir": str(run_dir), **kw})
    path = run_dir.parent / f"{run_dir.name}.json"
    path.write_text(json.dumps(cfg.to_dict()))
    return path


def _torchrun(args: list[str], nproc: int = 2) -> subprocess.Popen:
    """``torchrun -m ARGS`` as axolab's local launcher does it (the same rendezvous
    variables; without torchrun's own start-up)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS)}
    return subprocess.Popen([sys.executable, "-m", "axolab.launch.local_ranks", str(nproc),
                             sys.executable, "-m", *args],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _losses(run_dir: Path) -> list[float]:
    return [r["loss"] for r in read_metrics(run_dir)]


def _wait_step(run_dir: Path, step: int, timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        records = read_jsonl(run_dir / "metrics.jsonl")
        if records and records[-1]["step"] >= step:
            return
        time.sleep(0.02)
    raise AssertionError(f"{run_dir} never reached step {step}")


def _ranks_of(run_dir: Path) -> list[psutil.Process]:
    """Live rank processes of a run launched by axolab (their command names the log dir)."""
    mark = str(run_dir / "logs")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        launcher = "torch.distributed.run" in cmd or "axolab.launch.local_ranks" in cmd
        if "axolab.launch.worker" in cmd and mark in cmd and not launcher:
            found.append(p)
    return found


def _checkpoints(run_dir: Path) -> list[str]:
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir())


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce, bit for bit."""
    run_dir = tmp_path_factory.mktemp("ref") / "whole"
    job = _torchrun(["axolab.train", str(_config(dataset, run_dir))])
    assert job.wait(timeout=600) == 0, job.stdout.read()
    losses = _losses(run_dir)
    assert len(losses) == STEPS
    return losses


def test_killed_rank_fails_the_job_and_resume_matches(dataset, reference, tmp_path):
    run_dir = tmp_path / "broken"
    cfg = _config(dataset, run_dir)
    job = _torchrun(["axolab.train", str(cfg)])
    _wait_step(run_dir, 14)
    victims = [p for p in psutil.Process(job.pid).children(recursive=True)
               if "axolab.train" in " ".join(p.cmdline())]
    assert len(victims) == 2, "expected two worker ranks"
    killed_at = time.time()
    os.kill(victims[-1].pid, signal.SIGKILL)
    assert job.wait(timeout=120) != 0, "the job must fail when a rank dies"
    assert time.time() - killed_at < 60, "the surviving rank hung"
    assert read_metrics(run_dir)[-1]["step"] < STEPS, "the kill came too late"
    again = _torchrun(["axolab.train", str(cfg)])
    assert again.wait(timeout=600) == 0, again.stdout.read()
    assert _losses(run_dir) == reference, "resumed losses differ from the uninterrupted run"
    assert _checkpoints(run_dir) == ["step-00000018", "step-00000024"]


def test_sigkill_inside_a_checkpoint_write(dataset, reference, tmp_path):
    run_dir = tmp_path / "ckpt"
    cfg = _config(dataset, run_dir)
    job = _torchrun(["kill_driver", "checkpoint", "12", str(cfg)])
    assert job.wait(timeout=600) != 0
    # The torn checkpoint never got its final name; the newest complete one is step 6.
    assert _checkpoints(run_dir) == [".step-00000012.partial", "step-00000006"]
    again = _torchrun(["axolab.train", str(cfg)])
    assert again.wait(timeout=600) == 0, again.stdout.read()
    sessions = read_jsonl(run_dir / "sessions.jsonl")
    assert [s["start_step"] for s in sessions] == [0, 6]
    assert _losses(run_dir) == reference
    assert _checkpoints(run_dir) == ["step-00000018", "step-00000024"]


def test_sigkill_inside_a_metrics_write(dataset, reference, tmp_path):
    run_dir = tmp_path / "metrics"
    cfg = _config(dataset, run_dir)
    job = _torchrun(["kill_driver", "metrics", "9", str(cfg)])
    assert job.wait(timeout=600) != 0
    text = (run_dir / "metrics.jsonl").read_text()
    assert not text.endswith("\n"), "the kill should have torn the last line"
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 9))
    again = _torchrun(["axolab.train", str(cfg)])
    assert again.wait(timeout=600) == 0, again.stdout.read()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == list(range(1, STEPS + 1))
    assert _losses(run_dir) == reference


def _launch_in_thread(cfg: Path) -> tuple[threading.Thread, dict]:
    outcome: dict = {}

    def target():
        try:
            outcome["last"] = launch_run(str(cfg), progress=False, echo=False, timeout_s=600)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    return thread, outcome


def test_sigusr1_stops_at_a_step_boundary_with_nothing_lost(dataset, reference, tmp_path):
    run_dir = tmp_path / "preempted"
    cfg = _config(dataset, run_dir)
    thread, outcome = _launch_in_thread(cfg)
    _wait_step(run_dir, 8)
    # A second writer is refused by the launcher before any rank of it starts.
    with pytest.raises(RunDirLocked, match=f"{run_dir} is in use by pid \\d+"):
        launch_run(str(cfg), progress=False, echo=False)
    ranks = _ranks_of(run_dir)
    assert len(ranks) == 2
    ranks[-1].send_signal(signal.SIGUSR1)  # one rank told: the other must stop with it
    thread.join(timeout=300)
    assert isinstance(outcome.get("error"), JobPreempted), outcome
    stopped = read_metrics(run_dir)[-1]["step"]
    assert 8 <= stopped < STEPS
    # Zero lost steps: the checkpoint is the last step trained.
    assert f"step-{stopped:08d}" in _checkpoints(run_dir)
    assert "SIGUSR1 received" in (run_dir / "logs" / "rank1.log").read_text()
    launch_run(str(cfg), progress=False, echo=False, timeout_s=600)
    sessions = read_jsonl(run_dir / "sessions.jsonl")
    assert [s["start_step"] for s in sessions] == [0, stopped]
    assert _losses(run_dir) == reference


def test_ranks_do_not_outlive_a_killed_launcher(dataset, tmp_path):
    run_dir = tmp_path / "orphans"
    cfg = _config(dataset, run_dir, steps=400, checkpoint_interval=0)
    caller = subprocess.Popen(
        [sys.executable, "-c", f"from axolab.launch import run; run({str(cfg)!r}, progress=False)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _wait_step(run_dir, 3)
    assert len(_ranks_of(run_dir)) == 2
    caller.kill()  # SIGKILL: the launcher cannot tell anyone
    caller.wait()
    deadline = time.monotonic() + 90
    while _ranks_of(run_dir) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _ranks_of(run_dir), "ranks kept running after their launcher died"
    # They stopped gracefully: a checkpoint of the last step they trained, and the lock is free.
    stopped = read_metrics(run_dir)[-1]["step"]
    assert _checkpoints(run_dir) == [f"step-{stopped:08d}"]
    assert stopped < 400
    from axolab.runlock import check_unlocked

    check_unlocked(run_dir)
