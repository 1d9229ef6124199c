"""The matrices of a Llama-like model, as axolab parallelizes them.

Everything the performance and memory models need about a model is here: per decoder layer the
seven linear layers (q, k, v, o, gate, up, down) with their orientation in the 4D algorithm, the
embedding table and lm head, head counts and norm sizes. Shapes come from a Hugging Face config,
a model directory's config.json (read as plain JSON: no torch, no transformers, so a notebook
kernel can plan a 405B run) or a preset name of :mod:`axolab.presets`; no model is built and no
weight is touched.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace


SHARED_INPUTS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"))
"""Layers of a decoder layer that read one input and are stacked into one matmul where they
communicate: the default of axolab.parallel.Plan.shared_inputs (kept equal by a test; the
planner stays torch-free)."""


@dataclass(frozen=True)
class LinearShape:
    """One weight matrix ``out_features x in_features`` and how axolab splits it."""

    name: str
    """Module name inside a decoder layer (``q_proj``) or of the model (``lm_head``)."""
    out_features: int
    """Rows of the weight (outputs)."""
    in_features: int
    """Columns of the weight (inputs)."""
    transposed: bool
    """False: a forward layer (``in`` over X, ``out`` over Y); True: transposed (``in`` over Y,
    ``out`` over X). See DESIGN.md, "The 4D grid"."""
    input_is_residual: bool
    """Whether its input comes from a norm of the residual stream. axolab keeps the residual
    stream in the parameter dtype (fp32), so the backward all-reduce of this layer's input
    gradient moves parameter-dtype bytes even under bf16 autocast."""
    bias: bool = False
    """Whether the layer has a bias (Qwen2's q/k/v)."""

    @property
    def params(self) -> int:
        return self.out_features * self.in_features + (self.out_features if self.bias else 0)


@dataclass(frozen=True)
class ModelShapes:
    """Sizes of a decoder-only transformer as axolab parallelizes it: the Llama family and the
    architectures of :data:`axolab.parallel.PLANS` (GPT-NeoX, OLMo, OLMo-2, Qwen3, Gemma)."""

    name: str
    """Preset name or the config's ``model_type``; used in messages only."""
    hidden: int
    """Hidden size H (the residual stream)."""
    intermediate: int
    """MLP intermediate size I."""
    layers: int
    """Number of decoder layers L."""
    heads: int
    """Attention (query) heads."""
    kv_heads: int
    """Key/value heads (grouped-query attention)."""
    head_dim: int
    """Size of one head."""
    vocab: int
    """Vocabulary size V (padded to a multiple of Y by axolab, see :meth:`padded_vocab`)."""
    tied_embeddings: bool
    """Whether the lm head shares the embedding table (one parameter, one gradient)."""
    qkv_bias: bool = False
    """Whether q/k/v carry biases (Qwen2)."""
    gated_mlp: bool = True
    """gate/up/down (Llama family) or up/down only (GPT-NeoX's dense_h_to_4h / 4h_to_h)."""
    linear_bias: bool = False
    """Whether every linear of a layer carries a bias (GPT-NeoX)."""
    layer_norm_vectors: int = 2
    """Hidden-size norm vectors per layer, weights and biases: 2 (Llama), 4 (Gemma's four
    norms; GPT-NeoX's two biased LayerNorms), 0 (OLMo's norms have no parameters)."""
    final_norm_vectors: int = 1
    """Hidden-size vectors of the final norm (2 with a bias, 0 without parameters)."""
    positions: int = 0
    """Rows of a learned position embedding (GPT-2's wpe; 0: rotary positions)."""
    qk_norm: str = "none"
    """q/k norms: "none"; "per_head" (Qwen3, Gemma-3: one head_dim weight each for q and k,
    replicated); "all_heads" (OLMo-2: over the whole projection output, split over Y)."""
    merged_matrices: int = 0
    """Matrices per layer stored merged into another one's tensor (2 for GPT-NeoX's and GPT-2's
    [q; k; v], 3 for Phi-3's qkv_proj and gate_up_proj), biases merged alike. The planner
    sizes every matrix on its own; this only counts tensors (:attr:`param_tensors`)."""

    def __post_init__(self):
        for field_name in ("hidden", "intermediate", "layers", "heads", "kv_heads", "head_dim",
                           "vocab"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model {self.name}: {field_name} must be a positive integer, "
                                 f"got {value!r}")
        if self.heads % self.kv_heads:
            raise ValueError(f"model {self.name}: {self.heads} attention heads do not group "
                             f"over {self.kv_heads} key/value heads")

    @property
    def layer_linears(self) -> tuple[LinearShape, ...]:
        """The seven matrices of one decoder layer, in execution order."""
        h, i, q, kv = self.hidden, self.intermediate, self.heads * self.head_dim, \
            self.kv_heads * self.head_dim
        b, lb = self.qkv_bias or self.linear_bias, self.linear_bias
        attention = (LinearShape("q_proj", q, h, False, True, b),
                     LinearShape("k_proj", kv, h, False, True, b),
                     LinearShape("v_proj", kv, h, False, True, b),
                     LinearShape("o_proj", h, q, True, False, lb))
        gate = (LinearShape("gate_proj", i, h, False, True, lb),) if self.gated_mlp else ()
        return attention + gate + (LinearShape("up_proj", i, h, False, True, lb),
                                   LinearShape("down_proj", h, i, True, False, lb))

    @property
    def lm_head(self) -> LinearShape:
        """A forward layer over the vocabulary (rows padded to a multiple of Y)."""
        return LinearShape("lm_head", self.vocab, self.hidden, False, True)

    @property
    def embedding(self) -> LinearShape:
        """The table ``[V, H]``: rows (vocab) over Y, columns (hidden) over X, like the lm head."""
        return LinearShape("embed_tokens", self.vocab, self.hidden, True, False)

    def padded_vocab(self, y: int) -> int:
        return -(-self.vocab // y) * y

    @property
    def norms(self) -> int:
        """Norm weight and bias vectors of size H in the whole model."""
        return self.layer_norm_vectors * self.layers + self.final_norm_vectors

    @property
    def qk_norm_params(self) -> int:
        """q/k norm parameters of one layer."""
        if self.qk_norm == "per_head":
            return 2 * self.head_dim
        if self.qk_norm == "all_heads":
            return (self.heads + self.kv_heads) * self.head_dim
        return 0

    def local_vectors(self, x: int, y: int) -> int:
        """Vector parameter elements one rank holds on a grid with these X and Y: norm
        vectors split over X, biases over their layer's output axis, q/k norms split over Y
        (all heads) or whole (per head). Their gradients are all-reduced over D*Z."""
        total = self.norms * (self.hidden // x)
        for lin in self.layer_linears:
            if lin.bias:
                total += self.layers * lin.out_features // (x if lin.transposed else y)
        qk = {"per_head": self.qk_norm_params, "all_heads": self.qk_norm_params // y}
        return total + self.layers * qk.get(self.qk_norm, 0)

    @property
    def params(self) -> int:
        """Parameters of the serial model (what ``model.num_parameters()`` reports)."""
        per_layer = sum(lin.params for lin in self.layer_linears) + \
            self.layer_norm_vectors * self.hidden + self.qk_norm_params
        head = 0 if self.tied_embeddings else self.vocab * self.hidden
        return self.layers * per_layer + (self.vocab + self.positions) * self.hidden + head + \
            self.final_norm_vectors * self.hidden

    @property
    def param_tensors(self) -> int:
        """Parameter tensors of the model. Each has its own gradient and optimizer state and
        costs the unfused per-tensor kernels of gradient clipping and AdamW; axolab shards
        tensors but never merges them."""
        per_layer = sum(1 + lin.bias for lin in self.layer_linears) + self.layer_norm_vectors \
            + (2 if self.qk_norm != "none" else 0) \
            - self.merged_matrices * (2 if self.linear_bias else 1)
        return self.layers * per_layer + 1 + (0 if self.tied_embeddings else 1) + \
            self.final_norm_vectors + (1 if self.positions else 0)

    @property
    def matmul_params(self) -> int:
        """Parameters that take part in matmuls each token (all but the embedding and norms),
        as :func:`axolab.metrics.flops_per_token` counts them."""
        return self.layers * sum(lin.params for lin in self.layer_linears) + \
            self.vocab * self.hidden


# What differs from the Llama layout, by the config's model_type: (norm vectors per layer,
# final norm vectors, q/k norm, gated MLP, a bias on every linear).
_ARCHITECTURE = {
    "qwen3": (2, 1, "per_head", True, False),
    "olmo": (0, 0, "none", True, False),
    "olmo2": (2, 1, "all_heads", True, False),
    "gemma2": (4, 1, "none", True, False),
    "gemma3_text": (4, 1, "per_head", True, False),
    "gpt_neox": (4, 2, "none", False, True),
    "gpt2": (4, 2, "none", False, True),
}
# Matrices per layer that transformers stores merged into another's tensor.
_MERGED_MATRICES = {"gpt_neox": 2, "gpt2": 2, "phi3": 3}


def _from_config(config, name: str | None) -> ModelShapes:
    h = config.hidden_size
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    model_type = getattr(config, "model_type", "")
    norms, final, qk_norm, gated, biased = _ARCHITECTURE.get(model_type,
                                                              (2, 1, "none", True, False))
    # GPT-2 names the MLP size n_inner (None: 4 * hidden).
    intermediate = getattr(config, "intermediate_size", None) or \
        getattr(config, "n_inner", None) or 4 * h
    return ModelShapes(
        name=name or model_type or "model", hidden=h,
        intermediate=intermediate, layers=config.num_hidden_layers, heads=heads,
        kv_heads=kv, head_dim=head_dim, vocab=config.vocab_size,
        tied_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        qkv_bias=(bool(getattr(config, "attention_bias", False)) and not biased)
        or model_type == "qwen2",
        gated_mlp=gated, linear_bias=biased and bool(getattr(config, "attention_bias", True)),
        layer_norm_vectors=norms, final_norm_vectors=final, qk_norm=qk_norm,
        positions=getattr(config, "n_positions", 0) if model_type == "gpt2" else 0,
        merged_matrices=_MERGED_MATRICES.get(model_type, 0))


REQUIRED_CONFIG_KEYS = ("hidden_size", "intermediate_size", "num_hidden_layers",
                        "num_attention_heads", "vocab_size")
"""What a config.json must hold to be read as a Llama-like decoder."""


def _from_model_dir(directory: Path) -> ModelShapes:
    """Shapes from ``directory/config.json``, a Hugging Face model directory, read as JSON."""
    path = directory / "config.json"
    if not path.is_file():
        raise ValueError(f"model directory {directory} has no config.json (expected a Hugging "
                         "Face model directory: config.json and *.safetensors)")
    try:
        config = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a JSON object of config fields, got "
                         f"{type(config).__name__}")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path} lacks {', '.join(missing)}: not the config of a Llama-like "
                         f"decoder (model_type {config.get('model_type')!r})")
    return _from_config(SimpleNamespace(**config), str(directory))


def model_shapes(model) -> ModelShapes:
    """Shapes of ``model``: a preset name (``llama-3.1-405b``), a model directory holding a
    Hugging Face config.json (a :class:`pathlib.Path`, or a string naming an existing
    directory that is not a preset), a transformers config, or :class:`ModelShapes`
    (returned as is)."""
    if isinstance(model, ModelShapes):
        return model
    if isinstance(model, Path):
        if not model.is_dir():
            raise ValueError(f"model directory {model} does not exist")
        return _from_model_dir(model)
    if isinstance(model, str):
        from ..presets import PRESETS, model_config

        if model in PRESETS:
            return _from_config(model_config(model), model)
        if Path(model).is_dir():
            return _from_model_dir(Path(model))
        raise ValueError(f"unknown model {model!r}: neither a preset ({', '.join(PRESETS)}) nor "
                         "an existing model directory with a config.json (or pass a "
                         "transformers config)")
    if hasattr(model, "hidden_size") and hasattr(model, "num_hidden_layers"):
        return _from_config(model, getattr(model, "name_or_path", None) or None)
    raise ValueError(f"expected a preset name, a model directory, a transformers config or "
                     f"ModelShapes, got {type(model).__name__}")
