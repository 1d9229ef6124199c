"""Token scores, membership-inference scores and exposure against direct computations."""

import copy
import math
import zlib

import numpy as np
import pytest
import torch

from axolab.memorization import exposure, mia_scores, roc_report, token_scores
from axolab.memorization.scoring import TokenScores
from models import rel_err, tiny_model


def _ragged(vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (int(n),), generator=g).tolist() for n in (5, 9, 2, 12, 7)]


def test_token_scores_match_the_model_logits():
    model = tiny_model("llama", tied=False).eval()
    seqs = _ragged(99)
    ts = token_scores(model, seqs, batch_size=2)
    for i, s in enumerate(seqs):
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=torch.tensor([s])).logits[0, :-1], -1)
        n = len(s) - 1
        assert ts.mask[i].sum() == n
        want = logp.gather(-1, torch.tensor(s[1:])[:, None])[:, 0]
        assert torch.allclose(ts.logprob[i, :n], want, atol=1e-6)
        mean = (logp.exp() * logp).sum(-1)
        assert torch.allclose(ts.mean[i, :n], mean, atol=1e-6)
        assert torch.allclose(ts.std[i, :n], (logp.exp() * (logp - mean[:, None]) ** 2)
                              .sum(-1).sqrt(), atol=1e-5)
    assert torch.allclose(ts.sequence_logprob()[0], ts.logprob[0, :4].sum())


def parallel_scores(shape):
    from axolab.parallel import Grid, parallelize

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    if grid is None:
        return None
    serial = tiny_model("llama", tied=True).eval()  # vocab 99: padded when y > 1
    want = token_scores(serial, _ragged(99))
    got = token_scores(parallelize(copy.deepcopy(serial), grid).eval(), _ragged(99), batch_size=3)
    m = want.mask
    return {k: rel_err(getattr(got, k)[m], getattr(want, k)[m]) for k in ("logprob", "mean", "std")}


@pytest.mark.parametrize("shape", [(2, 1, 2, 2), (1, 1, 4, 1)])
def test_parallel_token_scores_equal_serial(pool8, shape):
    results = pool8.run(parallel_scores, shape)
    # None: a pool rank outside the grid; every rank of the grid must answer
    assert sum(r is not None for r in results) == shape[0] * shape[1] * shape[2] * shape[3], results
    for r in results:
        if r is not None:
            assert all(v < 2e-5 for v in r.values()), r


def test_mia_scores_by_hand():
    lp = torch.tensor([[-1.0, -3.0, -2.0, -4.0, 0.0], [-0.5, -0.5, -6.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 0, 0]], dtype=torch.bool)
    mean = torch.full_like(lp, -2.0)
    std = torch.full_like(lp, 2.0)
    texts = ["hello hello hello", "abc"]
    s = mia_scores(TokenScores(lp, mean, std, mask), texts, k=0.5)
    assert s["loss"].tolist() == pytest.approx([-10 / 4, -7 / 3])
    # zlib: the mean NLL (log-perplexity) over the zlib length, not the summed NLL.
    assert s["zlib"][0] == pytest.approx(-(10 / 4) / len(zlib.compress(texts[0].encode())))
    # k=0.5 of 4 tokens is 2; of 3 tokens int(1.5) = 1 (rounded down, as the reference code).
    assert s["min_k"].tolist() == pytest.approx([(-4 - 3) / 2, -6])
    assert s["min_k_plus_plus"].tolist() == pytest.approx([((-4 + 2) + (-3 + 2)) / 4,
                                                           (-6 + 2) / 2])


def test_roc_report():
    members, others = np.array([5.0, 6.0, 7.0]), np.array([1.0, 2.0, 3.0, 5.5])
    r = roc_report(members, others, max_fpr=0.2)
    assert r["auc"] == pytest.approx(11 / 12)  # 11 of 12 member/non-member pairs ordered
    # no false positive allowed (1 of 4 would be 0.25): threshold above 5.5 keeps 6 and 7
    assert r["tpr_at_0.2_fpr"] == pytest.approx(2 / 3)
    assert roc_report(members, others, max_fpr=0.25)["tpr_at_0.25_fpr"] == 1.0
    with pytest.raises(ValueError, match="need members and non-members"):
        roc_report(members, np.array([]))


def test_exposure_rank_and_extrapolation():
    rng = np.random.default_rng(0)
    cands = rng.normal(50.0, 4.0, 20000)
    e = exposure(30.0, cands)  # far below every candidate
    assert e["rank"] == 1 and e["exposure"] == pytest.approx(math.log2(20001))
    # 5 sigma below the mean of a normal: tail 2.87e-7, exposure ~21.7 bits
    tail = 0.5 * math.erfc(5 / math.sqrt(2))
    assert e["exposure_extrapolated"] == pytest.approx(-math.log2(tail), rel=0.05)
    mid = exposure(50.0, cands)
    assert abs(mid["rank"] - 10000) < 400 and mid["exposure"] == pytest.approx(1.0, abs=0.1)
    assert mid["exposure_extrapolated"] == pytest.approx(1.0, abs=0.1)
