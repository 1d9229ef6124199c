"""`axolab report`: tables agree with the run files they were read from (numbers recomputed
here, independently), every figure is a PNG embedded in one page that needs nothing else and
escapes what it shows, bad input fails clearly and leaves nothing behind."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from axolab.cli import main as axolab
from axolab.report import ReportError, build_report, report_plots
from axolab.report.collect import find_runs
from axolab.report.curve_plots import (NO_CURVES, memorization_curve_panels,
                                       memorization_curves)

from report_study import (CURVE_FILES, CURVE_PLOTS, HOSTILE_ID, HOSTILE_PARAM, PLOTS, SCORES,
                          _config, _metrics, trapezoid, write_study, write_run)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = write_study(root / "results")
    out = build_report([root / "results"], root / "out" / "report")
    return runs, out


def _csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def test_the_report_and_the_scaling_sweep_give_one_throughput(study):
    """One run, one median: the report's runs table and axolab.scaling read the same steps."""
    from axolab.scaling import measured_throughput

    runs, out = study
    table = _csv(out, "runs").set_index("run")
    timed = [name for name, files in runs.items()
             if any("step_time_s" in m for m in files["metrics"])]
    assert timed
    for name in timed:
        run_dir = out.parents[1] / "results" / name
        assert measured_throughput(run_dir)["measured_tokens_per_s"] == pytest.approx(
            table.loc[name, "median_tokens_per_s"])


def test_throughput_summary_by_hand():
    import pandas as pd

    from axolab.metrics import throughput_summary

    records = [{"step": s, "step_time_s": 1.0 / s, "tokens_per_s": float(s), "mfu": 0.01 * s}
               for s in range(1, 21)]
    records.insert(5, {"step": 5, "val_loss": 3.0})  # an eval record: not a timed step
    got = throughput_summary(records)
    # Past warm-up: step > max(1, 0.1 * 20) = 2, so steps 3..20; the median of 3..20 is 11.5.
    assert got["timed_steps"] == 18 and got["tokens_per_s"] == 11.5
    assert got["mfu"] == pytest.approx(0.115) and got["model_flops_per_s"] is None
    # The same records through pandas (NaN where a record has no value) give the same medians.
    assert throughput_summary(pd.DataFrame(records).to_dict("records")) == got
    # Only warm-up steps logged so far: the newest one stands in.
    assert throughput_summary(records[:1])["tokens_per_s"] == 1.0
    assert throughput_summary([])["timed_steps"] == 0


def test_runs_table_agrees_with_the_run_files(study):
    runs, out = study
    table = _csv(out, "runs").set_index("run")
    assert sorted(table.index) == sorted(runs)
    for name, files in runs.items():
        row, metrics = table.loc[name], files["metrics"]
        assert row["final_loss"] == pytest.approx(metrics[-1]["loss"])
        assert row["steps"] == metrics[-1]["step"]
        # Warm-up, left out of the medians: the first step and the first 10% of the steps done.
        steady = [m for m in metrics if m["step"] > max(1, 0.1 * metrics[-1]["step"])]
        assert row["median_tokens_per_s"] == pytest.approx(
            np.median([m["tokens_per_s"] for m in steady]))
        assert row["median_mfu"] == pytest.approx(np.median([m["mfu"] for m in steady]))
        assert row["grid"] == "x".join(map(str, files["config"]["grid"]))
        assert row["ranks"] == np.prod(files["config"]["grid"])
        assert row["model"] == files["config"]["model"]
        assert row["loss"] == files["config"]["loss"]
    tiny, small = table.loc["tiny-standard"], table.loc["sweep/small-goldfish"]
    assert tiny["final_val_loss"] == pytest.approx(5.0) and pd.isna(small["final_val_loss"])
    assert tiny["total_steps"] == 20 and small["total_steps"] == 10  # the latter from config
    assert pd.isna(tiny["goldfish_k"]) and small["goldfish_k"] == 3  # standard: not applicable
    for name in ("tiny-standard", "sweep/small-goldfish"):
        ev = runs[name]["evaluation"]
        assert table.loc[name, "max_repetitions"] == 8
        assert table.loc[name, "exact_at_max_repetitions"] == pytest.approx(
            ev["exact_match_by_repetitions"]["8"])
        assert table.loc[name, "exact_controls"] == pytest.approx(
            ev["exact_match_by_repetitions"]["0"])
        for score in SCORES:
            assert table.loc[name, f"mia_{score}_auc"] == pytest.approx(ev["mia"][score]["auc"])
    assert pd.isna(table.loc["small-standard", "mia_loss_auc"])
    assert tiny["param_model"] == "tiny-llama" and tiny["param_note"] == HOSTILE_PARAM


