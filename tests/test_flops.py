"""The FLOP count behind every MFU figure (training metrics, the planner's MFU): the matmul
FLOPs torch itself counts in one forward + backward of small random-init Hugging Face models
(torch.utils.flop_counter, eager attention so the score and value matmuls are plain bmm).

PaLM's estimate (Chowdhery et al. 2022, appendix B) is exact for these models: 6 FLOPs per
matmul parameter and token (2 forward, 4 backward), plus 12 * layers * hidden * seq for the
attention scores and values (their backward included, no causal saving)."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM,
                          LlamaConfig, LlamaForCausalLM)

from axolab.metrics import flops_per_token
from axolab.perfmodel import model_shapes
from axolab.perfmodel.compute import model_flops_per_step
from axolab.perfmodel.workload import Workload

SEQ, BATCH, VOCAB = 16, 2, 96
MODELS = {
    # grouped-query attention, gated MLP, untied head
    "llama": (LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80,
                          num_hidden_layers=2, num_attention_heads=6, num_key_value_heads=2,
                          max_position_embeddings=64, tie_word_embeddings=False),
              LlamaForCausalLM),
    # Conv1D layers (addmm), 4h MLP without a gate, tied head
    "gpt2": (GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=3, n_head=6, n_positions=64,
                        eos_token_id=0, bos_token_id=0), GPT2LMHeadModel),
    # fused query_key_value, ungated MLP
    "gpt_neox": (GPTNeoXConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=80,
                               num_hidden_layers=2, num_attention_heads=6,
                               max_position_embeddings=64), GPTNeoXForCausalLM),
}


def _counted_flops(config, cls) -> int:
    config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = cls(config)
    ids = torch.randint(0, VOCAB, (BATCH, SEQ), generator=torch.Generator().manual_seed(1))
    with FlopCounterMode(display=False) as counter:
        model(input_ids=ids, labels=ids).loss.backward()
    return counter.get_total_flops()


@pytest.mark.parametrize("name", sorted(MODELS))
def test_flops_per_token_is_what_torch_counts(name):
    config, cls = MODELS[name]
    counted = _counted_flops(config, cls)
    assert flops_per_token(config, SEQ) * BATCH * SEQ == counted


def test_the_planner_counts_the_same_model_flops():
    config, cls = MODELS["llama"]
    shapes = model_shapes(config)
    work = Workload(global_batch=BATCH, seq_len=SEQ)
    assert model_flops_per_step(shapes, work) == _counted_flops(config, cls)
