"""Memorization measurement: verbatim extraction, exposure, membership inference.

Names load on first use, so a notebook kernel can read results (``continuations``,
``continuation_html`` from files) without importing torch; the scoring functions import it.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "EvalConfig": "axolab.config",
    "evaluate": ".canary_eval", "CanarySet": ".canary_eval", "Scored": ".canary_eval",
    "score_canaries": ".canary_eval",
    "greedy_generate": ".decode", "teacher_forced_argmax": ".decode",
    "Continuation": ".drilldown", "continuation_html": ".drilldown",
    "continuations": ".drilldown",
    "exposure": ".secret_exposure",
    "ExtractionResult": ".extraction", "exact_match": ".extraction",
    "extraction_curve": ".extraction",
    "mia_scores": ".mia", "roc_report": ".mia",
    "TokenScores": ".scoring", "pad_sequences": ".scoring", "token_scores": ".scoring",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(_WHERE[name], __name__)
    return getattr(module, name)
