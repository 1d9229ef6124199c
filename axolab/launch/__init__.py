"""Starting jobs: ranks on this machine or from srun, watched from a notebook cell or the CLI."""

from .environment import SlurmAllocation, slurm_allocation
from .evaluation import EvalJob, evaluate
from .spmd import JobPreempted, LaunchError, spmd
from .training import run

__all__ = ["EvalJob", "JobPreempted", "LaunchError", "SlurmAllocation", "evaluate", "run",
           "slurm_allocation", "spmd"]
