"""Scanning canaries for verbatim extraction: the one-forward fast path vs a generate() loop.

Scores N sequences (prefix 32, suffix 32 by default) with `axolab.memorization.exact_match(...,
generate=False)` (one teacher-forced forward pass per batch) and with a loop that calls
transformers' `model.generate` on each prompt, checks both give the same `exact` and
`matched_prefix`, and prints the median time of each over --repeats runs and their ratio.
Half the sequences are the model's own greedy continuations, so both outcomes occur.
Usage: python benchmarks/extraction_speed.py [--n 1000] [--model small-llama] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import AutoModelForCausalLM

from axolab.memorization import exact_match
from axolab.presets import model_config


def generate_loop(model, seqs, prefix, suffix):
    exact, matched = [], []
    for row in seqs:
        out = model.generate(row[None, :prefix], do_sample=False, max_new_tokens=suffix,
                             min_new_tokens=suffix, attention_mask=torch.ones(1, prefix,
                                                                              dtype=torch.long))
        ok = (out[0, prefix:] == row[prefix:prefix + suffix]).int()
        matched.append(int(torch.cumprod(ok, 0).sum()))
        exact.append(matched[-1] == suffix)
    return torch.tensor(exact), torch.tensor(matched)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--prefix", type=int, default=32)
    ap.add_argument("--suffix", type=int, default=32)
    ap.add_argument("--model", default="small-llama")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(model_config(args.model)).eval()
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    prompts = torch.randint(0, model.config.vocab_size, (args.n, args.prefix))
    with torch.no_grad():
        half = args.n // 2
        own = model.generate(prompts[:half], do_sample=False, max_new_tokens=args.suffix,
                             min_new_tokens=args.suffix, attention_mask=torch.ones_like(prompts[:half]))
    rand = torch.randint(0, model.config.vocab_size, (args.n - half, args.suffix))
    seqs = torch.cat([own, torch.cat([prompts[half:], rand], 1)])
    fast_t, loop_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        fast = exact_match(model, seqs, args.prefix, args.suffix, batch_size=100, generate=False)
        fast_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            exact, matched = generate_loop(model, seqs, args.prefix, args.suffix)
        loop_t.append(time.perf_counter() - t0)
        assert torch.equal(fast.exact, exact) and torch.equal(fast.matched_prefix, matched), \
            "fast path and generate loop disagree"
    f, g = statistics.median(fast_t), statistics.median(loop_t)
    print(f"{args.n} sequences, prefix {args.prefix}, suffix {args.suffix}, model {args.model} "
          f"({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters), "
          f"{int(fast.exact.sum())} reproduced exactly; identical exact and matched_prefix")
    print(f"median of {args.repeats}: fast path {f:.2f} s, generate loop {g:.2f} s, "
          f"ratio {g / f:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
