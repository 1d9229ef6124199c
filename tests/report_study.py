"""A fake study of run directories for the report tests: every file axolab writes, with
hostile text where users can put text, and curves from both sources."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_PARAM = "<img src=x onerror=alert(2)>"
CURVE_PLOTS = ("memorization_curve", "token_match_curve", "exposure_curve", "mia_auc_curve")
PLOTS = ("loss_curves", "throughput", "exact_by_repetitions", "exact_by_trained_occurrences",
         *CURVE_PLOTS, "extraction_curves", "mia_roc")
# Curve files by the write_run argument that holds their records, and their source.
CURVE_FILES = {"curve": ("memorization_curve.jsonl", "probe"),
               "checkpoint_curve": ("checkpoint_curve.jsonl", "checkpoint")}
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


def _memorization(seed: int, hostile: bool, passes: int | None = None) -> list[dict]:
    """Eight members (repeated 1..8 times) and eight controls; member scores run higher, with
    ties, as real scores have. ``passes``: trained_occurrences is repetitions x passes, but
    for the last member (one pass fewer, a run stopped mid-epoch) and the first (not trained
    on yet); None: every count unknown (null)."""
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
    for i, record in enumerate(out):
        if passes is None:
            record["trained_occurrences"] = None
        else:
            done = passes - 1 if i == 7 else 0 if i == 0 else passes
            record["trained_occurrences"] = record["repetitions"] * done
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


def _curve(steps, source: str, seed: int, exposure: bool = True) -> list[dict]:
    """Curve records (docs/memorization-files.md) at ``steps``, rates drawn at random."""
    rng = np.random.default_rng(seed)
    reps = ["0", "1", "4", "16"]
    out = []
    for step in steps:
        out.append({
            "step": step, "epoch": step * 8 / 160, "tokens_seen": step * 8 * 32,
            "source": source, "time_s": 1.5, "canaries": 4,
            "exact_match_by_repetitions": {r: float(rng.uniform()) for r in reps},
            "token_match_by_repetitions": {r: float(rng.uniform()) for r in reps},
            "matched_prefix_by_repetitions": {r: float(rng.uniform(0, 16)) for r in reps},
            # Secrets only, so not every count has an exposure.
            "exposure_by_repetitions": ({r: float(rng.uniform(0, 9)) for r in reps[2:]}
                                        if exposure else {}),
            "extraction_curve": {"4": 0.5, "8": float(rng.uniform())},
            "mia_auc": {s: float(rng.uniform()) for s in SCORES},
            "records": [{"id": "random-004-00", "kind": "random", "repetitions": 4,
                         "member": True, "exact": False, "matched_prefix": 3,
                         "token_match_rate": 0.25, "loss": -2.1}]})
    return out


def write_run(path: Path, config=None, metrics=None, evaluation=None, memorization=None,
              parameters=None, curve=None, checkpoint_curve=None) -> Path:
    path.mkdir(parents=True)
    for name, value in (("config.json", config), ("eval.json", evaluation),
                        ("parameters.json", parameters)):
        if value is not None:
            (path / name).write_text(json.dumps(value))
    for name, records in (("metrics.jsonl", metrics), ("memorization.jsonl", memorization),
                          (CURVE_FILES["curve"][0], curve),
                          (CURVE_FILES["checkpoint_curve"][0], checkpoint_curve)):
        if records is not None:
            (path / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_study(root: Path) -> dict[str, dict]:
    """Three runs, one nested a level deeper, one without evaluation; returns what was
    written, by the run name the report should give it. The first has both curve files (its
    checkpoint at step 10 evaluated twice, the later record last) and per-checkpoint evals/;
    the second only probes, no exposure, and a torn last line; the third no curve."""
    # The re-evaluation of step 10 has different rates, so the tests can tell which was kept.
    checkpoints = _curve([10, 20], "checkpoint", 3) + _curve([10], "checkpoint", 4)
    probes = _curve([4, 8], "probe", 6, exposure=False)
    del probes[0]["source"]  # an older writer; the file says which source it is
    runs = {
        "tiny-standard": dict(
            config=_config("tiny-llama", "standard", [1, 1, 1, 2]),
            metrics=_metrics(20, total=True, val_at=(10, 20)),
            evaluation=_eval(1), memorization=_memorization(1, hostile=True, passes=3),
            parameters={"model": "tiny-llama", "note": HOSTILE_PARAM},
            curve=_curve([5, 10, 15, 20], "probe", 5), checkpoint_curve=checkpoints),
        "sweep/small-goldfish": dict(
            config=_config("small-llama", "goldfish", [2, 1, 1, 2], goldfish_k=3, steps=10),
            metrics=_metrics(10, total=False, goldfish=True),  # written before total_steps
            evaluation=_eval(2), memorization=_memorization(2, hostile=False), curve=probes),
        "small-standard": dict(config=_config("small-llama", "standard", [1, 1, 1, 1]),
                               metrics=_metrics(5, total=True)),
    }
    for name, files in runs.items():
        write_run(root / name, **files)
    # A probe still being written: half a line, not in the records above.
    with open(root / "sweep/small-goldfish" / "memorization_curve.jsonl", "a") as f:
        f.write('{"step": 12, "epoch": 0.6, "exact_match_by')
    # A checkpoint's config.json, with no metrics beside it, is not a run.
    ckpt = root / "tiny-standard" / "checkpoints" / "step-00000020"
    ckpt.mkdir(parents=True)
    (ckpt / "config.json").write_text("{}")
    # Nor is the evaluation of one checkpoint, though its eval.json alone would make a run.
    evals = root / "tiny-standard" / "evals" / "step-00000010"
    write_run(evals, evaluation=_eval(7), memorization=_memorization(7, hostile=False))
    (evals / "continuations.jsonl").write_text("")
    return runs
