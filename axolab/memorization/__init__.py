"""Memorization measurement: verbatim extraction, exposure, membership inference."""

from .decode import greedy_generate, teacher_forced_argmax
from .extraction import ExtractionResult, exact_match, extraction_curve

__all__ = ["ExtractionResult", "exact_match", "extraction_curve", "greedy_generate",
           "teacher_forced_argmax"]
