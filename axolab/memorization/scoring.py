"""Per-token scores of whole sequences on a serial or parallelized model.

Sequences may differ in length (secret canaries with different fillers tokenize differently):
they are right-padded, and positions past a sequence's end are masked out.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from axolab.parallel import comm, find_parallel_state
from axolab.parallel.vocab import vocab_parallel_logprob_moments, vocab_parallel_logprobs


@dataclass
class TokenScores:
    """Scores of token t+1 given tokens <= t, for t in [0, length-2]; shape [N, T-1]."""

    logprob: torch.Tensor  # log p(x_{t+1} | x_<=t)
    mean: torch.Tensor     # E_{z~p}[log p(z)] at that position
    std: torch.Tensor      # std of log p(z) under p
    mask: torch.Tensor     # True where the position belongs to the sequence

    def sequence_logprob(self) -> torch.Tensor:
        """Sum of the token log-probs of each sequence (minus its log-perplexity)."""
        return (self.logprob * self.mask).sum(1)


def pad_sequences(sequences, pad_id: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token-id lists into [N, max_len] and return it with the lengths."""
    lengths = torch.tensor([len(s) for s in sequences])
    if (lengths < 2).any():
        raise ValueError("every sequence needs at least 2 tokens to be scored")
    out = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        out[i, :len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out, lengths


def _local_scores(model, ids: torch.Tensor):
    logits = model(input_ids=ids, use_cache=False).logits[:, :-1]
    targets = ids[:, 1:]
    state = find_parallel_state(model)
    if state is not None:
        lp = vocab_parallel_logprobs(logits, targets, state.vocab)
        mean, std = vocab_parallel_logprob_moments(logits, state.vocab)
        return torch.stack([lp, mean, std])
    logp = torch.log_softmax(logits.float(), dim=-1)
    p = logp.exp()
    mean = (p * logp).sum(-1)
    std = (p * (logp - mean[..., None]) ** 2).sum(-1).sqrt()
    return torch.stack([logp.gather(-1, targets[..., None])[..., 0], mean, std])


@torch.no_grad()
def token_scores(model, sequences, batch_size: int = 32, pad_id: int = 0) -> TokenScores:
    """TokenScores of every sequence (a list of token-id lists or an [N, T] tensor). On a
    parallelized model every rank passes the same sequences and gets all the scores."""
    if torch.is_tensor(sequences):
        sequences = sequences.tolist()
    ids, lengths = pad_sequences(sequences, pad_id)
    state = find_parallel_state(model)
    grid = state.grid if state is not None else None
    device = grid.device if grid is not None else next(model.parameters()).device
    parts = []
    for start in range(0, len(ids), batch_size):
        chunk = ids[start:start + batch_size]
        local = chunk if grid is None else grid.shard_batch(chunk, pad_value=pad_id)
        scores = _local_scores(model, local.to(device)).cpu()
        if grid is not None:
            scores = comm.gather_along(scores.contiguous(), grid.batch, dim=1)[:, :len(chunk)]
        parts.append(scores)
    lp, mean, std = torch.cat(parts, dim=1)
    mask = torch.arange(ids.shape[1] - 1) < (lengths - 1)[:, None]
    return TokenScores(lp, mean, std, mask)
