"""The goldfish loss (Hans et al., 2024): leave a pseudo-random 1/k of the tokens out of the loss.

A model never trained to predict a dropped token cannot reproduce a passage verbatim through it.
With the "hash" strategy the drop decision for token i depends only on the h tokens before it,
so every repetition of a passage drops the same tokens (a per-occurrence random mask would let
the model learn them from other copies). "static" drops every k-th position.
"""

from __future__ import annotations

import torch

# Polynomial hash modulo the Mersenne prime 2^31-1: every product of two residues fits in int64,
# and the constants are fixed, so masks are identical across runs, ranks and machines.
_MOD = (1 << 31) - 1
_BASE = 1_000_003
_SALT = 0x5BD1E995 % _MOD
_MIX = 0x2545F491 % _MOD


def goldfish_mask(input_ids: torch.Tensor, k: int, h: int = 13, strategy: str = "hash") -> torch.Tensor:
    """Bool mask, True where the token stays in the loss, shape of ``input_ids`` ([B, S])."""
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
    if input_ids.shape[-1] <= h:
        return keep
    ids = input_ids.long() % _MOD
    # windows[..., i, :] are the h tokens before position i + h
    windows = ids.unfold(-1, h, 1)[..., :-1, :]
    digest = torch.full(windows.shape[:-1], _SALT, dtype=torch.long, device=ids.device)
    for j in range(h):  # Horner's rule, reduced at each step
        digest = (digest * _BASE + windows[..., j]) % _MOD
    keep[..., h:] = ((digest * _MIX) % _MOD) % k != 0
    return keep


def apply_goldfish(labels: torch.Tensor, input_ids: torch.Tensor, k: int, h: int = 13,
                   strategy: str = "hash", ignore_index: int = -100) -> torch.Tensor:
    """Labels with the dropped tokens set to ``ignore_index`` (a new tensor)."""
    return labels.masked_fill(~goldfish_mask(input_ids, k, h, strategy), ignore_index)
