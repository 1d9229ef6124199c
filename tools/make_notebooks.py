"""Write the shipped notebooks from the cell sources below (run after editing them).

Keeping the sources here keeps notebook diffs reviewable and the notebooks thin: every code
cell calls axolab functions, and the markdown cells say what each step does and why, how to
read its output and what to change on a cluster. A cell is a ``(kind, source)`` pair: ``MD``
for markdown, ``"parameters"`` for the defaults papermill overrides, ``None`` for code.
"""

from pathlib import Path

from axolab.runs.notebook_file import MARKDOWN as MD, write_notebook

ROOT = Path(__file__).resolve().parents[1]

TRAIN = [
    (MD, '''\
# Train a model on a grid of ranks

Trains one model on a dataset with injected canaries and leaves a run directory for
`notebooks/memorization.ipynb` to evaluate: `config.json`, `metrics.jsonl` (one line per
step), `checkpoints/step-N/` and, when `memorization_interval` > 0,
`memorization_curve.jsonl`. The Slurm job arrays of a sweep run this notebook, one point each.

Training is a launched SPMD job, one process per rank of `grid`. This kernel only starts it
and follows `metrics.jsonl`; it never imports torch or holds the model. Running the notebook
again with the same `run_dir` resumes from the newest complete checkpoint.'''),
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
precision = "fp32"  # "fp32", or "bf16" autocast on GPUs
checkpoint_interval = 25  # steps between checkpoints (a requeued job resumes from the newest)
memorization_interval = 0  # probe the canaries every this many steps (0: never)
run_dir = "results/train"  # set by `axolab run` to the run's own directory'''),
    (MD, '''\
**On a cluster.**
- `grid = [data, z, y, x]`: the job has data·z·y·x ranks, one per GPU. The global batch is
  split over data·z, so `global_batch` must divide by it. `axolab plan --model MODEL --gpus N
  --machine frontier` ranks the grids by predicted step time and checks memory per GPU.
- `precision = "bf16"`: bf16 autocast with fp32 master weights and fp32 gradient reduction.
- `model`: a larger preset (`small-llama`, `llama-3.1-8b`, ...) or a Hugging Face model
  directory. Its vocabulary must match the dataset's tokenizer: the Llama 3.1 presets go with
  a recipe tokenized for Llama 3 (`data_recipes/wikipedia-canaries.yaml`).
- In batch: `axolab slurm submit notebooks/train.ipynb -p grid "[2,1,2,2]" -p precision bf16
  --nodes 2 --ntasks-per-node 4 --gpus-per-node 4 --time 04:00:00`. The kernel runs inside
  the allocation and starts the ranks with `srun` over it, so nodes × tasks per node must be
  at least the grid's ranks. (`--grid` of `axolab slurm submit` is a sweep axis, e.g.
  `--grid lr=1e-3,3e-3`; the notebook's grid is set with `-p grid`.) Near its time limit the
  job checkpoints and requeues itself; the next attempt resumes.'''),
    (MD, '''\
## 1. The dataset

If `data` is not a built dataset yet, the recipe is built first (`axolab.data.build`): the
corpus is tokenized, the canaries are injected at the recipe's repetition counts and
everything is packed into fixed-length sequences. The same recipe and seed give the same
bytes. `notebooks/canary_injection.ipynb` shows what was injected where.'''),
    (None, '''\
from pathlib import Path

from axolab.data import build
from axolab.launch import run

if not data:
    data = f"results/data/{Path(recipe).stem}"
if not (Path(data) / "train").is_dir():
    build(recipe, data)'''),
    (MD, '''\
## 2. Train

`axolab.launch.run` writes the run's config and starts the ranks (local processes on this machine,
`srun` inside a Slurm allocation); the progress bar follows `metrics.jsonl`. The cell's value
is the last metrics record (loss, learning rate, gradient norm, tokens/s, MFU, memory). A
failing rank raises `LaunchError` with its traceback; every rank's log is in `RUN_DIR/logs/`.
Validation loss is measured every fifth of the run.

With `memorization_interval = N` the ranks also score the dataset's canaries with the live
model every N steps and append a record to `memorization_curve.jsonl` (exact match by
repetition count and more, docs/memorization-files.md). The trained weights are the same with
probes on or off; each probe costs about one evaluation of the canaries.'''),
    (None, '''\
last = run(dict(model=model, data=data, run_dir=run_dir, grid=grid, steps=steps,
                global_batch=global_batch, lr=lr, loss=loss, precision=precision,
                warmup_steps=min(10, steps // 5), checkpoint_interval=checkpoint_interval,
                eval_interval=max(1, steps // 5), memorization_interval=memorization_interval))
last'''),
    (MD, '''\
## 3. The loss

First and last training loss, read from `metrics.jsonl` (no model needed). A loss that does
not fall points at the learning rate or the data; `axolab report RUN_DIR` plots the whole
curve with the validation points. Next: `axolab run notebooks/memorization.ipynb -p run_dir
RUN_DIR -p data DATA`.'''),
    (None, '''\
from axolab.metrics import read_metrics

metrics = read_metrics(run_dir)
print(f"loss {metrics[0]['loss']:.3f} -> {metrics[-1]['loss']:.3f} in {metrics[-1]['step']} steps")'''),
]

