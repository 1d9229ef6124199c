"""Loading: every rank reads only its own slices of the serial tensors, onto any grid.

Used for resuming (model + optimizer + manifest state) and for starting from a Hugging Face
checkpoint (``load_pretrained``: the model is built on the meta device, parallelized, and only
then given memory, so no rank ever holds a full copy).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from axolab.parallel import Grid, grid_of, parallel_parameters, parallel_state, parallelize
from axolab.parallel.base import ParallelModule
from axolab.parallel.layout import BlockLayout

from .files import CheckpointError, ShardReader, read_manifest, weight_map
from .verify import read_config, unlisted_files, verify_files

# Config fields that make two models incompatible (a checkpoint "from another model").
IDENTITY_FIELDS = ("model_type", "hidden_size", "intermediate_size", "num_hidden_layers",
                   "num_attention_heads", "num_key_value_heads", "vocab_size",
                   "tie_word_embeddings")


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


@torch.no_grad()
def load_weights(model: nn.Module, directory: str | Path, prefix: str = "model",
                 allow_symlinks: bool = False) -> None:
    """Fill every parallel parameter with this rank's slices of the serial tensors.
    ``allow_symlinks``: accept shard files that are links to regular files (Hugging Face
    cache snapshots); axolab checkpoints never contain links."""
    directory = Path(directory)
    reader = ShardReader(directory, weight_map(directory, prefix, allow_symlinks), allow_symlinks)
    file_key = parallel_state(model).plan.file_key
    for key, module, attr, param in parallel_parameters(model):
        name = next((k for k in (key, file_key(key)) if k in reader.mapping), None) \
            or _tied_source(model, key)
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
            if len(reader.shape(name)) == 0:  # AdamW's step count
                state[state_name] = reader.tensor(name).to(param.device)
            else:  # a moment, sharded like its parameter: it must have the parameter's shape
                _check_shape(module, attr, reader, name)
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
    the manifest (step, data position, RNG and scheduler state, ...). ``verify=False`` skips
    the hashing (for a directory :func:`resume_checkpoint` has just verified); file names,
    links, shapes and the model's identity are checked either way. Nothing is unpickled."""
    directory = Path(directory)
    grid = grid_of(model)
    if verify:
        manifest = verify_files(directory, grid)
    else:
        manifest = read_manifest(directory)
        if problems := unlisted_files(directory, manifest):
            raise CheckpointError(f"checkpoint {directory}: " + "; ".join(problems))
    _check_identity(model.config, read_config(directory))
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


def _parallel_model(config, grid: Grid, dtype, optimizations):
    """``config``'s model built on the meta device, parallelized, given its shards' memory."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype or config.dtype)
    parallelize(model, grid, optimizations=optimizations)
    materialize(model, grid.device)
    return model


def load_pretrained(path: str | Path, grid: Grid, dtype: torch.dtype | None = torch.float32,
                    optimizations=None):
    """A Hugging Face checkpoint directory as a parallelized model on ``grid``; each rank reads
    only its slices (``safe_open(...).get_slice``). ``dtype=None`` keeps the checkpoint's;
    ``optimizations`` as in :func:`axolab.parallel.parallelize`. Shard files may be links to
    regular files (the Hub cache's snapshots are); index entries must be plain file names.
    Hashes are not checked: use :func:`load_checkpoint_model` for axolab's own checkpoints."""
    from transformers import AutoConfig

    path = Path(path)
    weight_map(path, allow_symlinks=True)  # refuses pickle-only or missing weights first
    model = _parallel_model(AutoConfig.from_pretrained(str(path)), grid, dtype, optimizations)
    load_weights(model, path, allow_symlinks=True)
    return model


def load_checkpoint_model(directory: str | Path, grid: Grid,
                          dtype: torch.dtype | None = torch.float32, optimizations=None,
                          verify: bool = True):
    """An axolab checkpoint as a parallelized model on ``grid`` (its weights; no optimizer),
    every file's sha256 verified against the manifest first (collective over the grid)."""
    from transformers import AutoConfig

    directory = Path(directory)
    if verify:
        verify_files(directory, grid)  # before config.json is trusted to build anything
    model = _parallel_model(AutoConfig.from_pretrained(str(directory)), grid, dtype,
                            optimizations)
    load_checkpoint(directory, model, verify=False)
    return model
