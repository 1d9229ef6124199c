"""The goldfish loss (Hans et al., 2024): leave a pseudo-random 1/k of the tokens out of the loss.

A model never trained to predict a dropped token cannot reproduce a passage verbatim through it.
With the "hash" strategy the decision for target i depends only on the h tokens ending at i, so
every repetition of a passage drops the same tokens wherever it recurs (a per-occurrence random
mask would let the model learn them from other copies). "static" drops every k-th position.

The hash is a polynomial (order-sensitive, so permuted windows differ, and a token id of 0 does
not collapse it) modulo the Mersenne prime 2^31-1 in int64: every product of two residues fits,
so nothing overflows at any h, and integer arithmetic gives the same masks on CPU and GPU, on
every rank and grid.
"""

from __future__ import annotations

import torch

MOD = (1 << 31) - 1
BASE = 1_000_003
SALT = 0x5BD1E995 % MOD
MIX = 0x2545F491 % MOD


def window_hash(windows: torch.Tensor) -> torch.Tensor:
    """Hash in [0, MOD) of each window along the last dim (int64 arithmetic, no overflow)."""
    ids = windows.long() % MOD
    digest = torch.full(ids.shape[:-1], SALT, dtype=torch.long, device=ids.device)
    for j in range(ids.shape[-1]):  # Horner's rule, reduced at each step: values stay < 2^62
        digest = (digest * BASE + ids[..., j]) % MOD
    return (digest * MIX) % MOD


def goldfish_mask(input_ids: torch.Tensor, k: int, h: int = 13, strategy: str = "hash") -> torch.Tensor:
    """Bool keep-mask over target positions, shape of ``input_ids`` ([..., S]): False where the
    token at that position is dropped from the loss."""
    if k < 2:
        raise ValueError(f"goldfish k={k} must be at least 2 (k=1 would drop every token)")
    if strategy == "static":
        pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
        return ((pos + 1) % k != 0).expand_as(input_ids).clone()
    if strategy != "hash":
        raise ValueError(f"goldfish strategy {strategy!r}: expected 'hash' or 'static'")
    if h < 1:
        raise ValueError(f"goldfish context h={h} must be at least 1")
    keep = torch.ones_like(input_ids, dtype=torch.bool)
    if input_ids.shape[-1] < h:
        return keep  # no target has h tokens ending at it yet
    hashed = window_hash(input_ids.unfold(-1, h, 1))  # window j ends at position j + h - 1
    # "hash / MOD < 1/k" in integers: hash * k < MOD
    keep[..., h - 1:] = hashed * k >= MOD
    return keep


def apply_goldfish(labels: torch.Tensor, input_ids: torch.Tensor, k: int, h: int = 13,
                   strategy: str = "hash", ignore_index: int = -100) -> torch.Tensor:
    """Labels with the dropped tokens set to ``ignore_index`` (a new tensor)."""
    return labels.masked_fill(~goldfish_mask(input_ids, k, h, strategy), ignore_index)
