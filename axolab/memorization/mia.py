"""Membership inference baselines on members (injected canaries) vs non-members (controls).

Each score is oriented so that higher means "more likely a member". Over the n scored tokens
of a sequence (every token after the first), with log-probs lp_1..lp_n:
- ``loss``: minus the mean token negative log-likelihood, -(1/n) sum(-lp_i) (Yeom et al.).
- ``zlib``: minus the ratio of the sequence's log-perplexity, the MEAN token NLL, to the length
  in bytes of its UTF-8 text compressed by zlib (Carlini et al., 2021, "Extracting Training
  Data from Large Language Models": ratio of log-perplexity to zlib entropy), which discounts
  text that is simply predictable. The reference code computes the same thing:
  ftramer/LM_Memorization extraction.py (log of exp(mean loss) against
  ``len(zlib.compress(bytes(text, "utf-8")))``) and zjysteven/mink-plus-plus run.py
  (``ll / len(zlib.compress(...))`` with ``ll`` minus the mean loss).
- ``min_k``: mean of the lowest k% token log-probs (Shi et al., 2024, "Detecting Pretraining
  Data from Large Language Models"). k% of n tokens is ``int(k * n)``, rounded down as in the
  reference code (swj0419/detect-pretrain-code src/run.py and mink-plus-plus run.py,
  ``k_length = int(len(token_log_probs) * ratio)``), and at least 1 where the reference would
  average nothing.
- ``min_k_plus_plus``: the same over token log-probs standardized by the mean and std of log p
  under the model's own distribution at that position (Zhang et al., 2024, Min-K%++).
- ``reference`` (only with a reference model): the target's mean token log-likelihood minus a
  reference model's on the same tokens, which calibrates away how predictable a sequence is
  for any model (Carlini et al., 2021, comparison with a second model; Watson et al., 2022, "On
  the Importance of Difficulty Calibration in Membership Inference Attacks"). The reference
  code computes ``ll - ll_ref`` with ``ll`` minus the HF mean loss (zjysteven/mink-plus-plus
  run_ref.py).
"""

from __future__ import annotations

import zlib

import numpy as np
import torch

from .scoring import TokenScores


def lowest_count(k: float, n: int) -> int:
    """How many of ``n`` token scores Min-K% averages: int(k * n) as in the reference code,
    but at least one."""
    return max(1, int(k * n))


def _lowest_fraction_mean(values: torch.Tensor, mask: torch.Tensor, k: float) -> torch.Tensor:
    out = []
    for v, m in zip(values, mask):
        v = v[m]
        out.append(torch.sort(v).values[:lowest_count(k, len(v))].mean())
    return torch.stack(out)


def mean_token_nll(scores: TokenScores) -> np.ndarray:
    """Each sequence's mean token negative log-likelihood (its log-perplexity)."""
    return (-(scores.logprob * scores.mask).sum(1) / scores.mask.sum(1).clamp_min(1)).numpy()


def mia_scores(scores: TokenScores, texts: list[str], k: float = 0.2,
               reference_nll: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The four scores per sequence, and ``reference`` when ``reference_nll`` (a reference
    model's ``mean_token_nll`` of the same sequences) is given; ``texts`` are the decoded
    sequences (for zlib)."""
    if not 0 < k <= 1:
        raise ValueError(f"k={k} must be a fraction in (0, 1]")
    if len(texts) != scores.logprob.shape[0]:
        raise ValueError(f"{len(texts)} texts for {scores.logprob.shape[0]} scored sequences")
    m = scores.mask
    n_tokens = m.sum(1).clamp_min(1)
    nll = -(scores.logprob * m).sum(1)
    zlib_bytes = torch.tensor([len(zlib.compress(t.encode("utf-8"))) for t in texts],
                              dtype=torch.float32)
    z = (scores.logprob - scores.mean) / scores.std.clamp_min(1e-6)
    mean_nll = nll / n_tokens  # the log-perplexity
    out = {
        "loss": (-mean_nll).numpy(),
        "zlib": (-mean_nll / zlib_bytes).numpy(),
        "min_k": _lowest_fraction_mean(scores.logprob, m, k).numpy(),
        "min_k_plus_plus": _lowest_fraction_mean(z, m, k).numpy(),
    }
    if reference_nll is not None:
        reference_nll = np.asarray(reference_nll, dtype=np.float64)
        if reference_nll.shape != (len(texts),):
            raise ValueError(f"reference_nll has shape {reference_nll.shape}, expected "
                             f"({len(texts)},): one per scored sequence")
        out["reference"] = reference_nll - mean_nll.double().numpy()
    return out


def roc_report(member_scores: np.ndarray, nonmember_scores: np.ndarray,
               max_fpr: float = 0.01) -> dict:
    """ROC AUC and the true-positive rate at a false-positive rate of at most ``max_fpr``."""
    from sklearn.metrics import roc_auc_score, roc_curve

    if len(member_scores) == 0 or len(nonmember_scores) == 0:
        raise ValueError(f"need members and non-members, got {len(member_scores)} and "
                         f"{len(nonmember_scores)}")
    y = np.concatenate([np.ones(len(member_scores)), np.zeros(len(nonmember_scores))])
    s = np.concatenate([member_scores, nonmember_scores])
    fpr, tpr, _ = roc_curve(y, s)
    return {"auc": float(roc_auc_score(y, s)),
            f"tpr_at_{max_fpr:g}_fpr": float(tpr[fpr <= max_fpr].max()),
            "members": int(len(member_scores)), "nonmembers": int(len(nonmember_scores))}
