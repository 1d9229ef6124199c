"""`axolab sweep NOTEBOOK --grid key=v1,v2 ...`: one run per point of a parameter grid.

A sweep directory holds ``sweep.json`` (the notebook, the grid and every point's typed
parameters and run directory) and one run directory per point. Locally the points run one
after another; ``axolab slurm submit`` runs the same sweep.json as a job array.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import write_json_atomic
from .execute import PreparedRun, RunFailed, execute, prepare_run, run_name
from .params import ParameterError, check_parameters, expand_grid

# One path component and nothing else: no separator, no "..", no hidden directory, nothing a
# shell, a job script or a file-name pattern would read specially.
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass
class Sweep:
    notebook: Path
    sweep_dir: Path
    points: list[PreparedRun]

    def spec(self) -> dict:
        return {"notebook": str(self.notebook), "points": [
            {"index": i, "name": p.run_dir.name, "run_dir": str(p.run_dir),
             "parameters": p.parameters} for i, p in enumerate(self.points)]}


def sweep_directory(notebook: str | Path, results: str | Path = "results",
                    name: str | None = None) -> Path:
    """``results/<name>``, resolved; ``name`` must be a single plain path component (letters,
    digits, ``_ . -``, not starting with a dot), so a sweep never writes outside ``results``.
    The default is ``<notebook stem>-sweep`` with any other character replaced by ``_``."""
    if name is None:
        name = re.sub(r"[^A-Za-z0-9_.-]", "_", Path(notebook).stem).lstrip(".") + "-sweep"
    elif not isinstance(name, str) or not _PLAIN_NAME.fullmatch(name):
        raise ParameterError(f"sweep name {name!r} must be a single plain directory name: "
                             "letters, digits, '_', '.', '-', not starting with '.'")
    return (Path(results) / name).resolve()


def prepare_sweep(notebook: str | Path, grid: dict[str, list], fixed: dict[str, Any] | None = None,
                  results: str | Path = "results", name: str | None = None) -> Sweep:
    """Check every point (names, types, directories) before any runs; write sweep.json."""
    sweep_dir = sweep_directory(notebook, results, name)  # before anything is read or written
    notebook = Path(notebook).resolve()
    fixed = fixed or {}
    grid = {key: [check_parameters(notebook, {key: v})[key] for v in values]
            for key, values in grid.items()}
    points = expand_grid(grid, fixed)
    prepared = []
    for i, point in enumerate(points):
        varying = {k: point[k] for k in grid}
        label = run_name(Path("p"), varying)[2:] if varying else ""
        prepared.append(prepare_run(notebook, point, sweep_dir,
                                    f"{i:03d}-{label}" if label else f"{i:03d}"))
    sweep = Sweep(notebook, sweep_dir, prepared)
    spec_path = sweep_dir / "sweep.json"
    if spec_path.is_file():
        before = json.loads(spec_path.read_text())
        if before["points"] != sweep.spec()["points"] or before["notebook"] != str(notebook):
            raise ParameterError(f"{sweep_dir} holds another sweep (different notebook or "
                                 "points); give another --name or remove it")
    else:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(spec_path, {**sweep.spec(), "created": time.time()})
    return sweep


def load_sweep(sweep_dir: str | Path) -> Sweep:
    sweep_dir = Path(sweep_dir).resolve()
    spec_path = sweep_dir / "sweep.json"
    if not spec_path.is_file():
        raise FileNotFoundError(f"{sweep_dir} is not a sweep directory (no sweep.json)")
    spec = json.loads(spec_path.read_text())
    notebook = Path(spec["notebook"])
    points = [PreparedRun(notebook, Path(p["run_dir"]), p["parameters"]) for p in spec["points"]]
    return Sweep(notebook, sweep_dir, points)


def run_sweep(sweep: Sweep, *, progress: bool = True, log_output: bool = False) -> list[dict]:
    """Run every point here, one after another; a failed point does not stop the others.
    Returns each point's status."""
    statuses = []
    for i, point in enumerate(sweep.points):
        print(f"[{i + 1}/{len(sweep.points)}] {point.run_dir.name}", flush=True)
        try:
            statuses.append(execute(point, progress=progress, log_output=log_output))
        except RunFailed as e:
            print(str(e), flush=True)
            statuses.append(e.status)
    return statuses
