"""Extraction against transformers' own greedy generate: the fast path, the decoding path, and
the same results from parallelized models on several grids."""

import copy

import pytest
import torch

from axolab.memorization import exact_match, extraction_curve, greedy_generate
from models import tiny_model

PREFIX, SUFFIX = 8, 12


def _hf_greedy(model, prompts, n):
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    out = model.generate(prompts, do_sample=False, max_new_tokens=n, min_new_tokens=n,
                         attention_mask=torch.ones_like(prompts))
    return out[:, prompts.shape[1]:]


def _sequences(model, n=24, seed=0):
    """Half the sequences are the model's own greedy continuations (reproduced by construction);
    the rest have one suffix token changed at a known position."""
    g = torch.Generator().manual_seed(seed)
    prompts = torch.randint(0, model.config.vocab_size, (n, PREFIX), generator=g)
    suffix = _hf_greedy(model, prompts, SUFFIX)
    seqs = torch.cat([prompts, suffix], 1)
    where = torch.randint(0, SUFFIX, (n,), generator=g)
    for i in range(n // 2, n):
        seqs[i, PREFIX + where[i]] = (seqs[i, PREFIX + where[i]] + 1) % model.config.vocab_size
    return seqs, where


def test_fast_path_and_decoding_match_hf_generate():
    model = tiny_model("llama", tied=False).eval()
    seqs, where = _sequences(model)
    res = exact_match(model, seqs, PREFIX, SUFFIX, batch_size=7)
    hf = _hf_greedy(model, seqs[:, :PREFIX], SUFFIX)
    truth = seqs[:, PREFIX:]
    assert torch.equal(res.generated, hf)
    assert torch.equal(res.exact, (hf == truth).all(1))
    lead = torch.cumprod((hf == truth).int(), 1).sum(1)
    assert torch.equal(res.matched_prefix, lead)
    assert torch.allclose(res.token_match_rate, (hf == truth).float().mean(1))
    n = len(seqs)
    assert res.exact[: n // 2].all() and not res.exact[n // 2:].any()
    assert torch.equal(res.matched_prefix[n // 2:], where[n // 2:])
    # the fast path alone gives the same exact/matched_prefix
    fast = exact_match(model, seqs, PREFIX, SUFFIX, generate=False)
    assert torch.equal(fast.exact, res.exact) and torch.equal(fast.matched_prefix, lead)
    assert torch.equal(greedy_generate(model, seqs[:, :PREFIX], SUFFIX), hf)


def test_extraction_curve_is_k_extractability():
    """Carlini et al.'s definition restated with transformers' generate: for each k, is the
    fixed suffix (the last SUFFIX tokens) greedy decoding's continuation of the k tokens before
    it? Sequences are 16 random tokens and the model's own continuation of all 16, so they are
    extractable at k = 16 by construction, and at shorter k only where a shorter context leads
    greedy decoding to the same tokens; a quarter have one suffix token changed."""
    model = tiny_model("llama", tied=False).eval()
    g = torch.Generator().manual_seed(3)
    context = torch.randint(0, model.config.vocab_size, (24, 16), generator=g)
    seqs = torch.cat([context, _hf_greedy(model, context, SUFFIX)], 1)
    for i in range(18, 24):
        seqs[i, -1 - i % SUFFIX] = (seqs[i, -1 - i % SUFFIX] + 1) % model.config.vocab_size
    ks = [1, 2, 4, 16]
    curve = extraction_curve(model, seqs, ks, SUFFIX, batch_size=5)
    truth = seqs[:, -SUFFIX:]
    expected = {k: float((_hf_greedy(model, seqs[:, -SUFFIX - k:-SUFFIX], SUFFIX) == truth)
                         .all(1).float().mean()) for k in ks}
    assert curve == pytest.approx(expected, abs=1e-12)
    assert curve[16] == pytest.approx(0.75) and curve[1] < 0.75  # context matters here
    with pytest.raises(ValueError, match="fewer than the longest prompt \\+ suffix_len = "
                                         "16 \\+ 12 = 28"):
        extraction_curve(model, seqs[:, 1:], ks, SUFFIX)


def test_bad_shapes_are_refused():
    model = tiny_model("llama", tied=False)
    with pytest.raises(ValueError, match="fewer than prefix_len \\+ suffix_len = 20"):
        exact_match(model, torch.zeros(2, 10, dtype=torch.long), PREFIX, SUFFIX)


def test_beam_search_is_transformers_beam_search():
    from axolab.memorization.adversaries import beam_search

    model = tiny_model("llama", tied=False).eval()
    prompts = torch.randint(0, 99, (6, PREFIX), generator=torch.Generator().manual_seed(4))
    model.generation_config.eos_token_id = None
    beams = {}
    for b in (1, 2, 4):
        hf = model.generate(prompts, num_beams=b, do_sample=False, max_new_tokens=SUFFIX,
                            min_new_tokens=SUFFIX, pad_token_id=0,
                            attention_mask=torch.ones_like(prompts))[:, PREFIX:]
        beams[b] = beam_search(model, prompts, SUFFIX, b, batch_size=4)
        assert torch.equal(beams[b], hf), b
    assert torch.equal(beams[1], _hf_greedy(model, prompts, SUFFIX))
    assert not torch.equal(beams[4], beams[1])  # a wider search finds other continuations


def test_sampling_draws_from_the_tempered_top_k_distribution():
    from axolab.memorization.adversaries import sample

    model = tiny_model("llama", tied=False).eval()
    prompts = torch.randint(0, 99, (3, PREFIX), generator=torch.Generator().manual_seed(5))
    # top_k=1 leaves one token: the greedy continuation, whatever the draws.
    assert torch.equal(sample(model, prompts, SUFFIX, 2, top_k=1)[:, 1],
                       _hf_greedy(model, prompts, SUFFIX))
    # First tokens of 3000 samples follow softmax(logits / T) over the top k, as counted.
    with torch.no_grad():
        logits = model(input_ids=prompts[:1]).logits[0, -1].double()
    for top_k, temperature in ((0, 1.0), (5, 0.7)):
        first = sample(model, prompts[:1], 1, 3000, top_k=top_k, temperature=temperature,
                       seed=top_k)[0, :, 0]
        p = torch.softmax(logits / temperature, -1)
        if top_k:
            keep = torch.zeros_like(p, dtype=torch.bool)
            keep[logits.argsort(descending=True)[:top_k]] = True
            p = torch.where(keep, p, 0) / p[keep].sum()
        freq = torch.bincount(first, minlength=len(p)).double() / len(first)
        assert (freq[p == 0] == 0).all()
        assert (freq - p).abs().max() < 4 * (p * (1 - p) / len(first)).sqrt().max() + 1e-3
    # The draws depend on the seed and the prompt's position only, not on the batching.
    a = sample(model, prompts, SUFFIX, 3, top_k=8, seed=1, batch_size=1)
    assert torch.equal(a, sample(model, prompts, SUFFIX, 3, top_k=8, seed=1, batch_size=2))
    assert not torch.equal(a, sample(model, prompts, SUFFIX, 3, top_k=8, seed=2))
    with pytest.raises(ValueError, match="temperature=0 must be positive"):
        sample(model, prompts, SUFFIX, 3, temperature=0)


def parallel_extraction(shape):
    from axolab.parallel import Grid, parallelize

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    if grid is None:
        return None
    serial = tiny_model("qwen2", tied=True).eval()
    seqs, _ = _sequences(serial, n=10)
    want = exact_match(serial, seqs, PREFIX, SUFFIX)
    model = parallelize(copy.deepcopy(serial), grid).eval()
    got = exact_match(model, seqs, PREFIX, SUFFIX, batch_size=4)
    out = {k: bool(torch.equal(getattr(got, k), getattr(want, k)))
           for k in ("exact", "matched_prefix", "token_match_rate", "generated")}
    from axolab.memorization.adversaries import beam_search, sample

    prompts = seqs[:, :PREFIX]
    out["beam"] = bool(torch.equal(beam_search(model, prompts, SUFFIX, 3, batch_size=4),
                                   beam_search(serial, prompts, SUFFIX, 3)))
    out["sample"] = bool(torch.equal(sample(model, prompts, SUFFIX, 2, top_k=10, batch_size=4),
                                     sample(serial, prompts, SUFFIX, 2, top_k=10)))
    return out


@pytest.mark.parametrize("shape", [(2, 1, 2, 2), (1, 2, 2, 1), (1, 1, 4, 2)])
def test_parallel_model_gives_the_serial_results(pool8, shape):
    results = pool8.run(parallel_extraction, shape)
    # None: a pool rank outside the grid; every rank of the grid must answer
    assert sum(r is not None for r in results) == shape[0] * shape[1] * shape[2] * shape[3], results
    for rank, r in enumerate(results):
        if r is not None:
            assert all(r.values()), f"rank {rank}: {r}"


def test_row_extraction_lengths_follow_the_published_probes():
    import numpy as np

    from axolab.config import EvalConfig
    from axolab.memorization.row_extraction import row_lengths, sample_rows

    assert row_lengths(2049, EvalConfig()) == (32, 32)  # Pythia: 32 prompt, 32 to reproduce
    goldfish = EvalConfig(row_prefix_len=0, row_suffix_len=50)  # all but the last 50 tokens
    assert row_lengths(128, goldfish) == (78, 50)
    with pytest.raises(ValueError, match="do not fit rows of 40 tokens"):
        row_lengths(40, EvalConfig())
    assert sample_rows(10, 20, 0).tolist() == list(range(10))
    picked = sample_rows(1000, 50, 3)
    assert len(set(picked.tolist())) == 50 and (np.diff(picked) > 0).all()
    assert picked.tolist() == sample_rows(1000, 50, 3).tolist() != sample_rows(1000, 50, 4).tolist()
