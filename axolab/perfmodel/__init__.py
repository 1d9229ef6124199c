"""Performance and memory model of axolab's 4D training, and the search over grids.

    from axolab.perfmodel import search
    rows = search("llama-3.1-405b", gpus=4096, machine="frontier", seq_len=8192, top_k=5)
    rows[0].grid, rows[0].step_time_s, rows[0].memory.total, rows[0].fits

One module per concern: ``shapes`` (the model's matrices), ``grid`` (valid grids), ``workload``
(what a step does), ``machines`` (presets and calibrated files), ``comm`` (collectives, bytes and
times), ``compute``, ``overlap`` (what hides behind computation), ``memory``, ``predict`` (one grid), ``search`` (all grids), ``calibrate``
(measure this machine) and ``cli`` (``axolab plan``).
"""

from .comm import Collective, CommTime, collective_time, ring_bytes, spans_one_node, \
    step_collectives
from .compute import ComputeTime, model_flops_per_step, step_compute
from .grid import GridShape, enumerate_grids, grid_problems
from .machines import Machine, MeasuredCollective, get_machine, load_machine, presets, \
    save_machine
from .memory import MemoryBreakdown, memory_per_rank
from .overlap import Exposure, exposed_communication
from .predict import Prediction, predict
from .search import min_gpus_to_fit, rank_grids, resolve_machine, search
from .shapes import LinearShape, ModelShapes, model_shapes
from .workload import Workload

__all__ = [
    "Collective", "CommTime", "ComputeTime", "Exposure", "GridShape", "LinearShape", "Machine",
    "MeasuredCollective", "MemoryBreakdown", "ModelShapes", "Prediction", "Workload",
    "collective_time", "enumerate_grids", "exposed_communication", "get_machine", "grid_problems", "load_machine",
    "memory_per_rank", "min_gpus_to_fit", "model_flops_per_step", "model_shapes", "predict",
    "presets", "rank_grids", "resolve_machine", "ring_bytes", "save_machine", "search",
    "spans_one_node", "step_collectives", "step_compute",
]
