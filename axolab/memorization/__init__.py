"""Memorization measurement: verbatim extraction, exposure, membership inference."""

from .evaluate import EvalConfig, evaluate
from .decode import greedy_generate, teacher_forced_argmax
from .drilldown import Continuation, continuation_html, continuations
from .exposure import exposure
from .extraction import ExtractionResult, exact_match, extraction_curve
from .mia import mia_scores, roc_report
from .scoring import TokenScores, pad_sequences, token_scores

__all__ = ["Continuation", "EvalConfig", "ExtractionResult", "TokenScores", "continuation_html", "continuations", "evaluate", "exact_match", "exposure", "extraction_curve",
           "greedy_generate", "mia_scores", "pad_sequences", "roc_report", "teacher_forced_argmax",
           "token_scores"]
