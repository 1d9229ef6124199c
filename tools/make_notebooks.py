"""Write the shipped notebooks from the cell sources below (run after editing them).

Keeping the sources here keeps notebook diffs reviewable and the notebooks thin: every cell
calls axolab functions.
"""

from pathlib import Path

from axolab.runs.notebook_file import write_notebook

ROOT = Path(__file__).resolve().parents[1]

TRAIN = [
    ("parameters", '''\
# Parameters (papermill overrides these; `axolab run notebooks/train.ipynb -p steps 200`)
recipe = "data_recipes/tiny.yaml"  # dataset recipe, built on first use
data = ""  # a built dataset directory; empty: results/data/<recipe name>
model = "tiny-llama"  # preset name or HF model directory
grid = [1, 1, 1, 1]  # data, z, y, x: one rank per grid point
steps = 50  # optimizer steps
global_batch = 8  # sequences per step
lr = 3e-3  # peak learning rate
loss = "standard"  # "standard" or "goldfish"
checkpoint_interval = 25  # steps between checkpoints (a requeued job resumes from the newest)
run_dir = "results/train"  # set by `axolab run` to the run's own directory'''),
    (None, '''\
from pathlib import Path

from axolab.data import build
from axolab.launch import run

if not data:
    data = f"results/data/{Path(recipe).stem}"
if not (Path(data) / "train").is_dir():
    build(recipe, data)'''),
    (None, '''\
last = run(dict(model=model, data=data, run_dir=run_dir, grid=grid, steps=steps,
                global_batch=global_batch, lr=lr, loss=loss, warmup_steps=min(10, steps // 5),
                checkpoint_interval=checkpoint_interval, eval_interval=max(1, steps // 5)))
last'''),
    (None, '''\
from axolab.metrics import read_metrics

metrics = read_metrics(run_dir)
print(f"loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f} in {metrics[-1]['step']} steps")'''),
]

CANARY_INJECTION = [
    ("parameters", '''\
# Parameters (`axolab run notebooks/canary_injection.ipynb -p recipe data_recipes/memorization.yaml`)
recipe = "data_recipes/tiny.yaml"  # the recipe to build
out = ""  # dataset directory; empty: results/data/<recipe name>
overwrite = False  # rebuild an existing dataset'''),
    (None, '''\
import json
from pathlib import Path

from axolab.data import build, canary_table
from axolab.report.canary_plots import schedule_plot

data_dir = Path(out or f"results/data/{Path(recipe).stem}")
if overwrite or not (data_dir / "canaries.jsonl").is_file():
    build(recipe, data_dir, overwrite=overwrite)
stats = json.loads((data_dir / "stats.json").read_text())
stats'''),
    (None, '''\
# The manifest: every canary, how often it was scheduled and how often it was placed.
table = canary_table(data_dir)
table.groupby(["kind", "repetitions"]).agg(canaries=("id", "size"), injected=("injected", "sum"))'''),
    (None, "schedule_plot(table)"),
    (None, '''\
# Every member canary was placed exactly as often as scheduled; controls never were.
placed_as_scheduled = bool((table["injected"] == table["repetitions"]).all())
print(f"{len(table)} canaries, {int(table['member'].sum())} injected, "
      f"placed as scheduled: {placed_as_scheduled}")
table.sort_values("repetitions", ascending=False).head(8)'''),
]

