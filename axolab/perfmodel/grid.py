"""Candidate (data, z, y, x) grids: which are valid for a model and batch, and their groups.

Validity follows what :func:`axolab.parallel.parallelize` accepts, not a looser ideal: heads and
key/value heads must divide by Y (heads are split over Y); H must divide by X (residual stream,
norms, the embedding and the lm head's input); I must divide by Y (gate/up outputs, down input);
the global batch must divide by D*Z. Only the vocabulary is padded (to a multiple of Y).
"""

from __future__ import annotations

from dataclasses import dataclass

from .shapes import ModelShapes

AXES = ("x", "y", "z", "data")
"""Grid axes, fastest-varying rank first (``rank = ((d*Z + z)*Y + y)*X + x``)."""


@dataclass(frozen=True)
class GridShape:
    """A 4D grid: data-parallel D times the 3D tensor-parallel Z x Y x X."""

    data: int
    """D: model replicas, each on a different slice of the batch."""
    z: int
    """Z: depth; weights sharded over it, batch split over D*Z."""
    y: int
    """Y: splits attention heads, the MLP intermediate dim and the vocabulary."""
    x: int
    """X: splits the hidden dim (residual stream); the neighbouring ranks."""

    def __post_init__(self):
        for name in ("data", "z", "y", "x"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"grid dimension {name} must be a positive integer, got {value!r}")

    @property
    def world(self) -> int:
        return self.data * self.z * self.y * self.x

    @property
    def batch_shards(self) -> int:
        return self.data * self.z

    def size(self, axis: str) -> int:
        """Ranks in one group of ``axis``: x, y, z, data, batch (D*Z) or model (Z*Y*X)."""
        sizes = {"x": self.x, "y": self.y, "z": self.z, "data": self.data,
                 "batch": self.data * self.z, "model": self.z * self.y * self.x,
                 "world": self.world}
        if axis not in sizes:
            raise ValueError(f"unknown grid axis {axis!r}; expected one of {', '.join(sizes)}")
        return sizes[axis]

    def stride(self, axis: str) -> int:
        """Rank distance between neighbours of one ``axis`` group (X fastest)."""
        strides = {"x": 1, "y": self.x, "z": self.x * self.y, "data": self.x * self.y * self.z,
                   "batch": self.x * self.y, "model": 1, "world": 1}
        if axis not in strides:
            raise ValueError(f"unknown grid axis {axis!r}; expected one of {', '.join(strides)}")
        return strides[axis]

    def __str__(self) -> str:
        return f"{self.data}x{self.z}x{self.y}x{self.x}"


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


def factorizations(n: int, parts: int = 4) -> list[tuple[int, ...]]:
    """Every ordered tuple of ``parts`` positive integers whose product is ``n``."""
    if parts == 1:
        return [(n,)]
    out = []
    for first in range(1, n + 1):
        if n % first == 0:
            out.extend((first, *rest) for rest in factorizations(n // first, parts - 1))
    return out


def enumerate_grids(gpus: int, shapes: ModelShapes | None = None,
                    global_batch: int | None = None) -> list[GridShape]:
    """Every (data, z, y, x) with D*Z*Y*X == gpus, valid for ``shapes`` and ``global_batch``
    when given (see :func:`grid_problems`)."""
    if not isinstance(gpus, int) or gpus < 1:
        raise ValueError(f"gpus must be a positive integer, got {gpus!r}")
    grids = [GridShape(*dims) for dims in factorizations(gpus)]
    if shapes is None:
        return grids
    return [g for g in grids if not grid_problems(shapes, g, global_batch)]
