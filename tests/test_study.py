"""The study driver end to end on a very small recipe: every (size, loss) run is trained,
evaluated and summarized."""

import json

import yaml

from axolab.study import run_study


def test_study_trains_evaluates_and_summarizes(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "r", "corpus": {"embedded": "austen", "max_documents": 300},
        "tokenizer": {"train_bpe_vocab": 300},
        "canaries": [{"kind": "random", "length": 12, "repetitions": [1, 8], "per_count": 2},
                     {"kind": "secret", "template": "pin {d4}", "repetitions": [4],
                      "per_count": 2, "candidates": 10}],
        "packing": {"seq_len": 64}}))
    rows = run_study(recipe, tmp_path / "study", ["tiny-llama"], ["standard", "goldfish"],
                     epochs=0.5, lr=1e-3, global_batch=8, progress=False)
    assert [(r["model"], r["loss"]) for r in rows] == [("tiny-llama", "standard"),
                                                       ("tiny-llama", "goldfish")]
    assert json.loads((tmp_path / "study" / "study.json").read_text()) == rows
    for r in rows:
        assert set(r["exact_by_repetitions"]) == {"0", "1", "4", "8"}
        assert set(r["exact_random_by_repetitions"]) == {"0", "1", "8"}  # secrets are at 4
        run_dir = tmp_path / "study" / f"tiny-llama-{r['loss']}"
        records = [json.loads(x) for x in (run_dir / "memorization.jsonl").read_text().splitlines()]
        at8 = [x["exact"] for x in records if x["kind"] == "random" and x["repetitions"] == 8]
        assert r["exact_random_by_repetitions"]["8"] == sum(at8) / len(at8) and len(at8) == 2
        by_kind = json.loads((run_dir / "eval.json").read_text())["by_kind"]
        assert by_kind["random"]["exact_match_by_repetitions"] == r["exact_random_by_repetitions"]
        assert set(by_kind["secret"]["exact_match_by_repetitions"]) == {"0", "4"}
        assert 0 < r["val_loss"] < 10
        run_dir = tmp_path / "study" / f"tiny-llama-{r['loss']}"
        assert (run_dir / "memorization.jsonl").is_file()
    goldfish_metrics = (tmp_path / "study" / "tiny-llama-goldfish" / "metrics.jsonl").read_text()
    assert "loss_dropped_tokens" in goldfish_metrics
