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
        assert 0 < r["val_loss"] < 10
        run_dir = tmp_path / "study" / f"tiny-llama-{r['loss']}"
        assert (run_dir / "memorization.jsonl").is_file()
    goldfish_metrics = (tmp_path / "study" / "tiny-llama-goldfish" / "metrics.jsonl").read_text()
    assert "loss_dropped_tokens" in goldfish_metrics
