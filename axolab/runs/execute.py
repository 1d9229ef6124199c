"""`axolab run NOTEBOOK -p key value`: one papermill execution into its own run directory.

RUN_DIR holds the executed notebook, ``parameters.json`` (the typed values) and
``status.json`` (running / completed / failed, with the failing cell and error). A notebook
that declares a ``run_dir`` parameter is handed RUN_DIR, so what it trains and measures lands
beside the notebook, and running it again (a requeued Slurm task) resumes there.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import write_json_atomic
from .params import ParameterError, check_parameters, declared_parameters


PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.=,+-]*")
"""A run or sweep directory name: one path component, no dot first, nothing a shell, a
#SBATCH line or a Slurm file-name pattern would read specially."""


class RunFailed(RuntimeError):
    """A cell of the notebook raised; the executed notebook and status.json say which."""

    def __init__(self, message: str, run_dir: Path, status: dict):
        super().__init__(message)
        self.run_dir, self.status = run_dir, status


@dataclass
class PreparedRun:
    """A checked run, ready to execute: where it goes and with which typed parameters."""

    notebook: Path
    run_dir: Path
    parameters: dict[str, Any]


def run_name(notebook: Path, parameters: dict[str, Any]) -> str:
    """``<notebook stem>[-key=value...]``, safe as a directory name; a short hash is added when
    the values had to be shortened or cleaned, so different values never share a name."""
    stem = re.sub(r"[^A-Za-z0-9_.-]", "_", notebook.stem).lstrip(".") or "run"
    if not parameters:
        return stem
    text = ",".join(f"{k}={v}" for k, v in parameters.items())
    slug = re.sub(r"[^A-Za-z0-9._=,+-]", "_", text)[:80]
    if slug != text:
        digest = hashlib.sha1(json.dumps(parameters, sort_keys=True).encode()).hexdigest()[:8]
        slug = f"{slug}-{digest}"
    return f"{stem}-{slug}"


def prepare_run(notebook: str | Path, parameters: dict[str, Any] | None = None,
                results: str | Path = "results", name: str | None = None) -> PreparedRun:
    """Check everything before anything runs: the notebook, its parameters cell, each name and
    type, and that RUN_DIR is new or holds a run of the same notebook and parameters."""
    notebook = Path(notebook).resolve()
    typed = check_parameters(notebook, parameters or {})
    name = name or run_name(notebook, typed)
    if not isinstance(name, str) or not PLAIN_NAME.fullmatch(name):
        raise ParameterError(f"run name {name!r} must be a single plain directory name: "
                             "letters, digits, '_', '.', '=', ',', '+', '-', not starting with '.'")
    run_dir = (Path(results) / name).resolve()
    if "run_dir" in declared_parameters(notebook) and "run_dir" not in typed:
        typed["run_dir"] = str(run_dir)
    previous = run_dir / "parameters.json"
    if previous.is_file():
        before = json.loads(previous.read_text())
        if before != typed:
            diff = {k: (before.get(k), typed.get(k)) for k in set(before) | set(typed)
                    if before.get(k) != typed.get(k)}
            raise ParameterError(
                f"{run_dir} already holds a run with other parameters "
                f"({', '.join(f'{k}: {a!r} there, {b!r} now' for k, (a, b) in sorted(diff.items()))}); "
                "give another --name or remove it")
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ParameterError(f"{run_dir} exists and is not an axolab run directory (no "
                             "parameters.json); give another --name")
    return PreparedRun(notebook, run_dir, typed)


def _status(run: PreparedRun, **fields) -> dict:
    path = run.run_dir / "status.json"
    status = json.loads(path.read_text()) if path.is_file() else {}
    status.update(fields)
    write_json_atomic(path, status)
    return status


def execute(run: PreparedRun, *, progress: bool = True, log_output: bool = False,
            kernel_name: str | None = None) -> dict:
    """Execute a prepared run with papermill; returns status.json's contents, or raises
    RunFailed (status "failed", the executed notebook kept with the error in place)."""
    from papermill.exceptions import PapermillExecutionError

    run.run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run.run_dir / "parameters.json", run.parameters)
    previous = json.loads((run.run_dir / "status.json").read_text()) \
        if (run.run_dir / "status.json").is_file() else {}
    output = run.run_dir / run.notebook.name
    _status(run, state="running", notebook=str(run.notebook), output=str(output),
            started=time.time(), ended=None, host=socket.gethostname(), error=None,
            attempts=previous.get("attempts", 0) + 1,
            slurm_job_id=os.environ.get("SLURM_JOB_ID"))
    try:
        _execute_notebook(run, output, progress_bar=progress, log_output=log_output,
                          kernel_name=kernel_name)
    except PapermillExecutionError as e:
        error = {"cell": e.cell_index, "execution_count": e.exec_count, "source": e.source,
                 "ename": e.ename, "evalue": e.evalue}
        # A job stopped on request saved its state: not a failure, a pause (the next run of
        # the same notebook and parameters resumes).
        state = "preempted" if e.ename == "JobPreempted" else "failed"
        status = _status(run, state=state, ended=time.time(), error=error)
        raise RunFailed(f"{run.notebook.name} failed in cell {e.cell_index} "
                        f"(execution count {e.exec_count}):\n{e.source}\n\n{e.ename}: {e.evalue}\n"
                        f"(executed notebook: {output})", run.run_dir, status) from None
    except BaseException as e:  # the kernel died, an interrupt: still say what happened
        _status(run, state="failed", ended=time.time(),
                error={"cell": None, "ename": type(e).__name__, "evalue": str(e)})
        raise
    return _status(run, state="completed", ended=time.time())


KERNEL_START_TRIES = 3


def _execute_notebook(run: PreparedRun, output: Path, **kwargs) -> None:
    """papermill, with the kernel's start-up tried again if the kernel dies before it answers:
    a kernel picks its TCP ports free and binds them moments later, so kernels started
    together on one node (the tasks of a job array) can take each other's ports. No cell has
    run when that happens, so starting again is safe."""
    import papermill

    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            papermill.execute_notebook(str(run.notebook), str(output),
                                       parameters=run.parameters, cwd=os.getcwd(), **kwargs)
            return
        except RuntimeError as e:
            if "Kernel died before replying to kernel_info" not in str(e) \
                    or attempt == KERNEL_START_TRIES:
                raise
            print(f"axolab: the notebook kernel died while starting ({e}); starting it again "
                  f"(try {attempt + 1} of {KERNEL_START_TRIES})", flush=True)
            time.sleep(random.uniform(0.5, 2.0))


def run_notebook(notebook: str | Path, parameters: dict[str, Any] | None = None,
                 results: str | Path = "results", name: str | None = None, *,
                 progress: bool = True, log_output: bool = False) -> dict:
    """Check, then execute ``notebook`` with ``parameters`` into ``results/<name>``."""
    run = prepare_run(notebook, parameters, results, name)
    return execute(run, progress=progress, log_output=log_output)
