"""`axolab report`: tables agree with the run files they were read from (numbers recomputed
here, independently), every figure is a PNG embedded in one page that needs nothing else and
escapes what it shows, bad input fails clearly and leaves nothing behind."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from axolab.cli import main as axolab
from axolab.report import ReportError, build_report
from axolab.report.collect import find_runs

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_PARAM = "<img src=x onerror=alert(2)>"
PLOTS = ("loss_curves", "throughput", "exact_by_repetitions", "extraction_curves", "mia_roc")
SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus")
# numpy 2 renamed trapz; the report's users may have either.
trapezoid = getattr(np, "trapezoid", None) or np.trapz


def _config(model, loss, grid, **extra) -> dict:
    return {"model": model, "grid": grid, "loss": loss, "goldfish_k": 4, "goldfish_h": 13,
            "lr": 1e-3, "global_batch": 8, "steps": None, "epochs": 1.0, "precision": "fp32",
            **extra}


def _metrics(steps: int, total: bool, val_at=(), goldfish=False) -> list[dict]:
    """Loss falls linearly; the first two steps are slow (warm-up), later ones speed up."""
    out = []
    for s in range(1, steps + 1):
        tps = 100.0 * s if s <= 2 else 1000.0 + 10 * s
        rec = {"step": s, "loss": 5.0 - 0.1 * s, "lr": 1e-3, "grad_norm": 1.0,
               "tokens_per_s": tps, "step_time_s": 1.0, "model_flops_per_s": tps * 1e6,
               "mfu": tps / 1e5, "memory_mb": 100.0}
        rec.update({"total_steps": steps} if total else {})
        rec.update({"val_loss": 6.0 - 0.05 * s} if s in val_at else {})
        rec.update({"loss_dropped_tokens": 5.5 - 0.1 * s} if goldfish else {})
        out.append(rec)
    return out


def _memorization(seed: int, hostile: bool) -> list[dict]:
    """Eight members (repeated 1..8 times) and eight controls; member scores run higher, with
    ties, as real scores have."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(16):
        member = i < 8
        reps = [1, 2, 4, 8][i % 4] if member else 0
        scores = {s: float(np.round(rng.normal(1.0 if member else 0.0), 1)) for s in SCORES}
        out.append({"id": f"random-{i:04d}", "group": "random", "kind": "random",
                    "repetitions": reps, "member": member, "tokens": 24, "prefix_len": 8,
                    "suffix_len": 16, "exact": reps == 8, "matched_prefix": 16 if reps == 8 else 2,
                    "token_match_rate": 1.0 if reps == 8 else 0.1, "rouge_l": 0.5, **scores})
    if hostile:
        out[7]["id"] = HOSTILE_ID  # repeated 8 times: extracted, so shown on the page
    return out


def _eval(seed: int) -> dict:
    rng = np.random.default_rng(seed)
    reps = ["0", "1", "2", "4", "8"]
    return {"config": {"prefix_len": 8, "suffix_len": 16, "curve_prefix_lens": [4, 8]},
            "canaries": 16,
            "exact_match_by_repetitions": {r: float(rng.uniform()) for r in reps},
            "token_match_by_repetitions": {r: float(rng.uniform()) for r in reps},
            "rouge_l_by_repetitions": {r: float(rng.uniform()) for r in reps},
            "exposure_by_repetitions": {r: float(rng.uniform(0, 9)) for r in reps[:3]},
            "mia": {s: {"auc": float(rng.uniform()), "tpr_at_0.01_fpr": 0.1, "members": 8,
                        "nonmembers": 8} for s in SCORES},
            "extraction_curve": {"4": 0.25, "8": float(rng.uniform())},
            # Only the first run has rates per kind, as runs evaluated before by_kind existed.
            **({"by_kind": {kind: {"exact_match_by_repetitions":
                                   {r: float(rng.uniform()) for r in reps}}
                            for kind in ("random", "secret")}} if seed == 1 else {})}


def write_run(path: Path, config=None, metrics=None, evaluation=None, memorization=None,
              parameters=None) -> Path:
    path.mkdir(parents=True)
    for name, value in (("config.json", config), ("eval.json", evaluation),
                        ("parameters.json", parameters)):
        if value is not None:
            (path / name).write_text(json.dumps(value))
    for name, records in (("metrics.jsonl", metrics), ("memorization.jsonl", memorization)):
        if records is not None:
            (path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_study(root: Path) -> dict[str, dict]:
    """Three runs, one nested a level deeper, one without evaluation; returns what was
    written, by the run name the report should give it."""
    runs = {
        "tiny-standard": dict(
            config=_config("tiny-llama", "standard", [1, 1, 1, 2]),
            metrics=_metrics(20, total=True, val_at=(10, 20)),
            evaluation=_eval(1), memorization=_memorization(1, hostile=True),
            parameters={"model": "tiny-llama", "note": HOSTILE_PARAM}),
        "sweep/small-goldfish": dict(
            config=_config("small-llama", "goldfish", [2, 1, 1, 2], goldfish_k=3, steps=10),
            metrics=_metrics(10, total=False, goldfish=True),  # written before total_steps
            evaluation=_eval(2), memorization=_memorization(2, hostile=False)),
        "small-standard": dict(config=_config("small-llama", "standard", [1, 1, 1, 1]),
                               metrics=_metrics(5, total=True)),
    }
    for name, files in runs.items():
        write_run(root / name, **files)
    # A checkpoint's config.json, with no metrics beside it, is not a run.
    ckpt = root / "tiny-standard" / "checkpoints" / "step-00000020"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    return runs


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = write_study(root / "results")
    out = build_report([root / "results"], root / "out" / "report")
    return runs, out


def _csv(out: Path, name: str) -> pd.DataFrame:
    return pd.read_csv(out / "tables" / f"{name}.csv")


def test_runs_table_agrees_with_the_run_files(study):
    runs, out = study
    table = _csv(out, "runs").set_index("run")
    assert sorted(table.index) == sorted(runs)
    for name, files in runs.items():
        row, metrics = table.loc[name], files["metrics"]
        assert row["final_loss"] == pytest.approx(metrics[-1]["loss"])
        assert row["steps"] == metrics[-1]["step"]
        # Warm-up is the first 10% of the steps done; it is left out of the medians.
        steady = [m for m in metrics if m["step"] > 0.1 * metrics[-1]["step"]]
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
    assert page.count("data:image/png;base64,") == 2 and page.count("Not drawn: ") == 3
    assert "no run has an extraction_curve (eval.json)" in page
    assert len(_csv(out, "mia_roc")) == 0 and list(_csv(out, "mia_roc").columns) == [
        "run", "model", "loss", "score", "fpr", "tpr"]

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

    monkeypatch.setattr("axolab.report.build._replace", disk_full)
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
