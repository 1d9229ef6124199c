"""Greedy decoding and teacher-forced argmax on serial or parallelized models.

On a parallelized model every rank passes its own batch shard; logits stay vocab-sharded and the
argmax is taken vocab-parallel, so every rank of a tensor-parallel group picks the same token.
A serial Hugging Face model goes through the same code with a plain argmax.
"""

from __future__ import annotations

import torch

from axolab.parallel import find_parallel_state, vocab_parallel_argmax


def _argmax(model, logits: torch.Tensor) -> torch.Tensor:
    state = find_parallel_state(model)
    if state is not None:
        return vocab_parallel_argmax(logits, state.vocab)
    return logits.argmax(dim=-1)


@torch.no_grad()
def teacher_forced_argmax(model, input_ids: torch.Tensor) -> torch.Tensor:
    """argmax prediction for the token after each position ([B, S]): one forward pass."""
    return _argmax(model, model(input_ids=input_ids, use_cache=False).logits)


@torch.no_grad()
def greedy_generate(model, prompts: torch.Tensor, max_new_tokens: int) -> torch.Tensor:
    """Greedy continuation ([B, max_new_tokens]) of equal-length prompts, with a KV cache.

    Matches ``transformers``' ``generate(do_sample=False)`` without stopping criteria."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    out = model(input_ids=prompts, past_key_values=cache, use_cache=True)
    tokens = [_argmax(model, out.logits[:, -1])]
    for _ in range(max_new_tokens - 1):
        out = model(input_ids=tokens[-1][:, None], past_key_values=out.past_key_values,
                    use_cache=True)
        tokens.append(_argmax(model, out.logits[:, -1]))
    return torch.stack(tokens, dim=1) if tokens else prompts.new_empty(prompts.shape[0], 0)
