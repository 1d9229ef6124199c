"""Differentiable collectives, each an autograd Function that can be tested on its own.

The 4D algorithm needs five mappings between "replicated" and "partial" tensors:

- ``copy_to``:        identity forward, all-reduce backward. An input replicated over a group is
                      consumed by every rank for a different output slice, so its gradient is the
                      sum of the ranks' partial gradients.
- ``reduce_from``:    all-reduce forward, identity backward. Partial sums become a replicated value
                      that every rank then uses identically, so each rank already holds the whole
                      gradient.
- ``all_reduce``:     all-reduce forward and backward. A replicated statistic (a norm's sum of
                      squares) that each rank uses on different data.
- ``gather_along``:   all-gather along a dim forward, keep own slice backward.
- ``depth_gather``:   all-gather of flat weight chunks forward, reduce-scatter of their gradients
                      backward (the Z axis: weights depth-sharded, batch split).

Every Function takes an :class:`~axolab.parallel.grid.Axis`; on an axis of size 1 it is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from .grid import Axis


def _all_reduce(t: torch.Tensor, axis: Axis, op=dist.ReduceOp.SUM) -> torch.Tensor:
    t = t.contiguous().clone()
    dist.all_reduce(t, op=op, group=axis.group)
    return t


# torch 2.13 renamed the flat-tensor collectives; older releases (still in our supported range)
# only have the *_tensor names.
_ALL_GATHER_TENSOR = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
_REDUCE_SCATTER_TENSOR = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


class _SumAfterWait:
    """The handle of a reduce-scatter by direct exchange into ``out``: ``wait()`` completes
    the sends and receives and sums this rank's slice of every rank, in rank order."""

    def __init__(self, works: list, parts: list[torch.Tensor], out: torch.Tensor,
                 own: int | None):
        # own: the index in ``parts`` of the slice ``out`` itself is (a result written over
        # this rank's own slice of the input), or None.
        self.works, self.parts, self.out, self.own = works, parts, out, own

    def wait(self, *args, **kwargs) -> bool:
        if self.parts is not None:
            for work in self.works:
                work.wait(*args, **kwargs)
            # The same order in every call: results are reproducible. A result written over
            # this rank's own slice starts from it, then adds the others in rank order.
            out = self.out.view(-1)
            if self.own is None:
                out.copy_(self.parts[0])
            for i, part in enumerate(self.parts):
                if i != self.own and (self.own is not None or i > 0):
                    out.add_(part)
            self.works = self.parts = None  # the received slices are released with the sum
        return True

    def is_completed(self) -> bool:
        return self.parts is None or all(w.is_completed() for w in self.works)


def _reduce_scatter(out: torch.Tensor, inp: torch.Tensor, group=None, async_op: bool = False):
    """reduce_scatter_tensor, except on the CPU. gloo implements a reduce-scatter as a clone of
    the input, a ring all-reduce of the clone and a copy of one slice: twice the bytes a
    reduce-scatter needs, all of them summed on every rank, and a full-size clone held. Here
    each rank sends slice j of its input straight to rank j and receives its own slice from
    every other rank ((size-1)/size of the input each way, as a ring reduce-scatter sends;
    (size-1)/size of it held for the receives), then sums the slices: on 4 gloo ranks of one
    host 2.0-3.3x faster than gloo's for 0.7-12 MB (benchmarks/collective_speed.py)."""
    if inp.device.type != "cpu":
        return _REDUCE_SCATTER_TENSOR(out, inp, group=group, async_op=async_op)
    size, me = dist.get_world_size(group), dist.get_rank(group)
    if inp.numel() != out.numel() * size:
        raise ValueError(f"reduce-scatter of {inp.numel()} elements over {size} ranks into "
                         f"{out.numel()}: the input must be size x the output")
    slices = inp.contiguous().view(size, -1)
    received = slices.new_empty(max(size - 1, 0), slices.shape[1])
    ops, parts = [], [None] * size
    parts[me] = slices[me]
    for shift in range(1, size):
        # Shifted pairs: at each shift every rank sends to one peer and receives from another.
        to, frm = (me + shift) % size, (me - shift) % size
        ops.append(dist.P2POp(dist.isend, slices[to], group=group, group_peer=to))
        ops.append(dist.P2POp(dist.irecv, received[shift - 1], group=group, group_peer=frm))
        parts[frm] = received[shift - 1]
    own = me if out.data_ptr() == slices[me].data_ptr() else None
    work = _SumAfterWait(dist.batch_isend_irecv(ops) if ops else [], parts, out, own)
    if async_op:
        return work
    work.wait()
    return None


