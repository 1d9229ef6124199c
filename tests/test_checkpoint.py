"""Sharded checkpoints on gloo ranks: HF shards -> any grid, save on one grid and resume on
another, export to plain transformers, and refusal of corrupt, foreign or pickled files."""

import copy
from pathlib import Path

import pytest
import torch

from models import rel_err, tiny_model


def _grid(shape):
    from axolab.parallel import Grid

    return Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))


def pretrained_logits(shape, directory, kind, tied):
    from axolab.checkpoint import load_pretrained
    from axolab.parallel import gather_logits, vocab_shard

    grid = _grid(shape)
    if grid is None:
        return None
    serial = tiny_model(kind, tied)
    model = load_pretrained(directory, grid)
    ids = torch.randint(0, serial.config.vocab_size, (4, 10),
                        generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        ref = serial(input_ids=ids, labels=ids)
        out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids))
        logits = gather_logits(out.logits, vocab_shard(model), grid)
    local = sum(p.numel() for p in model.parameters())
    return {"logits": rel_err(logits, ref.logits), "loss": rel_err(out.loss, ref.loss),
            "fraction": local / sum(p.numel() for p in serial.parameters())}


@pytest.mark.parametrize("kind,tied", [("llama", False), ("qwen2", True)])
def test_load_pretrained_from_several_shards(pool8, tmp_path, kind, tied):
    directory = tmp_path / "hf"
    tiny_model(kind, tied).save_pretrained(str(directory), max_shard_size="20KB")
    assert len(list(directory.glob("*.safetensors"))) > 3
    results = pool8.run(pretrained_logits, (1, 2, 2, 1), str(directory), kind, tied)
    # None: a pool rank outside the grid; every one of the grid's 4 ranks must answer
    assert [r is None for r in results] == [False] * 4 + [True] * 4, results
    for r in results:
        if r is None:
            continue
        assert r["logits"] < 2e-5 and r["loss"] < 2e-5, r
        assert r["fraction"] < 0.35, r  # a quarter of the model (z*y = 4), plus small vectors


def _full_state(model, opt):
    """Serial-layout parameters and AdamW moments, assembled from the shards."""
    from axolab.parallel import parallel_parameters

    out = {}
    for key, module, attr, param in parallel_parameters(model):
        out[key] = module.full_tensor(attr)
        for name in ("exp_avg", "exp_avg_sq"):
            out[f"{name}/{key}"] = module.full_tensor(attr, opt.state[param][name])
    return out


def save_then_resume(save_shape, load_shape, directory):
    """One AdamW step on `save_shape`, checkpoint, load on `load_shape`: parameters and moments
    must be exactly the saved ones; one more step on the new grid must track the serial model."""
    import torch.distributed as dist

    from axolab.checkpoint import load_checkpoint, materialize, save_checkpoint
    from axolab.parallel import full_state_dict, parallelize, sync_gradients

    def step(model, opt, grid, ids):
        out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids))
        out.loss.backward()
        sync_gradients(model)
        opt.step()
        opt.zero_grad()

    ids1 = torch.randint(0, 99, (4, 10), generator=torch.Generator().manual_seed(1))
    ids2 = torch.randint(0, 99, (4, 10), generator=torch.Generator().manual_seed(2))
    serial = tiny_model("llama", tied=True)
    sopt = torch.optim.AdamW(serial.parameters(), lr=1e-3)
    for ids in (ids1, ids2):
        serial(input_ids=ids, labels=ids).loss.backward()
        sopt.step()
        sopt.zero_grad()
    grid = _grid(save_shape)
    if grid is not None:
        model = parallelize(tiny_model("llama", tied=True), grid)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        step(model, opt, grid, ids1)
        save_checkpoint(directory, 1, model, opt, state={"data_position": 4}, keep_last=1)
        saved = _full_state(model, opt)
        if grid.rank == 0:
            torch.save(saved, Path(directory) / "expected.pt")
    dist.barrier()
    result = {}
    grid = _grid(load_shape)
    if grid is not None:
        with torch.device("meta"):
            empty = type(serial)(copy.deepcopy(serial.config))
        model = parallelize(empty, grid)
        materialize(model, grid.device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        manifest = load_checkpoint(Path(directory) / "step-00000001", model, opt)
        expected = torch.load(Path(directory) / "expected.pt", weights_only=True)
        restored = _full_state(model, opt)
        step(model, opt, grid, ids2)
        got, want = full_state_dict(model), serial.state_dict()
        result = {"exact": sorted(k for k in expected if not torch.equal(expected[k], restored[k])),
                  "keys": expected.keys() == restored.keys(),
                  "params": max(rel_err(got[k], want[k]) for k in want),
                  "data_position": manifest["data_position"]}
    dist.barrier()
    return result


@pytest.mark.parametrize("save_shape,load_shape", [((2, 1, 2, 2), (1, 2, 1, 2)),
                                                   ((1, 2, 2, 1), (1, 1, 1, 1))])
def test_resume_on_another_grid(pool8, tmp_path, save_shape, load_shape):
    results = pool8.run(save_then_resume, save_shape, load_shape, str(tmp_path / "ckpt"))
    assert results[0], "rank 0 is part of every grid"
    # {}: a pool rank outside the loading grid; every rank of that grid must answer
    n_load = load_shape[0] * load_shape[1] * load_shape[2] * load_shape[3]
    assert sum(1 for r in results if r) == n_load, results
    for r in results:
        if r:
            assert r["keys"] and r["exact"] == [], f"not restored bit for bit: {r['exact'][:5]}"
            assert r["params"] < 1e-4 and r["data_position"] == 4, r
    # the checkpoint loads with plain transformers (HF export) and matches the saved weights
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "step-00000001"))
    assert exported.lm_head.weight is exported.model.embed_tokens.weight or \
        torch.equal(exported.lm_head.weight, exported.model.embed_tokens.weight)
    # every exported tensor is bit for bit the weight gathered on the saving grid
    saved = torch.load(tmp_path / "ckpt" / "expected.pt", weights_only=True)
    weights = {k: v for k, v in saved.items() if "/" not in k}  # not the AdamW moments
    exported_state = exported.state_dict()
    assert set(exported_state) - {"lm_head.weight"} == set(weights), \
        sorted(set(exported_state) ^ set(weights))
    assert len(weights) > 5
    for key, tensor in exported_state.items():
        want = weights["model.embed_tokens.weight" if key == "lm_head.weight" else key]
        assert tensor.dtype == want.dtype and torch.equal(tensor, want), key
    assert not any(p.name.startswith(".") for p in (tmp_path / "ckpt").iterdir())
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("step-*")) == ["step-00000001"]


