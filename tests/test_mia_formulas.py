"""The membership scores against the reference definitions, restated here in numpy from token
log-probs: Carlini et al. 2021 (zlib: log-perplexity, the mean NLL, over the zlib length in
bytes), Shi et al. 2024 (Min-K%: the int(k * n) lowest log-probs) and Zhang et al. 2024
(Min-K%++), as their published code computes them."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from axolab.memorization import mia_scores
from axolab.memorization.scoring import TokenScores


def reference(lp: np.ndarray, mu: np.ndarray, sigma: np.ndarray, text: str, k: float) -> dict:
    """One sequence's scores, written the way the reference code writes them
    (zjysteven/mink-plus-plus run.py; swj0419/detect-pretrain-code src/run.py)."""
    ll = np.mean(lp)  # minus the loss
    k_length = max(1, int(len(lp) * k))  # the reference averages nothing when int() gives 0
    return {"loss": ll,
            "zlib": ll / len(zlib.compress(bytes(text, "utf-8"))),
            "min_k": np.mean(np.sort(lp)[:k_length]),
            "min_k_plus_plus": np.mean(np.sort((lp - mu) / sigma)[:k_length])}


LENGTHS = [9, 5, 17, 10, 3, 1]  # k=0.2: 1.8, 1.0, 3.4, 2.0, 0.6, 0.2 tokens


def _batch(seed: int = 0):
    rng = np.random.default_rng(seed)
    width = max(LENGTHS)
    lp = np.zeros((len(LENGTHS), width), np.float32)
    mu = np.full_like(lp, -1.0)
    sigma = np.ones_like(lp)
    mask = np.zeros(lp.shape, bool)
    for i, n in enumerate(LENGTHS):
        lp[i, :n] = -rng.exponential(2.0, n)
        mu[i, :n] = -rng.exponential(2.0, n)
        sigma[i, :n] = rng.uniform(0.5, 3.0, n)
        mask[i, :n] = True
        lp[i, n:] = 99.0  # padding that must never count
    texts = [("caf\u00e9 \u2615 " * (i + 1)) + str(n) for i, n in enumerate(LENGTHS)]
    return lp, mu, sigma, mask, texts


@pytest.mark.parametrize("k", [0.2, 0.5, 1.0])
def test_scores_equal_the_reference_definitions(k):
    lp, mu, sigma, mask, texts = _batch()
    got = mia_scores(TokenScores(*(torch.from_numpy(a) for a in (lp, mu, sigma, mask))), texts,
                     k=k)
    for i, n in enumerate(LENGTHS):
        want = reference(lp[i, :n].astype(np.float64), mu[i, :n], sigma[i, :n], texts[i], k)
        for name, value in want.items():
            assert got[name][i] == pytest.approx(value, rel=1e-5), (name, i, n)


def test_rounding_down_is_what_changes_min_k():
    """k=0.2 of 9 tokens is 1 token (int(1.8)), not 2: the two readings give different scores,
    and the one computed is the reference's."""
    lp, mu, sigma, mask, texts = _batch(seed=1)
    got = mia_scores(TokenScores(*(torch.from_numpy(a) for a in (lp, mu, sigma, mask))), texts,
                     k=0.2)
    nine, seventeen = np.sort(lp[0, :9]), np.sort(lp[2, :17])
    assert got["min_k"][0] == pytest.approx(nine[0])
    assert got["min_k"][0] != pytest.approx(nine[:2].mean())  # rounding up would give this
    assert got["min_k"][2] == pytest.approx(seventeen[:3].mean())  # int(3.4)
    assert got["min_k"][2] != pytest.approx(seventeen[:4].mean())


def test_zlib_uses_the_mean_not_the_sum():
    """Two sequences with the same text and the same per-token loss but different token counts
    have the same zlib score (a summed NLL would differ by the length ratio)."""
    lp = torch.tensor([[-2.0, -2.0, -2.0, -2.0], [-2.0, -2.0, 0.0, 0.0]])
    mask = torch.tensor([[True] * 4, [True, True, False, False]])
    ones = torch.ones_like(lp)
    text = "the same text"
    s = mia_scores(TokenScores(lp, -ones, ones, mask), [text, text])
    assert s["zlib"][0] == pytest.approx(s["zlib"][1])
    assert s["zlib"][0] == pytest.approx(-2.0 / len(zlib.compress(text.encode())))