_REDUCE_SCATTER = _reduce_scatter


class _WaitAll:
    """The handle of an all-gather by direct exchange: ``wait()`` completes every send and
    receive."""

    def __init__(self, works: list):
        self.works = works

    def wait(self, *args, **kwargs) -> bool:
        for work in self.works:
            work.wait(*args, **kwargs)
        self.works = []
        return True

    def is_completed(self) -> bool:
        return all(w.is_completed() for w in self.works)


def _all_gather(out: torch.Tensor, inp: torch.Tensor, group=None, async_op: bool = False):
    """all_gather_into_tensor, except on the CPU. gloo's all-gather is a ring: size-1 steps,
    each waiting for the one before it, so on ranks that share cores every step waits for a
    neighbour to be scheduled again. Here each rank sends its part straight to every other
    rank and receives theirs into their slots of ``out``, all at once: the same bytes each
    way, one step (benchmarks/collective_speed.py). ``inp`` may be ``out``'s own slot."""
    if inp.device.type != "cpu":
        return _ALL_GATHER_TENSOR(out, inp, group=group, async_op=async_op)
    size, me = dist.get_world_size(group), dist.get_rank(group)
    if out.numel() != inp.numel() * size or out.dtype != inp.dtype:
        raise ValueError(f"all-gather of {inp.numel()} {inp.dtype} elements over {size} ranks "
                         f"into {out.numel()} {out.dtype}: the output must be size x the input, "
                         "of its dtype")
    mine = inp.contiguous().view(-1)
    slots = out.view(size, -1)
    if slots[me].data_ptr() != mine.data_ptr():
        slots[me].copy_(mine)
    ops = []
    for shift in range(1, size):
        to, frm = (me + shift) % size, (me - shift) % size
        ops.append(dist.P2POp(dist.isend, slots[me], group=group, group_peer=to))
        ops.append(dist.P2POp(dist.irecv, slots[frm], group=group, group_peer=frm))
    work = _WaitAll(dist.batch_isend_irecv(ops) if ops else [])
    if async_op:
        return work
    work.wait()
    return None


_ALL_GATHER = _all_gather


def all_gather_flat(t: torch.Tensor, axis: Axis, async_op: bool = False):
    """The ranks' flat tensors concatenated in axis order; with ``async_op``, ``(out, work)``:
    ``out`` is valid after ``work.wait()``."""
    t = t.contiguous()
    out = t.new_empty(t.numel() * axis.size)
    work = _ALL_GATHER(out, t.view(-1), group=axis.group, async_op=async_op)
    return (out, work) if async_op else out


def all_gather_in_place(out: torch.Tensor, axis: Axis, async_op: bool = False):
    """All-gather into ``out`` (flat, ``axis.size`` equal slots) whose slot ``axis.index``
    already holds this rank's part: no separate input buffer, as FSDP gathers. Returns the
    work handle with ``async_op``, else None."""
    part = out.numel() // axis.size
    mine = out[axis.index * part:(axis.index + 1) * part]
    return _ALL_GATHER(out, mine, group=axis.group, async_op=async_op)


