"""`axolab.launch.evaluate(...)`: memorization measured where the model lives, as an SPMD job.

The canaries are scored by a job on a grid of ranks (local ranks here, srun inside Slurm), the
same way training runs: rank logs in OUT/logs/eval/, the failing rank named, a progress bar
here. The grid may differ from the training grid (checkpoints reshard on load). This process
checks everything it can first (config, dataset, which checkpoints, grid against the model)
and never imports torch, so a notebook kernel or the CLI can evaluate a 405B run.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

from ..checkpoint.names import MANIFEST, complete_checkpoints, step_of
from ..config import EvalConfig, config_from_dict, write_json_atomic
from ..files import JsonlFollower
from ..grid_shape import GridShape
from .spmd import spmd

JOB_MODULE = "axolab.memorization.job"


@dataclass
class EvalJob:
    """One launched evaluation; `python -m axolab.memorization.job JOB.json` reads it."""

    target: str
    """What to evaluate: a run directory (its checkpoints/), one checkpoint directory
    (step-NNNNNNNN), or a Hugging Face model directory (config.json + safetensors)."""
    data: str
    """The dataset whose canaries are scored (`axolab data build` output)."""
    out_dir: str
    """Where memorization.jsonl, eval.json, continuations.jsonl, evals/step-N/ and
    checkpoint_curve.jsonl go."""
    checkpoints: list[str] = field(default_factory=list)
    """Checkpoint directories to evaluate, oldest first; empty: the target itself (a model
    directory), or the run's newest intact checkpoint when ``latest`` is set."""
    latest: bool = False
    """Evaluate the newest checkpoint of the run that passes hash verification (a damaged
    newer one is skipped with a warning)."""
    grid: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    """[data, z, y, x] of the evaluation job."""
    config: EvalConfig = field(default_factory=EvalConfig)
    """How the canaries are scored."""
    collective_timeout_s: float = 600.0
    """A collective that waits longer (a dead rank) fails the job instead of hanging it."""

    def validate(self) -> None:
        GridShape.of(self.grid)
        self.config.validate()


def _kind(target: Path) -> str:
    """"run", "checkpoint" or "model", or a ValueError naming what was found instead."""
    if not target.is_dir():
        raise ValueError(f"{target}: no such directory (expected a run directory, a checkpoint "
                         "or a model directory)")
    if (target / "checkpoints").is_dir():
        return "run"
    if step_of(target) is not None and (target / MANIFEST).is_file():
        return "checkpoint"
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return "model"
    raise ValueError(f"{target} is not a run directory (no checkpoints/), an axolab checkpoint "
                     f"(step-NNNNNNNN with {MANIFEST}) or a model directory (config.json and "
                     "*.safetensors)")


def _select(target: Path, kind: str, checkpoints) -> tuple[list[Path], bool]:
    """The checkpoint directories to evaluate and whether the job picks the newest intact."""
    if checkpoints not in ("latest", "all") and not (
            isinstance(checkpoints, (list, tuple)) and checkpoints
            and all(isinstance(s, int) and not isinstance(s, bool) for s in checkpoints)):
        raise ValueError(f"checkpoints={checkpoints!r}: expected 'latest', 'all' or a list of "
                         "step numbers")
    if kind != "run":
        if checkpoints != "latest" and [step_of(target)] != list(checkpoints):
            raise ValueError(f"{target} is a single {kind}: checkpoints={checkpoints!r} cannot "
                             "be chosen from it (give the run directory)")
        return ([target] if kind == "checkpoint" else []), False
    found = complete_checkpoints(target / "checkpoints")
    if not found:
        raise ValueError(f"{target} has no complete checkpoint under checkpoints/ to evaluate")
    if checkpoints == "latest":
        return [], True
    if checkpoints == "all":
        return found, False
    by_step = {step_of(p): p for p in found}
    missing = sorted(set(checkpoints) - set(by_step))
    if missing:
        raise ValueError(f"no checkpoint of step {missing} in {target / 'checkpoints'} (kept "
                         f"steps: {sorted(by_step)})")
    return [by_step[s] for s in sorted(set(checkpoints))], False


def _check_grid(model_dir: Path, grid: list[int]) -> None:
    """Refuse a grid the model's shapes cannot be split over, before any rank starts."""
    from ..perfmodel.grid import GridShape, grid_problems
    from ..perfmodel.shapes import model_shapes

    config = json.loads((model_dir / "config.json").read_text())
    problems = grid_problems(model_shapes(SimpleNamespace(**config)), GridShape(*grid), None)
    if problems:
        raise ValueError(f"grid {grid} cannot evaluate {model_dir}: {'; '.join(problems)}")


