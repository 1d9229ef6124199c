"""One grid's predicted step: time (computation + exposed communication) and memory."""

from __future__ import annotations

from dataclasses import dataclass

from .comm import CommTime, comm_time
from .compute import ComputeTime, model_flops_per_step, step_compute
from .grid import GridShape
from .machines import Machine
from .memory import GIB, MemoryBreakdown, memory_per_rank
from .overlap import exposed_communication
from .shapes import ModelShapes
from .workload import Workload


@dataclass(frozen=True)
class Prediction:
    """A ranked row of the planner: one grid and micro-batch on one machine."""

    grid: GridShape
    """(data, z, y, x)."""
    micro_batch: int
    """Sequences per rank per forward/backward."""
    micro_steps: int
    """Forward/backward passes per optimizer step."""
    step_time_s: float
    """Predicted seconds per optimizer step: computation + communication not overlapped."""
    compute: ComputeTime
    """Computation by kind."""
    comm: CommTime
    """Communication by axis."""
    exposed_comm_s: float
    """Communication the step waits for: what the run's Optimizations do not hide behind
    computation (:mod:`axolab.perfmodel.overlap`)."""
    memory: MemoryBreakdown
    """Modelled peak memory per rank."""
    memory_available: float
    """Bytes per GPU the plan may use (machine memory x usable fraction)."""
    tokens_per_s: float
    """Global tokens per second."""
    mfu: float
    """Model FLOPs utilization: model FLOPs / (step time x GPUs x peak)."""

    @property
    def fits(self) -> bool:
        return self.memory.total <= self.memory_available

    def to_dict(self) -> dict:
        """Plain JSON-able summary (GiB for memory, seconds for time)."""
        g = self.grid
        return {
            "data": g.data, "z": g.z, "y": g.y, "x": g.x, "micro_batch": self.micro_batch,
            "micro_steps": self.micro_steps, "step_time_s": self.step_time_s,
            "compute_s": self.compute.total, "comm_s": self.comm.total,
            "exposed_comm_s": self.exposed_comm_s,
            "compute_breakdown_s": {k: getattr(self.compute, k) for k in
                                    ("matmul_s", "attention_s", "elementwise_s", "optimizer_s",
                                     "overhead_s")},
            "comm_by_axis_s": dict(self.comm.by_axis),
            "comm_bytes_by_axis": dict(self.comm.bytes_by_axis),
            "memory_gib": self.memory.as_gib(), "memory_available_gib":
                self.memory_available / GIB,
            "fits": self.fits, "tokens_per_s": self.tokens_per_s, "mfu": self.mfu,
        }


def predict(shapes: ModelShapes, grid: GridShape, work: Workload, machine: Machine,
            memory_fraction: float = 0.9) -> Prediction:
    """Time and memory of one step of ``work`` on ``grid``; the grid must be valid (see
    :func:`axolab.perfmodel.grid.grid_problems`)."""
    if not 0 < memory_fraction <= 1:
        raise ValueError(f"memory_fraction must be in (0, 1], got {memory_fraction}")
    micro = work.micro(grid.batch_shards)
    compute = step_compute(shapes, grid, work, machine)
    comm = comm_time(shapes, grid, work, machine)
    bucket = work.optimizations.bucket_mb * 2**20
    exposure = exposed_communication(
        list(comm.timed), compute, machine.overlap_efficiency,
        min(1.0, bucket / comm.bucketed_bytes) if comm.bucketed_bytes else 0.0)
    exposed = exposure.exposed_s
    step = compute.total + exposed
    memory = memory_per_rank(shapes, grid, work, machine)
    tokens = work.global_batch * work.seq_len
    mfu = model_flops_per_step(shapes, work) / (
        step * grid.world * machine.peak_flops(work.precision))
    return Prediction(grid, micro, work.local_batch(grid.batch_shards) // micro, step, compute,
                      comm, exposed, memory, machine.memory_gib * GIB * memory_fraction,
                      tokens / step, mfu)
