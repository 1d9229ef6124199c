"""Saving: HF-compatible sharded safetensors + optimizer state + a manifest, written in parallel.

Each tensor of the serial model is assembled from its pieces by the ranks of data replica 0 and
written by one of them (tensors are dealt out to balance bytes), so the files are written in
parallel and no rank holds more than its share of the full model at once. Everything goes into
``.step-N.partial`` and is renamed to ``step-N`` only when every file and the manifest are there.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from axolab.parallel import comm, grid_of, parallel_parameters

from .files import sha256

MANIFEST = "manifest.json"


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def _deal(sizes: list[int], writers: int) -> list[int]:
    """Owner of each tensor: largest first onto the least loaded writer."""
    load, owner = [0] * writers, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        w = min(range(writers), key=load.__getitem__)
        owner[i], load[w] = w, load[w] + sizes[i]
    return owner


def _optimizer_tensors(optimizer, param) -> dict[str, torch.Tensor]:
    if optimizer is None:
        return {}
    return {k: v for k, v in optimizer.state.get(param, {}).items() if torch.is_tensor(v)}


def _write(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


@torch.no_grad()
def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer=None,
                    state: dict | None = None, keep_last: int | None = None) -> Path:
    """Write checkpoint ``root/step-<step>`` (collective: every rank of the grid calls it)."""
    grid = grid_of(model)
    root = Path(root)
    final, tmp = step_dir(root, step), root / f".step-{step:08d}.partial"
    if grid.rank == grid.ranks[0]:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    comm_barrier(grid)
    entries = parallel_parameters(model)
    writers = grid.model.size
    owner = _deal([math.prod(m.layout_of(a).full_shape) for _, m, a, _ in entries], writers)
    me = grid.model.index
    # Data replicas hold identical weights and optimizer state: replica 0 alone gathers and
    # writes (the gathers are collective within its own model group only).
    writing = grid.data.index == 0
    mine: dict[str, torch.Tensor] = {}
    opt_mine: dict[str, torch.Tensor] = {}
    for (key, module, attr, param), w in zip(entries if writing else [], owner):
        full = module.full_tensor(attr)
        if w == me:
            mine[key] = full.cpu()
        for name, value in _optimizer_tensors(optimizer, param).items():
            if value.shape == param.shape:
                value = module.full_tensor(attr, value)
            if w == me:
                opt_mine[f"{name}/{key}"] = value.detach().cpu().reshape(value.shape)
    files = {}
    if writing:
        tag = f"{me + 1:05d}-of-{writers:05d}"
        for prefix, tensors in (("model", mine), ("optimizer", opt_mine)):
            if tensors:
                _write(tmp / f"{prefix}-{tag}.safetensors", tensors)
                files[f"{prefix}-{tag}.safetensors"] = sorted(tensors)
    hashes = {name: sha256(tmp / name) for name in files}
    everything = comm.all_gather_objects((files, hashes), grid.world)
    if grid.rank == grid.ranks[0]:
        _finish(tmp, final, model, optimizer, step, state or {}, grid, everything)
        if keep_last:
            for old in sorted(root.glob("step-*"))[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    comm_barrier(grid)
    return final


def _finish(tmp, final, model, optimizer, step, state, grid, everything) -> None:
    weight_map, opt_map, hashes = {}, {}, {}
    for files, file_hashes in everything:
        hashes.update(file_hashes)
        for fname, keys in files.items():
            target = weight_map if fname.startswith("model-") else opt_map
            target.update({k: fname for k in keys})
    total = sum(math.prod(m.layout_of(a).full_shape) * p.element_size()
                for _, m, a, p in parallel_parameters(model))
    (tmp / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
        indent=2))
    if opt_map:
        (tmp / "optimizer.safetensors.index.json").write_text(json.dumps(
            {"weight_map": dict(sorted(opt_map.items()))}, indent=2))
    model.config.save_pretrained(str(tmp))
    for name in ("model.safetensors.index.json", "optimizer.safetensors.index.json",
                 "config.json"):
        if (tmp / name).is_file():
            hashes[name] = sha256(tmp / name)
    groups = []
    if optimizer is not None:
        groups = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    manifest = {"format": "axolab-checkpoint-1", "step": step, "time": time.time(),
                "grid": list(grid.shape), "model_type": model.config.model_type,
                "optimizer": type(optimizer).__name__ if optimizer is not None else None,
                "param_groups": groups, "files": dict(sorted(hashes.items())), **state}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
    tmp.rename(final)


def comm_barrier(grid) -> None:
    if grid.world.size > 1:
        dist.barrier(group=grid.world.group)
