"""Memorization measurement: verbatim extraction, exposure, membership inference."""

from .evaluate import EvalConfig, evaluate
from .decode import greedy_generate, teacher_forced_argmax
from .exposure import exposure
from .extraction import ExtractionResult, exact_match, extraction_curve
from .mia import mia_scores, roc_report
from .scoring import TokenScores, pad_sequences, token_scores

__all__ = ["EvalConfig", "ExtractionResult", "TokenScores", "evaluate", "exact_match", "exposure", "extraction_curve",
           "greedy_generate", "mia_scores", "pad_sequences", "roc_report", "teacher_forced_argmax",
           "token_scores"]
