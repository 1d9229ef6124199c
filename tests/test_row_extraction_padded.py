"""Row extraction on padded rows: the goldfish paper's probe prompts with each row's own
document minus its last tokens and checks those tokens; rows too short are counted, and a
split with none long enough is recorded with its reason. Checked against the dataset's own
rows and lengths and the plain Hugging Face model."""

import json

import numpy as np
import pytest
import torch

from axolab.data import build, recipe_from_dict
from axolab.memorization import EvalConfig, evaluate

SEQ_LEN, SUFFIX = 64, 8


def _recipe(background: bool) -> dict:
    return {"name": "p", "corpus": {"embedded": "austen", "max_documents": 300},
            "tokenizer": {"train_bpe_vocab": 300},
            "canaries": [{"kind": "random", "name": "r", "length": 10, "repetitions": [1, 3],
                          "per_count": 2}],
            "packing": {"seq_len": SEQ_LEN, "validation_fraction": 0.0, "rows": "padded",
                        "background": background}}


@pytest.fixture(scope="module")
def padded(tmp_path_factory):
    base = tmp_path_factory.mktemp("rows")
    return {bg: build(recipe_from_dict(_recipe(bg), base), base / f"bg-{bg}", progress=False)
            for bg in (True, False)}


def _rows(data):
    import datasets

    ds = datasets.load_from_disk(str(data / "train"))
    return np.asarray(ds["input_ids"], dtype=np.int64), np.asarray(ds["length"])


def _model(data, constant=False):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    vocab = len(AutoTokenizer.from_pretrained(str(data / "tokenizer")))
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=64, max_position_embeddings=2 * SEQ_LEN))
    if constant:  # every logit 0: greedy always picks token 0 (argmax takes the first)
        with torch.no_grad():
            model.lm_head.weight.zero_()
    model.generation_config.eos_token_id = None
    return model.float().eval()


def test_goldfish_probe_prompts_with_each_document_minus_its_suffix(padded):
    from axolab.memorization.row_extraction import score_rows

    data = padded[True]
    ids, lengths = _rows(data)
    eligible = np.flatnonzero(lengths >= SUFFIX + 1)
    assert 0 < len(eligible) < len(ids)  # some documents are too short
    assert (lengths[eligible] < SEQ_LEN).sum() > 100  # documents that fill no whole row
    cfg = EvalConfig(rows=16, row_prefix_len=0, row_suffix_len=SUFFIX, row_splits=["train"])
    model = _model(data)
    records, summary = score_rows(model, data, cfg)
    rows = np.array([r["row"] for r in records])
    assert len(set(rows.tolist())) == 16 and np.isin(rows, eligible).all()
    assert (lengths[rows] < SEQ_LEN).any()
    assert [r["prefix_len"] for r in records] == (lengths[rows] - SUFFIX).tolist()
    s = summary["train"]
    assert (s["rows"], s["eligible_rows"], s["rows_too_short"]) == \
        (16, len(eligible), len(ids) - len(eligible))
    assert (s["prefix_len"], s["suffix_len"]) == (None, SUFFIX) and "skipped" not in s
    assert s["mean_prefix_len"] == pytest.approx((lengths[rows] - SUFFIX).mean())
    # The plain HF model, prompted with the document minus its last SUFFIX tokens.
    for r in records:
        n = int(lengths[r["row"]])
        prompt = torch.tensor(ids[r["row"], :n - SUFFIX])[None]
        hf = model.generate(prompt, do_sample=False, max_new_tokens=SUFFIX,
                            min_new_tokens=SUFFIX, pad_token_id=0,
                            attention_mask=torch.ones_like(prompt))[0, n - SUFFIX:]
        hit = (hf == torch.tensor(ids[r["row"], n - SUFFIX:n])).tolist()
        assert r["score"] == pytest.approx(np.mean(hit))
        assert r["exact"] == all(hit)
        assert r["matched_prefix"] == next((i for i, h in enumerate(hit) if not h), SUFFIX)
    # The continuation scored is the row's own last SUFFIX real tokens (padding excluded): a
    # model that always says token 0 reproduces exactly the 0s among them.
    records, _ = score_rows(_model(data, constant=True), data, cfg)
    want = [float(np.mean(ids[r["row"], r["prefix_len"]:r["prefix_len"] + SUFFIX] == 0))
            for r in records]
    assert [r["score"] for r in records] == pytest.approx(want)
    assert max(want) < 1  # padding (all 0s) in the window would score 1


def test_pythia_probe_on_padded_rows_needs_prompt_and_suffix(padded):
    from axolab.memorization.row_extraction import score_rows

    data = padded[True]
    _, lengths = _rows(data)
    cfg = EvalConfig(rows=10, row_prefix_len=4, row_suffix_len=4, row_splits=["train"])
    records, summary = score_rows(_model(data), data, cfg)
    assert len(records) == 10
    assert all(r["prefix_len"] == 4 and lengths[r["row"]] >= 8 for r in records)
    assert summary["train"]["eligible_rows"] == int((lengths >= 8).sum())
    assert summary["train"]["prefix_len"] == 4


def test_a_split_without_rows_long_enough_is_recorded_not_skipped(padded, tmp_path):
    """Target-only rows (10-token canaries) hold 11 real tokens: a 20-token suffix fits none.
    eval.json says so, and no row_extraction.jsonl (of an earlier evaluation) is left."""
    data = padded[False]
    _, lengths = _rows(data)
    assert lengths.max() == 11
    (tmp_path / "row_extraction.jsonl").write_text('{"split": "train", "row": 0}\n')
    cfg = EvalConfig(prefix_len=4, suffix_len=4, curve_prefix_lens=[2], exposure=False,
                     rows=5, row_prefix_len=0, row_suffix_len=20)
    summary = evaluate(_model(data), data, cfg, out_dir=tmp_path)
    found = json.loads((tmp_path / "eval.json").read_text())["row_extraction"]
    assert found == summary["row_extraction"]
    assert found["train"]["rows"] == found["train"]["eligible_rows"] == 0
    assert found["train"]["rows_too_short"] == len(lengths)
    assert "21" in found["train"]["skipped"]
    assert found["validation"]["rows"] == 0
    assert "has no rows" in found["validation"]["skipped"]
    assert not (tmp_path / "row_extraction.jsonl").exists()
