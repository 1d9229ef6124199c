"""Streaming dataset build: throughput and peak memory on a corpus far larger than the tiny one.

Generates a ~SIZE MB plain-text corpus (Austen paragraphs reshuffled, so no two files are
identical), trains a byte-level BPE on the embedded corpus once, then measures side by side:

  raw       the tokenizers library's batch encoder over the same documents (the speed limit)
  build     `axolab data build` of a recipe with all three canary kinds (tokenize, hold out,
            inject, pack, save), in a child process so its peak RSS can be read

Prints the median of --repeats runs of each, tokens/s, their ratio, and the build's peak RSS.
Usage: python benchmarks/data_build.py [--size-mb 500] [--repeats 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AUSTEN = ROOT / "data_recipes" / "corpora" / "austen.txt.gz"


def make_corpus(dirpath: Path, size_mb: int) -> list[Path]:
    paragraphs = [p.strip() for p in gzip.decompress(AUSTEN.read_bytes()).decode().split("\n\n")
                  if p.strip()]
    files, written, i = [], 0, 0
    rng = random.Random(0)
    while written < size_mb * 2**20:
        rng.shuffle(paragraphs)
        path = dirpath / f"part{i:03d}.txt"
        text = "\n\n".join(paragraphs)
        path.write_text(text)
        written += len(text.encode())
        files.append(path)
        i += 1
    return files


def raw_tokenize(tokenizer_dir: Path, files: list[Path]) -> tuple[float, int]:
    from transformers import AutoTokenizer

    backend = AutoTokenizer.from_pretrained(str(tokenizer_dir)).backend_tokenizer
    t0, tokens = time.perf_counter(), 0
    for f in files:
        docs = [d for d in f.read_text().split("\n\n") if d]
        for k in range(0, len(docs), 512):
            tokens += sum(len(e.ids) for e in backend.encode_batch(docs[k:k + 512],
                                                                   add_special_tokens=False))
    return time.perf_counter() - t0, tokens


def timed_build(recipe_path: Path, out: Path) -> tuple[float, int, float]:
    code = ("import sys, time, json; from axolab.data import build; t=time.perf_counter(); "
            "o=build(sys.argv[1], sys.argv[2], overwrite=True, progress=False); "
            "print(json.dumps([time.perf_counter()-t, json.load(open(o/'stats.json'))]))")
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    res = subprocess.run([sys.executable, "-c", code, str(recipe_path), str(out)],
                         capture_output=True, text=True, check=True)
    peak_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    seconds, stats = json.loads(res.stdout.strip().splitlines()[-1])
    tokens = stats["train_tokens"] + stats["validation_tokens"]
    return seconds, tokens, max(peak_kb, before) / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=int, default=500)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workdir", type=Path, default=None)
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="axolab-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    from axolab.data.tokenizer import train_byte_level_bpe

    files = make_corpus(work, args.size_mb)
    size = sum(f.stat().st_size for f in files) / 2**20
    tok = train_byte_level_bpe((p for p in gzip.decompress(AUSTEN.read_bytes()).decode()
                                .split("\n\n")), 8192)
    tok.save_pretrained(str(work / "tokenizer"))
    recipe = {
        "name": "bench", "corpus": {"files": [str(f) for f in files]},
        "tokenizer": {"path": str(work / "tokenizer")},
        "canaries": [
            {"kind": "secret", "template": "my PIN is {d6}", "repetitions": [1, 8, 64],
             "per_count": 10},
            {"kind": "random", "length": 32, "repetitions": [1, 8, 64], "per_count": 10},
            {"kind": "document", "min_tokens": 64, "max_tokens": 500,
             "repetitions": [1, 8, 64], "per_count": 10}],
        "packing": {"seq_len": 2048, "validation_fraction": 0.01},
    }
    import yaml

    (work / "bench.yaml").write_text(yaml.safe_dump(recipe))
    print(f"corpus: {len(files)} files, {size:,.0f} MB of text in {work}")
    raw, built, rss = [], [], []
    for r in range(args.repeats):
        s, n = raw_tokenize(work / "tokenizer", files)
        raw.append(n / s)
        s, n, peak = timed_build(work / "bench.yaml", work / "out")
        built.append(n / s)
        rss.append(peak)
        print(f"repeat {r + 1}: raw {raw[-1]:,.0f} tok/s, build {built[-1]:,.0f} tok/s "
              f"({s:.1f} s, {n:,} tokens), peak RSS so far {peak:,.0f} MB")
    raw_m, build_m = statistics.median(raw), statistics.median(built)
    print(f"median raw tokenizers batch encode: {raw_m:,.0f} tokens/s")
    print(f"median axolab data build:           {build_m:,.0f} tokens/s "
          f"(raw/build = {raw_m / build_m:.2f}x, target <= 2x)")
    print(f"peak RSS of the build process:      {max(rss):,.0f} MB (target < 2048 MB)")


if __name__ == "__main__":
    main()
