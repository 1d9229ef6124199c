"""Extraction adversaries stronger than greedy decoding: beam search and sampling (any of n).

Greedy decoding (decode.py) asks whether the single most likely continuation is the canary;
an attacker can also keep several hypotheses (beam search) or draw many continuations and check
each (Carlini et al., 2021 sample with top-k; Nasr et al., 2023 count a sequence as extracted
if any generation reproduces it). Both run on a serial or a parallelized model: on a
parallelized model each rank decodes its batch shard, and each step gathers the last position's
logits over the vocabulary shards (one [rows, V] tensor per step) so every rank of a
tensor-parallel group makes the same choice. Neither stops at an end-of-sequence token: a
canary's continuation is scored over its whole length, as the greedy adversary does.
"""

from __future__ import annotations

import torch

from axolab.parallel import find_parallel_state, gather_logits

from .extraction import _gather, _grid, _shard


def _full_logits(model, logits: torch.Tensor) -> torch.Tensor:
    """fp32 logits over the whole vocabulary (padding columns removed) on every rank."""
    state = find_parallel_state(model)
    if state is not None:
        return gather_logits(logits.float(), state.vocab)
    return logits.float()


def _step(model, ids: torch.Tensor, cache):
    out = model(input_ids=ids, past_key_values=cache, use_cache=True)
    return _full_logits(model, out.logits[:, -1]), out.past_key_values


@torch.no_grad()
def beam_search_local(model, prompts: torch.Tensor, max_new_tokens: int,
                      num_beams: int) -> torch.Tensor:
    """The most likely of ``num_beams`` beams ([B, max_new_tokens]) for this rank's prompts.

    The same search as ``transformers``' ``generate(num_beams=b, do_sample=False)`` without an
    end-of-sequence token and with the default length penalty (all beams have one length, so
    the best beam is the one with the highest summed log-probability): every step keeps the
    ``num_beams`` best (beam, token) extensions over all beams; at the first step only beam 0
    is live, so the beams start from distinct tokens."""
    from transformers import DynamicCache

    b = num_beams
    rows = prompts.shape[0]
    logits, cache = _step(model, prompts.repeat_interleave(b, dim=0),
                          DynamicCache(config=model.config))
    scores = torch.full((rows, b), -1e9, device=logits.device)
    scores[:, 0] = 0.0
    tokens = torch.empty(rows, b, 0, dtype=torch.long, device=logits.device)
    offsets = torch.arange(rows, device=logits.device)[:, None] * b
    for step in range(max_new_tokens):
        logp = torch.log_softmax(logits, dim=-1)
        vocab = logp.shape[-1]
        total = (scores[..., None] + logp.view(rows, b, vocab)).view(rows, b * vocab)
        scores, flat = total.topk(b, dim=-1)  # sorted: beam 0 is the best so far
        beam, token = flat // vocab, flat % vocab
        tokens = torch.cat([tokens.gather(1, beam[..., None].expand(-1, -1, tokens.shape[-1])),
                            token[..., None]], dim=-1)
        if step + 1 < max_new_tokens:
            cache.reorder_cache((beam + offsets).view(-1))
            logits, cache = _step(model, token.view(-1, 1), cache)
    return tokens[:, 0]


@torch.no_grad()
def sample_local(model, prompts: torch.Tensor, uniforms: torch.Tensor, top_k: int = 0,
                 temperature: float = 1.0) -> torch.Tensor:
    """Sampled continuations [B, n, T] of this rank's prompts, one per uniforms[:, j, :].

    Each token is drawn from softmax(logits / temperature) restricted to the ``top_k`` most
    likely tokens (0: all), by inverting its cumulative distribution (over token ids in
    order) at the given uniform draw: the draws, not a generator's state, decide the sample,
    so every grid and the serial model draw the same tokens from the same distribution."""
    from transformers import DynamicCache

    rows, n, length = uniforms.shape
    u = uniforms.reshape(rows * n, length)
    logits, cache = _step(model, prompts.repeat_interleave(n, dim=0),
                          DynamicCache(config=model.config))
    tokens = []
    for t in range(length):
        token = draw(logits, u[:, t].to(logits.device), top_k, temperature)
        tokens.append(token)
        if t + 1 < length:
            logits, cache = _step(model, token[:, None], cache)
    return torch.stack(tokens, dim=1).view(rows, n, length)


def draw(logits: torch.Tensor, u: torch.Tensor, top_k: int, temperature: float) -> torch.Tensor:
    """The token of each row [N, V] of ``logits`` at uniform draw ``u`` [N] (see
    ``sample_local``)."""
    logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = torch.softmax(logits, dim=-1, dtype=torch.float64).cumsum(dim=-1)
    token = torch.searchsorted(cdf, (u.double() * cdf[:, -1])[:, None], right=True)[:, 0]
    return token.clamp_max(logits.shape[-1] - 1)


@torch.no_grad()
def beam_search(model, prompts: torch.Tensor, max_new_tokens: int, num_beams: int,
                batch_size: int = 64) -> torch.Tensor:
    """Best-beam continuation [N, max_new_tokens] of every prompt (equal lengths). On a
    parallelized model every rank passes the same prompts and gets every continuation."""
    _check_counts(max_new_tokens, num_beams, "num_beams")
    return _batched(model, prompts, batch_size,
                    lambda p, rows: beam_search_local(model, p, max_new_tokens, num_beams))


@torch.no_grad()
def sample(model, prompts: torch.Tensor, max_new_tokens: int, num_samples: int, *,
           top_k: int = 0, temperature: float = 1.0, seed: int = 0,
           batch_size: int = 64) -> torch.Tensor:
    """``num_samples`` sampled continuations of every prompt, [N, num_samples,
    max_new_tokens]. The draws come from ``seed`` and the prompt's position only, so the
    result does not depend on the grid or the batch size."""
    _check_counts(max_new_tokens, num_samples, "num_samples")
    if temperature <= 0:
        raise ValueError(f"temperature={temperature} must be positive (use the greedy "
                         "adversary for temperature 0)")
    if top_k < 0:
        raise ValueError(f"top_k={top_k} must be at least 0 (0: the whole vocabulary)")
    g = torch.Generator().manual_seed(seed)
    uniforms = torch.rand(len(prompts), num_samples, max_new_tokens, generator=g,
                          dtype=torch.float64)

    def run(p, rows):
        local = _shard(model, uniforms[rows])
        return sample_local(model, p, local, top_k, temperature)

    return _batched(model, prompts, batch_size, run)


def _check_counts(max_new_tokens: int, count: int, name: str) -> None:
    if max_new_tokens < 1 or count < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} and {name}={count} must be >= 1")


def _batched(model, prompts: torch.Tensor, batch_size: int, fn) -> torch.Tensor:
    """Apply ``fn(local_prompts, global_rows)`` batch by batch over the grid's batch shards
    and gather every row's result on every rank."""
    grid = _grid(model)
    device = grid.device if grid is not None else next(model.parameters()).device
    parts = []
    for start in range(0, len(prompts), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(prompts)))
        local = _shard(model, prompts[rows].long()).to(device)
        parts.append(_gather(model, fn(local, rows).cpu(), len(rows)))
    return torch.cat(parts)
