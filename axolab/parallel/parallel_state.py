"""What parallelize() leaves on a model, in one typed object behind one accessor.

Every consumer (gradient sync, checkpoints, scoring, decoding, the training loop) reads the
grid, the vocabulary shard, the overlap runtime and the gradient specs from
:func:`parallel_state`, never from attributes probed on the Hugging Face model.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import GradSpec, ParallelModule, unique_specs
from .grid import Grid
from .overlap import Runtime
from .plans import Plan
from .token_checks import TokenChecks
from .vocab import VocabShard

ATTRIBUTE = "axolab_parallel"
"""The one attribute parallelize() sets on the model besides ``loss_function`` (the vocab-
parallel loss that transformers calls) and ``generate`` (refused)."""


@dataclass(eq=False)
class ParallelState:
    """A parallelized model's grid, plan, modules, vocabulary shard and runtime."""

    grid: Grid
    """This rank's place in the 4D grid and its process groups."""
    plan: Plan
    """The architecture's plan the model was converted with."""
    modules: tuple[ParallelModule, ...]
    """The parallel layers, in the model's module order (stable: loading a checkpoint replaces
    their parameters, not the layers)."""
    vocab: VocabShard
    """Which vocabulary columns this rank's ``model(...).logits`` hold."""
    runtime: Runtime
    """The collectives in flight: prefetch, deferred Z reductions, data-parallel buckets."""
    checks: TokenChecks
    """Token-id range checks of the embedding and the loss; a training step reads them once
    (``with state.checks.deferred():``) instead of a host sync in each."""

    def module_grad_specs(self) -> list[GradSpec]:
        """Every module's specs; a tied weight is listed once per module that uses it."""
        return [spec for module in self.modules for spec in module.grad_specs()]

    def grad_specs(self) -> list[GradSpec]:
        """One spec per distinct parameter, in registration order."""
        return unique_specs(self.module_grad_specs())


def find_parallel_state(model: nn.Module) -> ParallelState | None:
    """The model's ParallelState, or None for a serial model."""
    state = model.__dict__.get(ATTRIBUTE)
    return state if isinstance(state, ParallelState) else None


def parallel_state(model: nn.Module) -> ParallelState:
    """The model's ParallelState; a clear error for a model that was not parallelized."""
    state = find_parallel_state(model)
    if state is None:
        raise ValueError(f"{type(model).__name__} is not parallelized (call "
                         "axolab.parallel.parallelize first)")
    return state


def attach_parallel_state(model: nn.Module, state: ParallelState) -> None:
    if find_parallel_state(model) is not None:
        raise ValueError("model is already parallelized")
    model.__dict__[ATTRIBUTE] = state
