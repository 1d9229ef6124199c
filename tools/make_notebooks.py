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


if __name__ == "__main__":
    write_notebook(ROOT / "notebooks" / "train.ipynb", TRAIN)