def test_long_tables_agree_with_the_run_files(study):
    runs, out = study
    metrics = _csv(out, "metrics")
    assert list(metrics.columns[:2]) == ["run", "step"]
    for name, files in runs.items():
        mine = metrics[metrics["run"] == name]
        assert mine["step"].tolist() == [m["step"] for m in files["metrics"]]
        assert mine["loss"].to_numpy() == pytest.approx([m["loss"] for m in files["metrics"]])

    memorization = _csv(out, "memorization")
    assert len(memorization) == 32 and HOSTILE_ID in set(memorization["id"])
    by_reps, curves, roc = (_csv(out, n) for n in ("exact_by_repetitions",
                                                   "extraction_curves", "mia_roc"))
    # Exact match by occurrences trained on, from the records themselves: members only, the
    # run whose counts are all null left out.
    trained = _csv(out, "exact_by_trained_occurrences")
    assert set(trained["run"]) == {"tiny-standard"}
    expected: dict[int, list] = {}
    for r in runs["tiny-standard"]["memorization"]:
        if r["member"]:
            expected.setdefault(r["trained_occurrences"], []).append(float(r["exact"]))
    assert sorted(expected) == [0, 3, 6, 12, 16, 24]  # 16: the last member, one pass fewer
    assert dict(zip(trained["trained_occurrences"], trained["exact"])) == pytest.approx(
        {n: sum(v) / len(v) for n, v in expected.items()})
    assert dict(zip(trained["trained_occurrences"], trained["canaries"])) == {
        n: len(v) for n, v in expected.items()}
    assert set(by_reps["run"]) == set(curves["run"]) == set(roc["run"]) == {
        "tiny-standard", "sweep/small-goldfish"}
    for name in ("tiny-standard", "sweep/small-goldfish"):
        ev = runs[name]["evaluation"]
        mine = by_reps[by_reps["run"] == name]
        assert set(mine["kind"]) == {"all", *ev.get("by_kind", {})}
        for kind, rates in ev.get("by_kind", {}).items():
            got = mine[mine["kind"] == kind].set_index("repetitions")["exact"].to_dict()
            assert got == pytest.approx({int(k): v for k, v in
                                         rates["exact_match_by_repetitions"].items()}), kind
        mine = mine[mine["kind"] == "all"].set_index("repetitions")
        for key, column in (("exact_match_by_repetitions", "exact"),
                            ("token_match_by_repetitions", "token_match"),
                            ("exposure_by_repetitions", "exposure")):
            expected = {int(k): v for k, v in ev[key].items()}
            got = mine[column].dropna().to_dict()
            assert got == pytest.approx(expected), (name, column)
        mine = curves[curves["run"] == name]
        assert dict(zip(mine["prefix_len"], mine["exact"])) == pytest.approx(
            {int(k): v for k, v in ev["extraction_curve"].items()})

        records = runs[name]["memorization"]
        member = [r["member"] for r in records]
        for score in SCORES:
            points = roc[(roc["run"] == name) & (roc["score"] == score)]
            auc = roc_auc_score(member, [r[score] for r in records])
            assert trapezoid(points["tpr"], points["fpr"]) == pytest.approx(auc), (name, score)


def _last_records(files: dict) -> dict[tuple, dict]:
    """The curve records written for one run by (source, step), a later one replacing an
    earlier one of the same step."""
    out = {}
    for key, (_, source) in CURVE_FILES.items():
        for record in files.get(key) or []:
            out[(source, record["step"])] = record
    return out


def test_curve_tables_agree_with_the_curve_files(study):
    runs, out = study
    curve, mia = _csv(out, "memorization_curve"), _csv(out, "mia_curve")
    assert list(curve.columns) == ["run", "model", "loss", "source", "step", "epoch",
                                   "tokens_seen", "repetitions", "exact", "token_match",
                                   "matched_prefix", "exposure"]
    assert list(mia.columns) == ["run", "model", "loss", "source", "step", "epoch",
                                 "tokens_seen", "score", "auc"]
    assert set(curve["run"]) == set(mia["run"]) == {"tiny-standard", "sweep/small-goldfish"}
    assert curve.equals(curve.sort_values(["run", "source", "step", "repetitions"],
                                          ignore_index=True))
    for name in ("tiny-standard", "sweep/small-goldfish"):
        last = _last_records(runs[name])
        mine = curve[curve["run"] == name]
        assert (mine["model"] == runs[name]["config"]["model"]).all()
        assert (mine["loss"] == runs[name]["config"]["loss"]).all()
        for key, column in (("exact_match_by_repetitions", "exact"),
                            ("token_match_by_repetitions", "token_match"),
                            ("matched_prefix_by_repetitions", "matched_prefix"),
                            ("exposure_by_repetitions", "exposure")):
            expected = {(source, step, int(reps)): rate for (source, step), rec in last.items()
                        for reps, rate in rec[key].items()}
            got = {(s, st, r): v for s, st, r, v in
                   zip(mine["source"], mine["step"], mine["repetitions"], mine[column])
                   if not np.isnan(v)}
            assert got == pytest.approx(expected), (name, column)
        # One row per (source, step, count) written, placed where the record says.
        assert len(mine) == sum(len(rec["exact_match_by_repetitions"]) for rec in last.values())
        for row in mine.itertuples():
            rec = last[(row.source, row.step)]
            assert (row.epoch, row.tokens_seen) == pytest.approx((rec["epoch"],
                                                                  rec["tokens_seen"]))
        mine = mia[mia["run"] == name]
        expected = {(source, step, score): auc for (source, step), rec in last.items()
                    for score, auc in rec["mia_auc"].items()}
        assert dict(zip(zip(mine["source"], mine["step"], mine["score"]),
                        mine["auc"])) == pytest.approx(expected)
        assert len(mine) == len(expected)
    # The probe run's torn last line (step 12) is not a point; nor did it fail the report.
    small = curve[curve["run"] == "sweep/small-goldfish"]
    assert set(small["source"]) == {"probe"} and sorted(set(small["step"])) == [4, 8]
    assert small["exposure"].isna().all()  # no secrets: NaN, not 0


