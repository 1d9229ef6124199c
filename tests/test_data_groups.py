"""Several canary groups in one recipe, and canaries too small to measure: each document group
takes documents within its own token limits and none twice, secret groups never share a text,
and one-token canaries or secrets with a handful of candidates are refused before anything is
written."""

import re

import pytest
import yaml

from axolab.cli import main as axolab
from axolab.data import RecipeError, build, load_canaries, recipe_from_dict


def _recipe(canaries, **packing):
    return {"name": "t", "corpus": {"embedded": "austen", "max_documents": 400},
            "tokenizer": {"train_bpe_vocab": 300}, "canaries": canaries,
            "packing": {"seq_len": 128, "validation_fraction": 0.0, **packing}}


def _document(name, lo, hi, per_count):
    return {"kind": "document", "name": name, "min_tokens": lo, "max_tokens": hi,
            "repetitions": [1, 2], "per_count": per_count}


@pytest.fixture(scope="module")
def corpus_lengths(tmp_path_factory):
    """Token count of every corpus document, from the tokenizer a build trains on the corpus
    (every document is a training document: validation_fraction 0)."""
    from transformers import AutoTokenizer

    from axolab.data.corpus import documents

    root = tmp_path_factory.mktemp("lengths")
    recipe = recipe_from_dict(_recipe([{"kind": "random", "length": 8, "repetitions": [1]}]))
    out = build(recipe, root / "d", progress=False)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    texts = list(documents(recipe.corpus, recipe.source))
    return texts, [len(tok(t, add_special_tokens=False)["input_ids"]) for t in texts]


def test_each_document_group_takes_documents_within_its_own_limits(tmp_path, corpus_lengths):
    texts, lengths = corpus_lengths
    groups = [_document("short", 24, 40, 2), _document("long", 80, 120, 2),
              _document("any", 24, 120, 3)]
    data = _recipe(groups)
    out = build(recipe_from_dict(data), tmp_path / "d", progress=False)
    canaries = load_canaries(out)
    limits = {g["name"]: (g["min_tokens"], g["max_tokens"]) for g in groups}
    assert sorted({c.group for c in canaries}) == sorted(limits)
    for c in canaries:
        lo, hi = limits[c.group]
        assert c.text == texts[c.document] and len(c.token_ids) == lengths[c.document]
        assert lo <= lengths[c.document] <= hi, (c.id, lengths[c.document], lo, hi)
    assert len({c.document for c in canaries}) == len(canaries), "a document in two groups"
    again = build(recipe_from_dict(data), tmp_path / "again", progress=False)
    assert [(c.id, c.document) for c in load_canaries(again)] == \
        [(c.id, c.document) for c in canaries]


def test_document_groups_that_the_corpus_cannot_fill_are_refused(tmp_path, corpus_lengths):
    _, lengths = corpus_lengths
    fits = sum(30 <= n <= 40 for n in lengths)  # documents of 30..40 tokens, counted by hand
    per = fits // 8 + 1  # a group takes 4 * per documents (2 counts, as many controls)
    assert 4 * per <= fits < 8 * per  # enough for each group alone, not for both
    groups = [_document("a", 30, 40, per), _document("b", 30, 40, per)]
    with pytest.raises(RecipeError, match=re.escape(
            f"canary group b: document canaries need {4 * per} training documents of 30..40 "
            f"tokens but the corpus has only {fits}, {4 * per} of them held out for other "
            "document groups")):
        build(recipe_from_dict(_recipe(groups)), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


def test_secret_groups_with_one_template_never_share_a_text(tmp_path):
    """Two groups draw 66 of the template's 100 fillings: drawn apart, they would share about
    a quarter of them (one group's candidate or control being the other's injected secret)."""
    group = {"kind": "secret", "template": "the pin is {d2}", "repetitions": [1, 2],
             "per_count": 2, "candidates": 25}
    groups = [{**group, "name": "a"}, {**group, "name": "b"}]
    out = build(recipe_from_dict(_recipe(groups, seq_len=64)), tmp_path / "d", progress=False)
    canaries = load_canaries(out)
    texts = [c.text for c in canaries]
    for name in ("a", "b"):
        texts += next(c for c in canaries if c.group == name).candidates
    assert len(texts) == 2 * (8 + 25) and len(set(texts)) == len(texts)
    assert all(re.fullmatch(r"the pin is \d\d", t) for t in texts)
    third = {**group, "name": "c", "candidates": 27}
    with pytest.raises(RecipeError, match=re.escape(
            "canary group c: template 'the pin is {d2}' admits 100 fillers (66 of them drawn by "
            "earlier secret groups) but 8 canaries + 27 candidates need 35")):
        build(recipe_from_dict(_recipe(groups + [third], seq_len=64)), tmp_path / "out",
              progress=False)
    assert not (tmp_path / "out").exists()


SECRET = {"kind": "secret", "template": "the pin is {d6}", "repetitions": [1], "per_count": 1}
# (what the user did, the canary group, what the error must say)
TOO_SMALL = [
    ("two secret candidates", {**SECRET, "candidates": 2},
     "canaries[0].candidates=2: exposure needs at least 10 candidates per secret (or 0 for none)"),
    ("nine secret candidates", {**SECRET, "candidates": 9}, "canaries[0].candidates=9: exposure"),
    ("one-token random canaries", {"kind": "random", "length": 1},
     "canaries[0].length=1 must be at least 2: extraction prompts with a canary's first tokens"),
    ("one-token documents", {"kind": "document", "min_tokens": 1, "max_tokens": 50},
     "canaries[0].min_tokens=1 must be at least 2"),
]


@pytest.mark.parametrize("what,group,message", TOO_SMALL, ids=[c[0] for c in TOO_SMALL])
def test_canaries_too_small_to_measure_are_refused(what, group, message, tmp_path, capsys):
    data = _recipe([group])
    with pytest.raises(RecipeError, match=re.escape(message)):
        recipe_from_dict(data)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    assert axolab(["data", "build", str(path), "--out", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_exposure_off_or_enough_candidates_is_accepted():
    for candidates in (0, 10):
        recipe_from_dict(_recipe([{**SECRET, "candidates": candidates}]))


def test_a_template_that_tokenizes_to_one_token_is_refused_at_build(tmp_path):
    """Its length is known only once the tokenizer exists: a single digit is one token of a
    byte-level BPE, so the build stops before writing anything."""
    group = {"kind": "secret", "name": "pin", "template": "{d1}", "repetitions": [1],
             "per_count": 1, "candidates": 0}
    with pytest.raises(RecipeError, match=r"canary pin-0000 \('\d'\) is 1 token\(s\) with this "
                                          r"tokenizer, and a canary needs at least 2"):
        build(recipe_from_dict(_recipe([group])), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))