CANARY_INJECTION = [
    (MD, '''\
# Build a dataset with canaries

A canary is a sequence inserted into the training data a known number of times. Because the
count is known, memorization can be measured against it: how often must a sequence be seen
before a model reproduces it? This notebook builds a recipe's dataset and checks that every
canary was placed as scheduled.

A recipe (YAML in `data_recipes/`) names the corpus, the tokenizer, the canaries and the
packing. Canaries come in three kinds: *secret* (a template such as `"my PIN is {d6}"` with
random digits; never-injected fillings of the same template are the candidates that exposure
ranks the secret among), *random* (uniform random tokens) and *document* (corpus documents
held out and injected). For every injected canary a control of the same kind is kept out of
the training data (0 repetitions): a non-member for membership inference and the floor for
exact match.

The dataset directory holds `train/`, `validation/`, `tokenizer/`, `recipe.yaml` (resolved),
`canaries.jsonl` (the manifest: each canary's text, token ids, repetitions and the
`[sequence, offset]` of every occurrence) and `stats.json`.'''),
    ("parameters", '''\
# Parameters (`axolab run notebooks/canary_injection.ipynb -p recipe data_recipes/memorization.yaml`)
recipe = "data_recipes/tiny.yaml"  # the recipe to build
out = ""  # dataset directory; empty: results/data/<recipe name>
overwrite = False  # rebuild an existing dataset'''),
    (MD, '''\
**On a cluster.** The build runs in this kernel's process, on CPUs, and streams the corpus,
so memory does not grow with its size. For a cluster-scale study use a recipe over local
files or a Hub dataset (`data_recipes/wikipedia-canaries.yaml`: Wikipedia with the Llama 3
tokenizer), build it once on a node with network access (or a local copy of the tokenizer)
into a directory every compute node can read, and give that directory as `data` to the
training notebooks. `axolab data build RECIPE --out DIR` does the same from a shell.'''),
    (MD, '''\
## 1. Build

An existing dataset is reused unless `overwrite` is set; a build writes into a temporary
directory renamed into place at the end, so a failed build leaves nothing behind.
`stats.json` counts tokens and sequences, the share of training tokens that are canary
tokens, and the build time.'''),
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
    (MD, '''\
## 2. The manifest

One row per canary in `canaries.jsonl`; below, grouped by kind and scheduled repetition
count: `canaries` is how many canaries have that count, `injected` how many occurrences were
placed in the training data in total (count × canaries; 0 for the controls).'''),
    (None, '''\
# The manifest: every canary, how often it was scheduled and how often it was placed.
table = canary_table(data_dir)
table.groupby(["kind", "repetitions"]).agg(canaries=("id", "size"), injected=("injected", "sum"))'''),
    (MD, '''\
## 3. The schedule

Left: canaries per scheduled repetition count, by kind (0: controls). Right: occurrences
placed in the training data against the schedule, a point per canary; every point should lie
on the diagonal.'''),
    (None, "schedule_plot(table)"),
    (MD, '''\
## 4. Check

Every injected canary must have been placed exactly as often as scheduled and every control
never. `placed as scheduled: False` means the counts that memorization is measured against
are wrong; do not train on that dataset. The table lists the most repeated canaries.'''),
    (None, '''\
# Every member canary was placed exactly as often as scheduled; controls never were.
placed_as_scheduled = bool((table["injected"] == table["repetitions"]).all())
print(f"{len(table)} canaries, {int(table['member'].sum())} injected, "
      f"placed as scheduled: {placed_as_scheduled}")
table.sort_values("repetitions", ascending=False).head(8)'''),
]

