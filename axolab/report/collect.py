"""Find run directories and read what axolab wrote into them; never writes there.

A run directory holds ``config.json`` plus ``metrics.jsonl`` (a training run), and/or
``eval.json`` (an evaluation). It may also hold ``memorization.jsonl`` (one record per canary),
``parameters.json`` (the notebook parameters of a papermill run) and the memorization curve
files of docs/memorization-files.md: ``memorization_curve.jsonl`` (in-training probes) and
``checkpoint_curve.jsonl`` (evaluated checkpoints).
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import pandas as pd

from ..files import parse_jsonl
from ..memorization.curve import CHECKPOINT_CURVE, PROBE_CURVE
from ..memorization.eval_files import records_match_summary
from .errors import ReportError

RUN_LAYOUT = "a run directory has config.json and metrics.jsonl, or eval.json"
# Curve files and the source their records come from, in the order Run.curve holds them.
CURVE_FILES = {"probe": PROBE_CURVE, "checkpoint": CHECKPOINT_CURVE}
# What a run writes below its own directory: per-checkpoint evaluations (evals/step-N/ holds
# an eval.json), checkpoints (a config.json each) and logs. None of it is a run of its own.
RUN_SUBDIRS = ("evals", "checkpoints", "logs")


@dataclass(frozen=True)
class Run:
    """One run directory, read. ``name`` is its path relative to the directory it was found
    under; ``metrics`` and ``memorization`` are None when the file is absent. ``curve`` holds
    the records of both curve files as written (probe records first, then checkpoint ones,
    each in file order, a step evaluated twice not yet deduplicated), with their ``source``;
    None when neither file exists."""

    name: str
    path: Path
    config: dict
    metrics: pd.DataFrame | None
    eval: dict | None
    memorization: pd.DataFrame | None
    parameters: dict
    curve: pd.DataFrame | None = None


def is_run_dir(path: Path) -> bool:
    """Whether ``path`` holds the files of a training run or an evaluation."""
    training = (path / "config.json").is_file() and (path / "metrics.jsonl").is_file()
    return training or (path / "eval.json").is_file()


def find_runs(dirs: Iterable[str | Path]) -> list[Run]:
    """Every run under each of ``dirs`` (searched recursively), read, in name order.

    Raises ReportError for a directory that does not exist, when no directory holds a run, and
    for a file that cannot be read; the message names the path.
    """
    dirs = [Path(d) for d in dirs]
    if not dirs:
        raise ReportError("no result directories given")
    found: dict[Path, str] = {}  # resolved path -> name; one directory given twice reads once
    for root in dirs:
        if not root.exists():
            raise ReportError(f"{root}: no such directory")
        if not root.is_dir():
            raise ReportError(f"{root}: not a directory")
        for path in _run_dirs(root):
            rel = path.relative_to(root).as_posix()
            found.setdefault(path.resolve(), root.resolve().name if rel == "." else rel)
    if not found:
        where = ", ".join(str(d.resolve()) for d in dirs)
        raise ReportError(f"results: no runs found under {where} ({RUN_LAYOUT})")
    by_name: dict[str, Path] = {}
    for path, name in found.items():
        if name in by_name:
            # Names key every table; two runs under one name would be merged silently.
            raise ReportError(f"two runs are both named {name!r}: {by_name[name]} and {path}; "
                              "give their common parent directory instead")
        by_name[name] = path
    return [read_run(by_name[name], name) for name in sorted(by_name)]


def _run_dirs(root: Path) -> list[Path]:
    """Run directories at or below ``root``. Hidden directories (a report's temporary
    directory, editor state) are not searched, nor a run's own RUN_SUBDIRS: an
    ``evals/step-N/eval.json`` would otherwise be reported as a run. Elsewhere a directory
    called ``evals`` may well hold runs, so only those of a run directory are pruned."""
    out = []
    for current, subdirs, _ in os.walk(root):
        run = is_run_dir(Path(current))
        subdirs[:] = sorted(d for d in subdirs
                            if not d.startswith(".") and not (run and d in RUN_SUBDIRS))
        if run:
            out.append(Path(current))
    return out


def read_run(path: str | Path, name: str | None = None) -> Run:
    """Read one run directory; missing optional files become None (or an empty dict)."""
    path = Path(path)
    if not is_run_dir(path):
        raise ReportError(f"{path}: not a run directory ({RUN_LAYOUT})")
    config = _read_json(path / "config.json") if (path / "config.json").is_file() else {}
    metrics = None
    if (path / "metrics.jsonl").is_file():
        metrics = pd.DataFrame(_read_jsonl(path / "metrics.jsonl"))
        if len(metrics) and "step" not in metrics:
            raise ReportError(f"{path / 'metrics.jsonl'}: records have no 'step'")
        if len(metrics):
            # A resumed run rewrites the lines past its checkpoint; should a step still appear
            # twice, its latest line is the one that describes the run.
            metrics = (metrics.drop_duplicates("step", keep="last").sort_values("step")
                       .reset_index(drop=True))
    evaluation = _read_json(path / "eval.json") if (path / "eval.json").is_file() else None
    memorization = _read_memorization(path, evaluation)
    parameters = {}
    if (path / "parameters.json").is_file():
        parameters = _read_json(path / "parameters.json")
    return Run(name=name or path.name, path=path, config=config, metrics=metrics,
               eval=evaluation, memorization=memorization, parameters=parameters,
               curve=_read_curve(path))


def _read_memorization(path: Path, evaluation: dict | None) -> pd.DataFrame | None:
    """memorization.jsonl, unless eval.json names other records (``memorization_sha256``):
    an evaluation stopped between writing the two leaves the new records beside the previous
    summary, and the per-canary plots must not mix them."""
    file = path / "memorization.jsonl"
    if not file.is_file():
        return None
    if not records_match_summary(path, evaluation or {}):
        warnings.warn(f"{file} is not the one {path / 'eval.json'} summarises (an evaluation "
                      "stopped between the two?): left out; evaluate the run again")
        return None
    return pd.DataFrame(_read_jsonl(file))


def _read_curve(path: Path) -> pd.DataFrame | None:
    """Both curve files' records, raw; a record without ``source`` gets its file's."""
    records, any_file = [], False
    for source, name in CURVE_FILES.items():
        if not (path / name).is_file():
            continue
        any_file = True
        for number, record in enumerate(_read_jsonl(path / name), 1):
            if "step" not in record:
                # The step places a record on the curve; without it the record means nothing.
                raise ReportError(f"{path / name}, record {number}: has no 'step'")
            records.append({**record, "source": record.get("source", source)})
    if not any_file:
        return None
    # An empty file (a probe that has not run yet) is a curve with no points, not no curve.
    return pd.DataFrame(records, columns=None if records else ["step", "source"])


def _read_json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from e
    except json.JSONDecodeError as e:
        raise ReportError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(value, dict):
        raise ReportError(f"{path}: expected a JSON object, found {type(value).__name__}")
    return value


def _read_jsonl(path: Path) -> list[dict]:
    """Complete records; a run still training may show half of its last line, which is not
    corrupt, just not finished yet (files.parse_jsonl leaves it out)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{path}: cannot read ({e})") from e
    try:
        records = parse_jsonl(text, str(path))
    except ValueError as e:
        raise ReportError(str(e)) from e
    for number, record in enumerate(records, 1):
        if not isinstance(record, dict):
            raise ReportError(f"{path}, record {number}: expected a JSON object, "
                              f"found {type(record).__name__}")
    return records
