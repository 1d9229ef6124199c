"""Utility cost per domain: held-out perplexity of each document group next to the background's.

Validation loss averages what a model learned over the background corpus only; a mitigation
(the goldfish loss) or a fine-tuning run on a target set can cost more on one domain than on
another. Each document canary group is a domain: its controls are documents of that domain
never trained on (for a target set from a second corpus, documents of that corpus), so their
perplexity is the group's held-out perplexity. Perplexity is the exponential of the mean
negative log-likelihood per predicted token over the whole group (token-weighted, documents
concatenated), the standard language-model definition (e.g. Jurafsky & Martin, *Speech and
Language Processing*, ch. 3; the Hugging Face "Perplexity of fixed-length models" guide). Each
document is scored from its first token as it was injected (after the separator when the
dataset separates canaries); secrets and random-token canaries are not text of a domain and
are left out.
"""

from __future__ import annotations

import math

from axolab.data import Canary

from .scoring import TokenScores


def _entry(nll_sum: float, tokens: int, documents: int | None) -> dict:
    mean = nll_sum / tokens
    return {"perplexity": math.exp(mean), "mean_nll": mean, "tokens": tokens,
            "documents": documents}


def heldout_perplexity(canaries: list[Canary], scores: TokenScores) -> dict[str, dict]:
    """{group: perplexity, mean NLL, tokens and documents} over each document group's
    never-injected controls; ``scores`` are the canaries' TokenScores, in manifest order."""
    nll, counts = -scores.sequence_logprob(), scores.mask.sum(1)
    sums: dict[str, list[float]] = {}
    for i, c in enumerate(canaries):
        if c.kind == "document" and not c.member:
            acc = sums.setdefault(c.group, [0.0, 0, 0])
            acc[0] += float(nll[i])
            acc[1] += int(counts[i])
            acc[2] += 1
    return {group: _entry(*acc) for group, acc in sorted(sums.items()) if acc[1]}


def background_perplexity(validation_loss: float, tokens: int) -> dict:
    """The background corpus's entry: the validation split (held out of training; rows, not
    documents, so ``documents`` is None)."""
    return _entry(validation_loss * tokens, tokens, None)
