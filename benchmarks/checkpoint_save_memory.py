"""Device memory a checkpoint save adds per rank: the streamed save against the old all-gather.

Four gloo CPU ranks build a random-init Llama (~77 MB of fp32 weights, two 32.8 MB vocabulary
matrices), take one AdamW step, and save a checkpoint on each grid with a small chunk. On every
rank the same meter (axolab.checkpoint.meter.AllocationMeter: live bytes of the storages ATen
ops create on the grid's device) measures

  save peak   the most bytes the streamed save held on the device at once (host buffers of
              the tensors a writer assembles are excluded: on a GPU they are host memory)
  old peak    the same for the previous method, module.full_tensor of every parameter and
              moment (an all-gather of each full tensor on every rank of the model group)

next to the chunk and the largest full tensor. The target is save peak <= chunk on every rank;
the old method needs at least the largest tensor on every rank. (gloo's gather also stages the
pieces inside the backend, which no Python-side meter sees; NCCL receives in place.)

Usage:
  python benchmarks/checkpoint_save_memory.py [--chunk-mib 1] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from axolab.net import free_port

GRIDS = [(1, 2, 2, 1), (1, 1, 2, 2), (1, 2, 1, 2)]  # Z*Y, Y*X, Z*X (data, z, y, x)
MIB = 2**20


def llama(seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=4,
                         num_attention_heads=8, num_key_value_heads=4, vocab_size=32000,
                         max_position_embeddings=128, tie_word_embeddings=False)
    return LlamaForCausalLM(config).float()


def _old_peak(model, opt, grid) -> int:
    """Device peak of the previous save's assembly: every full tensor gathered on every rank."""
    from axolab.checkpoint.meter import AllocationMeter
    from axolab.parallel import parallel_parameters

    with AllocationMeter(grid.device) as meter:
        for _, module, attr, param in parallel_parameters(model):
            module.full_tensor(attr)
            for value in opt.state[param].values():
                if value.shape == param.shape:
                    module.full_tensor(attr, value)
    return meter.peak_bytes


def worker(rank: int, world: int, port: int, chunk: int, out_dir: str, queue) -> None:
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    from axolab.checkpoint import SaveReport, save_checkpoint
    from axolab.parallel import Grid, parallelize, sync_gradients

    rows = []
    for shape in GRIDS:
        grid = Grid.init(*shape)
        model = parallelize(llama(), grid)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        ids = torch.randint(0, 32000, (grid.batch_shards * 2, 16),
                            generator=torch.Generator().manual_seed(1))
        model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids)).loss.backward()
        sync_gradients(model)
        opt.step()
        report = SaveReport()
        dist.barrier()
        t0 = time.perf_counter()
        save_checkpoint(Path(out_dir) / "x".join(map(str, shape)), 1, model, opt,
                        chunk_bytes=chunk, report=report)
        seconds = time.perf_counter() - t0
        rows.append({"grid": list(shape), "rank": rank, "coords": list(grid.coords),
                     "chunk_bytes": chunk, "largest_tensor_bytes": report.largest_tensor_bytes,
                     "save_peak_bytes": report.peak_device_bytes,
                     "old_peak_bytes": _old_peak(model, opt, grid),
                     "written_bytes": report.bytes_written, "save_s": seconds})
        grid.destroy()
        del model, opt
    queue.put(rows)
    dist.destroy_process_group()



def run(chunk: int) -> list[dict]:
    import torch.multiprocessing as mp

    world = 4
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    with tempfile.TemporaryDirectory() as out_dir:
        procs = [ctx.Process(target=worker, args=(r, world, port, chunk, out_dir, queue))
                 for r in range(world)]
        for p in procs:
            p.start()
        rows = sum((queue.get(timeout=600) for _ in procs), [])
        for p in procs:
            p.join(timeout=60)
        if any(p.exitcode != 0 for p in procs):
            raise SystemExit(f"ranks exited with {[p.exitcode for p in procs]}")
    return sorted(rows, key=lambda r: (r["grid"], r["rank"]))


def table(rows: list[dict]) -> str:
    head = (f"{'grid DxZxYxX':>12} {'rank':>4} {'largest MiB':>11} {'chunk MiB':>9} "
            f"{'save peak MiB':>13} {'old peak MiB':>12} {'old/save':>8} {'wrote MiB':>9} "
            f"{'save s':>6}")
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = r["old_peak_bytes"] / r["save_peak_bytes"] if r["save_peak_bytes"] else float("inf")
        lines.append(f"{'x'.join(map(str, r['grid'])):>12} {r['rank']:>4} "
                     f"{r['largest_tensor_bytes'] / MIB:>11.2f} {r['chunk_bytes'] / MIB:>9.2f} "
                     f"{r['save_peak_bytes'] / MIB:>13.3f} {r['old_peak_bytes'] / MIB:>12.2f} "
                     f"{ratio:>8.1f} {r['written_bytes'] / MIB:>9.1f} {r['save_s']:>6.2f}")
    ok = all(r["save_peak_bytes"] <= r["chunk_bytes"] for r in rows)
    lines.append(f"save peak <= chunk on every rank: {'yes' if ok else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunk-mib", type=float, default=1.0, help="save chunk (MiB)")
    parser.add_argument("--out", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    rows = run(int(args.chunk_mib * MIB))
    print(table(rows))
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["save_peak_bytes"] <= r["chunk_bytes"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
