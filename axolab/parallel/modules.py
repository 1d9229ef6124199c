"""Finding what parallelize() left on a model: its parallel layers, its grid, its vocabulary
shard. Imports only the layer base and the loss, so the runtime and gradient code can use it
without importing parallelize (no import circle)."""

from __future__ import annotations

from torch import nn

from .base import ParallelModule
from .grid import Grid
from .vocab import ParallelCausalLMLoss, VocabShard


def parallel_modules(model: nn.Module):
    """(name, module) of every parallel layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ParallelModule)]


def vocab_shard(model: nn.Module) -> VocabShard:
    """Which vocabulary columns this rank's ``model(...).logits`` hold."""
    if not isinstance(getattr(model, "loss_function", None), ParallelCausalLMLoss):
        raise ValueError("model is not parallelized (call axolab.parallel.parallelize first)")
    return model.loss_function.shard


def grid_of(model: nn.Module) -> Grid:
    grid = getattr(model, "axolab_grid", None)
    if grid is None:
        raise ValueError("model is not parallelized (call axolab.parallel.parallelize first)")
    return grid
