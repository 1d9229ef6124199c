"""Every shipped notebook executes under papermill with tiny parameters, and what it shows
agrees with the files its run wrote (not just "it ran")."""

from __future__ import annotations

import json
from pathlib import Path

import nbformat
import pytest

from axolab.config import TrainConfig, config_from_dict
from axolab.data import build, canary_table
from axolab.runs import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build(ROOT / "data_recipes" / "tiny.yaml", tmp_path_factory.mktemp("d") / "tiny",
                 progress=False)


def _outputs(executed: Path) -> list[list[dict]]:
    """Each body cell's outputs in the executed notebook (after the parameters cell and the
    cell papermill injects)."""
    nb = nbformat.read(str(executed), as_version=4)
    skip = {"parameters", "injected-parameters"}
    return [c.get("outputs", []) for c in nb.cells
            if c.cell_type == "code" and not skip & set(c.metadata.get("tags", []))]


def _text(outputs: list[dict]) -> str:
    parts = []
    for o in outputs:
        parts.append(o.get("text", ""))
        parts.append(o.get("data", {}).get("text/plain", ""))
        parts.append(o.get("data", {}).get("text/html", ""))
    return "\n".join(parts)


def _images(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_canary_injection(tmp_path):
    data = tmp_path / "data"
    status = run_notebook(NB / "canary_injection.ipynb",
                          {"recipe": str(ROOT / "data_recipes" / "tiny.yaml"), "out": str(data)},
                          tmp_path / "results", "inject", progress=False)
    assert status["state"] == "completed"
    cells = _outputs(Path(status["output"]))
    table = canary_table(data)
    assert "placed as scheduled: True" in _text(cells[3])
    assert f"{len(table)} canaries, {int(table['member'].sum())} injected" in _text(cells[3])
    assert _images(cells[2]) == 1  # the schedule figure
    stats = json.loads((data / "stats.json").read_text())
    assert str(stats[next(iter(stats))]) in _text(cells[0])


def test_train_then_memorization(tmp_path, dataset):
    from axolab.train import run

    run_dir = tmp_path / "run"
    run(config_from_dict(TrainConfig, dict(data=str(dataset), run_dir=str(run_dir), steps=3,
                                           global_batch=4, eval_interval=0, progress=False)))
    status = run_notebook(NB / "memorization.ipynb",
                          {"run_dir": str(run_dir), "data": str(dataset), "prefix_len": 4,
                           "suffix_len": 8, "curve_prefix_lens": [2, 4], "show_canaries": 2},
                          tmp_path / "results", "mem", progress=False)
    assert status["state"] == "completed"
    cells = _outputs(Path(status["output"]))
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["config"]["suffix_len"] == 8
    assert repr(summary["exact_match_by_repetitions"])[1:40] in _text(cells[0])
    assert _images(cells[1]) == 3  # exact match, extraction curve, ROC
    shown = _text(cells[2])
    top2 = canary_table(dataset).sort_values("repetitions", ascending=False, kind="stable")
    for canary_id in top2["id"][:2]:
        assert f"<b>{canary_id}</b>" in shown
    assert shown.count("tokens reproduced") == 2


def test_goldfish_mitigation_sweeps_k(tmp_path):
    out = tmp_path / "goldfish"
    status = run_notebook(NB / "goldfish_mitigation.ipynb",
                          {"recipe": str(ROOT / "data_recipes" / "tiny.yaml"), "out": str(out),
                           "goldfish_ks": [2, 4], "epochs": 0.25, "global_batch": 8},
                          tmp_path / "results", "gf", progress=False)
    assert status["state"] == "completed"
    runs = sorted(p.name for p in out.iterdir() if (p / "eval.json").is_file())
    assert runs == ["tiny-llama-goldfish-k2", "tiny-llama-goldfish-k4", "tiny-llama-standard"]
    for name, k in (("tiny-llama-goldfish-k2", 2), ("tiny-llama-goldfish-k4", 4)):
        cfg = json.loads((out / name / "config.json").read_text())
        assert (cfg["loss"], cfg["goldfish_k"]) == ("goldfish", k)
        assert "loss_dropped_tokens" in (out / name / "metrics.jsonl").read_text()
    cells = _outputs(Path(status["output"]))
    assert all(name in _text(cells[0]) for name in runs)
    assert "'tiny-llama-standard': 0.0" in _text(cells[1])
    assert _images(cells[2]) == 2


def test_finetune_405b_runs_with_a_tiny_stand_in(tmp_path, dataset):
    from transformers import AutoModelForCausalLM

    from axolab.presets import model_config

    checkpoint = tmp_path / "stand-in"
    AutoModelForCausalLM.from_config(model_config("tiny-llama")).save_pretrained(checkpoint)
    status = run_notebook(NB / "finetune_405b.ipynb",
                          {"model_dir": str(checkpoint), "data": str(dataset), "gpus": 2,
                           "machine": "h100-node", "global_batch": 4, "seq_len": 128,
                           "precision": "fp32", "steps": 4, "prefix_len": 4, "suffix_len": 8},
                          tmp_path / "results", "ft", progress=False)
    assert status["state"] == "completed"
    run_dir = tmp_path / "results" / "ft"
    cfg = json.loads((run_dir / "config.json").read_text())
    # The grid the planner picked is the one that trained, with the goldfish loss.
    cells = _outputs(Path(status["output"]))
    assert f"grid (data, z, y, x): {cfg['grid']}" in _text(cells[1])
    assert cfg["loss"] == "goldfish" and cfg["model"] == str(checkpoint)
    assert sum(cfg["grid"][i] for i in range(4)) == 5  # two ranks: one axis of 2
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            ] == [1, 2, 3, 4]
    assert (run_dir / "eval.json").is_file() and _images(cells[3]) == 1


