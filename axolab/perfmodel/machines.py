"""Machines the planner knows: GPU nodes of a few supercomputers, and this one, calibrated.

Figures are per GPU (a GCD on Frontier) and public: vendor data sheets and facility user
guides, cited next to each preset. Link bandwidths are per direction and what a ring collective
can hope to use; sustained matmul efficiencies are approximate and are what ``axolab plan
calibrate`` (or a user's own measurement) should replace. A calibrated machine is a JSON file
holding the same fields plus measured collective costs per group size.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from ..config import write_json_atomic

COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter")


@dataclass(frozen=True)
class MeasuredCollective:
    """Measured cost of one collective kind on groups of one size: ``latency_s + ring_bytes /
    (bandwidth_gb_s * 1e9)``, where ring_bytes is what one rank sends (see perfmodel.comm)."""

    op: str
    """all_reduce, all_gather or reduce_scatter."""
    group_size: int
    """Ranks per group; all groups of this size in the world ran at once, as in a grid."""
    latency_s: float
    """Fixed cost per call (seconds)."""
    bandwidth_gb_s: float
    """Effective bandwidth per rank over ring bytes (GB/s, 1e9 bytes)."""
    stride: int = 1
    """Distance between consecutive ranks of a group (1: neighbours)."""

    def __post_init__(self):
        if self.stride < 1:
            raise ValueError(f"measured {self.op}: stride must be >= 1, got {self.stride}")
        if self.op not in COLLECTIVE_OPS:
            raise ValueError(f"collective op {self.op!r}: expected one of {COLLECTIVE_OPS}")
        if self.group_size < 2 or self.latency_s < 0 or self.bandwidth_gb_s <= 0:
            raise ValueError(f"measured {self.op} over {self.group_size} ranks: need group size "
                             f">= 2, latency >= 0 and bandwidth > 0, got {self.latency_s} s and "
                             f"{self.bandwidth_gb_s} GB/s")


# Computation running alongside a collective on the same GPU slows down: the collective's
# kernels hold SMs (CUs) and memory bandwidth. Lee et al., "Characterizing Compute-Communication
# Overlap in GPU-Accelerated Distributed Deep Learning: Performance and Power Implications"
# (arXiv 2507.03114, 2025) measured 18.9% on average (40% at most) over GPT and Llama training
# on 4x A100, H100, MI250 and MI210. M seconds of communication hidden behind longer
# computation then cost M * 0.189 / 1.189 seconds: the computation done meanwhile is M / 1.189.
GPU_OVERLAP_COMPUTE_SLOWDOWN = 0.189


def overlap_efficiency_for(slowdown: float) -> float:
    """The overlap efficiency of a machine whose computation runs ``slowdown`` (a fraction)
    slower while a collective runs beside it: ``1 / (1 + slowdown)``."""
    if slowdown < 0:
        raise ValueError(f"a slowdown must be >= 0, got {slowdown}")
    return 1.0 / (1.0 + slowdown)


GPU_OVERLAP_EFFICIENCY = overlap_efficiency_for(GPU_OVERLAP_COMPUTE_SLOWDOWN)


@dataclass(frozen=True)
class Machine:
    """One kind of GPU node, replicated: everything the model needs to time a step."""

    name: str
    """Preset or calibration name."""
    gpus_per_node: int
    """Ranks (GPUs, GCDs, or CPU processes) per node; collectives inside a node use the
    intra-node bandwidth."""
    memory_gib: float
    """Device memory per GPU (GiB)."""
    peak_flops_bf16: float
    """Dense bf16 matmul peak per GPU (FLOP/s)."""
    peak_flops_fp32: float
    """Dense fp32 matmul peak per GPU (FLOP/s), what PyTorch's default fp32 matmul gets."""
    matmul_efficiency: float
    """Sustained fraction of peak on large matmuls (approximate unless calibrated)."""
    memory_bandwidth_gb_s: float
    """Device memory bandwidth (GB/s): elementwise kernels, the optimizer, small matmuls."""
    intra_node_gb_s: float
    """Per-GPU, per-direction bandwidth a ring collective gets over a whole node (GB/s)."""
    inter_node_gb_s: float
    """Per-GPU share of the node's network injection bandwidth when every GPU of the node
    sends at once (node NIC bandwidth / gpus_per_node), GB/s."""
    intra_node_latency_s: float = 10e-6
    """Fixed cost of a collective step inside a node (seconds)."""
    inter_node_latency_s: float = 20e-6
    """Fixed cost of a collective step across nodes (seconds)."""
    op_overhead_s: float = 5e-6
    """Fixed cost per kernel (launch, Python and autograd bookkeeping)."""
    attention_efficiency: float = 0.6
    """Attention (scores and values, forward and backward) throughput as a fraction of the
    sustained matmul rate; fused flash kernels reach roughly 0.5-0.7 on GPUs (approximate)."""
    attention_call_s: float = 0.0
    """Fixed cost of one attention forward + backward (large on CPUs, where the fused kernel is
    overhead-bound at short sequences)."""
    intra_node_links: tuple[tuple[int, int, float], ...] = ()
    """(group size, stride, GB/s): the per-GPU ring ("bus") bandwidth of the groups of that
    size whose ranks are ``stride`` apart, inside one node. Links inside a node are rarely
    uniform (the two GCDs of one MI250X share four Infinity Fabric links, GCDs of different
    packages one or two), so the same group size can differ by 4x with its placement. A
    placement not listed uses the slowest listed one spanning as many GPUs, then
    ``intra_node_gb_s``."""
    overlap_efficiency: float = GPU_OVERLAP_EFFICIENCY
    """Fraction of the ideal hiding (``min(communication, computation window)``) achieved when
    a collective runs behind computation (:mod:`axolab.perfmodel.overlap`). On GPUs the
    collective's kernels take SMs and memory bandwidth from the matmuls they overlap
    (``GPU_OVERLAP_EFFICIENCY``, from a published measurement); on CPUs gloo's threads compete
    with the matmuls for cores, and ``axolab plan calibrate`` measures it."""
    sync_s: float = 0.0
    """Extra seconds each collective on the critical path costs when ranks compute between
    collectives (waiting for the slowest rank beyond the collective's own time): ~0 on GPU
    nodes (not modelled in the presets); large on a CPU with more ranks than cores, where
    ``axolab plan calibrate`` measures it."""
    sync_by_group: tuple[tuple[int, float], ...] = ()
    """(group size, seconds): ``sync_s`` measured for collectives over groups of that size
    (``axolab plan calibrate``). With more ranks than cores a wait lasts until the slowest
    member of the group is scheduled again, so a pair waits less than the whole world; a size
    not listed uses the nearest one listed, then ``sync_s``."""
    collectives: tuple[MeasuredCollective, ...] = ()
    """Measured collective costs by op and group size (calibrated machines); when present
    they replace the bandwidth/latency formula for groups inside a node."""
    foreach_optimizer: bool = True
    """Whether AdamW runs its multi-tensor (foreach) path, which holds one parameter-sized
    temporary; PyTorch uses it on GPUs and the per-tensor loop on CPUs."""
    cache_bytes_per_rank: float = 0.0
    """Last-level cache each rank can count on (the node's share per rank), where the
    per-tensor AdamW keeps a small tensor between its kernels: its ops then stream the tensor's
    param, grad and moments from memory once, not once per kernel. 0 (the GPU presets): the
    multi-tensor path runs each kernel over every tensor, so nothing stays cached."""
    source: str = ""
    """Where the figures come from."""

    def __post_init__(self):
        positive = ("gpus_per_node", "memory_gib", "peak_flops_bf16", "peak_flops_fp32",
                    "memory_bandwidth_gb_s", "intra_node_gb_s", "inter_node_gb_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"machine {self.name}: {name} must be > 0, got "
                                 f"{getattr(self, name)!r}")
        for g, s, bw in self.intra_node_links:
            if g < 2 or s < 1 or g * s > self.gpus_per_node or bw <= 0:
                raise ValueError(f"machine {self.name}: intra_node_links entry ({g}, {s}, {bw}) "
                                 f"needs group size >= 2, stride >= 1, group size x stride <= "
                                 f"gpus_per_node={self.gpus_per_node} and bandwidth > 0")
        if self.sync_s < 0:
            raise ValueError(f"machine {self.name}: sync_s must be >= 0, got {self.sync_s}")
        for g, t in self.sync_by_group:
            if g < 2 or t < 0:
                raise ValueError(f"machine {self.name}: sync_by_group entry ({g}, {t}) needs "
                                 f"group size >= 2 and seconds >= 0")
        if not 0 <= self.overlap_efficiency <= 1:
            raise ValueError(f"machine {self.name}: overlap_efficiency must be in [0, 1], got "
                             f"{self.overlap_efficiency}")
        for name in ("matmul_efficiency", "attention_efficiency"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"machine {self.name}: {name} must be in (0, 1], got "
                                 f"{getattr(self, name)}")

    def intra_bandwidth(self, group_size: int, stride: int) -> float:
        """GB/s per GPU for rings over groups of ``group_size`` ranks ``stride`` apart inside
        one node."""
        for g, s, bw in self.intra_node_links:
            if (g, s) == (group_size, stride):
                return bw
        same_span = [bw for g, s, bw in self.intra_node_links if g * s == group_size * stride]
        return min(same_span) if same_span else self.intra_node_gb_s

    def sync_for(self, group_size: int) -> float:
        """Seconds a critical-path collective over ``group_size`` ranks waits beyond its own
        time (see ``sync_by_group``)."""
        if not self.sync_by_group:
            return self.sync_s
        return min(self.sync_by_group, key=lambda e: (abs(e[0] - group_size), e[0]))[1]

    def peak_flops(self, precision: str) -> float:
        return self.peak_flops_bf16 if precision == "bf16" else self.peak_flops_fp32

    def measured(self, op: str, group_size: int, stride: int = 1) -> MeasuredCollective | None:
        """The measurement for ``op`` closest in group size, then in stride (reduce_scatter
        falls back to all_gather, its mirror image), or None on an uncalibrated machine."""
        for kind in (op, "all_gather" if op == "reduce_scatter" else None):
            rows = [c for c in self.collectives if c.op == kind]
            if rows:
                return min(rows, key=lambda c: (abs(c.group_size - group_size), c.group_size,
                                                abs(c.stride - stride), c.stride))
        return None


