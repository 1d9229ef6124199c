"""RMSNorm and LayerNorm over a dimension split across a grid axis (X for the residual stream,
Y for OLMo-2's norms over all attention heads).

Statistics are sums over the full dimension: each rank sums its slice and the sums are
all-reduced over the axis (backward all-reduces too, since every rank normalizes different
values with the same statistic). The weight (and bias) are split over that axis and replicated
over the other tensor axis, Z and D.

The arithmetic follows each architecture's module, because in bf16 the order of the cast and
the weight product shows: Llama casts the normalized values back, then multiplies by the
weight; OLMo-2 and Gemma multiply in fp32 and cast the product, Gemma by ``1 + weight``.
"""

from __future__ import annotations

import torch

from . import comm
from .base import GradSpec, ParallelModule
from .grid import Grid
from .layout import VectorLayout


class _ParallelNormBase(ParallelModule):
    def __init__(self, size: int, grid: Grid, eps: float, names: tuple[str, ...],
                 axis: str = "x", device=None, dtype=None):
        super().__init__()
        if axis not in ("x", "y"):
            raise ValueError(f"a norm is split over x or y, got {axis!r}")
        self.grid, self.size, self.eps, self.axis = grid, size, eps, getattr(grid, axis)
        if size % self.axis.size:
            raise ValueError(f"norm over size {size} does not divide by "
                             f"{axis}={self.axis.size}")
        self.layout = VectorLayout(size, self.axis)
        for name in names:
            setattr(self, name, self._new_param((self.layout.local_size,), None, device, dtype))
        self._names = names

    @property
    def hidden_size(self) -> int:
        return self.size

    def extra_repr(self) -> str:
        return f"size={self.size}/{self.axis.name}, eps={self.eps}"

    def grad_specs(self) -> list[GradSpec]:
        # Replicated over the other tensor axis and Z; partial over the batch shards.
        other = self.grid.y if self.axis.name == "x" else self.grid.x
        return [GradSpec(getattr(self, n), "batch", other.size * self.grid.z.size)
                for n in self._names]

    def layout_of(self, name: str):
        if name not in self._names:
            raise KeyError(name)
        return self.layout

    def _mean(self, t: torch.Tensor) -> torch.Tensor:
        return comm.all_reduce(t.sum(-1, keepdim=True), self.axis) / self.size


class ParallelRMSNorm(_ParallelNormBase):
    """RMSNorm with fp32 statistics. ``offset``: the weight applied is ``offset + weight``
    (Gemma: 1). ``weight_in_fp32``: multiply before casting back (OLMo-2, Gemma) instead of
    after (Llama, Mistral, Qwen)."""

    def __init__(self, size: int, grid: Grid, eps: float = 1e-6, *, axis: str = "x",
                 offset: float = 0.0, weight_in_fp32: bool = False, device=None, dtype=None):
        super().__init__(size, grid, eps, ("weight",), axis, device, dtype)
        self.offset, self.weight_in_fp32 = offset, weight_in_fp32

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype
        h = h.to(torch.float32)
        h = h * torch.rsqrt(self._mean(h.pow(2)) + self.eps)
        if self.weight_in_fp32:
            weight = self.weight.float()
            return (h * (weight + self.offset if self.offset else weight)).to(dtype)
        weight = self.weight + self.offset if self.offset else self.weight
        return weight * h.to(dtype)


class ParallelLayerNorm(_ParallelNormBase):
    """torch.nn.LayerNorm over the last dim (biased variance, two-pass for stability);
    ``weight=False`` for OLMo's norm without parameters."""

    def __init__(self, size: int, grid: Grid, eps: float = 1e-5, bias: bool = True, *,
                 weight: bool = True, device=None, dtype=None):
        names = (("weight",) if weight else ()) + (("bias",) if bias else ())
        super().__init__(size, grid, eps, names, "x", device, dtype)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        dtype = h.dtype
        if h.dtype in (torch.float16, torch.bfloat16):
            h = h.float()  # statistics in fp32, as torch's LayerNorm computes them
        centered = h - self._mean(h)
        out = (centered * torch.rsqrt(self._mean(centered.pow(2)) + self.eps)).to(dtype)
        if "weight" in self._names:
            out = out * self.weight
        return out + self.bias if "bias" in self._names else out
