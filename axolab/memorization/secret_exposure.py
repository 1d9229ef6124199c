"""Exposure of secret canaries (Carlini et al., "The Secret Sharer", 2019).

The log-perplexity of the injected secret is ranked among those of candidate secrets from the
same template that were never injected: exposure = log2(|candidates|) - log2(rank). A sample of
candidates bounds exposure at log2 of its size; the skew-normal extrapolation fits the
candidates' log-perplexity distribution and reads the canary's tail probability from it, which
estimates exposure over the whole space (e.g. all 10^6 six-digit PINs) without enumerating it.
"""

from __future__ import annotations

import math

import numpy as np


def exposure(canary_logppl: float, candidate_logppl: np.ndarray) -> dict:
    """Rank-based and skew-normal-extrapolated exposure of one canary.

    ``*_logppl`` are log-perplexities (minus summed log-probs): lower is more likely.
    """
    from scipy.stats import skewnorm

    candidates = np.asarray(candidate_logppl, dtype=np.float64)
    if candidates.size < 3:
        raise ValueError(f"exposure needs at least 3 candidates, got {candidates.size}")
    rank = 1 + int((candidates < canary_logppl).sum())
    space = candidates.size + 1  # the canary is one of the possible secrets
    shape, loc, scale = skewnorm.fit(candidates)
    tail = float(skewnorm.cdf(canary_logppl, shape, loc, scale))
    return {"rank": rank, "candidates": int(candidates.size),
            "exposure": math.log2(space) - math.log2(rank),
            "exposure_extrapolated": -math.log2(max(tail, np.finfo(float).tiny)),
            "skewnorm": [float(shape), float(loc), float(scale)]}
