"""Configuration search: every valid grid for a model on N GPUs, predicted and ranked."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..optimizations import Optimizations
from .grid import GridShape, enumerate_grids, factorizations, grid_problems
from .machines import Machine, get_machine, load_machine
from .memory import memory_per_rank
from .predict import Prediction, predict
from .shapes import ModelShapes, model_shapes
from .workload import Precision, Workload


def resolve_machine(machine: Machine | str | Path) -> Machine:
    """A Machine, a preset name, or the path of a calibrated machine file."""
    if isinstance(machine, Machine):
        return machine
    text = str(machine)
    if text.endswith(".json") or Path(text).is_file():
        return load_machine(text)
    return get_machine(text)


def _divisors_descending(n: int) -> list[int]:
    return [d for d in range(n, 0, -1) if n % d == 0]


def _workload(work: Workload, micro: int | None) -> Workload:
    return dataclasses.replace(work, micro_batch=micro)


def best_micro_batch(shapes: ModelShapes, grid: GridShape, work: Workload, machine: Machine,
                     memory_fraction: float) -> int:
    """The largest micro-batch dividing the rank's batch shard that fits (fewest micro-steps,
    hence fewest weight gathers); 1 if none fits."""
    available = machine.memory_gib * 2**30 * memory_fraction
    local = work.local_batch(grid.batch_shards)
    for micro in _divisors_descending(local):
        if memory_per_rank(shapes, grid, _workload(work, micro), machine).total <= available:
            return micro
    return 1


def rank_grids(shapes: ModelShapes, gpus: int, machine: Machine, work: Workload,
               memory_fraction: float = 0.9) -> list[Prediction]:
    """Predictions for every valid grid, fitting ones first, each group by step time."""
    grids = enumerate_grids(gpus, shapes, work.global_batch)
    if not grids:
        reasons = sorted({p for dims in factorizations(gpus)
                          for p in grid_problems(shapes, GridShape(*dims), work.global_batch)})
        raise ValueError(f"no (data, z, y, x) grid of {gpus} GPUs can run {shapes.name} with a "
                         f"global batch of {work.global_batch}: " + "; ".join(reasons[:6]))
    rows = []
    for grid in grids:
        local = work.local_batch(grid.batch_shards)
        if work.micro_batch is not None:
            if local % work.micro_batch:
                continue  # this grid cannot use the requested micro-batch
            micro = work.micro_batch
        else:
            micro = best_micro_batch(shapes, grid, work, machine, memory_fraction)
        rows.append(predict(shapes, grid, _workload(work, micro), machine, memory_fraction))
    if not rows:
        raise ValueError(f"micro_batch {work.micro_batch} divides the batch shard of no grid of "
                         f"{gpus} GPUs (global batch {work.global_batch})")
    rows.sort(key=lambda p: (not p.fits, p.step_time_s if p.fits else p.memory.total))
    return rows


def search(model, gpus: int, machine: Machine | str, global_batch: int | None = None,
           seq_len: int = 4096, micro_batch: int | None = None, precision: Precision = "bf16",
           activation_checkpointing: bool = True, top_k: int | None = None,
           optimizations: Optimizations | None = None, memory_fraction: float = 0.9,
           grad_clip: bool = True) -> list[Prediction]:
    """Rank every valid (data, z, y, x) grid of ``gpus`` GPUs for training ``model``.

    ``model``: preset name, transformers config or ModelShapes; ``machine``: Machine, preset
    name or machine-file path; ``global_batch`` defaults to one sequence per GPU;
    ``micro_batch`` None picks, per grid, the largest that fits; ``optimizations``: the run's
    switches (default: axolab's defaults, everything overlapped; ``Optimizations.none()`` for
    a run with ``overlap_communication=False``). Rows that fit come first by
    predicted step time, then the rest by memory; when nothing fits every row has
    ``fits == False`` (see :func:`min_gpus_to_fit`).
    """
    shapes = model_shapes(model)
    machine = resolve_machine(machine)
    work = Workload(global_batch or gpus, seq_len, micro_batch, precision,
                    activation_checkpointing, optimizations or Optimizations(), grad_clip)
    rows = rank_grids(shapes, gpus, machine, work, memory_fraction)
    return rows[:top_k] if top_k else rows


def min_gpus_to_fit(model, gpus: int, machine: Machine | str, limit: int = 2**20,
                    **options) -> int | None:
    """The smallest power-of-two multiple of ``gpus`` (up to ``limit``) on which some grid fits,
    with the same options as :func:`search` (a default global batch grows with the GPUs)."""
    machine = resolve_machine(machine)
    count = gpus * 2
    while count <= limit:
        try:
            rows = search(model, count, machine, top_k=1, **options)
        except ValueError:
            rows = []
        if rows and rows[0].fits:
            return count
        count *= 2
    return None
