"""Checkpoint files on disk: safetensors shards with an index, hashes, refusal of pickles.

Everything a checkpoint names (index entries, manifest file keys) must be a plain file name in
the checkpoint's own directory: a crafted index could otherwise point a reader at any file on
the machine. axolab's own checkpoints never contain symlinks, so any symlink there is refused;
Hugging Face cache snapshots are symlinks into a ``blobs/`` directory, so a pretrained
directory may hold symlinks as long as they lead to regular files.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

from .names import MANIFEST

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
# Weights in formats axolab has no safe reader for (TensorFlow, Flax, llama.cpp).
FOREIGN_SUFFIXES = (".h5", ".msgpack", ".gguf")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign or unsafe."""


def sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def plain_name(name, where: str) -> str:
    """``name`` if it is a plain file name (no directory part, not ``.``/``..``, not absolute);
    otherwise a CheckpointError naming the entry and where it was found."""
    ok = (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name
          and "\\" not in name and "\0" not in name and Path(name).name == name)
    if not ok:
        raise CheckpointError(f"{where} names {name!r}, which is not a plain file name inside "
                              "the checkpoint directory (absolute paths, '..' and directories "
                              "are refused)")
    return name


def checked_file(directory: Path, name: str, where: str, allow_symlinks: bool) -> Path:
    """The path of entry ``name`` in ``directory``, refusing unsafe names and links.

    ``allow_symlinks=False`` (axolab checkpoints): any symlink is refused. ``True`` (Hugging
    Face snapshots): a symlink must resolve to a regular file."""
    path = Path(directory) / plain_name(name, where)
    if path.is_symlink():
        if not allow_symlinks:
            raise CheckpointError(f"{where}: {name} is a symbolic link to {_link_target(path)};"
                                  " axolab checkpoints never contain links, so it is refused")
        target = path.resolve()
        if not target.is_file():
            raise CheckpointError(f"{where}: {name} is a symlink to {target}, which is not a "
                                  "regular file")
    return path


def _link_target(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return "?"


def _weight_files(directory: Path) -> tuple[list[str], list[str], bool]:
    names = sorted(p.name for p in directory.iterdir())
    pickles = [n for n in names if n.endswith(PICKLE_SUFFIXES)]
    foreign = [n for n in names if n.endswith(FOREIGN_SUFFIXES)]
    safetensors = any(n.endswith((".safetensors", ".safetensors.index.json")) for n in names)
    return pickles, foreign, safetensors


def refuse_pickles(directory: Path) -> None:
    """Pickle files can run code when loaded; axolab reads safetensors only."""
    pickles, foreign, has_safetensors = _weight_files(Path(directory))
    if has_safetensors:
        return
    if pickles:
        raise CheckpointError(
            f"{directory} holds only pickle-based weights ({', '.join(pickles[:3])}); axolab loads "
            "safetensors only, because unpickling can run arbitrary code. Convert them first, "
            "e.g. AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir) on a trusted copy.")
    if foreign:
        raise CheckpointError(
            f"{directory} holds weights only in formats axolab cannot read "
            f"({', '.join(foreign[:3])}); save them as safetensors first")


def pretrained_weights(directory: Path) -> Path | None:
    """``directory`` if it holds safetensors weights (files or an index), None if it holds no
    weights at all (a config to initialize randomly); a directory whose only weights are
    pickles (or another format axolab cannot read) is refused, so a fine-tuning run never
    starts from random init by mistake."""
    directory = Path(directory)
    refuse_pickles(directory)
    return directory if _weight_files(directory)[2] else None


def weight_map(directory: Path, prefix: str = "model",
               allow_symlinks: bool = False) -> dict[str, str]:
    """Tensor name -> file name, from ``<prefix>.safetensors.index.json`` or a single file.
    Every file name is checked to be a plain name in ``directory`` (see :func:`checked_file`)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    refuse_pickles(directory)
    index_name = f"{prefix}.safetensors.index.json"
    index = directory / index_name
    if index.is_file() or index.is_symlink():
        checked_file(directory, index_name, str(directory), allow_symlinks)
        mapping = _read_index(index)
        for tensor, file in mapping.items():
            checked_file(directory, file, f"{index} (entry {tensor!r})", allow_symlinks)
        return mapping
    single = directory / f"{prefix}.safetensors"
    if single.is_file() or single.is_symlink():
        checked_file(directory, single.name, str(directory), allow_symlinks)
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single.name for k in f.keys()}
    raise CheckpointError(f"no {prefix}.safetensors or {prefix}.safetensors.index.json in "
                          f"{directory}")


def _read_index(index: Path) -> dict[str, str]:
    try:
        mapping = json.loads(index.read_text())["weight_map"]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index} is not a safetensors index ({type(e).__name__}: "
                              f"{e})") from None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) for k in mapping):
        raise CheckpointError(f"{index}: weight_map must map tensor names to file names")
    return dict(mapping)


def read_manifest(directory: Path) -> dict:
    """The manifest of an axolab checkpoint, with its ``files`` table checked: plain file
    names mapped to sha256 hex digests. A CheckpointError says what is missing or malformed."""
    path = Path(directory) / MANIFEST
    if path.is_symlink():
        raise CheckpointError(f"{path} is a symbolic link to {_link_target(path)}; axolab "
                              "checkpoints never contain links")
    if not path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: not a complete axolab checkpoint")
    try:
        manifest = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({type(e).__name__}: {e})") from None
    step = manifest.get("step") if isinstance(manifest, dict) else None
    if not isinstance(manifest.get("files") if isinstance(manifest, dict) else None, dict) \
            or not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{path} lacks the step and files of an axolab checkpoint")
    for name, digest in manifest["files"].items():
        plain_name(name, f"{path} ('files')")
        if not (isinstance(digest, str) and _SHA256.fullmatch(digest)):
            raise CheckpointError(f"{path}: the hash of {name} is {str(digest)[:80]!r}, not a "
                                  "sha256 hex digest")
    return manifest


class ShardReader:
    """Reads named tensors, or slices of them, from a set of safetensors files.

    Each read opens its file and closes it afterwards: safetensors memory-maps files, and a
    mapping kept open across a whole load leaves every page read counted in the process's
    resident memory (and in a job's memory limit). Opening is cheap (one small header)."""

    def __init__(self, directory: Path, mapping: dict[str, str], allow_symlinks: bool = False):
        self.directory, self.mapping = Path(directory), mapping
        self.allow_symlinks = allow_symlinks

    def _path(self, name: str) -> Path:
        if name not in self.mapping:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        path = checked_file(self.directory, self.mapping[name], f"{self.directory} (tensor "
                            f"{name!r})", self.allow_symlinks)
        if not path.is_file():
            raise CheckpointError(f"checkpoint file {path} is missing")
        return path

    def _with_file(self, name: str, fn):
        from safetensors import safe_open

        path = self._path(name)
        try:
            handle = safe_open(str(path), framework="pt", device="cpu")
        except Exception as e:  # a truncated header, not a safetensors file, ...
            raise CheckpointError(f"checkpoint file {path} is not readable safetensors: "
                                  f"{e}") from e
        with handle as f:
            return fn(f)

    def with_slice(self, name: str, fn):
        """``fn(slice)`` with the tensor's safetensors slice; the file is closed afterwards."""
        return self._with_file(name, lambda f: fn(f.get_slice(name)))

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.with_slice(name, lambda sl: sl.get_shape()))

    def tensor(self, name: str):
        return self._with_file(name, lambda f: f.get_tensor(name))
