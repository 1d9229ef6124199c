"""`make demo`'s job on a short schedule: the shipped demo recipe is built, every run trains on
its grid through torchrun with memorization probes, is evaluated by a launched job, and the
study table, the summary and the report say what the run files say."""

from __future__ import annotations

import json
import math
from pathlib import Path

from axolab.demo import summary_markdown

ROOT = Path(__file__).resolve().parents[1]


def _row(run, model, loss, val, exact, exposure, auc, paragraphs=None):
    return {"run": run, "model": model, "loss": loss, "val_loss": val,
            "exact_random_by_repetitions": exact, "exposure_by_repetitions": exposure,
            "exact_by_kind": {"random": exact, "document": paragraphs or {}},
            "mia_auc": {"loss": auc}}


def test_summary_table_by_hand():
    rows = [_row("a-standard", "a", "standard", 4.0, {"0": 0.0, "4": 0.25, "64": 1.0},
                 {"64": 9.5}, 0.9, {"64": 0.5}),
            _row("a-goldfish", "a", "goldfish", 4.1, {"0": 0.0, "4": 0.0, "64": 0.0},
                 {"64": 8.25}, 0.8)]
    lines = summary_markdown(rows).splitlines()
    assert lines[0] == ("| run | val loss | random x4 | random x64 | paragraphs x64 | "
                        "PIN exposure x64 (bits) | MIA AUC (loss) |")
    assert lines[2] == "| a-standard | 4.000 | 0.25 | 1.00 | 0.50 | 9.5 | 0.90 |"
    # 4.1 / 4.0 - 1 = +2.5%; a missing paragraph rate is shown as "-".
    assert lines[3] == "| a-goldfish | 4.100 (+2.5%) | 0.00 | 0.00 | - | 8.2 | 0.80 |"


def test_the_demo_recipe_is_valid():
    from axolab.data.recipe import load_recipe

    recipe = load_recipe(ROOT / "data_recipes" / "demo.yaml")
    assert {c.kind for c in recipe.canaries} == {"random", "secret", "document"}


def test_demo_end_to_end_on_a_short_schedule(tiny_study):
    # The tiny recipe (fewer secret candidates to score) keeps this test short; the demo
    # recipe itself is checked above and run by `make demo`. The study runs once per session
    # (conftest.tiny_study): the goldfish notebook's test continues from it.
    out, printed, rc = tiny_study
    assert rc == 0
    runs = {"tiny-llama-standard": "standard", "tiny-llama-goldfish": "goldfish"}
    study = json.loads((out / "study.json").read_text())
    assert [r["run"] for r in study] == list(runs)
    assert [(r["model"], r["loss"]) for r in study] == [("tiny-llama", loss)
                                                        for loss in runs.values()]
    for name, loss in runs.items():
        cfg = json.loads((out / name / "config.json").read_text())
        assert (cfg["grid"], cfg["loss"]) == ([1, 1, 1, 2], loss)
        metrics = [json.loads(x) for x in (out / name / "metrics.jsonl").read_text().splitlines()]
        assert metrics[-1]["step"] == metrics[-1]["total_steps"]
        assert (out / name / "logs" / "rank1.log").is_file()  # a real 2-rank job
        records = [json.loads(x)
                   for x in (out / name / "memorization.jsonl").read_text().splitlines()]
        assert {r["kind"] for r in records} == {"random", "secret", "document"}
        assert max(r["repetitions"] for r in records) == 16
        row = next(r for r in study if r["run"] == name)
        top = [r["exact"] for r in records if r["kind"] == "random" and r["repetitions"] == 16]
        assert math.isclose(row["exact_random_by_repetitions"]["16"], sum(top) / len(top))
        summary = json.loads((out / name / "eval.json").read_text())
        assert summary["by_kind"]["random"]["exact_match_by_repetitions"] == \
            row["exact_random_by_repetitions"]
        assert set(summary["by_kind"]["secret"]["exact_match_by_repetitions"]) == \
            {"0", "1", "4", "16"}
        assert row["val_loss"] == summary["validation_loss"] and 0 < row["val_loss"] < 10
        assert ("loss_dropped_tokens" in metrics[-1]) == (loss == "goldfish")
        # The run probed its canaries as it trained (at the end of its only, partial, epoch);
        # the probe after the last step scored the model the final evaluation scored.
        curve = [json.loads(x) for x in
                 (out / name / "memorization_curve.jsonl").read_text().splitlines()]
        assert [c["step"] for c in curve] == [metrics[-1]["step"]]
        assert [(r["id"], r["exact"], r["matched_prefix"]) for r in curve[-1]["records"]] == \
            [(r["id"], r["exact"], r["matched_prefix"]) for r in records]
    table = (out / "summary.md").read_text()
    assert "| tiny-llama-standard |" in table and "| tiny-llama-goldfish |" in table
    page = (out / "report" / "index.html").read_text()
    assert all(name in page for name in runs)
    assert (out / "report" / "plots" / "exact_by_repetitions.png").is_file()
    assert (out / "report" / "plots" / "memorization_curve.png").is_file()
    curve_table = (out / "report" / "tables" / "memorization_curve.csv").read_text()
    assert all(name in curve_table for name in runs)
    assert f"report: {out / 'report' / 'index.html'}" in printed
