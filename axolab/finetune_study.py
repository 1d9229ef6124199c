"""The pretrain -> fine-tune memorization study: how many passes over a target set a model
needs before it reproduces the set verbatim, by model size and loss.

The design of the goldfish paper's fine-tuning experiments (Hans et al., 2024, "Be like a
Goldfish, Don't Memorize!", section 4: a pretrained model trained for several epochs on a small
set of target documents, one per padded row, then prompted with each document's beginning) and
of the size trend it relies on (Tirumala et al., 2022, "Memorization Without Overfitting":
larger models memorize the same data in fewer passes).

`python -m axolab.finetune_study [--sizes tiny-llama,mini-llama,small-llama] [--epochs 32]`

1. The corpus is split into a background (pretraining text) and target candidates (every
   ``target_every``-th document), written as jsonl so the recipes can read them as files.
2. Each size is pretrained on the background (run ``<size>-base``).
3. The target set is a recipe of its own: ``targets`` candidate documents, each once, one per
   padded row, nothing else in the training split (``background: false``); as many unseen
   candidates are kept as controls. Its validation split is held-out background text.
4. Each base model is fine-tuned on it for ``epochs`` epochs with each loss (runs
   ``<size>-<loss>``), probing the targets at every epoch boundary, then evaluated.

Every model-touching step is a launched job on ``grid``; this process only writes recipes and
reads the runs' files. Runs that already have an eval.json are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .config import EvalConfig, TrainConfig, config_from_dict


@dataclass
class FinetuneStudy:
    """What the study trains and how; every field has a default that runs on a laptop."""

    sizes: list[str] = field(default_factory=lambda: ["tiny-llama", "mini-llama",
                                                      "small-llama"])
    """Model presets, each pretrained once and fine-tuned once per loss."""
    losses: list[str] = field(default_factory=lambda: ["standard", "goldfish"])
    """Fine-tuning losses ("standard", "goldfish")."""
    goldfish_k: int = 4
    """The goldfish runs drop one token in goldfish_k (hash of the 13 tokens ending at it)."""
    corpus: str = "austen"
    """Embedded corpus split into background and target candidates."""
    max_documents: int | None = 3000
    """Documents of the corpus used (None: all)."""
    target_every: int = 10
    """Every target_every-th document is a target candidate, never pretrained on."""
    targets: int = 32
    """Target documents fine-tuned on (as many more candidates are the unseen controls)."""
    target_tokens: tuple[int, int] = (24, 64)
    """Token lengths of eligible target documents (min, max)."""
    seq_len: int = 128
    """Row length of both datasets."""
    vocab: int = 1024
    """Byte-level BPE trained on the background; the presets' vocabulary size."""
    pretrain_epochs: float = 3.0
    """Passes over the background when pretraining."""
    pretrain_lr: float = 2e-3
    """Peak learning rate of pretraining."""
    pretrain_batch: int = 32
    """Sequences per pretraining step."""
    epochs: int = 32
    """Fine-tuning epochs over the target set (a probe after each)."""
    lr: float = 2e-3
    """Peak learning rate of fine-tuning."""
    batch: int = 4
    """Target documents per fine-tuning step."""
    grid: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    """data, z, y, x of every job."""
    seed: int = 0
    """Seed of the split, the datasets and the runs."""


# Targets are 24-64 tokens: an 8-token prompt and the next 16 tokens to reproduce.
FINETUNE_EVAL = EvalConfig(prefix_len=8, suffix_len=16, curve_prefix_lens=[4, 8],
                           validation_loss=True)


def split_corpus(study: FinetuneStudy, out: Path) -> tuple[Path, Path]:
    """background.jsonl and targets.jsonl under ``out``: every target_every-th document of the
    corpus is a target candidate, the rest are background; written once (temp + rename)."""
    from .data.corpus import documents
    from .data.recipe import CorpusSpec
    from .files import write_text_atomic

    background, targets = out / "background.jsonl", out / "targets.jsonl"
    if background.is_file() and targets.is_file():
        return background, targets
    spec = CorpusSpec(embedded=study.corpus, max_documents=study.max_documents)
    parts: tuple[list[str], list[str]] = ([], [])
    for i, text in enumerate(documents(spec)):
        parts[i % study.target_every == 0].append(json.dumps({"text": text}) + "\n")
    if len(parts[1]) < 2 * study.targets:
        raise ValueError(f"the corpus gives {len(parts[1])} target candidates, fewer than the "
                         f"{2 * study.targets} needed (targets={study.targets} plus as many "
                         "controls); lower target_every or raise max_documents")
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(background, "".join(parts[0]))
    write_text_atomic(targets, "".join(parts[1]))
    return background, targets


