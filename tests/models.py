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
    else:
        raise ValueError(kind)
    return model.float()


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double(), b.detach().double()
    if a.shape != b.shape:
        raise AssertionError(f"shape {tuple(a.shape)} != {tuple(b.shape)}")
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))
