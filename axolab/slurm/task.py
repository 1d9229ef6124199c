"""One array task of a submitted sweep: `python -m axolab.slurm.task SWEEP_DIR [INDEX]`.

INDEX defaults to $SLURM_ARRAY_TASK_ID. The point's typed parameters come from sweep.json;
a requeued task runs the same point into the same run directory, so training resumes. Exit
status 75 means the run stopped early on request with its state saved (requeue it).
"""

from __future__ import annotations

import os
import sys

from ..launch.preemption import PREEMPTED_EXIT
from ..runs import RunFailed, execute, load_sweep


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) not in (1, 2):
        print("usage: python -m axolab.slurm.task SWEEP_DIR [INDEX]", file=sys.stderr)
        return 2
    sweep = load_sweep(argv[0])
    index = int(argv[1] if len(argv) == 2 else os.environ.get("SLURM_ARRAY_TASK_ID", "0"))
    if not 0 <= index < len(sweep.points):
        print(f"axolab: task index {index} but the sweep has {len(sweep.points)} points",
              file=sys.stderr)
        return 2
    point = sweep.points[index]
    print(f"axolab: point {index}: {point.run_dir}", flush=True)
    try:
        execute(point, progress=False, log_output=True)
    except RunFailed as e:
        print(str(e), file=sys.stderr, flush=True)
        # Stopped on request with its state saved: the batch script requeues the task.
        return PREEMPTED_EXIT if e.status.get("state") == "preempted" else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