def refusals(directory, other_model_dir, pickle_dir):
    from axolab.checkpoint import CheckpointError, load_checkpoint, load_pretrained
    from axolab.parallel import parallelize

    grid = _grid((1, 1, 2, 2))
    if grid is None:
        return None
    out = []
    model = parallelize(tiny_model("llama", tied=True), grid)
    for path in (directory, other_model_dir):
        try:
            load_checkpoint(path, model)
            out.append("loaded")
        except CheckpointError as e:
            out.append(str(e))
    try:
        load_pretrained(pickle_dir, grid)
        out.append("loaded")
    except CheckpointError as e:
        out.append(str(e))
    return out


def saver(shape, directory, kind):
    from axolab.checkpoint import save_checkpoint
    from axolab.parallel import parallelize

    grid = _grid(shape)
    if grid is not None:
        save_checkpoint(directory, 5, parallelize(tiny_model(kind, tied=True), grid))
    import torch.distributed as dist

    dist.barrier()


def test_corrupt_foreign_and_pickled_checkpoints_are_refused(pool8, tmp_path):
    pool8.run(saver, (1, 1, 2, 2), str(tmp_path / "a"), "llama")
    pool8.run(saver, (1, 1, 2, 2), str(tmp_path / "b"), "qwen2")
    good = tmp_path / "a" / "step-00000005"
    shard = sorted(good.glob("model-*.safetensors"))[0]
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    other = tmp_path / "b" / "step-00000005"
    # the foreign checkpoint passes its own hash check, so the identity check must catch it
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    tiny_model("llama", tied=True).config.save_pretrained(str(pickled))
    torch.save(tiny_model("llama", tied=True).state_dict(), pickled / "pytorch_model.bin")
    answers = [a for a in pool8.run(refusals, str(good), str(other), str(pickled)) if a]
    assert len(answers) == 4
    for corrupt, foreign, pickle in answers:
        assert "sha256 mismatch" in corrupt and shard.name in corrupt, corrupt
        assert "another model" in foreign and "model_type" in foreign, foreign
        assert "pickle" in pickle and "safetensors" in pickle, pickle


def streamed_save(shape, directory, kind, tied, chunk_bytes):
    """Save with moments set by hand from the serial weights (2*W and W*W, cut into shards), so
    every file can be compared bit for bit with the serial model. Returns this rank's save
    report and, measured by the same meter, the peak of the old save's all-gathers."""
    from dataclasses import asdict

    from axolab.checkpoint import SaveReport, save_checkpoint
    from axolab.checkpoint.meter import AllocationMeter
    from axolab.parallel import parallel_parameters, parallelize

    grid = _grid(shape)
    if grid is None:
        return None
    serial = tiny_model(kind, tied)
    weights = {k: v.detach().clone() for k, v in serial.state_dict().items()}
    model = parallelize(serial, grid)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for key, module, attr, param in parallel_parameters(model):
        layout = module.layout_of(attr)
        opt.state[param] = {"step": torch.tensor(3.0),
                            "exp_avg": layout.shard_from_full(2 * weights[key]),
                            "exp_avg_sq": layout.shard_from_full(weights[key] * weights[key])}
    report = SaveReport()
    save_checkpoint(directory, 7, model, opt, chunk_bytes=chunk_bytes, report=report)
    with AllocationMeter(grid.device) as old:  # what the previous save did on every rank
        for key, module, attr, param in parallel_parameters(model):
            module.full_tensor(attr)
            for name in ("exp_avg", "exp_avg_sq"):
                module.full_tensor(attr, opt.state[param][name])
    return {"coords": grid.coords, "report": asdict(report), "old_peak": old.peak_bytes}


