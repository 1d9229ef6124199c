"""evaluate(): every canary scored, consistent with the building blocks, files in place."""

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from axolab.config import TrainConfig, config_from_dict
from axolab.data import build, load_canaries
from axolab.memorization import EvalConfig, evaluate, exact_match, exposure, token_scores

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from axolab.train import run

    base = tmp_path_factory.mktemp("eval")
    data = build(ROOT / "data_recipes" / "tiny.yaml", base / "data", progress=False)
    cfg = config_from_dict(TrainConfig, dict(data=str(data), run_dir=str(base / "run"), steps=3,
                                             global_batch=4, eval_interval=0, progress=False))
    run(cfg)
    return data, base / "run"


@pytest.fixture(scope="module")
def evaluated(trained):
    """The trained run evaluated once, for the tests that read what evaluate() wrote."""
    data, run_dir = trained
    evaluate(run_dir, data, EvalConfig(prefix_len=8, suffix_len=8, curve_prefix_lens=[4]))
    return data, run_dir


def test_evaluate_run_dir(trained):
    from axolab.checkpoint import latest_checkpoint, load_pretrained
    from axolab.parallel import Grid
    from sklearn.metrics import roc_auc_score
    from transformers import AutoModelForCausalLM, AutoTokenizer

    data, run_dir = trained
    cfg = EvalConfig(prefix_len=8, suffix_len=8, curve_prefix_lens=[4, 8])
    summary = evaluate(run_dir, data, cfg)
    records = [json.loads(x) for x in (run_dir / "memorization.jsonl").read_text().splitlines()]
    written = json.loads((run_dir / "eval.json").read_text())
    assert written.pop("memorization_sha256") == \
        hashlib.sha256((run_dir / "memorization.jsonl").read_bytes()).hexdigest()
    assert written == summary
    canaries = load_canaries(data)
    assert [r["id"] for r in records] == [c.id for c in canaries]
    model = load_pretrained(latest_checkpoint(run_dir / "checkpoints"), Grid.init()).eval()
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    eos = [tok.eos_token_id]
    checked_secrets = 0
    for c, r in zip(canaries, records):
        p, s = r["prefix_len"], r["suffix_len"]
        direct = exact_match(model, torch.tensor([eos + c.token_ids[:p + s]]), p + 1, s)
        assert r["exact"] == bool(direct.exact[0])
        assert r["matched_prefix"] == int(direct.matched_prefix[0])
        assert 0 <= r["rouge_l"] <= 1 and 0 <= r["token_match_rate"] <= 1
        if c.kind == "secret" and checked_secrets < 2:  # two suffice; each costs 200 scores
            checked_secrets += 1
            own = -token_scores(model, [eos + c.token_ids]).sequence_logprob()[0]
            cand = -token_scores(model, [eos + tok(t, add_special_tokens=False)["input_ids"]
                                         for t in c.candidates]).sequence_logprob()
            assert r["exposure_rank"] == exposure(float(own), cand.numpy())["rank"]
    for n, rate in summary["exact_match_by_repetitions"].items():
        assert rate == pytest.approx(np.mean([r["exact"] for r in records
                                              if r["repetitions"] == int(n)]))
    assert set(summary["mia"]) == {"loss", "zlib", "min_k", "min_k_plus_plus"}
    # Membership: every score is oriented so that higher means "more likely a member"
    # (axolab.memorization.mia), so the AUC is sklearn's over (member label, score) as recorded.
    # At a false-positive rate of at most 1% with 18 controls no control may be flagged: the
    # TPR is the share of members scoring above every control.
    member = np.array([r["member"] for r in records])
    assert (member.sum(), (~member).sum()) == (18, 18)
    for name, m in summary["mia"].items():
        score = np.array([r[name] for r in records])
        assert (m["members"], m["nonmembers"]) == (18, 18)
        assert m["auc"] == pytest.approx(roc_auc_score(member, score), abs=1e-12)
        assert m["tpr_at_0.01_fpr"] == pytest.approx(
            np.mean(score[member] > score[~member].max()), abs=1e-12)
    # Exposure (secrets only, bits): log2 of the number of possible secrets (the candidates and
    # the secret itself) minus log2 of the secret's rank; by repetition count, the secrets' mean.
    secrets = [r for r in records if r["kind"] == "secret"]
    assert all("exposure" not in r for r in records if r["kind"] != "secret")
    for r in secrets:
        assert r["exposure"] == pytest.approx(np.log2(r["exposure_candidates"] + 1)
                                              - np.log2(r["exposure_rank"]))
    assert set(summary["exposure_by_repetitions"]) == {str(r["repetitions"]) for r in secrets}
    for n, mean in summary["exposure_by_repetitions"].items():
        assert mean == pytest.approx(np.mean([r["exposure"] for r in secrets
                                              if r["repetitions"] == int(n)]))
    # Extraction curve (Carlini et al.'s k-extractability): the share of member canaries whose
    # last 8 tokens greedy decoding reproduces from the k tokens just before them, on the one
    # set of members long enough (with the separator before them) for k = 8. Greedy reproduces
    # them exactly when the teacher-forced argmax is right at every suffix position:
    # recomputed here with the checkpoint as a plain Hugging Face model.
    hf = AutoModelForCausalLM.from_pretrained(str(latest_checkpoint(run_dir / "checkpoints")))
    assert set(summary["extraction_curve"]) == {"4", "8"}
    members = [eos + c.token_ids for c in canaries if c.member and len(c.token_ids) + 1 >= 16]
    assert summary["extraction_curve_canaries"] == len(members) == 12
    assert summary["extraction_curve_suffix_len"] == 8
    for k in (4, 8):
        hits = []
        for full in members:
            ids = torch.tensor([full[-8 - k:]])
            with torch.no_grad():
                pred = hf(ids).logits[0, k - 1:-1].argmax(-1)
            hits.append(bool((pred == ids[0, k:]).all()))
        assert summary["extraction_curve"][str(k)] == pytest.approx(np.mean(hits))