MEMORIZATION = [
    (MD, '''\
# Memorization of a trained run

Measures how much of the injected canaries a trained run reproduces, and how that depends on
how often each canary was seen in training. It needs a run directory with checkpoints
(`notebooks/train.ipynb`, `axolab train`) and the dataset the run was trained on: its
manifest (`canaries.jsonl`) says which canaries were injected how many times and which are
controls, never injected.

The model is never loaded in this kernel. Scoring is a launched job on `grid` ranks (local
processes here, `srun` inside a Slurm allocation); the cells below read the files it writes
(`eval.json`, `memorization.jsonl`, `continuations.jsonl`, docs/memorization-files.md). The
same cells evaluate a model of a few hundred thousand parameters on a laptop and a 405B model
on a cluster.'''),
    ("parameters", '''\
# Parameters (`axolab run notebooks/memorization.ipynb -p run_dir results/train`)
run_dir = "results/train"  # a training run with checkpoints
data = "results/data/tiny"  # the dataset it was trained on (its canary manifest)
grid = [1, 1, 1, 1]  # data, z, y, x of the evaluation job (need not be the training grid)
checkpoints = "latest"  # "latest": the newest intact checkpoint; "all": every kept one
prefix_len = 8  # prompt tokens
suffix_len = 16  # tokens to reproduce
curve_prefix_lens = [2, 4, 8]  # prefix lengths of the extraction curve
precision = "fp32"  # "fp32", or "bf16" autocast on GPUs
show_canaries = 3  # most repeated canaries to show token by token
interactive = False  # a canary picker (ipywidgets) on a login node'''),
    (MD, '''\
**On a cluster.**
- `grid`: the evaluation job has data·z·y·x ranks, one per GPU. Any grid the model's shapes
  divide by works; checkpoints are resharded on load, so it need not be the training grid.
  Evaluation holds no gradients or optimizer states, so it needs less memory per GPU than
  training.
- `precision = "bf16"` on GPUs.
- In batch: `axolab slurm submit notebooks/memorization.ipynb -p run_dir RUN -p data DATA
  -p grid "[1,1,2,4]" -p precision bf16 --nodes 1 --ntasks-per-node 8 --gpus-per-node 8`.
  The kernel runs inside the allocation and the job's ranks start with `srun` over it, so the
  allocation needs at least as many tasks as the grid has ranks.
- `checkpoints = "all"` costs one full evaluation per kept checkpoint (the run's
  `keep_checkpoints`).'''),
    (MD, '''\
## 1. Score every canary

`axolab.launch.evaluate` starts the evaluation job and waits for it (a progress bar per
checkpoint). For every canary the first `prefix_len` tokens are the prompt and the model
continues greedily for `suffix_len` tokens, compared with the canary's true continuation.
Each canary also gets membership scores (loss, zlib, Min-K%, Min-K%++) and, for secrets,
its exposure among the never-injected candidates. With `checkpoints = "all"` every kept
checkpoint is scored into `evals/step-N/` and one record each in `checkpoint_curve.jsonl`;
the newest is also written at the top of the run directory. A failing rank raises
`LaunchError` naming it; rank logs are in `RUN_DIR/logs/eval/`.

How to read the summary (`eval.json`): every `*_by_repetitions` entry is keyed by repetition
count, `"0"` being the controls. `exact_match`: share of canaries whose whole suffix was
reproduced. `token_match`: share of suffix tokens reproduced at their position; it rises
before exact match does. `exposure` (secrets only, bits): log2 of the candidate count minus
log2 of the secret's rank among them; the maximum means the model ranks the secret above every
candidate. `extraction_curve`: share of injected canaries extracted exactly from a prompt of
that many tokens. A control reproduced exactly shows a suffix that is predictable from its
prompt, not memorized: the controls are the floor to compare against.'''),
    (None, '''\
from IPython.display import HTML, display

from axolab.data import load_canaries
from axolab.launch import evaluate
from axolab.memorization import continuation_html, continuations
from axolab.report import report_plots

summary = evaluate(run_dir, data, dict(prefix_len=prefix_len, suffix_len=suffix_len,
                                       curve_prefix_lens=curve_prefix_lens, precision=precision),
                   grid=grid, checkpoints=checkpoints)
{key: summary[key] for key in ("checkpoint", "exact_match_by_repetitions",
                               "token_match_by_repetitions", "exposure_by_repetitions",
                               "extraction_curve")}'''),
    (MD, '''\
## 2. Memorization by repetitions

The report's figures for this run, read from its files:
- *Exact match by repetitions*: share of canaries reproduced exactly against how often each
  was seen (log2 axis), one panel for all canaries, then one per kind. Expect nothing at low
  counts and a rise with repetitions. A secret's prompt is its template, shared by all the
  secrets, so prompting cannot single one out: read secrets by their exposure instead.
- *Extraction curves*: share of injected canaries extracted exactly against the prompt length
  (`curve_prefix_lens`); longer prompts usually extract more.
- *Membership inference ROC*: one panel per score, injected canaries (members) against
  controls; the diagonal is chance. The dictionary below holds each score's ROC AUC: 0.5 is
  no signal, 1.0 separates members from controls completely.'''),
    (None, '''\
plots = report_plots(run_dir)
display(plots["exact_by_repetitions"], plots["extraction_curves"], plots["mia_roc"])
{score: round(r["auc"], 3) for score, r in summary["mia"].items()}'''),
    (MD, '''\
## 3. Memorization over training

Exact match against optimizer step, a line per repetition count (darker: more repetitions;
0: controls). Lines are the probes taken during training (`memorization_curve.jsonl`, when
the run set `memorization_interval` or `memorization_at_epochs`), markers the checkpoints
evaluated with `checkpoints = "all"` (`checkpoint_curve.jsonl`). It shows when a canary
becomes extractable, and whether it stays so as training moves on. A run with neither file
gets a note instead of a figure.'''),
    (None, 'plots.get("memorization_curve")'),
    (MD, '''\
## 4. The most repeated canaries, token by token

Prompt in grey, then the true suffix and the model's greedy continuation, reproduced tokens
in green and the others in red. "first miss at j": greedy decoding followed the truth for j
tokens. These come from `continuations.jsonl`, written by the evaluation job.'''),
    (None, '''\
# The most repeated canaries, token by token: green where the model reproduces the truth.
most_repeated = sorted(load_canaries(data), key=lambda c: -c.repetitions)[:show_canaries]
shown = continuations(run_dir, data, [c.id for c in most_repeated])
display(HTML("".join(continuation_html(c) for c in shown)))'''),
    (MD, '''\
## 5. Browse any canary

With `interactive = True`, a picker of every canary (most repeated first) showing the same
view. It reads the same files, so it works for any model size from a login node. Under
papermill only the widget's state is saved, so leave it off in batch.'''),
    (None, '''\
if interactive:
    from axolab.widgets import canary_browser

    display(canary_browser(run_dir, data))'''),
]

