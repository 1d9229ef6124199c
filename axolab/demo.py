"""`make demo`: a small 4D-parallel training run on 4 CPU ranks over the embedded Austen corpus.

The parent process starts the ranks with torchrun (``--standalone``: rendezvous on localhost);
each rank builds the same tiny Llama, parallelizes it on the grid, and trains on its batch shard.
Rank 0 prints the loss and, before the first step, checks it against the serial model.
"""

from __future__ import annotations

import argparse
import gzip
import subprocess
import sys
import time
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "data_recipes" / "corpora" / "austen.txt.gz"


def _args(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--grid", default="1,2,1,2", help="data,z,y,x (product = number of ranks)")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--global-batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def _byte_batches(seq_len: int, batch: int, steps: int, seed: int = 0):
    """Random windows of the corpus as byte ids (vocab 256); the same on every rank."""
    import torch

    data = torch.frombuffer(bytearray(gzip.decompress(CORPUS.read_bytes())), dtype=torch.uint8)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - seq_len - 1, (batch,), generator=g)
        yield torch.stack([data[s:s + seq_len].long() for s in starts.tolist()])


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=172, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg)


def worker(args) -> None:
    import copy

    import torch
    from tqdm import tqdm

    from axolab.parallel import Grid, clip_grad_norm_, parallelize, sync_gradients

    torch.set_num_threads(1)
    grid = Grid.init(*(int(v) for v in args.grid.split(",")))
    serial = _tiny_llama()
    model = parallelize(copy.deepcopy(serial), grid)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1)
    lead = grid.rank == 0
    bar = tqdm(total=args.steps, disable=not lead, desc=f"train grid {grid.shape}", unit="step")
    t0 = time.perf_counter()
    for step, batch in enumerate(_byte_batches(args.seq_len, args.global_batch, args.steps)):
        out = model(input_ids=grid.shard_batch(batch), labels=grid.shard_batch(batch))
        if step == 0 and lead:
            with torch.no_grad():
                ref = serial(input_ids=batch, labels=batch).loss.item()
            tqdm.write(f"step 0: parallel loss {out.loss.item():.6f}, serial model {ref:.6f}")
        out.loss.backward()
        sync_gradients(model)
        norm = clip_grad_norm_(model, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        bar.update()
        if lead and (step + 1) % 10 == 0:
            tqdm.write(f"step {step + 1:4d}  loss {out.loss.item():.4f}  grad norm {norm.item():.3f}")
    bar.close()
    if lead:
        tokens = args.steps * args.global_batch * args.seq_len
        print(f"done: {args.steps} steps, {tokens / (time.perf_counter() - t0):,.0f} tokens/s on "
              f"{grid.size} CPU ranks, final loss {out.loss.item():.4f} "
              f"(uniform over bytes would be {torch.log(torch.tensor(256.0)).item():.4f})")


def main(argv=None) -> int:
    args = _args(argv)
    if args.worker:
        worker(args)
        return 0
    ranks = 1
    for v in args.grid.split(","):
        ranks *= int(v)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={ranks}", "-m", "axolab.demo", "--worker", *(argv or sys.argv[1:])]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
