"""Checkpoints that were damaged or crafted: every file name must stay inside the checkpoint,
hashes must match, shapes must fit the model, and a damaged newest checkpoint makes resume fall
back to the one before it. One process (a 1x1x1x1 grid needs no process group)."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch

from axolab.checkpoint import (CheckpointError, complete_checkpoints, load_checkpoint,
                               resume_checkpoint, save_checkpoint)
from axolab.checkpoint.files import sha256
from axolab.parallel import Grid, parallelize
from models import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """Checkpoints at steps 2 and 4 of a tiny Llama with AdamW state, on the 1x1x1x1 grid."""
    root = tmp_path_factory.mktemp("ckpts") / "checkpoints"
    grid = Grid.init()
    model = parallelize(tiny_model("llama", tied=False), grid)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 8))
    for step in (1, 2, 3, 4):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        if step % 2 == 0:
            save_checkpoint(root, step, model, opt, state={"config": {}})
    return root


def _fresh():
    grid = Grid.init()
    model = parallelize(tiny_model("llama", tied=False), grid)
    return grid, model, torch.optim.AdamW(model.parameters(), lr=1e-3)


def _copy(saved: Path, tmp_path: Path) -> Path:
    root = tmp_path / "checkpoints"
    shutil.copytree(saved, root, symlinks=True)
    return root


def _edit_json(path: Path, edit) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _rehash(ckpt: Path, name: str) -> None:
    """What a careful forger does: make the manifest agree with the altered file."""
    _edit_json(ckpt / "manifest.json", lambda m: m["files"].__setitem__(name, sha256(ckpt / name)))


def _index_entry(ckpt, value):
    index = ckpt / "model.safetensors.index.json"
    _edit_json(index, lambda d: d["weight_map"].__setitem__("lm_head.weight", value))
    _rehash(ckpt, index.name)


def _symlinked_shard(ckpt):
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    outside = ckpt.parent.parent / "outside.safetensors"
    shutil.copy(shard, outside)
    shard.unlink()
    os.symlink(outside, shard)


def _manifest_entry(ckpt, value):
    _edit_json(ckpt / "manifest.json", lambda m: m["files"].__setitem__(value, "0" * 64))


def _truncated_shard(ckpt):
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    os.truncate(shard, shard.stat().st_size // 2)


def _optimizer_shape(ckpt):
    from safetensors.torch import load_file, save_file

    name = sorted(ckpt.glob("optimizer-*.safetensors"))[0].name
    tensors = load_file(str(ckpt / name))
    key = next(k for k in tensors if k.startswith("exp_avg/") and tensors[k].dim() == 2)
    tensors[key] = tensors[key][:, :-1].contiguous()
    save_file(tensors, str(ckpt / name), metadata={"format": "pt"})
    _rehash(ckpt, name)


# (what was done to the newest checkpoint, how, what the refusal says)
TAMPERED = [
    ("an absolute index entry", lambda c: _index_entry(c, "/etc/passwd"),
     "'/etc/passwd', which is not a plain file name"),
    ("an index entry climbing out", lambda c: _index_entry(c, "../../outside.safetensors"),
     "not a plain file name inside the checkpoint"),
    ("a shard that links outside", _symlinked_shard, "is a symbolic link to"),
    ("a manifest entry climbing out", lambda c: _manifest_entry(c, "../step-00000002/config.json"),
     "not a plain file name inside the checkpoint"),
    ("a truncated shard", _truncated_shard, "sha256 mismatch"),
    ("a missing manifest-listed file", lambda c: (c / "config.json").unlink(),
     "config.json is missing"),
    ("an optimizer moment of another shape", _optimizer_shape, "checkpoint has shape"),
    ("a manifest that is not JSON", lambda c: (c / "manifest.json").write_text("{"),
     "is not readable JSON"),
]


@pytest.mark.parametrize("what,tamper,message", TAMPERED, ids=[t[0] for t in TAMPERED])
def test_tampered_checkpoint_is_refused_and_resume_falls_back(saved, tmp_path, what, tamper,
                                                              message):
    root = _copy(saved, tmp_path)
    newest = root / "step-00000004"
    tamper(newest)
    grid, model, opt = _fresh()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(newest, model, opt)
    # Resume does not stop at the damaged checkpoint: it takes the one before, with a warning.
    # (A forger who also rewrote the hashes is caught by the name and shape checks above.)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = resume_checkpoint(root, grid)
    if "shape" in message:  # hashes agree: the shape check at load time is what refuses it
        assert found[0] == newest
        return
    assert found is not None and found[0] == root / "step-00000002", what
    assert any("skipping damaged checkpoint" in str(w.message) for w in caught)
    load_checkpoint(found[0], model, opt, verify=False)


def test_only_axolab_step_names_count(saved, tmp_path):
    root = _copy(saved, tmp_path)
    for stray in ("step-zzz", "step-99", "step-000000099", "step-99999999.old"):
        shutil.copytree(root / "step-00000004", root / stray)
    os.symlink(root / "step-00000002", root / "step-99999999")
    assert [p.name for p in complete_checkpoints(root)] == ["step-00000002", "step-00000004"]
    assert resume_checkpoint(root, Grid.init())[0].name == "step-00000004"


def test_nothing_intact_means_no_resume(saved, tmp_path):
    root = _copy(saved, tmp_path)
    for ckpt in complete_checkpoints(root):
        _truncated_shard(ckpt)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert resume_checkpoint(root, Grid.init()) is None
