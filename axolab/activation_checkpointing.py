"""Activation checkpointing of a Hugging Face model, under the name its transformers has.

transformers 5 renamed ``gradient_checkpointing_enable`` to ``activation_checkpointing_enable``;
the old name warns on every call and goes in v6, and releases before the rename only have the
old one (``transformers>=5.0`` is what axolab accepts).
"""

from __future__ import annotations


def enable_activation_checkpointing(model) -> None:
    """Recompute each decoder layer's forward during backward instead of keeping its
    activations. Non-reentrant ``torch.utils.checkpoint``: it works with inputs that need no
    gradient and with axolab's parallel layers, whose backward runs collectives."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