# (group size, stride, GB/s) measured on Perlmutter by the AxoNN authors (see presets()).
_PERLMUTTER_LINKS = ((2, 1, 76.0), (4, 1, 225.0), (2, 2, 76.0))


def presets() -> dict[str, Machine]:
    """The built-in machines, freshly built (callers may not change a shared table)."""
    return {m.name: m for m in (
        # NERSC Perlmutter GPU node: 4x A100 fully connected by NVLink3, 4x HPE Slingshot-11
        # NICs of 25 GB/s per node (docs.nersc.gov/systems/perlmutter/architecture). Ring
        # ("bus") bandwidths by group size and stride are the AxoNN authors' measurements, the
        # table of their communication model (github.com/axonn-ai/Megatron-AxoNN,
        # examples/comm_model.py): pairs 76 GB/s, the whole node 225; across nodes 80 / 40 / 20
        # GB/s per GPU for 1 / 2 / 4+ rings leaving a node, i.e. 20 GB/s per GPU when all four
        # leave. A100 data sheet: 312 TFLOP/s bf16 dense, 19.5 fp32, 1555 GB/s (40 GB) / 2039
        # (80 GB). Matmul efficiency 0.7 (approximate).
        Machine("perlmutter", 4, 40, 312e12, 19.5e12, 0.7, 1555, 225, 20,
                intra_node_links=_PERLMUTTER_LINKS,
                source="NERSC Perlmutter architecture page; NVIDIA A100 data sheet (40 GB); "
                       "links: AxoNN authors' measured table (Megatron-AxoNN comm_model.py)"),
        Machine("perlmutter-80gb", 4, 80, 312e12, 19.5e12, 0.7, 2039, 225, 20,
                intra_node_links=_PERLMUTTER_LINKS,
                source="NERSC Perlmutter architecture page; NVIDIA A100 data sheet (80 GB); "
                       "links: AxoNN authors' measured table (Megatron-AxoNN comm_model.py)"),
        # OLCF Frontier: 4x MI250X = 8 GCDs of 64 GB HBM2E; the two GCDs of one MI250X are
        # joined by 4 Infinity Fabric links, GCDs of different packages by 1 or 2 (Frontier
        # User Guide), so bandwidth depends on placement more than on group size. Measured ring
        # bandwidths from the AxoNN authors' table (Megatron-AxoNN examples/comm_model.py):
        # neighbours 129 (pairs) / 52 (fours) / 135 (all eight) GB/s, pairs 2 apart 50, fours
        # 2 apart 72, pairs 4 apart 36; across nodes 40 / 20 / 10 / 5 GB/s per GCD for 1 / 2 /
        # 4 / 8 rings leaving a node (4 Slingshot NICs of 25 GB/s shared by 8 GCDs). MI250X:
        # 383 TFLOP/s bf16 and 95.7 fp32 matrix per package (half per GCD), 3.2 TB/s per
        # package. rocBLAS sustains less of peak than cuBLAS (the AxoNN paper tunes it): 0.5,
        # approximate.
        Machine("frontier", 8, 64, 191.5e12, 47.9e12, 0.5, 1600, 135, 5,
                intra_node_links=((2, 1, 129.0), (4, 1, 52.0), (8, 1, 135.0), (2, 2, 50.0),
                                  (4, 2, 72.0), (2, 4, 36.0)),
                source="OLCF Frontier User Guide; AMD MI250X data sheet; links: AxoNN "
                       "authors' measured table (Megatron-AxoNN comm_model.py)"),
        # CSCS Alps GH200 node: 4x GH200 (96 GB HBM3, 4 TB/s), NVLink4 between all pairs
        # (~150 GB/s per direction, approximate: no measured table published with AxoNN's),
        # 4x Slingshot-11 at 25 GB/s (one per GPU). H100: 989 TFLOP/s bf16 dense, 67 fp32.
        # Matmul efficiency 0.7: cuBLAS ran the 60B layer's matmul shapes (8192 tokens) at
        # 0.70-0.72 of 989 TFLOP/s on an H200, the H100's tensor cores and clocks
        # (benchmarks/gpu_compute_check.py, 2026-12-04).
        Machine("alps", 4, 96, 989e12, 67e12, 0.7, 4000, 150, 25,
                source="CSCS Alps hardware docs; NVIDIA GH200 data sheet (approximate links)"),
        # A generic 8x H100 SXM 80 GB node: NVSwitch, NVLink4 450 GB/s per direction per GPU,
        # 8x 400 Gb/s InfiniBand = 50 GB/s per GPU; 3.35 TB/s HBM3.
        Machine("h100-node", 8, 80, 989e12, 67e12, 0.7, 3350, 450, 50,
                intra_node_latency_s=8e-6, inter_node_latency_s=15e-6,
                source="NVIDIA H100 SXM / DGX H100 data sheets"),
    )}


