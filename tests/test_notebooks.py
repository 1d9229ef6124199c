"""Every shipped notebook executes under papermill with tiny parameters, and what it shows
agrees with the files its run wrote (not just "it ran"). The kernels that drive models
(memorization, fine-tuning) never import torch: a copy of each of those notebooks ends with a
cell that says whether they did."""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

import nbformat
import pytest
import yaml

from axolab.config import TrainConfig, config_from_dict
from axolab.data import build, canary_table
from axolab.runs import run_notebook

ROOT = Path(__file__).resolve().parents[1]
NB = ROOT / "notebooks"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build(ROOT / "data_recipes" / "tiny.yaml", tmp_path_factory.mktemp("d") / "tiny",
                 progress=False)


TORCH_PROBE = ('import sys\n'
               'print("TORCH_IMPORTED", "torch" in sys.modules)\n'
               'print("TRANSFORMERS_IMPORTED", "transformers" in sys.modules)')


def _with_torch_probe(notebook: Path, tmp_path: Path) -> Path:
    """A copy of ``notebook`` in tmp_path with one more code cell at the end, which prints
    whether the kernel imported torch (or transformers, which imports it) by then."""
    nb = nbformat.read(str(notebook), as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(TORCH_PROBE))
    path = tmp_path / "notebooks" / notebook.name
    path.parent.mkdir()
    nbformat.write(nb, str(path))
    return path


def _no_torch(outputs: list[dict]) -> bool:
    text = _text(outputs)
    return "TORCH_IMPORTED False" in text and "TRANSFORMERS_IMPORTED False" in text


def _value(outputs: list[dict]):
    """The cell's value (its execute_result), parsed back from its text/plain repr."""
    (result,) = [o for o in outputs if o.get("output_type") == "execute_result"]
    return ast.literal_eval(result["data"]["text/plain"])


def test_every_notebook_reads_as_a_protocol():
    """A markdown title first, the parameters cell next, and text between the steps; only the
    parameters cell and code cells that call axolab carry code."""
    notebooks = sorted(NB.glob("*.ipynb"))
    assert len(notebooks) == 7
    for path in notebooks:
        nb = nbformat.read(str(path), as_version=4)
        first = nb.cells[0]
        assert first.cell_type == "markdown" and first.source.startswith("# "), path.name
        tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
        assert tagged == [1] and nb.cells[1].cell_type == "code", path.name
        kinds = [c.cell_type for c in nb.cells]
        code = [i for i, k in enumerate(kinds) if k == "code"][1:]
        # Every body code cell follows a markdown cell that explains its step.
        assert code and all(kinds[i - 1] == "markdown" for i in code), (path.name, kinds)
        assert not any("AutoConfig" in c.source or "import torch" in c.source
                       for c in nb.cells if c.cell_type == "code"), path.name


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
    assert _value(cells[0]) == stats


def test_train_then_memorization(tmp_path, dataset):
    """A run with in-training probes and three checkpoints (two kept), evaluated at every kept
    checkpoint on two ranks by a kernel that never imports torch."""
    from axolab.checkpoint.names import complete_checkpoints, step_of
    from axolab.files import read_jsonl
    from axolab.train import run

    run_dir = tmp_path / "run"
    run(config_from_dict(TrainConfig, dict(
        data=str(dataset), run_dir=str(run_dir), steps=3, global_batch=4, eval_interval=0,
        checkpoint_interval=1, keep_checkpoints=2, memorization_interval=1,
        probe=dict(prefix_len=4, suffix_len=8, curve_prefix_lens=[2], exposure=False,
                   continuations=False), progress=False)))
    kept = [step_of(p) for p in complete_checkpoints(run_dir / "checkpoints")]
    assert kept == [2, 3]
    status = run_notebook(_with_torch_probe(NB / "memorization.ipynb", tmp_path),
                          {"run_dir": str(run_dir), "data": str(dataset), "grid": [2, 1, 1, 1],
                           "checkpoints": "all", "prefix_len": 4, "suffix_len": 8,
                           "curve_prefix_lens": [2, 4], "show_canaries": 2,
                           "interactive": True},
                          tmp_path / "results", "mem", progress=False)
    assert status["state"] == "completed"
    cells = _outputs(Path(status["output"]))
    # The evaluation ran as a job on the two ranks asked for, at every kept checkpoint.
    job = json.loads((run_dir / "logs" / "eval" / "job.json").read_text())
    assert job["grid"] == [2, 1, 1, 1] and (run_dir / "logs" / "eval" / "rank1.log").is_file()
    for step in kept:
        at_step = json.loads((run_dir / "evals" / f"step-{step:08d}" / "eval.json").read_text())
        assert at_step["config"]["suffix_len"] == 8 and at_step["step"] == step
    assert sorted(p.name for p in (run_dir / "evals").iterdir()) == \
        [f"step-{step:08d}" for step in kept]
    assert [r["step"] for r in read_jsonl(run_dir / "checkpoint_curve.jsonl")] == kept
    assert [r["step"] for r in read_jsonl(run_dir / "memorization_curve.jsonl")] == [1, 2, 3]
    # What the notebook shows is the newest checkpoint's eval.json, written at the top too.
    summary = json.loads((run_dir / "eval.json").read_text())
    newest = json.loads((run_dir / "evals" / "step-00000003" / "eval.json").read_text())
    keys = ("checkpoint", "exact_match_by_repetitions", "token_match_by_repetitions",
            "exposure_by_repetitions", "extraction_curve")
    assert _value(cells[0]) == {k: summary[k] for k in keys} == {k: newest[k] for k in keys}
    assert summary["checkpoint"].endswith("step-00000003")
    assert list(summary["extraction_curve"]) == ["2", "4"]
    assert _images(cells[1]) == 3  # exact match, extraction curve, ROC
    assert _value(cells[1]) == {score: round(r["auc"], 3) for score, r in summary["mia"].items()}
    assert _images(cells[2]) == 1  # memorization over training: probes and checkpoints
    shown = _text(cells[3])
    top2 = canary_table(dataset).sort_values("repetitions", ascending=False, kind="stable")
    for canary_id in top2["id"][:2]:
        assert f"<b>{canary_id}</b>" in shown
    assert shown.count("tokens reproduced") == 2
    assert any("application/vnd.jupyter.widget-view+json" in o.get("data", {})
               for o in cells[4])  # the canary browser
    assert _no_torch(cells[5])


