"""A module every rank of a model copy holds in full, whose input is split over grid axes.

Qwen3's and Gemma-3's q/k norms normalize each attention head over its own ``head_dim`` with
one weight shared by all heads. Heads are split over Y, so a rank runs the module unchanged on
its own heads, but the weight's gradient from this rank covers only those heads: it must be
summed over Y (``comm.copy_to`` in forward: identity, all-reduce of the gradient in backward).

The Hugging Face module itself does the arithmetic (so every variant of norm keeps its own);
its parameters move to this wrapper, under the same names, so the state dict keeps the serial
model's keys and shapes.
"""

from __future__ import annotations

from torch import nn
from torch.func import functional_call

from . import comm
from .base import GradSpec, ParallelModule
from .grid import Axis, Grid
from .layout import VectorLayout


class ParallelReplicated(ParallelModule):
    def __init__(self, inner: nn.Module, grid: Grid, sum_over: tuple[str, ...], device=None):
        super().__init__()
        params = dict(inner.named_parameters(recurse=False))
        if any(p.dim() != 1 for p in params.values()) or any(True for _ in inner.children()):
            raise ValueError(f"{type(inner).__name__}: only a module with vector parameters and "
                             "no submodules can be replicated this way")
        self.grid = grid
        self.sum_over = tuple(getattr(grid, a) for a in sum_over)
        # Not a submodule: its parameters are this module's (replaced at each call below).
        self.__dict__["inner"] = inner
        self._names = tuple(params)
        whole = Axis("replicated", 1, 0, (grid.rank,))
        self.layouts = {n: VectorLayout(p.shape[0], whole) for n, p in params.items()}
        for n, p in params.items():
            setattr(self, n, self._new_param(p.shape, None, device, p.dtype))

    def extra_repr(self) -> str:
        return f"{type(self.inner).__name__}, gradients summed over " + \
            (", ".join(a.name for a in self.sum_over) or "nothing")

    def forward(self, *args, **kwargs):
        tensors = {}
        for name in self._names:
            value = getattr(self, name)
            for axis in self.sum_over:
                value = comm.copy_to(value, axis)
            tensors[name] = value
        return functional_call(self.inner, tensors, args, kwargs)

    def grad_specs(self) -> list[GradSpec]:
        replicas = self.grid.x.size * self.grid.y.size * self.grid.z.size
        return [GradSpec(getattr(self, n), "batch", replicas) for n in self._names]

    def layout_of(self, name: str):
        if name not in self.layouts:
            raise KeyError(name)
        return self.layouts[name]
