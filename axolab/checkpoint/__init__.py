"""Sharded checkpoints: HF-compatible safetensors, parallel save, resharding load, resume."""

from .files import CheckpointError
from .load import latest_checkpoint, load_checkpoint, load_pretrained, load_weights, materialize
from .save import save_checkpoint, step_dir

__all__ = ["CheckpointError", "latest_checkpoint", "load_checkpoint", "load_pretrained",
           "load_weights", "materialize", "save_checkpoint", "step_dir"]
