"""Notebook runs with papermill: one run, a sweep of runs, their run directories."""

from .execute import PreparedRun, RunFailed, execute, prepare_run, run_notebook
from .params import ParameterError, check_parameters, declared_parameters
from .sweep import Sweep, load_sweep, prepare_sweep, run_sweep

__all__ = ["ParameterError", "PreparedRun", "RunFailed", "Sweep", "check_parameters",
           "declared_parameters", "execute", "load_sweep", "prepare_run", "prepare_sweep",
           "run_notebook", "run_sweep"]
