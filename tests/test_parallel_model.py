"""The parallelized HF model against the serial one, on every grid shape, in fp32: the Llama
family on 24 grids, every other supported architecture on six of them.

Each check compares loss, gathered logits, global grad norm and every parameter after one SGD
step (so gradients, including the data/depth reductions) with the unmodified serial model built
from the same seed; the ranks send their results back and the test process runs the serial
model once per variant.
"""

import itertools

import pytest
import torch

from models import NEW_ARCHITECTURES, rel_err, tiny_model

TOL = 2e-5
GRIDS = [g for g in itertools.product((1, 2), repeat=4) if g[0] * g[1] * g[2] * g[3] <= 8]
GRIDS += [(1, 1, 1, 4), (1, 1, 2, 4), (2, 1, 1, 4), (1, 2, 1, 4),
          (1, 1, 4, 1), (1, 1, 4, 2), (2, 1, 4, 1), (1, 2, 4, 1)]
VARIANTS = [("llama", False), ("llama", True), ("qwen2", False), ("qwen2", True)]
# The other architectures (tests/models.py) run on six grids that split every axis, inside
# the same pool task as the Llama family (a grid's groups built once): untied embeddings on
# three grids, tied on the other three, so each of the two meets X=4, Y=4, Z=2 and D=2.
ARCHITECTURE_GRIDS = {(1, 1, 1, 4): False, (1, 2, 4, 1): False, (1, 2, 2, 2): False,
                      (2, 1, 1, 4): True, (1, 1, 4, 1): True, (2, 2, 2, 1): True}


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


LR = 0.5


def _seed(kind: str, tied: bool) -> int:
    """The batch of a variant: fixed per variant, so its serial reference is computed once."""
    return (NEW_ARCHITECTURES + ("llama", "qwen2")).index(kind) * 2 + int(tied)


def parallel_step(shape, variants):
    """On every rank: each variant parallelized on the grid, one SGD step; what it computed,
    gathered to full tensors (the test compares them with the serial model, computed once in
    the test process instead of on every rank)."""
    import torch.distributed as dist

    from axolab.parallel import (Grid, full_state_dict, gather_logits, global_grad_norm,
                                 parallelize, sync_gradients, vocab_shard)

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    report = {}
    for kind, tied in variants:
        if grid is None:
            continue
        model = parallelize(tiny_model(kind, tied), grid)
        ids, labels = _batch(model.config.vocab_size, _seed(kind, tied))
        out = model(input_ids=grid.shard_batch(ids, pad_value=0),
                    labels=grid.shard_batch(labels, pad_value=-100))
        logits = gather_logits(out.logits, vocab_shard(model), grid, batch_size=ids.shape[0])
        out.loss.backward()
        sync_gradients(model)
        norm = global_grad_norm(model)
        with torch.no_grad():
            for p in model.parameters():
                p -= LR * p.grad
        # As numpy arrays: they travel back by value (torch tensors would each be shared
        # through a file descriptor).
        report[f"{kind}-tied={tied}"] = {
            "loss": out.loss.detach().numpy(), "logits": logits.detach().numpy(),
            "grad_norm": norm.numpy(),
            "params": {k: v.numpy() for k, v in full_state_dict(model).items()}}
    dist.barrier()
    return report


_SERIAL: dict = {}


def serial_step(kind: str, tied: bool) -> dict:
    """The unmodified serial model's loss, logits, gradient norm and parameters before and
    after the same SGD step (cached: every grid compares with the same reference)."""
    if (kind, tied) not in _SERIAL:
        model = tiny_model(kind, tied)
        initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ids, labels = _batch(model.config.vocab_size, _seed(kind, tied))
        out, norm = _serial_step(model, ids, labels, LR)
        _SERIAL[kind, tied] = {"loss": out.loss.detach(), "logits": out.logits.detach(),
                               "grad_norm": norm, "params": model.state_dict(),
                               "initial": initial}
    return _SERIAL[kind, tied]


@pytest.mark.parametrize("shape", GRIDS, ids=lambda s: "dzyx%d%d%d%d" % s)
def test_matches_serial_model(pool8, shape):
    variants = VARIANTS + ([(kind, ARCHITECTURE_GRIDS[shape]) for kind in NEW_ARCHITECTURES]
                           if shape in ARCHITECTURE_GRIDS else [])
    report = pool8.run(parallel_step, shape, variants)
    assert set(report[0]) == {f"{k}-tied={t}" for k, t in variants}
    for kind, tied in variants:
        ref = serial_step(kind, tied)
        variant = f"{kind}-tied={tied}"
        moved = max(rel_err(ref["params"][k], ref["initial"][k]) for k in ref["params"])
        assert moved > 1e-3, f"{variant}: the SGD step changed nothing"
        for rank, per_rank in enumerate(report):
            if variant not in per_rank:
                continue  # a rank outside the grid
            got = per_rank[variant]
            assert got["params"].keys() == ref["params"].keys(), \
                set(got["params"]) ^ set(ref["params"])
            errs = {what: rel_err(torch.from_numpy(got[what]), ref[what])
                    for what in ("loss", "logits", "grad_norm")}
            errs["params"] = max(rel_err(torch.from_numpy(got["params"][k]), ref["params"][k])
                                 for k in ref["params"])
            for what, err in errs.items():
                assert err < TOL, f"rank {rank} {variant} {what}: rel err {err:.2e}"
