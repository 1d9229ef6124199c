"""The sbatch script of a sweep: one array task per point, papermill inside, requeue on signal.

Parameter values never appear in the script: each task reads its point's typed values from
sweep.json (``python -m axolab.slurm.task SWEEP_DIR``). Everything that does appear in it
(paths, the interpreter) is shell-quoted, and the one path in an #SBATCH line is quoted the way
sbatch reads those lines. Paths with a line break or another control character are refused: a
line break would end the line it is on and start a command.
"""

from __future__ import annotations

import re
import shlex
import sys
from pathlib import Path

from .options import SlurmOptions

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_script_paths(sweep_dir: Path, workdir: Path) -> None:
    """Refuse paths the job script cannot hold (called before anything is written)."""
    for what, path in (("results directory", sweep_dir), ("working directory", workdir)):
        if _CONTROL.search(str(path)):
            raise ValueError(f"{what} {str(path)!r} contains a line break or other control "
                             "character, which would end its line in the job script; choose "
                             "another --results or --name")
    if "\\" in str(sweep_dir):
        # In an --output file name a backslash means "expand no %-symbols" (sbatch(1), "filename
        # pattern"), so the task logs would lose their %A_%a names.
        raise ValueError(f"results directory {str(sweep_dir)!r} contains a backslash, which "
                         "Slurm's --output file-name patterns cannot hold; choose another "
                         "--results or --name")


def sbatch_quote(value: str) -> str:
    """``value`` as one argument of an #SBATCH line. sbatch, not bash, reads those lines
    (Slurm's src/sbatch/opt.c, _get_argument): blanks split arguments unless inside double
    quotes, a backslash takes the next character literally, and an unquoted # starts a comment.
    """
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def output_pattern(sweep_dir: Path) -> str:
    """The task logs' --output file-name pattern: slurm/%A_%a.out in the sweep directory
    (%A: the array job, %a: the task). A % in the directory itself is doubled, which Slurm's
    file-name patterns read as one literal %."""
    return str(sweep_dir).replace("%", "%%") + "/slurm/%A_%a.out"


def job_name(sweep_dir: Path) -> str:
    return "axolab-" + re.sub(r"[^A-Za-z0-9_.-]", "_", sweep_dir.name)[:60]


def render_sbatch(sweep_dir: Path, points: int, opts: SlurmOptions, workdir: Path) -> str:
    """The whole script, for ``points`` array tasks."""
    check_script_paths(sweep_dir, workdir)
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
    lines += [f"#SBATCH --output={sbatch_quote(output_pattern(sweep_dir))}",
              "#SBATCH --open-mode=append",
              "#SBATCH --requeue"]
    if opts.requeue_grace_s:
        # B: only the batch shell gets it; it forwards the warning to the ranks.
        lines.append(f"#SBATCH --signal=B:USR1@{opts.requeue_grace_s}")
    lines += [f"#SBATCH {line}" for line in opts.sbatch_lines]
    python = shlex.quote(opts.python or sys.executable)
    # Seconds between the warning and a requeue that no longer waits for the task to end.
    fallback_s = max(10, opts.requeue_grace_s - 30)
    lines += ["",
              "set -u",
              f"cd {shlex.quote(str(workdir))}",
              *opts.setup,
              "",
              # The time-limit warning: tell the ranks (every job step; `scancel` leaves this
              # batch shell out) to checkpoint at their next step boundary and stop, wait for
              # the task to end, then requeue. The run resumes where the ranks stopped.
              "stopping=0",
              "deadline=0",
              "stop_and_requeue() {",
              '    [ "$stopping" = 1 ] && return',
              "    stopping=1",
              f"    deadline=$(( SECONDS + {fallback_s} ))",
              '    echo "axolab: time limit near: the ranks checkpoint and stop; requeueing job '
              '$SLURM_JOB_ID, which resumes from that checkpoint"',
              '    scancel --signal=USR1 "$SLURM_JOB_ID"',
              "}",
              "trap stop_and_requeue USR1",
              "",
              'echo "axolab: array task ${SLURM_ARRAY_TASK_ID:-0} of job $SLURM_JOB_ID on '
              '$(hostname), attempt $(( ${SLURM_RESTART_COUNT:-0} + 1 ))"',
              f"{python} -m axolab.slurm.task {shlex.quote(str(sweep_dir))} &",
              "task=$!",
              # Poll instead of blocking in `wait`: the warning is acted on within a second, and
              # a task that does not end after it cannot hold the requeue back (no helper
              # process is left behind either: Slurm waits for every process of a job to end
              # before it can requeue it).
              'while kill -0 "$task" 2>/dev/null; do',
              '    if [ "$stopping" = 1 ] && [ "$SECONDS" -ge "$deadline" ]; then',
              '        echo "axolab: the task did not end after the warning; requeueing"',
              '        scontrol requeue "$SLURM_JOB_ID"',
              "        exit 75",
              "    fi",
              "    sleep 1",
              "done",
              'wait "$task"',
              "status=$?",
              # 75: the run stopped early on request with its state saved. A run that finished
              # in spite of the warning is done; one that failed after it is tried again.
              'if [ "$status" = 75 ] || { [ "$stopping" = 1 ] && [ "$status" != 0 ]; }; then',
              '    scontrol requeue "$SLURM_JOB_ID"',
              "fi",
              'exit "$status"',
              ""]
    return "\n".join(lines)