def test_scaling_sweep_points_are_every_valid_grid():
    from axolab.perfmodel.grid import enumerate_grids
    from axolab.perfmodel.shapes import model_shapes
    from axolab.scaling import sweep_points

    points = sweep_points(["tiny-llama"], [1, 2, 4], 8)
    expected = [(g.data, g.z, g.y, g.x) for n in (1, 2, 4)
                for g in enumerate_grids(n, model_shapes("tiny-llama"), 8)]
    assert [p.grid for p in points] == expected and len(expected) > 8
    with pytest.raises(ValueError, match="grid \\[1, 1, 3, 1\\] cannot run tiny-llama"):
        sweep_points(["tiny-llama"], [], 8, [[1, 1, 3, 1]])


def test_scaling_sweep_measures_every_grid_next_to_its_prediction(tmp_path, dataset):
    import statistics

    import pandas as pd

    from axolab.data.loader import PackedDataset
    from axolab.perfmodel import get_machine, predict
    from axolab.perfmodel.grid import GridShape
    from axolab.perfmodel.shapes import model_shapes
    from axolab.perfmodel.workload import Workload

    status = run_notebook(NB / "scaling_sweep.ipynb",
                          {"data": str(dataset), "models": ["tiny-llama"], "rank_counts": [],
                           "grids": [[1, 1, 1, 1], [1, 1, 1, 2], [2, 1, 1, 1]],
                           "steps": 3, "global_batch": 4, "machine": "h100-node"},
                          tmp_path / "results", "scaling", progress=False)
    assert status["state"] == "completed"
    out = tmp_path / "results" / "scaling"
    table = pd.read_csv(out / "scaling.csv")
    shapes = model_shapes("tiny-llama")
    assert sorted(table["grid"]) == ["1x1x1x1", "1x1x1x2", "2x1x1x1"]
    for row in table.itertuples():
        # Each point really trained on its grid, and the table's medians are its metrics'.
        cfg = json.loads((out / row.run / "config.json").read_text())
        assert "x".join(map(str, cfg["grid"])) == row.grid and cfg["steps"] == 3
        steps = [json.loads(x) for x in (out / row.run / "metrics.jsonl").read_text().splitlines()]
        assert [s["step"] for s in steps] == [1, 2, 3]
        assert row.measured_tokens_per_s == pytest.approx(
            statistics.median(s["tokens_per_s"] for s in steps[1:]))
        grid = GridShape(*map(int, row.grid.split("x")))
        want = predict(shapes, grid, Workload(4, PackedDataset(dataset, "train").seq_len, None,
                                              "fp32", False), get_machine("h100-node"))
        assert row.predicted_step_s == pytest.approx(want.step_time_s)
    cells = _outputs(Path(status["output"]))
    assert "predicted_tokens_per_s" in _text(cells[0])
    assert _images(cells[1]) == 1
    assert "spearman" in _text(cells[2]) and "predicted_best_gap" in _text(cells[2])
