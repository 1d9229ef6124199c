"""Per-architecture parallelization plans: which module becomes which parallel layer.

A plan maps module-name patterns (fnmatch, ``*`` for the layer index) to a style:

- ``embedding``:  token embedding, vocab over Y, hidden over X
- ``forward``:    Linear with ``in`` over X, ``out`` over Y (q/k/v, gate/up)
- ``transposed``: Linear with ``in`` over Y, ``out`` over X (o_proj, down_proj)
- ``lm_head``:    a forward Linear over the (padded) vocabulary, vocab-parallel loss
- ``rmsnorm``:    Llama-style RMSNorm over the X-split hidden dim
- ``layernorm``:  nn.LayerNorm over the X-split hidden dim

plus the config attributes that must divide by Y because attention heads are split over Y.
Adding an architecture whose blocks look like Llama's is one more entry in :data:`PLANS`.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

STYLES = ("embedding", "forward", "transposed", "lm_head", "rmsnorm", "layernorm")


@dataclass(frozen=True)
class Plan:
    """Module-name pattern -> style, and the head counts split over Y."""

    styles: dict[str, str]
    head_counts: tuple[str, ...] = ("num_attention_heads", "num_key_value_heads")
    # Modules with no parameters of their own whose computation is replicated (rotary tables).
    stateless: tuple[str, ...] = field(default=("*rotary_emb",))

    def style_of(self, name: str) -> str | None:
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

# Qwen2 differs from Llama only by biases on q/k/v, which ParallelLinear carries; Mistral by
# sliding-window attention, which runs unchanged on the local heads.
PLANS: dict[str, Plan] = {
    "llama": LLAMA_LIKE,
    "mistral": LLAMA_LIKE,
    "qwen2": LLAMA_LIKE,
}


def plan_for(config) -> Plan:
    model_type = getattr(config, "model_type", None)
    if model_type not in PLANS:
        raise ValueError(f"no parallelization plan for model_type {model_type!r}; supported: "
                         f"{', '.join(sorted(PLANS))} (add one to axolab.parallel.plans.PLANS)")
    return PLANS[model_type]
