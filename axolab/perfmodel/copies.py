"""The copies a decoder layer's weight blocks go through in one micro-step, outside the matmuls.

A linear layer's block is not always used where it lies. axolab (``axolab.parallel``) copies
it, or a Z chunk of it, on these occasions; the planner charges each at memory bandwidth
(``compute.step_compute``) and ``tests/test_depth_sharding.py`` counts them under
``torch.profiler`` on real ranks:

- **cast**: without Z, a block is cast to the compute dtype each time it is used (forward,
  backward) under bf16 autocast; in fp32 it is used as it lies.
- **into the gather**: with Z > 1, this rank's chunk is cast into its slot of the all-gather
  buffer (``WeightPrefetcher._start``), once per gather: each forward pass, and backward unless
  an activation-checkpoint recompute kept the blocks.
- **out of the gather / into the stack**: a bucket of several blocks is gathered as one
  ``[Z, chunks]`` buffer, so each block is cut out of it (``_Gather.block``); a block stacked
  with its siblings (q/k/v, gate/up, where the layers communicate) is copied into the stacked
  rows. A lone, unstacked block is used as a view of its gather. Forward and backward.
- **gradient cast**: under bf16 the weight gradient comes out of the matmul in bf16 and is
  cast to the dtype it is reduced in (the parameter's, unless
  ``Optimizations.depth_grad_dtype="bf16"`` at Z > 1).
- **into the gradient bucket**: with Z > 1 and ``overlap_depth_grad``, a bucket's gradients
  are copied into one ``[Z, chunks]`` buffer for the reduce-scatter (a lone unpadded block is
  sent as it is), and each rank's reduced chunk is copied out of it into ``.grad`` (or cast
  there, when reduced in bf16).

On a one-rank grid axolab leaves the model's own ``nn.Linear`` layers in place: autocast casts
each weight in forward and its gradient back (``ToCopyBackward``); nothing in fp32.
Not charged: the CPU reduce-scatter's copy of its own slice when a lone block is sent as it is
(1/Z of a block, gloo only), and the chunk copy the last decoder layer saves in backward when
its blocks are kept from forward (1/(Z * layers) of the gathers' copies).
"""

from __future__ import annotations

from dataclasses import dataclass

from .comm import block_elements, layer_buckets
from .grid import GridShape
from .shapes import SHARED_INPUTS, ModelShapes
from .workload import Workload


@dataclass(frozen=True)
class BlockCopy:
    """Copies of one kind, summed over a decoder layer's matrices, in one forward pass (a
    recompute makes another) or one backward pass of one micro-step."""

    what: str
    """cast, into the gather, out of the gather, gradient cast, into the gradient bucket,
    out of the gradient bucket."""
    elements: int
    """Elements copied."""
    read_bytes: int
    """Bytes per element read (the source's dtype)."""
    write_bytes: int
    """Bytes per element written (the destination's dtype)."""
    backward: bool
    """Made in the backward pass (else in each forward pass)."""

    @property
    def nbytes(self) -> int:
        return self.elements * (self.read_bytes + self.write_bytes)


def _stacked(shapes: ModelShapes, grid: GridShape, work: Workload) -> set[str]:
    """The layer's matrices computed as one stacked matmul (axolab.parallel.fused_input)."""
    if not (work.optimizations.fuse_shared_inputs and (grid.x > 1 or grid.y > 1)):
        return set()
    names = {lin.name for lin in shapes.layer_linears}
    return {n for group in SHARED_INPUTS if set(group) <= names for n in group}


def _alone_in_bucket(shapes: ModelShapes, grid: GridShape, work: Workload) -> set[str]:
    """The layer's matrices gathered alone: every one without buckets, else those whose Z
    bucket (comm.layer_buckets) holds nothing else."""
    limit = work.optimizations.gather_bucket_mb * 2**20
    if not limit:
        return {lin.name for lin in shapes.layer_linears}
    return {b[0].name for b in layer_buckets(shapes, grid, work, limit) if len(b) == 1}


def layer_weight_copies(shapes: ModelShapes, grid: GridShape, work: Workload) -> list[BlockCopy]:
    """The copies of one decoder layer's weight blocks in one forward pass and one backward
    pass of a micro-step (see the module docstring); kinds that copy nothing are left out."""
    pb, cb, opts = work.param_bytes, work.compute_bytes, work.optimizations
    bf16 = work.precision == "bf16"
    blocks = {lin.name: block_elements(lin, grid) for lin in shapes.layer_linears}
    total = sum(blocks.values())
    out: list[BlockCopy] = []

    def add(what, elements, read, write, backward):
        if elements:
            out.append(BlockCopy(what, int(elements), read, write, backward))

    if grid.world == 1:
        add("cast", total if bf16 else 0, pb, cb, False)
        add("gradient cast", total if bf16 else 0, cb, pb, True)
        return out
    stacked = _stacked(shapes, grid, work)
    if grid.z == 1:
        # A stacked block is cast on its way into the stack: one copy either way.
        for backward in (False, True):
            add("into the stack", sum(blocks[n] for n in stacked), pb, cb, backward)
            add("cast", sum(e for n, e in blocks.items() if n not in stacked) if bf16 else 0,
                pb, cb, backward)
        add("gradient cast", total if bf16 else 0, cb, pb, True)
        return out
    chunks = sum(-(-e // grid.z) for e in blocks.values())
    lone = _alone_in_bucket(shapes, grid, work)
    cut = sum(e for n, e in blocks.items() if n in stacked or n not in lone)
    add("into the gather", chunks, pb, cb, False)
    add("out of the gather", cut, cb, cb, False)
    if not work.activation_checkpointing:  # else the recompute's gather serves backward
        add("into the gather", chunks, pb, cb, True)
    add("out of the gather", cut, cb, cb, True)
    dg = work.depth_grad_bytes
    add("gradient cast", total if bf16 and dg != cb else 0, cb, dg, True)
    if opts.overlap_depth_grad:
        bucketed = [n for n in blocks if n not in lone or blocks[n] % grid.z]
        add("into the gradient bucket", sum(blocks[n] for n in bucketed), dg, dg, True)
        add("out of the gradient bucket",
            sum(-(-blocks[n] // grid.z) for n in bucketed) if dg == pb else chunks, dg, pb, True)
    return out
