"""The training loop: the same loss curve on every grid, resumed on another grid, with
activation checkpointing and bf16. (Killed and preempted jobs: test_resilience.py.)"""

import json
from pathlib import Path

import pytest

from axolab.config import TrainConfig, config_from_dict
from axolab.data import build

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return build(ROOT / "data_recipes" / "tiny.yaml", tmp_path_factory.mktemp("d") / "tiny",
                 progress=False)


def _cfg(data, run_dir, **kw):
    base = dict(data=str(data), run_dir=str(run_dir), steps=20, global_batch=8, micro_batch=2,
                lr=3e-3, warmup_steps=3, eval_interval=10, eval_batches=2,
                checkpoint_interval=0, progress=False)
    return config_from_dict(TrainConfig, {**base, **kw})


def train_on(shape, cfg_dict):
    from axolab.parallel import Grid
    from axolab.train import run

    import torch.distributed as dist

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    if grid is not None:
        run(config_from_dict(TrainConfig, {**cfg_dict, "grid": list(shape)}), grid)
    dist.barrier()


def _curve(run_dir):
    lines = [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines], [r["val_loss"] for r in lines if "val_loss" in r]


GRIDS = [(1, 1, 1, 1), (2, 1, 1, 1), (1, 2, 1, 1), (1, 1, 2, 2), (2, 1, 2, 1)]


@pytest.mark.parametrize("loss,grids", [("standard", GRIDS),
                                        ("goldfish", [(1, 1, 1, 1), (2, 1, 2, 1)])])
def test_loss_curve_is_the_same_on_every_grid(pool8, dataset, tmp_path, loss, grids):
    curves = {}
    for shape in grids:
        run_dir = tmp_path / ("g%d%d%d%d" % shape)
        pool8.run(train_on, shape, _cfg(dataset, run_dir, loss=loss, steps=12,
                                        eval_interval=6).to_dict())
        curves[shape] = _curve(run_dir)
    ref_train, ref_val = curves[(1, 1, 1, 1)]
    if loss == "goldfish":  # the loss on left-out tokens is logged, and on every grid the same
        dropped = {s: [json.loads(x)["loss_dropped_tokens"] for x in
                       (tmp_path / ("g%d%d%d%d" % s) / "metrics.jsonl").read_text().splitlines()]
                   for s in grids}
        ref = dropped[(1, 1, 1, 1)]
        assert {s: len(d) for s, d in dropped.items()} == {s: 12 for s in grids}
        assert all(abs(a - b) <= 1e-5 * b for d in dropped.values() for a, b in zip(d, ref))
    assert len(ref_train) == 12 and len(ref_val) == 2
    assert ref_train[-1] < ref_train[0] - 0.3, "the model did not learn"
    for shape, (train, val) in curves.items():
        # 12 steps logged, evaluated after steps 6 and 12, on every grid (zip would truncate)
        assert (len(train), len(val)) == (12, 2), f"grid {shape}: {train}, {val}"
        for a, b in zip(train + val, ref_train + ref_val):
            assert abs(a - b) <= 1e-5 * abs(b), f"grid {shape}: {train} vs {ref_train}"


def test_resume_on_another_grid_continues_the_curve(pool8, dataset, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    pool8.run(train_on, (1, 1, 1, 1), _cfg(dataset, whole).to_dict())
    pool8.run(train_on, (1, 1, 1, 1), _cfg(dataset, split, stop_at_step=10).to_dict())
    assert len(_curve(split)[0]) == 10
    pool8.run(train_on, (2, 1, 2, 1), _cfg(dataset, split).to_dict())
    got, want = _curve(split)[0], _curve(whole)[0]
    assert len(got) == 20 and got[:10] == want[:10]
    from axolab.train import run

    # In this process: a 1x1x1x1 grid needs no process group.
    with pytest.raises(ValueError, match="changes the run \\(steps: 20 -> 30; lr: 0.003 -> 0.001"):
        run(_cfg(dataset, split, lr=1e-3, steps=30))
    assert all(abs(a - b) <= 1e-5 * abs(b) for a, b in zip(got, want)), (got, want)


def test_activation_checkpointing_and_bf16(pool8, dataset, tmp_path):
    runs = {"fp32": {}, "ac": {"activation_checkpointing": True}, "bf16": {"precision": "bf16"}}
    curves = {}
    for name, extra in runs.items():
        pool8.run(train_on, (1, 1, 2, 2), _cfg(dataset, tmp_path / name, steps=4, **extra).to_dict())
        curves[name] = _curve(tmp_path / name)[0]
    assert {k: len(c) for k, c in curves.items()} == {k: 4 for k in runs}  # one loss per step
    assert all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(curves["ac"], curves["fp32"]))
    # bf16 matmuls: close to fp32, not equal
    assert all(abs(a - b) <= 0.02 * abs(b) for a, b in zip(curves["bf16"], curves["fp32"]))
    assert curves["bf16"] != curves["fp32"]


def test_config_errors():
    with pytest.raises(ValueError, match="unknown field 'global_bacth'.*'global_batch'"):
        config_from_dict(TrainConfig, {"global_bacth": 8})
    with pytest.raises(ValueError, match="global_batch=10 does not split over data\\*z = 4"):
        config_from_dict(TrainConfig, {"global_batch": 10, "grid": [2, 2, 1, 1]})
    with pytest.raises(ValueError, match="micro_batch=3 must divide the 4 sequences"):
        config_from_dict(TrainConfig, {"global_batch": 8, "micro_batch": 3, "grid": [2, 1, 1, 1]})
