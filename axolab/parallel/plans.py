"""Per-architecture parallelization plans: which module becomes which parallel layer.

A plan maps module-name patterns (fnmatch, ``*`` for the layer index) to a
:class:`~axolab.parallel.styles.Style` (given as the object or its name):

- ``embedding`` (:class:`Embedding`): token embedding, vocab over Y, hidden over X
- ``forward`` (:class:`ColumnLinear`): Linear with ``in`` over X, ``out`` over Y (q/k/v, gate/up)
- ``transposed`` (:class:`RowLinear`): Linear with ``in`` over Y, ``out`` over X (o_proj, down)
- ``lm_head`` (:class:`LMHead`): a column Linear over the (padded) vocabulary
- ``rmsnorm`` / ``layernorm``: norms over the X-split hidden dim

plus the config attributes that must divide by Y because attention heads are split over Y.
Adding an architecture is an entry in :data:`PLANS` (and a new style for a new kind of module);
docs/adding-an-architecture.md walks through it.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

from .styles import (STYLES, Embedding, FusedColumnLinear, LocalHeads, Replicated, RMSNorm,
                     Style)


@dataclass(frozen=True)
class Plan:
    """Module-name pattern -> style, and the head counts split over Y."""

    styles: dict[str, Style | str]
    """fnmatch pattern of a module name -> its style; the first matching pattern wins."""
    head_counts: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads")
    """Config attributes that must divide by Y (attention heads are split over Y)."""
    stateless: tuple[str, ...] = field(default=("*rotary_emb",))
    """Modules with no parameters of their own whose computation is replicated (rotary
    tables); documentation of what the plan leaves alone on purpose."""
    attention_dropout: tuple[str, ...] = ("attention_dropout",)
    """Config attributes holding the attention dropout (refused with X > 1)."""
    shared_inputs: tuple[tuple[str, ...], ...] = (("q_proj", "k_proj", "v_proj"),
                                                  ("gate_proj", "up_proj"))
    """Names of sibling forward layers (children of one module) that the architecture calls
    one after the other on the same input: computed as one stacked matmul
    (:mod:`axolab.parallel.fused_input`). A group a model lacks is skipped."""
    checkpoint_names: tuple[tuple[str, str], ...] = ()
    """(state-dict key prefix, the prefix its tensors have in the architecture's Hugging Face
    checkpoint files) where the two differ: GPT-NeoX's ``lm_head`` is ``embed_out`` on disk."""

    def file_key(self, key: str) -> str:
        """The name of state-dict entry ``key`` in checkpoint files (save_pretrained's)."""
        for prefix, on_disk in self.checkpoint_names:
            if key.startswith(prefix):
                return on_disk + key[len(prefix):]
        return key

    def __post_init__(self):
        resolved = {}
        for pattern, style in self.styles.items():
            if isinstance(style, str):
                if style not in STYLES:
                    raise ValueError(f"plan entry {pattern!r}: unknown style {style!r}; known: "
                                     f"{', '.join(STYLES)}")
                style = STYLES[style]
            if not isinstance(style, Style):
                raise TypeError(f"plan entry {pattern!r}: {style!r} is not a Style")
            resolved[pattern] = style
        object.__setattr__(self, "styles", resolved)

    def style_of(self, name: str) -> Style | None:
        for pattern, style in self.styles.items():
            if fnmatch.fnmatchcase(name, pattern):
                return style
        return None


LLAMA_LIKE = Plan(styles={
    "model.embed_tokens": "embedding",
    "model.layers.*.self_attn.q_proj": "forward",
    "model.layers.*.self_attn.k_proj": "forward",
    "model.layers.*.self_attn.v_proj": "forward",
    "model.layers.*.self_attn.o_proj": "transposed",
    "model.layers.*.mlp.gate_proj": "forward",
    "model.layers.*.mlp.up_proj": "forward",
    "model.layers.*.mlp.down_proj": "transposed",
    "model.layers.*.input_layernorm": "rmsnorm",
    "model.layers.*.post_attention_layernorm": "rmsnorm",
    "model.norm": "rmsnorm",
    "lm_head": "lm_head",
})


def _llama_like(**overrides) -> Plan:
    """The Llama layout of module names, with some styles replaced or added."""
    styles = dict(LLAMA_LIKE.styles)
    styles.update(overrides)
    return Plan(styles={k: v for k, v in styles.items() if v is not None})


# Qwen2 differs from Llama only by biases on q/k/v, which ParallelLinear carries; Mistral by
# sliding-window attention, which runs unchanged on the local heads.
_PER_HEAD_QK_NORM = {"model.layers.*.self_attn.q_norm": Replicated(("y",)),
                     "model.layers.*.self_attn.k_norm": Replicated(("y",))}
_GEMMA_NORM = RMSNorm(offset=1.0, weight_in_fp32=True)
_OLMO2_NORM = RMSNorm(weight_in_fp32=True)

