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


def test_reference_score_is_the_log_likelihood_difference():
    lp, mu, sigma, mask, texts = _batch(3)
    scores = TokenScores(torch.from_numpy(lp), torch.from_numpy(mu), torch.from_numpy(sigma),
                         torch.from_numpy(mask))
    ref_nll = np.random.default_rng(4).uniform(1, 5, len(LENGTHS))
    got = mia_scores(scores, texts, 0.2, reference_nll=ref_nll)
    for i, n in enumerate(LENGTHS):
        # mink-plus-plus run_ref.py: ll - ll_ref, each minus the model's mean token loss
        assert got["reference"][i] == pytest.approx(np.mean(lp[i, :n]) - (-ref_nll[i]),
                                                    abs=1e-6)
    assert "reference" not in mia_scores(scores, texts, 0.2)
    with pytest.raises(ValueError, match="reference_nll has shape \\(2,\\), expected \\(6,\\)"):
        mia_scores(scores, texts, 0.2, reference_nll=ref_nll[:2])


def _fit(model, rows: torch.Tensor, steps: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        batch = rows[torch.randint(0, len(rows), (16,), generator=g)]
        model(input_ids=batch, labels=batch).loss.backward()
        opt.step()
        opt.zero_grad()


def test_reference_attack_beats_the_loss_attack_on_hard_members():
    """The case difficulty calibration exists for (Watson et al., 2022): the members are
    intrinsically hard (random tokens) and the non-members easy (a pattern every model of this
    data predicts), so a low loss marks easy text, not membership. The loss attack ranks them
    backwards; the target-minus-reference log-likelihood finds the members. Both models are
    real, trained here; the reference never saw the members."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from axolab.memorization.mia import mean_token_nll, roc_report
    from axolab.memorization.scoring import token_scores

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(7)
    vocab, n = 48, 24

    def pattern(count):  # counting up from a random start, by a random stride of 1 or 2
        start = torch.randint(0, vocab, (count, 1), generator=g)
        stride = torch.randint(1, 3, (count, 1), generator=g)
        return (start + stride * torch.arange(n)) % vocab

    background, nonmembers = pattern(256), pattern(16)
    members = torch.randint(0, vocab, (16, n), generator=g)
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=n)
    reference, target = LlamaForCausalLM(cfg), LlamaForCausalLM(cfg)
    target.load_state_dict(reference.state_dict())
    _fit(reference, background, 100, seed=1)
    _fit(target, torch.cat([background, members.repeat(2, 1)]), 100, seed=1)
    seqs = torch.cat([members, nonmembers])
    texts = [" ".join(map(str, s.tolist())) for s in seqs]
    with torch.no_grad():
        scores = mia_scores(token_scores(target.eval(), seqs), texts, 0.2,
                            mean_token_nll(token_scores(reference.eval(), seqs)))
    auc = {name: roc_report(s[:16], s[16:])["auc"] for name, s in scores.items()}
    assert auc["loss"] < 0.3, auc  # easy non-members look more like members than members do
    assert auc["reference"] > 0.95, auc
