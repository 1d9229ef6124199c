"""The shape of a 4D grid (data x Z x Y x X) and where each rank sits in it.

Torch-free, so the one definition serves everything that reasons about grids: the process grid
itself (:class:`axolab.parallel.Grid` builds its groups from :meth:`GridShape.groups`), the
config check before a launch, the performance model and the scaling sweep.

Ranks are laid out X fastest: ``position = ((d*Z + z)*Y + y)*X + x``, so an X group is a run of
neighbouring ranks (one node on a cluster) and the data-parallel group has the largest stride.
Besides the four axes there are three derived groups: ``batch`` (D*Z ranks over which the global
batch is split), ``model`` (Z*Y*X ranks that hold one copy of the model) and ``world``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

AxisName = Literal["x", "y", "z", "data", "batch", "model", "world"]

AXES: tuple[str, ...] = ("x", "y", "z", "data")
"""Grid axes, fastest-varying rank first."""

GROUPS: tuple[str, ...] = ("x", "y", "z", "data", "batch", "model", "world")
"""Every group a rank belongs to, in the order every rank creates them."""

Coords = tuple[int, int, int, int]
"""(d, z, y, x) of one rank."""


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

    @classmethod
    def of(cls, dims) -> "GridShape":
        """From ``[data, z, y, x]`` (a config's list), with a clear error for anything else."""
        ok = isinstance(dims, (list, tuple)) and len(dims) == 4 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in dims)
        if not ok:
            raise ValueError(f"grid must be four positive integers [data, z, y, x], got "
                             f"{list(dims) if isinstance(dims, tuple) else dims!r}")
        return cls(*dims)

    @classmethod
    def parse(cls, text: str) -> "GridShape":
        """From ``"data,z,y,x"`` (a command-line option or a text box) or ``"DxZxYxX"`` (how
        the planner and the benchmarks print a grid)."""
        text = str(text).strip()
        sep = "," if "," in text else "x"
        parts = [p.strip() for p in text.lower().split(sep)]
        if len(parts) != 4 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"grid {text!r}: expected four positive integers data,z,y,x "
                             f"(or DxZxYxX)")
        return cls(*map(int, parts))

    @property
    def dims(self) -> Coords:
        return (self.data, self.z, self.y, self.x)

    @property
    def world(self) -> int:
        return self.data * self.z * self.y * self.x

    @property
    def batch_shards(self) -> int:
        return self.data * self.z

    def size(self, axis: str) -> int:
        """Ranks in one group of ``axis``: x, y, z, data, batch (D*Z), model (Z*Y*X) or world."""
        sizes = {"x": self.x, "y": self.y, "z": self.z, "data": self.data,
                 "batch": self.data * self.z, "model": self.z * self.y * self.x,
                 "world": self.world}
        if axis not in sizes:
            raise ValueError(f"unknown grid axis {axis!r}; expected one of {', '.join(sizes)}")
        return sizes[axis]

    def stride(self, axis: str) -> int:
        """Position distance between neighbours of one ``axis`` group (X fastest)."""
        strides = {"x": 1, "y": self.x, "z": self.x * self.y, "data": self.x * self.y * self.z,
                   "batch": self.x * self.y, "model": 1, "world": 1}
        if axis not in strides:
            raise ValueError(f"unknown grid axis {axis!r}; expected one of {', '.join(strides)}")
        return strides[axis]

    def coords(self, position: int) -> Coords:
        """(d, z, y, x) of the rank at ``position`` (0 .. world-1) in the grid."""
        if not 0 <= position < self.world:
            raise ValueError(f"position {position} is outside a grid of {self.world} ranks")
        position, x = divmod(position, self.x)
        position, y = divmod(position, self.y)
        d, z = divmod(position, self.z)
        return (d, z, y, x)

    def position(self, coords: Coords) -> int:
        d, z, y, x = coords
        return ((d * self.z + z) * self.y + y) * self.x + x

    def index_in(self, axis: str, coords: Coords) -> int:
        """Where a rank at ``coords`` sits inside its ``axis`` group (batch: the shard index
        d*Z + z; model: its place in one model copy)."""
        d, z, y, x = coords
        return {"x": x, "y": y, "z": z, "data": d, "batch": d * self.z + z,
                "model": (z * self.y + y) * self.x + x, "world": self.position(coords)}[axis]

    def groups(self, axis: str) -> list[list[int]]:
        """Every ``axis`` group as grid positions, each group ordered by index_in, the groups in
        a fixed order (every rank must create process groups in the same order)."""
        self.size(axis)  # names the axis if it is unknown
        fixed = {"x": (0, 1, 2), "y": (0, 1, 3), "z": (0, 2, 3), "data": (1, 2, 3),
                 "batch": (2, 3), "model": (0,), "world": ()}[axis]
        members: dict[tuple, list[int]] = {}
        for position in range(self.world):
            c = self.coords(position)
            members.setdefault(tuple(c[i] for i in fixed), []).append(position)
        return list(members.values())

    def __str__(self) -> str:
        return f"{self.data}x{self.z}x{self.y}x{self.x}"


def factorizations(n: int, parts: int = 4) -> list[tuple[int, ...]]:
    """Every ordered tuple of ``parts`` positive integers whose product is ``n``."""
    if parts == 1:
        return [(n,)]
    out = []
    for first in range(1, n + 1):
        if n % first == 0:
            out.extend((first, *rest) for rest in factorizations(n // first, parts - 1))
    return out


def all_grids(ranks: int) -> list[GridShape]:
    """Every (data, z, y, x) with D*Z*Y*X == ranks."""
    if not isinstance(ranks, int) or isinstance(ranks, bool) or ranks < 1:
        raise ValueError(f"the number of ranks must be a positive integer, got {ranks!r}")
    return [GridShape(*dims) for dims in factorizations(ranks)]


def parse_grids(text: str) -> list[GridShape]:
    """Several grids in one option: ``"d,z,y,x;d,z,y,x"``, or ``"DxZxYxX,DxZxYxX"``; a
    ValueError names the first bad entry."""
    text = str(text).strip()
    entries = text.split(";") if (";" in text or "x" not in text.lower()) else text.split(",")
    if not text or not all(e.strip() for e in entries):
        raise ValueError(f"grids {text!r}: expected d,z,y,x entries separated by ';' "
                         f"(or DxZxYxX entries separated by ',')")
    return [GridShape.parse(e) for e in entries]
