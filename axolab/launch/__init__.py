"""Starting jobs: ranks from torchrun or srun, watched from a notebook cell or the CLI."""

from .environment import SlurmAllocation, slurm_allocation
from .spmd import JobPreempted, LaunchError, spmd
from .training import run

__all__ = ["JobPreempted", "LaunchError", "SlurmAllocation", "run", "slurm_allocation", "spmd"]
