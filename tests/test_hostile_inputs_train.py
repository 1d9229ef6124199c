"""Training inputs a careless or hostile user might give: each is refused with one clear line
naming the field and the value, before any rank starts or any file is written."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from axolab.cli import main as axolab
from axolab.config import TrainConfig, config_from_dict

# (what the user did, the config fields, what the error must say)
BAD_TRAIN_CONFIGS = [
    ("keeps no checkpoints", {"keep_checkpoints": -1}, "keep_checkpoints=-1 must be at least 1"),
    ("keeps zero checkpoints", {"keep_checkpoints": 0}, "keep_checkpoints=0 must be at least 1"),
    ("clips to a negative norm", {"grad_clip": -1}, "grad_clip=-1 must be positive"),
    ("clips to zero", {"grad_clip": 0.0}, "grad_clip=0.0 must be positive"),
    ("trains zero steps", {"steps": 0}, "steps=0 must be at least 1"),
    ("warms up negatively", {"warmup_steps": -5}, "warmup_steps=-5 must be at least 0"),
    ("evaluates every -1 steps", {"eval_interval": -1}, "eval_interval=-1 must be at least 0"),
    ("checkpoints every -1 steps", {"checkpoint_interval": -1},
     "checkpoint_interval=-1 must be at least 0"),
    ("logs every 0 steps", {"log_interval": 0}, "log_interval=0 must be at least 1"),
    ("an empty global batch", {"global_batch": 0}, "global_batch=0 must be at least 1"),
    ("a number as a string", {"steps": "100"}, "steps='100' must be an integer or null"),
    ("a learning rate as a string", {"lr": "3e-4"}, "lr='3e-4' must be a number"),
    ("true as a count", {"global_batch": True}, "global_batch=True must be an integer"),
    ("a fractional step count", {"steps": 10.5}, "steps=10.5 must be an integer"),
    ("a grid of strings", {"grid": ["2", 1, 1, 1]}, "grid=['2', 1, 1, 1] must be a list"),
    ("a three-axis grid", {"grid": [2, 1, 1]}, "grid must be four positive integers"),
    ("a zero grid axis", {"grid": [1, 0, 1, 1]}, "grid must be four positive integers"),
    ("an unknown precision", {"precision": "fp16"}, "precision='fp16' must be 'fp32' or 'bf16'"),
    ("an unknown gradient dtype", {"depth_grad_dtype": "fp16"},
     "depth_grad_dtype='fp16' must be 'fp32' or 'bf16'"),
    ("an unknown loss", {"loss": "goldfishh"}, "loss='goldfishh' must be 'standard' or"),
    ("an unknown goldfish strategy", {"goldfish_strategy": "random"},
     "goldfish_strategy='random' must be 'hash' or 'hash-table' or 'static'"),
    ("a zero learning rate", {"lr": 0}, "lr=0 must be positive"),
    ("negative epochs", {"epochs": -1.0, "steps": None}, "epochs=-1.0 must be positive"),
    ("a min-lr ratio above one", {"min_lr_ratio": 1.5}, "min_lr_ratio=1.5 must be within"),
    ("betas of one", {"betas": [0.9, 1.0]}, "betas=[0.9, 1.0] must be two numbers in [0, 1)"),
    ("a zero micro-batch", {"micro_batch": 0}, "micro_batch=0 must be at least 1"),
    ("a stop before the first step", {"stop_at_step": 0}, "stop_at_step=0 must be at least 1"),
    ("resume as a number", {"resume": 1}, "resume=1 must be true or false"),
    ("a typo in a field name", {"global_bacth": 8}, "unknown field 'global_bacth'"),
    ("a list instead of a mapping", [1, 2], "expected a mapping"),
    ("a negative collective timeout", {"collective_timeout_s": -1},
     "collective_timeout_s=-1 must be positive"),
    ("row extraction in a probe", {"probe": {"rows": 4}},
     "probe: rows=4: row extraction is measured by `axolab eval`"),
    ("a reference model in a probe", {"probe": {"reference": "base-model"}},
     "probe: reference='base-model': in-training probes score with the live model only"),
]


@pytest.mark.parametrize("what,fields,message", BAD_TRAIN_CONFIGS,
                         ids=[case[0] for case in BAD_TRAIN_CONFIGS])
def test_bad_train_config_is_refused(what, fields, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        config_from_dict(TrainConfig, fields)


@pytest.mark.parametrize("what,fields,message", BAD_TRAIN_CONFIGS[:12],
                         ids=[case[0] for case in BAD_TRAIN_CONFIGS[:12]])
def test_axolab_train_refuses_before_anything_exists(what, fields, message, tmp_path, capsys):
    run_dir = tmp_path / "run"
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({**fields, "run_dir": str(run_dir)}))
    assert axolab(["train", str(cfg)]) == 2
    assert message in capsys.readouterr().err
    assert not run_dir.exists()


def test_a_config_file_that_is_not_json(tmp_path, capsys):
    cfg = tmp_path / "c.json"
    cfg.write_text("{'steps': 10}")
    assert axolab(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"config file {cfg} is not valid JSON" in err and "Traceback" not in err


def test_good_values_are_accepted():
    cfg = config_from_dict(TrainConfig, {"lr": 1, "grad_clip": None, "steps": None, "epochs": 2,
                                         "betas": [0.9, 0.999], "keep_checkpoints": 1})
    assert cfg.lr == 1 and cfg.epochs == 2


def test_pickle_only_model_directory_is_refused(tmp_path):
    """A directory with config.json and only pytorch_model.bin would otherwise train from
    random init without a word."""
    from transformers import LlamaConfig

    from axolab.checkpoint import CheckpointError
    from axolab.train import _model_config

    model_dir = tmp_path / "model"
    LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2, vocab_size=64).save_pretrained(model_dir)
    (model_dir / "pytorch_model.bin").write_bytes(b"not loaded, ever")
    cfg = config_from_dict(TrainConfig, {"model": str(model_dir)})
    with pytest.raises(CheckpointError, match="pytorch_model.bin"):
        _model_config(cfg)
    assert Path(model_dir / "pytorch_model.bin").read_bytes() == b"not loaded, ever"


class _Marker:
    """Unpickling this creates a file: what a crafted checkpoint would do to a reader that
    calls pickle.loads."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_a_crafted_manifest_cannot_run_code(tmp_path):
    import base64
    import pickle

    from axolab.checkpoint import CheckpointError
    from axolab.data import build
    from axolab.train import run

    root = Path(__file__).resolve().parents[1]
    data = build(root / "data_recipes" / "tiny.yaml", tmp_path / "tiny", progress=False)
    cfg = dict(data=str(data), run_dir=str(tmp_path / "run"), steps=4, global_batch=4,
               checkpoint_interval=2, eval_interval=0, progress=False)
    run(config_from_dict(TrainConfig, {**cfg, "stop_at_step": 2}))  # one process, 1x1x1x1
    manifest_path = tmp_path / "run" / "checkpoints" / "step-00000002" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert isinstance(manifest["rng"], dict) and manifest["rng"]["format"] == "axolab-rng-1"
    marker = tmp_path / "PWNED"
    # Proof that the payload is live: unpickling it does create the marker.
    pickle.loads(pickle.dumps(_Marker(str(tmp_path / "control"))))
    assert (tmp_path / "control").exists()
    crafted = base64.b64encode(pickle.dumps(_Marker(str(marker)))).decode()
    for rng in (crafted, {**manifest["rng"], "torch": crafted},
                {**manifest["rng"], "python": {"version": 3, "words": crafted}}):
        manifest_path.write_text(json.dumps({**manifest, "rng": rng}))
        with pytest.raises(CheckpointError, match="checkpoint RNG state"):
            run(config_from_dict(TrainConfig, cfg))
        assert not marker.exists()
    # The untouched state resumes.
    manifest_path.write_text(json.dumps(manifest))
    assert run(config_from_dict(TrainConfig, cfg))["step"] == 4


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np
    import torch

    from axolab.checkpoint.rng import rng_state, set_rng_state

    random.gauss(0, 1)  # leaves a cached gauss_next in Python's state
    saved = json.loads(json.dumps(rng_state()))

    def draws():
        return (random.random(), random.gauss(0, 1), np.random.randn(4).tolist(),
                np.random.randint(0, 1 << 30, 3).tolist(), torch.randn(4).tolist())

    first = draws()
    set_rng_state(saved)
    assert draws() == first


