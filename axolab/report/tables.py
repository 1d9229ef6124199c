"""Tidy tables (pandas DataFrames) over all runs: one row per run, per logged step, per canary,
per repetition count, per prefix length, per ROC point, per point of a memorization curve.
Each becomes tables/<name>.csv."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
from sklearn.metrics import roc_curve

from ..metrics import throughput_summary
from .collect import CURVE_FILES, Run
from .errors import ReportError

# Throughput of the first steps includes compilation, allocator growth and cold caches.
# Membership scores in memorization.jsonl, each oriented so that higher means "member".
MIA_SCORES = ("loss", "zlib", "min_k", "min_k_plus_plus", "reference")
# eval.json's per-repetition dicts and the column each becomes.
BY_REPETITIONS = (("exact_match_by_repetitions", "exact"),
                  ("token_match_by_repetitions", "token_match"),
                  ("rouge_l_by_repetitions", "rouge_l"),
                  ("exposure_by_repetitions", "exposure"))
# A curve record's per-repetition dicts and the column each becomes (docs/memorization-files.md).
CURVE_BY_REPETITIONS = (("exact_match_by_repetitions", "exact"),
                        ("token_match_by_repetitions", "token_match"),
                        ("matched_prefix_by_repetitions", "matched_prefix"),
                        ("exposure_by_repetitions", "exposure"))
# Where a curve point sits in training, every one of which can serve as the x axis.
CURVE_POSITION = ("step", "epoch", "tokens_seen")
# Counts in the runs table: a run without them would otherwise turn the column into floats.
COUNT_COLUMNS = ("goldfish_k", "ranks", "global_batch", "steps", "total_steps", "canaries",
                 "max_repetitions")
COLUMNS = {
    "metrics": ["run", "step"],
    "memorization": ["run", "id"],
    "exact_by_repetitions": ["run", "model", "loss", "kind", "repetitions"]
                            + [c for _, c in BY_REPETITIONS],
    "exact_by_trained_occurrences": ["run", "model", "loss", "trained_occurrences", "exact",
                                     "canaries"],
    "extraction_curves": ["run", "model", "loss", "prefix_len", "exact"],
    "mia_roc": ["run", "model", "loss", "score", "fpr", "tpr"],
    "memorization_curve": ["run", "model", "loss", "source", *CURVE_POSITION, "repetitions"]
                          + [c for _, c in CURVE_BY_REPETITIONS],
    "mia_curve": ["run", "model", "loss", "source", *CURVE_POSITION, "score", "auc"],
}


def build_tables(runs: list[Run]) -> dict[str, pd.DataFrame]:
    """All tables, keyed by file name without ``.csv``."""
    return {"runs": runs_table(runs), "metrics": metrics_table(runs),
            "memorization": memorization_table(runs),
            "exact_by_repetitions": exact_by_repetitions_table(runs),
            "exact_by_trained_occurrences": exact_by_trained_occurrences_table(runs),
            "extraction_curves": extraction_curves_table(runs), "mia_roc": mia_roc_table(runs),
            "memorization_curve": memorization_curve_table(runs),
            "mia_curve": mia_curve_table(runs)}


def runs_table(runs: list[Run]) -> pd.DataFrame:
    """One row per run: what was trained, how far, how fast, and its evaluation summary."""
    frame = pd.DataFrame([_run_row(run) for run in runs])
    for column in COUNT_COLUMNS:
        if column in frame:
            values = pd.to_numeric(frame[column], errors="coerce")
            if (values.dropna() % 1 == 0).all():  # else leave it be: not a count after all
                frame[column] = values.astype("Int64")
    return frame


def _identity(run: Run) -> dict:
    return {"run": run.name, "model": run.config.get("model"), "loss": run.config.get("loss")}


def _run_row(run: Run) -> dict:
    cfg = run.config
    grid = cfg.get("grid")
    row = _identity(run)
    # Every config carries goldfish_k; it means something only when the goldfish loss ran.
    row["goldfish_k"] = cfg.get("goldfish_k") if cfg.get("loss") == "goldfish" else None
    ok_grid = isinstance(grid, list) and grid and all(isinstance(g, int) for g in grid)
    row["grid"] = "x".join(map(str, grid)) if ok_grid else None
    row["ranks"] = math.prod(grid) if ok_grid else None
    for key in ("lr", "global_batch", "precision"):
        row[key] = cfg.get(key)
    row.update(_training_summary(run))
    row.update(_eval_summary(run))
    for key, value in run.parameters.items():
        # Prefixed: a notebook parameter may well be called "model" or "loss" too.
        row[f"param_{key}"] = json.dumps(value) if isinstance(value, (list, dict)) else value
    return row


def _numeric(frame: pd.DataFrame, column: str) -> pd.Series:
    if column not in frame:
        return pd.Series(dtype=float)
    return pd.to_numeric(frame[column], errors="coerce")


def _training_summary(run: Run) -> dict:
    m = run.metrics
    out = {"steps": None, "total_steps": run.config.get("steps"), "final_loss": None,
           "final_val_loss": None, "median_tokens_per_s": None, "median_mfu": None}
    if m is None or not len(m):
        return out
    last = m.iloc[-1]
    out["steps"] = int(last["step"])
    # Older runs did not log total_steps; config "steps" is then the plan (None for epochs).
    if "total_steps" in m and pd.notna(last["total_steps"]):
        out["total_steps"] = int(last["total_steps"])
    out["final_loss"] = _numeric(m, "loss").iloc[-1]
    val = _numeric(m, "val_loss").dropna()
    out["final_val_loss"] = val.iloc[-1] if len(val) else None
    # The same medians the scaling sweep reports for a run (axolab.metrics).
    med = throughput_summary(m.to_dict("records"))
    out["median_tokens_per_s"], out["median_mfu"] = med["tokens_per_s"], med["mfu"]
    return out


def _by_repetitions(run: Run, source: dict | None = None) -> dict[int, dict]:
    """eval.json's per-repetition rates (or those of one of its ``by_kind`` entries) as
    {repetitions: {column: rate}}."""
    source = run.eval if source is None else source
    out: dict[int, dict] = {}
    for key, column in BY_REPETITIONS:
        rates = source.get(key) or {}
        if not isinstance(rates, dict):
            raise ReportError(f"{run.path / 'eval.json'}: {key} is not an object")
        for reps, rate in rates.items():
            out.setdefault(_int_key(run, key, reps), {})[column] = rate
    return dict(sorted(out.items()))


def _int_key(run: Run, field: str, key: str) -> int:
    try:
        return int(key)
    except ValueError:
        raise ReportError(f"{run.path / 'eval.json'}: {field} has key {key!r}, "
                          "expected a whole number") from None


def _eval_summary(run: Run) -> dict:
    if run.eval is None:
        return {}
    by_reps = _by_repetitions(run)
    out = {"canaries": run.eval.get("canaries")}
    injected = [r for r in by_reps if r > 0]
    if injected:
        top = by_reps[max(injected)]
        out["max_repetitions"] = max(injected)
        for column in ("exact", "token_match", "exposure"):
            out[f"{column}_at_max_repetitions"] = top.get(column)
    if 0 in by_reps:
        # Controls were never trained on: their rate is the floor the others compare against.
        out["exact_controls"] = by_reps[0].get("exact")
    for score, result in (run.eval.get("mia") or {}).items():
        for key, value in (result or {}).items():
            if key not in ("members", "nonmembers"):
                out[f"mia_{score}_{key}"] = value
    return out


def _concat(frames: list[pd.DataFrame], name: str) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=COLUMNS[name])
    return pd.concat(frames, ignore_index=True)


def metrics_table(runs: list[Run]) -> pd.DataFrame:
    """Every logged step of every run: run, step, then the metric columns."""
    return _concat([m.assign(run=r.name)[["run"] + [c for c in m if c != "run"]]
                    for r in runs if (m := r.metrics) is not None and len(m)], "metrics")


def memorization_table(runs: list[Run]) -> pd.DataFrame:
    """Every canary record of every run, with the run it belongs to."""
    return _concat([m.assign(run=r.name)[["run"] + [c for c in m if c != "run"]]
                    for r in runs if (m := r.memorization) is not None and len(m)],
                   "memorization")


def exact_by_repetitions_table(runs: list[Run]) -> pd.DataFrame:
    """eval.json's rates by repetition count (0 = controls), one row per run, canary kind and
    count: kind "all" over every canary, then one kind at a time where eval.json has
    ``by_kind`` (kinds differ a lot: a random string is far harder to guess than a paragraph
    of prose, so a mixed rate hides what each does)."""
    rows = []
    for run in runs:
        if run.eval is None:
            continue
        sources = {"all": run.eval, **(run.eval.get("by_kind") or {})}
        for kind, source in sources.items():
            if not isinstance(source, dict):
                raise ReportError(f"{run.path / 'eval.json'}: by_kind[{kind!r}] is not an object")
            rows += [{**_identity(run), "kind": kind, "repetitions": reps, **rates}
                     for reps, rates in _by_repetitions(run, source).items()]
    return pd.DataFrame(rows, columns=COLUMNS["exact_by_repetitions"])


def exact_by_trained_occurrences_table(runs: list[Run]) -> pd.DataFrame:
    """Exact-match rate of injected canaries by how many of their occurrences the evaluated
    model was trained on (memorization.jsonl's ``trained_occurrences``, written by launched
    evaluations: the scheduled repetitions times the passes made, fewer when training stopped
    mid-epoch), one row per run and count with the number of canaries at it. Records whose
    count is unknown (null: the run's data differs from the dataset evaluated) are left out."""
    rows = []
    for run in runs:
        m = run.memorization
        if m is None or "trained_occurrences" not in m or "exact" not in m:
            continue
        seen = pd.DataFrame({"n": _numeric(m, "trained_occurrences"),
                             "exact": m["exact"].astype(float),
                             "member": m["member"] if "member" in m else True}).dropna()
        seen = seen[seen["member"].astype(bool)]
        for n, group in seen.groupby("n"):
            rows.append({**_identity(run), "trained_occurrences": int(n),
                         "exact": float(group["exact"].mean()), "canaries": len(group)})
    return pd.DataFrame(rows, columns=COLUMNS["exact_by_trained_occurrences"])


def extraction_curves_table(runs: list[Run]) -> pd.DataFrame:
    """Exact-match rate of member canaries by the length of the prefix the model was given."""
    rows = [{**_identity(r), "prefix_len": _int_key(r, "extraction_curve", k), "exact": rate}
            for r in runs if r.eval is not None
            for k, rate in (r.eval.get("extraction_curve") or {}).items()]
    frame = pd.DataFrame(rows, columns=COLUMNS["extraction_curves"])
    return frame.sort_values(["run", "prefix_len"], ignore_index=True)


def mia_roc_table(runs: list[Run]) -> pd.DataFrame:
    """ROC curve points of each membership score, members (injected canaries) against
    non-members (controls) of memorization.jsonl."""
    frames = []
    for run in runs:
        m = run.memorization
        if m is None or "member" not in m:
            continue
        for score in [s for s in MIA_SCORES if s in m]:
            both = pd.DataFrame({"member": m["member"], "s": _numeric(m, score)}).dropna()
            member = both["member"].astype(bool).to_numpy()
            if member.all() or not member.any():
                continue  # a ROC curve needs both classes
            fpr, tpr, _ = roc_curve(member, both["s"].to_numpy())
            frames.append(pd.DataFrame({**_identity(run), "score": score, "fpr": fpr,
                                        "tpr": tpr}))
    return _concat(frames, "mia_roc")


def _curve_points(run: Run) -> list[dict]:
    """The run's curve records, one per (source, step): a checkpoint evaluated again (or a
    probe line a resume did not drop) keeps its last record, the one written last."""
    if run.curve is None or not len(run.curve):
        return []
    last: dict[tuple, dict] = {}
    for record in run.curve.to_dict("records"):
        step = pd.to_numeric(record["step"], errors="coerce")
        if pd.isna(step):
            raise ReportError(f"{_curve_file(run, record)}: step {record['step']!r} is not a "
                              "number")
        record["step"] = int(step)
        last.pop((record["source"], record["step"]), None)  # re-inserted: file order kept
        last[(record["source"], record["step"])] = record
    return list(last.values())


def _curve_file(run: Run, record: dict):
    return run.path / CURVE_FILES.get(record["source"], "<curve file>")


def _curve_dict(run: Run, record: dict, key: str) -> dict:
    value = record.get(key)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return {}  # absent from this record (a DataFrame fills NaN where another had it)
    if not isinstance(value, dict):
        raise ReportError(f"{_curve_file(run, record)}, step {record['step']}: {key} is not "
                          "an object")
    return value


def _curve_row(run: Run, record: dict) -> dict:
    return {**_identity(run), "source": record["source"],
            **{c: record.get(c) for c in CURVE_POSITION}}


def memorization_curve_table(runs: list[Run]) -> pd.DataFrame:
    """Memorization over training: the rates of each curve record (memorization_curve.jsonl,
    source "probe"; checkpoint_curve.jsonl, source "checkpoint") by repetition count, one row
    per run, source, step and count (0 = controls); exposure is NaN where not measured."""
    rows = []
    for run in runs:
        for record in _curve_points(run):
            by_reps: dict[int, dict] = {}
            for key, column in CURVE_BY_REPETITIONS:
                for reps, rate in _curve_dict(run, record, key).items():
                    try:
                        count = int(reps)
                    except ValueError:
                        raise ReportError(f"{_curve_file(run, record)}, step {record['step']}: "
                                          f"{key} has key {reps!r}, expected a whole "
                                          "number") from None
                    by_reps.setdefault(count, {})[column] = rate
            rows += [{**_curve_row(run, record), "repetitions": reps, **rates}
                     for reps, rates in by_reps.items()]
    frame = pd.DataFrame(rows, columns=COLUMNS["memorization_curve"])
    return _sorted_curve(frame, "repetitions")


def mia_curve_table(runs: list[Run]) -> pd.DataFrame:
    """Membership-inference ROC AUC of each score over training (a curve record's
    ``mia_auc``), one row per run, source, step and score."""
    rows = [{**_curve_row(run, record), "score": score, "auc": auc}
            for run in runs for record in _curve_points(run)
            for score, auc in _curve_dict(run, record, "mia_auc").items()]
    frame = pd.DataFrame(rows, columns=COLUMNS["mia_curve"])
    return _sorted_curve(frame, "score")


def _sorted_curve(frame: pd.DataFrame, last: str) -> pd.DataFrame:
    for column in ("epoch", "tokens_seen", "exact", "token_match", "matched_prefix",
                   "exposure", "auc"):
        if column in frame:
            # None (a JSON null) becomes NaN, so every rate column is numeric.
            frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame = frame.astype({"step": "int64", **({"repetitions": "int64"}
                                               if last == "repetitions" else {})})
    return frame.sort_values(["run", "source", "step", last], ignore_index=True, kind="stable")


def extracted_canaries(memorization: pd.DataFrame, limit: int = 100) -> tuple[pd.DataFrame, int]:
    """Canaries whose suffix the model reproduced exactly, fewest repetitions first (the most
    striking), at most ``limit`` of them, and how many there were in all."""
    if not len(memorization) or "exact" not in memorization:
        return pd.DataFrame(), 0
    hits = memorization[memorization["exact"].eq(True)]  # missing (NaN) is not a hit
    columns = [c for c in ("run", "id", "kind", "repetitions", "matched_prefix",
                           "token_match_rate", "rouge_l", "exposure") if c in hits]
    order = [c for c in ("repetitions", "run", "id") if c in hits]
    return hits.sort_values(order)[columns].head(limit), len(hits)


def has_values(frame: pd.DataFrame, *columns: str) -> bool:
    """Whether some row has a number in every one of ``columns``."""
    if not len(frame) or any(c not in frame for c in columns):
        return False
    return bool(np.isfinite(frame[list(columns)].apply(pd.to_numeric, errors="coerce"))
                .all(axis=1).any())
