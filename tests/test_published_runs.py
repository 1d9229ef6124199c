"""benchmarks/published_runs.py: the AxoNN papers' models and flop counting, restated
independently (Megatron's formula, the models' names), and one planner row per run."""

import dataclasses
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import published_runs as pr  # noqa: E402


def test_the_model_table_gives_the_sizes_the_models_are_named_by():
    for model, billions in ((pr.GPT_40B, 40), (pr.GPT_60B, 60), (pr.GPT_80B, 80),
                            (pr.GPT_320B, 320)):
        assert model.params / 1e9 == pytest.approx(billions, rel=0.05), model.name


@pytest.mark.parametrize("run", pr.RUNS, ids=lambda r: r.name)
def test_flops_are_counted_as_megatron_counts_them(run):
    # Narayanan et al. (SC'21) eq. 3, as Megatron-AxoNN's training loop prints it.
    m, B, s = run.model, run.global_batch, run.seq_len
    l, h, V = m.layers, m.hidden, m.vocab
    megatron = 96 * B * s * l * h**2 * (1 + s / (6 * h) + V / (16 * l * h))
    assert pr.step_flops(run) == pytest.approx(megatron, rel=2e-3)  # biases: +0.1%


def test_every_run_gets_a_fitting_grid_and_both_predictions():
    for run in pr.RUNS:
        row = pr.evaluate(run)
        for key in ("overlap", "blocking"):
            assert row[key]["fits"], (run.name, key)
        # Overlap can only help; blocking charges every collective in full.
        assert row["overlap"]["flops_per_s"] >= row["blocking"]["flops_per_s"]
        assert row["blocking"]["exposed_s"] == pytest.approx(row["blocking"]["comm_s"])


def test_the_sc24_runs_hold_the_same_parameters_per_gpu():
    # The premise of sharing one global batch: a weak-scaling series keeps the model's
    # parameters per GPU fixed (40B / 4,096 = 60B / 6,144 = 320B / 32,768 to within a few %).
    sc24 = [r for r in pr.RUNS if "SC'24" in r.source]
    assert len(sc24) == 3
    per_gpu = [r.model.params / r.gpus for r in sc24]
    assert max(per_gpu) / min(per_gpu) < 1.03, per_gpu
    assert {r.global_batch for r in pr.RUNS} == {pr.GLOBAL_BATCH}


def test_the_sweep_restates_evaluate_at_each_batch():
    runs = pr.RUNS[1:2]  # the quickest to plan: the sweep's bookkeeping is what is tested
    table = pr.sweep(runs, (pr.GLOBAL_BATCH // 2, pr.GLOBAL_BATCH))
    assert [t["global_batch"] for t in table] == [pr.GLOBAL_BATCH // 2, pr.GLOBAL_BATCH]
    for t in table:
        assert t["tokens"] == t["global_batch"] * pr.SEQ
        for run in runs:
            row = pr.evaluate(dataclasses.replace(run, global_batch=t["global_batch"]))
            assert t["errors"][run.name]["overlap"] == row["overlap"]["error"]
            assert t["errors"][run.name]["blocking"] == row["blocking"]["error"]
        assert t["max_abs_error"] == max(abs(e["overlap"]) for e in t["errors"].values())


def test_the_sweep_reuses_rows_it_is_given():
    # The default batch's rows are printed first; the sweep takes them instead of
    # predicting them again (a stand-in row shows which one it used).
    run = pr.RUNS[0]
    given = {"name": run.name, "global_batch": 16, "overlap": {"error": 0.125, "grid": "g"},
             "blocking": {"error": -0.5}}
    table = pr.sweep([run], (16,), known=[given])
    assert table[0]["errors"][run.name] == {"overlap": 0.125, "blocking": -0.5, "grid": "g"}


@pytest.mark.parametrize("argv", (["--global-batch", "0"], ["--batch-per-gpu", "-1"],
                                  ["--global-batch", "8", "--batch-per-gpu", "2"]))
def test_bad_batches_are_refused_before_any_prediction(argv, capsys):
    with pytest.raises(SystemExit) as e:
        pr.main(argv)
    assert e.value.code == 2
    assert "global batch:" not in capsys.readouterr().out


def test_the_slowdown_sweep_sets_the_efficiency_it_names():
    # 0.189 restates the presets (Lee et al.'s average); a slower overlap never helps; a
    # slowdown of zero hides as much as a machine of efficiency 1 hides.
    run = pr.RUNS[1]
    table = pr.slowdown_sweep([run])
    assert [t["slowdown"] for t in table] == list(pr.SLOWDOWNS)
    errors = [t["errors"][run.name] for t in table]
    assert errors == sorted(errors, reverse=True)
    default = pr.evaluate(run)
    assert default["overlap_efficiency"] == pytest.approx(1 / 1.189)
    assert errors[pr.SLOWDOWNS.index(0.189)] == default["overlap"]["error"]
    ideal = pr.evaluate(run, overlap_slowdown=0.0)
    assert ideal["overlap_efficiency"] == 1.0
    assert ideal["overlap"]["exposed_s"] < default["overlap"]["exposed_s"]
    assert errors[0] == ideal["overlap"]["error"]
