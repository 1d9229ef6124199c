"""Candidate (data, z, y, x) grids: which are valid for a model and batch, and their groups.

Validity follows what :func:`axolab.parallel.parallelize` accepts, not a looser ideal: heads and
key/value heads must divide by Y (heads are split over Y); H must divide by X (residual stream,
norms, the embedding and the lm head's input); I must divide by Y (gate/up outputs, down input);
the global batch must divide by D*Z. Only the vocabulary is padded (to a multiple of Y).
"""

from __future__ import annotations

from ..grid_shape import AXES, GridShape, all_grids, factorizations
from .shapes import ModelShapes

__all__ = ["AXES", "GridShape", "enumerate_grids", "factorizations", "grid_problems"]

def grid_problems(shapes: ModelShapes, grid: GridShape, global_batch: int | None) -> list[str]:
    """Why ``grid`` cannot run ``shapes`` (empty if it can), each naming the numbers."""
    problems = []
    if shapes.heads % grid.y:
        problems.append(f"{shapes.heads} attention heads do not divide by y={grid.y}")
    if shapes.kv_heads % grid.y:
        problems.append(f"{shapes.kv_heads} key/value heads do not divide by y={grid.y}")
    if shapes.hidden % grid.x:
        problems.append(f"hidden size {shapes.hidden} does not divide by x={grid.x}")
    if shapes.intermediate % grid.y:
        problems.append(f"intermediate size {shapes.intermediate} does not divide by y={grid.y}")
    if global_batch is not None and global_batch % grid.batch_shards:
        problems.append(f"global batch {global_batch} does not divide by data*z = "
                        f"{grid.batch_shards}")
    return problems


def enumerate_grids(gpus: int, shapes: ModelShapes | None = None,
                    global_batch: int | None = None) -> list[GridShape]:
    """Every (data, z, y, x) with D*Z*Y*X == gpus, valid for ``shapes`` and ``global_batch``
    when given (see :func:`grid_problems`)."""
    if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
        raise ValueError(f"gpus must be a positive integer, got {gpus!r}")
    grids = all_grids(gpus)
    if shapes is None:
        return grids
    return [g for g in grids if not grid_problems(shapes, g, global_batch)]
