"""Where checkpoints are and what they are called; torch-free, so a launcher or a notebook
kernel can list a run's checkpoints without importing torch.

A checkpoint is a directory named exactly ``step-`` + 8 digits that holds a manifest (a save
writes it last, inside a hidden partial directory renamed into place). Anything else under the
root (``step-zzz``, ``step-12``, a symlink) is not axolab's and is ignored.
"""

from __future__ import annotations

import re
from pathlib import Path

MANIFEST = "manifest.json"
STEP_NAME = re.compile(r"step-(\d{8})")


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def step_of(path: Path) -> int | None:
    """The step of a checkpoint directory named exactly ``step-`` + 8 digits, else None."""
    match = STEP_NAME.fullmatch(Path(path).name)
    return int(match.group(1)) if match else None


def checkpoint_dirs(root: str | Path) -> list[Path]:
    """Directories under ``root`` named like a checkpoint, oldest first, with or without a
    manifest (a resume must hear why a final-named directory lacks one)."""
    if not Path(root).is_dir():
        return []
    found = [(s, p) for p in Path(root).iterdir() if (s := step_of(p)) is not None
             and not p.is_symlink() and p.is_dir()]
    return [p for _, p in sorted(found)]


def complete_checkpoints(root: str | Path) -> list[Path]:
    """Checkpoints under ``root`` that were renamed into place (with a manifest), oldest
    first. Nothing is verified here."""
    return [p for p in checkpoint_dirs(root) if (p / MANIFEST).is_file()]
