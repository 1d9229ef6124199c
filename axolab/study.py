"""A small memorization study: model sizes x losses on one recipe, trained and evaluated.

`python -m axolab.study [--sizes tiny-llama,small-llama] [--epochs 4] [--out results/study]`
builds the recipe's dataset, trains each (size, loss) run from scratch, evaluates every canary
and prints exact-match rate by repetition count next to validation loss. Each run is an
ordinary run directory (config.json, metrics.jsonl, memorization.jsonl, eval.json), so
`axolab report` can plot it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from .config import EvalConfig, TrainConfig, config_from_dict
from .data import build
from .memorization.eval_files import records_match_summary
from .metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]


def _variants(losses: list[str], goldfish_ks: list[int]) -> list[tuple[str, int, str]]:
    """(loss, k, run-name suffix) per run of one size; with one k the name carries no k."""
    out = []
    for loss in losses:
        if loss != "goldfish":
            out.append((loss, goldfish_ks[0], loss))
        for k in goldfish_ks if loss == "goldfish" else []:
            out.append((loss, k, "goldfish" if len(goldfish_ks) == 1 else f"goldfish-k{k}"))
    return out


# How the study probes canaries: short prompts, since its canaries are 24-60 tokens long.
STUDY_EVAL = EvalConfig(prefix_len=8, suffix_len=16, curve_prefix_lens=[4, 8],
                        validation_loss=True)


def run_study(recipe: Path, out: Path, sizes: list[str], losses: list[str], epochs: float,
              lr: float, global_batch: int, goldfish_k: int | list[int] = 4,
              progress: bool = True, grid: list[int] | None = None,
              probe_every_epoch: bool = True) -> list:
    """Train and evaluate every (size, loss[, goldfish k]) run into ``out``; runs that already
    have an eval.json are kept. Training and evaluation are launched jobs on ``grid``, so the
    calling process (a notebook kernel) never holds a model. ``probe_every_epoch``: the runs
    probe the canaries at every epoch boundary (memorization_curve.jsonl)."""
    from .launch import evaluate, run as launch

    out, grid = Path(out), list(grid or [1, 1, 1, 1])
    probe = dataclasses.replace(STUDY_EVAL, validation_loss=False, continuations=False)
    ks = [goldfish_k] if isinstance(goldfish_k, int) else list(goldfish_k)
    data = out / "data"
    if not (data / "canaries.jsonl").is_file():
        build(recipe, data, overwrite=True, progress=progress)
    rows = []
    for size in sizes:
        for loss, k, suffix in _variants(losses, ks):
            run_dir = out / f"{size}-{suffix}"
            cfg = config_from_dict(TrainConfig, dict(
                model=size, data=str(data), run_dir=str(run_dir), steps=None, epochs=epochs,
                global_batch=global_batch, lr=lr, warmup_steps=20, eval_interval=0,
                checkpoint_interval=0, keep_checkpoints=1, loss=loss, goldfish_k=k,
                goldfish_h=13, progress=progress, weight_decay=0.0, grid=grid,
                memorization_at_epochs=probe_every_epoch, probe=probe.to_dict()))
            todo = pending(run_dir)
            if todo == "train":
                launch(cfg, progress=progress, echo=False)
            if todo is not None:
                evaluate(run_dir, data, STUDY_EVAL, grid=grid, progress=progress)
            summary = json.loads((run_dir / "eval.json").read_text())
            val = summary["validation_loss"]
            rows.append({"model": size, "loss": loss, "goldfish_k": k if loss == "goldfish" else None,
                         "run": run_dir.name, "val_loss": val,
                         "train_loss": read_metrics(run_dir)[-1]["loss"],
                         "exact_by_repetitions": summary["exact_match_by_repetitions"],
                         "exact_random_by_repetitions": _exact_by_repetitions(run_dir, "random"),
                         "exact_by_kind": {kind: _exact_by_repetitions(run_dir, kind)
                                           for kind in _kinds(run_dir)},
                         "exposure_by_repetitions": summary["exposure_by_repetitions"],
                         "mia_auc": {k: v["auc"] for k, v in summary["mia"].items()}})
    (out / "study.json").write_text(json.dumps(rows, indent=2))
    return rows


def pending(run_dir: Path) -> str | None:
    """What a study run still needs: "train" (no evaluation yet: the run is trained, or its
    training resumed, then evaluated), "evaluate" (evaluated before the study asked for the
    validation loss, or its memorization.jsonl is not the one eval.json summarises: an
    evaluation stopped between the two files), or None (kept as it is)."""
    summary_file = Path(run_dir) / "eval.json"
    if not summary_file.is_file():
        return "train"
    summary = json.loads(summary_file.read_text())
    if "validation_loss" not in summary or not records_match_summary(run_dir, summary):
        return "evaluate"
    return None


def _exact_by_repetitions(run_dir: Path, kind: str) -> dict[str, float]:
    """Exact-match rate by repetition count over the canaries of one kind (from the per-canary
    records, so it also works for runs evaluated before eval.json had rates per kind)."""
    hits: dict[int, list[bool]] = {}
    for line in (run_dir / "memorization.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["kind"] == kind:
            hits.setdefault(record["repetitions"], []).append(bool(record["exact"]))
    return {str(n): sum(v) / len(v) for n, v in sorted(hits.items())}


def _kinds(run_dir: Path) -> list[str]:
    lines = (run_dir / "memorization.jsonl").read_text().splitlines()
    return sorted({json.loads(line)["kind"] for line in lines})


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--recipe", type=Path, default=ROOT / "data_recipes" / "memorization.yaml")
    ap.add_argument("--out", type=Path, default=Path("results") / "study")
    ap.add_argument("--sizes", default="tiny-llama,small-llama,medium-llama")
    ap.add_argument("--losses", default="standard,goldfish")
    ap.add_argument("--epochs", type=float, default=6)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--goldfish-k", default="4", help="k of the goldfish runs; a list sweeps k")
    ap.add_argument("--grid", default="1,1,1,1", help="data,z,y,x of every run")
    args = ap.parse_args(argv)
    rows = run_study(args.recipe, args.out, args.sizes.split(","), args.losses.split(","),
                     args.epochs, args.lr, args.global_batch,
                     [int(k) for k in args.goldfish_k.split(",")],
                     grid=[int(v) for v in args.grid.split(",")])
    for title, key in (("exact match of random canaries", "exact_random_by_repetitions"),
                       ("exact match of all canaries", "exact_by_repetitions"),
                       ("exposure of secrets (bits)", "exposure_by_repetitions")):
        reps = sorted({int(k) for r in rows for k in r[key]})
        print(f"\n{title}, by repetition count")
        print(f"{'run':24s} {'val':>6s} " + " ".join(f"{n:>5d}" for n in reps))
        for r in rows:
            print(f"{r['run']:24s} {r['val_loss']:6.3f} " +
                  " ".join(f"{r[key].get(str(n), float('nan')):5.2f}" for n in reps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
