"""Which communication of a step is hidden behind computation, collective by collective.

:func:`axolab.perfmodel.comm.step_collectives` tags each collective with the computation the
code runs it behind under the run's :class:`~axolab.Optimizations` (an empty tag when the switch
is off or nothing can hide it); :func:`axolab.perfmodel.compute.step_compute` gives the length
of each window. The rules follow axolab/parallel:

- ``prefetch_weights``: a linear layer's Z all-gather starts while the layer before it
  computes, in forward, in recompute and (reversed) in backward: gathers hide behind the
  decoder layers' forward or backward computation. With ``prefetch_late_in_backward`` a
  backward gather starts at the previous layer's first block (in forward order) and hides
  behind that block's two gradient matmuls only. With the prefetcher the lm head keeps its
  forward block for backward (no backward gather).
- ``overlap_depth_grad``: Z reduce-scatters of weight gradients run while earlier layers'
  backward computes: they share the backward window with the backward gathers.
- ``overlap_input_grad``: a layer's input-gradient all-reduce runs behind its own
  weight-gradient matmul (a q/k/v or gate/up stack behind the stack's matmuls) and no longer:
  the layer below needs the reduced gradient.
- ``bucket_data_grads``: data-parallel buckets are reduced during the last micro-step's
  backward, in the time the backward collectives leave free; the last bucket (the first
  layers' gradients) completes only after backward.
- Everything else (forward all-reduces of activations, norm and loss statistics, the
  embedding's gather) is on the critical path.

One link per rank: a window already used by input-gradient all-reduces is not available to
the backward gathers and reduce-scatters. Hiding is imperfect where collectives and
computation compete for the same resources (gloo's threads take cores from the matmuls on a
CPU; NCCL's kernels take a few SMs on a GPU): ``Machine.overlap_efficiency`` is the fraction
of the ideal hiding ``min(communication, window)`` a machine achieves, measured by ``axolab
plan calibrate``. A collective on the critical path also costs the machine's sync cost for
its group size (``Machine.sync_for``: waiting for the group's slowest rank; measured on CPUs, 0
in the GPU presets), added in :func:`axolab.perfmodel.comm.comm_time`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .compute import ComputeTime


@dataclass(frozen=True)
class Exposure:
    """Communication of one step, split into what stays on the critical path and what hides."""

    total_s: float
    """Every collective's time, as if blocking."""
    exposed_s: float
    """What the step waits for: total minus what hides behind computation."""
    hidden_s: dict
    """Seconds hidden, by window: forward, backward, weight_grad, block_backward, data."""


def exposed_communication(timed: list[tuple[str, float]], compute: ComputeTime,
                          efficiency: float, bucket_share: float = 0.0) -> Exposure:
    """``timed``: (hides_behind tag, seconds per step) for every collective of a step;
    ``efficiency``: the machine's overlap efficiency in [0, 1]; ``bucket_share``: the fraction
    of the data-parallel bytes in the last bucket (never hidden)."""
    if not 0.0 <= efficiency <= 1.0:
        raise ValueError(f"overlap efficiency must be in [0, 1], got {efficiency}")
    by_tag: dict[str, float] = {}
    for tag, seconds in timed:
        by_tag[tag] = by_tag.get(tag, 0.0) + seconds
    # fsum: exactly rounded, so the total is the same float as CommTime.total whatever the
    # order the collectives are added in (exposed <= total must hold with nothing hidden).
    total = math.fsum(seconds for _, seconds in timed)

    # Input gradients behind their own layer's weight-gradient matmul (a stack: the members'),
    # and gathers started late in backward behind both gradient matmuls of a layer's first
    # block, sharing the link with that block's input-gradient all-reduce.
    input_grads = late = 0.0
    busy_in_backward = 0.0

    def window(kind: str, names: str) -> float:
        return sum(compute.window(f"{kind}:{name}") for name in names.split("+"))

    for tag, comm in by_tag.items():
        if tag.startswith("weight_grad:"):
            used = min(comm, window("weight_grad", tag.split(":", 1)[1]))
            input_grads += used
            busy_in_backward += used
    for tag, comm in by_tag.items():
        if tag.startswith("block_backward:"):
            names = tag.split(":", 1)[1]
            taken = min(by_tag.get(f"weight_grad:{names}", 0.0), window("weight_grad", names))
            used = min(comm, max(0.0, window("block_backward", names) - taken))
            late += used
            busy_in_backward += used
    forward = min(by_tag.get("forward", 0.0), compute.window("forward"))
    backward_free = max(0.0, compute.window("backward") - busy_in_backward)
    backward_comm = by_tag.get("backward", 0.0)
    backward = min(backward_comm, backward_free)
    # Data-parallel buckets: the last micro-step's share of the backward time left free.
    data_comm = by_tag.get("data", 0.0)
    data = 0.0
    if data_comm and compute.window("backward") > 0:
        free = max(0.0, backward_free - backward_comm) * \
            compute.window("last_backward") / compute.window("backward")
        data = min(data_comm * (1.0 - bucket_share), free)
    hidden = {"forward": forward, "backward": backward, "weight_grad": input_grads,
              "block_backward": late, "data": data}
    hidden = {k: efficiency * v for k, v in hidden.items()}
    return Exposure(total, total - sum(hidden.values()), hidden)
