"""`axolab data build`: the built dataset verified from its tokens, determinism, bad input."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from axolab.data import RecipeError, build, load_canaries, load_recipe, recipe_from_dict

RECIPES = Path(__file__).resolve().parents[1] / "data_recipes"


def _rows(path: Path) -> np.ndarray:
    import datasets

    return np.asarray(datasets.load_from_disk(str(path))["input_ids"], dtype=np.int64)


def _find(flat: np.ndarray, pattern: list[int]) -> list[int]:
    """Every start position of ``pattern`` in ``flat``, by brute force on the tokens."""
    p = np.asarray(pattern)
    hits = np.flatnonzero(flat[:len(flat) - len(p) + 1] == p[0])
    return [int(h) for h in hits if np.array_equal(flat[h:h + len(p)], p)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("data") / "tiny"
    return build(RECIPES / "tiny.yaml", out, progress=False)


def test_every_canary_occurs_exactly_as_recorded(tiny):
    train, val = _rows(tiny / "train"), _rows(tiny / "validation")
    L = train.shape[1]
    flat, flat_val = train.reshape(-1), val.reshape(-1)
    canaries = load_canaries(tiny)
    kinds = {c.kind for c in canaries}
    assert kinds == {"secret", "random", "document"}
    assert sorted({c.repetitions for c in canaries}) == [0, 1, 4, 16]
    for c in canaries:
        found = _find(flat, c.token_ids)
        assert len(found) == c.repetitions, (c.id, c.kind, len(found), c.repetitions)
        assert sorted(divmod(p, L) for p in found) == sorted(tuple(o) for o in c.occurrences)
        for p in found:  # never split by a sequence boundary
            assert p // L == (p + len(c.token_ids) - 1) // L, c.id
        assert _find(flat_val, c.token_ids) == [], f"{c.id} leaked into validation"
        assert c.member == (c.repetitions > 0)
        if c.group == "paragraph" and c.repetitions > 1:  # placement: clustered
            seqs = sorted(o[0] for o in c.occurrences)
            assert seqs[-1] - seqs[0] < 2 * c.repetitions, (c.id, seqs)


def test_manifest_matches_tokenizer_and_controls(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(tiny / "tokenizer"))
    canaries = load_canaries(tiny)
    for c in canaries:
        if c.kind == "secret":
            assert tok(c.text, add_special_tokens=False)["input_ids"] == c.token_ids
            assert c.text == c.template.replace("{d6}", c.filler)
            assert len(c.candidates) == 200 and c.space_size == 10**6
            used = {x.text for x in canaries if x.group == c.group}
            assert not used & set(c.candidates), "a candidate is also a canary"
    by_kind = {}
    for c in canaries:
        by_kind.setdefault(c.kind, [0, 0])[c.member] += 1
    assert all(v == [6, 6] for v in by_kind.values()), by_kind  # as many controls as members
    stats = json.loads((tiny / "stats.json").read_text())
    assert stats["train_sequences"] == len(_rows(tiny / "train"))
    member_tokens = sum((len(c.token_ids) + 2) * c.repetitions for c in canaries)
    assert stats["canary_tokens"] == member_tokens


def test_same_seed_same_bytes_other_seed_other_canaries(tiny, tmp_path):
    again = build(RECIPES / "tiny.yaml", tmp_path / "again", progress=False)
    files = sorted(p.relative_to(tiny) for p in tiny.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        if f.name == "stats.json":
            a, b = (json.loads((d / f).read_text()) for d in (tiny, again))
            a.pop("build_seconds"), b.pop("build_seconds")
            assert a == b
        else:
            assert (tiny / f).read_bytes() == (again / f).read_bytes(), f
    recipe = load_recipe(RECIPES / "tiny.yaml")
    recipe.seed = 1
    other = build(recipe, tmp_path / "seed1", progress=False)
    texts = {c.text for c in load_canaries(tiny)}
    assert texts.isdisjoint({c.text for c in load_canaries(other) if c.kind != "document"})


def _small(**over):
    data = {"name": "t", "corpus": {"embedded": "austen", "max_documents": 400},
            "tokenizer": {"train_bpe_vocab": 300},
            "canaries": [{"kind": "random", "length": 8, "repetitions": [1, 3], "per_count": 1}],
            "packing": {"seq_len": 64}}
    for key, value in over.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    return data


def _fails(tmp_path, data, match, source=None):
    out = tmp_path / "out"
    with pytest.raises(RecipeError, match=match):
        build(recipe_from_dict(data, source or tmp_path), out, progress=False)
    assert not out.exists()
    assert list(tmp_path.glob(".out.*")) == [], "a partial output was left behind"


def test_bad_input_is_refused_and_leaves_nothing(tmp_path):
    _fails(tmp_path, _small(corpus={"files": ["missing.txt"]}), "missing.txt does not exist")
    (tmp_path / "empty.txt").write_text("\n\n")
    _fails(tmp_path, _small(corpus={"files": ["empty.txt"]}), "holds no documents")
    _fails(tmp_path, _small(canaries=[{"kind": "random", "length": 80}]),
           r"has 80 tokens \(\+2 separators\), longer than packing.seq_len=64")
    _fails(tmp_path, _small(corpus__max_documents=20,
                            canaries=[{"kind": "random", "length": 40, "repetitions": [64]}]),
           "more canary tokens than the corpus can hold")
    _fails(tmp_path, _small(tokenizer={"train_bpe_vocab": 300, "expect_vocab_size": 32000}),
           "tokenizer has 300 tokens but tokenizer.expect_vocab_size is 32000")
    with pytest.raises(RecipeError, match=r"unknown field 'repetition' \(did you mean 'repetitions'"):
        recipe_from_dict(_small(canaries=[{"kind": "random", "repetition": [1, 2]}]))
    with pytest.raises(RecipeError, match="unknown field 'seqlen'.*did you mean 'seq_len'"):
        recipe_from_dict(_small(packing={"seqlen": 64}))
    bad_yaml = tmp_path / "typo.yaml"
    bad_yaml.write_text(yaml.safe_dump({**_small(), "sead": 3}))
    with pytest.raises(RecipeError, match="typo.yaml: unknown field 'sead'.*'seed'"):
        load_recipe(bad_yaml)
    built = build(recipe_from_dict(_small()), tmp_path / "built", progress=False)
    with pytest.raises(RecipeError, match="exists"):
        build(recipe_from_dict(_small()), built, progress=False)


def test_corpus_formats_and_pretrained_tokenizer(tiny, tmp_path):
    import datasets

    paragraphs = [f"Paragraph {i}. " + "It is a truth universally acknowledged. " * (3 + i % 5)
                  for i in range(300)]
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in paragraphs))
    datasets.Dataset.from_dict({"body": paragraphs}).to_parquet(str(tmp_path / "c.parquet"))
    datasets.Dataset.from_dict({"body": paragraphs}).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "c.txt").write_text("\n\n".join(paragraphs))
    shutil.copytree(tiny / "tokenizer", tmp_path / "tok")
    canaries = [{"kind": "secret", "template": "the code is {x4}-{a3}", "repetitions": [2],
                 "per_count": 1, "candidates": 10}]
    built = {}
    for name, corpus in {"jsonl": {"files": ["c.jsonl"], "text_field": "body"},
                         "parquet": {"files": ["c.parquet"], "text_field": "body"},
                         "saved": {"saved": "saved", "text_field": "body"},
                         "txt": {"files": ["c.txt"]}}.items():
        data = _small(corpus=corpus, tokenizer={"path": "tok", "expect_vocab_size": 1024},
                      canaries=canaries, packing={"seq_len": 32, "validation_fraction": 0.0})
        out = build(recipe_from_dict(data, tmp_path), tmp_path / f"out-{name}", progress=False)
        built[name] = _rows(out / "train")
        assert json.loads((out / "stats.json").read_text())["documents"] == 300
        (secret,) = [c for c in load_canaries(out) if c.member]
        assert len(_find(built[name].reshape(-1), secret.token_ids)) == 2
    # Same documents, same tokenizer, same seed: the four formats give the same dataset.
    assert all(np.array_equal(built["jsonl"], b) for b in built.values())


def test_split_allowed_long_canaries_straddle_boundaries(tmp_path):
    data = _small(canaries=[{"kind": "random", "length": 150, "repetitions": [3], "per_count": 2,
                             "placement": "clustered"}],
                  packing={"seq_len": 64, "allow_split": True})
    out = build(recipe_from_dict(data), tmp_path / "split", progress=False)
    flat = _rows(out / "train").reshape(-1)
    for c in load_canaries(out):
        found = _find(flat, c.token_ids)
        assert len(found) == c.repetitions
        assert sorted(divmod(p, 64) for p in found) == sorted(tuple(o) for o in c.occurrences)


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_are_valid(path):
    recipe = load_recipe(path)
    assert recipe.name == path.stem
    assert recipe.canaries, "a shipped recipe without canaries measures nothing"


def test_cli_builds_and_reports_bad_recipes(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**_small(), "canaries": [{"kind": "random", "lenght": 4}]}))
    cmd = [sys.executable, "-m", "axolab.cli", "data", "build"]
    res = subprocess.run(cmd + [str(bad), "--out", str(tmp_path / "o")], capture_output=True,
                         text=True)
    assert res.returncode == 2
    assert "unknown field 'lenght' (did you mean 'length'?)" in res.stderr
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_small()))
    res = subprocess.run(cmd + [str(good), "--out", str(tmp_path / "o"), "--quiet"],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Path(res.stdout.strip()) == tmp_path / "o" and (tmp_path / "o" / "train").is_dir()


def test_target_set_from_a_second_source(tmp_path):
    """Document canaries drawn from a file beside the corpus (a fine-tuning study's target
    set): each injected exactly its scheduled number of times, counted in the tokens; the
    controls never; every one a document of that file; the same bytes again from the seed."""
    from transformers import AutoTokenizer

    targets = [f"Target record {i}: the patient in room {100 + i} was given {i % 7} doses."
               for i in range(40)]
    (tmp_path / "targets.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                    for t in targets))
    group = {"kind": "document", "name": "target", "repetitions": [1, 3, 6], "per_count": 2,
             "min_tokens": 8, "corpus": {"files": ["targets.jsonl"]}}
    data = _small(canaries=[group], packing={"seq_len": 64, "validation_fraction": 0.1})
    out = build(recipe_from_dict(data, tmp_path), tmp_path / "t", progress=False)
    flat, val = _rows(out / "train").reshape(-1), _rows(out / "validation").reshape(-1)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    canaries = load_canaries(out)
    assert [c.repetitions for c in canaries] == [1, 1, 3, 3, 6, 6] + [0] * 6
    assert len({c.document for c in canaries}) == 12
    for c in canaries:
        assert c.text == targets[c.document]  # the document of the second source, whole
        assert tok(c.text, add_special_tokens=False)["input_ids"] == c.token_ids
        assert len(_find(flat, c.token_ids)) == c.repetitions, c.id
        assert _find(val, c.token_ids) == [], f"{c.id} leaked into validation"
    again = build(recipe_from_dict(data, tmp_path), tmp_path / "t2", progress=False)
    assert np.array_equal(_rows(again / "train"), _rows(out / "train"))
    assert [c.document for c in load_canaries(again)] == [c.document for c in canaries]
    # A second source on another kind, or one that cannot fill the group, is refused.
    with pytest.raises(RecipeError, match="canaries\\[0\\].corpus: only document canaries"):
        recipe_from_dict(_small(canaries=[{**group, "kind": "random"}]), tmp_path)
    short = {**group, "min_tokens": 60}
    with pytest.raises(RecipeError, match="needs 12 documents of 60..62 tokens from its source "
                                          "but the source has only 0"):
        build(recipe_from_dict(_small(canaries=[short], packing={"seq_len": 64}), tmp_path),
              tmp_path / "t3", progress=False)
    assert not (tmp_path / "t3").exists()
