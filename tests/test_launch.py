"""The launcher: a 4-rank training job started from Python whose caller never touches
torch; a rank that raises or is killed ends the job promptly with that rank's error."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from axolab.cli import main as axolab
from axolab.data import build
from axolab.launch import LaunchError, spmd
from axolab.launch.environment import SlurmAllocation, in_slurm_step, slurm_allocation
from axolab.launch.local_ranks import exit_line, rank_environments
from axolab.launch.spmd import launch_command

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent


@pytest.fixture
def targets(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS))


def test_four_rank_training_from_python_leaves_the_caller_clean(tmp_path):
    data = build(ROOT / "data_recipes" / "tiny.yaml", tmp_path / "tiny", progress=False)
    script = f"""
import json, sys
from axolab.launch import run
last = run(dict(data={str(data)!r}, run_dir={str(tmp_path / 'run')!r}, grid=[2, 1, 1, 2],
                steps=4, global_batch=8, eval_interval=2, checkpoint_interval=0), progress=False)
print(json.dumps({{"last": last, "torch_imported": "torch" in sys.modules}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    # The kernel-side process never imported torch, so it cannot have set up a process
    # group or CUDA.
    assert out["torch_imported"] is False
    assert out["last"]["step"] == 4 and out["last"]["total_steps"] == 4
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "logs").glob("rank*.log")) == \
        [f"rank{r}.log" for r in range(4)]
    assert json.loads((run_dir / "config.json").read_text())["grid"] == [2, 1, 1, 2]
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2, 3, 4]


def test_rank_output_is_echoed(targets, tmp_path, capsys):
    spmd("launch_targets", ["ok"], 2, tmp_path / "logs")
    out = capsys.readouterr().out
    assert "hello from rank 0" in out and "hello from rank 1" not in out
    assert "hello from rank 1" in (tmp_path / "logs" / "rank1.log").read_text()


def test_a_raising_rank_surfaces_its_error(targets, tmp_path):
    # The peers sleep 300 s: unless the launcher stops them when rank 2 fails, the job ends
    # by its timeout instead, with the timeout's error.
    with pytest.raises(LaunchError) as info:
        spmd("launch_targets", ["raise", "2"], 4, tmp_path / "logs", echo=False, timeout_s=120)
    err = info.value
    assert err.rank == 2 and "timeout_s" not in str(err)
    assert "ValueError: boom from rank 2" in str(err) and "launch_targets.py" in str(err)


def test_a_killed_rank_ends_the_job(targets, tmp_path):
    with pytest.raises(LaunchError) as info:
        spmd("launch_targets", ["kill", "1"], 3, tmp_path / "logs", echo=False, timeout_s=120)
    assert info.value.rank == 1 and "rank 1 was killed" in str(info.value)
    assert "timeout_s" not in str(info.value)
    assert "SIGKILL" in str(info.value) or "-9" in str(info.value)


def test_an_aborted_rank_shows_its_own_last_words(targets, tmp_path):
    # A rank that dies in native code names itself, and the error carries the end of its own
    # log: what it printed last and the Python stack it was in.
    with pytest.raises(LaunchError) as info:
        spmd("launch_targets", ["abort", "1"], 2, tmp_path / "logs", echo=False)
    message = str(info.value)
    assert info.value.rank == 1 and "rank 1 was killed" in message
    own = message.split("Last lines of rank 1's log:", 1)[1]
    assert "native code gave up" in own and "Fatal Python error: Aborted" in own
    assert "launch_targets.py" in own


def test_the_worker_shuts_the_process_group_down(targets, tmp_path):
    # Exit-time destructors of a live gloo group can abort a rank that finished its work.
    spmd("launch_targets", ["group"], 2, tmp_path / "logs", echo=False)
    for rank in range(2):
        assert "group open at exit: False" in (tmp_path / "logs" / f"rank{rank}.log").read_text()


