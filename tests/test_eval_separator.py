"""Canaries are evaluated after exactly the tokens that preceded them in training, read back
from the built rows: nothing at the start of a padded row, the separator in a separated packed
stream, the recipe's own eos_token when it names one. Checked against the training rows and
the plain Hugging Face model."""

import json

import numpy as np
import pytest
import torch

from axolab.data import build, load_canaries, recipe_from_dict
from axolab.memorization import EvalConfig, evaluate

SEQ_LEN = 64
LAYOUTS = {"padded": {"rows": "padded"}, "packed": {}, "packed-eos": {}}


def _recipe(layout: str) -> dict:
    recipe = {"name": layout, "corpus": {"embedded": "austen", "max_documents": 300},
              "tokenizer": {"train_bpe_vocab": 300},
              "canaries": [
                  {"kind": "random", "name": "r", "length": 10, "repetitions": [1, 3],
                   "per_count": 2},
                  {"kind": "document", "name": "d", "repetitions": [1, 2], "per_count": 2,
                   "min_tokens": 12, "max_tokens": 40},
                  {"kind": "secret", "name": "pin", "template": "my PIN is {d6}",
                   "repetitions": [2], "per_count": 1, "candidates": 20}],
              "packing": {"seq_len": SEQ_LEN, "validation_fraction": 0.0, **LAYOUTS[layout]}}
    if layout == "packed-eos":  # a separator other than the tokenizer's own eos
        recipe["tokenizer"]["eos_token"] = "Ġthe"
    return recipe


@pytest.fixture(scope="module")
def datasets_built(tmp_path_factory):
    base = tmp_path_factory.mktemp("sep")
    return {layout: build(recipe_from_dict(_recipe(layout), base), base / layout, progress=False)
            for layout in LAYOUTS}


def _train_rows(data) -> tuple[np.ndarray, np.ndarray]:
    import datasets

    ds = datasets.load_from_disk(str(data / "train"))
    ids = np.asarray(ds["input_ids"], dtype=np.int64)
    lengths = np.asarray(ds["length"]) if "length" in ds.features else np.full(len(ids), SEQ_LEN)
    return ids, lengths


def _model(data, seed=0):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    vocab = len(AutoTokenizer.from_pretrained(str(data / "tokenizer")))
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=64,
                      max_position_embeddings=2 * SEQ_LEN)
    model = LlamaForCausalLM(cfg).float().eval()
    model.generation_config.eos_token_id = None
    return model


def _mean_nll(model, ids: list[int]) -> float:
    x = torch.tensor([ids])
    with torch.no_grad():
        logits = model(x).logits[0, :-1]
    return float(torch.nn.functional.cross_entropy(logits, x[0, 1:]))


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_canaries_are_evaluated_after_their_training_tokens(datasets_built, layout, tmp_path):
    """Every member canary's evaluated sequence (context, prompt and suffix of its extraction;
    the whole sequence its membership scores read) is the training tokens at one of its
    recorded occurrences; controls get the same context. The loss score is the plain HF
    model's on those training tokens, and the drill-down's own generation agrees."""
    from axolab.memorization import continuations

    data = datasets_built[layout]
    ids, _ = _train_rows(data)
    width = 0 if layout == "padded" else 1  # what the build puts before a canary
    model = _model(data)
    cfg = EvalConfig(prefix_len=4, suffix_len=6, curve_prefix_lens=[2])
    evaluate(model, data, cfg, out_dir=tmp_path)
    records = [json.loads(x) for x in (tmp_path / "memorization.jsonl").read_text().splitlines()]
    shown = [json.loads(x) for x in (tmp_path / "continuations.jsonl").read_text().splitlines()]
    canaries = load_canaries(data)
    contexts = set()
    for c, r, s in zip(canaries, records, shown):
        assert s["prompt_ids"] + s["truth_ids"] == c.token_ids[:len(s["prompt_ids"] +
                                                                    s["truth_ids"])]
        if not c.member:
            continue
        # The training tokens at the occurrences where the whole canary sits in one row.
        trained = [ids[row, offset - width:offset + len(c.token_ids)].tolist()
                   for row, offset in c.occurrences
                   if offset >= width and offset + len(c.token_ids) <= SEQ_LEN]
        assert trained, c.id
        seq = s["separator"] + s["prompt_ids"] + s["truth_ids"]
        assert any(t[:len(seq)] == seq for t in trained), (c.id, seq, trained[0])
        contexts.add(tuple(trained[0][:width]))
        assert r["loss"] == pytest.approx(-_mean_nll(model, trained[0]), rel=1e-4, abs=1e-5)
    assert len(contexts) == 1  # one separator (or none) before every canary
    context = list(contexts.pop())
    if layout == "packed-eos":
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
        assert context == [tok.convert_tokens_to_ids("Ġthe")] != [0]
    for c, r, s in zip(canaries, records, shown):
        assert s["separator"] == context
        if not c.member:  # controls are scored after the same context as the members
            assert r["loss"] == pytest.approx(-_mean_nll(model, context + c.token_ids),
                                              rel=1e-4, abs=1e-5)
    # The drill-down's real generation, one canary at a time, prompts the same way.
    generated = continuations(model, data, config=cfg)
    assert [g.generated for g in generated] == [g.generated for g in
                                               continuations(tmp_path, data)]


def test_recipe_eos_token_is_the_saved_tokenizers_eos(datasets_built):
    """tokenizer.eos_token in a recipe: the build separates with it, and the saved tokenizer
    names it as its eos (so eos_token_id is the separator) without encoding differently."""
    from transformers import AutoTokenizer

    from axolab.memorization.context import canary_context

    data = datasets_built["packed-eos"]
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    the = tok.convert_tokens_to_ids("Ġthe")
    assert tok.eos_token == "Ġthe" and tok.eos_token_id == the
    ids, _ = _train_rows(data)
    canaries = load_canaries(data)
    before = {int(ids[row, offset - 1]) for c in canaries for row, offset in c.occurrences
              if offset >= 1}
    assert before == {the}
    for c in canaries:
        if c.kind == "document":
            assert tok(c.text, add_special_tokens=False)["input_ids"] == c.token_ids
    # Read from the rows, and from the recipe where no occurrence has a token before it.
    assert canary_context(data, canaries) == [the]
    controls = [c for c in canaries if not c.member]
    assert canary_context(data, controls) == [the]
    assert canary_context(datasets_built["padded"]) == []


def test_rows_that_disagree_with_the_manifest_are_refused(datasets_built):
    from axolab.memorization.context import canary_context

    data = datasets_built["packed"]
    canaries = load_canaries(data)
    member = next(c for c in canaries if c.member and c.occurrences[0][1] >= 2)
    member.occurrences[0][1] -= 1
    with pytest.raises(ValueError, match=f"canary {member.id} is recorded at"):
        canary_context(data, canaries)
    padded = load_canaries(datasets_built["padded"])
    next(c for c in padded if c.member).occurrences[0][1] = 3
    with pytest.raises(ValueError, match="not at the start of its row"):
        canary_context(datasets_built["padded"], padded)
