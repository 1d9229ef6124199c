"""Tiny random-init Hugging Face configs shared by the tests."""

import torch
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

# Heads and kv-heads divide by 4 so Y=4 grids are possible; vocab 99 is odd so Y>1 pads it.
COMMON = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=4,
              max_position_embeddings=64)


def tiny_model(kind: str, tied: bool, seed: int = 0):
    torch.manual_seed(seed)
    if kind == "llama":
        cfg = LlamaConfig(vocab_size=99, intermediate_size=64, tie_word_embeddings=tied, **COMMON)
        model = LlamaForCausalLM(cfg)
    elif kind == "qwen2":
        cfg = Qwen2Config(vocab_size=128, intermediate_size=48, tie_word_embeddings=tied, **COMMON)
        model = Qwen2ForCausalLM(cfg)
        with torch.no_grad():  # random-init biases are zero; make them count
            for layer in model.model.layers:
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5)
    elif kind == "mistral":
        cfg = MistralConfig(vocab_size=101, intermediate_size=64, tie_word_embeddings=tied,
                            sliding_window=4, **COMMON)
        model = MistralForCausalLM(cfg)
    elif kind in NEW_ARCHITECTURES:
        model = _new_architecture(kind, tied)
    else:
        raise ValueError(kind)
    return model.float()


# The architectures beyond the Llama family, each with the features its plan must handle:
# per-head and all-head q/k norms, norms without parameters, post-norm, (1 + w) norms, a
# scaled embedding, logit soft-capping, a fused head-major q/k/v, parallel residual,
# partial rotary, section-fused q/k/v and gate/up (Phi-3), Conv1D layers with a fused, biased
# c_attn and learned positions (GPT-2). Dropout stays 0 (X ranks
# recompute one attention).
NEW_ARCHITECTURES = ("qwen3", "olmo", "olmo2", "gemma2", "gemma3_text", "gpt_neox", "phi3",
                     "gpt2")
# Vocabulary 99 (odd) so Y > 1 pads it; 8 heads / 4 kv heads (GPT-NeoX: 4 heads) so Y = 4 fits.
_NEW = dict(hidden_size=32, num_hidden_layers=2, intermediate_size=64, vocab_size=99,
            max_position_embeddings=64)


def _new_architecture(kind: str, tied: bool):
    import transformers as T

    gqa = dict(num_attention_heads=8, num_key_value_heads=4, **_NEW)
    if kind == "qwen3":
        model = T.Qwen3ForCausalLM(T.Qwen3Config(head_dim=4, tie_word_embeddings=tied, **gqa))
    elif kind == "olmo":
        model = T.OlmoForCausalLM(T.OlmoConfig(clip_qkv=0.5, tie_word_embeddings=tied,
                                               pad_token_id=0, **gqa))
    elif kind == "olmo2":
        model = T.Olmo2ForCausalLM(T.Olmo2Config(tie_word_embeddings=tied, pad_token_id=0,
                                                 **gqa))
    elif kind == "gemma2":
        model = T.Gemma2ForCausalLM(T.Gemma2Config(
            head_dim=4, sliding_window=4, final_logit_softcapping=2.0,
            attn_logit_softcapping=3.0, tie_word_embeddings=tied, pad_token_id=0,
            **gqa))
    elif kind == "gemma3_text":
        model = T.Gemma3ForCausalLM(T.Gemma3TextConfig(
            head_dim=4, sliding_window=4, final_logit_softcapping=2.0,
            tie_word_embeddings=tied, pad_token_id=0, **gqa))
    elif kind == "phi3":
        model = T.Phi3ForCausalLM(T.Phi3Config(tie_word_embeddings=tied, pad_token_id=0,
                                               resid_pdrop=0.0, embd_pdrop=0.0, **gqa))
    elif kind == "gpt2":
        model = T.GPT2LMHeadModel(T.GPT2Config(
            n_embd=32, n_layer=2, n_head=8, vocab_size=99, n_positions=64, n_inner=64,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, tie_word_embeddings=tied))
    elif kind == "gpt_neox":
        model = T.GPTNeoXForCausalLM(T.GPTNeoXConfig(
            num_attention_heads=4, rotary_pct=0.5, use_parallel_residual=True,
            tie_word_embeddings=tied, hidden_dropout=0.0, attention_dropout=0.0, **_NEW))
    else:
        raise ValueError(kind)
    with torch.no_grad():  # norm weights start at 1 (or 0) and biases at 0: make them count
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape) * 0.3)
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