def test_a_rank_that_finished_is_not_killed_by_exit_time_destructors(targets, tmp_path):
    spmd("launch_targets", ["abort-in-finalization"], 2, tmp_path / "logs", echo=False)
    for rank in range(2):
        assert f"rank {rank} done" in (tmp_path / "logs" / f"rank{rank}.log").read_text()


def test_a_job_module_under_plain_torchrun_also_skips_finalization(targets, tmp_path):
    """`torchrun -m axolab.train` without axolab's worker: the module's own exit_rank ends it."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node=2", "-m", "launch_targets", "abort-in-finalization"],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "rank 1 done" in done.stdout


def test_local_ranks_environment_and_group_signal(targets, tmp_path):
    """The launcher gives each rank its rendezvous variables; a SIGTERM sent to the job's process
    group reaches every rank once (a second would cut its checkpoint short) and the launcher
    waits for them to finish saving."""
    env = rank_environments(3, 29999, {"KEEP": "1"})
    assert [e["RANK"] for e in env] == ["0", "1", "2"] == [e["LOCAL_RANK"] for e in env]
    assert {(e["WORLD_SIZE"], e["MASTER_PORT"], e["KEEP"]) for e in env} == {("3", "29999", "1")}
    assert exit_line(1, -9) == "axolab: rank 1 exited with code -9 (SIGKILL)"
    job = subprocess.Popen([sys.executable, "-m", "axolab.launch.local_ranks", "2",
                            sys.executable, "-m", "launch_targets", "term"],
                           stdout=subprocess.PIPE, text=True, start_new_session=True)
    lines = [job.stdout.readline(), job.stdout.readline(), job.stdout.readline(),
             job.stdout.readline()]
    assert sum("ready" in line for line in lines) == 2, lines
    os.killpg(job.pid, signal.SIGTERM)
    out = job.communicate(timeout=60)[0]
    assert job.returncode == 0, out
    assert out.count("saved after 1 SIGTERM") == 2, out


def test_timeout_stops_the_job(targets, tmp_path):
    t0 = time.monotonic()
    with pytest.raises(LaunchError, match="timeout_s=3"):
        spmd("launch_targets", ["sleep"], 2, tmp_path / "logs", timeout_s=3, echo=False)
    assert time.monotonic() - t0 < 30


def test_slurm_command_and_environment(monkeypatch):
    batch = {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "8",
             "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu01"}
    # The batch script is not a rank (no SLURM_STEP_ID); an srun task is.
    assert not in_slurm_step(batch) and in_slurm_step({**batch, "SLURM_STEP_ID": "0"})
    monkeypatch.setattr("shutil.which", lambda name: f"/usr/bin/{name}")
    assert slurm_allocation(batch) == SlurmAllocation(job_id="7", nodes=2, tasks=8)
    assert slurm_allocation({**batch, "SLURM_STEP_ID": "0"}) is None
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu01")
    cmd, env = launch_command("axolab.train", ["c.json"], 8, Path("/l"),
                              SlurmAllocation("7", 2, 8))
    assert cmd[:3] == ["srun", "--ntasks=8", "--kill-on-bad-exit=1"]
    assert cmd[-2:] == ["axolab.train", "c.json"] and env["MASTER_ADDR"]
    for key, value in batch.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValueError, match="16 ranks requested but Slurm job 7 has 8 tasks"):
        spmd("axolab.train", [], 16, "/nonexistent/never-created")
    assert not Path("/nonexistent/never-created").exists()


def test_bad_train_config_is_refused_before_launch(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"grid": [2, 1, 1, 1], "global_batch": 3,
                               "run_dir": str(tmp_path / "run")}))
    assert axolab(["train", str(cfg)]) == 2
    assert "global_batch=3 does not split over data*z = 2" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
    cfg.write_text(json.dumps({"grdi": [1, 1, 1, 1]}))
    assert axolab(["train", str(cfg)]) == 2
    assert "did you mean 'grid'" in capsys.readouterr().err


WARM_CALLER = """
import json, os, sys
from pathlib import Path
from axolab.launch import spmd
from axolab.launch.warm_ranks import socket_path

