"""parallelize(model, grid): turn an unmodified Hugging Face CausalLM into its 4D-parallel form.

Modules named in the architecture's plan are swapped in place for their parallel versions; every
shape is checked against the grid first, so a bad grid fails with the module and the numbers
before anything is changed. The attention modules themselves are kept: they reshape with ``-1``
heads, so they run unchanged on the heads this rank owns. A model on the meta device stays on
meta (shapes only), so a checkpoint loader can fill each rank's shard later.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from .base import ParallelModule
from .embedding import ParallelEmbedding
from .fused_input import SharedInput
from .grid import Grid
from .linear import ParallelLinear
from ..optimizations import Optimizations
from .overlap import Runtime
from .parallel_state import ParallelState, attach_parallel_state, find_parallel_state
from .plans import Plan, plan_for
from .styles import Embedding, LMHead
from .token_checks import TokenChecks
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
        if style is not None:
            problems += style.problems(name, module, grid, model.config)
    for attr in plan.attention_dropout:
        dropout = getattr(model.config, attr, 0.0) or 0.0
        if dropout > 0 and X > 1:
            # X ranks recompute the same attention; independent masks would desynchronize them.
            problems.append(f"config.{attr}={dropout} with x={X} is not supported "
                            "(set it to 0 for training with axolab)")
    if problems:
        raise ValueError(f"{type(model).__name__} cannot run on grid {grid.shape} "
                         "(data, z, y, x):\n  " + "\n  ".join(problems))


def _refuse_unsupported_layers(model: nn.Module) -> None:
    """Name the first mixture-of-experts layer: no plan splits experts (or routes tokens)."""
    for name, module in model.named_modules():
        kind = type(module).__name__
        if re.search(r"moe|experts", kind, re.IGNORECASE):
            raise ValueError(f"{type(model).__name__}: {name} ({kind}) is a mixture-of-experts "
                             "layer, which axolab cannot parallelize (no plan splits experts)")


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
    if find_parallel_state(model) is not None:
        raise ValueError("model is already parallelized")
    if plan is None:
        _refuse_unsupported_layers(model)
        plan = plan_for(model.config)
    _check_shapes(model, plan, grid)
    matched = [(n, m, plan.style_of(n)) for n, m in model.named_modules() if plan.style_of(n)]
    targets = [(n, m, style) for n, m, style in matched if style.replaces]
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
        meta = any(p.is_meta for p in module.parameters())
        device = torch.device("meta") if meta else grid.device
        new = style.build(module, grid, device, model.config)
        if not meta:
            for pname, value in module.named_parameters(recurse=False):
                if not (isinstance(style, LMHead) and tied and pname == "weight"):
                    new.load_full(pname, value.detach())
        new.train(module.training)
        converted[name] = new
        _set_submodule(model, name, new)
    for name, module, style in matched:
        if not style.replaces:
            style.adjust(model.get_submodule(name), grid, model.config)

    lm_head = next(m for n, m in converted.items() if isinstance(plan.style_of(n), LMHead))
    if tied:
        emb = next(m for n, m in converted.items() if isinstance(plan.style_of(n), Embedding))
        lm_head.weight = emb.weight  # one parameter, same block layout in both modules
    if not any(p.is_meta for p in model.parameters()):
        model.to(grid.device)  # buffers (rotary tables) follow the shards
    layout = lm_head.layout
    vocab = VocabShard(grid.y, layout.row_start, layout.local_rows, layout.rows, batch=grid.batch)
    checks = TokenChecks()
    model.loss_function = ParallelCausalLMLoss(grid, vocab, checks)
    state = ParallelState(grid=grid, plan=plan, modules=tuple(converted.values()), vocab=vocab,
                          runtime=None, checks=checks)
    state.runtime = Runtime(grid, optimizations or Optimizations(), state.module_grad_specs)
    for name, module in converted.items():
        if isinstance(module, ParallelLinear):
            module.runtime = state.runtime
            module.gather_unit = _gather_unit(name)
        if isinstance(module, ParallelEmbedding):
            module.checks = checks
    _share_inputs(converted, plan)
    attach_parallel_state(model, state)
    model.generate = _generate_unsupported
    return model


def _gather_unit(name: str) -> str:
    """The repeated block a layer belongs to ("model.layers.3" for
    "model.layers.3.mlp.up_proj"; the name itself outside a layer list): weight gathers are
    bucketed within it, as FSDP wraps one decoder layer."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[:i + 1])
    return name


def _share_inputs(converted: dict[str, ParallelModule], plan: Plan) -> None:
    """Give each group of the plan's ``shared_inputs`` found under one parent its SharedInput."""
    children: dict[str, dict[str, ParallelModule]] = {}
    for name, module in converted.items():
        parent, _, child = name.rpartition(".")
        children.setdefault(parent, {})[child] = module
    for siblings in children.values():
        for group in plan.shared_inputs:
            members = tuple(siblings.get(n) for n in group)
            # Stacking costs copies (weights, outputs) and saves collectives: only worth it
            # where the layers communicate at all.
            if all(isinstance(m, ParallelLinear) and not m.transposed for m in members) \
                    and (members[0].in_axis.size > 1 or members[0].out_axis.size > 1):
                shared = SharedInput(members)
                for m in members:
                    m.shared_input = shared


def _generate_unsupported(*args, **kwargs):
    raise NotImplementedError(
        "transformers' generate() takes the argmax over this rank's vocabulary slice only; on a "
        "parallelized model decode with axolab.parallel.vocab_parallel_argmax (see "
        "axolab.memorization for batched greedy decoding)")
