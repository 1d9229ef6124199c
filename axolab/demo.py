"""`make demo`: a complete small memorization study on 4 CPU ranks, report included.

1. builds the ``demo`` recipe: Austen paragraphs with random-token, PIN-secret and paragraph
   canaries injected 1, 4, 16, 32 and 64 times (and never-injected controls);
2. trains Llamas of two sizes from scratch, each with the standard and the goldfish loss, on a
   4D grid of 4 ranks (each run a real multi-process job through ``axolab.launch``);
3. evaluates every canary of every run (exact match, exposure, membership inference);
4. writes ``results/demo/report/`` (``axolab report``) and ``results/demo/summary.md``.

Runs already evaluated are kept, so an interrupted demo continues where it stopped; delete
``results/demo`` to start over.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _args(argv=None):
    p = argparse.ArgumentParser(prog="python -m axolab.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path("results") / "demo")
    p.add_argument("--recipe", type=Path, default=ROOT / "data_recipes" / "demo.yaml")
    p.add_argument("--sizes", default="tiny-llama,mini-llama", help="model presets")
    p.add_argument("--grid", default="2,1,1,2", help="data,z,y,x of every run (4 ranks)")
    p.add_argument("--epochs", type=float, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--global-batch", type=int, default=32)
    p.add_argument("--goldfish-k", type=int, default=4)
    return p.parse_args(argv)


def summary_markdown(rows: list[dict]) -> str:
    """The study as a markdown table: one row per run, random canaries' exact-match rate per
    repetition count, the goldfish runs' validation-loss cost against the standard run of the
    same size, exposure of the PIN secrets and membership-inference AUC."""
    reps = sorted({int(n) for r in rows for n in r["exact_random_by_repetitions"] if int(n) > 0})
    standard = {r["model"]: r["val_loss"] for r in rows if r["loss"] == "standard"}
    top = str(max(reps)) if reps else None
    head = ["run", "val loss", *(f"random x{n}" for n in reps), f"paragraphs x{top}",
            f"PIN exposure x{top} (bits)", "MIA AUC (loss)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cost = ""
        if r["loss"] != "standard" and r["model"] in standard:
            cost = f" ({100 * (r['val_loss'] / standard[r['model']] - 1):+.1f}%)"
        exact = r["exact_random_by_repetitions"]
        paragraphs = r.get("exact_by_kind", {}).get("document", {}).get(top)
        exposure = r["exposure_by_repetitions"].get(top)
        cells = [r["run"], f"{r['val_loss']:.3f}{cost}",
                 *(_fmt(exact.get(str(n))) for n in reps), _fmt(paragraphs),
                 _fmt(exposure, "{:.1f}"), _fmt(r["mia_auc"].get("loss"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value, spec: str = "{:.2f}") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else spec.format(value)


def main(argv=None) -> int:
    args = _args(argv)
    from .report import build_report
    from .study import run_study

    grid = [int(v) for v in args.grid.split(",")]
    sizes = args.sizes.split(",")
    t0 = time.perf_counter()
    print(f"axolab demo: recipe {args.recipe.name}, models {', '.join(sizes)}, standard and "
          f"goldfish (k={args.goldfish_k}) loss, grid (data, z, y, x) = {tuple(grid)} on "
          f"{math.prod(grid)} ranks, {args.epochs:g} epochs -> {args.out}/", flush=True)
    rows = run_study(args.recipe, args.out, sizes, ["standard", "goldfish"], args.epochs,
                     args.lr, args.global_batch, args.goldfish_k, grid=grid)
    report = build_report([args.out], args.out / "report")
    table = summary_markdown(rows)
    (args.out / "summary.md").write_text(
        "Exact-match rate of random canaries by repetitions in training, the paragraph "
        "canaries seen most often, exposure of the PIN secrets and membership-inference AUC.\n\n"
        + table)
    minutes = (time.perf_counter() - t0) / 60
    print(f"\n{table}\nreport: {report / 'index.html'}   ({minutes:.1f} minutes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
