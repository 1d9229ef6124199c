"""The sbatch script of a sweep: one array task per point, papermill inside, requeue on signal.

Parameter values never appear in the script: each task reads its point's typed values from
sweep.json (``python -m axolab.slurm.task SWEEP_DIR``). Everything that does appear in it
(paths, the interpreter) is shell-quoted.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from .options import SlurmOptions


def job_name(sweep_dir: Path) -> str:
    return "axolab-" + re.sub(r"[^A-Za-z0-9_.-]", "_", sweep_dir.name)[:60]


def render_sbatch(sweep_dir: Path, points: int, opts: SlurmOptions, workdir: Path) -> str:
    """The whole script, for ``points`` array tasks."""
    array = f"0-{points - 1}" + (f"%{opts.max_concurrent}" if opts.max_concurrent else "")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name={job_name(sweep_dir)}",
             f"#SBATCH --array={array}",
             f"#SBATCH --nodes={opts.nodes}",
             f"#SBATCH --ntasks-per-node={opts.ntasks_per_node}",
             f"#SBATCH --cpus-per-task={opts.cpus_per_task}",
             f"#SBATCH --time={opts.time}"]
    if opts.gpus_per_node:
        lines.append(f"#SBATCH --gpus-per-node={opts.gpus_per_node}")
    for name in ("mem", "partition", "account", "qos"):
        if getattr(opts, name):
            lines.append(f"#SBATCH --{name}={getattr(opts, name)}")
    # %A_%a: array job and task; appended to, so a requeued task keeps its first attempt's log.
    lines += [f"#SBATCH --output={sweep_dir / 'slurm' / '%A_%a.out'}",
              "#SBATCH --open-mode=append",
              "#SBATCH --requeue"]
    if opts.requeue_grace_s:
        # B: only the batch shell gets it; the ranks are stopped by the requeue itself.
        lines.append(f"#SBATCH --signal=B:USR1@{opts.requeue_grace_s}")
    lines += [f"#SBATCH {line}" for line in opts.sbatch_lines]
    python = shlex.quote(opts.python or sys.executable)
    lines += ["",
              "set -u",
              f"cd {shlex.quote(str(workdir))}",
              *opts.setup,
              "",
              "requeue() {",
              '    echo "axolab: time limit near: requeueing job $SLURM_JOB_ID; it resumes from '
              'its newest checkpoint"',
              '    scontrol requeue "$SLURM_JOB_ID"',
              "}",
              "trap requeue USR1",
              "",
              'echo "axolab: array task ${SLURM_ARRAY_TASK_ID:-0} of job $SLURM_JOB_ID on '
              '$(hostname), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"',
              # In the background so that the trap runs as soon as the signal arrives.
              f"{python} -m axolab.slurm.task {shlex.quote(str(sweep_dir))} &",
              "task=$!",
              'wait "$task"',
              "status=$?",
              'while kill -0 "$task" 2>/dev/null; do wait "$task"; status=$?; done',
              'exit "$status"',
              ""]
    return "\n".join(lines)
