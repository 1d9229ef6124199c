"""Cell sources of notebooks/canary_injection.ipynb: build a dataset with canaries injected at controlled repetition counts (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