def test_goldfish_mitigation_sweeps_k(tmp_path, tiny_study):
    # The sweep continues from the demo's short study (standard and goldfish k=4, same recipe,
    # schedule and grid), as after an interrupted sweep: runs with an eval.json are kept, the
    # missing k is trained and evaluated.
    study, _, _ = tiny_study
    out = tmp_path / "goldfish"
    shutil.copytree(study / "data", out / "data")
    shutil.copytree(study / "tiny-llama-standard", out / "tiny-llama-standard")
    shutil.copytree(study / "tiny-llama-goldfish", out / "tiny-llama-goldfish-k4")
    kept = {name: (out / name / "metrics.jsonl").read_bytes()
            for name in ("tiny-llama-standard", "tiny-llama-goldfish-k4")}
    status = run_notebook(NB / "goldfish_mitigation.ipynb",
                          {"recipe": str(ROOT / "data_recipes" / "tiny.yaml"), "out": str(out),
                           "goldfish_ks": [2, 4], "epochs": 0.03, "global_batch": 8,
                           "grid": [1, 1, 1, 2]},
                          tmp_path / "results", "gf", progress=False)
    assert status["state"] == "completed"
    runs = sorted(p.name for p in out.iterdir() if (p / "eval.json").is_file())
    assert runs == ["tiny-llama-goldfish-k2", "tiny-llama-goldfish-k4", "tiny-llama-standard"]
    assert all((out / name / "metrics.jsonl").read_bytes() == before
               for name, before in kept.items())  # not trained again
    assert (out / "tiny-llama-goldfish-k2" / "logs" / "rank1.log").is_file()  # trained here
    for name, k in (("tiny-llama-goldfish-k2", 2), ("tiny-llama-goldfish-k4", 4)):
        cfg = json.loads((out / name / "config.json").read_text())
        assert (cfg["loss"], cfg["goldfish_k"]) == ("goldfish", k)
        assert "loss_dropped_tokens" in (out / name / "metrics.jsonl").read_text()
    cells = _outputs(Path(status["output"]))
    assert all(name in _text(cells[0]) for name in runs)
    assert "'tiny-llama-standard': 0.0" in _text(cells[1])
    # The price: each run's validation loss (its eval.json) relative to the standard run's,
    # rounded to four places.
    val = {name: json.loads((out / name / "eval.json").read_text())["validation_loss"]
           for name in runs}
    assert all(isinstance(v, float) and v > 0 for v in val.values())
    price = _value(cells[1])
    assert set(price) == set(runs)
    for name in runs:
        assert price[name] == round(val[name] / val["tiny-llama-standard"] - 1, 4)
    assert _images(cells[2]) == 2
    # Each run probed its canaries at the end of training: the curve figure is drawn.
    assert all((out / name / "memorization_curve.jsonl").is_file() for name in runs)
    assert _images(cells[3]) == 1


