"""Cell sources of notebooks/goldfish_mitigation.ipynb: the goldfish loss against the standard loss (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