MEMORIZATION = [
    ("parameters", '''\
# Parameters (`axolab run notebooks/memorization.ipynb -p run_dir results/train`)
run_dir = "results/train"  # a training run with checkpoints
data = "results/data/tiny"  # the dataset it was trained on (its canary manifest)
prefix_len = 8  # prompt tokens
suffix_len = 16  # tokens to reproduce
curve_prefix_lens = [2, 4, 8]  # prefix lengths of the extraction curve
show_canaries = 3  # most repeated canaries to show token by token
interactive = False  # a canary picker (ipywidgets) on a login node'''),
    (None, '''\
from IPython.display import HTML, display

from axolab.data import load_canaries
from axolab.memorization import EvalConfig, continuation_html, continuations, evaluate
from axolab.report import report_plots

summary = evaluate(run_dir, data, EvalConfig(prefix_len=prefix_len, suffix_len=suffix_len,
                                             curve_prefix_lens=curve_prefix_lens))
{key: summary[key] for key in ("exact_match_by_repetitions", "token_match_by_repetitions",
                               "exposure_by_repetitions", "extraction_curve")}'''),
    (None, '''\
plots = report_plots(run_dir)
display(plots["exact_by_repetitions"], plots["extraction_curves"], plots["mia_roc"])
{score: round(r["auc"], 3) for score, r in summary["mia"].items()}'''),
    (None, '''\
# The most repeated canaries, token by token: green where the model reproduces the truth.
most_repeated = sorted(load_canaries(data), key=lambda c: -c.repetitions)[:show_canaries]
shown = continuations(run_dir, data, [c.id for c in most_repeated])
display(HTML("".join(continuation_html(c) for c in shown)))'''),
    (None, '''\
if interactive:
    from axolab.widgets import canary_browser

    display(canary_browser(run_dir, data))'''),
]

GOLDFISH = [
    ("parameters", '''\
# Parameters (`axolab run notebooks/goldfish_mitigation.ipynb -p goldfish_ks "[2,4,8]"`)
recipe = "data_recipes/memorization.yaml"  # canaries at repetition counts 1..64
out = "results/goldfish"  # one run directory per loss
model = "tiny-llama"  # model preset
goldfish_ks = [4]  # one goldfish run per k, next to one standard run
epochs = 6.0  # passes over the training set
lr = 2e-3  # peak learning rate
global_batch = 32  # sequences per step
grid = [1, 1, 1, 1]  # data, z, y, x of every run'''),
    (None, '''\
import pandas as pd

from axolab.report import report_plots
from axolab.study import run_study

rows = run_study(recipe, out, [model], ["standard", "goldfish"], epochs, lr, global_batch,
                 goldfish_ks, grid=grid)
pd.DataFrame([{"run": r["run"], "val_loss": r["val_loss"],
               **{f"exact@{n}": v for n, v in r["exact_random_by_repetitions"].items()}}
              for r in rows])'''),
    (None, '''\
# Validation loss relative to the standard run: the price of leaving tokens out.
standard = next(r["val_loss"] for r in rows if r["loss"] == "standard")
{r["run"]: round(r["val_loss"] / standard - 1, 4) for r in rows}'''),
    (None, '''\
plots = report_plots(out)
display(plots["exact_by_repetitions"], plots["loss_curves"])'''),
]