def test_finetune_405b_runs_with_a_tiny_stand_in(tmp_path, dataset):
    from transformers import AutoModelForCausalLM

    from axolab.files import read_jsonl
    from axolab.presets import model_config

    checkpoint = tmp_path / "stand-in"
    AutoModelForCausalLM.from_config(model_config("tiny-llama")).save_pretrained(checkpoint)
    status = run_notebook(_with_torch_probe(NB / "finetune_405b.ipynb", tmp_path),
                          {"model_dir": str(checkpoint), "data": str(dataset), "gpus": 2,
                           "machine": "h100-node", "global_batch": 4, "seq_len": 128,
                           "precision": "fp32", "steps": 4, "prefix_len": 4, "suffix_len": 8},
                          tmp_path / "results", "ft", progress=False)
    assert status["state"] == "completed"
    run_dir = tmp_path / "results" / "ft"
    cfg = json.loads((run_dir / "config.json").read_text())
    # The grid the planner picked (from config.json alone) is the one that trained, with the
    # goldfish loss, and the one the evaluation job ran on.
    cells = _outputs(Path(status["output"]))
    assert "step_time_s" in _text(cells[0])
    assert f"grid (data, z, y, x): {cfg['grid']}" in _text(cells[1])
    assert cfg["loss"] == "goldfish" and cfg["model"] == str(checkpoint)
    assert sum(cfg["grid"][i] for i in range(4)) == 5  # two ranks: one axis of 2
    assert [json.loads(x)["step"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()
            ] == [1, 2, 3, 4]
    assert cfg["memorization_interval"] == 1 and cfg["probe"]["suffix_len"] == 8
    assert [r["step"] for r in read_jsonl(run_dir / "memorization_curve.jsonl")] == [1, 2, 3, 4]
    assert json.loads((run_dir / "logs" / "eval" / "job.json").read_text())["grid"] == cfg["grid"]
    summary = json.loads((run_dir / "eval.json").read_text())
    assert summary["config"]["suffix_len"] == 8
    assert _images(cells[3]) == 1 and _value(cells[3]) == summary["exact_match_by_repetitions"]
    assert _images(cells[4]) == 1  # memorization over fine-tuning
    assert _no_torch(cells[5])


def test_finetune_study_pretrains_then_fine_tunes_on_unseen_targets(tmp_path):
    import numpy as np

    from axolab.data import load_canaries
    from axolab.data.loader import PackedDataset
    from axolab.files import read_jsonl

    out = tmp_path / "study"
    status = run_notebook(_with_torch_probe(NB / "finetune_memorization.ipynb", tmp_path),
                          {"out": str(out), "sizes": ["tiny-llama"], "losses": ["goldfish"],
                           "targets": 4, "max_documents": 400, "pretrain_epochs": 0.1,
                           "epochs": 2, "batch": 4},
                          tmp_path / "results", "fts", progress=False)
    assert status["state"] == "completed"
    (base_ckpt,) = sorted((out / "tiny-llama-base" / "checkpoints").glob("step-*"))
    targets = load_canaries(out / "data-target")
    members = [c for c in targets if c.member]
    assert len(members) == 4 and len(targets) == 8
    # The targets are documents the base model never saw: none is in its training tokens.
    base_tokens = PackedDataset(out / "data-base").read(np.arange(
        PackedDataset(out / "data-base").rows)).numpy().reshape(-1)
    candidates = {json.loads(line)["text"] for line in
                  (out / "corpus" / "targets.jsonl").read_text().splitlines()}
    for c in targets:
        assert c.text in candidates
        ids = np.asarray(c.token_ids)
        starts = np.flatnonzero(base_tokens[:len(base_tokens) - len(ids) + 1] == ids[0])
        assert not any(np.array_equal(base_tokens[h:h + len(ids)], ids) for h in starts), c.id
    # The target split is the members, one padded row each, and nothing else.
    train = PackedDataset(out / "data-target")
    assert train.rows == 4 and train.padded
    rows_seen = []
    for loss in ("goldfish",):  # the loss is only passed through: one keeps the test short
        run_dir = out / f"tiny-llama-{loss}"
        cfg = json.loads((run_dir / "config.json").read_text())
        assert (cfg["model"], cfg["loss"], cfg["epochs"]) == (str(base_ckpt), loss, 2)
        assert cfg["data"] == str(out / "data-target")
        curve = read_jsonl(run_dir / "memorization_curve.jsonl")
        assert [r["epoch"] for r in curve] == [1.0, 2.0]
        rows_seen += [r["exact_match_by_repetitions"]["1"] for r in curve]
    cells = _outputs(Path(status["output"]))
    shown = _text(cells[0])
    assert "tiny-llama" in shown and "goldfish" in shown
    study_rows = json.loads((out / "finetune_study.json").read_text())
    assert [r["exact_targets"] for r in study_rows] == rows_seen
    assert _images(cells[1]) == 1
    assert "val_loss" in _text(cells[2]) and _no_torch(cells[3])
    # The recipes the study wrote are the ones its datasets were built from.
    assert yaml.safe_load((out / "recipes" / "finetune-target.yaml").read_text())[
        "packing"]["background"] is False


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