base = Path(sys.argv[1])
os.chdir(base)

def job(name, nprocs, *args, **kw):
    spmd("launch_targets", ["report", *args], nprocs, base / name, echo=False, **kw)
    return [json.loads(line[len("report "):]) for r in range(nprocs)
            for line in (base / name / f"rank{r}.log").read_text().splitlines()
            if line.startswith("report ")]

out = {"a": job("a", 2, "7"), "first": str(socket_path())}
os.environ["AXOLAB_TEST_MARKER"] = "set later"
out["b"] = job("b", 2)
import axolab.launch.rank_exit as edited  # imported by every starter
os.utime(edited.__file__)  # as if edited: the next job needs a starter that imports it anew
out["b2"] = job("b2", 1)
os.environ["HF_HOME"] = str(base / "hf")  # read by libraries at import: another starter
out["second"] = str(socket_path())
out["c"] = job("c", 1)
out["fresh"] = job("d", 2, warm_start=False)
print(json.dumps(out))
"""


def test_warm_started_ranks_run_as_fresh_ones_would(targets, tmp_path):
    """Ranks forked by the caller's rank starter have the libraries imported already, and
    otherwise what a fresh `python -m` rank has: the caller's working directory and current
    environment, the module's argv, their share of the cores. A change to a variable libraries
    read at import gets another starter; every starter ends with its caller."""
    res = subprocess.run([sys.executable, "-c", WARM_CALLER, str(tmp_path)], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    warm = out["a"] + out["b"] + out["b2"] + out["c"]
    assert [r["preloaded"] for r in warm] == [True] * 6
    assert [r["preloaded"] for r in out["fresh"]] == [False, False]
    for r in warm + out["fresh"]:
        assert r["cwd"] == str(tmp_path)
        assert r["argv"][0].endswith("launch_targets.py") and r["argv"][1] == "report"
        assert r["threads"] == int(r["omp"]) == max(1, (os.cpu_count() or 1) // (
            1 if r in out["b2"] + out["c"] else 2))
    assert [r["argv"][2:] for r in out["a"]] == [["7"], ["7"]]
    assert sorted(r["rank"] for r in out["a"]) == [0, 1]
    assert [r["marker"] for r in out["a"]] == [None, None]
    assert [r["marker"] for r in out["b"] + out["b2"] + out["c"]] == ["set later"] * 4
    starters = [{r["starter"] for r in out[job]} for job in ("a", "b", "b2", "c")]
    assert all(len(s) == 1 for s in starters)
    assert starters[0] == starters[1] and len(set.union(*starters[1:])) == 3
    # One launcher per job (the ranks' parent), and not the same one twice.
    assert len({r["ppid"] for r in out["a"]}) == 1 and \
        {r["ppid"] for r in out["a"]} != {r["ppid"] for r in out["b"]}
    assert out["first"] != out["second"]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (Path(out["first"]).exists()
                                           or Path(out["second"]).exists()):
        time.sleep(0.1)
    assert not Path(out["first"]).exists() and not Path(out["second"]).exists()


def test_rendezvous_ports_come_from_below_the_ephemeral_range():
    """A rendezvous port is bound seconds after it is chosen; one from the kernel's ephemeral
    range can meanwhile go to any outgoing connection (two Slurm array tasks' gloo ranks on
    one node collided that way): ports are drawn below it, and are free when drawn."""
    import socket

    from axolab.net import LOWEST_PORT, _ephemeral_start, free_port

    top = _ephemeral_start()
    ports = {free_port() for _ in range(20)}
    assert all(LOWEST_PORT <= p < top for p in ports), (sorted(ports), top)
    assert len(ports) > 1  # drawn, not a fixed sequence
    for p in list(ports)[:3]:
        with socket.socket() as s:
            s.bind(("", p))