def _check_reference(reference: Path, data: Path, grid: list[int]) -> Path:
    """The reference model (EvalConfig.reference: a run, one checkpoint or a model directory)
    exists, fits the grid, and covers the dataset's tokenizer; returns its absolute path."""
    reference = reference.resolve()
    try:
        kind = _kind(reference)
    except ValueError as e:
        raise ValueError(f"reference: {e}") from None
    if kind == "run":
        found = complete_checkpoints(reference / "checkpoints")
        if not found:
            raise ValueError(f"reference {reference} has no complete checkpoint under "
                             "checkpoints/")
        model_dir = found[-1]
    else:
        model_dir = reference
    _check_grid(model_dir, grid)
    vocab = json.loads((model_dir / "config.json").read_text()).get("vocab_size", 0)
    from tokenizers import Tokenizer

    tokens = Tokenizer.from_file(str(data / "tokenizer" / "tokenizer.json")).get_vocab_size(
        with_added_tokens=True)
    if vocab < tokens:
        raise ValueError(f"reference {reference} has a vocabulary of {vocab} tokens but the "
                         f"dataset's tokenizer has {tokens}: not a model of this data")
    return reference


def _check_data(data: Path) -> None:
    for name in ("canaries.jsonl", "tokenizer", "recipe.yaml"):
        if not (data / name).exists():
            raise ValueError(f"{data} is not a dataset built by `axolab data build` (no {name})")


class _Progress:
    """A bar fed by the job's progress.jsonl (the lead rank appends a line per stage)."""

    def __init__(self, path: Path, enabled: bool):
        self.follower, self.enabled, self.bar = JsonlFollower(path, from_start=True), enabled, None

    def __call__(self) -> None:
        for record in self.follower.records():
            if not self.enabled:
                continue
            if self.bar is None:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=record["total"], desc="eval", unit="checkpoint")
            self.bar.update(record["done"] - self.bar.n)
            self.bar.set_postfix_str(record.get("stage", ""), refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def evaluate(target, data, config=None, *, grid=None, checkpoints="latest", out_dir=None,
             launcher: str = "auto", timeout_s: float | None = None, progress: bool = True,
             echo: bool = False, collective_timeout_s: float = 600.0) -> dict:
    """Score every canary of ``data`` with ``target`` on ``grid`` ranks; returns eval.json of
    the newest checkpoint evaluated.

    target: a run directory, one of its checkpoints, or a Hugging Face model directory.
    config: an EvalConfig, a dict of its fields, or None (defaults).
    grid: [data, z, y, x] of the evaluation job (default one rank); any grid the model's
    shapes divide by, not necessarily the training grid.
    checkpoints: "latest" (newest intact), "all" (every kept checkpoint: a curve over
    training) or a list of steps. Each checkpoint gets OUT/evals/step-N/ and a record in
    OUT/checkpoint_curve.jsonl; the newest also OUT/memorization.jsonl, eval.json and
    continuations.jsonl (docs/memorization-files.md).
    out_dir: default the run directory (required for a model directory).
    A failing rank raises LaunchError naming it; rank logs are in OUT/logs/eval/.
    """
    target, data = Path(target).resolve(), Path(data).resolve()
    cfg = config if isinstance(config, EvalConfig) else \
        config_from_dict(EvalConfig, config or {}, "eval config")
    cfg.validate()
    kind = _kind(target)
    _check_data(data)
    chosen, latest = _select(target, kind, checkpoints)
    if cfg.rows:
        from ..memorization.row_extraction import row_lengths

        row_lengths(json.loads((data / "stats.json").read_text())["seq_len"], cfg)
    if out_dir is None:
        if kind == "model":
            raise ValueError(f"{target} is a model directory: give out_dir for the results")
        out_dir = target if kind == "run" else target.parent.parent
    out = Path(out_dir).resolve()
    job = EvalJob(target=str(target), data=str(data), out_dir=str(out),
                  checkpoints=[str(p) for p in chosen], latest=latest,
                  grid=list(grid or [1, 1, 1, 1]), config=dataclasses.replace(cfg),
                  collective_timeout_s=collective_timeout_s)
    job.validate()
    if cfg.reference:
        job.config.reference = str(_check_reference(Path(cfg.reference), data, job.grid))
    _check_grid(chosen[-1] if chosen else (target if kind == "model" else
                                           complete_checkpoints(target / "checkpoints")[-1]),
                job.grid)
    log_dir = out / "logs" / "eval"
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "progress.jsonl").unlink(missing_ok=True)
    job_path = log_dir / "job.json"
    write_json_atomic(job_path, dataclasses.asdict(job))
    watch = _Progress(log_dir / "progress.jsonl", progress)
    try:
        spmd(JOB_MODULE, [str(job_path)], job.grid[0] * job.grid[1] * job.grid[2] * job.grid[3],
             log_dir, launcher=launcher, timeout_s=timeout_s, echo=echo, watch=watch)
    finally:
        watch.close()
    # The job wrote eval.json for the newest checkpoint it evaluated: at the top of OUT for
    # the run's latest (or a model), under evals/ for chosen steps.
    if job.checkpoints and not latest:
        return json.loads((out / "evals" / Path(job.checkpoints[-1]).name / "eval.json")
                          .read_text())
    return json.loads((out / "eval.json").read_text())
