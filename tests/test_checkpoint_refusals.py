"""More checkpoints and model directories a careless or hostile hand could leave, each refused
with a message naming the problem (the tampering table is in test_checkpoint_tampering.py):
a crafted RNG payload in a real manifest, pickle-only model directories, unsafe index entries
of a Hugging Face directory (whose cache symlinks are fine), files the manifest does not vouch
for, and checkpoint rotation around stray and newer directories. One process, 1x1x1x1 grid."""

from __future__ import annotations

import base64
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import pytest
import torch

from axolab.checkpoint import (CheckpointError, latest_checkpoint, load_checkpoint,
                               load_pretrained, pretrained_weights, read_manifest,
                               save_checkpoint)
from axolab.checkpoint.files import sha256
from axolab.parallel import Grid, full_state_dict, parallelize
from models import tiny_model


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """step-00000003 of a tiny Llama with AdamW state and a real RNG state in its manifest."""
    from axolab.checkpoint.rng import rng_state

    root = tmp_path_factory.mktemp("refusals") / "checkpoints"
    model = parallelize(tiny_model("llama", tied=False), Grid.init())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, model.config.vocab_size, (2, 8),
                        generator=torch.Generator().manual_seed(0))
    model(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    return save_checkpoint(root, 3, model, opt, state={"rng": rng_state()})


def _copy(ckpt: Path, tmp_path: Path) -> Path:
    out = tmp_path / "checkpoints" / ckpt.name
    shutil.copytree(ckpt, out)
    return out


def _fresh():
    model = parallelize(tiny_model("llama", tied=False), Grid.init())
    return model, torch.optim.AdamW(model.parameters(), lr=1e-3)


class _Marker:
    """Unpickling this creates a file: what the old format's reader would have run."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_crafted_rng_payload_in_a_manifest_never_runs(saved, tmp_path):
    from axolab.checkpoint.rng import set_rng_state

    pickle.loads(pickle.dumps(_Marker(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()  # the payload is live when unpickled
    marker = tmp_path / "PWNED"
    crafted = base64.b64encode(pickle.dumps(_Marker(str(marker)))).decode()
    ckpt = _copy(saved, tmp_path)
    manifest = json.loads((ckpt / "manifest.json").read_text())
    for rng in (crafted, {**manifest["rng"], "torch": crafted},
                {**manifest["rng"], "numpy": {**manifest["rng"]["numpy"], "key": crafted}}):
        (ckpt / "manifest.json").write_text(json.dumps({**manifest, "rng": rng}))
        model, opt = _fresh()
        loaded = load_checkpoint(ckpt, model, opt)  # the manifest is data: loading reads no RNG
        for holder in (loaded, read_manifest(ckpt)):
            for state in (holder["rng"], holder):  # the whole manifest is no RNG state either
                with pytest.raises(CheckpointError, match="checkpoint RNG state"):
                    set_rng_state(state)
        assert not marker.exists()


# (weight files in a model directory next to config.json, what pretrained_weights says)
MODEL_DIRS = [
    ("a pickle from transformers", ["pytorch_model.bin"], "pytorch_model.bin"),
    ("a torch.save file", ["model.pt"], "model.pt"),
    ("a .pth file", ["weights.pth"], "weights.pth"),
    ("a Lightning checkpoint", ["last.ckpt"], "last.ckpt"),
    ("a raw pickle", ["state.pkl"], "state.pkl"),
    ("TensorFlow weights only", ["tf_model.h5"], "formats axolab cannot read"),
    ("no weights at all", [], None),
    ("safetensors next to a pickle", ["pytorch_model.bin", "model.safetensors"], "dir"),
    ("an index whose shards are absent", ["model.safetensors.index.json"], "dir"),
]


@pytest.mark.parametrize("what,names,expected", MODEL_DIRS, ids=[m[0] for m in MODEL_DIRS])
def test_model_directory_weights(tmp_path, what, names, expected):
    directory = tmp_path / "model"
    tiny_model("llama", tied=False).config.save_pretrained(directory)
    for name in names:
        (directory / name).write_bytes(b"never unpickled")
    if expected is None:
        assert pretrained_weights(directory) is None
    elif expected == "dir":
        assert pretrained_weights(directory) == directory
    else:
        with pytest.raises(CheckpointError, match=expected):
            pretrained_weights(directory)


def _hub_snapshot(tmp_path: Path) -> Path:
    """A directory laid out like the Hugging Face cache: snapshot files are relative links
    into blobs/."""
    plain = tmp_path / "plain"
    tiny_model("llama", tied=False).save_pretrained(plain, max_shard_size="20KB")
    repo = tmp_path / "models--tiny"
    (repo / "blobs").mkdir(parents=True)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    for f in plain.iterdir():
        blob = repo / "blobs" / sha256(f)
        shutil.copy(f, blob)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    return snap


def test_hub_cache_links_load_and_match_the_serial_model(tmp_path):
    snap = _hub_snapshot(tmp_path)
    assert all(p.is_symlink() for p in snap.iterdir())
    got = full_state_dict(load_pretrained(snap, Grid.init()))
    want = tiny_model("llama", tied=False).state_dict()
    assert all(torch.equal(got[k], want[k]) for k in want)


# (index entry of a Hugging Face directory, what the refusal names)
BAD_HF_ENTRIES = [("../../blobs/elsewhere.safetensors", "not a plain file name"),
                  ("/etc/passwd", "'/etc/passwd', which is not a plain file name"),
                  ("sub/model.safetensors", "not a plain file name"),
                  ("..", "not a plain file name")]


@pytest.mark.parametrize("entry,message", BAD_HF_ENTRIES, ids=[e for e, _ in BAD_HF_ENTRIES])
def test_hub_index_entries_must_be_plain_names(tmp_path, entry, message):
    snap = _hub_snapshot(tmp_path)
    index = snap / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = entry
    index.unlink()  # replace the link by a crafted file
    index.write_text(json.dumps(data))
    with pytest.raises(CheckpointError, match=message) as refused:
        load_pretrained(snap, Grid.init())
    assert "lm_head.weight" in str(refused.value)


def _rehash(ckpt: Path, name: str) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["files"][name] = sha256(ckpt / name)
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _point_entry_at(ckpt: Path, file_name: str) -> None:
    index = ckpt / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"]["lm_head.weight"] = file_name
    index.write_text(json.dumps(data))
    _rehash(ckpt, index.name)


def _unlisted_shard(ckpt: Path) -> None:
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    shutil.copy(shard, ckpt / "extra.safetensors")  # a real shard the manifest never hashed
    _point_entry_at(ckpt, "extra.safetensors")


def _config_dropped_from_manifest(ckpt: Path) -> None:
    manifest = json.loads((ckpt / "manifest.json").read_text())
    del manifest["files"]["config.json"]
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


# (what was done, how, what the refusal says); checked with and without hashing
UNVOUCHED = [
    ("an index entry naming an unhashed shard", _unlisted_shard,
     "names extra.safetensors, which the manifest does not list"),
    ("config.json left out of the manifest", _config_dropped_from_manifest,
     "the manifest does not list config.json"),
    ("an absolute index entry", lambda c: _point_entry_at(c, "/etc/passwd"),
     "not a plain file name"),
    ("a manifest without a step", lambda c: (c / "manifest.json").write_text(
        json.dumps({"files": {}})), "lacks the step and files"),
]


@pytest.mark.parametrize("verify", [True, False], ids=["verified", "unverified"])
@pytest.mark.parametrize("what,damage,message", UNVOUCHED, ids=[u[0] for u in UNVOUCHED])
def test_files_the_manifest_does_not_vouch_for(saved, tmp_path, what, damage, message, verify):
    ckpt = _copy(saved, tmp_path)
    damage(ckpt)
    model, opt = _fresh()
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(ckpt, model, opt, verify=verify)


def test_rotation_counts_only_checkpoints_up_to_the_step_saved(saved, tmp_path):
    root = tmp_path / "checkpoints"
    root.mkdir()
    stale = root / "step-00000009"  # from a run later resumed at an earlier step
    shutil.copytree(saved, stale)
    (stale / "manifest.json").write_text("{")  # and damaged
    for stray in ("step-zzz", "step-12", "step-000000099"):
        (root / stray).mkdir()
    model, opt = _fresh()
    for step in (1, 2, 3):
        save_checkpoint(root, step, model, opt, keep_last=2)
    assert sorted(p.name for p in root.iterdir()) == sorted([
        "step-00000002", "step-00000003", "step-00000009", "step-000000099", "step-12",
        "step-zzz"])
    assert latest_checkpoint(root).name == "step-00000009"  # named right; verification decides
    save_checkpoint(root, 9, model, opt, keep_last=2)  # the run reaches step 9 again
    assert read_manifest(stale)["step"] == 9
    assert sorted(p.name for p in root.iterdir() if re.fullmatch(r"step-\d{8}", p.name)) == [
        "step-00000003", "step-00000009"]
    assert not any(p.name.startswith(".") for p in root.iterdir())


def test_a_chunk_smaller_than_an_element_is_refused_before_any_file(tmp_path):
    model, opt = _fresh()
    with pytest.raises(ValueError, match="chunk_bytes=2 is smaller than one 4-byte element"):
        save_checkpoint(tmp_path / "ckpts", 1, model, opt, chunk_bytes=2)
    assert not (tmp_path / "ckpts").exists()


def test_checkpoint_model_is_verified_and_exact(saved, tmp_path):
    from safetensors.torch import load_file

    from axolab.checkpoint import load_checkpoint_model

    got = full_state_dict(load_checkpoint_model(saved, Grid.init()))
    files = {}
    for shard in saved.glob("model-*.safetensors"):
        files.update(load_file(str(shard)))
    assert files.keys() == got.keys() and all(torch.equal(got[k], files[k]) for k in files)
    ckpt = _copy(saved, tmp_path)
    shard = sorted(ckpt.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-3] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=f"{shard.name} is corrupt or truncated"):
        load_checkpoint_model(ckpt, Grid.init())
