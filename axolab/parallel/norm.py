"""RMSNorm and LayerNorm over a hidden dimension split across X.

Statistics are sums over the full hidden size: each rank sums its slice and the sums are
all-reduced over X (backward all-reduces too, since every rank normalizes different values with
the same statistic). The weight (and bias) are split over X and replicated over Y, Z and D.
"""

from __future__ import annotations

import torch

from . import comm
from .base import GradSpec, ParallelModule
from .grid import Grid
from .layout import VectorLayout


class _ParallelNormBase(ParallelModule):
    def __init__(self, hidden_size: int, grid: Grid, eps: float, names: tuple[str, ...],
                 device=None, dtype=None):
        super().__init__()
        if hidden_size % grid.x.size:
            raise ValueError(f"norm over hidden size {hidden_size} does not divide by "
                             f"x={grid.x.size}")
        self.grid, self.hidden_size, self.eps = grid, hidden_size, eps
        self.layout = VectorLayout(hidden_size, grid.x)
        for name in names:
            setattr(self, name, self._new_param((self.layout.local_size,), None, device, dtype))
        self._names = names

    def extra_repr(self) -> str:
        return f"hidden={self.hidden_size}/x, eps={self.eps}"

    def grad_specs(self) -> list[GradSpec]:
        replicas = self.grid.y.size * self.grid.z.size
        return [GradSpec(getattr(self, n), "batch", replicas) for n in self._names]

    def layout_of(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        return self.layout

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        return comm.all_reduce(t.sum(-1, keepdim=True), self.grid.x) / self.hidden_size


class ParallelRMSNorm(_ParallelNormBase):
    """Same arithmetic as Llama/Mistral/Qwen2 RMSNorm: fp32 statistics, weight applied in the
    input dtype."""

    def __init__(self, hidden_size: int, grid: Grid, eps: float = 1e-6, device=None, dtype=None):
        super().__init__(hidden_size, grid, eps, ("weight",), device, dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(self._mean(h.pow(2)) + self.eps)
        return self.weight * h.to(dtype)


class ParallelLayerNorm(_ParallelNormBase):
    """torch.nn.LayerNorm over the last dim (biased variance, two-pass for stability)."""

    def __init__(self, hidden_size: int, grid: Grid, eps: float = 1e-5, bias: bool = True,
                 device=None, dtype=None):
        names = ("weight", "bias") if bias else ("weight",)
        super().__init__(hidden_size, grid, eps, names, device, dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype
        if h.dtype in (torch.float16, torch.bfloat16):
            h = h.float()  # statistics in fp32, as torch's LayerNorm computes them
        centered = h - self._mean(h)
        out = (centered * torch.rsqrt(self._mean(centered.pow(2)) + self.eps)).to(dtype)
        out = out * self.weight
        return out + self.bias if "bias" in self._names else out

