"""The planner's collectives against the ones axolab's code issues: every collective of a
training step counted on real gloo ranks (wrapping the calls axolab's comm module makes, as
benchmarks/perfmodel_validation.py does), bytes per grid axis against the model's ring
formulas, with activation checkpointing on and off (its recompute repeats the forward's
collectives)."""

import sys
from collections import defaultdict
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import perfmodel_validation as pv  # noqa: E402

SETTINGS = dict(model="small-llama", seq_len=32, global_batch=4, micro_batch=None,
                precision="fp32", overlap=True)


def counted_step(dims, checkpointing, extra=None):
    """On every pool rank: one warm-up step, then the bytes and calls of the next step.
    ``extra``: settings changed from SETTINGS."""
    built = pv._build(dims, dict(SETTINGS, checkpointing=checkpointing, **(extra or {})),
                      ranks=range(dims[0] * dims[1] * dims[2] * dims[3]))
    if built is None:
        return None
    grid, _, _, step = built
    step()  # the first step learns the layers' order (prefetch buckets)
    counts = defaultdict(float)
    restore = pv._count_collectives(grid, counts)
    try:
        step()
    finally:
        restore()
    sizes = {a.name: a.size for a in (grid.x, grid.y, grid.z, grid.data, grid.batch,
                                      grid.model, grid.world)}
    grid.destroy()
    return {"counts": {f"{a}/{op}": v for (a, op), v in counts.items()}, "sizes": sizes}


# bf16 autocast with the Z reduce-scatters in bf16: gathers and gradient sums in half the
# bytes, the rest (activation all-reduces of the residual stream, data-parallel) unchanged.
BF16 = {"precision": "bf16", "depth_grad_dtype": "bf16"}
CASES = [((1, 2, 2, 1), False, None), ((1, 2, 2, 1), True, None),
         ((1, 1, 2, 2), False, None), ((1, 1, 2, 2), True, None),
         ((2, 1, 1, 2), False, None), ((2, 1, 1, 2), True, None),
         ((2, 2, 1, 1), False, BF16)]


@pytest.mark.parametrize("dims,checkpointing,extra", CASES,
                         ids=lambda v: "bf16" if isinstance(v, dict) else str(v))
def test_bytes_per_axis_are_the_models(pool8, dims, checkpointing, extra):
    from axolab.optimizations import Optimizations
    from axolab.perfmodel import GridShape, Workload, model_shapes, step_collectives
    from axolab.perfmodel.comm import ring_bytes

    results = [r for r in pool8.run(counted_step, dims, checkpointing, extra)
               if r is not None]
    assert len(results) == dims[0] * dims[1] * dims[2] * dims[3]
    measured = pv._measured_bytes(results[0])
    s = dict(SETTINGS, **(extra or {}))
    work = Workload(s["global_batch"], s["seq_len"], None, s["precision"], checkpointing,
                    Optimizations(depth_grad_dtype=s.get("depth_grad_dtype", "fp32")))
    grid = GridShape(*dims)
    model = defaultdict(float)
    for c in step_collectives(model_shapes("small-llama"), grid, work):
        model[c.axis] += c.count * ring_bytes(c.op, c.full_bytes, grid.size(c.axis))
    assert set(measured) == set(model)
    for axis, sent in model.items():
        assert measured[axis] == pytest.approx(sent, rel=1e-9), (axis, measured, dict(model))
