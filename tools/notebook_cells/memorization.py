"""Cell sources of notebooks/memorization.ipynb: measure a trained run's memorization (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
- *Exact match by occurrences trained on*: the same rate against how many of each canary's
  occurrences the checkpoint was actually trained on (repetitions x passes over the data).
- *Extraction curves* (Carlini et al.'s k-extractability): share of injected canaries whose
  last `suffix_len` tokens come out exactly from a prompt of the k tokens before them, against
  k (`curve_prefix_lens`), on one set of canaries long enough for the largest k; longer prompts
  usually extract more.
- *Membership inference ROC*: one panel per score, injected canaries (members) against
  controls; the diagonal is chance. The dictionary below holds each score's ROC AUC: 0.5 is
  no signal, 1.0 separates members from controls completely.'''),
    (None, '''\
plots = report_plots(run_dir)
display(plots["exact_by_repetitions"], plots["exact_by_trained_occurrences"],
        plots["extraction_curves"], plots["mia_roc"])
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
