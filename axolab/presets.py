"""Model presets: Hugging Face config values of the models axolab studies (no weights).

``model_config(name)`` returns a transformers config; build it on the meta device to plan memory
or to load a checkpoint sharded. The Llama 3.1 values are those of the published config.json
files, Pythia's and OLMo-2's those of their published configs; the tiny ones are for CPU tests
and the demo.
"""

from __future__ import annotations

LLAMA_31_COMMON = dict(
    model_type="llama", vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
    hidden_act="silu", bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False,
    attention_bias=False, mlp_bias=False, initializer_range=0.02,
    rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                     "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                     "original_max_position_embeddings": 8192},
)

PYTHIA_COMMON = dict(
    model_type="gpt_neox", max_position_embeddings=2048, rotary_pct=0.25, rotary_emb_base=10000,
    layer_norm_eps=1e-5, use_parallel_residual=True, tie_word_embeddings=False,
    hidden_act="gelu", bos_token_id=0, eos_token_id=0, attention_dropout=0.0, hidden_dropout=0.0,
    initializer_range=0.02)


def _pythia(hidden: int, layers: int, heads: int, vocab: int = 50304) -> dict:
    # The vocabulary (50254 tokens) is padded per size for tensor parallelism when trained.
    return dict(PYTHIA_COMMON, hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, intermediate_size=4 * hidden, vocab_size=vocab)


OLMO2_COMMON = dict(
    model_type="olmo2", vocab_size=100352, max_position_embeddings=4096, rms_norm_eps=1e-6,
    rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False, hidden_act="silu",
    pad_token_id=100277, bos_token_id=None, eos_token_id=100257, initializer_range=0.02)

GPT2_COMMON = dict(model_type="gpt2", vocab_size=50257, n_positions=1024, n_inner=None,
                   activation_function="gelu_new", resid_pdrop=0.1, embd_pdrop=0.1,
                   attn_pdrop=0.1, layer_norm_epsilon=1e-5, tie_word_embeddings=True,
                   bos_token_id=50256, eos_token_id=50256, initializer_range=0.02)

