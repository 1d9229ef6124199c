"""Goldfish token dropping: rate, determinism per passage, static variant, label masking."""

import pytest
import torch

from axolab.goldfish import apply_goldfish, goldfish_mask


def test_drop_rate_and_context_determinism():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50000, (64, 256), generator=g)
    for k in (2, 4, 8):
        dropped = 1 - goldfish_mask(ids, k, h=13).float()[:, 13:].mean().item()
        assert abs(dropped - 1 / k) < 0.01, (k, dropped)
    # A passage repeated at another offset and in another row drops the same tokens.
    passage = ids[0, :100]
    other = torch.randint(0, 50000, (2, 256), generator=g)
    other[1, 50:150] = passage
    m_ref = goldfish_mask(passage[None], 4, h=13)[0]
    m_other = goldfish_mask(other, 4, h=13)[1, 50:150]
    assert torch.equal(m_ref[13:], m_other[13:])
    assert goldfish_mask(ids[:, :10], 4, h=13).all(), "no full context yet: nothing dropped"


def test_static_and_labels():
    ids = torch.arange(12).view(1, 12)
    assert goldfish_mask(ids, 3, strategy="static").tolist() == [[True, True, False] * 4]
    labels = apply_goldfish(ids, ids, 3, strategy="static")
    assert labels.tolist() == [[0, 1, -100, 3, 4, -100, 6, 7, -100, 9, 10, -100]]
    with pytest.raises(ValueError, match="k=1"):
        goldfish_mask(ids, 1)
