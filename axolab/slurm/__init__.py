"""Sweeps as Slurm job arrays: site options, the sbatch script, submission and status."""

from .options import SlurmOptions, load_options
from .script import render_sbatch
from .submit import SlurmError, TaskState, submit, submitted_sweeps, sweep_status

__all__ = ["SlurmError", "SlurmOptions", "TaskState", "load_options", "render_sbatch", "submit",
           "submitted_sweeps", "sweep_status"]