GOLDFISH = [
    (MD, '''\
# The goldfish loss against memorization

The goldfish loss (Hans et al., 2024) leaves a pseudo-random one in `k` tokens out of the
training loss. Whether a token is left out depends only on a hash of the 13 tokens ending at
it, so every repetition of a passage drops the same tokens; the model is never trained to
predict them and cannot reproduce the passage verbatim through them. This notebook trains a
standard run and one goldfish run per `k` on the same data, with the same seed and data
order, and compares memorization and validation loss.

`axolab.study.run_study` does the work, one run directory per (model, loss, k) under `out`.
For each run it launches a training job on `grid` that probes the canaries at every epoch
boundary (`memorization_curve.jsonl`), then an evaluation job (prompts of 8 tokens, suffixes
of 16, extraction curve at 4 and 8, validation loss). This kernel never holds a model. Runs
that already have an `eval.json` are not trained again, so running the notebook again after an
interruption continues.'''),
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
    (MD, '''\
**On a cluster.**
- `grid`: every training and evaluation job runs on data·z·y·x ranks; `global_batch` must
  divide by data·z.
- `model`: a larger preset (`small-llama`, `medium-llama`); memorization grows with model
  size. The study trains from scratch in fp32 on the recipe's tokenizer. To fine-tune a
  pretrained model or train in bf16, train each loss with `notebooks/train.ipynb` (`-p loss
  goldfish`) and evaluate with `notebooks/memorization.ipynb`.
- In batch: `axolab slurm submit notebooks/goldfish_mitigation.ipynb -p model small-llama
  -p grid "[2,1,1,2]" --nodes 1 --ntasks-per-node 4 --gpus-per-node 4 --time 08:00:00`. The
  runs are trained one after another inside the allocation, each job's ranks started with
  `srun`.'''),
    (MD, '''\
## 1. Train and evaluate every run

One row per run: its validation loss and `exact@n`, the share of random canaries seen `n`
times in training that the model reproduces exactly (random canaries only: secrets share
their prompt, so prompting cannot single one out). Expect the standard run to reproduce the
most repeated canaries and the goldfish runs to reproduce far fewer.'''),
    (None, '''\
import pandas as pd

from axolab.report import report_plots
from axolab.study import run_study

rows = run_study(recipe, out, [model], ["standard", "goldfish"], epochs, lr, global_batch,
                 goldfish_ks, grid=grid)
pd.DataFrame([{"run": r["run"], "val_loss": r["val_loss"],
               **{f"exact@{n}": v for n, v in r["exact_random_by_repetitions"].items()}}
              for r in rows])'''),
    (MD, '''\
## 2. The price

Validation loss of each run relative to the standard run (0.0 for the standard run itself):
tokens left out of the loss are tokens the model learns less from. Smaller `k` leaves out more
and costs more.'''),
    (None, '''\
# Validation loss relative to the standard run: the price of leaving tokens out.
standard = next(r["val_loss"] for r in rows if r["loss"] == "standard")
{r["run"]: round(r["val_loss"] / standard - 1, 4) for r in rows}'''),
    (MD, '''\
## 3. Side by side

- *Exact match by repetitions*: a line per run (colour: model, line style: loss), one panel
  for all canaries, then one per kind.
- *Loss curves*: training loss per step, a line per run; filled circles are validation loss.
  A goldfish run's training loss counts only the tokens it keeps.

The goldfish loss stops verbatim reproduction, not membership: exposure and membership
inference (`eval.json` of each run, or `axolab report OUT`) stay well above chance.'''),
    (None, '''\
plots = report_plots(out)
display(plots["exact_by_repetitions"], plots["loss_curves"])'''),
    (MD, '''\
## 4. Over training

Exact match against optimizer step from the probes at every epoch boundary, a panel per
(model, loss) and a line per repetition count (darker: more repetitions; 0: controls). Under
the standard loss the most repeated canaries become extractable as training goes on; under the
goldfish loss they should not.'''),
    (None, 'plots.get("memorization_curve")'),
]

