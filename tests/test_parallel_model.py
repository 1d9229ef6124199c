"""The parallelized HF model against the serial one, on every grid shape, in fp32: the Llama
family on 24 grids, every other supported architecture on six of them.

Each check compares loss, gathered logits, global grad norm and every parameter after one SGD
step (so gradients, including the data/depth reductions) with the unmodified serial model that
every rank also builds from the same seed.
"""

import copy
import itertools

import pytest
import torch

from models import NEW_ARCHITECTURES, rel_err, tiny_model

TOL = 2e-5
GRIDS = [g for g in itertools.product((1, 2), repeat=4) if g[0] * g[1] * g[2] * g[3] <= 8]
GRIDS += [(1, 1, 1, 4), (1, 1, 2, 4), (2, 1, 1, 4), (1, 2, 1, 4),
          (1, 1, 4, 1), (1, 1, 4, 2), (2, 1, 4, 1), (1, 2, 4, 1)]
VARIANTS = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)]
# The other architectures (tests/models.py) run on six grids that split every axis, X=4 and
# Y=4 included, inside the same pool task as the Llama family (a grid's groups built once).
ARCHITECTURE_GRIDS = [(1, 1, 1, 4), (2, 1, 1, 4), (1, 1, 4, 1), (1, 2, 4, 1), (1, 2, 2, 2),
                      (2, 2, 2, 1)]
ARCHITECTURE_VARIANTS = [(kind, tied) for kind in NEW_ARCHITECTURES for tied in (False, True)]


def _batch(vocab: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    # 3 rows: with 4 batch shards one rank gets only padding; with 2, one row is padding.
    ids = torch.randint(0, vocab, (3, 12), generator=g)
    labels = ids.clone()
    labels[torch.rand(labels.shape, generator=g) < 0.25] = -100
    labels[1] = -100  # a row with no kept token at all
    labels[1, 5] = ids[1, 5]
    return ids, labels


def _serial_step(model, ids, labels, lr):
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters()])
    with torch.no_grad():
        for p in model.parameters():
            p -= lr * p.grad
    return out, norm


def check_grid(shape, variants, lr=0.5):
    import torch.distributed as dist

    from axolab.parallel import (Grid, full_state_dict, gather_logits, global_grad_norm,
                                 parallelize, sync_gradients, vocab_shard)

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    report = {}
    for kind, tied in variants:
        if grid is None:
            continue
        serial = tiny_model(kind, tied)
        initial = {k: v.detach().clone() for k, v in serial.state_dict().items()}
        model = parallelize(copy.deepcopy(serial), grid)
        ids, labels = _batch(serial.config.vocab_size, seed=len(report))
        ref, ref_norm = _serial_step(serial, ids, labels, lr)

        out = model(input_ids=grid.shard_batch(ids, pad_value=0),
                    labels=grid.shard_batch(labels, pad_value=-100))
        logits = gather_logits(out.logits, vocab_shard(model), grid, batch_size=ids.shape[0])
        out.loss.backward()
        sync_gradients(model)
        norm = global_grad_norm(model)
        with torch.no_grad():
            for p in model.parameters():
                p -= lr * p.grad
        params = full_state_dict(model)
        expected = serial.state_dict()
        assert params.keys() == expected.keys(), set(params) ^ set(expected)
        report[f"{kind}-tied={tied}"] = {
            "loss": rel_err(out.loss, ref.loss),
            "logits": rel_err(logits, ref.logits),
            "grad_norm": rel_err(norm, ref_norm),
            "params": max(rel_err(params[k], expected[k]) for k in expected),
            "moved": max(rel_err(params[k], initial[k]) for k in expected),
        }
    dist.barrier()
    return report


@pytest.mark.parametrize("shape", GRIDS, ids=lambda s: "dzyx%d%d%d%d" % s)
def test_matches_serial_model(pool8, shape):
    variants = VARIANTS + (ARCHITECTURE_VARIANTS if shape in ARCHITECTURE_GRIDS else [])
    report = pool8.run(check_grid, shape, variants)
    assert set(report[0]) == {f"{k}-tied={t}" for k, t in variants}
    for rank, per_rank in enumerate(report):
        for variant, errs in per_rank.items():
            assert errs["moved"] > 1e-3, f"rank {rank} {variant}: the SGD step changed nothing"
            for what in ("loss", "logits", "grad_norm", "params"):
                assert errs[what] < TOL, f"rank {rank} {variant} {what}: rel err {errs[what]:.2e}"
