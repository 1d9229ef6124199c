"""parallelize(model, grid): turn an unmodified Hugging Face CausalLM into its 4D-parallel form.

Modules named in the architecture's plan are swapped in place for their parallel versions; every
shape is checked against the grid first, so a bad grid fails with the module and the numbers
before anything is changed. The attention modules themselves are kept: they reshape with ``-1``
heads, so they run unchanged on the heads this rank owns. A model on the meta device stays on
meta (shapes only), so a checkpoint loader can fill each rank's shard later.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import ParallelModule
from .embedding import ParallelEmbedding
from .grid import Grid
from .layout import padded_size
from .linear import ParallelLinear
from .norm import ParallelLayerNorm, ParallelRMSNorm
from .options import Optimizations
from .overlap import Runtime
from .plans import Plan, plan_for
from .vocab import ParallelCausalLMLoss, VocabShard


def _check_shapes(model: nn.Module, plan: Plan, grid: Grid) -> None:
    X, Y = grid.x.size, grid.y.size
    problems = []
    for attr in plan.head_counts:
        n = getattr(model.config, attr, None)
        if n is not None and n % Y:
            problems.append(f"config.{attr}={n} is not divisible by y={Y} "
                            "(attention heads are split over Y)")
    for name, module in model.named_modules():
        style = plan.style_of(name)
        if style in ("forward", "transposed"):
            in_axis, out_axis = (("y", Y), ("x", X)) if style == "transposed" else (("x", X), ("y", Y))
            if module.in_features % in_axis[1]:
                problems.append(f"{name}: in_features={module.in_features} is not divisible by "
                                f"{in_axis[0]}={in_axis[1]}")
            if module.out_features % out_axis[1]:
                problems.append(f"{name}: out_features={module.out_features} is not divisible by "
                                f"{out_axis[0]}={out_axis[1]}")
        elif style in ("embedding", "lm_head"):
            dim = module.embedding_dim if style == "embedding" else module.in_features
            if dim % X:
                problems.append(f"{name}: hidden size {dim} is not divisible by x={X}")
            if style == "lm_head" and module.bias is not None:
                problems.append(f"{name}: an lm head with a bias is not supported")
        elif style in ("rmsnorm", "layernorm"):
            if module.weight.shape[0] % X:
                problems.append(f"{name}: hidden size {module.weight.shape[0]} is not divisible "
                                f"by x={X}")
    dropout = getattr(model.config, "attention_dropout", 0.0) or 0.0
    if dropout > 0 and X > 1:
        # X ranks recompute the same attention; independent dropout masks would desynchronize them.
        problems.append(f"config.attention_dropout={dropout} with x={X} is not supported "
                        "(set it to 0 for training with axolab)")
    if problems:
        raise ValueError(f"{type(model).__name__} cannot run on grid {grid.shape} "
                         "(data, z, y, x):\n  " + "\n  ".join(problems))


def _replacement(style: str, module: nn.Module, grid: Grid, device) -> ParallelModule:
    dtype = next(module.parameters()).dtype
    kw = dict(device=device, dtype=dtype)
    if style == "embedding":
        return ParallelEmbedding(module.num_embeddings, module.embedding_dim, grid,
                                 padding_idx=module.padding_idx, **kw)
    if style in ("forward", "transposed"):
        return ParallelLinear(module.in_features, module.out_features, grid,
                              transposed=style == "transposed", bias=module.bias is not None, **kw)
    if style == "lm_head":
        if module.bias is not None:
            raise ValueError("lm_head with a bias is not supported")
        return ParallelLinear(module.in_features, module.out_features, grid, bias=False,
                              padded_out=padded_size(module.out_features, grid.y.size), **kw)
    if style == "rmsnorm":
        eps = getattr(module, "variance_epsilon", getattr(module, "eps", 1e-6))
        return ParallelRMSNorm(module.weight.shape[0], grid, eps=eps, **kw)
    if style == "layernorm":
        return ParallelLayerNorm(module.normalized_shape[0], grid, eps=module.eps,
                                 bias=module.bias is not None, **kw)
    raise ValueError(f"unknown parallel style {style!r}")


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, new)


def parallelize(model: nn.Module, grid: Grid, plan: Plan | None = None,
                optimizations: Optimizations | None = None) -> nn.Module:
    """Convert ``model`` in place for ``grid`` and return it.

    Each rank must pass the same serial weights (same seed or checkpoint) or a meta-device model.
    Afterwards ``model(input_ids=shard, labels=shard)`` takes this rank's batch shard
    (``grid.shard_batch``); ``.loss`` equals the serial loss of the global batch and ``.logits``
    is ``[B/(D*Z), S, V_pad/Y]`` (see :mod:`axolab.parallel.vocab`). ``optimizations``
    switches the overlap of collectives and matmul tuning (default: every overlap on, tuning
    off); none of them changes the results.
    """
    if getattr(model, "axolab_grid", None) is not None:
        raise ValueError("model is already parallelized")
    plan = plan or plan_for(model.config)
    _check_shapes(model, plan, grid)
    targets = [(n, m, plan.style_of(n)) for n, m in model.named_modules() if plan.style_of(n)]
    covered = {id(p) for _, m, _ in targets for p in m.parameters()}
    stray = [n for n, p in model.named_parameters() if id(p) not in covered]
    if stray:
        raise ValueError(f"{type(model).__name__}: parameters not covered by the parallel plan "
                         f"(they would be silently replicated): {', '.join(stray[:8])}")

    embedding = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embedding.weight
    converted: dict[str, ParallelModule] = {}
    for name, module, style in targets:
        meta = next(module.parameters()).is_meta
        device = torch.device("meta") if meta else grid.device
        new = _replacement(style, module, grid, device)
        if not meta:
            for pname, value in module.named_parameters(recurse=False):
                if not (style == "lm_head" and tied and pname == "weight"):
                    new.load_full(pname, value.detach())
        new.train(module.training)
        converted[name] = new
        _set_submodule(model, name, new)

    lm_head = next(m for n, m in converted.items() if plan.style_of(n) == "lm_head")
    if tied:
        emb = next(m for n, m in converted.items() if plan.style_of(n) == "embedding")
        lm_head.weight = emb.weight  # one parameter, same block layout in both modules
    if not any(p.is_meta for p in model.parameters()):
        model.to(grid.device)  # buffers (rotary tables) follow the shards
    layout = lm_head.layout
    model.loss_function = ParallelCausalLMLoss(
        grid, VocabShard(grid.y, layout.row_start, layout.local_rows, layout.rows))
    runtime = Runtime(grid, optimizations or Optimizations(), model)
    for module in converted.values():
        if isinstance(module, ParallelLinear):
            module.runtime = runtime
    model.axolab_runtime = runtime
    model.axolab_grid = grid
    model.generate = _generate_unsupported
    return model


def _generate_unsupported(*args, **kwargs):
    raise NotImplementedError(
        "transformers' generate() takes the argmax over this rank's vocabulary slice only; on a "
        "parallelized model decode with axolab.parallel.vocab_parallel_argmax (see "
        "axolab.memorization for batched greedy decoding)")
