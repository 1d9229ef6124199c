"""Goldfish token dropping: rate, determinism per passage, hash properties, gradients."""

import pytest
import torch

from axolab.goldfish import MIX, MOD, BASE, SALT, apply_goldfish, goldfish_mask, window_hash
from models import tiny_model


def _reference_hash(window: list[int]) -> int:
    """The same polynomial in Python's unbounded integers: no overflow possible."""
    d = SALT
    for t in window:
        d = (d * BASE + t % MOD) % MOD
    return d * MIX % MOD


def test_drop_rate_is_one_in_k():
    ids = torch.randint(0, 128256, (64, 512), generator=torch.Generator().manual_seed(0))
    for k in (2, 3, 4, 8):
        dropped = 1 - goldfish_mask(ids, k, h=13).float()[:, 12:].mean().item()
        assert abs(dropped - 1 / k) < 0.01, (k, dropped)
    assert goldfish_mask(ids[:, :12], 4, h=13).all(), "no target has 13 tokens ending at it yet"


def test_repeated_passage_gets_the_same_mask_anywhere():
    g = torch.Generator().manual_seed(1)
    passage = torch.randint(0, 50000, (100,), generator=g)
    docs = torch.randint(0, 50000, (3, 300), generator=g)
    docs[0, 7:107] = passage
    docs[2, 180:280] = passage
    m = goldfish_mask(docs, 4, h=13)
    assert torch.equal(m[0, 7 + 12:107], m[2, 180 + 12:280])
    assert not m[0, 7 + 12:107].all(), "the passage should lose some tokens"


def test_hash_is_exact_order_sensitive_and_survives_zeros():
    g = torch.Generator().manual_seed(2)
    windows = torch.randint(0, 2**31 - 2, (200, 13), generator=g)
    windows[:50, 3] = 0  # a zero id must not collapse the hash (a product of ids would)
    got = window_hash(windows)
    assert got.tolist() == [_reference_hash(w) for w in windows.tolist()]  # h=13: no overflow
    assert len(set(got[:50].tolist())) == 50
    flipped = windows.clone()
    flipped[:, [0, 1]] = flipped[:, [1, 0]]
    assert (window_hash(flipped) != got).float().mean() > 0.99  # order matters
    zeros = torch.zeros(1, 400, dtype=torch.long)
    zeros[0, ::7] = torch.arange(1, 59)
    assert 0.1 < 1 - goldfish_mask(zeros, 4).float()[:, 12:].mean() < 0.4


def test_dropped_targets_get_exactly_zero_gradient():
    model = tiny_model("llama", tied=False)
    ids = torch.randint(0, 99, (2, 40), generator=torch.Generator().manual_seed(3))
    labels = apply_goldfish(ids, ids, 3, h=5)
    out = model(input_ids=ids, labels=labels)
    out.logits.retain_grad()
    out.loss.backward()
    dropped = labels[:, 1:] == -100  # logits at t predict the label at t + 1
    assert dropped.any()
    assert (out.logits.grad[:, :-1][dropped] == 0).all()
    assert (out.logits.grad[:, :-1][~dropped].abs().sum(-1) > 0).all()


def test_static_and_errors():
    ids = torch.arange(12).view(1, 12)
    assert goldfish_mask(ids, 3, strategy="static").tolist() == [[True, True, False] * 4]
    assert apply_goldfish(ids, ids, 3, strategy="static").tolist() == \
        [[0, 1, -100, 3, 4, -100, 6, 7, -100, 9, 10, -100]]
    with pytest.raises(ValueError, match="k=1"):
        goldfish_mask(ids, 1)
    with pytest.raises(ValueError, match="strategy .random.: expected one of .hash., .hash-table., .static."):
        goldfish_mask(ids, 2, strategy="random")


def _paper_table_drops(row: list[int], k: int, h: int, table: list[float]) -> list[bool]:
    """The goldfish paper's "hash-table" rule restated in Python integers: target i (i >= h-1)
    is dropped when table[(product of ids i-h+1..i, wrapped to signed int64) mod 1,000,003]
    is below 1/k."""
    drops = [False] * len(row)
    for i in range(h - 1, len(row)):
        p = 1
        for t in row[i - h + 1:i + 1]:
            p *= t
        p %= 1 << 64
        if p >= 1 << 63:
            p -= 1 << 64  # the int64 product wraps like this on every torch device
        drops[i] = table[p % 1_000_003] < 1 / k  # Python's % is never negative, as torch's
    return drops