def test_heldout_perplexity_per_document_group(evaluated):
    """eval.json's held-out perplexity of each document group against the checkpoint as a
    plain Hugging Face model: exp of the summed cross-entropy of the group's never-trained
    documents (each after the separator, as injected) over their predicted tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from axolab.checkpoint import latest_checkpoint

    data, run_dir = evaluated
    summary = json.loads((run_dir / "eval.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(str(latest_checkpoint(run_dir / "checkpoints")))
    eos = AutoTokenizer.from_pretrained(str(data / "tokenizer")).eos_token_id
    found = summary["perplexity_by_domain"]["document_groups"]
    canaries = load_canaries(data)
    groups = {c.group for c in canaries if c.kind == "document"}
    assert set(found) == groups == {"paragraph"}
    for group in groups:
        nll, tokens, docs = 0.0, 0, 0
        for c in canaries:
            if c.group == group and not c.member:
                ids = torch.tensor([[eos] + c.token_ids])
                with torch.no_grad():
                    logits = model(ids).logits[0, :-1]
                nll += float(torch.nn.functional.cross_entropy(logits, ids[0, 1:],
                                                               reduction="sum"))
                tokens, docs = tokens + len(c.token_ids), docs + 1
        assert docs == 6  # the tiny recipe's paragraph controls
        assert (found[group]["tokens"], found[group]["documents"]) == (tokens, docs)
        assert found[group]["perplexity"] == pytest.approx(np.exp(nll / tokens), rel=1e-5)


def test_drilldown_agrees_with_the_records(evaluated):
    from transformers import AutoTokenizer

    from axolab.memorization import Continuation, continuation_html, continuations

    data, run_dir = evaluated
    records = [json.loads(x) for x in (run_dir / "memorization.jsonl").read_text().splitlines()]
    shown = continuations(run_dir, data)  # split as eval.json's config says
    tok = AutoTokenizer.from_pretrained(str(data / "tokenizer"))
    assert [c.canary_id for c in shown] == [r["id"] for r in records]
    for c, r, canary in zip(shown, records, load_canaries(data)):
        # Real generation here, the teacher-forced fast path in evaluate: they must agree.
        assert (len(c.prompt), len(c.truth)) == (r["prefix_len"], r["suffix_len"])
        assert c.exact == r["exact"] and c.matched_prefix == r["matched_prefix"]
        assert np.mean(c.matches) == pytest.approx(r["token_match_rate"])
        n = r["prefix_len"] + r["suffix_len"]
        if canary.kind != "random":  # random ids may split a UTF-8 character across tokens
            assert "".join(c.prompt + c.truth) == tok.decode(canary.token_ids[:n])
    with pytest.raises(ValueError, match="no canary 'nope'"):
        continuations(run_dir, data, ["nope"])
    hostile = Continuation("<b>id</b>", "document", 2, True, ["<script>"], ["a", "\x0b"],
                           ["a", "b"], [True, False])
    page = continuation_html(hostile)
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;id" in page
    assert "\\x0b" in page and "1/2 tokens reproduced, first miss at 1" in page


def test_canary_browser_shows_the_picked_canary(evaluated):
    from axolab.widgets import canary_browser, run_controls

    data, run_dir = evaluated
    box = canary_browser(run_dir, data)
    picker, view = box.children
    first = min(load_canaries(data), key=lambda c: (-c.repetitions, c.id))  # listed first
    assert f"seen {first.repetitions}" in picker.options[0][0] and first.id in view.value
    picker.value = picker.options[-1][1]  # a user picks another canary
    assert f"<b>{picker.value}</b>" in view.value and first.id not in view.value
    controls = run_controls(model="small-llama", grid=(2, 1, 1, 2))
    assert controls.values()["grid"] == [2, 1, 1, 2]
    controls.fields["grid"].value = "2,x"
    with pytest.raises(ValueError, match="four positive integers"):
        controls.values()


def test_a_new_evaluation_leaves_no_earlier_optional_files(tmp_path):
    """continuations.jsonl and row_extraction.jsonl belong to the evaluation whose eval.json
    sits beside them: one that produces neither removes an earlier one's."""
    from axolab.files import read_jsonl
    from axolab.memorization.canary_eval import Scored, write_eval_files

    first = Scored([{"id": "a"}], {"checkpoint": "step-1"}, [{"id": "a", "generated_ids": [1]}],
                   [{"split": "train", "row": 3}])
    write_eval_files(tmp_path, first)
    assert read_jsonl(tmp_path / "continuations.jsonl") == first.continuations
    assert read_jsonl(tmp_path / "row_extraction.jsonl") == first.rows
    write_eval_files(tmp_path, Scored([{"id": "a"}], {"checkpoint": "step-2"}, []))
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written.pop("memorization_sha256") == \
        hashlib.sha256((tmp_path / "memorization.jsonl").read_bytes()).hexdigest()
    assert written == {"checkpoint": "step-2"}
    assert not (tmp_path / "continuations.jsonl").exists()
    assert not (tmp_path / "row_extraction.jsonl").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["eval.json", "memorization.jsonl"]


