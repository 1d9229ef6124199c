"""Grid and parallelize behaviour that needs no other ranks."""

import copy
import re

import pytest
import torch
from transformers import MixtralConfig, MixtralForCausalLM

from axolab.parallel import Grid, full_state_dict, parallelize
from axolab.parallel.grid import launcher_environment
from models import tiny_model


def test_single_process_grid_needs_no_process_group():
    grid = Grid.init()
    assert grid.shape == (1, 1, 1, 1) and grid.coords == (0, 0, 0, 0)
    assert not torch.distributed.is_initialized()
    serial = tiny_model("qwen2", tied=False)
    model = parallelize(copy.deepcopy(serial), grid)
    ids = torch.randint(0, 128, (2, 8))
    assert torch.allclose(model(input_ids=ids, labels=ids).loss, serial(input_ids=ids, labels=ids).loss)
    sd = full_state_dict(model)
    assert all(torch.equal(sd[k], v) for k, v in serial.state_dict().items())


def test_multi_rank_grid_without_launcher_is_refused(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match=r"grid needs 8 ranks .* torchrun"):
        Grid.init(2, 1, 2, 2)
    with pytest.raises(ValueError, match="grid dimension y must be a positive integer, got 0"):
        Grid.init(1, 1, 0, 1)


def _fake_world(monkeypatch, world: int, rank: int) -> list:
    """torch.distributed as seen by ``rank`` of ``world``, without any other process: the
    groups the grid creates are recorded instead."""
    import torch.distributed as dist

    created = []
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_world_size", lambda group=None: world)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: rank)
    monkeypatch.setattr(dist, "get_backend", lambda group=None: "gloo")
    monkeypatch.setattr(dist, "new_group", lambda ranks, **kw: created.append(list(ranks)) or
                        object())
    return created


def test_grid_ranks_out_of_order_are_refused_before_any_group(monkeypatch):
    # torch.distributed orders a group's members by global rank while the grid lays them out
    # in the order given: reversed ranks gave a wrong loss without any error.
    created = _fake_world(monkeypatch, 4, 0)
    for ranks in ([3, 2, 1, 0], [0, 2, 1, 3], range(3, -1, -1), [0, 0, 1, 2]):
        named = re.escape(f"grid ranks {list(ranks)} must be distinct and in increasing order")
        with pytest.raises(ValueError, match=named):
            Grid.init(1, 2, 1, 2, ranks=ranks)
    assert created == []
    # Increasing ranks, also a subset of the world, are fine, and each group lists them in
    # the grid's order.
    grid = Grid.init(1, 1, 1, 2, ranks=[0, 3])
    assert grid.ranks == (0, 3) and grid.x.ranks == (0, 3) and grid.x.index == 0
    assert [0, 3] in created and all(g == sorted(g) for g in created)


def test_grid_ranks_out_of_order_are_refused_without_a_process_group():
    # The order is checked first, so the message names the real problem.
    with pytest.raises(ValueError, match=r"grid ranks \[1, 0\] must be distinct and in "
                                         r"increasing order"):
        Grid.init(1, 1, 1, 2, ranks=[1, 0])
    assert not torch.distributed.is_initialized()


def test_launcher_environment_torchrun_and_slurm(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID",
                "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_ID", "SLURM_JOB_NODELIST", "SLURM_STEP_ID"):
        monkeypatch.delenv(var, raising=False)
    assert launcher_environment() is None
    monkeypatch.setenv("SLURM_PROCID", "5")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    monkeypatch.setenv("SLURM_LOCALID", "1")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "nid001")
    # A batch script has these too but is no rank: only srun tasks (job steps) are.
    assert launcher_environment() is None
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    env = launcher_environment()
    assert env == dict(rank=5, world_size=8, local_rank=1, master_addr="nid001",
                       master_port=str(20000 + 123456 % 20000))
    # torchrun's variables win when both are present (torchrun inside an allocation).
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("MASTER_ADDR", "10.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29400")
    env = launcher_environment()
    assert (env["rank"], env["world_size"], env["master_addr"], env["master_port"]) == \
        (2, 4, "10.0.0.1", "29400")


def test_unsupported_architecture_is_named():
    # A mixture-of-experts model: no plan splits its experts.
    model = MixtralForCausalLM(MixtralConfig(num_hidden_layers=1, hidden_size=16,
                                             intermediate_size=32, num_attention_heads=2,
                                             num_key_value_heads=2, num_local_experts=2,
                                             vocab_size=50))
    with pytest.raises(ValueError, match=r"model.layers.0.mlp \(MixtralSparseMoeBlock\) is a "
                                         "mixture-of-experts layer"):
        parallelize(model, Grid.init())
    llama = tiny_model("llama", tied=False)
    llama.config.model_type = "my_llama"  # an architecture without a plan
    with pytest.raises(ValueError, match="no parallelization plan for model_type 'my_llama'.*gpt2"):
        parallelize(llama, Grid.init())



def test_generate_on_parallel_model_is_refused():
    model = parallelize(tiny_model("llama", tied=False), Grid.init())
    with pytest.raises(NotImplementedError, match="vocab_parallel_argmax"):
        model.generate(torch.zeros(1, 3, dtype=torch.long), max_new_tokens=2)


def test_attention_dropout_without_x_split_is_allowed():
    model = tiny_model("llama", tied=False)
    model.config.attention_dropout = 0.1
    parallelize(model, Grid.init())  # x == 1: every rank has whole heads, dropout is fine


@pytest.mark.parametrize("overlap", [True, False])
def test_the_train_config_gradient_dtype_reaches_the_model(overlap):
    """TrainConfig.depth_grad_dtype is the built model's Optimizations.depth_grad_dtype, with
    overlap on and off (the rest of either schedule as it was)."""
    from axolab.config import TrainConfig
    from axolab.parallel import Optimizations, find_parallel_state
    from axolab.train import build_model

    grid = Grid.init()
    for dtype in ("fp32", "bf16"):
        cfg = TrainConfig(model="tiny-llama", depth_grad_dtype=dtype,
                          overlap_communication=overlap)
        options = find_parallel_state(build_model(cfg, grid, 0)).runtime.options
        base = Optimizations() if overlap else Optimizations.none()
        assert options.depth_grad_dtype == dtype
        assert options.prefetch_weights == base.prefetch_weights
