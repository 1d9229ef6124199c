"""Parallel styles: what one module of a Hugging Face model becomes on the grid.

A style owns both halves of converting a module, so a plan (:mod:`axolab.parallel.plans`) is a
table of ``pattern -> style`` and a new kind of module is a new style, not a branch elsewhere:

- :meth:`Style.problems` says, before anything is changed, why the module cannot be split on a
  grid (each problem names the module and the numbers);
- :meth:`Style.build` makes the empty parallel module (on ``device``, meta for a model that a
  checkpoint loader fills later).

Copying the serial weights in is the parallel module's own ``load_full``, through its layouts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .base import ParallelModule
from .embedding import ParallelEmbedding
from .grid import Grid
from .layout import padded_size
from .linear import ParallelLinear
from .norm import ParallelLayerNorm, ParallelRMSNorm


def _dtype(module: nn.Module):
    return next(module.parameters()).dtype


def _divides(problems: list[str], name: str, what: str, value: int, axis: str, size: int) -> None:
    if value % size:
        problems.append(f"{name}: {what}={value} is not divisible by {axis}={size}")


class Style:
    """One way of splitting a module over the grid (subclasses below)."""

    name: ClassVar[str]
    """How plans and messages refer to the style."""

    def problems(self, name: str, module: nn.Module, grid: Grid) -> list[str]:
        raise NotImplementedError

    def build(self, module: nn.Module, grid: Grid, device) -> ParallelModule:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True, repr=False)
class ColumnLinear(Style):
    """A Linear with ``in`` split over X and ``out`` over Y (q/k/v, gate/up): its input is the
    X-split residual stream, its output the Y-split heads or intermediate features."""

    name: ClassVar[str] = "forward"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "in_features", module.in_features, "x", grid.x.size)
        _divides(out, name, "out_features", module.out_features, "y", grid.y.size)
        return out

    def build(self, module, grid, device):
        return ParallelLinear(module.in_features, module.out_features, grid,
                              bias=module.bias is not None, device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class RowLinear(Style):
    """A Linear with ``in`` split over Y and ``out`` over X (o_proj, down_proj): it brings the
    Y-split features back to the X-split residual stream."""

    name: ClassVar[str] = "transposed"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "in_features", module.in_features, "y", grid.y.size)
        _divides(out, name, "out_features", module.out_features, "x", grid.x.size)
        return out

    def build(self, module, grid, device):
        return ParallelLinear(module.in_features, module.out_features, grid, transposed=True,
                              bias=module.bias is not None, device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class Embedding(Style):
    """The token embedding: vocabulary over Y (padded to a multiple of it), hidden over X."""

    name: ClassVar[str] = "embedding"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "hidden size", module.embedding_dim, "x", grid.x.size)
        return out

    def build(self, module, grid, device):
        return ParallelEmbedding(module.num_embeddings, module.embedding_dim, grid,
                                 padding_idx=module.padding_idx, device=device,
                                 dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class LMHead(Style):
    """The output projection: a column Linear over the padded vocabulary, whose Y-split logits
    feed the vocab-parallel loss. Tied to the embedding when the model ties them (one
    parameter, the same block layout)."""

    name: ClassVar[str] = "lm_head"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "hidden size", module.in_features, "x", grid.x.size)
        if module.bias is not None:
            out.append(f"{name}: an lm head with a bias is not supported")
        return out

    def build(self, module, grid, device):
        return ParallelLinear(module.in_features, module.out_features, grid, bias=False,
                              padded_out=padded_size(module.out_features, grid.y.size),
                              device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class RMSNorm(Style):
    """Llama-style RMSNorm over the X-split hidden dimension (statistics summed over X)."""

    name: ClassVar[str] = "rmsnorm"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "hidden size", module.weight.shape[0], "x", grid.x.size)
        return out

    def build(self, module, grid, device):
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        return ParallelRMSNorm(module.weight.shape[0], grid, eps=eps, device=device,
                               dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class LayerNorm(Style):
    """``nn.LayerNorm`` over the X-split hidden dimension, with or without a bias."""

    name: ClassVar[str] = "layernorm"

    def problems(self, name, module, grid):
        out: list[str] = []
        _divides(out, name, "hidden size", module.normalized_shape[0], "x", grid.x.size)
        return out

    def build(self, module, grid, device):
        return ParallelLayerNorm(module.normalized_shape[0], grid, eps=module.eps,
                                 bias=module.bias is not None, device=device,
                                 dtype=_dtype(module))


STYLES: dict[str, Style] = {s.name: s for s in (Embedding(), ColumnLinear(), RowLinear(),
                                                 LMHead(), RMSNorm(), LayerNorm())}
"""Every style by name; a plan may name a style by string (``"forward"``) or give the object."""