def test_records_left_beside_an_earlier_summary_are_not_reported(tmp_path):
    """An evaluation stopped after writing memorization.jsonl and before eval.json: the report
    reads the previous summary and leaves out records it does not summarise (hash mismatch)."""
    import warnings

    from axolab.memorization.canary_eval import Scored, write_eval_files
    from axolab.report.collect import read_run

    write_eval_files(tmp_path, Scored([{"id": "a", "exact": True}], {"checkpoint": "step-1"},
                                      []))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert read_run(tmp_path).memorization["exact"].tolist() == [True]
    (tmp_path / "memorization.jsonl").write_text(json.dumps({"id": "a", "exact": False}) + "\n")
    with pytest.warns(UserWarning, match="is not the one .*eval.json summarises"):
        run = read_run(tmp_path)
    assert run.memorization is None and run.eval["checkpoint"] == "step-1"
    # An eval.json written before summaries carried the hash is taken with its records.
    written = json.loads((tmp_path / "eval.json").read_text())
    del written["memorization_sha256"]
    (tmp_path / "eval.json").write_text(json.dumps(written))
    assert read_run(tmp_path).memorization["exact"].tolist() == [False]


def test_study_evaluates_again_a_run_whose_records_its_summary_does_not_name(tmp_path):
    """run_study keeps a run only when its eval.json summarises the memorization.jsonl beside
    it (and has the validation loss); records an interrupted evaluation left beside an earlier
    summary make it evaluate the run again, and no eval.json means train and evaluate."""
    from axolab.memorization.canary_eval import Scored, write_eval_files
    from axolab.study import pending

    assert pending(tmp_path) == "train"
    write_eval_files(tmp_path, Scored([{"id": "a", "exact": True}],
                                      {"checkpoint": "step-1", "validation_loss": 2.5}, []))
    assert pending(tmp_path) is None
    (tmp_path / "memorization.jsonl").write_text(json.dumps({"id": "a", "exact": False}) + "\n")
    assert pending(tmp_path) == "evaluate"
    (tmp_path / "memorization.jsonl").unlink()
    assert pending(tmp_path) == "evaluate"
    write_eval_files(tmp_path, Scored([{"id": "a", "exact": True}], {"checkpoint": "step-1"}, []))
    assert pending(tmp_path) == "evaluate"  # no validation loss: evaluated before the study
