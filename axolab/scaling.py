"""Scaling sweeps: short training runs over model sizes x rank counts x grids, measured against
the performance model's prediction for the same grid.

``scaling_sweep`` trains every (model, grid) point for a few steps through
:func:`axolab.launch.run` (one job per point, so each gets fresh processes, as a real job
would), reads tokens/s, model FLOP/s and MFU from its metrics.jsonl, and puts next to them what
:func:`axolab.perfmodel.predict` says for that grid on the given machine. Each point is an
ordinary run directory, so ``axolab report`` plots them too; the table is also written to
``OUT/scaling.csv``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import TrainConfig, config_from_dict
from .metrics import read_metrics, throughput_summary

# Steps timed before this fraction of the run (at least the first) include start-up costs:
# allocator growth, first-call kernels, gloo connection set-up.


@dataclass(frozen=True)
class ScalingPoint:
    """One training run of the sweep."""

    model: str
    """Model preset (axolab.presets)."""
    grid: tuple[int, int, int, int]
    """(data, z, y, x)."""

    @property
    def ranks(self) -> int:
        return math.prod(self.grid)

    @property
    def name(self) -> str:
        return f"{self.model}-{'x'.join(map(str, self.grid))}"


def sweep_points(models: list[str], rank_counts: list[int], global_batch: int,
                 grids: list[list[int]] | None = None) -> list[ScalingPoint]:
    """Every valid grid of each rank count for each model (the planner's validity rules:
    divisibility of heads, hidden sizes and the batch), or only ``grids`` when given."""
    from .perfmodel.grid import GridShape, enumerate_grids, grid_problems
    from .perfmodel.shapes import model_shapes

    if not models or not (rank_counts or grids):
        raise ValueError("a scaling sweep needs at least one model and one rank count or grid")
    points = []
    for model in models:
        shapes = model_shapes(model)
        if grids:
            for g in grids:
                if len(g) != 4 or any(not isinstance(v, int) or v < 1 for v in g):
                    raise ValueError(f"grid {g}: expected [data, z, y, x] of positive integers")
                problems = grid_problems(shapes, GridShape(*g), global_batch)
                if problems:
                    raise ValueError(f"grid {g} cannot run {model} with global batch "
                                     f"{global_batch}: {'; '.join(problems)}")
                points.append(ScalingPoint(model, tuple(g)))
            continue
        for n in rank_counts:
            found = enumerate_grids(n, shapes, global_batch)
            if not found:
                raise ValueError(f"no grid of {n} ranks can run {model} with global batch "
                                 f"{global_batch}")
            points += [ScalingPoint(model, (g.data, g.z, g.y, g.x)) for g in found]
    return points


def measured_throughput(run_dir: Path) -> dict:
    """Medians over the steps after warm-up of one run's metrics.jsonl."""
    med = throughput_summary(read_metrics(run_dir))
    if not med["timed_steps"]:
        raise ValueError(f"{run_dir}: metrics.jsonl has no timed steps")
    return {"measured_step_s": med["step_time_s"], "measured_tokens_per_s": med["tokens_per_s"],
            "measured_flops_per_s": med["model_flops_per_s"], "measured_mfu": med["mfu"],
            "timed_steps": med["timed_steps"]}


def predicted_throughput(point: ScalingPoint, machine, global_batch: int, seq_len: int,
                         precision: str) -> dict:
    """The performance model's step time, tokens/s, MFU and memory for one point."""
    from .perfmodel.grid import GridShape
    from .perfmodel.predict import predict
    from .perfmodel.shapes import model_shapes
    from .perfmodel.workload import Workload

    work = Workload(global_batch, seq_len, None, precision, activation_checkpointing=False)
    p = predict(model_shapes(point.model), GridShape(*point.grid), work, machine)
    return {"predicted_step_s": p.step_time_s, "predicted_tokens_per_s": p.tokens_per_s,
            "predicted_mfu": p.mfu, "predicted_compute_s": p.compute.total,
            "predicted_comm_s": p.exposed_comm_s, "predicted_memory_gib": p.memory.total / 2**30}


