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

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from .base import ParallelModule
from .embedding import ParallelEmbedding
from .grid import Grid
from .layout import padded_size
from .linear import ParallelLinear
from .norm import ParallelLayerNorm, ParallelRMSNorm
from .replicated import ParallelReplicated


def _dtype(module: nn.Module):
    # A norm without parameters (OLMo's) takes the default dtype; it holds nothing.
    p = next(module.parameters(), None)
    return p.dtype if p is not None else None


def _in_out(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of a Linear, or of GPT-2's Conv1D (``nx``, ``nf``)."""
    if hasattr(module, "nf") and hasattr(module, "nx"):
        return module.nx, module.nf
    return module.in_features, module.out_features


def _is_conv1d(module: nn.Module) -> bool:
    return hasattr(module, "nf") and hasattr(module, "nx")


def _divides(problems: list[str], name: str, what: str, value: int, axis: str, size: int) -> None:
    if value % size:
        problems.append(f"{name}: {what}={value} is not divisible by {axis}={size}")


class Style:
    """One way of splitting a module over the grid (subclasses below)."""

    name: ClassVar[str]
    """How plans and messages refer to the style."""
    replaces: ClassVar[bool] = True
    """False for a style that adjusts the module in place (:meth:`adjust`) instead of
    building a parallel module (an attention module that must see its local head counts)."""

    def problems(self, name: str, module: nn.Module, grid: Grid, config=None) -> list[str]:
        raise NotImplementedError

    def build(self, module: nn.Module, grid: Grid, device, config=None) -> ParallelModule:
        raise NotImplementedError

    def adjust(self, module: nn.Module, grid: Grid, config) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


@dataclass(frozen=True, repr=False)
class _GridLinear(Style):
    """A Linear split over X on one side and Y on the other; ``transposed`` says which."""

    transposed: ClassVar[bool]
    """False: ``in`` over X, ``out`` over Y; True: ``in`` over Y, ``out`` over X."""

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        n_in, n_out = _in_out(module)
        in_axis, out_axis = ("y", "x") if self.transposed else ("x", "y")
        _divides(out, name, "in_features", n_in, in_axis, getattr(grid, in_axis).size)
        _divides(out, name, "out_features", n_out, out_axis, getattr(grid, out_axis).size)
        return out

    def build(self, module, grid, device, config=None):
        n_in, n_out = _in_out(module)
        return ParallelLinear(n_in, n_out, grid, transposed=self.transposed,
                              bias=module.bias is not None, conv1d=_is_conv1d(module),
                              device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class ColumnLinear(_GridLinear):
    """A Linear with ``in`` split over X and ``out`` over Y (q/k/v, gate/up): its input is the
    X-split residual stream, its output the Y-split heads or intermediate features."""

    name: ClassVar[str] = "forward"
    transposed: ClassVar[bool] = False


@dataclass(frozen=True, repr=False)
class FusedColumnLinear(Style):
    """A column Linear whose output rows fuse several projections (Phi-3's ``qkv_proj`` =
    [q; k; v], ``gate_up_proj`` = [gate; up], GPT-2's ``c_attn``): each section is split over
    Y on its own, so a rank's output is [its q heads, its k heads, its v heads], what the
    module's code slices (with local sizes). The bias is split the same way. Checkpoints keep
    the serial layout."""

    name: ClassVar[str] = "fused_forward"
    sections: Callable[[object], tuple[int, ...]] = lambda config: ()
    """The section sizes, from the model config."""

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        sizes = self.sections(config)
        n_in, n_out = _in_out(module)
        _divides(out, name, "in_features", n_in, "x", grid.x.size)
        if sum(sizes) != n_out:
            out.append(f"{name}: sections {sizes} do not add up to out_features={n_out}")
        for i, n in enumerate(sizes):
            _divides(out, name, f"section {i} size", n, "y", grid.y.size)
        return out

    def build(self, module, grid, device, config=None):
        n_in, n_out = _in_out(module)
        return ParallelLinear(n_in, n_out, grid, bias=module.bias is not None,
                              sections=self.sections(config), conv1d=_is_conv1d(module),
                              device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class LocalHeads(Style):
    """An attention module whose code slices a fused projection with head counts or sizes it
    reads from the model config (Phi-3: ``self.config.num_attention_heads``) or from its own
    attributes (GPT-2: ``self.split_size``): it gets this rank's values (heads are split over
    Y), the config as its own copy. Nothing else changes."""

    name: ClassVar[str] = "local_heads"
    replaces: ClassVar[bool] = False
    config_counts: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads")
    """Config attributes divided by Y in the module's own copy of the config."""
    module_counts: tuple[str, ...] = ("num_key_value_heads",)
    """Attributes of the module itself divided by Y."""

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        for attr in self.module_counts:
            _divides(out, name, attr, getattr(module, attr), "y", grid.y.size)
        return out

    def adjust(self, module, grid, config) -> None:
        if self.config_counts:
            local = copy.copy(config)
            for attr in self.config_counts:
                setattr(local, attr, getattr(config, attr) // grid.y.size)
            module.config = local
        for attr in self.module_counts:
            setattr(module, attr, getattr(module, attr) // grid.y.size)


@dataclass(frozen=True, repr=False)
class RowLinear(_GridLinear):
    """A Linear with ``in`` split over Y and ``out`` over X (o_proj, down_proj): it brings the
    Y-split features back to the X-split residual stream."""

    name: ClassVar[str] = "transposed"
    transposed: ClassVar[bool] = True


@dataclass(frozen=True, repr=False)
class Embedding(Style):
    """The token embedding: vocabulary over Y (padded to a multiple of it), hidden over X.
    Also a learned position embedding (the positions play the vocabulary's part)."""

    name: ClassVar[str] = "embedding"
    scaled: bool = False
    """Gemma's embedding multiplies its rows by ``module.scalar_embed_scale`` (sqrt(hidden))."""

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        _divides(out, name, "hidden size", module.embedding_dim, "x", grid.x.size)
        return out

    def build(self, module, grid, device, config=None):
        scale = float(module.scalar_embed_scale) if self.scaled else None
        return ParallelEmbedding(module.num_embeddings, module.embedding_dim, grid,
                                 padding_idx=module.padding_idx, scale=scale, device=device,
                                 dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class LMHead(Style):
    """The output projection: a column Linear over the padded vocabulary, whose Y-split logits
    feed the vocab-parallel loss. Tied to the embedding when the model ties them (one
    parameter, the same block layout)."""

    name: ClassVar[str] = "lm_head"

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        _divides(out, name, "hidden size", module.in_features, "x", grid.x.size)
        if module.bias is not None:
            out.append(f"{name}: an lm head with a bias is not supported")
        return out

    def build(self, module, grid, device, config=None):
        return ParallelLinear(module.in_features, module.out_features, grid, bias=False,
                              padded_out=padded_size(module.out_features, grid.y.size),
                              device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class RMSNorm(Style):
    """RMSNorm over a split dimension: the residual stream (over X), or OLMo-2's q/k norms over
    all heads (over Y). The fields say how the architecture's own module computes."""

    name: ClassVar[str] = "rmsnorm"
    axis: str = "x"
    """The grid axis the normalized dimension is split over."""
    offset: float = 0.0
    """Gemma: the weight applied is 1 + weight."""
    weight_in_fp32: bool = False
    """OLMo-2 and Gemma multiply by the weight before casting back (Llama after)."""

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        axis = getattr(grid, self.axis)
        _divides(out, name, "normalized size", module.weight.shape[0], self.axis, axis.size)
        return out

    def build(self, module, grid, device, config=None):
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        return ParallelRMSNorm(module.weight.shape[0], grid, eps=eps, axis=self.axis,
                               offset=self.offset, weight_in_fp32=self.weight_in_fp32,
                               device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class LayerNorm(Style):
    """LayerNorm over the X-split hidden dimension, with or without a bias; OLMo's has no
    parameters at all (``F.layer_norm`` with eps 1e-5)."""

    name: ClassVar[str] = "layernorm"

    def problems(self, name, module, grid, config=None):
        out: list[str] = []
        _divides(out, name, "hidden size", module.normalized_shape[0], "x", grid.x.size)
        return out

    def build(self, module, grid, device, config=None):
        weight = getattr(module, "weight", None) is not None
        return ParallelLayerNorm(module.normalized_shape[0], grid,
                                 eps=getattr(module, "eps", 1e-5),
                                 bias=getattr(module, "bias", None) is not None, weight=weight,
                                 device=device, dtype=_dtype(module))


@dataclass(frozen=True, repr=False)
class Replicated(Style):
    """A module held in full by every rank and run unchanged, whose input is split over
    ``sum_over`` (Qwen3 / Gemma-3 per-head q/k norms see only this rank's heads, split over Y):
    its parameter gradients are summed over those axes."""

    name: ClassVar[str] = "replicated"
    sum_over: tuple[str, ...] = ("y",)

    def problems(self, name, module, grid, config=None):
        bad = [n for n, p in module.named_parameters(recurse=False) if p.dim() != 1]
        return [f"{name}: only vector parameters can be replicated, not {', '.join(bad)}"] \
            if bad else []

    def build(self, module, grid, device, config=None):
        return ParallelReplicated(module, grid, self.sum_over, device=device)


STYLES: dict[str, Style] = {s.name: s for s in (Embedding(), ColumnLinear(), RowLinear(),
                                                 LMHead(), RMSNorm(), LayerNorm(),
                                                 Replicated())}
"""Every style by name; a plan may name a style by string (``"forward"``) or give the object."""