PLANS: dict[str, Plan] = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
    # Qwen3: q/k RMSNorm over each head's own head_dim, one weight shared by the heads.
    "qwen3": _llama_like(**_PER_HEAD_QK_NORM),
    # OLMo: LayerNorm without parameters on the residual stream (still a reduction over X).
    "olmo": _llama_like(**{"model.layers.*.input_layernorm": "layernorm",
                           "model.layers.*.post_attention_layernorm": "layernorm",
                           "model.norm": "layernorm"}),
    # OLMo-2: norms after attention and MLP (post-norm), and q/k norms over all heads of the
    # projection's output, which is split over Y.
    "olmo2": _llama_like(**{"model.layers.*.input_layernorm": None,
                            "model.layers.*.post_attention_layernorm": _OLMO2_NORM,
                            "model.layers.*.post_feedforward_layernorm": _OLMO2_NORM,
                            "model.norm": _OLMO2_NORM,
                            "model.layers.*.self_attn.q_norm": RMSNorm(axis="y",
                                                                       weight_in_fp32=True),
                            "model.layers.*.self_attn.k_norm": RMSNorm(axis="y",
                                                                       weight_in_fp32=True)}),
    # Gemma-2: scaled embedding, (1 + w) RMSNorms before and after attention and MLP; logit
    # soft-capping is elementwise, so it runs on the vocabulary-sharded logits.
    "gemma2": _llama_like(**{"model.embed_tokens": Embedding(scaled=True),
                             "model.layers.*.input_layernorm": _GEMMA_NORM,
                             "model.layers.*.post_attention_layernorm": _GEMMA_NORM,
                             "model.layers.*.pre_feedforward_layernorm": _GEMMA_NORM,
                             "model.layers.*.post_feedforward_layernorm": _GEMMA_NORM,
                             "model.norm": _GEMMA_NORM}),
    # GPT-NeoX (Pythia): biased LayerNorms, a head-major fused q/k/v (whole heads per Y block,
    # so a plain column split), parallel residual and partial rotary (both local).
    "gpt_neox": Plan(styles={
        "gpt_neox.embed_in": "embedding",
        "gpt_neox.layers.*.attention.query_key_value": "forward",
        "gpt_neox.layers.*.attention.dense": "transposed",
        "gpt_neox.layers.*.mlp.dense_h_to_4h": "forward",
        "gpt_neox.layers.*.mlp.dense_4h_to_h": "transposed",
        "gpt_neox.layers.*.input_layernorm": "layernorm",
        "gpt_neox.layers.*.post_attention_layernorm": "layernorm",
        "gpt_neox.final_layer_norm": "layernorm",
        "lm_head": "lm_head",
    }, head_counts=("num_attention_heads",), checkpoint_names=(("lm_head.", "embed_out."),)),
}

def _phi3_head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


# Phi-3: q/k/v fused in one matrix ([q; k; v], grouped-query sizes) and gate/up in another
# ([gate; up]); each section is split over Y on its own, and the attention module slices the
# fused output with its local head counts.
PLANS["phi3"] = _llama_like(**{
    "model.layers.*.self_attn": LocalHeads(),
    "model.layers.*.self_attn.qkv_proj": FusedColumnLinear(lambda c: (
        c.num_attention_heads * _phi3_head_dim(c),
        c.num_key_value_heads * _phi3_head_dim(c),
        c.num_key_value_heads * _phi3_head_dim(c))),
    "model.layers.*.mlp.gate_up_proj": FusedColumnLinear(
        lambda c: (c.intermediate_size, c.intermediate_size)),
})
# GPT-2: Conv1D layers (weights stored [in, out]) with biases, q/k/v section-fused in c_attn
# (the attention splits it by split_size, which becomes the local size), learned position
# embeddings (an embedding over positions), biased LayerNorms, tied head. Its checkpoints name
# tensors without the "transformer." prefix, as the published ones do.
PLANS["gpt2"] = Plan(styles={
    "transformer.wte": "embedding",
    "transformer.wpe": "embedding",
    "transformer.h.*.attn": LocalHeads(config_counts=(), module_counts=("split_size",
                                                                        "num_heads")),
    "transformer.h.*.attn.c_attn": FusedColumnLinear(lambda c: (c.hidden_size,) * 3),
    "transformer.h.*.attn.c_proj": "transposed",
    "transformer.h.*.mlp.c_fc": "forward",
    "transformer.h.*.mlp.c_proj": "transposed",
    "transformer.h.*.ln_1": "layernorm",
    "transformer.h.*.ln_2": "layernorm",
    "transformer.ln_f": "layernorm",
    "lm_head": "lm_head",
}, head_counts=("num_attention_heads",), attention_dropout=("attn_pdrop",),
    checkpoint_names=(("transformer.", ""),))
# Gemma-3 (text): Gemma-2's layout plus Qwen3-style per-head q/k norms, also (1 + w).
PLANS["gemma3_text"] = _llama_like(**{**PLANS["gemma2"].styles, **_PER_HEAD_QK_NORM})


def plan_for(config) -> Plan:
    model_type = getattr(config, "model_type", None)
    if model_type not in PLANS:
        raise ValueError(f"no parallelization plan for model_type {model_type!r}; supported: "
                         f"{', '.join(sorted(PLANS))} (add one to axolab.parallel.plans.PLANS)")
    return PLANS[model_type]
