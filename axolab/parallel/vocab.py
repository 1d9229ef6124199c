"""Vocab-parallel operations on lm-head logits that stay sharded over Y.

``model(...).logits`` of a parallelized model has shape ``[B/(D*Z), S, V_pad/Y]``: this rank's
batch shard and its slice ``[y*V_pad/Y, (y+1)*V_pad/Y)`` of the (padded) vocabulary, identical on
all X ranks. Columns at or past the true vocab size are padding: every function here masks them,
so padding never changes a loss, a log-prob or an argmax. :func:`gather_logits` assembles the
full ``[B, S, V]`` tensor for users who need it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import comm
from .grid import Axis, Grid
from .token_checks import TokenChecks


@dataclass(frozen=True)
class VocabShard:
    """Which vocabulary columns this rank's logits hold.

    ``batch``: the ranks the batch is split over (``grid.batch``), which each hold other
    targets; the target-range check of the functions here is summed over them, so a bad target
    on one batch shard makes every rank raise together instead of leaving the others waiting
    in their next collective. Then every rank of ``batch`` must make the same calls. None: no
    other rank has other targets (the ranks of ``axis`` share theirs and raise together).
    """

    axis: Axis
    start: int
    local: int
    vocab_size: int
    batch: Axis | None = None

    def valid_columns(self, device) -> torch.Tensor:
        return torch.arange(self.start, self.start + self.local, device=device) < self.vocab_size


def _masked(logits: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    if shard.start + shard.local <= shard.vocab_size:
        return logits
    return logits.masked_fill(~shard.valid_columns(logits.device), float("-inf"))


class _VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy from vocab-sharded logits [N, V/Y]; saves the local softmax so
    backward is ``softmax - onehot`` without communication."""

    @staticmethod
    def forward(ctx, logits, targets, shard: VocabShard, ignore_index: int):
        logits = _masked(logits, shard)
        row_max = comm.all_reduce_max(logits.max(dim=-1).values, shard.axis)
        shifted = logits - row_max.unsqueeze(-1)
        exp = shifted.exp()
        sum_exp = comm.all_reduce_sum_(exp.sum(dim=-1), shard.axis)
        keep = targets != ignore_index
        local_t = targets - shard.start
        mine = keep & (local_t >= 0) & (local_t < shard.local)
        local_t = local_t.clamp(0, shard.local - 1)
        picked = shifted.gather(-1, local_t.unsqueeze(-1)).squeeze(-1)
        # where(), not multiply: a fully padded slice has -inf logits and -inf * 0 is nan.
        target_logit = comm.all_reduce_sum_(torch.where(mine, picked, 0.0), shard.axis)
        loss = torch.where(keep, sum_exp.log() - target_logit, 0.0)
        ctx.save_for_backward(exp.div_(sum_exp.unsqueeze(-1)), local_t, mine, keep)
        return loss

    @staticmethod
    def backward(ctx, grad):
        softmax, local_t, mine, keep = ctx.saved_tensors
        g = softmax.clone()  # the saved softmax must survive for a second backward
        g.scatter_add_(-1, local_t.unsqueeze(-1), -mine.to(g.dtype).unsqueeze(-1))
        g.mul_(torch.where(keep, grad, 0.0).unsqueeze(-1))
        return g, None, None, None


def _cross_entropy(flat: torch.Tensor, targets: torch.Tensor, shard: VocabShard,
                   ignore_index: int) -> torch.Tensor:
    """Per-row cross-entropy of ``flat [N, V/Y]`` logits."""
    if shard.axis.size == 1 and shard.local == shard.vocab_size:
        # The whole vocabulary is on this rank: torch's own kernel, as the serial model runs
        # it. An out-of-range target (reported by the token checks) counts as ignored until
        # then, as in the sharded kernel, instead of failing inside the kernel.
        bad = _bad_targets(targets, shard, ignore_index)
        return F.cross_entropy(flat, targets.masked_fill(bad, ignore_index),
                               ignore_index=ignore_index, reduction="none")
    return _VocabParallelCrossEntropy.apply(flat, targets, shard, ignore_index)


_NO_IGNORE_INDEX = -(2**62)
"""The ignore_index of :func:`vocab_parallel_logprobs`: no target id is ignored."""


def _bad_targets(targets: torch.Tensor, shard: VocabShard, ignore_index: int) -> torch.Tensor:
    return (targets != ignore_index) & ((targets < 0) | (targets >= shard.vocab_size))


def _check_targets(targets: torch.Tensor, shard: VocabShard, ignore_index: int,
                   checks: TokenChecks | None, count: torch.Tensor | None = None) -> None:
    # Ranks that share these targets (the Y and X groups) agree without a collective; the
    # count is summed over the batch split (shard.batch), so every rank raises together. The
    # loss passes the count it reduced already, with its kept-token count, in one all-reduce.
    bad = _bad_targets(targets, shard, ignore_index)
    what = f"target token id(s) outside the vocabulary [0, {shard.vocab_size})"
    if ignore_index != _NO_IGNORE_INDEX:
        what += f" and not ignore_index={ignore_index}"
    (checks or TokenChecks()).check(
        targets, bad, what, count=count,
        agree=shard.batch if count is None else None)