def sweep_machine(machine: str, ranks: int, out: Path):
    """The machine the predictions use for ``ranks`` processes: "calibrate" measures this
    machine with that many gloo ranks (once, cached in OUT/machine-<ranks>.json), "quick"
    measures compute in this process and guesses the collectives; anything else is a planner
    preset or a machine file."""
    from .perfmodel.calibrate import CalibrationConfig, calibrate, quick_machine
    from .perfmodel.machines import load_machine, save_machine
    from .perfmodel.search import resolve_machine

    if machine == "quick":
        return quick_machine(ranks)
    if machine == "calibrate":
        path = out / f"machine-{ranks}.json"
        if not path.is_file():
            save_machine(calibrate(CalibrationConfig(ranks=ranks)), path)
        return load_machine(path)
    return resolve_machine(machine)


def scaling_sweep(out: str | Path, data: str | Path, models: list[str],
                  rank_counts: list[int] | None = None, grids: list[list[int]] | None = None,
                  steps: int = 8, global_batch: int = 8, lr: float = 1e-3,
                  precision: str = "fp32", machine: str = "calibrate",
                  progress: bool = True) -> pd.DataFrame:
    """Train every point for ``steps`` steps and tabulate measured against predicted throughput.

    ``models``: presets; ``rank_counts``: every valid grid of each count is run (or list the
    ``grids`` to run). Points already trained in ``out`` are kept, so an interrupted sweep
    continues. Returns one row per point (also written to OUT/scaling.csv).
    """
    from tqdm.auto import tqdm

    from .data.loader import PackedDataset
    from .launch import run as launch

    out = Path(out)
    if steps < 2:
        raise ValueError(f"steps must be at least 2 (the first step is warm-up), got {steps}")
    seq_len = PackedDataset(data, "train").seq_len  # also checks that the dataset exists
    points = sweep_points(models, rank_counts or [], global_batch, grids)
    out.mkdir(parents=True, exist_ok=True)
    machines: dict[int, object] = {}
    rows = []
    for point in tqdm(points, desc="scaling sweep", unit="run", disable=not progress):
        run_dir = out / point.name
        if not _finished(run_dir, steps):
            cfg = config_from_dict(TrainConfig, dict(
                model=point.model, data=str(data), run_dir=str(run_dir), grid=list(point.grid),
                steps=steps, global_batch=global_batch, lr=lr, warmup_steps=1,
                precision=precision, eval_interval=0, checkpoint_interval=0,
                keep_checkpoints=1, resume=False, log_interval=1))
            launch(cfg, progress=False, echo=False)
        if point.ranks not in machines:
            machines[point.ranks] = sweep_machine(machine, point.ranks, out)
        rows.append({"model": point.model, "grid": "x".join(map(str, point.grid)),
                     "ranks": point.ranks, "run": point.name,
                     **measured_throughput(run_dir),
                     **predicted_throughput(point, machines[point.ranks], global_batch,
                                            seq_len, precision)})
    table = pd.DataFrame(rows)
    tmp = out / ".scaling.csv.tmp"
    table.to_csv(tmp, index=False)
    tmp.replace(out / "scaling.csv")
    return table


def _finished(run_dir: Path, steps: int) -> bool:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return False
    lines = path.read_text().splitlines()
    return bool(lines) and json.loads(lines[-1]).get("step") == steps


def rank_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Per model and rank count: Spearman correlation of predicted and measured step times
    over the grids (average ranks for ties; NaN with fewer than three grids, where a rank
    correlation says nothing), and how much slower than the measured best the predicted-best
    grid ran (of grids predicted equally fast, the first in the table)."""
    from scipy.stats import spearmanr

    rows = []
    for (model, ranks), group in table.groupby(["model", "ranks"]):
        best_measured = group["measured_step_s"].min()
        chosen = group.loc[group["predicted_step_s"].idxmin()]
        rho = spearmanr(group["predicted_step_s"], group["measured_step_s"]).statistic \
            if len(group) > 2 else float("nan")
        rows.append({"model": model, "ranks": ranks, "grids": len(group), "spearman": rho,
                     "predicted_best": chosen["grid"],
                     "measured_best": group.loc[group["measured_step_s"].idxmin(), "grid"],
                     "predicted_best_gap": chosen["measured_step_s"] / best_measured - 1})
    return pd.DataFrame(rows)
