"""Sweeps on a real Slurm cluster (slurm-wlm + munge, one node on localhost, started here):
a 2-point job array whose notebook trains on 2 ranks through srun, hostile parameter values,
and a job requeued twice (scontrol requeue, then the time-limit signal) that resumes."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axolab.cli import main as axolab
from axolab.data import build
from axolab.metrics import read_metrics
from axolab.runs import load_sweep
from axolab.slurm import sweep_status

sys.path.insert(0, str(Path(__file__).parent))
from notebook_factory import echo_notebook  # noqa: E402
from slurm_cluster import SlurmCluster, unavailable_reason  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TRAIN_NB = ROOT / "notebooks" / "train.ipynb"
pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=str(unavailable_reason()))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm")).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(c.conf))
        yield c
    c.stop()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build(ROOT / "data_recipes" / "tiny.yaml", tmp_path_factory.mktemp("d") / "tiny",
                 progress=False)


def _wait_done(sweep_dir: Path, timeout_s: float = 300) -> list:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = sweep_status(sweep_dir)
        if all(r.state in ("completed", "failed", "lost") for r in rows):
            return rows
        time.sleep(1)
    logs = "\n".join(p.read_text()[-3000:] for p in (sweep_dir / "slurm").glob("*.out"))
    raise AssertionError(f"sweep {sweep_dir} not done after {timeout_s}s: "
                         f"{[(r.index, r.state, r.reason) for r in rows]}\n{logs}")


def _train_args(dataset, **params) -> list[str]:
    args = [str(TRAIN_NB), "-p", "data", str(dataset), "-p", "grid", "[1,1,1,2]",
            "-p", "global_batch", "4"]
    for k, v in params.items():
        args += ["-p", k, str(v)]
    return args


def test_two_point_sweep_trains_on_two_ranks_each(cluster, dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    rc = axolab(["slurm", "submit", *_train_args(dataset, steps=8, checkpoint_interval=4),
                 "--grid", "lr=0.003,0.001", "--name", "lr-sweep", "--ntasks-per-node", "2",
                 "--time", "00:10:00"])
    assert rc == 0
    sweep_dir = tmp_path / "results" / "lr-sweep"
    rows = _wait_done(sweep_dir)
    assert [r.state for r in rows] == ["completed", "completed"], rows
    lrs = []
    for point in load_sweep(sweep_dir).points:
        run_dir = point.run_dir
        params = json.loads((run_dir / "parameters.json").read_text())
        lrs.append(params["lr"])
        assert params["grid"] == [1, 1, 1, 2] and params["steps"] == 8
        metrics = read_metrics(run_dir)
        assert [m["step"] for m in metrics] == list(range(1, 9))
        # The ranks came from srun inside the allocation, two of them.
        launch = (run_dir / "logs" / "launcher.log").read_text()
        assert " srun --ntasks=2 " in launch
        assert (run_dir / "logs" / "rank1.log").exists()
        session = json.loads((run_dir / "sessions.jsonl").read_text().splitlines()[0])
        assert session["slurm_job_id"] and session["grid"] == [1, 1, 1, 2]
        assert json.loads((run_dir / "config.json").read_text())["lr"] == params["lr"]
    assert lrs == [0.003, 0.001] and all(isinstance(v, float) for v in lrs)
    capsys.readouterr()
    assert axolab(["slurm", "status", str(sweep_dir)]) == 0
    assert capsys.readouterr().out.count("completed") == 2


def test_hostile_values_reach_the_notebook_verbatim(cluster, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = echo_notebook(tmp_path / "echo.ipynb")
    hostile = ["x; rm -rf ~", "$(touch PWNED1)", "`touch PWNED2`", "a'b\"c\\n\nnewline",
               "'; import os; os.system('touch PWNED3'); '"]
    rc = axolab(["slurm", "submit", str(nb), "-p", "anything", hostile[0],
                 "--grid", "name=" + json.dumps(hostile[1:]), "--name", "hostile"])
    assert rc == 0
    sweep_dir = tmp_path / "results" / "hostile"
    rows = _wait_done(sweep_dir)
    assert all(r.state == "completed" for r in rows), rows
    script = (sweep_dir / "slurm" / "job.sbatch").read_text()
    for i, point in enumerate(load_sweep(sweep_dir).points):
        seen = json.loads((point.run_dir / "seen.json").read_text())
        assert seen["name"] == ["str", hostile[1 + i]]
        assert seen["anything"] == ["str", hostile[0]]
    for value in hostile:
        assert value not in script
    assert not list(tmp_path.rglob("PWNED*")) and not list(Path.home().glob("PWNED*"))


def _requeue_now(cluster, job: str) -> None:
    """Wait for the job to be requeued (the batch script requeues itself only once its ranks
    have checkpointed), then skip the two minutes a requeued job waits before it is eligible."""
    deadline = time.monotonic() + 120
    requeued = 0.0
    while time.monotonic() < deadline:
        state = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True,
                               text=True, env=cluster.env).stdout.strip()
        if state == "PENDING":
            requeued = requeued or time.monotonic()
            # Not within the second the previous attempt was killed in: slurmd refuses a job
            # whose credential is not newer than that kill ("job credential revoked").
            if time.monotonic() - requeued > 2.5:
                cluster.scontrol("update", f"JobId={job}", "StartTime=now", check=False)
        elif state == "RUNNING" and requeued:
            return
        time.sleep(0.5)
    raise AssertionError(f"job {job} was not requeued and restarted within 120 s")


def _wait_step(run_dir: Path, step: int, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        path = run_dir / "metrics.jsonl"
        if path.exists() and any(json.loads(line)["step"] >= step
                                 for line in path.read_text().splitlines() if line.strip()):
            return
        time.sleep(0.2)
    raise AssertionError(f"{run_dir} never reached step {step}")


def test_requeued_job_resumes_from_its_checkpoint(cluster, dataset, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc = axolab(["slurm", "submit", *_train_args(dataset, steps=40, checkpoint_interval=5),
                 "--name", "requeue", "--ntasks-per-node", "2", "--time", "00:20:00"])
    assert rc == 0
    sweep_dir = tmp_path / "results" / "requeue"
    job = json.loads((sweep_dir / "slurm" / "submitted.json").read_text())[-1]["job_id"]
    run_dir = load_sweep(sweep_dir).points[0].run_dir
    # 1) preempted: an administrator (or the scheduler) requeues the running job; its
    #    processes get SIGTERM and, KillWait seconds later, SIGKILL.
    _wait_step(run_dir, 8)
    cluster.scontrol("requeue", job)
    _requeue_now(cluster, job)
    # 2) the time-limit warning: the batch shell gets USR1, the ranks checkpoint at their next
    #    step boundary and stop, and the job requeues itself.
    _wait_step(run_dir, 22)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True, env=cluster.env)
    _requeue_now(cluster, job)
    rows = _wait_done(sweep_dir, timeout_s=400)
    assert rows[0].state == "completed", rows
    sessions = [json.loads(line) for line in (run_dir / "sessions.jsonl").read_text().splitlines()]
    assert [s["slurm_restart_count"] for s in sessions] == [0, 1, 2]
    assert sessions[0]["start_step"] == 0
    # Each restart began at a checkpoint past the first one, not from scratch...
    assert sessions[1]["start_step"] >= 5 and sessions[2]["start_step"] > sessions[1]["start_step"]
    # ...and the warned one lost no step at all: it resumed where the ranks stopped.
    rank0 = (run_dir / "logs" / "rank0.log").read_text()
    stopped = re.findall(r"stopped by SIGUSR1 after step (\d+) of 40", rank0)
    assert stopped and sessions[2]["start_step"] == int(stopped[-1]), (stopped, sessions)
    assert [m["step"] for m in read_metrics(run_dir)] == list(range(1, 41))
    status = json.loads((run_dir / "status.json").read_text())
    assert status["attempts"] == 3 and status["state"] == "completed"
    out = "".join(p.read_text() for p in (sweep_dir / "slurm").glob("*.out"))
    assert "requeueing job" in out and "attempt 3" in out