def reduce_scatter_flat(t: torch.Tensor, axis: Axis, async_op: bool = False,
                        in_place: bool = False):
    """This rank's 1/size slice of the sum of the ranks' flat tensors; with ``async_op``,
    ``(out, work)`` (``t`` must stay untouched until ``work.wait()``). ``in_place`` (CPU):
    the result is written over this rank's own slice of ``t`` (a view of it is returned), for
    a caller whose ``t`` is scratch: no separate result buffer is held."""
    t = t.contiguous().view(-1)
    part = t.numel() // axis.size
    out = t[axis.index * part:(axis.index + 1) * part] if in_place and t.device.type == "cpu" \
        else t.new_empty(part)
    work = _REDUCE_SCATTER(out, t, group=axis.group, async_op=async_op)
    return (out, work) if async_op else out


class _CopyTo(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.axis), None


class _ReduceFrom(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis):
        return _all_reduce(x, axis)

    @staticmethod
    def backward(ctx, g):
        return g, None


class _ReduceFromInPlace(torch.autograd.Function):
    """reduce_from on a tensor nothing else holds (a matmul's fresh output): summed in place."""

    @staticmethod
    def forward(ctx, x, axis):
        ctx.mark_dirty(x)
        dist.all_reduce(x, group=axis.group)
        return x

    @staticmethod
    def backward(ctx, g):
        return g, None


class _AllReduce(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis):
        ctx.axis = axis
        return _all_reduce(x, axis)

    @staticmethod
    def backward(ctx, g):
        return _all_reduce(g, ctx.axis), None


class _GatherAlong(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, axis, dim):
        ctx.axis, ctx.dim = axis, dim
        x = x.movedim(dim, 0).contiguous()
        flat = all_gather_flat(x, axis)
        out = flat.view(axis.size * x.shape[0], *x.shape[1:])
        return out.movedim(0, dim)

    @staticmethod
    def backward(ctx, g):
        return g.chunk(ctx.axis.size, dim=ctx.dim)[ctx.axis.index].contiguous(), None, None


class _DepthGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, shard, axis):
        ctx.axis = axis
        return all_gather_flat(shard, axis)

    @staticmethod
    def backward(ctx, g):
        return reduce_scatter_flat(g, ctx.axis), None


def copy_to(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Identity forward; gradients are summed over ``axis`` in backward."""
    return x if axis.size == 1 else _CopyTo.apply(x, axis)


def reduce_from(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Sum over ``axis`` forward; the gradient passes through unchanged."""
    return x if axis.size == 1 else _ReduceFrom.apply(x, axis)


def reduce_from_(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """reduce_from, in place: for a fresh output that nothing else holds or saved."""
    return x if axis.size == 1 else _ReduceFromInPlace.apply(x, axis)


def all_reduce(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Sum over ``axis`` forward, and sum of the gradients over ``axis`` backward."""
    return x if axis.size == 1 else _AllReduce.apply(x, axis)


def gather_along(x: torch.Tensor, axis: Axis, dim: int) -> torch.Tensor:
    """Concatenate the ranks' tensors along ``dim`` (in axis order); backward keeps own slice."""
    return x if axis.size == 1 else _GatherAlong.apply(x, axis, dim % x.dim())


def depth_gather(shard: torch.Tensor, axis: Axis) -> torch.Tensor:
    """All-gather of flat chunks into one flat tensor; gradients reduce-scattered back."""
    return shard if axis.size == 1 else _DepthGather.apply(shard, axis)


def all_reduce_max(x: torch.Tensor, axis: Axis) -> torch.Tensor:
    """Elementwise max over ``axis``; not differentiable (used for numerical stabilisers)."""
    return x if axis.size == 1 else _all_reduce(x.detach(), axis, dist.ReduceOp.MAX)


def all_reduce_sum_(t: torch.Tensor, axis: Axis) -> torch.Tensor:
    """In-place sum over ``axis`` outside autograd (counts, gradients)."""
    if axis.size > 1:
        dist.all_reduce(t, group=axis.group)
    return t


def all_gather_objects(obj, axis: Axis) -> list:
    """Gather one Python object per rank of ``axis`` (axis order)."""
    if axis.size == 1:
        return [obj]
    out = [None] * axis.size
    dist.all_gather_object(out, obj, group=axis.group)
    return out
