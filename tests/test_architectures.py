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

def _ids(vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, (4, 9), generator=torch.Generator().manual_seed(5))


def load_decode_save(shape, root):
    """On every rank: each architecture, saved by transformers, loaded onto the grid from the
    meta device; its logits and greedy continuations (gathered over the batch), and an axolab
    checkpoint of it. The test compares them with the serial model, run once."""
    from pathlib import Path

    import torch.distributed as dist

    from axolab.checkpoint import load_pretrained, save_checkpoint
    from axolab.memorization.decode import greedy_generate
    from axolab.parallel import Grid, comm, gather_logits, vocab_shard

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    out = {}
    for kind in NEW_ARCHITECTURES:
        hf_dir = Path(root) / kind / "hf"
        if dist.get_rank() == 0:
            tiny_model(kind, tied=kind.startswith("gemma")).save_pretrained(str(hf_dir))
        dist.barrier()
        if grid is None:
            dist.barrier()
            continue
        model = load_pretrained(hf_dir, grid).eval()
        ids = _ids(model.config.vocab_size)
        with torch.no_grad():
            logits = gather_logits(model(input_ids=grid.shard_batch(ids)).logits,
                                   vocab_shard(model), grid)
        greedy = greedy_generate(model, grid.shard_batch(ids), 6)
        greedy = comm.gather_along(greedy, grid.batch, dim=0)[:ids.shape[0]]
        save_checkpoint(Path(root) / kind / "ckpt", 1, model)
        out[kind] = {"logits": logits.numpy(), "greedy": greedy.numpy()}
        dist.barrier()
    return out


def test_load_decode_and_save_each_architecture(pool8, tmp_path):
    from transformers import AutoModelForCausalLM

    from axolab.memorization.decode import greedy_generate

    results = pool8.run(load_decode_save, (1, 2, 2, 2), str(tmp_path))
    probe = torch.randint(0, 99, (2, 7), generator=torch.Generator().manual_seed(6))
    for kind in NEW_ARCHITECTURES:
        serial = tiny_model(kind, tied=kind.startswith("gemma")).eval()
        ids = _ids(serial.config.vocab_size)
        with torch.no_grad():
            logits = serial(input_ids=ids).logits
        greedy = greedy_generate(serial, ids, 6)
        for rank, per_rank in enumerate(results):
            got = per_rank[kind]
            assert rel_err(torch.from_numpy(got["logits"]), logits) < TOL, (kind, rank)
            assert torch.equal(torch.from_numpy(got["greedy"]), greedy), (kind, rank)
        reloaded = AutoModelForCausalLM.from_pretrained(
            str(tmp_path / kind / "ckpt" / "step-00000001")).eval()
        assert type(reloaded) is type(serial)
        with torch.no_grad():
            assert rel_err(reloaded(input_ids=probe).logits, serial(input_ids=probe).logits) \
                < TOL, kind


@pytest.mark.parametrize("tied", [False, True])
def test_performance_model_counts_each_architecture(tied):
    """The planner's shapes hold exactly the parameters (and parameter tensors) transformers
    builds, and the vector parameters one rank holds on a grid add up over the grid to the
    serial ones."""
    from axolab.perfmodel import model_shapes

    for kind in NEW_ARCHITECTURES:
        model = tiny_model(kind, tied)
        shapes = model_shapes(model.config)
        assert shapes.params == sum(p.numel() for p in model.parameters()), kind
        assert shapes.param_tensors == len(list(model.parameters())), kind
        vectors = sum(p.numel() for p in model.parameters() if p.dim() == 1)
        replicated = 2 * shapes.head_dim * shapes.layers if shapes.qk_norm == "per_head" else 0
        assert shapes.local_vectors(1, 1) == vectors, kind
        # Split vectors add up over the X*Y ranks of a model copy; replicated ones do not.
        assert (shapes.local_vectors(2, 2) - replicated) * 2 == vectors - replicated, kind


def test_section_fused_layout_takes_each_sections_slice():
    """Rank y's rows of a [q; k; v] matrix are its y-th slice of each section, stacked, cut
    from the full matrix, read from a file slice by slice, and glued back in stored order;
    written out here with explicit slicing."""
    from axolab.parallel.grid import Axis
    from axolab.parallel.layout import BlockLayout

    sections, cols, Y, X = (8, 4, 4), 6, 2, 3
    full = torch.arange(16 * cols, dtype=torch.float32).view(16, cols)
    blocks = []
    for y in range(Y):
        for x in range(X):
            layout = BlockLayout(16, cols, 16, Axis("y", Y, y, (0, 1), group=object()),
                                 Axis("x", X, x, (0, 1, 2), group=object()),
                                 Axis("z", 1, 0, (0,)), sections)
            offsets = (0, 8, 12)
            want = torch.cat([full[o + y * n // Y:o + (y + 1) * n // Y]
                              for o, n in zip(offsets, sections)])[:, x * 2:(x + 1) * 2]
            got = layout.shard_from_full(full)
            assert torch.equal(got, want.reshape(-1)), (y, x)
            read = layout.shard_from_reader(lambda r0, r1, c0, c1: full[r0:r1, c0:c1],
                                            torch.float32)
            assert torch.equal(read, want.reshape(-1)), (y, x)
            if x == 0:
                blocks.append(torch.cat([full[o + y * n // Y:o + (y + 1) * n // Y]
                                         for o, n in zip(offsets, sections)]))
    assert torch.equal(layout.to_stored(torch.cat(blocks)), full)
    with pytest.raises(ValueError, match="must divide by y=2"):
        BlockLayout(15, cols, 15, Axis("y", 2, 0, (0, 1), group=object()),
                    Axis("x", 1, 0, (0,)), Axis("z", 1, 0, (0,)), (8, 4, 3))
