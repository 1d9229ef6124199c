"""Sharded checkpoints: HF-compatible safetensors, parallel save, resharding load, resume.

Names load on first use: listing checkpoints (``complete_checkpoints``) is torch-free, so a
launcher or notebook kernel can do it; saving and loading import torch.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "CheckpointError": ".files", "pretrained_weights": ".files", "read_manifest": ".files",
    "load_checkpoint": ".load", "load_checkpoint_model": ".load", "load_pretrained": ".load",
    "load_weights": ".load", "materialize": ".load",
    "DEFAULT_CHUNK_BYTES": ".save", "SaveReport": ".save", "save_checkpoint": ".save",
    "step_dir": ".names", "step_of": ".names", "complete_checkpoints": ".names",
    "checkpoint_dirs": ".names",
    "latest_checkpoint": ".verify", "resume_checkpoint": ".verify", "verify_files": ".verify",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name], __name__), name)
