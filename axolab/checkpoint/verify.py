"""Which checkpoint to trust: listing, hash verification, and the fallback a resume uses.

Checkpoints are directories named exactly ``step-`` + 8 digits (anything else under the root,
``step-zzz`` or ``step-12``, is not one). Verification checks every file the manifest lists
against its sha256 and that every file a load reads (config, indexes, the shards they name) is
listed, so nothing unhashed is ever read. It is collective: ranks split the hashing and combine
what they found, so every rank reaches the same verdict even when only one of them read the
damaged file.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

from axolab.parallel import Grid, comm

from .files import CheckpointError, read_manifest, sha256, weight_map
from .names import checkpoint_dirs, complete_checkpoints

# Files every axolab checkpoint has besides its shards (config.json: the model's identity).
REQUIRED = ("config.json", "model.safetensors.index.json")


class SkippedCheckpointWarning(UserWarning):
    """A newer checkpoint failed verification and an older one is used instead."""


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest of :func:`complete_checkpoints` (unverified; see :func:`resume_checkpoint`)."""
    done = complete_checkpoints(root)
    return done[-1] if done else None


def _hash_problems(directory: Path, files: dict[str, str], grid: Grid) -> list[str]:
    problems = []
    for i, (name, digest) in enumerate(sorted(files.items())):
        if i % grid.world.size != grid.world.index:
            continue
        path = directory / name
        try:
            if path.is_symlink():
                problems.append(f"{name} is a symbolic link to {os.readlink(path)} (axolab "
                                "checkpoints never contain links)")
            elif not path.is_file():
                problems.append(f"{name} is missing")
            elif sha256(path) != digest:
                problems.append(f"{name} is corrupt or truncated (sha256 mismatch)")
        except OSError as e:  # unreadable: the other ranks must hear of it, not wait forever
            problems.append(f"{name} cannot be read ({e.strerror or e})")
    return problems


def unlisted_files(directory: Path, manifest: dict) -> list[str]:
    """Problems with what a load would read but the manifest does not vouch for: a required
    file missing from the manifest, or an index entry naming an unlisted (or unsafe) file."""
    directory, listed = Path(directory), set(manifest["files"])
    problems = [f"the manifest does not list {name}" for name in REQUIRED if name not in listed]
    for prefix in ("model", "optimizer"):
        index = f"{prefix}.safetensors.index.json"
        if index not in listed:
            continue
        try:
            named = set(weight_map(directory, prefix).values())
        except CheckpointError as e:
            problems.append(str(e))
            continue
        problems += [f"{index} names {name}, which the manifest does not list (unverified)"
                     for name in sorted(named - listed)]
    return problems


def verify_files(directory: str | Path, grid: Grid) -> dict:
    """The manifest of checkpoint ``directory`` once every file it lists matches its sha256
    and everything a load reads is listed; otherwise every rank raises the same
    CheckpointError naming each problem. Collective over ``grid.world``."""
    directory = Path(directory)
    problems, manifest = [], None
    try:
        manifest = read_manifest(directory)
    except CheckpointError as e:
        problems.append(str(e))
    if manifest is not None:
        problems += _hash_problems(directory, manifest["files"], grid)
        if grid.world.index == 0:  # small JSON files; one reader is enough
            problems += unlisted_files(directory, manifest)
    problems = sorted(set(sum(comm.all_gather_objects(problems, grid.world), [])))
    if problems:
        raise CheckpointError(f"checkpoint {directory}: " + "; ".join(problems))
    return manifest


def resume_checkpoint(root: str | Path, grid: Grid) -> tuple[Path, dict] | None:
    """``(directory, manifest)`` of the newest complete checkpoint under ``root`` that verifies
    (:func:`verify_files`), or None if there is none. Newer ones that fail (files missing or
    altered, links, a manifest missing or not JSON) are skipped, each with a
    :class:`SkippedCheckpointWarning` on the grid's first rank saying why; if every one fails,
    that is warned too and None returned. Collective over ``grid.world``: every rank tries the
    candidates the first rank listed, in the same order, and so picks the same one."""
    root = Path(root)
    names = [p.name for p in reversed(checkpoint_dirs(root))]
    names = comm.all_gather_objects(names, grid.world)[0]  # the first rank's listing
    lead = grid.rank == grid.ranks[0]
    for name in names:
        try:
            return root / name, verify_files(root / name, grid)
        except CheckpointError as e:
            if lead:
                warnings.warn(SkippedCheckpointWarning(
                    f"skipping damaged checkpoint {root / name}: {e}"), stacklevel=2)
    if names and lead:
        warnings.warn(SkippedCheckpointWarning(
            f"no intact checkpoint under {root} ({len(names)} damaged); starting from step 0"),
            stacklevel=2)
    return None


def read_config(directory: Path) -> dict:
    """config.json of a checkpoint, as a dict (a CheckpointError if absent or not JSON)."""
    path = Path(directory) / "config.json"
    if path.is_symlink() or not path.is_file():
        raise CheckpointError(f"{directory} has no config.json (or it is a link)")
    try:
        config = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} is not a model config (a JSON object)")
    return config
