"""Checkpoint files on disk: safetensors shards with an index, hashes, refusal of pickles."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, corrupt, foreign or unsafe."""


def sha256(path: Path, block: int = 1 << 24) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def refuse_pickles(directory: Path) -> None:
    """Pickle files can run code when loaded; axolab reads safetensors only."""
    pickles = sorted(p.name for p in directory.iterdir() if p.name.endswith(PICKLE_SUFFIXES))
    has_safetensors = any(p.suffix == ".safetensors" for p in directory.iterdir())
    if pickles and not has_safetensors:
        raise CheckpointError(
            f"{directory} holds only pickle-based weights ({', '.join(pickles[:3])}); axolab loads "
            "safetensors only, because unpickling can run arbitrary code. Convert them first, "
            "e.g. AutoModelForCausalLM.from_pretrained(...).save_pretrained(dir) on a trusted copy.")


def pretrained_weights(directory: Path) -> Path | None:
    """``directory`` if it holds safetensors weights, None if it holds no weights at all (a
    config to initialize randomly); a directory whose only weights are pickles is refused, so
    a fine-tuning run never starts from random init by mistake."""
    directory = Path(directory)
    refuse_pickles(directory)
    return directory if any(p.suffix == ".safetensors" for p in directory.iterdir()) else None


def weight_map(directory: Path, prefix: str = "model") -> dict[str, str]:
    """Tensor name -> file name, from ``<prefix>.safetensors.index.json`` or a single file."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    refuse_pickles(directory)
    index = directory / f"{prefix}.safetensors.index.json"
    if index.is_file():
        return dict(json.loads(index.read_text())["weight_map"])
    single = directory / f"{prefix}.safetensors"
    if single.is_file():
        from safetensors import safe_open

        with safe_open(str(single), framework="pt") as f:
            return {k: single.name for k in f.keys()}
    raise CheckpointError(f"no {prefix}.safetensors or {prefix}.safetensors.index.json in "
                          f"{directory}")


class ShardReader:
    """Reads named tensors, or slices of them, from a set of safetensors files.

    Each read opens its file and closes it afterwards: safetensors memory-maps files, and a
    mapping kept open across a whole load leaves every page read counted in the process's
    resident memory (and in a job's memory limit). Opening is cheap (one small header)."""

    def __init__(self, directory: Path, mapping: dict[str, str]):
        self.directory, self.mapping = Path(directory), mapping

    def _path(self, name: str) -> Path:
        if name not in self.mapping:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        path = self.directory / self.mapping[name]
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
