"""Where this process runs: the Slurm facts that both the launcher and a grid's rendezvous
need. Torch-free and free of axolab imports, so any layer may read it."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping


def in_slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """True inside an srun task. The batch script of a job also has SLURM_PROCID=0 and
    SLURM_NTASKS, but is not a rank of anything: only job steps carry SLURM_STEP_ID."""
    step = env.get("SLURM_STEP_ID")
    return step is not None and step not in ("batch", "extern", "interactive")


def first_slurm_host(env: Mapping[str, str] = os.environ) -> str | None:
    """The first host of the job's node list (where rank 0 and the rendezvous live)."""
    nodelist = env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if not nodelist:
        return None
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True,
                             text=True, check=True, timeout=30).stdout.split()
        return out[0] if out else None
    except (OSError, subprocess.SubprocessError):
        # A plain single-node list needs no expansion.
        return nodelist if "[" not in nodelist and "," not in nodelist else None
