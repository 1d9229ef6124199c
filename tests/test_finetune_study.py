"""The fine-tuning study's own pieces (the notebook test runs it end to end): the corpus split,
its refusal, and the table read back from curve records."""

import json

import pytest

from axolab.data.corpus import documents
from axolab.data.recipe import CorpusSpec, recipe_from_dict
from axolab.finetune_study import FinetuneStudy, epoch_rows, recipes, split_corpus, table


def test_the_split_partitions_the_corpus_every_tenth_document_a_target(tmp_path):
    study = FinetuneStudy(max_documents=200, targets=5)
    background, targets = split_corpus(study, tmp_path / "corpus")
    docs = list(documents(CorpusSpec(embedded="austen", max_documents=200)))
    read = [[json.loads(line)["text"] for line in p.read_text().splitlines()]
            for p in (background, targets)]
    assert read[1] == docs[::10]
    assert read[0] == [d for i, d in enumerate(docs) if i % 10]
    base, target = recipes(study, background, targets, tmp_path / "data-base")
    recipe_from_dict(base, tmp_path)  # both are valid recipes
    t = recipe_from_dict(target, tmp_path)
    assert (t.packing.rows, t.packing.background) == ("padded", False)
    assert t.canaries[0].per_count == t.canaries[0].controls == 5


def test_too_few_target_candidates_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="gives 10 target candidates, fewer than the 64 needed"):
        split_corpus(FinetuneStudy(max_documents=100, targets=32), tmp_path / "corpus")
    assert not (tmp_path / "corpus").exists()


def test_rows_and_table_come_from_the_curve_records(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "eval.json").write_text(json.dumps({"validation_loss": 5.5}))
    curve = [{"step": 4 * e, "epoch": float(e),
              "exact_match_by_repetitions": {"0": 0.0, "1": e / 4},
              "token_match_by_repetitions": {"0": 0.1, "1": 0.5}} for e in (1, 2)]
    (run / "memorization_curve.jsonl").write_text("".join(json.dumps(c) + "\n" for c in curve))
    rows = epoch_rows(run, "tiny-llama", "standard")
    assert [(r["epoch"], r["exact_targets"], r["exact_controls"]) for r in rows] == \
        [(1, 0.25, 0.0), (2, 0.5, 0.0)]
    assert table(rows).splitlines() == [
        "| model | loss | epoch 1 | epoch 2 | controls |", "|---|---|---:|---:|---:|",
        "| tiny-llama | standard | 0.25 | 0.50 | 0.00 |"]
