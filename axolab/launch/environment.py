"""What the environment says about where ranks run: torchrun's and Slurm's variables.

Torch-free on purpose: the notebook kernel reads it before launching, and must never
initialize torch.distributed or CUDA itself.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass


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


@dataclass(frozen=True)
class SlurmAllocation:
    """The part of a Slurm job that srun can start ranks on."""

    job_id: str
    nodes: int
    tasks: int
    """Tasks the job was given (nodes x tasks per node): the most ranks one srun can start."""


def slurm_allocation(env: Mapping[str, str] = os.environ) -> SlurmAllocation | None:
    """The allocation this process runs in (a batch script, a salloc shell, a notebook kernel
    started inside a job), or None outside Slurm or where srun is missing."""
    job = env.get("SLURM_JOB_ID")
    if not job or in_slurm_step(env) or shutil.which("srun") is None:
        return None
    nodes = int(env.get("SLURM_JOB_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    tasks = int(env.get("SLURM_NTASKS") or nodes)
    return SlurmAllocation(job_id=job, nodes=nodes, tasks=tasks)


def rank_of_this_process(env: Mapping[str, str] = os.environ) -> int:
    """The global rank under torchrun or srun (0 for a lone process)."""
    if "RANK" in env:
        return int(env["RANK"])
    if in_slurm_step(env) and "SLURM_PROCID" in env:
        return int(env["SLURM_PROCID"])
    return 0
