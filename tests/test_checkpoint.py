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
    for r in pool8.run(pretrained_logits, (1, 2, 2, 1), str(directory), kind, tied):
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
    for r in results:
        if r:
            assert r["keys"] and r["exact"] == [], f"not restored bit for bit: {r['exact'][:5]}"
            assert r["params"] < 1e-4 and r["data_position"] == 4, r
    # the checkpoint loads with plain transformers (HF export) and matches the saved weights
    from transformers import AutoModelForCausalLM

    exported = AutoModelForCausalLM.from_pretrained(str(tmp_path / "ckpt" / "step-00000001"))
    assert exported.lm_head.weight is exported.model.embed_tokens.weight or \
        torch.equal(exported.lm_head.weight, exported.model.embed_tokens.weight)
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