FINETUNE_405B = [
    ("parameters", '''\
# Parameters. On a cluster: a downloaded Hugging Face checkpoint and the allocation's GPUs.
# On a laptop: a tiny stand-in checkpoint, gpus=2, precision="fp32" (same cells, same code).
model_dir = "checkpoints/Llama-3.1-405B"  # config.json + *.safetensors
data = "results/data/wikipedia-canaries"  # a dataset built by `axolab data build`
run_dir = "results/finetune-405b"  # set by `axolab run`
gpus = 1024  # ranks of the job
machine = "frontier"  # planner preset (axolab plan --help) or a calibrated machine file
global_batch = 1024  # sequences per step
seq_len = 4096  # for the plan; the dataset's own length is used in training
precision = "bf16"  # "bf16" on GPUs, "fp32" on CPUs
goldfish_k = 4  # one token in k left out of the loss
steps = 100  # optimizer steps
lr = 1e-5  # peak learning rate
prefix_len = 32  # memorization probe: prompt tokens
suffix_len = 32  # memorization probe: tokens to reproduce'''),
    (None, '''\
# Plan: every valid grid for these GPUs, ranked by predicted step time, memory checked.
import pandas as pd
from transformers import AutoConfig

from axolab.perfmodel import search

plans = search(AutoConfig.from_pretrained(model_dir), gpus, machine, global_batch, seq_len,
               precision=precision)
best = plans[0]
if not best.fits:
    raise SystemExit(f"no grid of {gpus} GPUs fits: the best needs "
                     f"{best.memory.total / 2**30:.1f} GiB per GPU")
pd.DataFrame([p.to_dict() for p in plans[:5]])'''),
    (None, '''\
# Memory per GPU of the chosen grid (GiB).
grid = [best.grid.data, best.grid.z, best.grid.y, best.grid.x]
print("grid (data, z, y, x):", grid, "micro-batch", best.micro_batch)
{k: round(v, 3) for k, v in best.memory.as_gib().items()}'''),
    (None, '''\
# Fine-tune with the goldfish loss: the checkpoint is loaded sharded (no rank holds a copy).
from axolab.launch import run

last = run(dict(model=model_dir, data=data, run_dir=run_dir, grid=grid, steps=steps, lr=lr,
                global_batch=global_batch, precision=precision, loss="goldfish",
                goldfish_k=goldfish_k, activation_checkpointing=True, warmup_steps=min(10, steps),
                checkpoint_interval=max(1, steps // 4), eval_interval=max(1, steps // 4)))
last'''),
    (None, '''\
# Memorization of the fine-tuned model on the dataset's canaries.
from axolab.memorization import EvalConfig, evaluate
from axolab.report import report_plots

summary = evaluate(run_dir, data, EvalConfig(prefix_len=prefix_len, suffix_len=suffix_len))
display(report_plots(run_dir)["exact_by_repetitions"])
summary["exact_match_by_repetitions"]'''),
]

SCALING_SWEEP = [
    ("parameters", '''\
# Parameters (`axolab run notebooks/scaling_sweep.ipynb -p rank_counts "[1,2,4,8]"`)
recipe = "data_recipes/tiny.yaml"  # dataset recipe the short runs train on
data = ""  # a built dataset directory; empty: results/data/<recipe name>
models = ["tiny-llama", "small-llama"]  # model presets
rank_counts = [1, 2, 4]  # every valid (data, z, y, x) grid of each count is run
grids = []  # or only these grids, e.g. [[1, 1, 2, 2], [2, 1, 1, 2]]
steps = 8  # timed steps per run (the first quarter is warm-up)
global_batch = 8  # sequences per step
precision = "fp32"  # "bf16" on GPUs
machine = "calibrate"  # prediction machine: "calibrate" (measure here), "quick", a preset or file
run_dir = "results/scaling"  # set by `axolab run`; one run directory per point inside'''),
    (None, '''\
from pathlib import Path

from axolab.data import build
from axolab.scaling import rank_agreement, scaling_sweep

if not data:
    data = f"results/data/{Path(recipe).stem}"
if not (Path(data) / "train").is_dir():
    build(recipe, data)
table = scaling_sweep(run_dir, data, models, rank_counts, grids or None, steps=steps,
                      global_batch=global_batch, precision=precision, machine=machine)
table[["model", "ranks", "grid", "measured_tokens_per_s", "predicted_tokens_per_s",
       "measured_mfu", "predicted_mfu", "measured_step_s", "predicted_step_s"]]'''),
    (None, '''\
from axolab.report.scaling_plots import scaling_plot

scaling_plot(table)'''),
    (None, '''\
# Does the model order the grids as measured? Spearman correlation per model and rank count,
# and how much slower the grid it would pick ran than the fastest one.
rank_agreement(table)'''),
]


NOTEBOOKS = {"train.ipynb": TRAIN, "canary_injection.ipynb": CANARY_INJECTION,
             "memorization.ipynb": MEMORIZATION, "goldfish_mitigation.ipynb": GOLDFISH,
             "finetune_405b.ipynb": FINETUNE_405B,
             "scaling_sweep.ipynb": SCALING_SWEEP}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        write_notebook(ROOT / "notebooks" / name, cells)
