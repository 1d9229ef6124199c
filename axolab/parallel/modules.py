"""Short accessors over :func:`~axolab.parallel.parallel_state.parallel_state`."""

from __future__ import annotations

from torch import nn

from .base import ParallelModule
from .grid import Grid
from .parallel_state import parallel_state
from .vocab import VocabShard


def parallel_modules(model: nn.Module) -> list[tuple[str, ParallelModule]]:
    """(name, module) of every parallel layer of ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ParallelModule)]


def vocab_shard(model: nn.Module) -> VocabShard:
    """Which vocabulary columns this rank's ``model(...).logits`` hold."""
    return parallel_state(model).vocab


def grid_of(model: nn.Module) -> Grid:
    return parallel_state(model).grid
