"""The planner against the published AxoNN runs on Perlmutter, Frontier and Alps.

For each headline run of the AxoNN papers, the planner (``axolab.perfmodel.search``) ranks
every 4D grid of the run's GPU count on the machine preset, for the run's model, batch and
sequence length (bf16, activation checkpointing, every overlap on), and the best grid's
predicted flop/s is compared with the paper's figure. Flop/s are counted the way each paper
counts them (see ``PublishedRun.flops_convention``), from the same step time.

Usage: python benchmarks/published_runs.py [--json results/bench/published_runs.json]
Exit status 0 when every prediction is within the tolerance (20%), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from axolab.files import write_text_atomic
from axolab.perfmodel import GridShape, ModelShapes, Workload, get_machine, predict, search

TOLERANCE = 0.20


@dataclass(frozen=True)
class PublishedRun:
    """One published measurement and everything the planner needs to predict it."""

    name: str
    """Short label."""
    source: str
    """Paper, section / table / figure the numbers come from."""
    machine: str
    """axolab.perfmodel preset."""
    gpus: int
    """GPUs (GCDs on Frontier)."""
    model: ModelShapes
    """The model's shapes as the paper gives them."""
    seq_len: int
    """Tokens per sequence."""
    global_batch: int
    """Sequences per optimizer step."""
    flops_per_s: float
    """The paper's sustained figure (total over all GPUs, bf16)."""
    flops_convention: str
    """"model": 6 x parameters x tokens plus attention (what axolab reports as MFU);
    "hardware": with the recomputed forward of activation checkpointing (8 x ...)."""
    paper_grid: tuple[int, int, int, int] | None = None
    """(data, z, y, x) the paper used, when it says."""


def gpt(name: str, hidden: int, layers: int, heads: int, vocab: int = 50304) -> ModelShapes:
    """A GPT-style decoder (4h MLP without a gate, biases, LayerNorms, learned positions
    omitted: they do not take part in matmuls)."""
    return ModelShapes(name, hidden=hidden, intermediate=4 * hidden, layers=layers, heads=heads,
                       kv_heads=heads, head_dim=hidden // heads, vocab=vocab,
                       tied_embeddings=True, gated_mlp=False, linear_bias=True,
                       layer_norm_vectors=4, final_norm_vectors=2)


def step_flops(run: PublishedRun) -> float:
    """FLOPs of one step under the paper's convention."""
    m, tokens = run.model, run.global_batch * run.seq_len
    attention = 12.0 * m.layers * m.hidden * run.seq_len  # per token, forward + backward
    per_token = 6.0 * m.matmul_params + attention
    if run.flops_convention == "hardware":  # one more forward of every layer
        per_token += (2.0 * m.matmul_params + attention / 3)
    elif run.flops_convention != "model":
        raise ValueError(f"{run.name}: flops_convention {run.flops_convention!r}")
    return per_token * tokens


RUNS: tuple[PublishedRun, ...] = ()  # filled below from the papers


def evaluate(run: PublishedRun) -> dict:
    machine = get_machine(run.machine)
    rows = search(run.model, run.gpus, machine, global_batch=run.global_batch,
                  seq_len=run.seq_len, precision="bf16", activation_checkpointing=True)
    best = rows[0]
    flops = step_flops(run)
    predicted = flops / best.step_time_s
    out = {"name": run.name, "source": run.source, "machine": run.machine, "gpus": run.gpus,
           "model": asdict(run.model), "seq_len": run.seq_len, "global_batch": run.global_batch,
           "paper_flops_per_s": run.flops_per_s, "best_grid": str(best.grid),
           "best_fits": best.fits, "predicted_step_s": best.step_time_s,
           "predicted_flops_per_s": predicted, "error": predicted / run.flops_per_s - 1,
           "paper_percent_of_peak": run.flops_per_s / (run.gpus * machine.peak_flops_bf16),
           "predicted_percent_of_peak": predicted / (run.gpus * machine.peak_flops_bf16)}
    if run.paper_grid:
        work = Workload(run.global_batch, run.seq_len, micro_batch=best.micro_batch)
        try:
            theirs = predict(run.model, GridShape(*run.paper_grid), work, machine)
            out["paper_grid"] = str(GridShape(*run.paper_grid))
            out["paper_grid_predicted_flops_per_s"] = flops / theirs.step_time_s
        except ValueError as e:
            out["paper_grid_error"] = str(e)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", help="also write the rows to this JSON file")
    a = ap.parse_args(argv)
    rows = [evaluate(run) for run in RUNS]
    print(f"{'run':<34} {'GPUs':>6} {'paper':>11} {'predicted':>11} {'error':>7} "
          f"{'% peak':>13} best grid")
    for r in rows:
        ok = abs(r["error"]) <= TOLERANCE
        print(f"{r['name']:<34} {r['gpus']:>6} {r['paper_flops_per_s'] / 1e15:8.1f} PF "
              f"{r['predicted_flops_per_s'] / 1e15:8.1f} PF {r['error']:+7.1%} "
              f"{r['paper_percent_of_peak']:5.1%}/{r['predicted_percent_of_peak']:5.1%} "
              f"{r['best_grid']}{'' if r['best_fits'] else ' (does not fit)'}"
              f"{'' if ok else '  OUTSIDE 20%'}")
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(Path(a.json), json.dumps(rows, indent=2) + "\n")
    return 0 if all(abs(r["error"]) <= TOLERANCE for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
