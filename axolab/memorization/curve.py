"""Memorization over training: one curve record per probe or evaluated checkpoint.

In-training probes append to ``memorization_curve.jsonl``; evaluating kept checkpoints writes
``checkpoint_curve.jsonl``; both share one record format (docs/memorization-files.md), so a
probe at step s and the evaluation of the checkpoint saved at step s can be compared line by
line. Torch-free: the report and notebook kernels read these files.
"""

from __future__ import annotations

from pathlib import Path

from axolab.files import drop_torn_tail, read_jsonl, write_text_atomic

PROBE_CURVE = "memorization_curve.jsonl"
CHECKPOINT_CURVE = "checkpoint_curve.jsonl"
# The per-canary fields that change over training (the rest of memorization.jsonl does not).
RECORD_FIELDS = ("id", "kind", "repetitions", "member", "exact", "matched_prefix",
                 "token_match_rate", "beam_exact", "sample_exact_any", "loss", "zlib",
                 "min_k", "min_k_plus_plus", "reference", "exposure", "trained_occurrences")
SUMMARY_FIELDS = ("exact_match_by_repetitions", "token_match_by_repetitions",
                  "matched_prefix_by_repetitions", "exposure_by_repetitions",
                  "beam_exact_by_repetitions", "sample_exact_by_repetitions",
                  "extraction_curve", "perplexity_by_domain")


def curve_record(summary: dict, records: list[dict], *, step: int, epoch: float,
                 tokens_seen: int, source: str, time_s: float) -> dict:
    """The curve record of one evaluation (``summary`` and ``records`` as eval.json and
    memorization.jsonl hold them)."""
    out = {"step": step, "epoch": epoch, "tokens_seen": tokens_seen, "source": source,
           "time_s": time_s, "canaries": len(records)}
    out.update({name: summary.get(name, {}) for name in SUMMARY_FIELDS})
    out["mia_auc"] = {name: report["auc"] for name, report in summary.get("mia", {}).items()}
    out["records"] = [{k: r[k] for k in RECORD_FIELDS if k in r} for r in records]
    return out


def training_position(step: int, global_batch: int, train_rows: int,
                      seq_len: int, reads: int | None = None) -> tuple[float, int]:
    """(epoch, tokens seen) after ``step`` optimizer steps: the data order walks the training
    rows ``global_batch`` at a time (axolab.data.loader); a run of whole epochs (``reads``
    row reads, ``epoch_reads``) trains on none of the rows its last batch reads past its end."""
    rows = step * global_batch if reads is None else min(step * global_batch, reads)
    return rows / train_rows, rows * seq_len


def epoch_boundary(step: int, global_batch: int, train_rows: int) -> bool:
    """Whether step ``step`` (1-based count of steps done) finished an epoch."""
    return (step * global_batch) // train_rows > ((step - 1) * global_batch) // train_rows


def replace_curve_record(path: str | Path, record: dict) -> None:
    """Put ``record`` into the curve file at ``path``, replacing a record of the same step
    (a checkpoint evaluated again), in step order; the file is rewritten whole."""
    import json

    path = Path(path)
    drop_torn_tail(path)
    kept = [r for r in (read_jsonl(path) if path.is_file() else [])
            if r.get("step") != record["step"]]
    kept = sorted([*kept, record], key=lambda r: r["step"])
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))


def read_curve(run_dir: str | Path, source: str = "probe") -> list[dict]:
    """The curve records of a run directory: ``source`` "probe" (memorization_curve.jsonl) or
    "checkpoint" (checkpoint_curve.jsonl); a torn last line is left out."""
    name = {"probe": PROBE_CURVE, "checkpoint": CHECKPOINT_CURVE}.get(source)
    if name is None:
        raise ValueError(f"source={source!r}: expected 'probe' or 'checkpoint'")
    path = Path(run_dir) / name
    return read_jsonl(path) if path.is_file() else []
