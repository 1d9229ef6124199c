"""Cell sources of notebooks/train.ipynb: train one model on a grid of ranks (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