def recipes(study: FinetuneStudy, background: Path, targets: Path,
            base_data: Path) -> tuple[dict, dict]:
    """(pretraining recipe, target-set recipe), as mappings for ``recipe_from_dict``."""
    base = {"name": "finetune-base", "corpus": {"files": [str(background)]},
            "tokenizer": {"train_bpe_vocab": study.vocab},
            "packing": {"seq_len": study.seq_len, "validation_fraction": 0.05},
            "seed": study.seed}
    lo, hi = study.target_tokens
    target = {"name": "finetune-target", "corpus": {"files": [str(background)]},
              "tokenizer": {"path": str(base_data / "tokenizer")},
              "canaries": [{"kind": "document", "name": "target", "repetitions": [1],
                            "per_count": study.targets, "controls": study.targets,
                            "min_tokens": lo, "max_tokens": hi,
                            "corpus": {"files": [str(targets)]}}],
              "packing": {"seq_len": study.seq_len, "validation_fraction": 0.05,
                          "rows": "padded", "background": False},
              "seed": study.seed}
    return base, target


def build_dataset(recipe: dict, recipe_dir: Path, data: Path, progress: bool) -> None:
    """Write ``recipe`` to recipe_dir/<name>.yaml (checked first) and build it with
    `axolab data build` in a process of its own: tokenizing loads transformers (and torch),
    which a notebook kernel that only drives jobs should not import."""
    import subprocess

    import yaml

    from .data import recipe_from_dict
    from .files import write_text_atomic

    recipe_from_dict(recipe, recipe_dir)  # a bad recipe fails here, with the field named
    recipe_dir.mkdir(parents=True, exist_ok=True)
    path = recipe_dir / f"{recipe['name']}.yaml"
    write_text_atomic(path, yaml.safe_dump(recipe, sort_keys=False))
    cmd = [sys.executable, "-m", "axolab.cli", "data", "build", str(path), "--out", str(data),
           "--overwrite", *([] if progress else ["--quiet"])]
    done = subprocess.run(cmd, capture_output=not progress, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"building {path} failed (exit {done.returncode}):\n"
                           f"{(done.stderr or '')[-2000:]}")


def _train_config(study: FinetuneStudy, **fields) -> TrainConfig:
    return config_from_dict(TrainConfig, dict(
        steps=None, eval_interval=0, checkpoint_interval=0, keep_checkpoints=1,
        weight_decay=0.0, grid=list(study.grid), seed=study.seed, goldfish_h=13, **fields))


def run_finetune_study(study: FinetuneStudy, out: str | Path, progress: bool = True) -> list[dict]:
    """Run (or continue) the study into ``out``; returns one row per epoch of every fine-tuning
    run (also written to ``out/finetune_study.json``)."""
    from .checkpoint.names import complete_checkpoints
    from .files import write_text_atomic
    from .launch import evaluate, run as launch

    out = Path(out).resolve()  # the recipes name files by absolute path
    background, targets = split_corpus(study, out / "corpus")
    base_data, target_data = out / "data-base", out / "data-target"
    base_recipe, target_recipe = recipes(study, background, targets, base_data)
    for recipe, data in ((base_recipe, base_data), (target_recipe, target_data)):
        if not (data / "stats.json").is_file():
            build_dataset(recipe, out / "recipes", data, progress)
    probe = dataclasses.replace(FINETUNE_EVAL, validation_loss=False, continuations=False)
    rows: list[dict] = []
    for size in study.sizes:
        base_run = out / f"{size}-base"
        if not complete_checkpoints(base_run / "checkpoints"):
            launch(_train_config(study, model=size, data=str(base_data), run_dir=str(base_run),
                                 epochs=study.pretrain_epochs, global_batch=study.pretrain_batch,
                                 lr=study.pretrain_lr, warmup_steps=20, progress=progress),
                   progress=progress, echo=False)
        base_model = complete_checkpoints(base_run / "checkpoints")[-1]
        for loss in study.losses:
            run_dir = out / f"{size}-{loss}"
            if not (run_dir / "eval.json").is_file():
                launch(_train_config(study, model=str(base_model), data=str(target_data),
                                     run_dir=str(run_dir), epochs=study.epochs,
                                     global_batch=study.batch, lr=study.lr, warmup_steps=2,
                                     loss=loss, goldfish_k=study.goldfish_k, progress=progress,
                                     memorization_at_epochs=True, probe=probe.to_dict()),
                       progress=progress, echo=False)
                evaluate(run_dir, target_data, FINETUNE_EVAL, grid=study.grid,
                         progress=progress)
            rows += epoch_rows(run_dir, size, loss)
    write_text_atomic(out / "finetune_study.json", json.dumps(rows, indent=1) + "\n")
    return rows