FINETUNE_405B = [
    (MD, '''\
# Fine-tuning Llama 3.1 405B with the goldfish loss

Fine-tunes a pretrained Hugging Face checkpoint on a dataset with canaries under the goldfish
loss and measures what the fine-tuned model memorized: plan the grid, check its memory, train,
evaluate. The defaults are for Llama 3.1 405B on 1024 GPUs of Frontier; with a tiny stand-in
checkpoint, `gpus = 2` and `precision = "fp32"` the same cells run on a laptop.

No model is loaded in this kernel: the plan reads only the checkpoint's `config.json`, and
training and evaluation are launched jobs whose ranks each read only their shard of the
weights (the model is built on the meta device first, so no rank ever holds a full copy).'''),
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
    (MD, '''\
**On a cluster.**
- `model_dir`: the downloaded checkpoint (`config.json` and `*.safetensors`) on a file system
  every node reads. `data`: built beforehand, e.g. `axolab data build
  data_recipes/wikipedia-canaries.yaml --out results/data/wikipedia-canaries` (the Llama 3
  tokenizer, so the vocabularies match).
- `gpus`: the allocation's GPU count; `machine`: the system's preset (`frontier`,
  `perlmutter`, `alps`, `h100-node`) or a machine file measured with `axolab plan calibrate`.
- Submit: `axolab slurm submit notebooks/finetune_405b.ipynb --nodes 128 --ntasks-per-node 8
  --gpus-per-node 8 --time 12:00:00` (Frontier: 8 GCDs per node, 1024 in all). The kernel runs
  inside the allocation; training and evaluation start their ranks with `srun` over it. Near
  the time limit the job checkpoints and requeues itself, and the next attempt resumes.'''),
    (MD, '''\
## 1. Plan the grid

`axolab.perfmodel.search` takes the model directory, reads its `config.json` as plain JSON
and ranks every valid (data, z, y, x) grid of `gpus` ranks by predicted step time (matmuls at
a calibrated share of peak, the bytes of every collective over intra- or inter-node links)
with the memory per GPU of each. Grids that fit come first. The table shows the best five:
`step_time_s`, its `compute_s` and `comm_s` parts, the communication left exposed,
`memory_gib` and predicted `tokens_per_s` and `mfu`. If no grid fits, the notebook stops here
with the memory the best grid would need: ask for more GPUs (`axolab plan` prints how many).'''),
    (None, '''\
# Plan: every valid grid for these GPUs, ranked by predicted step time, memory checked.
from pathlib import Path

import pandas as pd

from axolab.perfmodel import search

plans = search(Path(model_dir), gpus, machine, global_batch, seq_len, precision=precision)
best = plans[0]
if not best.fits:
    raise SystemExit(f"no grid of {gpus} GPUs fits: the best needs "
                     f"{best.memory.total / 2**30:.1f} GiB per GPU")
pd.DataFrame([p.to_dict() for p in plans[:5]])'''),
    (MD, '''\
## 2. Memory of the chosen grid

Bytes per GPU of the best grid, in GiB: the rank's parameter shard, its gradient, the AdamW
states, saved activations (with activation checkpointing), the logits shard, the gathered
weight block and step buffers, a checkpoint-save chunk, and `total`, the modelled peak. It
must stay below the machine's usable memory per GPU.'''),
    (None, '''\
# Memory per GPU of the chosen grid (GiB).
grid = [best.grid.data, best.grid.z, best.grid.y, best.grid.x]
print("grid (data, z, y, x):", grid, "micro-batch", best.micro_batch)
{k: round(v, 3) for k, v in best.memory.as_gib().items()}'''),
    (MD, '''\
## 3. Fine-tune

A launched job on the planned grid loads the checkpoint sharded and trains with the goldfish
loss, activation checkpointing and `precision`, with a checkpoint and a validation loss every
quarter of the run. A quarter of the way through and at every later quarter, the ranks also
probe the canaries with the live model (`memorization_curve.jsonl`); the probe skips exposure
and continuations to stay cheap. The cell's value is the last metrics record.'''),
    (None, '''\
# Fine-tune with the goldfish loss: the checkpoint is loaded sharded (no rank holds a copy).
from axolab.launch import evaluate, run

last = run(dict(model=model_dir, data=data, run_dir=run_dir, grid=grid, steps=steps, lr=lr,
                global_batch=global_batch, precision=precision, loss="goldfish",
                goldfish_k=goldfish_k, activation_checkpointing=True, warmup_steps=min(10, steps),
                checkpoint_interval=max(1, steps // 4), eval_interval=max(1, steps // 4),
                memorization_interval=max(1, steps // 4),
                probe=dict(prefix_len=prefix_len, suffix_len=suffix_len,
                           curve_prefix_lens=[prefix_len], exposure=False, continuations=False)))
last'''),
    (MD, '''\
## 4. Memorization of the fine-tuned model

An evaluation job on the same grid scores every canary with the newest checkpoint (see
`notebooks/memorization.ipynb` for what each number means, and to evaluate on another grid or
every kept checkpoint). The figure is exact match against repetition count; the dictionary
holds the same rates, `"0"` being the controls.'''),
    (None, '''\
# Memorization of the fine-tuned model on the dataset's canaries.
from axolab.report import report_plots

summary = evaluate(run_dir, data, dict(prefix_len=prefix_len, suffix_len=suffix_len,
                                       precision=precision), grid=grid)
plots = report_plots(run_dir)
display(plots["exact_by_repetitions"])
summary["exact_match_by_repetitions"]'''),
    (MD, '''\
## 5. Over fine-tuning

Exact match against optimizer step from the in-training probes, a line per repetition count
(darker: more repetitions; 0: controls). With the goldfish loss the lines should stay near
the controls.'''),
    (None, 'plots.get("memorization_curve")'),
]