def get_machine(name: str) -> Machine:
    """A preset by name (``frontier``, ``perlmutter``, ``alps``, ``h100-node`` ...)."""
    table = presets()
    if name not in table:
        raise ValueError(f"unknown machine {name!r}; presets: {', '.join(table)}, or "
                         "'this-machine' with --machine-file from `axolab plan calibrate`")
    return table[name]


def machine_to_dict(machine: Machine) -> dict:
    return dataclasses.asdict(machine)


def machine_from_dict(data: dict) -> Machine:
    """Inverse of :func:`machine_to_dict`; unknown or missing fields are a ValueError."""
    names = {f.name for f in dataclasses.fields(Machine)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"machine file has unknown field(s) {unknown}; expected {sorted(names)}")
    required = {f.name for f in dataclasses.fields(Machine)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"machine file lacks field(s) {missing}")
    values = dict(data)
    values["collectives"] = tuple(MeasuredCollective(**c) for c in data.get("collectives", ()))
    values["intra_node_links"] = tuple((int(g), int(s), float(bw))
                                       for g, s, bw in data.get("intra_node_links", ()))
    values["sync_by_group"] = tuple((int(g), float(t)) for g, t in data.get("sync_by_group", ()))
    return Machine(**values)


def save_machine(machine: Machine, path: str | Path) -> Path:
    """Write ``machine`` as JSON (atomically) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, machine_to_dict(machine))
    return path


def load_machine(path: str | Path) -> Machine:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"machine file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"machine file {path} must hold a JSON object")
    return machine_from_dict(data)

