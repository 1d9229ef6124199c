"""The serial model's state dict, reassembled from a parallelized model."""

from __future__ import annotations

import torch
from torch import nn

from .base import ParallelModule


def parallel_parameters(model: nn.Module) -> list[tuple[str, ParallelModule, str, nn.Parameter]]:
    """(serial name, module, attribute, parameter) of every distinct parameter, in state-dict
    order; a tied weight appears once, under its first name (as save_pretrained keeps it)."""
    out, seen = [], set()
    for key, value in model.state_dict(keep_vars=True).items():
        module, attr = _owner(model, key)
        if isinstance(module, ParallelModule) and id(value) not in seen:
            seen.add(id(value))
            out.append((key, module, attr, value))
    return out


def _owner(model: nn.Module, key: str) -> tuple[nn.Module, str]:
    module_name, _, tensor_name = key.rpartition(".")
    return (model.get_submodule(module_name) if module_name else model), tensor_name


@torch.no_grad()
def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Same keys, shapes and values as the serial model's ``state_dict()``, on every rank.

    Collective: every rank of the grid must call it. It materializes the full model on each rank,
    so it is for export and tests of small models; checkpoints of large ones are written sharded.
    """
    out: dict[str, torch.Tensor] = {}
    done: dict[int, torch.Tensor] = {}
    for key, value in model.state_dict(keep_vars=True).items():
        module, name = _owner(model, key)
        if isinstance(module, ParallelModule):
            if id(value) not in done:  # tied weights are gathered once
                done[id(value)] = module.full_tensor(name)
            out[key] = done[id(value)]
        else:
            out[key] = value.detach().clone()
    return out
