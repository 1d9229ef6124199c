"""Training-data extraction beyond canaries: how much of a split's own rows a model reproduces.

A seeded sample of rows of each split is prompted and greedily continued, with the same
extraction code as the canaries (one teacher-forced pass, decoding only where it misses). Two
published probes are settings of ``EvalConfig``:

- Pythia's (Biderman et al., 2023, "Emergent and Predictable Memorization in Large Language
  Models"): prompt with the first 32 tokens of a training sequence, decode 32; the memorization
  score is the fraction of the 32 reproduced, and a sequence is memorized when it is 1.
  ``row_prefix_len=32, row_suffix_len=32`` (the defaults).
- The goldfish paper's (Hans et al., 2024): prompt with a document minus its last 50 tokens and
  compare the 50; here the document is a row. ``row_prefix_len=0, row_suffix_len=50``.

The validation split, never trained on, is the baseline the training split is read against:
text that is merely predictable is reproduced from both. Torch is imported only to score, so
a launcher can check the lengths without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from axolab.config import EvalConfig


def sample_rows(available: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct row indices in [0, available), seeded, in increasing order (all
    rows when there are fewer)."""
    if count >= available:
        return np.arange(available)
    return np.sort(np.random.default_rng(seed).choice(available, size=count, replace=False))


def row_lengths(seq_len: int, cfg: EvalConfig) -> tuple[int, int]:
    """(prompt, suffix) tokens of a row of ``seq_len`` tokens; a ValueError when they do not
    fit."""
    prefix = cfg.row_prefix_len or seq_len - cfg.row_suffix_len
    if prefix < 1 or prefix + cfg.row_suffix_len > seq_len:
        raise ValueError(f"row_prefix_len={cfg.row_prefix_len} and row_suffix_len="
                         f"{cfg.row_suffix_len} do not fit rows of {seq_len} tokens")
    return prefix, cfg.row_suffix_len


def score_rows(model, data_dir: str | Path, cfg: EvalConfig) -> tuple[list[dict], dict]:
    """Records (row_extraction.jsonl: split, row, exact, matched_prefix, score) and the
    summary per split (eval.json row_extraction) of ``cfg.rows`` sampled rows of each of
    ``cfg.row_splits``. Collective on a parallelized model."""
    import torch

    from axolab.data.loader import PackedDataset

    from .extraction import exact_match

    records, summary = [], {}
    for split in cfg.row_splits:
        data = PackedDataset(data_dir, split)
        prefix, suffix = row_lengths(data.seq_len, cfg)
        # A padded row is scored only when its document fills prompt and suffix: padding is
        # not training data, and reproducing it measures nothing.
        eligible = np.arange(data.rows) if not data.padded else np.flatnonzero(
            data.lengths(np.arange(data.rows)).numpy() >= prefix + suffix)
        rows = eligible[sample_rows(len(eligible), cfg.rows, cfg.row_seed)]
        if len(rows) == 0:
            continue
        res = exact_match(model, data.read(rows), prefix, suffix, cfg.batch_size)
        scores = res.token_match_rate
        for j, row in enumerate(rows.tolist()):
            records.append({"split": split, "row": row, "prefix_len": prefix,
                            "suffix_len": suffix, "exact": bool(res.exact[j]),
                            "matched_prefix": int(res.matched_prefix[j]),
                            "score": float(scores[j])})
        summary[split] = {"rows": len(rows), "prefix_len": prefix, "suffix_len": suffix,
                          "exact_rate": float(res.exact.float().mean()),
                          "mean_score": float(scores.mean()),
                          "mean_matched_prefix": float(res.matched_prefix.float().mean()),
                          # Pythia reports the distribution of scores, not only the mean.
                          "score_quantiles": {str(q): float(torch.quantile(scores.double(), q))
                                              for q in (0.5, 0.9, 0.99)}}
    return records, summary