SCALING_SWEEP = [
    (MD, '''\
# Scaling sweep: measured throughput against the performance model

Trains each model preset for a few steps on every grid of the given rank counts and puts the
measured tokens/s, step time and MFU next to what `axolab.perfmodel` predicts for the same
grid. The point is to check the planner before trusting it with a large job: does it rank the
grids in the order they really run?

Every point is an ordinary run directory under `run_dir`, trained by its own launched job
(fresh processes, as a real job would be); the table is also written to
`RUN_DIR/scaling.csv`. Points already trained are kept, so an interrupted sweep continues.'''),
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
    (MD, '''\
**On a cluster.** Submit inside an allocation as large as the largest rank count:
`axolab slurm submit notebooks/scaling_sweep.ipynb -p rank_counts "[8,16,32]" -p precision
bf16 -p machine frontier --nodes 4 --ntasks-per-node 8 --gpus-per-node 8`. `machine` names
the system's preset, or a machine file from `axolab plan calibrate` measured there;
`"calibrate"` measures the machine the notebook runs on first. Use presets of the sizes to
be trained, and a global batch that divides over the data·z of every grid.'''),
    (MD, '''\
## 1. Run every point

A row per (model, grid): measured and predicted tokens/s, model FLOP/s utilization and step
time. Measured values are medians over the steps after the warm-up quarter.'''),
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
    (MD, '''\
## 2. Measured against predicted

Left, a panel per model: tokens/s of each grid, grouped by rank count; bars are measured,
black diamonds predicted, labels the measured % of peak FLOP/s. Right: predicted against
measured step time, a point per grid; on the dashed diagonal the prediction is exact. For
planning, what matters most is that the prediction keeps the grids in the measured order.'''),
    (None, '''\
from axolab.report.scaling_plots import scaling_plot

scaling_plot(table)'''),
    (MD, '''\
## 3. Does the planner pick the right grid?

Per model and rank count: the Spearman correlation of predicted and measured step times over
the grids (1: same order; NaN with fewer than three grids), the grid the model predicts
fastest and the one that measured fastest, and `predicted_best_gap`, how much slower the
predicted best ran than the measured best (0: the planner picked the fastest).'''),
    (None, '''\
# Does the model order the grids as measured? Spearman correlation per model and rank count,
# and how much slower the grid it would pick ran than the fastest one.
rank_agreement(table)'''),
]

