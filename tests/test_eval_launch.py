"""Memorization measured where the model lives: the launched evaluation job against serial
evaluation of the same checkpoints, in-training probes against per-checkpoint evaluation,
probes that leave training unchanged, continuations read from files, failures named."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from axolab.cli import main as axolab
from axolab.config import EvalConfig
from axolab.data import build
from axolab.files import read_jsonl
from axolab.launch import LaunchError, evaluate as launch_evaluate, run as launch_run

ROOT = Path(__file__).resolve().parents[1]
STEPS, EVERY = 4, 2
EVAL = {"prefix_len": 4, "suffix_len": 8, "curve_prefix_lens": [2, 4], "beams": 2,
        "samples": 2, "top_k": 5}
# Row extraction, the goldfish paper's probe: each sampled row but its last 8 tokens prompts.
ROWS = {"rows": 3, "row_prefix_len": 0, "row_suffix_len": 8}
PROBE = {**EVAL, "exposure": False, "continuations": False}
SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
# Min-K%++ standardizes a log-prob by the distribution's mean and std at that position:
# (lp - mean) / std divides a difference of two nearly equal numbers by a small one, so the
# fp32 reduction order of another grid alone moves it by ~1e-5; every other score is held
# to 1e-5.
TOLERANCE = {"min_k_plus_plus": 1e-4}


def _train(data: Path, run_dir: Path, probes: bool) -> None:
    # Seed 1: the 16 rows its 4 steps read hold canary occurrences (seed 0's hold none).
    launch_run(dict(data=str(data), run_dir=str(run_dir), grid=[1, 1, 1, 2], steps=STEPS,
                    seed=1, global_batch=4, eval_interval=0, checkpoint_interval=EVERY,
                    keep_checkpoints=STEPS, memorization_interval=EVERY if probes else 0,
                    probe=PROBE), progress=False, echo=False)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A run trained on 2 ranks (x=2) with probes every 2 steps, the same run without
    probes, and the first one evaluated by a 4-rank job (y=2, x=2) started from a process
    that must never import torch."""
    base = tmp_path_factory.mktemp("evaljob")
    data = build(ROOT / "data_recipes" / "tiny.yaml", base / "data", progress=False)
    probed, plain = base / "probed", base / "plain"
    _train(data, probed, probes=True)
    _train(data, plain, probes=False)
    # The step-2 checkpoint as the reference model of the membership score "reference".
    reference_eval = {**EVAL, **ROWS, "validation_loss": True,
                      "reference": str(probed / "checkpoints" / "step-00000002")}
    script = f"""
import json, sys
from axolab.launch import evaluate
summary = evaluate({str(probed)!r}, {str(data)!r}, {reference_eval!r}, grid=[1, 1, 2, 2],
                   checkpoints="all", progress=False)
print(json.dumps({{"summary": summary, "torch_imported": "torch" in sys.modules}}))
"""
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return data, probed, plain, json.loads(res.stdout.strip().splitlines()[-1])


def _serial(ckpt: Path, data: Path):
    """The checkpoint as a plain Hugging Face model, scored in this process: no grid, no
    axolab parallel code."""
    from transformers import AutoModelForCausalLM

    from axolab.memorization.canary_eval import CanarySet, score_canaries

    model = AutoModelForCausalLM.from_pretrained(str(ckpt)).eval()
    return model, score_canaries(model, CanarySet.load(data), EvalConfig(**EVAL))


def _same_records(got: list[dict], want: list[dict], fields=SCORES) -> None:
    assert [r["id"] for r in got] == [r["id"] for r in want]
    exact = ("exact", "matched_prefix", "beam_exact", "sample_exact_any", "sample_exact_rate")
    for g, w in zip(got, want):
        assert [g[k] for k in exact if k in w] == [w[k] for k in exact if k in w], g["id"]
        assert all((k in g) == (k in w) for k in exact), g["id"]
        for name in fields:
            assert (name in g) == (name in w), (g["id"], name)  # exposure: secrets only
            if name in w:
                assert g[name] == pytest.approx(w[name], abs=TOLERANCE.get(name, 1e-5)), \
                    (g["id"], name)


