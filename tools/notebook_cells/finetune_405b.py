"""Cell sources of notebooks/finetune_405b.ipynb: fine-tune Llama 3.1 405B on a grid (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