def test_a_checkpoint_evaluated_again_keeps_its_last_record(study):
    runs, out = study
    written = runs["tiny-standard"]["checkpoint_curve"]
    first, again = written[0], written[-1]
    assert first["step"] == again["step"] == 10
    curve = _csv(out, "memorization_curve")
    mine = curve[(curve["run"] == "tiny-standard") & (curve["source"] == "checkpoint")]
    assert mine["step"].tolist() == sorted(mine["step"])  # step order, not file order
    at10 = mine[mine["step"] == 10].set_index("repetitions")["exact"].to_dict()
    assert at10 == pytest.approx({int(k): v for k, v in
                                  again["exact_match_by_repetitions"].items()})
    assert at10 != pytest.approx({int(k): v for k, v in
                                  first["exact_match_by_repetitions"].items()})
    mia = _csv(out, "mia_curve")
    mine = mia[(mia["run"] == "tiny-standard") & (mia["source"] == "checkpoint")
               & (mia["step"] == 10)]
    assert dict(zip(mine["score"], mine["auc"])) == pytest.approx(again["mia_auc"])


def test_runs_keep_their_raw_curve_records_and_evals_are_not_runs(study):
    runs, out = study
    found = {run.name: run for run in find_runs([out.parent.parent / "results"])}
    assert sorted(found) == sorted(runs)  # no evals/step-00000010, no checkpoints/...
    assert found["small-standard"].curve is None
    tiny = found["tiny-standard"].curve
    # Raw: every record of both files in file order, the re-evaluated step still twice.
    assert tiny["source"].tolist() == ["probe"] * 4 + ["checkpoint"] * 3
    assert tiny["step"].tolist() == [5, 10, 15, 20, 10, 20, 10]
    small = found["sweep/small-goldfish"].curve
    assert small["source"].tolist() == ["probe", "probe"]  # filled in from the file name