def test_four_rank_job_matches_serial_evaluation(runs):
    data, probed, _, out = runs
    assert out["torch_imported"] is False  # the caller (a kernel, the CLI) stays torch-free
    ckpts = sorted((probed / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-00000002", "step-00000004"]
    _, reference = _serial(ckpts[0], data)
    for ckpt in ckpts:
        model, serial = _serial(ckpt, data)
        got = read_jsonl(probed / "evals" / ckpt.name / "memorization.jsonl")
        _same_records(got, serial.records, SCORES + ("token_match_rate", "exposure_rank",
                                                     "exposure"))
        # reference = target log-likelihood - reference log-likelihood, both serial here.
        for g, w, r in zip(got, serial.records, reference.records):
            assert g["reference"] == pytest.approx(w["loss"] - r["loss"], abs=1e-5), g["id"]
        summary = json.loads((probed / "evals" / ckpt.name / "eval.json").read_text())
        assert set(summary["mia"]) == set(SCORES) | {"reference"}
        assert any("exposure_rank" in r for r in got)
        assert all("beam_exact" in r and "sample_exact_any" in r for r in got)
        assert summary["exact_match_by_repetitions"] == \
            serial.summary["exact_match_by_repetitions"]
    assert all(r["reference"] == pytest.approx(0, abs=1e-5)  # the reference itself
               for r in read_jsonl(probed / "evals" / ckpts[0].name / "memorization.jsonl"))
    # The newest checkpoint's files are also the run's own, and the call returned them.
    assert read_jsonl(probed / "memorization.jsonl") == got
    assert out["summary"] == json.loads((probed / "eval.json").read_text())
    assert out["summary"]["step"] == STEPS
    # The continuations file holds what real greedy decoding of the serial model produces.
    from axolab.memorization import continuations

    from_file = continuations(probed, data)
    generated = continuations(model, data, config=EvalConfig(**EVAL))
    assert [(c.canary_id, c.generated, c.truth) for c in from_file] == \
        [(c.canary_id, c.generated, c.truth) for c in generated]


def test_utility_per_domain_matches_the_serial_model(runs):
    """The job's validation loss (every next-token position of every validation row) and
    held-out perplexity per domain, against the newest checkpoint as a plain HF model."""
    import math

    import numpy as np
    import torch

    from axolab.data.loader import PackedDataset

    data, probed, _, _ = runs
    model, serial = _serial(probed / "checkpoints" / "step-00000004", data)
    val = PackedDataset(data, "validation")
    ids = val.read(np.arange(val.rows))
    with torch.no_grad():
        logits = model(ids).logits[:, :-1]
    want = float(torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   ids[:, 1:].reshape(-1)))
    summary = json.loads((probed / "eval.json").read_text())
    assert summary["validation_loss"] == pytest.approx(want, rel=1e-5)
    domains = summary["perplexity_by_domain"]
    assert domains["background"]["perplexity"] == pytest.approx(math.exp(want), rel=1e-5)
    assert domains["background"]["tokens"] == ids[:, 1:].numel()
    heldout = serial.summary["perplexity_by_domain"]["document_groups"]
    assert set(domains["document_groups"]) == set(heldout) == {"paragraph"}
    for group, entry in heldout.items():
        got = domains["document_groups"][group]
        assert (got["tokens"], got["documents"]) == (entry["tokens"], entry["documents"])
        assert got["perplexity"] == pytest.approx(entry["perplexity"], rel=1e-5)


def test_row_extraction_is_greedy_decoding_of_the_sampled_rows(runs):
    import numpy as np
    import torch
    from transformers import AutoModelForCausalLM

    from axolab.data.loader import PackedDataset

    data, probed, _, _ = runs
    model = AutoModelForCausalLM.from_pretrained(
        str(probed / "checkpoints" / "step-00000004")).eval()
    model.generation_config.eos_token_id = None
    got = read_jsonl(probed / "row_extraction.jsonl")
    summary = json.loads((probed / "eval.json").read_text())["row_extraction"]
    for split in ("train", "validation"):
        split_data = PackedDataset(data, split)
        records = [r for r in got if r["split"] == split]
        rows = [r["row"] for r in records]
        assert len(set(rows)) == len(rows) == min(3, split_data.rows)
        assert all(0 <= r < split_data.rows for r in rows)
        ids = split_data.read(np.array(rows))
        prompt = split_data.seq_len - 8
        hf = model.generate(ids[:, :prompt], do_sample=False, max_new_tokens=8,
                            min_new_tokens=8, pad_token_id=0,
                            attention_mask=torch.ones_like(ids[:, :prompt]))[:, prompt:]
        hit = hf == ids[:, prompt:]
        assert [r["score"] for r in records] == pytest.approx(hit.float().mean(1).tolist())
        assert [r["exact"] for r in records] == hit.all(1).tolist()
        assert [r["matched_prefix"] for r in records] == \
            torch.cumprod(hit.int(), 1).sum(1).tolist()
        assert summary[split]["mean_score"] == pytest.approx(hit.float().mean().item())
        assert (summary[split]["prefix_len"], summary[split]["suffix_len"]) == (prompt, 8)


def test_probe_curve_equals_checkpoint_curve(runs):
    _, probed, _, _ = runs
    probes = read_jsonl(probed / "memorization_curve.jsonl")
    checked = read_jsonl(probed / "checkpoint_curve.jsonl")
    assert [r["step"] for r in probes] == [r["step"] for r in checked] == [2, 4]
    assert {r["source"] for r in probes} == {"probe"}
    assert {r["source"] for r in checked} == {"checkpoint"}
    for p, c in zip(probes, checked):
        assert (p["epoch"], p["tokens_seen"]) == (c["epoch"], c["tokens_seen"])
        assert p["tokens_seen"] == p["step"] * 4 * 128
        _same_records(p["records"], c["records"])
        for key in ("exact_match_by_repetitions", "matched_prefix_by_repetitions"):
            assert p[key] == c[key]
        for group, entry in c["perplexity_by_domain"]["document_groups"].items():
            assert p["perplexity_by_domain"]["document_groups"][group]["perplexity"] == \
                pytest.approx(entry["perplexity"], rel=1e-5)
        # The job also had a reference model, which a probe cannot have.
        assert set(c["mia_auc"]) == set(p["mia_auc"]) | {"reference"}
        assert p["mia_auc"] == pytest.approx({s: c["mia_auc"][s] for s in p["mia_auc"]},
                                             abs=1e-6)
        # The rates are the records', recomputed here from the per-canary fields.
        for n, rate in p["exact_match_by_repetitions"].items():
            hits = [r["exact"] for r in p["records"] if r["repetitions"] == int(n)]
            assert rate == pytest.approx(sum(hits) / len(hits))


def test_probes_do_not_change_training(runs):
    _, probed, plain, _ = runs
    with_probes = read_jsonl(probed / "metrics.jsonl")
    without = read_jsonl(plain / "metrics.jsonl")
    assert [r["loss"] for r in with_probes] == [r["loss"] for r in without]
    assert [r["grad_norm"] for r in with_probes] == [r["grad_norm"] for r in without]
    # The probe's cost is in the metrics, at the steps it ran.
    assert [r["step"] for r in with_probes if "probe_time_s" in r] == [2, 4]
    assert not any("probe_time_s" in r for r in without)
    assert not (plain / "memorization_curve.jsonl").exists()


def _eval_ranks(log_dir: Path) -> dict[int, psutil.Process]:
    found = {}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if "axolab.launch.worker" in cmd and str(log_dir) in cmd \
                and "axolab.launch.local_ranks" not in cmd:
            # A rank forked by the rank starter says which it is in its title.
            rank = re.search(r"\(axolab rank (\d+) of \d+\)", cmd)
            try:
                found[int(rank.group(1)) if rank else int(p.environ()["RANK"])] = p
            except (psutil.Error, KeyError):
                pass
    return found


def test_a_killed_evaluation_rank_is_named(runs, tmp_path):
    data, probed, _, _ = runs
    out = tmp_path / "killed"
    outcome: dict = {}

    def target():
        try:
            launch_evaluate(probed, data, EVAL, grid=[2, 1, 1, 1], checkpoints="all",
                            out_dir=out, progress=False, timeout_s=300)
        except BaseException as e:  # noqa: BLE001 - handed to the test
            outcome["error"] = e

    thread = threading.Thread(target=target)
    thread.start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill once the ranks are scoring
        progress = read_jsonl(out / "logs" / "eval" / "progress.jsonl")
        if progress and progress[-1]["stage"].endswith("scoring"):
            break
        time.sleep(0.05)
    ranks = _eval_ranks(out / "logs" / "eval")
    assert sorted(ranks) == [0, 1]
    ranks[1].send_signal(signal.SIGKILL)
    thread.join(timeout=120)
    error = outcome.get("error")
    assert isinstance(error, LaunchError), outcome
    assert error.rank == 1 and "rank 1 was killed" in str(error), str(error)[:2000]
    assert not (out / "eval.json").exists()


@pytest.mark.parametrize("config, kwargs, message", [
    ({"prefix_len": 0}, {}, "prefix_len=0 must be at least 1"),
    ({"mia_k": 2.0}, {}, "mia_k=2.0 must be a fraction"),
    ({"sufix_len": 8}, {}, "unknown field 'sufix_len' \\(did you mean 'suffix_len'"),
    ({"batch_size": "8"}, {}, "batch_size='8' must be an integer"),
    ({}, {"checkpoints": [3]}, "no checkpoint of step \\[3\\].*kept steps: \\[2, 4\\]"),
    ({}, {"checkpoints": "newest"}, "checkpoints='newest': expected 'latest', 'all'"),
    ({}, {"grid": [1, 1, 3, 1]}, "grid \\[1, 1, 3, 1\\] cannot evaluate .*divide by y=3"),
    ({}, {"grid": [1, 1, 0, 1]}, "grid must be four positive integers"),
    ({"beams": 0}, {}, "beams=0 must be at least 1"),
    ({"rows": 2, "row_prefix_len": 100, "row_suffix_len": 100}, {},
     "row_prefix_len=100 and row_suffix_len=100 do not fit rows of 128 tokens"),
    ({"rows": 2, "row_splits": ["test"]}, {}, "row_splits=\\['test'\\] must name 'train'"),
    ({"samples": -2}, {}, "samples=-2 must be at least 0"),
    ({"temperature": 0.0}, {}, "temperature=0.0 must be positive"),
    ({"reference": "/nowhere"}, {}, "reference: /nowhere: no such directory"),
    ({"reference": str(ROOT / "data_recipes")}, {}, "reference: .*data_recipes is not a run "
                                                    "directory"),
])
def test_bad_evaluations_are_refused_before_launch(runs, tmp_path, config, kwargs, message):
    data, probed, _, _ = runs
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        launch_evaluate(probed, data, config, out_dir=out, progress=False, **kwargs)
    assert not out.exists()  # nothing written, no rank started


def test_eval_cli_refuses_bad_targets(runs, tmp_path, capsys):
    data, probed, _, _ = runs
    assert axolab(["eval", str(tmp_path), "--data", str(data)]) == 2
    assert "is not a run directory (no checkpoints/)" in capsys.readouterr().err
    assert axolab(["eval", str(probed), "--data", str(probed)]) == 2
    assert "is not a dataset built by `axolab data build`" in capsys.readouterr().err
    assert axolab(["eval", str(probed), "--data", str(data), "--checkpoints", "2,x"]) == 2
    assert "expected latest, all or step numbers" in capsys.readouterr().err
    assert axolab(["eval", str(probed), "--data", str(data), "--grid", "1,1,1"]) == 2
    assert "four positive integers" in capsys.readouterr().err


def test_records_count_the_occurrences_each_checkpoint_trained_on(runs):
    """trained_occurrences, in the job's records and in the probes', equals the canary's
    occurrences counted through the rows the training loop's batches took up to that step
    (global_batch_rows, the run's seed and global batch)."""
    import numpy as np

    from axolab.data import load_canaries
    from axolab.data.loader import PackedDataset, global_batch_rows

    data, probed, _, _ = runs
    train = PackedDataset(data, "train")
    seed = json.loads((probed / "config.json").read_text())["seed"]
    canaries = load_canaries(data)
    probes = {r["step"]: r for r in read_jsonl(probed / "memorization_curve.jsonl")}
    for step in (EVERY, STEPS):
        seen = np.zeros(train.rows, dtype=np.int64)
        for s in range(step):
            np.add.at(seen, global_batch_rows(s, 4, train.rows, seed, train.shuffled), 1)
        want = [sum(int(seen[row]) for row, _ in c.occurrences) for c in canaries]
        got = read_jsonl(probed / "evals" / f"step-{step:08d}" / "memorization.jsonl")
        assert [r["trained_occurrences"] for r in got] == want, step
        assert [r["trained_occurrences"] for r in probes[step]["records"]] == want, step
    assert sum(want) > 0  # the run's 16 rows held canary occurrences
    # The counting over several epochs: two and 37 rows, one row per step, against the loop.
    from axolab.data.loader import row_visits
    from axolab.memorization.canary_eval import add_trained_occurrences

    position = 2 * train.rows + 37
    seen = np.zeros(train.rows, dtype=np.int64)
    for s in range(position):
        np.add.at(seen, global_batch_rows(s, 1, train.rows, seed, train.shuffled), 1)
    records = [{} for _ in canaries]
    add_trained_occurrences(records, canaries, row_visits(position, train.rows, seed,
                                                          train.shuffled))
    want = [sum(int(seen[row]) for row, _ in c.occurrences) for c in canaries]
    assert [r["trained_occurrences"] for r in records] == want
    assert all(w >= 2 * len(c.occurrences) for w, c in zip(want, canaries))
    assert sum(want) > 2 * sum(len(c.occurrences) for c in canaries)