def epoch_rows(run_dir: Path, size: str, loss: str) -> list[dict]:
    """One row per probed epoch of a fine-tuning run: exact match and token match of the
    targets (trained on once per epoch) and of the controls (never trained on)."""
    from .memorization.curve import read_curve

    summary = json.loads((Path(run_dir) / "eval.json").read_text())
    rows = []
    for record in read_curve(run_dir):
        exact = record["exact_match_by_repetitions"]
        tokens = record["token_match_by_repetitions"]
        rows.append({"model": size, "loss": loss, "epoch": round(record["epoch"]),
                     "step": record["step"], "exact_targets": exact.get("1"),
                     "exact_controls": exact.get("0"), "token_match_targets": tokens.get("1"),
                     "token_match_controls": tokens.get("0"),
                     "val_loss": summary.get("validation_loss")})
    return rows


def plot(rows: list[dict], path: str | Path | None = None):
    """Exact match of the targets after each epoch: a line per model size, a panel per loss
    (seaborn); saved to ``path`` when given."""
    import matplotlib

    if path is not None:
        matplotlib.use("Agg")
    import pandas as pd
    import seaborn as sns

    frame = pd.DataFrame(rows)
    grid = sns.relplot(frame, x="epoch", y="exact_targets", hue="model", col="loss",
                       kind="line", marker="o", height=3.2, aspect=1.2)
    grid.set_axis_labels("fine-tuning epoch", "targets reproduced exactly")
    grid.set(ylim=(-0.03, 1.03))
    if path is not None:
        grid.savefig(path, dpi=120)
    return grid


def table(rows: list[dict]) -> str:
    """Exact match of the targets by epoch, one line per run (the README table)."""
    epochs = sorted({r["epoch"] for r in rows})
    runs = list(dict.fromkeys((r["model"], r["loss"]) for r in rows))
    lines = ["| model | loss | " + " | ".join(f"epoch {e}" for e in epochs) + " | controls |",
             "|---|---|" + "---:|" * (len(epochs) + 1)]
    for model, loss in runs:
        by_epoch = {r["epoch"]: r for r in rows if (r["model"], r["loss"]) == (model, loss)}
        cells = [f"{by_epoch[e]['exact_targets']:.2f}" if e in by_epoch else "" for e in epochs]
        last = by_epoch[max(by_epoch)]
        lines.append(f"| {model} | {loss} | " + " | ".join(cells)
                     + f" | {last['exact_controls']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("results") / "finetune_study")
    ap.add_argument("--sizes", default=",".join(FinetuneStudy().sizes))
    ap.add_argument("--epochs", type=int, default=FinetuneStudy.epochs)
    ap.add_argument("--grid", default="1,1,1,1", help="data,z,y,x of every job")
    args = ap.parse_args(argv)
    study = FinetuneStudy(sizes=args.sizes.split(","), epochs=args.epochs,
                          grid=[int(v) for v in args.grid.split(",")])
    rows = run_finetune_study(study, args.out)
    plot(rows, args.out / "finetune_study.png")
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