def test_page_embeds_every_plot_and_escapes_what_it_shows(study):
    _, out = study
    for name in PLOTS:
        assert (out / "plots" / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == len(PLOTS)
    embedded = {base64.b64decode(data) for data in re.findall(r"base64,([^\"]+)\"", page)}
    assert embedded == {(out / "plots" / f"{name}.png").read_bytes() for name in PLOTS}
    assert not re.search(r"https?://", page)
    assert HOSTILE_ID not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert HOSTILE_PARAM not in page and "&lt;img src=x onerror=alert(2)&gt;" in page
    assert "sweep/small-goldfish" in page and "Not drawn" not in page
    assert [p.name for p in out.parent.iterdir()] == [out.name]  # no temporary left beside


def test_page_loads_every_image_in_a_browser(study):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed: apt-get install chromium (.ci/run does)")
    _, out = study
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu",
                          "--virtual-time-budget=10000", "--dump-dom",
                          (out / "index.html").resolve().as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    counts = re.search(r'data-images-loaded="(\d+)" data-images-total="(\d+)"', dom)
    assert counts, f"the page's load script did not run: {dom[:300]!r}"
    assert int(counts.group(1)) == int(counts.group(2)) == len(PLOTS)


def test_plots_without_data_are_skipped_and_said_so(tmp_path, capsys, monkeypatch):
    write_run(tmp_path / "results" / "only-training",
              config=_config("tiny-llama", "standard", [1, 1, 1, 1]),
              metrics=_metrics(4, total=True))
    out = tmp_path / "report"
    assert axolab(["report", str(tmp_path / "results"), "--out", str(out)]) == 0
    assert capsys.readouterr().out.strip() == str(out / "index.html")
    assert sorted(p.stem for p in (out / "plots").iterdir()) == ["loss_curves", "throughput"]
    page = (out / "index.html").read_text()
    assert page.count("data:image/png;base64,") == 2
    assert page.count("Not drawn: ") == 4 + len(CURVE_PLOTS)
    assert "no run has trained_occurrences in memorization.jsonl" in page
    assert "no run has an extraction_curve (eval.json)" in page
    assert page.count(f"Not drawn: {NO_CURVES}") == len(CURVE_PLOTS)
    assert len(_csv(out, "mia_roc")) == 0 and list(_csv(out, "mia_roc").columns) == [
        "run", "model", "loss", "score", "fpr", "tpr"]
    for name in ("memorization_curve", "mia_curve"):  # no curves: headers only
        assert len(_csv(out, name)) == 0 and list(_csv(out, name))[:4] == [
            "run", "model", "loss", "source"]

    # A second report replaces the first whole; a failing one leaves the first alone and
    # nothing else behind.
    (out / "stale.txt").write_text("from an earlier report")
    build_report(tmp_path / "results", out)
    assert not (out / "stale.txt").exists()
    (tmp_path / "results" / "only-training" / "eval.json").write_text("{not json")
    with pytest.raises(ReportError, match=r"only-training/eval\.json: not valid JSON"):
        build_report(tmp_path / "results", out)
    (tmp_path / "results" / "only-training" / "eval.json").unlink()
    page = (out / "index.html").read_bytes()

    def disk_full(new, out):
        raise OSError("No space left on device")

    monkeypatch.setattr("axolab.report.build.replace_directory", disk_full)
    with pytest.raises(OSError, match="No space left"):
        build_report(tmp_path / "results", out)
    assert (out / "index.html").read_bytes() == page
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "results"]


def test_bad_input_fails_clearly_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "out" / "report"
    missing = tmp_path / "nowhere"
    with pytest.raises(ReportError, match=f"{re.escape(str(missing))}: no such directory"):
        build_report([missing], out)
    empty = tmp_path / "empty"
    (empty / "checkpoints").mkdir(parents=True)
    (empty / "checkpoints" / "config.json").write_text("{}")  # config without metrics
    with pytest.raises(ReportError, match=f"no runs found under {re.escape(str(empty))} "
                                          r"\(a run directory has config.json and metrics"):
        build_report([empty], out)
    for bad in (missing, empty):
        assert axolab(["report", str(bad), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("axolab report: ") and str(bad) in err
    assert not (tmp_path / "out").exists()

    broken = write_run(tmp_path / "broken" / "run", config=_config("m", "standard", [1]),
                       metrics=_metrics(3, total=True))
    lines = (broken / "metrics.jsonl").read_text().splitlines()
    (broken / "metrics.jsonl").write_text("\n".join([lines[0], "{oops", lines[2]]) + "\n")
    with pytest.raises(ReportError, match=r"metrics\.jsonl, line 2: not valid JSON"):
        build_report([tmp_path / "broken"], out)
    # A run still training may have half of its last line written: that is not an error.
    (broken / "metrics.jsonl").write_text("\n".join(lines[:2]) + '\n{"step": 3, "lo')
    assert find_runs([tmp_path / "broken"])[0].metrics["step"].tolist() == [1, 2]

    # Someone's directory at --out is not a report to replace.
    (precious := tmp_path / "precious").mkdir()
    (precious / "notes.txt").write_text("mine")
    with pytest.raises(ReportError, match="not an earlier report"):
        build_report([tmp_path / "broken"], precious)
    assert [p.name for p in precious.iterdir()] == ["notes.txt"]


def test_curve_figures_draw_against_each_position_and_say_what_is_missing(study):
    runs, out = study
    curve, mia = _csv(out, "memorization_curve"), _csv(out, "mia_curve")
    for x in ("step", "epoch", "tokens_seen"):
        assert memorization_curves(curve, x=x).png[:4] == b"\x89PNG", x
    # Checkpoints alone (no probes) still make a curve.
    only = curve[curve["source"] == "checkpoint"]
    assert memorization_curves(only).png is not None
    # The probe-only run has no secrets: its exposure figure says so instead of drawing.
    small = curve[curve["run"] == "sweep/small-goldfish"]
    token, exposure, auc = memorization_curve_panels(small, mia[mia["run"] == small["run"].iloc[0]])
    assert token.png is not None and auc.png is not None
    assert exposure.png is None and "exposure" in exposure.skipped
    with pytest.raises(ValueError, match="x='wall'"):
        memorization_curves(curve, x="wall")
    # What a notebook shows.
    plots = report_plots(out.parent.parent / "results")
    assert list(plots) == list(PLOTS)
    assert plots["memorization_curve"]._repr_png_()[:4] == b"\x89PNG"
