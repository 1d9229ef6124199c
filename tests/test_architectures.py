"""The architectures beyond the Llama family (tests/models.py NEW_ARCHITECTURES) against their
unmodified serial transformers models: per architecture, the meta-device load of a Hugging Face
checkpoint, greedy decoding with a KV cache, and a save that plain ``from_pretrained`` reloads
with the serial logits; the planner's shapes against transformers' parameter counts. (One SGD
step on six grids, tied and untied, every overlap on, is in test_parallel_model.py, in the same
pool tasks as the Llama family.)"""

from __future__ import annotations

import pytest
import torch

from models import NEW_ARCHITECTURES, rel_err, tiny_model
from test_parallel_model import TOL

def load_decode_save(shape, root):
    """On every rank: each architecture saved by transformers, loaded onto the grid from the
    meta device, its logits and greedy continuations compared with the serial model's, and
    saved as an axolab checkpoint (read back by the test with plain transformers)."""
    from pathlib import Path

    import torch.distributed as dist

    from axolab.checkpoint import load_pretrained, save_checkpoint
    from axolab.memorization.decode import greedy_generate
    from axolab.parallel import Grid, gather_logits, vocab_shard

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    out = {}
    for kind in NEW_ARCHITECTURES:
        serial = tiny_model(kind, tied=kind.startswith("gemma")).eval()
        hf_dir = Path(root) / kind / "hf"
        if dist.get_rank() == 0:
            serial.save_pretrained(str(hf_dir))
        dist.barrier()
        if grid is None:
            dist.barrier()
            continue
        ids = torch.randint(0, serial.config.vocab_size, (4, 9),
                            generator=torch.Generator().manual_seed(5))
        model = load_pretrained(hf_dir, grid).eval()
        with torch.no_grad():
            ref = serial(input_ids=ids).logits
            got = gather_logits(model(input_ids=grid.shard_batch(ids)).logits,
                                vocab_shard(model), grid)
        greedy = greedy_generate(model, grid.shard_batch(ids), 6)
        want = grid.shard_batch(greedy_generate(serial, ids, 6))
        save_checkpoint(Path(root) / kind / "ckpt", 1, model)
        out[kind] = {"logits": rel_err(got, ref), "greedy_equal": torch.equal(greedy, want)}
        dist.barrier()
    return out


def test_load_decode_and_save_each_architecture(pool8, tmp_path):
    from transformers import AutoModelForCausalLM

    shape = (1, 2, 2, 2)
    for per_rank in pool8.run(load_decode_save, shape, str(tmp_path)):
        if per_rank:
            for kind, r in per_rank.items():
                assert r["logits"] < TOL and r["greedy_equal"], (kind, r)
    ids = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(6))
    for kind in NEW_ARCHITECTURES:
        serial = tiny_model(kind, tied=kind.startswith("gemma")).eval()
        reloaded = AutoModelForCausalLM.from_pretrained(
            str(tmp_path / kind / "ckpt" / "step-00000001")).eval()
        assert type(reloaded) is type(serial)
        with torch.no_grad():
            assert rel_err(reloaded(input_ids=ids).logits, serial(input_ids=ids).logits) < TOL, \
                kind


def test_unsupported_architecture_is_refused_by_name():
    from transformers import GPT2Config, GPT2LMHeadModel

    from axolab.parallel import Grid, parallelize

    model = GPT2LMHeadModel(GPT2Config(n_embd=16, n_layer=1, n_head=2, vocab_size=50))
    with pytest.raises(ValueError, match="no parallelization plan for model_type 'gpt2'.*gpt_neox"):
        parallelize(model, Grid.init(1, 1, 1, 1))


@pytest.mark.parametrize("tied", [False, True])
def test_performance_model_counts_each_architecture(tied):
    """The planner's shapes hold exactly the parameters transformers builds, and the vector
    parameters one rank holds on a grid add up over the grid to the serial ones."""
    from axolab.perfmodel import model_shapes

    for kind in NEW_ARCHITECTURES:
        model = tiny_model(kind, tied)
        shapes = model_shapes(model.config)
        assert shapes.params == sum(p.numel() for p in model.parameters()), kind
        vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
        replicated = 2 * shapes.head_dim * shapes.layers if shapes.qk_norm == "per_head" else 0
        assert shapes.local_vectors(1, 1) == vectors, kind
        # Split vectors add up over the X*Y ranks of a model copy; replicated ones do not.
        assert (shapes.local_vectors(2, 2) - replicated) * 2 == vectors - replicated, kind
