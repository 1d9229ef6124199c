"""What every tensor-parallel module tells the rest of axolab about its parameters."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn


@dataclass(frozen=True)
class GradSpec:
    """How one parameter's gradient is completed and counted.

    ``reduce`` is the grid axis its gradient is still partial over after backward: "data" for
    depth-sharded weights (Z was already reduce-scattered in backward), "batch" (D*Z) for small
    replicated vectors. ``replicas`` is how many ranks of one model copy (Z*Y*X) hold the same
    values, so a global norm counts it once.
    """

    param: nn.Parameter
    reduce: Literal["data", "batch"]
    replicas: int
    deferrable_z_grad: bool = False
    """The Z reduce-scatter of this gradient is issued by a linear layer's backward, which may
    leave it running (the overlap runtime completes it later); a tied weight gets the rest of
    its gradient through autograd from its other module."""

    def axis(self, grid):
        """The grid axis (an :class:`~axolab.parallel.grid.Axis`) the gradient is summed over."""
        return grid.data if self.reduce == "data" else grid.batch


def unique_specs(specs: list[GradSpec]) -> list[GradSpec]:
    """The first spec of each distinct parameter (a tied weight appears once)."""
    seen, out = set(), []
    for spec in specs:
        if id(spec.param) not in seen:
            seen.add(id(spec.param))
            out.append(spec)
    return out


class ParallelModule(nn.Module):
    """Base of the parallel layers: full-tensor import/export and gradient bookkeeping.

    Subclasses say, for each parameter name, which layout maps it to the serial tensor
    (:class:`~axolab.parallel.layout.BlockLayout` or ``VectorLayout``); anything shaped like the
    parameter (its gradient, optimizer moments) goes through the same layout.
    """

    def grad_specs(self) -> list[GradSpec]:
        raise NotImplementedError

    def layout_of(self, name: str):
        raise NotImplementedError

    def full_tensor(self, name: str, local: torch.Tensor | None = None) -> torch.Tensor:
        """The serial model's tensor ``name`` (same shape), assembled on every rank. ``local``:
        gather that tensor (shaped like the parameter) instead of the parameter itself."""
        return self.layout_of(name).gather_full(getattr(self, name) if local is None else local)

    @torch.no_grad()
    def load_full(self, name: str, full: torch.Tensor) -> None:
        """Copy this rank's piece of the serial tensor ``name`` into the local parameter."""
        p = getattr(self, name)
        p.copy_(self.layout_of(name).shard_from_full(full.to(p.device)))

    def _new_param(self, shape, like: torch.Tensor | None, device, dtype) -> nn.Parameter:
        dtype = dtype or (like.dtype if like is not None else torch.get_default_dtype())
        return nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
