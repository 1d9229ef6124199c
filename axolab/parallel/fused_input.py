"""Sibling layers that read the same input, computed as one: q/k/v, gate/up.

A Hugging Face attention block calls ``q_proj(h)``, ``k_proj(h)`` and ``v_proj(h)`` one after
the other on the same tensor. Each is a forward layer (input split over X, output over Y), so
computed one by one they cost three matmuls, three all-reduces over X in forward and three
all-reduces of the input gradient over Y in backward. Stacked (what Megatron-LM's fused QKV
weight does), the group costs one of each, and the input gradient's one all-reduce still
overlaps the (stacked) weight-gradient matmul.

The parameters stay the layers' own: the stacking happens on the gathered weight blocks, so
checkpoints, optimizers and gradient specs see nothing new. The first layer of the group to
be called computes the whole group and keeps its siblings' outputs for their own calls, which
must pass the very same input tensor; a sibling called with another input (or out of order)
computes alone, so a model that does something unexpected is slower, never wrong.
"""

from __future__ import annotations

import weakref

import torch

from .linear import ParallelLinear, linear_in_grid


class SharedInput:
    """One group of sibling forward layers (same input features, axes and depth)."""

    def __init__(self, members: tuple[ParallelLinear, ...]):
        first = members[0]
        for m in members:
            if m.transposed or m.layout.sections or m.in_features != first.in_features:
                raise ValueError(f"layers of a shared input must be plain forward layers with "
                                 f"the same in_features, got {m.extra_repr()}")
        self.members = members
        # Sibling outputs computed by the group's first call, until their own call takes them:
        # member index -> (the input they were computed from, the output).
        self._pending: dict[int, tuple[weakref.ref, torch.Tensor]] = {}

    def output(self, member: ParallelLinear, x: torch.Tensor) -> torch.Tensor:
        """``member``'s output for input ``x`` (without bias)."""
        i = self.members.index(member)
        kept = self._pending.pop(i, None)
        if kept is not None and kept[0]() is x:
            return kept[1]
        if i != 0:
            return linear_in_grid(x, (member,))
        outputs = _Split.apply(linear_in_grid(x, self.members),
                               tuple(m.layout.local_rows for m in self.members))
        source = weakref.ref(x)
        self._pending = {j: (source, out) for j, out in enumerate(outputs) if j}
        return outputs[0]


class _Split(torch.autograd.Function):
    """The stacked output cut into the members' outputs, each its own tensor: callers may
    modify one in place (OLMo clamps q/k/v), which autograd forbids on views of a custom
    Function's output; and backward is one concatenation, where narrowed views would each
    have their gradient zero-filled to the stacked size and then summed."""

    @staticmethod
    def forward(ctx, y, sizes):
        return tuple(part.contiguous() for part in y.split(sizes, dim=-1))

    @staticmethod
    def backward(ctx, *grads):
        # An output nobody used gets zeros here (autograd materializes missing gradients).
        return torch.cat(grads, dim=-1), None
