"""Verbatim extraction: does the model continue a sequence's prefix with its true suffix?

Greedy decoding reproduces the truth up to suffix position j exactly when the teacher-forced
argmax equals the truth at every position before j, so ``exact`` and ``matched_prefix`` come
from ONE forward pass over prefix + suffix. Only ``token_match_rate`` (Pythia's memorization
score: the fraction of suffix positions where the greedy continuation equals the truth) needs the
real continuation once the first mismatch sends decoding elsewhere; it is generated only for the
sequences that are not reproduced whole.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axolab.parallel import find_parallel_state

from .decode import greedy_generate, teacher_forced_argmax


@dataclass
class ExtractionResult:
    """Per-sequence results, in input order (tensors on CPU)."""

    exact: torch.Tensor           # [N] bool: the whole suffix reproduced
    matched_prefix: torch.Tensor  # [N] leading suffix tokens reproduced before the first miss
    token_match_rate: torch.Tensor  # [N] fraction of suffix positions matched by greedy decoding
    generated: torch.Tensor       # [N, suffix_len] the greedy continuation


def _check(sequences: torch.Tensor, prefix_len: int, suffix_len: int) -> None:
    if sequences.dim() != 2:
        raise ValueError(f"sequences must be [N, length], got shape {tuple(sequences.shape)}")
    if prefix_len < 1 or suffix_len < 1:
        raise ValueError(f"prefix_len={prefix_len} and suffix_len={suffix_len} must be >= 1")
    if sequences.shape[1] < prefix_len + suffix_len:
        raise ValueError(f"sequences have {sequences.shape[1]} tokens, fewer than prefix_len + "
                         f"suffix_len = {prefix_len + suffix_len}")


def _grid(model):
    state = find_parallel_state(model)
    return None if state is None else state.grid


def _shard(model, t: torch.Tensor, pad_value: int = 0) -> torch.Tensor:
    grid = _grid(model)
    return t if grid is None else grid.shard_batch(t, pad_value=pad_value)


def _gather(model, t: torch.Tensor, n: int) -> torch.Tensor:
    from axolab.parallel import comm

    grid = _grid(model)
    if grid is None:
        return t
    return comm.gather_along(t.contiguous(), grid.batch, dim=0)[:n]


@torch.no_grad()
def exact_match(model, sequences: torch.Tensor, prefix_len: int, suffix_len: int,
                batch_size: int = 64, generate: bool = True) -> ExtractionResult:
    """Prompt with each sequence's first ``prefix_len`` tokens and compare the next
    ``suffix_len`` greedy tokens with the truth.

    On a parallelized model every rank passes the same ``sequences``; each rank computes its
    batch shard and all ranks return the whole result. ``generate=False`` skips decoding:
    ``token_match_rate`` and ``generated`` then cover only what the fast path determines (the
    matched prefix; -1 after the first miss).
    """
    _check(sequences, prefix_len, suffix_len)
    device = _grid(model).device if _grid(model) is not None else next(model.parameters()).device
    seqs = sequences[:, :prefix_len + suffix_len].long()
    truth = seqs[:, prefix_len:]
    parts = []
    for start in range(0, len(seqs), batch_size):
        chunk = seqs[start:start + batch_size]
        local = _shard(model, chunk).to(device)
        pred = teacher_forced_argmax(model, local)[:, prefix_len - 1:-1].cpu()
        parts.append(_gather(model, pred, len(chunk)))
    pred = torch.cat(parts)
    correct = pred == truth
    matched = torch.where(correct.all(1), suffix_len, (~correct).int().argmax(1))
    exact = matched == suffix_len
    generated = torch.where(torch.arange(suffix_len) < matched[:, None], truth, -1)
    todo = torch.nonzero(~exact).flatten()
    if generate and len(todo):
        for start in range(0, len(todo), batch_size):
            idx = todo[start:start + batch_size]
            prompts = _shard(model, seqs[idx, :prefix_len]).to(device)
            cont = greedy_generate(model, prompts, suffix_len).cpu()
            generated[idx] = _gather(model, cont, len(idx))
    rate = (generated == truth).float().mean(1) if generate else matched.float() / suffix_len
    return ExtractionResult(exact=exact, matched_prefix=matched, token_match_rate=rate,
                            generated=generated)


def extraction_curve(model, sequences: torch.Tensor, prefix_lens: list[int], suffix_len: int,
                     batch_size: int = 64) -> dict[int, float]:
    """k-extractability (Carlini et al., "Quantifying Memorization Across Neural Language
    Models", ICLR 2023, Definition 3.1): a string s is extractable with k tokens of context when
    some k-token string p with [p || s] in the training data makes greedy decoding produce s.
    As in their context-length experiment, the suffix s is fixed (each sequence's last
    ``suffix_len`` tokens), the prompt is the k tokens just before it, and every k is measured on
    the same sequences, so the curve varies the context alone. ``sequences`` is
    [N, length] with length >= max(prefix_lens) + suffix_len; returns {k: share extracted}.
    """
    if not prefix_lens:
        return {}
    if sequences.dim() != 2:
        raise ValueError(f"sequences must be [N, length], got shape {tuple(sequences.shape)}")
    need = max(prefix_lens) + suffix_len
    if sequences.shape[1] < need:
        raise ValueError(f"sequences have {sequences.shape[1]} tokens, fewer than the longest "
                         f"prompt + suffix_len = {max(prefix_lens)} + {suffix_len} = {need}: "
                         "every prefix length is measured on the same suffixes")
    length = sequences.shape[1]
    return {k: float(exact_match(model, sequences[:, length - k - suffix_len:], k, suffix_len,
                                 batch_size, generate=False).exact.float().mean())
            for k in prefix_lens}
