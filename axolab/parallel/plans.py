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

from .styles import STYLES, Style


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
