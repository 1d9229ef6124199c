"""The data x Z x Y x X process grid.

The layout (X fastest, so an X group is a run of neighbouring ranks) and the membership of every
group come from :class:`axolab.grid_shape.GridShape`; this module creates the process groups.
All process groups live on the :class:`Grid`; nothing here is module-level state.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from ..cluster import first_slurm_host, in_slurm_step
from ..grid_shape import GROUPS, GridShape
from ..net import free_port


@dataclass(frozen=True)
class Axis:
    """One axis of the grid as seen from this rank: its group, size, and coordinate."""

    name: str
    size: int
    index: int
    ranks: tuple[int, ...]
    group: object = field(default=None, compare=False, repr=False)

    def __post_init__(self):
        if self.size > 1 and self.group is None:
            raise ValueError(f"axis {self.name} of size {self.size} needs a process group")


def launcher_environment() -> dict[str, str | int] | None:
    """Rank, world size, local rank and rendezvous from torchrun or srun, or None if neither."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return dict(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                    local_rank=int(env.get("LOCAL_RANK", 0)),
                    master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                    master_port=env.get("MASTER_PORT", "29500"))
    if in_slurm_step(env) and "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        job = int(env.get("SLURM_JOB_ID", "0"))
        return dict(rank=int(env["SLURM_PROCID"]), world_size=int(env["SLURM_NTASKS"]),
                    local_rank=int(env.get("SLURM_LOCALID", 0)),
                    master_addr=env.get("MASTER_ADDR") or first_slurm_host(env) or "127.0.0.1",
                    # Derived from the job id so that concurrent jobs on one node do not collide.
                    master_port=env.get("MASTER_PORT", str(20000 + job % 20000)))
    return None


def _default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"



def _ensure_process_group(backend: str | None, world_needed: int, timeout_s: float | None) -> None:
    if dist.is_available() and dist.is_initialized():
        return
    env = launcher_environment()
    backend = backend or _default_backend()
    if env is None:
        if world_needed != 1:
            raise ValueError(
                f"grid needs {world_needed} ranks but this process was not started by torchrun or "
                "srun (no RANK/WORLD_SIZE or SLURM_PROCID/SLURM_NTASKS in the environment); start it "
                "with axolab.launch or torchrun --nproc-per-node N")
        env = dict(rank=0, world_size=1, local_rank=0, master_addr="127.0.0.1",
                   master_port=str(free_port()))
    if env["world_size"] != world_needed:
        raise ValueError(f"grid data*z*y*x = {world_needed} but the launcher started "
                         f"{env['world_size']} ranks")
    if backend == "nccl":
        torch.cuda.set_device(int(env["local_rank"]) % torch.cuda.device_count())
    kw = {"timeout": datetime.timedelta(seconds=timeout_s)} if timeout_s else {}
    dist.init_process_group(backend, init_method=f"tcp://{env['master_addr']}:{env['master_port']}",
                            rank=int(env["rank"]), world_size=int(env["world_size"]), **kw)


