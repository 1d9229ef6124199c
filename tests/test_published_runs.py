"""benchmarks/published_runs.py: the AxoNN papers' models and flop counting, restated
independently (Megatron's formula, the models' names), and one planner row per run."""

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
