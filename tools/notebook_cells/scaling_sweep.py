"""Cell sources of notebooks/scaling_sweep.ipynb: a sweep of runs as one Slurm job array (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