PRESETS: dict[str, dict] = {
    # GPT-2 (openai-community/gpt2*, config.json): the training-data extraction papers' models.
    # Dropout is on as published; set it to 0 (attn_pdrop at least) to train with X > 1.
    "gpt2": dict(GPT2_COMMON, n_embd=768, n_layer=12, n_head=12),
    "gpt2-medium": dict(GPT2_COMMON, n_embd=1024, n_layer=24, n_head=16),
    "gpt2-large": dict(GPT2_COMMON, n_embd=1280, n_layer=36, n_head=20),
    "gpt2-xl": dict(GPT2_COMMON, n_embd=1600, n_layer=48, n_head=25),
    # Qwen3-0.6B, Gemma-2-2B and Gemma-3-1B (Qwen/Qwen3-0.6B, google/gemma-2-2b and
    # google/gemma-3-1b-pt config.json; rotary settings left at transformers' defaults).
    "qwen3-0.6b": dict(model_type="qwen3", vocab_size=151936, hidden_size=1024,
                       intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                       num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=True,
                       hidden_act="silu", bos_token_id=151643, eos_token_id=151645),
    "gemma-2-2b": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304,
                       intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                       num_key_value_heads=4, head_dim=256, query_pre_attn_scalar=256,
                       sliding_window=4096, final_logit_softcapping=30.0,
                       attn_logit_softcapping=50.0, max_position_embeddings=8192,
                       rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
                       bos_token_id=2, eos_token_id=1),
    "gemma-3-1b": dict(model_type="gemma3_text", vocab_size=262144, hidden_size=1152,
                       intermediate_size=6912, num_hidden_layers=26, num_attention_heads=4,
                       num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256,
                       sliding_window=512, max_position_embeddings=32768, rms_norm_eps=1e-6,
                       tie_word_embeddings=True, pad_token_id=0, bos_token_id=2,
                       eos_token_id=1),
    # Phi-3-mini (microsoft/Phi-3-mini-4k-instruct, config.json).
    "phi-3-mini": dict(model_type="phi3", vocab_size=32064, hidden_size=3072,
                       intermediate_size=8192, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, max_position_embeddings=4096,
                       original_max_position_embeddings=4096, rms_norm_eps=1e-5,
                       sliding_window=2047, tie_word_embeddings=False, hidden_act="silu",
                       bos_token_id=1, eos_token_id=32000, pad_token_id=32000,
                       initializer_range=0.02),
    # Pythia (Biderman et al. 2023, Table 1; EleutherAI/pythia-* config.json): the suite whose
    # public training order memorization-dynamics studies rely on.
    "pythia-70m": _pythia(512, 6, 8),
    "pythia-160m": _pythia(768, 12, 12),
    "pythia-410m": _pythia(1024, 24, 16),
    "pythia-1b": _pythia(2048, 16, 8),
    "pythia-1.4b": _pythia(2048, 24, 16),
    "pythia-2.8b": _pythia(2560, 32, 32),
    "pythia-6.9b": _pythia(4096, 32, 32, vocab=50432),
    "pythia-12b": _pythia(5120, 36, 40, vocab=50688),
    # OLMo-2 (allenai/OLMo-2-0425-1B, OLMo-2-1124-7B and -13B config.json): open data.
    "olmo-2-1b": dict(OLMO2_COMMON, hidden_size=2048, intermediate_size=8192,
                      num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=16),
    "olmo-2-7b": dict(OLMO2_COMMON, hidden_size=4096, intermediate_size=11008,
                      num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "olmo-2-13b": dict(OLMO2_COMMON, hidden_size=5120, intermediate_size=13824,
                       num_hidden_layers=40, num_attention_heads=40, num_key_value_heads=40),
    "llama-3.1-8b": dict(LLAMA_31_COMMON, hidden_size=4096, intermediate_size=14336,
                         num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8),
    "llama-3.1-70b": dict(LLAMA_31_COMMON, hidden_size=8192, intermediate_size=28672,
                          num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8),
    "llama-3.1-405b": dict(LLAMA_31_COMMON, hidden_size=16384, intermediate_size=53248,
                           num_hidden_layers=126, num_attention_heads=128, num_key_value_heads=8),
    # A few hundred thousand parameters: trains in seconds on a laptop CPU.
    "tiny-llama": dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=172,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                       max_position_embeddings=2048, rms_norm_eps=1e-5, tie_word_embeddings=False,
                       initializer_range=0.02),
    # About a million parameters: the demo's second size, four times tiny-llama.
    "mini-llama": dict(model_type="llama", vocab_size=1024, hidden_size=128,
                       intermediate_size=344, num_hidden_layers=4, num_attention_heads=4,
                       num_key_value_heads=2, max_position_embeddings=2048, rms_norm_eps=1e-5,
                       tie_word_embeddings=False, initializer_range=0.02),
    "small-llama": dict(model_type="llama", vocab_size=1024, hidden_size=256,
                        intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                        num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                        tie_word_embeddings=False, initializer_range=0.02),
    "medium-llama": dict(model_type="llama", vocab_size=1024, hidden_size=384,
                         intermediate_size=1024, num_hidden_layers=6, num_attention_heads=8,
                         num_key_value_heads=4, max_position_embeddings=2048, rms_norm_eps=1e-5,
                         tie_word_embeddings=False, initializer_range=0.02),
}


def model_config(name: str, **overrides):
    """The transformers config of preset ``name``, with fields overridden (e.g. vocab_size)."""
    from transformers import AutoConfig

    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; presets: {', '.join(PRESETS)}")
    values = {**PRESETS[name], **overrides}
    return AutoConfig.for_model(values.pop("model_type"), **values)
