"""What the environment says about where ranks run: torchrun's and Slurm's variables.

Torch-free on purpose: the notebook kernel reads it before launching, and must never
initialize torch.distributed or CUDA itself.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass

from ..cluster import in_slurm_step


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
