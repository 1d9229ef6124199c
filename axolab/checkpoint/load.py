"""Loading: every rank reads only its own slices of the serial tensors, onto any grid.

Used for resuming (model + optimizer + manifest state) and for starting from a Hugging Face
checkpoint (``load_pretrained``: the model is built on the meta device, parallelized, and only
then given memory, so no rank ever holds a full copy).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from axolab.parallel import Grid, comm, grid_of, parallel_parameters, parallelize
from axolab.parallel.base import ParallelModule
from axolab.parallel.layout import BlockLayout

from .files import CheckpointError, ShardReader, sha256, weight_map
from .save import MANIFEST

# Config fields that make two models incompatible (a checkpoint "from another model").
IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "vocab_size",
                   "tie_word_embeddings")


def latest_checkpoint(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (partial ones have no final name)."""
    root = Path(root)
    done = sorted(p for p in root.glob("step-*") if (p / MANIFEST).is_file()) if root.is_dir() \
        else []
    return done[-1] if done else None


def _fill_local(layout, reader: ShardReader, name: str, out: torch.Tensor) -> None:
    """Read this rank's piece of tensor ``name`` straight into ``out``."""
    if isinstance(layout, BlockLayout):
        reader.with_slice(name, lambda sl: layout.fill_from_reader(
            out, lambda r0, r1, c0, c1: sl[r0:r1, c0:c1]))
    else:
        out.copy_(reader.with_slice(name, lambda sl: layout.shard_from_reader(
            lambda a, b: sl[a:b])))


def _check_shape(module: ParallelModule, attr: str, reader: ShardReader, name: str) -> None:
    want = module.layout_of(attr).full_shape
    got = reader.shape(name)
    if got != want:
        raise CheckpointError(f"{name}: checkpoint has shape {got}, the model needs {want} "
                              "(a checkpoint from another model?)")


def _check_identity(config, saved: dict) -> None:
    diff = [f"{k}: checkpoint {saved.get(k)!r} vs model {getattr(config, k, None)!r}"
            for k in IDENTITY_FIELDS if saved.get(k) != getattr(config, k, None)]
    if diff:
        raise CheckpointError("checkpoint is from another model: " + "; ".join(diff))


def verify_files(directory: Path, grid: Grid) -> dict:
    """Check every file's sha256 against the manifest; ranks split the hashing between them and
    all raise together if any file is corrupt or missing."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"{directory} has no {MANIFEST}: not a complete axolab checkpoint")
    manifest = json.loads(manifest_path.read_text())
    problems = []
    for i, (name, digest) in enumerate(sorted(manifest["files"].items())):
        if i % grid.world.size != grid.world.index:
            continue
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} is missing")
        elif sha256(path) != digest:
            problems.append(f"{name} is corrupt or truncated (sha256 mismatch)")
    problems = sum(comm.all_gather_objects(problems, grid.world), [])
    if problems:
        raise CheckpointError(f"checkpoint {directory}: " + "; ".join(sorted(problems)))
    return manifest


@torch.no_grad()
def load_weights(model: nn.Module, directory: str | Path, prefix: str = "model") -> None:
    """Fill every parallel parameter with this rank's slices of the serial tensors."""
    directory = Path(directory)
    reader = ShardReader(directory, weight_map(directory, prefix))
    for key, module, attr, param in parallel_parameters(model):
        name = key if key in reader.mapping else _tied_source(model, key)
        _check_shape(module, attr, reader, name)
        _fill_local(module.layout_of(attr), reader, name, param.data)


def _tied_source(model, key: str) -> str:
    if key == "lm_head.weight" and getattr(model.config, "tie_word_embeddings", False):
        return "model.embed_tokens.weight"
    return key


@torch.no_grad()
def load_optimizer(model: nn.Module, optimizer, directory: Path, manifest: dict) -> None:
    mapping = weight_map(directory, "optimizer")
    reader = ShardReader(directory, mapping)
    by_param: dict[str, list[str]] = {}
    for full in mapping:
        state_name, _, key = full.partition("/")
        by_param.setdefault(key, []).append(state_name)
    for key, module, attr, param in parallel_parameters(model):
        state = {}
        for state_name in by_param.get(key, []):
            name = f"{state_name}/{key}"
            if len(reader.shape(name)) == 0:
                state[state_name] = reader.tensor(name).to(param.device)
            else:
                local = torch.empty_like(param, dtype=torch.float32)
                _fill_local(module.layout_of(attr), reader, name, local)
                state[state_name] = local
        if state:
            optimizer.state[param] = state
    for group, saved in zip(optimizer.param_groups, manifest.get("param_groups", [])):
        group.update({k: (tuple(v) if isinstance(v, list) else v) for k, v in saved.items()})


def load_checkpoint(directory: str | Path, model: nn.Module, optimizer=None,
                    verify: bool = True) -> dict:
    """Restore model (and optimizer) from an axolab checkpoint onto the model's grid; returns
    the manifest (step, data position, RNG and scheduler state, ...)."""
    directory = Path(directory)
    grid = grid_of(model)
    manifest = verify_files(directory, grid) if verify else \
        json.loads((directory / MANIFEST).read_text())
    _check_identity(model.config, json.loads((directory / "config.json").read_text()))
    load_weights(model, directory)
    if optimizer is not None:
        load_optimizer(model, optimizer, directory, manifest)
    return manifest


def materialize(model: nn.Module, device) -> None:
    """Give a parallelized meta-device model real (uninitialized) storage on ``device``: the
    local shards only. Non-persistent buffers (rotary tables) are rebuilt from the config."""
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    for _, module in list(model.named_modules()):
        for name, p in list(module.named_parameters(recurse=False)):
            if p.is_meta:
                setattr(module, name, nn.Parameter(torch.empty(p.shape, dtype=p.dtype,
                                                               device=device), p.requires_grad))
    if tied:
        model.get_output_embeddings().weight = model.get_input_embeddings().weight
    for name, module in list(model.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            if not type(module).__name__.endswith("RotaryEmbedding"):
                raise CheckpointError(f"{name}: buffers on the meta device that axolab cannot "
                                      "rebuild")
            parent, _, child = name.rpartition(".")
            with torch.device(device):
                rebuilt = type(module)(config=model.config)
            setattr(model.get_submodule(parent) if parent else model, child, rebuilt)


def load_pretrained(path: str | Path, grid: Grid, dtype: torch.dtype | None = torch.float32,
                    optimizations=None):
    """A Hugging Face checkpoint directory as a parallelized model on ``grid``; each rank reads
    only its slices (``safe_open(...).get_slice``). ``dtype=None`` keeps the checkpoint's;
    ``optimizations`` as in :func:`axolab.parallel.parallelize`."""
    from transformers import AutoConfig, AutoModelForCausalLM

    path = Path(path)
    weight_map(path)  # refuses pickle-only or missing weights before anything is built
    config = AutoConfig.from_pretrained(str(path))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
    parallelize(model, grid, optimizations=optimizations)
    materialize(model, grid.device)
    load_weights(model, path)
    return model
