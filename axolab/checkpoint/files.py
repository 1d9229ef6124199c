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
    """Reads slices of named tensors from a set of safetensors files, keeping files open."""

    def __init__(self, directory: Path, mapping: dict[str, str]):
        self.directory, self.mapping = Path(directory), mapping
        self._open: dict[str, object] = {}

    def _file(self, name: str):
        from safetensors import safe_open

        if name not in self.mapping:
            raise CheckpointError(f"tensor {name!r} is not in the checkpoint {self.directory}")
        fname = self.mapping[name]
        if fname not in self._open:
            path = self.directory / fname
            if not path.is_file():
                raise CheckpointError(f"checkpoint file {path} is missing")
            try:
                self._open[fname] = safe_open(str(path), framework="pt", device="cpu")
            except Exception as e:  # a truncated header, not a safetensors file, ...
                raise CheckpointError(f"checkpoint file {path} is not readable safetensors: "
                                      f"{e}") from e
        return self._open[fname]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._file(name).get_slice(name).get_shape())

    def slice(self, name: str):
        return self._file(name).get_slice(name)

    def tensor(self, name: str):
        return self._file(name).get_tensor(name)
