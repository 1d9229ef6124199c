"""Saving: HF-compatible sharded safetensors + optimizer state + a manifest, written in parallel.

Each tensor of the serial model (and each AdamW moment) is dealt to one rank of data replica
0's model group (largest first onto the least loaded writer, so the files are written in
parallel), and assembled on that writer only: the group streams the shards to it in gather
rounds of at most ``chunk_bytes`` (:mod:`.gather`), the writer fills the full tensor in host
memory, and no rank holds more than one chunk of device memory beyond its own shards.
Everything goes into ``.step-N.partial`` and is renamed to ``step-N`` only when every file and
the manifest are there.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from axolab.parallel import comm, parallel_parameters, parallel_state

from .files import MANIFEST, sha256
from .gather import Assembler
from .meter import AllocationMeter
from .names import step_dir, step_of

# Staging per writer: large enough that a gather round amortizes its latency (64 MiB over
# 512 ranks is still 128 KiB per rank), small next to any accelerator's memory.
DEFAULT_CHUNK_BYTES = 64 * 2**20
@dataclass
class SaveReport:
    """What one rank's save did, filled in by ``save_checkpoint(..., report=SaveReport())``."""

    chunk_bytes: int = 0
    """The staging bound the save ran with."""
    largest_tensor_bytes: int = 0
    """The largest full tensor of the checkpoint: what the old all-gather save held on every
    rank of the model group at once."""
    staging_bytes: int = 0
    """Device bytes of the staging buffer this rank allocated (0 if it wrote nothing)."""
    peak_device_bytes: int = 0
    """Peak bytes of device storages the assembly allocated on this rank, measured op by op
    (:class:`~axolab.checkpoint.meter.AllocationMeter`); host buffers of assembled tensors
    excluded."""
    tensors_written: int = 0
    bytes_written: int = 0


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


def _local_tensors(entries, optimizer) -> list[torch.Tensor]:
    """Every sharded tensor the save assembles on this rank: parameters and their moments."""
    out = []
    for *_, param in entries:
        out.append(param)
        out += [v for v in _optimizer_tensors(optimizer, param).values() if v.shape == param.shape]
    return out


@torch.no_grad()
def _collect(entries, owner, optimizer, assembler: Assembler, me: int, file_key):
    """This rank's share of the full tensors: ``(model tensors, optimizer tensors)``; model
    tensors under their names in the architecture's checkpoint files (``file_key``)."""
    mine: dict[str, torch.Tensor] = {}
    opt_mine: dict[str, torch.Tensor] = {}
    for (key, module, attr, param), w in zip(entries, owner):
        layout = module.layout_of(attr)
        full = assembler.assemble(layout, param, w)
        if w == me:
            mine[file_key(key)] = full
        for name, value in _optimizer_tensors(optimizer, param).items():
            if value.shape == param.shape:  # a moment: sharded like its parameter
                full = assembler.assemble(layout, value, w)
            else:  # AdamW's step count: the same on every rank
                full = value.detach().cpu() if w == me else None
            if w == me:
                opt_mine[f"{name}/{key}"] = full
    return mine, opt_mine


@torch.no_grad()
def save_checkpoint(root: str | Path, step: int, model: nn.Module, optimizer=None,
                    state: dict | None = None, keep_last: int | None = None, *,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES,
                    report: SaveReport | None = None) -> Path:
    """Write checkpoint ``root/step-<step>`` (collective: every rank of the grid calls it).

    ``chunk_bytes`` bounds the device staging a writer uses (and each gather round's size);
    pass a :class:`SaveReport` as ``report`` to have this rank's figures filled in (this also
    measures the assembly's device allocations, at a small cost per op). ``keep_last`` removes
    all but that many newest checkpoints at or before ``step``."""
    state_of_model = parallel_state(model)
    grid, file_key = state_of_model.grid, state_of_model.plan.file_key
    root = Path(root)
    final, tmp = step_dir(root, step), root / f".step-{step:08d}.partial"
    entries = parallel_parameters(model)
    local = _local_tensors(entries, optimizer)
    assembler = Assembler(grid, chunk_bytes, max((t.numel() * t.element_size() for t in local),
                                                 default=0))
    assembler.check_chunk(max((t.element_size() for t in local), default=1))  # before any I/O
    if grid.rank == grid.ranks[0]:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    comm_barrier(grid)
    writers = grid.model.size
    full_sizes = [math.prod(m.layout_of(a).full_shape) for _, m, a, _ in entries]
    owner = _deal(full_sizes, writers)
    me = grid.model.index
    # Data replicas hold identical weights and optimizer state: replica 0 alone assembles and
    # writes (its gathers run within its own model group only).
    writing = grid.data.index == 0
    mine, opt_mine = {}, {}
    if writing:
        if report is not None:
            assembler.meter = AllocationMeter(grid.device)
            with assembler.meter:
                mine, opt_mine = _collect(entries, owner, optimizer, assembler, me, file_key)
        else:
            mine, opt_mine = _collect(entries, owner, optimizer, assembler, me, file_key)
    files = {}
    if writing:
        tag = f"{me + 1:05d}-of-{writers:05d}"
        for prefix, tensors in (("model", mine), ("optimizer", opt_mine)):
            if tensors:
                _write(tmp / f"{prefix}-{tag}.safetensors", tensors)
                files[f"{prefix}-{tag}.safetensors"] = sorted(tensors)
    hashes = {name: sha256(tmp / name) for name in files}
    if report is not None:
        _fill_report(report, assembler, entries, mine, opt_mine)
    everything = comm.all_gather_objects((files, hashes), grid.world)
    if grid.rank == grid.ranks[0]:
        _finish(tmp, final, model, optimizer, step, state or {}, grid, everything)
        if keep_last:
            _rotate(root, step, keep_last)
    comm_barrier(grid)
    return final


def _fill_report(report: SaveReport, assembler: Assembler, entries, mine, opt_mine) -> None:
    report.chunk_bytes = assembler.chunk_bytes
    report.largest_tensor_bytes = max(
        (math.prod(m.layout_of(a).full_shape) * p.element_size() for _, m, a, p in entries),
        default=0)
    report.staging_bytes = assembler.staging_bytes
    report.peak_device_bytes = assembler.meter.peak_bytes if assembler.meter else 0
    written = list(mine.values()) + list(opt_mine.values())
    report.tensors_written = len(written)
    report.bytes_written = sum(t.numel() * t.element_size() for t in written)


def _rotate(root: Path, step: int, keep_last: int) -> None:
    """Keep the ``keep_last`` newest checkpoints up to ``step``. Newer ones (a run resumed
    from an older checkpoint, or restarted with resume=false) are left alone: they are replaced
    when this run saves those steps, and never crowd out what it just wrote."""
    done = sorted((s, p) for p in root.iterdir() if (s := step_of(p)) is not None and s <= step)
    for _, old in done[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)


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
    _replace_dir(tmp, final)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``. A directory already there (this step saved by an earlier
    attempt whose run was resumed from an older checkpoint, e.g. because this one was corrupt)
    is moved aside and removed only once the new one is in place: a kill in between leaves no
    ``step-N`` at all, and a resume then takes the checkpoint before it."""
    if final.exists() or final.is_symlink():
        aside = final.with_name(f".{final.name}.replaced")
        _remove(aside)
        final.rename(aside)
        tmp.rename(final)
        _remove(aside)
    else:
        tmp.rename(final)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def comm_barrier(grid) -> None:
    if grid.world.size > 1:
        dist.barrier(group=grid.world.group)
