"""The goldfish loss (Hans et al., 2024): leave a pseudo-random 1/k of the tokens out of the loss.

A model never trained to predict a dropped token cannot reproduce a passage verbatim through it.
With the "hash" strategy the decision for target i depends only on the h tokens ending at i, so
every repetition of a passage drops the same tokens wherever it recurs (a per-occurrence random
mask would let the model learn them from other copies). "static" drops every k-th position.

Given the separator that starts every document of a packed row (``separator``, what axolab's
training passes), "hash" windows stop at the document: the tokens before the separator that
opened a target's document, and positions before the row's start, are replaced by a constant.
Otherwise the first h - 2 targets of a document would hash the end of whatever preceded that
occurrence, and a short canary (a 13-token secret) would lose different tokens in each of its
repetitions: the per-occurrence mask the hash exists to avoid. Every target then has a window,
the first ones of a row included. Without a separator, a target's window is the h ids ending
at it in the row, and the row's first h - 1 targets are always kept.

The hash is a polynomial (order-sensitive, so permuted windows differ, and a token id of 0 does
not collapse it) modulo the Mersenne prime 2^31-1 in int64: every product of two residues fits,
so nothing overflows at any h, and integer arithmetic gives the same masks on CPU and GPU, on
every rank and grid.

"hash-table" is the rule of the goldfish paper's released code (github.com/ahans30/goldfish-loss,
``apply_goldfish``), kept so that runs can be set beside the paper's models: the product of the
window's ids (int64, wrapping on overflow) modulo 1,000,003 indexes a table of uniform draws
seeded with 2971215073, and the target is dropped where the draw is below 1/k. The product is
order-blind and a 0 id zeroes it, which the "hash" rule avoids. The paper draws the table with
the training device's generator; axolab draws it with torch's CPU generator (the same on every
machine, so a mask does not depend on where it is computed) and moves it to the device, so the
masks equal the paper's where its table was drawn on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MOD = (1 << 31) - 1
BASE = 1_000_003
SALT = 0x5BD1E995 % MOD
MIX = 0x2545F491 % MOD
TABLE_SIZE = 1_000_003
"""Entries of the "hash-table" strategy's table (a prime, as in the goldfish paper's code)."""
TABLE_SEED = 2971215073
"""Seed of the "hash-table" strategy's table (the 47th Fibonacci number, as in that code)."""
STRATEGIES = ("hash", "hash-table", "static")
OUTSIDE = -1
"""Stands for every window position outside the target's document (token ids are >= 0)."""


def window_hash(windows: torch.Tensor) -> torch.Tensor:
    """Hash in [0, MOD) of each window along the last dim (int64 arithmetic, no overflow)."""
    ids = windows.long() % MOD
    digest = torch.full(ids.shape[:-1], SALT, dtype=torch.long, device=ids.device)
    for j in range(ids.shape[-1]):  # Horner's rule, reduced at each step: values stay < 2^62
        digest = (digest * BASE + ids[..., j]) % MOD
    return (digest * MIX) % MOD


def document_windows(input_ids: torch.Tensor, h: int, separator: int) -> torch.Tensor:
    """``[..., S, h]``: the h ids ending at each position, those before the separator that
    opened the position's document (the last separator before it) or before the row's start
    replaced by OUTSIDE. A separator's own window is the document it closes."""
    S = input_ids.shape[-1]
    pos = torch.arange(S, device=input_ids.device)
    padded = torch.nn.functional.pad(input_ids.long(), (h - 1, 0), value=OUTSIDE)
    windows = padded.unfold(-1, h, 1)  # window i covers positions i - h + 1 .. i
    seen = torch.where(input_ids == separator, pos, -1).cummax(dim=-1).values
    opened = torch.nn.functional.pad(seen[..., :-1], (1, 0), value=-1)  # strictly before i
    covered = pos[:, None] - (h - 1) + torch.arange(h, device=input_ids.device)  # [S, h]
    return windows.masked_fill(covered < opened[..., None], OUTSIDE)


def hash_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """The "hash-table" strategy's TABLE_SIZE uniform draws in [0, 1), drawn on CPU."""
    g = torch.Generator().manual_seed(TABLE_SEED)
    return torch.rand(TABLE_SIZE, generator=g).to(device)


