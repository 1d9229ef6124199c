"""Peak memory of `axolab.checkpoint.load_pretrained` per rank, against the size of its shard.

Writes a random ~1.1B-parameter Llama checkpoint in Hugging Face format (fp32, ~4.4 GB in
several safetensors shards plus an index), then starts data*z*y*x ranks (4 by default) with
torchrun; each builds the grid, loads the checkpoint with `load_pretrained(path, grid)` and
reports:

  shard      bytes of its local parameters (what it must hold in the end)
  baseline   its RSS after imports and Grid.init, before loading
  peak       its peak RSS (ru_maxrss) right after loading

The target is peak/shard < 1.5 on every rank; the baseline (torch and transformers, ~370 MB)
is part of the peak, so (peak-baseline)/shard is shown too. A sampler thread also records the
largest anonymous and file-backed RSS seen (from /proc/self/status), which tells whether a peak
is memory the loader allocated or pages of the checkpoint files mapped into the process.

Usage:
  python benchmarks/load_pretrained_memory.py [--grid 1,2,2,1] [--repeats 1]
      [--layers 22] [--checkpoint DIR] [--keep] [--no-forward]

Without --checkpoint the checkpoint goes to a temporary directory that is deleted at the end;
with it, an existing checkpoint there is reused (or a new one written and kept).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MARK = "AXOLAB_LOAD_MEMORY "
MB = 2**20


def llama_config(layers: int):
    from transformers import LlamaConfig

    # TinyLlama-like shapes: head counts divide by 2 and 4 so that y in {1, 2, 4} is valid.
    return LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                       num_attention_heads=16, num_key_value_heads=8, vocab_size=32000,
                       max_position_embeddings=2048, tie_word_embeddings=False,
                       attention_dropout=0.0)


def write_checkpoint(directory: Path, layers: int, file_bytes: int = 2**30, seed: int = 0) -> int:
    """Random checkpoint, one tensor generated at a time and at most one file's tensors held;
    returns the number of parameters."""
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    config = llama_config(layers)
    directory.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(directory))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in
                  AutoModelForCausalLM.from_config(config, dtype=torch.float32).state_dict().items()}

    # The file count goes into every file name, so group by size before generating anything.
    groups, size = [[]], 0
    for name, shape in shapes.items():
        nbytes = 4 * _numel(shape)
        if groups[-1] and size + nbytes > file_bytes:
            groups.append([])
            size = 0
        groups[-1].append(name)
        size += nbytes

    gen = torch.Generator().manual_seed(seed)
    weight_map, total = {}, 0
    for i, names in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        tensors = {}
        for name in names:
            shape = shapes[name]
            if name.endswith("norm.weight"):
                tensors[name] = torch.ones(shape)
            else:
                tensors[name] = torch.randn(shape, generator=gen).mul_(0.02)
            weight_map[name] = fname
            total += tensors[name].numel() * 4
        save_file(tensors, str(directory / fname), metadata={"format": "pt"})
        del tensors
        print(f"  wrote {fname}", flush=True)
    (directory / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return sum(_numel(s) for s in shapes.values())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _checkpoint_complete(directory: Path) -> bool:
    index = directory / "model.safetensors.index.json"
    if not (index.is_file() and (directory / "config.json").is_file()):
        return False
    files = set(json.loads(index.read_text())["weight_map"].values())
    return all((directory / f).is_file() for f in files)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _Sampler(threading.Thread):
    """Largest RssAnon and RssFile seen; the kernel keeps a high-water mark of their sum only."""

    def __init__(self, every: float = 0.005):
        super().__init__(daemon=True)
        self.every, self.anon, self.file = every, 0, 0
        self._done = threading.Event()

    def sample(self):
        self.anon = max(self.anon, _status_kib("RssAnon"))
        self.file = max(self.file, _status_kib("RssFile"))

    def run(self):
        while not self._done.is_set():
            self.sample()
            time.sleep(self.every)

    def stop(self):
        self._done.set()
        self.join()
        self.sample()


def worker(args) -> None:
    import torch

    # Imported before the baseline so that it counts the modeling code every user imports too.
    import transformers.models.llama.modeling_llama  # noqa: F401

    from axolab.checkpoint import load_pretrained
    from axolab.parallel import Grid

    torch.set_num_threads(1)

    grid = Grid.init(*args.grid)
    baseline = _status_kib("VmRSS")
    base_anon, base_file = _status_kib("RssAnon"), _status_kib("RssFile")
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    model = load_pretrained(args.checkpoint, grid, dtype=torch.float32)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    sampler.stop()
    shard = sum(p.numel() * p.element_size() for p in model.parameters())  # shared ones once
    forward = None
    if not args.no_forward:
        ids = torch.randint(0, model.config.vocab_size, (grid.batch_shards, 16),
                            generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids))
        forward = bool(torch.isfinite(out.loss).item())
    line = MARK + json.dumps({
        "rank": grid.rank, "coords": grid.coords, "shard": shard, "baseline": baseline * 1024,
        "peak": peak * 1024, "peak_anon": sampler.anon * 1024, "peak_file": sampler.file * 1024,
        "base_anon": base_anon * 1024, "base_file": base_file * 1024,
        "load_s": seconds, "forward_ok": forward}) + "\n"
    sys.stdout.flush()
    # The ranks share one pipe; a single write under PIPE_BUF bytes is not interleaved.
    os.write(sys.stdout.fileno(), line.encode())


def launch(args, checkpoint: Path) -> list[dict]:
    ranks = _numel(args.grid)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           "--nproc-per-node", str(ranks), str(Path(__file__).resolve()), "--worker",
           "--checkpoint", str(checkpoint), "--grid", ",".join(map(str, args.grid))]
    if args.no_forward:
        cmd.append("--no-forward")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    rows = [json.loads(line[len(MARK):]) for line in res.stdout.splitlines()
            if line.startswith(MARK)]
    if res.returncode != 0 or len(rows) != ranks:
        sys.stderr.write(res.stdout[-4000:] + res.stderr[-8000:])
        raise SystemExit(f"the {ranks} ranks failed (exit code {res.returncode})")
    return sorted(rows, key=lambda r: r["rank"])


def _median_rows(runs: list[list[dict]]) -> list[dict]:
    out = []
    for per_rank in zip(*runs):
        row = dict(per_rank[0])
        for k in ("shard", "baseline", "peak", "peak_anon", "peak_file", "base_anon",
                  "base_file", "load_s"):
            row[k] = statistics.median(r[k] for r in per_rank)
        checks = [r["forward_ok"] for r in per_rank if r["forward_ok"] is not None]
        row["forward_ok"] = all(checks) if checks else None
        out.append(row)
    return out


def report(rows: list[dict], checkpoint_bytes: int, n_params: int, repeats: int) -> None:
    what = f"median of {repeats} runs" if repeats > 1 else "1 run"
    print(f"\ncheckpoint: {n_params / 1e9:.3f}B parameters, {checkpoint_bytes / MB:,.0f} MB "
          f"on disk (fp32); {what}")
    head = (f"{'rank':>4} {'coords':>10} {'shard MB':>9} {'baseline MB':>11} {'peak MB':>8} "
            f"{'peak/shard':>10} {'(peak-base)/shard':>17}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['rank']:>4} {','.join(map(str, r['coords'])):>10} {r['shard'] / MB:>9,.0f} "
              f"{r['baseline'] / MB:>11,.0f} {r['peak'] / MB:>8,.0f} "
              f"{r['peak'] / r['shard']:>10.2f} {(r['peak'] - r['baseline']) / r['shard']:>17.2f}")
    worst = max(r["peak"] / r["shard"] for r in rows)
    print(f"worst peak/shard: {worst:.2f} (target < 1.5: {'met' if worst < 1.5 else 'NOT met'})")
    print("\nwhere the peak is (sampled every 5 ms, so a short spike can be missed):")
    print(f"{'rank':>4} {'base anon MB':>12} {'peak anon MB':>12} {'anon/shard':>10} "
          f"{'base file MB':>12} {'peak file MB':>12} {'load s':>7} {'forward':>8}")
    for r in rows:
        fwd = "skipped" if r["forward_ok"] is None else ("ok" if r["forward_ok"] else "FAILED")
        print(f"{r['rank']:>4} {r['base_anon'] / MB:>12,.0f} {r['peak_anon'] / MB:>12,.0f} "
              f"{r['peak_anon'] / r['shard']:>10.2f} {r['base_file'] / MB:>12,.0f} "
              f"{r['peak_file'] / MB:>12,.0f} {r['load_s']:>7.1f} {fwd:>8}")
    print("anon: memory the process allocated; file: pages of the safetensors files mapped into it "
          "(page cache, shared between ranks and reclaimable, but counted in RSS)")


def _grid_arg(text: str) -> tuple[int, int, int, int]:
    from axolab.grid_shape import GridShape

    try:
        return GridShape.parse(text).dims
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--grid: {e}") from None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--grid", type=_grid_arg, default=(1, 2, 2, 1), help="data,z,y,x")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--layers", type=int, default=22)
    ap.add_argument("--checkpoint", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep a temporary checkpoint")
    ap.add_argument("--no-forward", action="store_true", help="skip the forward-pass check")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args)

    start = time.perf_counter()
    temporary = args.checkpoint is None
    checkpoint = Path(tempfile.mkdtemp(prefix="axolab-load-memory-")) if temporary \
        else args.checkpoint
    try:
        if _checkpoint_complete(checkpoint):
            print(f"reusing the checkpoint in {checkpoint}")
        else:
            print(f"writing a {args.layers}-layer Llama checkpoint to {checkpoint}")
            t = time.perf_counter()
            write_checkpoint(checkpoint, args.layers)
            print(f"  done in {time.perf_counter() - t:.0f} s")
        index = json.loads((checkpoint / "model.safetensors.index.json").read_text())
        n_params = index["metadata"]["total_size"] // 4
        checkpoint_bytes = sum(p.stat().st_size for p in checkpoint.glob("*.safetensors"))
        runs = []
        for i in range(args.repeats):
            t = time.perf_counter()
            runs.append(launch(args, checkpoint))
            print(f"run {i + 1}/{args.repeats}: {_numel(args.grid)} ranks on grid {args.grid} "
                  f"in {time.perf_counter() - t:.0f} s", flush=True)
        report(_median_rows(runs), checkpoint_bytes, n_params, args.repeats)
    finally:
        if temporary and not args.keep:
            shutil.rmtree(checkpoint, ignore_errors=True)
    print(f"\ntotal wall time: {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
