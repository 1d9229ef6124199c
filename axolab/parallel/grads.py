"""Completing gradients across the batch split, and clipping by the global norm.

After backward, every parameter's gradient covers only this rank's batch shard:
depth-sharded weights have already been summed over Z by the reduce-scatter in backward and need
an all-reduce over D; replicated vectors (biases, norm weights) need an all-reduce over D*Z.
Gradients are flattened into one buffer per axis and dtype, so each needs a single collective.
"""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from . import comm
from .base import GradSpec
from .parallel_state import find_parallel_state, parallel_state


def grad_specs(model: nn.Module) -> list[GradSpec]:
    """One spec per distinct parameter (tied weights appear once)."""
    return parallel_state(model).grad_specs()


@contextlib.contextmanager
def no_data_sync(model: nn.Module):
    """Backward passes inside leave data-parallel gradients unreduced (gradient accumulation:
    all micro-steps but the last). Without bucketed reduction it changes nothing; on a serial
    model it is a no-op."""
    state = find_parallel_state(model)
    if state is None:
        yield
        return
    with state.runtime.data_grads.no_sync():
        yield


@torch.no_grad()
def sync_gradients(model: nn.Module) -> None:
    """Sum every gradient over the ranks that saw other parts of the batch.

    Call after backward and before ``optimizer.step()``; a no-op on a grid with data*z == 1 for
    vectors and data == 1 for weights. Gradients still as the last reduction left them are
    not reduced again (a second call after one backward changes nothing), and gradients
    accumulated onto reduced ones come out right however often it was called in between (see
    :mod:`axolab.parallel.data_buckets`).
    """
    state = parallel_state(model)
    data_grads = state.runtime.data_grads
    if data_grads.take_reduced():
        return  # the backward hooks already did it, bucket by bucket
    done = data_grads.still_reduced()
    buckets: dict[tuple[str, torch.dtype], list[torch.Tensor]] = {}
    axes = {}
    for spec in state.grad_specs():
        axis, p = spec.axis(state.grid), spec.param
        if axis.size > 1 and p.requires_grad and p.grad is not None and id(p) not in done:
            buckets.setdefault((spec.reduce, p.grad.dtype), []).append(p)
            axes[spec.reduce] = axis
    if not buckets:
        return
    for (reduce, _), params in buckets.items():
        axis = axes[reduce]
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        comm.all_reduce_sum_(flat, axis)
        offset = 0
        for p in params:
            p.grad.copy_(flat[offset:offset + p.numel()].view_as(p.grad))
            offset += p.numel()
    # Recorded once every copy is done: gradients cut from one stacked block share a version.
    data_grads.carry([(p, axes[reduce].size) for (reduce, _), params in buckets.items()
                      for p in params])


@torch.no_grad()
def global_grad_norm(model: nn.Module, norm_type: float = 2.0) -> torch.Tensor:
    """Norm of the whole model's gradient, as the serial model would compute it (after sync).

    Gradients are grouped by how many model copies hold them, and each group's norm is one
    ``torch.nn.utils.get_total_norm`` (multi-tensor kernels, fp32 gradients) rather than a few
    kernels per tensor: a 405B model has over a thousand gradient tensors per rank."""
    grid = parallel_state(model).grid
    specs = [s for s in grad_specs(model) if s.param.grad is not None]
    if not specs:
        return torch.zeros((), device=grid.device)
    groups: dict[int, list[torch.Tensor]] = {}
    for s in specs:
        groups.setdefault(s.replicas, []).append(s.param.grad)  # no_grad: no detach needed
    norms = {replicas: _group_norm(grads, norm_type) for replicas, grads in groups.items()}
    if math.isinf(norm_type):
        local = torch.stack(list(norms.values())).max()
        return comm.all_reduce_max(local, grid.model)
    # Each value is counted once per model copy: replicated vectors are weighted by 1/replicas.
    total = sum(norm.pow(norm_type) / replicas for replicas, norm in norms.items())
    total = comm.all_reduce_sum_(total.reshape(1), grid.model)[0]
    return total.pow(1.0 / norm_type)


def _group_norm(grads: list[torch.Tensor], norm_type: float) -> torch.Tensor:
    """The fp32 norm of a list of gradients (lower-precision ones are read in fp32)."""
    if all(g.dtype == torch.float32 for g in grads):
        return torch.nn.utils.get_total_norm(grads, norm_type)
    return torch.linalg.vector_norm(torch.stack(
        [torch.linalg.vector_norm(g, norm_type, dtype=torch.float32) for g in grads]), norm_type)


@torch.no_grad()
def clip_grad_norm_(model: nn.Module, max_norm: float, norm_type: float = 2.0) -> torch.Tensor:
    """Scale gradients so their global norm is at most ``max_norm``; returns the norm before.
    The scaling is ``torch.nn.utils.clip_grads_with_norm_`` (``max_norm / (norm + 1e-6)``,
    at most 1, multi-tensor)."""
    norm = global_grad_norm(model, norm_type)
    params = [s.param for s in grad_specs(model) if s.param.grad is not None]
    if params:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