def test_hash_table_strategy_is_the_papers_rule():
    from axolab.goldfish import TABLE_SEED, TABLE_SIZE, GoldfishRule, hash_table

    # The table: TABLE_SIZE draws of torch's CPU generator seeded as in the paper's code.
    table = hash_table()
    assert table.shape == (1_000_003,) and TABLE_SIZE == 1_000_003 and TABLE_SEED == 2971215073
    assert torch.equal(table, torch.rand(1_000_003,
                                         generator=torch.Generator().manual_seed(2971215073)))
    g = torch.Generator().manual_seed(5)
    # Llama-3-sized ids: 13-token products overflow int64 in most windows.
    ids = torch.randint(0, 128256, (6, 200), generator=g)
    ids[1, 40:60] = 0  # a 0 id zeroes every window holding it: the same draw for all of them
    flat = table.tolist()
    for k, h in ((4, 13), (2, 4), (3, 1)):
        rule = GoldfishRule.build(k, h, "hash-table")
        keep = rule.keep(ids)
        want = [[not d for d in _paper_table_drops(row, k, h, flat)] for row in ids.tolist()]
        assert keep.tolist() == want, (k, h)
        assert keep[:, :h - 1].all()
    # Its rate is 1/k, and unlike axolab's hash it cannot tell a window from its permutation.
    big = torch.randint(1, 50000, (64, 400), generator=g)
    dropped = 1 - goldfish_mask(big, 4, 13, "hash-table")[:, 12:].float().mean().item()
    assert abs(dropped - 0.25) < 0.02, dropped
    swapped = big.clone()
    swapped[:, [100, 101]] = swapped[:, [101, 100]]
    same = goldfish_mask(big, 4, 13, "hash-table") == goldfish_mask(swapped, 4, 13, "hash-table")
    assert same[:, 101:113].all()  # every window holding both ids is permuted, same product
    # apply_goldfish drops exactly those targets.
    labels = apply_goldfish(ids, ids, 4, 13, "hash-table")
    assert torch.equal(labels == -100, ~GoldfishRule.build(4, 13, "hash-table").keep(ids))


def test_document_windows_by_hand():
    from axolab.goldfish import OUTSIDE, document_windows

    ids = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 1]])  # separator 0
    o = OUTSIDE
    assert document_windows(ids, 3, 0).tolist() == [[
        [o, o, 5], [o, 5, 6],  # the row's start: nothing before it
        [5, 6, 0],             # a separator closes its document: the window is that document
        [o, 0, 7],             # the next document opens with the separator, not with 5, 6
        [0, 7, 8], [7, 8, 9], [8, 9, 0], [o, 0, 1]]]


def test_a_short_canary_loses_the_same_tokens_in_every_occurrence():
    """Packed rows as the builder writes them: a 13-token secret between separators, at
    different offsets (one right at a row's start) after different text. With the separator
    every occurrence drops the same of its tokens; windows running across documents give
    each occurrence its own mask (the failure the hash exists to avoid)."""
    g = torch.Generator().manual_seed(5)
    sep, canary = 0, torch.randint(1, 50000, (13,), generator=g)
    rows = torch.randint(1, 50000, (6, 200), generator=g)
    offsets = [0, 1, 17, 40, 99, 150]  # where the separator opening the canary sits
    for row, at in zip(rows, offsets):
        row[at] = sep
        row[at + 1:at + 14] = canary
        row[at + 14] = sep
    spans = [(r, at + 1, at + 15) for r, at in enumerate(offsets)]  # the canary + its close
    for k in (2, 4):
        kept = goldfish_mask(rows, k, h=13, separator=sep)
        masks = {tuple(kept[r, a:b].tolist()) for r, a, b in spans}
        assert len(masks) == 1, masks
        assert not all(next(iter(masks))), "some of the canary's tokens are dropped"
        across = goldfish_mask(rows, k, h=13)  # no separator: the text before leaks in
        assert len({tuple(across[r, a:b].tolist()) for r, a, b in spans}) > 1
    # The rate is still one target in k, the first targets of a row included.
    ids = torch.randint(0, 1000, (64, 512), generator=torch.Generator().manual_seed(6))
    for k in (2, 4, 8):
        dropped = 1 - goldfish_mask(ids, k, h=13, separator=0).float().mean().item()
        assert abs(dropped - 1 / k) < 0.01, (k, dropped)
    # The paper's rule is left as the paper has it.
    assert torch.equal(goldfish_mask(rows, 4, 13, "hash-table", separator=sep),
                       goldfish_mask(rows, 4, 13, "hash-table"))
    with pytest.raises(ValueError, match="separator must be a token id"):
        goldfish_mask(rows, 4, separator=-3)