def table_index(windows: torch.Tensor) -> torch.Tensor:
    """Table index of each window along the last dim: the int64 product of its ids (wrapping
    on overflow, as the paper's code computes it) modulo TABLE_SIZE, in [0, TABLE_SIZE)."""
    return windows.long().prod(dim=-1) % TABLE_SIZE  # torch's % takes the divisor's sign


@dataclass(frozen=True)
class GoldfishRule:
    """Which targets a goldfish run leaves out of its loss. Build it once per run with
    ``GoldfishRule.build`` (the "hash-table" table is drawn there), then call ``keep``."""

    k: int
    """One target in k is dropped (k >= 2)."""
    h: int = 13
    """Context width: the hash strategies decide target i from the h tokens ending at i."""
    strategy: str = "hash"
    """"hash" (axolab's order-sensitive hash), "hash-table" (the paper's code) or "static"
    (every k-th position)."""
    table: torch.Tensor | None = field(default=None, repr=False, compare=False)
    """The "hash-table" strategy's table (``hash_table``); None for the others."""
    separator: int | None = None
    """The token that starts every document of a row: "hash" windows stop at it (see the
    module docstring). None: windows run across documents. "hash-table" ignores it, to stay
    the paper's rule."""

    @classmethod
    def build(cls, k: int, h: int = 13, strategy: str = "hash",
              device: torch.device | str = "cpu",
              separator: int | None = None) -> "GoldfishRule":
        if k < 2:
            raise ValueError(f"goldfish k={k} must be at least 2 (k=1 would drop every token)")
        if strategy not in STRATEGIES:
            raise ValueError(f"goldfish strategy {strategy!r}: expected one of "
                             + ", ".join(map(repr, STRATEGIES)))
        if h < 1:
            raise ValueError(f"goldfish context h={h} must be at least 1")
        if separator is not None and separator < 0:
            raise ValueError(f"goldfish separator must be a token id (>= 0), got {separator}")
        return cls(k, h, strategy, hash_table(device) if strategy == "hash-table" else None,
                   separator)

    def keep(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Bool keep-mask over target positions, shape of ``input_ids`` ([..., S]): False where
        the token at that position is dropped from the loss."""
        if self.strategy == "static":
            pos = torch.arange(input_ids.shape[-1], device=input_ids.device)
            return ((pos + 1) % self.k != 0).expand_as(input_ids).clone()
        if self.strategy == "hash" and self.separator is not None:
            return window_hash(document_windows(input_ids, self.h, self.separator)) \
                * self.k >= MOD
        keep = torch.ones_like(input_ids, dtype=torch.bool)
        if input_ids.shape[-1] < self.h:
            return keep  # no target has h tokens ending at it yet
        windows = input_ids.unfold(-1, self.h, 1)  # window j ends at position j + h - 1
        if self.strategy == "hash-table":
            keep[..., self.h - 1:] = ~(self.table[table_index(windows)] < 1 / self.k)
        else:  # "hash / MOD < 1/k" in integers: hash * k < MOD
            keep[..., self.h - 1:] = window_hash(windows) * self.k >= MOD
        return keep

    def labels(self, labels: torch.Tensor, input_ids: torch.Tensor,
               ignore_index: int = -100) -> torch.Tensor:
        """``labels`` with the dropped targets set to ``ignore_index`` (a new tensor)."""
        return labels.masked_fill(~self.keep(input_ids), ignore_index)


def goldfish_mask(input_ids: torch.Tensor, k: int, h: int = 13, strategy: str = "hash",
                  separator: int | None = None) -> torch.Tensor:
    """Bool keep-mask over target positions (``GoldfishRule.keep`` of a rule built here)."""
    return GoldfishRule.build(k, h, strategy, input_ids.device, separator).keep(input_ids)


def apply_goldfish(labels: torch.Tensor, input_ids: torch.Tensor, k: int, h: int = 13,
                   strategy: str = "hash", ignore_index: int = -100) -> torch.Tensor:
    """Labels with the dropped tokens set to ``ignore_index`` (a new tensor)."""
    return GoldfishRule.build(k, h, strategy, input_ids.device).labels(labels, input_ids,
                                                                       ignore_index)
