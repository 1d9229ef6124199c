"""Model presets: Hugging Face config values of the models axolab studies (no weights).

``model_config(name)`` returns a transformers config; build it on the meta device to plan memory
or to load a checkpoint sharded. The Llama 3.1 values are those of the published config.json
files; the tiny ones are for CPU tests and the demo.
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

PRESETS: dict[str, dict] = {
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