def _bad_rng_states():
    from axolab.checkpoint.rng import rng_state

    good = json.loads(json.dumps(rng_state()))
    py, npy = good["python"], good["numpy"]
    return [
        ("old pickle format", "gARLAS4=", "format"),
        ("no format", {k: v for k, v in good.items() if k != "format"}, "format"),
        ("short python state", {**good, "python": {**py, "words": py["words"][:10]}},
         "python words must be 625 integers"),
        ("python words too large", {**good, "python": {**py, "words": [2**40] * 625}},
         "python words must be 625 integers"),
        ("numpy key of strings", {**good, "numpy": {**npy, "key": ["1"] * 624}},
         "numpy key must be 624 integers"),
        ("numpy position past the end", {**good, "numpy": {**npy, "pos": 10**6}},
         "out of range"),
        ("torch state truncated", {**good, "torch": good["torch"][:40]}, "torch has"),
        ("torch state not base64", {**good, "torch": "%%%"}, "not valid base64"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_malformed_rng_state_is_refused_and_changes_nothing(case):
    import random

    from axolab.checkpoint import CheckpointError
    from axolab.checkpoint.rng import set_rng_state

    what, state, message = _bad_rng_states()[case]
    before = random.getstate()
    with pytest.raises(CheckpointError, match=re.escape(message)):
        set_rng_state(state)
    assert random.getstate() == before, what


def test_a_resume_refuses_another_gradient_dtype_and_accepts_an_older_config(tmp_path):
    """depth_grad_dtype changes what a run computes: a resume may not change it; a config
    saved before the field existed had the default."""
    from axolab.train import _check_resumable

    cfg = TrainConfig()
    saved = cfg.to_dict()
    _check_resumable(cfg, saved, tmp_path)  # the same config
    del saved["depth_grad_dtype"]
    _check_resumable(cfg, saved, tmp_path)  # written before the field: fp32
    saved["depth_grad_dtype"] = "bf16"
    with pytest.raises(ValueError, match=re.escape("depth_grad_dtype: 'bf16' -> 'fp32'")):
        _check_resumable(cfg, saved, tmp_path)