@dataclass
class Grid:
    """This rank's place in the 4D grid and the process groups of every axis.

    ``x``, ``y``, ``z`` and ``data`` are :class:`Axis` objects; ``batch`` is the D*Z group over which
    the global batch is split (shard index ``d*Z + z``); ``model`` is the Z*Y*X group of ranks that
    together hold one copy of the model; ``world`` is every rank of the grid.
    """

    data: Axis
    z: Axis
    y: Axis
    x: Axis
    batch: Axis
    model: Axis
    world: Axis
    rank: int
    ranks: tuple[int, ...]
    backend: str
    device: torch.device

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (self.data.size, self.z.size, self.y.size, self.x.size)

    @property
    def grid_shape(self) -> GridShape:
        return GridShape(*self.shape)

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def coords(self) -> tuple[int, int, int, int]:
        return (self.data.index, self.z.index, self.y.index, self.x.index)

    @property
    def batch_shards(self) -> int:
        return self.data.size * self.z.size

    @property
    def batch_index(self) -> int:
        return self.data.index * self.z.size + self.z.index

    def __repr__(self) -> str:
        d, z, y, x = self.shape
        return f"Grid(data={d}, z={z}, y={y}, x={x}, rank={self.rank}, coords={self.coords})"

    @classmethod
    def init(cls, data: int = 1, z: int = 1, y: int = 1, x: int = 1, *,
             backend: str | None = None, ranks: list[int] | range | None = None,
             timeout_s: float | None = None) -> "Grid | None":
        """Build the grid (initializing torch.distributed from torchrun/srun if needed).

        ``ranks`` places the grid on a subset of the world (default: all ranks, in order). Every
        rank of the world must call this, because creating a process group is collective; ranks
        outside ``ranks`` get ``None``. ``timeout_s`` bounds how long a collective waits for a
        rank that died (when this call creates the process group). ``ranks`` must be in
        increasing order (a grid's layout follows their order, but torch.distributed orders the
        members of every group by global rank); this is checked before anything else, so every
        rank refuses a bad list before any collective.
        """
        size = GridShape(data, z, y, x).world
        if ranks is not None:
            ranks = tuple(int(r) for r in ranks)
            if any(b <= a for a, b in zip(ranks, ranks[1:])):
                raise ValueError(
                    f"grid ranks {list(ranks)} must be distinct and in increasing order: "
                    f"torch.distributed orders the members of every process group by global "
                    f"rank, so a grid laid out in any other order would put the shards in the "
                    f"wrong places")
        if ranks is None and not (dist.is_available() and dist.is_initialized()) and size == 1:
            return cls._single_process(backend)
        if ranks is None:
            _ensure_process_group(backend, size, timeout_s)
        elif not dist.is_initialized():
            raise ValueError("Grid.init(ranks=...) needs torch.distributed to be initialized")
        world = dist.get_world_size()
        ranks = tuple(range(world)) if ranks is None else ranks
        if len(ranks) != size:
            raise ValueError(f"grid data*z*y*x = {data}*{z}*{y}*{x} = {size} but it is placed on "
                             f"{len(ranks)} ranks (world size {world})")
        if len(set(ranks)) != size or min(ranks) < 0 or max(ranks) >= world:
            raise ValueError(f"grid ranks {ranks} must be distinct ranks of a world of size {world}")
        return cls._build(data, z, y, x, ranks, dist.get_backend())

    @classmethod
    def _single_process(cls, backend: str | None) -> "Grid":
        # A 1x1x1x1 grid in a plain process (a notebook kernel) needs no torch.distributed at all.
        axes = {n: Axis(n, 1, 0, (0,)) for n in GROUPS}
        backend = backend or _default_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" \
            else torch.device("cpu")
        return cls(**axes, rank=0, ranks=(0,), backend=backend, device=device)

    @classmethod
    def _build(cls, D: int, Z: int, Y: int, X: int, ranks: tuple[int, ...], backend: str):
        me = dist.get_rank()
        shape = GridShape(D, Z, Y, X)
        mine = shape.coords(ranks.index(me)) if me in ranks else None
        axes = {}
        # Every rank creates every group, in the same order, as torch.distributed requires.
        # ``ranks`` is increasing (init checks it), so each group's ranks are in index_in order,
        # the order in which new_group() and its collectives place them.
        for name in GROUPS:
            for positions in shape.groups(name):
                group_ranks = tuple(ranks[p] for p in positions)
                group = dist.new_group(list(group_ranks)) if len(group_ranks) > 1 else None
                if mine is not None and shape.position(mine) in positions:
                    axes[name] = Axis(name, len(group_ranks), shape.index_in(name, mine),
                                      group_ranks, group)
        if mine is None:
            return None
        if "nccl" in backend:  # also "cpu:gloo,cuda:nccl"; the group may predate this Grid
            local = int(os.environ.get("LOCAL_RANK", torch.cuda.current_device()))
            torch.cuda.set_device(local % torch.cuda.device_count())
            device = torch.device("cuda", torch.cuda.current_device())
        else:
            device = torch.device("cpu")
        return cls(**axes, rank=me, ranks=ranks, backend=backend, device=device)

    def destroy(self) -> None:
        """Release this grid's process groups (not the default one); the Grid is unusable after.
        Useful when one process tries several grid shapes, e.g. in a sweep."""
        seen = set()
        for axis in (self.data, self.z, self.y, self.x, self.batch, self.model, self.world):
            if axis.group is not None and id(axis.group) not in seen:
                seen.add(id(axis.group))
                dist.destroy_process_group(axis.group)

    def shard_batch(self, t: torch.Tensor, pad_value: float | int | None = None) -> torch.Tensor:
        """This rank's slice (dim 0) of a global batch, split evenly over the D*Z batch shards.

        A batch that does not divide evenly is refused unless ``pad_value`` is given; then the
        last shards are filled with rows of ``pad_value`` (use -100 for labels so the padding
        carries no loss, and any valid token id for input ids).
        """
        n = self.batch_shards
        b = t.shape[0]
        if b % n:
            if pad_value is None:
                raise ValueError(f"global batch of {b} rows does not split over data*z = {n} "
                                 f"batch shards; pass pad_value to pad it to {-(-b // n) * n}")
            pad = t.new_full((-(-b // n) * n - b, *t.shape[1:]), pad_value)
            t = torch.cat([t, pad])
        per = t.shape[0] // n
        return t[self.batch_index * per:(self.batch_index + 1) * per]