FINETUNE_STUDY = [
    (MD, """\
# Fine-tuning on a target set: passes until memorized, by model size

The goldfish paper's fine-tuning design (Hans et al., 2024, section 4): a pretrained model is
trained for several epochs on a small set of target documents, one per padded row and nothing
else, and after every epoch each target is prompted with its first 8 tokens: is the next 16
reproduced exactly? Larger models memorize the same data in fewer passes (Tirumala et al.,
2022); the goldfish loss (k = 4) should hold exact reproduction near zero at every size.

`axolab.finetune_study.run_finetune_study` does the work under `out`: it splits the corpus
into background text and target candidates, pretrains each size on the background
(`<size>-base`), builds the target set (`targets` candidates fine-tuned on, as many unseen ones
as controls) and fine-tunes each base model with each loss (`<size>-<loss>`), probing every
epoch (`memorization_curve.jsonl`), then evaluates. Every model-touching step is a launched
job on `grid`; this kernel never holds a model. Finished runs are kept, so a rerun continues."""),
    ("parameters", """\
# Parameters (`axolab run notebooks/finetune_memorization.ipynb -p epochs 24`)
out = "results/finetune_study"  # the study directory
sizes = ["tiny-llama", "mini-llama", "small-llama"]  # model presets, smallest first
losses = ["standard", "goldfish"]  # fine-tuning losses
goldfish_k = 4  # the goldfish runs leave one token in k out of the loss
targets = 32  # target documents (as many more are the controls)
max_documents = 3000  # corpus documents used (background + target candidates)
pretrain_epochs = 3.0  # passes over the background when pretraining
epochs = 32  # fine-tuning epochs, a probe after each
lr = 2e-3  # peak fine-tuning learning rate
batch = 4  # target documents per fine-tuning step
grid = [1, 1, 1, 1]  # data, z, y, x of every job"""),
    (MD, """\
**On a cluster.**
- `grid`: every job runs on data·z·y·x ranks; `batch` must divide by data·z.
- `sizes`: larger presets (`medium-llama`) or, for a published model, fine-tune it with
  `notebooks/finetune_405b.ipynb` on the target dataset this study builds
  (`out/data-target`, recipe in its `recipe.yaml`) and evaluate with
  `notebooks/memorization.ipynb`.
- In batch: `axolab slurm submit notebooks/finetune_memorization.ipynb -p grid "[1,1,1,4]"
  --nodes 1 --ntasks-per-node 4 --gpus-per-node 4 --time 04:00:00`."""),
    (MD, """\
## 1. Pretrain, fine-tune, probe every epoch

A row per run, a column per fine-tuning epoch: the share of targets reproduced exactly
(greedy, 16 tokens after an 8-token prompt). Each target is seen once per epoch."""),
    (None, """\
import pandas as pd

from axolab.finetune_study import FinetuneStudy, plot, run_finetune_study

study = FinetuneStudy(sizes=sizes, losses=losses, goldfish_k=goldfish_k, targets=targets,
                      max_documents=max_documents, pretrain_epochs=pretrain_epochs,
                      epochs=epochs, lr=lr, batch=batch, grid=grid)
rows = run_finetune_study(study, out)
pd.DataFrame(rows).pivot_table(index=["model", "loss"], columns="epoch",
                               values="exact_targets", sort=False)"""),
    (MD, """\
## 2. Passes until memorized

Exact match of the targets after each epoch, a line per size and a panel per loss. Under the
standard loss the larger models should rise earlier; under the goldfish loss the lines should
stay near zero."""),
    (None, """\
plot(rows);"""),
    (MD, """\
## 3. Controls and cost

After the last epoch, per run: exact match of the controls (candidates never trained on: what
an 8-token prompt gives away without memorization), the token match of the targets (share of
the 16 tokens reproduced, so partial memorization shows), and the loss on held-out background
text (what fine-tuning cost in general language modelling)."""),
    (None, """\
last = pd.DataFrame(rows).groupby(["model", "loss"], sort=False).last()
last[["epoch", "exact_controls", "token_match_targets", "val_loss"]]"""),
]


NOTEBOOKS = {"train.ipynb": TRAIN, "canary_injection.ipynb": CANARY_INJECTION,
             "memorization.ipynb": MEMORIZATION, "goldfish_mitigation.ipynb": GOLDFISH,
             "finetune_405b.ipynb": FINETUNE_405B,
             "scaling_sweep.ipynb": SCALING_SWEEP,
             "finetune_memorization.ipynb": FINETUNE_STUDY}

if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        write_notebook(ROOT / "notebooks" / name, cells)
