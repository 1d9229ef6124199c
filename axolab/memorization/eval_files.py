"""Whether a run's memorization.jsonl is the one its eval.json summarises.

An evaluation writes memorization.jsonl, then eval.json carrying the records' SHA-256
(``memorization_sha256``, :func:`axolab.memorization.canary_eval.write_eval_files`). A kill
between the two writes leaves new records beside the previous summary. Readers (the report,
the study) check the pair with :func:`records_match_summary` before using the records. This
module imports no torch: the report reads runs without it.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

RECORDS = "memorization.jsonl"
SUMMARY = "eval.json"


def records_digest(data: bytes) -> str:
    """The SHA-256 (hex) eval.json stores for memorization.jsonl's bytes."""
    return hashlib.sha256(data).hexdigest()


def records_match_summary(run_dir: str | Path, summary: dict | None = None) -> bool:
    """True when ``run_dir`` has memorization.jsonl and eval.json names exactly those records,
    or names none (an eval.json written before summaries carried the hash). ``summary``:
    eval.json already read (else it is read here); without eval.json, False."""
    run_dir = Path(run_dir)
    records = run_dir / RECORDS
    if not records.is_file():
        return False
    if summary is None:
        if not (run_dir / SUMMARY).is_file():
            return False
        summary = json.loads((run_dir / SUMMARY).read_text())
    want = summary.get("memorization_sha256")
    return want is None or records_digest(records.read_bytes()) == want
