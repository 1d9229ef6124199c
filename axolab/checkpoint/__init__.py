"""Sharded checkpoints: HF-compatible safetensors, parallel save, resharding load, resume."""

from .files import CheckpointError, pretrained_weights, read_manifest
from .load import load_checkpoint, load_checkpoint_model, load_pretrained, load_weights, materialize
from .save import DEFAULT_CHUNK_BYTES, SaveReport, save_checkpoint, step_dir
from .verify import complete_checkpoints, latest_checkpoint, resume_checkpoint, verify_files

__all__ = ["CheckpointError", "DEFAULT_CHUNK_BYTES", "SaveReport", "complete_checkpoints",
           "latest_checkpoint", "load_checkpoint", "load_checkpoint_model", "load_pretrained",
           "load_weights", "materialize", "pretrained_weights", "read_manifest",
           "resume_checkpoint", "save_checkpoint", "step_dir", "verify_files"]