def vocab_parallel_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, shard: VocabShard,
                                 ignore_index: int = -100,
                                 checks: TokenChecks | None = None) -> torch.Tensor:
    """Per-token cross-entropy (0 where ``targets == ignore_index``), shape of ``targets``.
    A target outside the vocabulary raises ValueError on every rank of ``shard.batch``
    together. checks: queue the target-range check there (a model's
    ``parallel_state(model).checks``) instead of reading it on the host now."""
    _check_targets(targets, shard, ignore_index, checks)
    flat = logits.reshape(-1, logits.shape[-1])
    loss = _cross_entropy(flat, targets.reshape(-1), shard, ignore_index)
    return loss.view(targets.shape)


def vocab_parallel_logprobs(logits: torch.Tensor, targets: torch.Tensor,
                            shard: VocabShard) -> torch.Tensor:
    """log p(target) per position, at least in fp32 (differentiable). A target outside the
    vocabulary raises ValueError on every rank of ``shard.batch`` together."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return -vocab_parallel_cross_entropy(logits, targets, shard, ignore_index=_NO_IGNORE_INDEX)


@torch.no_grad()
def vocab_parallel_argmax(logits: torch.Tensor, shard: VocabShard) -> torch.Tensor:
    """Global argmax over the vocabulary (lowest id on ties, as torch.argmax), shape [...]."""
    logits = _masked(logits.float(), shard)
    best, where = logits.max(dim=-1)
    where = where + shard.start
    if shard.axis.size == 1:
        return where
    values = comm.gather_along(best.unsqueeze(0).contiguous(), shard.axis, dim=0)
    ids = comm.gather_along(where.unsqueeze(0).contiguous(), shard.axis, dim=0)
    winner = values.argmax(dim=0, keepdim=True)  # first maximal slice = lowest vocab id
    return ids.gather(0, winner).squeeze(0)


def gather_logits(logits: torch.Tensor, shard: VocabShard, grid: Grid | None = None,
                  batch_size: int | None = None) -> torch.Tensor:
    """Full-vocabulary logits ``[.., V]`` (padding removed); with ``grid``, also the whole global
    batch along dim 0 (trimmed to ``batch_size`` if the batch was padded). Differentiable."""
    full = comm.gather_along(logits, shard.axis, dim=-1)[..., :shard.vocab_size]
    if grid is not None:
        full = comm.gather_along(full, grid.batch, dim=0)
        if batch_size is not None:
            full = full[:batch_size]
    return full


class ParallelCausalLMLoss:
    """Drop-in for Hugging Face's causal-LM loss on vocab-sharded logits.

    Returns sum of per-token cross-entropy over this rank's kept tokens divided by the number of
    kept tokens in the whole global batch (all-reduced over D*Z), summed over D*Z in forward, so
    the value equals the serial model's mean loss on every rank. Backward leaves each rank with
    the gradient of its own share; :func:`axolab.parallel.sync_gradients` sums them.
    ``num_items_in_batch`` (gradient accumulation) must be the global count.
    """

    def __init__(self, grid: Grid, shard: VocabShard, checks: TokenChecks | None = None):
        self.grid, self.shard = grid, shard
        self.checks = TokenChecks() if checks is None else checks

    def __call__(self, logits, labels, vocab_size=None, num_items_in_batch=None,
                 ignore_index: int = -100, shift_labels=None, **kwargs):
        if shift_labels is None:
            labels = F.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        shift_labels = shift_labels.to(logits.device)
        # One small all-reduce over the batch split gives every rank the kept-token count and the
        # number of invalid labels, so a bad label on one shard fails all ranks together.
        bad = _bad_targets(shift_labels, self.shard, ignore_index).sum()
        counts = torch.stack([(shift_labels != ignore_index).sum(), bad]).double()
        counts = comm.all_reduce_sum_(counts, self.grid.batch)
        _check_targets(shift_labels, self.shard, ignore_index, self.checks, count=counts[1])
        per_token = _cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                   shift_labels.reshape(-1), self.shard, ignore_index)
        if num_items_in_batch is None:
            num_items_in_batch = counts[0].to(per_token.dtype)
        elif torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(per_token.device)
        return comm.reduce_from(per_token.sum(), self.grid.batch) / num_items_in_batch


@torch.no_grad()
def vocab_parallel_logprob_moments(logits: torch.Tensor, shard: VocabShard):
    """Mean and standard deviation of log p(z) under p = softmax(logits), over the whole
    vocabulary, per position (what Min-K%++ normalizes token log-probs by)."""
    logits = _masked(logits.float(), shard)
    row_max = comm.all_reduce_max(logits.max(dim=-1).values, shard.axis).unsqueeze(-1)
    shifted = logits - row_max
    exp = shifted.exp()
    log_z = comm.all_reduce_sum_(exp.sum(dim=-1), shard.axis).log().unsqueeze(-1)
    p = exp / log_z.exp()
    logp = torch.where(p > 0, shifted - log_z, 0.0)  # padding columns: p = 0, no -inf * 0
    mean = comm.all_reduce_sum_((p * logp).sum(-1), shard.axis)
    # Two passes: E[x^2] - E[x]^2 cancels catastrophically in fp32 for peaked distributions.
    var = comm.all_reduce_sum_((p * (logp - mean.unsqueeze(-1)) ** 2).sum(-1), shard.axis)
    return mean, var.sqrt()
