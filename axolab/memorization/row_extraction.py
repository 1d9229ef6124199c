"""Training-data extraction beyond canaries: how much of a split's own rows a model reproduces.

A seeded sample of rows of each split is prompted and greedily continued, with the same
extraction code as the canaries (one teacher-forced pass, decoding only where it misses). Two
published probes are settings of ``EvalConfig``:

- Pythia's (Biderman et al., 2023, "Emergent and Predictable Memorization in Large Language
  Models"): prompt with the first 32 tokens of a training sequence, decode 32; the memorization
  score is the fraction of the 32 reproduced, and a sequence is memorized when it is 1.
  ``row_prefix_len=32, row_suffix_len=32`` (the defaults).
- The goldfish paper's (Hans et al., 2024): prompt with a document minus its last 50 tokens and
  compare the 50. ``row_prefix_len=0, row_suffix_len=50``. Here the document is a row: a
  packed row's seq_len tokens, a padded row's own real tokens (its document, or seq_len piece
  of one, with the end-of-document token training saw after it), so each padded row has its own
  prompt length; documents of no more than 50 tokens are counted and left out.

A split with no row long enough is recorded with its reason (eval.json), never skipped in
silence.

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
    """(prompt, suffix) tokens of a full row of ``seq_len`` tokens; a ValueError when they do
    not fit. With ``row_prefix_len=0`` the prompt of a padded row is its own document's
    length minus the suffix (``prompt_lengths``)."""
    prefix = cfg.row_prefix_len or seq_len - cfg.row_suffix_len
    if prefix < 1 or prefix + cfg.row_suffix_len > seq_len:
        raise ValueError(f"row_prefix_len={cfg.row_prefix_len} and row_suffix_len="
                         f"{cfg.row_suffix_len} do not fit rows of {seq_len} tokens")
    return prefix, cfg.row_suffix_len


def prompt_lengths(lengths: np.ndarray, seq_len: int, cfg: EvalConfig) -> np.ndarray:
    """Each row's prompt tokens given its real tokens ``lengths``, 0 where the row is too
    short to be scored. A padded row is scored only on its document (padding is not training
    data, and reproducing it measures nothing): the Pythia probe needs prompt + suffix real
    tokens; the goldfish probe (``row_prefix_len=0``) prompts with the document minus its
    last ``row_suffix_len`` tokens, so it needs one more token than the suffix."""
    prefix, suffix = row_lengths(seq_len, cfg)
    lengths = np.asarray(lengths, dtype=np.int64)
    prompts = lengths - suffix if cfg.row_prefix_len == 0 else np.full_like(lengths, prefix)
    return np.where((prompts >= 1) & (prompts + suffix <= lengths), prompts, 0)


def _split_summary(split: str, data, cfg: EvalConfig, eligible: int, rows: np.ndarray,
                   prompts: np.ndarray) -> dict:
    prefix, suffix = row_lengths(data.seq_len, cfg)
    entry = {"rows": len(rows), "eligible_rows": eligible, "rows_too_short": data.rows - eligible,
             # None: each padded row's own (record prefix_len; mean_prefix_len)
             "prefix_len": None if cfg.row_prefix_len == 0 and data.padded else prefix,
             "suffix_len": suffix}
    if len(rows):
        entry["mean_prefix_len"] = float(prompts.mean())
    elif data.rows == 0:
        entry["skipped"] = f"the {split} split has no rows"
    else:
        need = f"{suffix + 1} (the suffix and a prompt of at least one)" \
            if cfg.row_prefix_len == 0 else f"{prefix + suffix} (prompt and suffix)"
        entry["skipped"] = (f"no row of the {split} split has {need} real tokens: all "
                            f"{data.rows} rows are shorter")
    return entry


def score_rows(model, data_dir: str | Path, cfg: EvalConfig) -> tuple[list[dict], dict]:
    """Records (row_extraction.jsonl: split, row, prefix_len, suffix_len, exact,
    matched_prefix, score) and the summary per split (eval.json row_extraction: how many rows
    were scored, eligible and too short, and why none were when none were) of ``cfg.rows``
    sampled rows of each of ``cfg.row_splits``. Collective on a parallelized model."""
    import torch

    from axolab.data.loader import PackedDataset

    from .extraction import exact_match

    records, summary = [], {}
    for split in cfg.row_splits:
        data = PackedDataset(data_dir, split)
        suffix = row_lengths(data.seq_len, cfg)[1]
        every = prompt_lengths(data.lengths(np.arange(data.rows)).numpy(), data.seq_len, cfg)
        eligible = np.flatnonzero(every > 0)
        rows = eligible[sample_rows(len(eligible), cfg.rows, cfg.row_seed)]
        prompts = every[rows]
        summary[split] = _split_summary(split, data, cfg, len(eligible), rows, prompts)
        if len(rows) == 0:
            continue
        exact = torch.zeros(len(rows), dtype=torch.bool)
        matched = torch.zeros(len(rows), dtype=torch.long)
        scores = torch.zeros(len(rows))
        for prefix in sorted(set(prompts.tolist())):  # one batch shape per prompt length
            idx = np.flatnonzero(prompts == prefix)
            res = exact_match(model, data.read(rows[idx]), prefix, suffix, cfg.batch_size)
            at = torch.from_numpy(idx)
            exact[at], matched[at], scores[at] = res.exact, res.matched_prefix, \
                res.token_match_rate
        for j, row in enumerate(rows.tolist()):
            records.append({"split": split, "row": row, "prefix_len": int(prompts[j]),
                            "suffix_len": suffix, "exact": bool(exact[j]),
                            "matched_prefix": int(matched[j]), "score": float(scores[j])})
        summary[split].update({
            "exact_rate": float(exact.float().mean()), "mean_score": float(scores.mean()),
            "mean_matched_prefix": float(matched.float().mean()),
            # Pythia reports the distribution of scores, not only the mean.
            "score_quantiles": {str(q): float(torch.quantile(scores.double(), q))
                                for q in (0.5, 0.9, 0.99)}})
    return records, summary