# (model, tied, grid D,Z,Y,X): Y, Z and X all split; data replicas with biases; Z=3 leaves
# padding at the end of each block's last chunk, and Y=2 pads the 99-token vocabulary to 100.
STREAMED = [("llama", False, (1, 2, 2, 2)), ("qwen2", True, (2, 1, 2, 2)),
            ("llama", True, (1, 3, 2, 1))]


@pytest.mark.parametrize("kind,tied,shape", STREAMED, ids=[f"{k}-{'x'.join(map(str, s))}"
                                                           for k, _, s in STREAMED])
def test_streamed_save_is_exact_and_stays_within_one_chunk(pool8, tmp_path, kind, tied, shape):
    from safetensors.torch import load_file

    chunk = 2048  # 64 fp32 elements per rank per round: every tensor spans many rounds
    results = [r for r in pool8.run(streamed_save, shape, str(tmp_path), kind, tied, chunk) if r]
    assert len(results) == shape[0] * shape[1] * shape[2] * shape[3]  # None: outside the grid
    ckpt = tmp_path / "step-00000007"
    files = {}
    for path in ckpt.glob("*.safetensors"):
        files.update(load_file(str(path)))
    weights = tiny_model(kind, tied).state_dict()
    stored = [k for k in weights if not (tied and k == "lm_head.weight")]
    for key in stored:
        assert torch.equal(files[key], weights[key]), key
        assert torch.equal(files[f"exp_avg/{key}"], 2 * weights[key]), key
        assert torch.equal(files[f"exp_avg_sq/{key}"], weights[key] * weights[key]), key
        assert files[f"step/{key}"].item() == 3.0
    assert len(files) == 4 * len(stored)
    writers = {n.split("-")[1] for n in (p.name for p in ckpt.glob("model-*.safetensors"))}
    assert len(writers) == shape[1] * shape[2] * shape[3]  # every rank of a model copy writes
    for r in results:
        rep = r["report"]
        if r["coords"][0] > 0:  # data replicas other than 0 neither gather nor write
            assert rep["staging_bytes"] == rep["peak_device_bytes"] == 0, r
            continue
        # The writer's staging buffer is the only device allocation; every sent piece is a
        # view of the rank's own shard. (gloo's gather also stages the pieces internally on
        # its own thread, which no Python-side meter sees; NCCL receives in place.)
        assert 0 < rep["peak_device_bytes"] <= chunk, r
        assert rep["largest_tensor_bytes"] > 4 * chunk, r  # the bound is not met trivially
        assert r["old_peak"] >= rep["largest_tensor_bytes"], r  # the all-gather save did not


def fallback_resume(directory):
    """Which checkpoint each rank resumes from, and the lead's warnings."""
    import warnings

    from axolab.checkpoint import resume_checkpoint

    grid = _grid((1, 1, 2, 2))
    if grid is None:
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        found = resume_checkpoint(directory, grid)
    return {"picked": found[0].name if found else None, "step": found[1]["step"] if found else None,
            "warnings": [str(w.message) for w in caught]}


def test_resume_falls_back_together_when_one_rank_finds_damage(pool8, tmp_path):
    """Damage only one rank hashes (each file is hashed by one rank) must still make every
    rank skip that checkpoint; final-named directories without a manifest are skipped too."""
    import json
    import shutil

    root = tmp_path / "ckpts"
    for step in (1, 2):
        pool8.run(saver, (1, 1, 2, 2), str(root / f"s{step}"), "llama")
        shutil.move(root / f"s{step}" / "step-00000005", root / f"step-{step:08d}")
        shutil.rmtree(root / f"s{step}")
    newer = root / "step-00000002"
    listed = sorted(json.loads((newer / "manifest.json").read_text())["files"])
    victim = listed[3]  # hashed by world rank 3 only (file i goes to rank i % 4)
    data = bytearray((newer / victim).read_bytes())
    data[len(data) // 2] ^= 0x01
    (newer / victim).write_bytes(bytes(data))
    shutil.copytree(newer, root / "step-00000003")
    (root / "step-00000003" / "manifest.json").unlink()  # killed between files and manifest
    shutil.copytree(root / "step-00000001", root / "step-zzz")  # not a checkpoint name
    answers = [a for a in pool8.run(fallback_resume, str(root)) if a]
    assert len(answers) == 4
    assert {(a["picked"], a["step"]) for a in answers} == {("step-00000001", 5)}
    lead = answers[0]["warnings"]
    assert any("step-00000003" in w and "no manifest.json" in w for w in lead), lead
    assert any("step-00000002" in w and victim in w and "sha256 mismatch" in w for w in lead), lead
    assert all(a["warnings"] == [] for a in answers[1:])
