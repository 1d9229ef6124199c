"""Submitting a sweep to Slurm and asking where its tasks are."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import write_json_atomic
from ..runs import Sweep, load_sweep
from .options import SlurmOptions
from .script import render_sbatch


class SlurmError(RuntimeError):
    """sbatch or squeue is missing or refused a request."""


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise SlurmError(f"{name} not found on PATH: run this on a Slurm login node")
    return path


def submit(sweep: Sweep, opts: SlurmOptions, workdir: str | Path | None = None) -> str:
    """Write the sweep's sbatch script and submit it as one array; returns the job id."""
    sbatch = _tool("sbatch")
    opts.validate()
    workdir = Path(workdir or os.getcwd()).resolve()
    text = render_sbatch(sweep.sweep_dir, len(sweep.points), opts, workdir)  # refuses first
    slurm_dir = sweep.sweep_dir / "slurm"
    slurm_dir.mkdir(parents=True, exist_ok=True)
    script = slurm_dir / "job.sbatch"
    tmp = slurm_dir / ".job.sbatch.tmp"
    tmp.write_text(text)
    tmp.replace(script)
    res = subprocess.run([sbatch, "--parsable", str(script)], capture_output=True, text=True,
                         cwd=workdir, timeout=120)
    if res.returncode != 0:
        raise SlurmError(f"sbatch refused {script}: {res.stderr.strip() or res.stdout.strip()}")
    job_id = res.stdout.strip().split(";")[0]
    record_path = slurm_dir / "submitted.json"
    records = json.loads(record_path.read_text()) if record_path.is_file() else []
    records.append({"job_id": job_id, "time": time.time(), "script": str(script),
                    "points": len(sweep.points)})
    write_json_atomic(record_path, records)
    return job_id


@dataclass
class TaskState:
    index: int
    name: str
    state: str
    """Slurm's state while queued or running (PENDING, RUNNING, ...), then the run's own
    (completed, failed); "lost" if it left the queue without finishing its run."""
    job_id: str | None
    run_dir: Path
    reason: str = ""


def _queue(job_id: str) -> dict[int, tuple[str, str, str]]:
    """Array index -> (job id of the task, state, reason) for the tasks still in the queue."""
    res = subprocess.run([_tool("squeue"), "-h", "-r", "-j", job_id, "-o", "%i|%K|%T|%r"],
                         capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        # squeue refuses ids that have left the queue altogether.
        if "Invalid job id" in res.stderr:
            return {}
        raise SlurmError(f"squeue -j {job_id}: {res.stderr.strip()}")
    out = {}
    for line in res.stdout.splitlines():
        task_id, index, state, reason = line.split("|", 3)
        if index.isdigit():
            out[int(index)] = (task_id, state, reason if reason != "None" else "")
    return out


def sweep_status(sweep_dir: str | Path) -> list[TaskState]:
    """Where each point of a submitted sweep is: in the queue, or done (from its status.json)."""
    sweep = load_sweep(sweep_dir)
    records_path = sweep.sweep_dir / "slurm" / "submitted.json"
    if not records_path.is_file():
        raise SlurmError(f"{sweep.sweep_dir} was never submitted to Slurm (no slurm/submitted.json)")
    job_id = json.loads(records_path.read_text())[-1]["job_id"]
    queued = _queue(job_id)
    rows = []
    for i, point in enumerate(sweep.points):
        status_path = point.run_dir / "status.json"
        run = json.loads(status_path.read_text()) if status_path.is_file() else {}
        if i in queued:
            task_id, state, reason = queued[i]
            rows.append(TaskState(i, point.run_dir.name, state, task_id, point.run_dir, reason))
            continue
        state = run.get("state", "lost")
        if state == "running":  # not queued, yet its run never finished: killed mid-run
            state = "lost"
        rows.append(TaskState(i, point.run_dir.name, state, run.get("slurm_job_id"),
                              point.run_dir))
    return rows


def submitted_sweeps(results: str | Path = "results") -> list[Path]:
    """Sweep directories under ``results`` that were submitted to Slurm, newest first."""
    found = [p.parent.parent for p in Path(results).glob("*/slurm/submitted.json")]
    return sorted(found, key=lambda p: (p / "slurm" / "submitted.json").stat().st_mtime,
                  reverse=True)
