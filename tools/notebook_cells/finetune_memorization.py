"""Cell sources of notebooks/finetune_memorization.ipynb: memorization under fine-tuning (see tools/make_notebooks.py)."""

from axolab.runs.notebook_file import MARKDOWN as MD

CELLS = [
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
