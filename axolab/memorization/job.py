"""`python -m axolab.memorization.job JOB.json`: one rank of a launched evaluation.

Started by ``axolab.launch.evaluate`` (the CLI's `axolab eval`) on every rank of the job's
grid. Each checkpoint is loaded sharded onto the grid (hashes verified first; any grid the
shapes divide by, whatever grid trained it), every canary is scored, and the lead rank writes
the files of docs/memorization-files.md. Progress goes to LOG_DIR/progress.jsonl, one line per
stage, for the launcher's bar.
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from axolab.checkpoint import (complete_checkpoints, load_checkpoint_model, load_pretrained,
                               read_manifest, resume_checkpoint)
from axolab.checkpoint.names import MANIFEST
from axolab.checkpoint.verify import SkippedCheckpointWarning
from axolab.config import EvalConfig, load_config
from axolab.data.loader import PackedDataset, row_visits
from axolab.launch.evaluation import EvalJob
from axolab.metrics import MetricsLog
from axolab.parallel import Grid

from .curve import CHECKPOINT_CURVE, curve_record, replace_curve_record
from .canary_eval import (CanarySet, add_row_extraction, add_trained_occurrences,
                          canary_sequences, score_canaries, write_eval_files)
from .domain_perplexity import background_perplexity
from .mia import mean_token_nll
from .scoring import token_scores


def _autocast(cfg: EvalConfig, grid: Grid):
    if cfg.precision == "bf16":
        return torch.autocast(grid.device.type, dtype=torch.bfloat16)
    return nullcontext()


@torch.no_grad()
def validation_loss(model, data_dir: str | Path, batch_size: int) -> tuple[float, int]:
    """Mean token loss over the whole validation split (every next-token position of every
    row), scored batch by batch over the grid, and the number of tokens it averages."""
    val = PackedDataset(data_dir, "validation")
    total, count = 0.0, 0
    for start in range(0, val.rows, batch_size):
        scores = token_scores(model, val.read(np.arange(start, min(start + batch_size, val.rows))),
                              batch_size)
        total -= float((scores.logprob * scores.mask).sum())
        count += int(scores.mask.sum())
    if count == 0:
        raise ValueError(f"{data_dir} has an empty validation split")
    return total / count, count


def _load_model(path: Path, grid: Grid):
    """A run directory's newest intact checkpoint, one checkpoint (hashes verified), or a
    model directory, sharded on ``grid``."""
    if (path / "checkpoints").is_dir():
        found = resume_checkpoint(path / "checkpoints", grid)
        if found is None:
            raise ValueError(f"{path} has no complete, intact checkpoint to evaluate")
        return load_checkpoint_model(found[0], grid, verify=False)  # verified just now
    if (path / MANIFEST).is_file():
        return load_checkpoint_model(path, grid, verify=True)
    return load_pretrained(path, grid)


def reference_nll(job: EvalJob, canaries: CanarySet, grid: Grid) -> np.ndarray | None:
    """The reference model's mean token NLL of every canary, computed once for all the
    checkpoints (the reference is freed before any of them is loaded)."""
    if not job.config.reference:
        return None
    model = _load_model(Path(job.config.reference), grid).eval()
    with torch.no_grad(), _autocast(job.config, grid):
        nll = mean_token_nll(token_scores(model, canary_sequences(canaries),
                                          job.config.batch_size))
    del model
    return nll


def _targets(job: EvalJob, grid: Grid) -> list[Path | None]:
    """Checkpoint directories in evaluation order (None: the target is a model directory)."""
    if job.latest:
        found = resume_checkpoint(Path(job.target) / "checkpoints", grid)
        if found is None:
            raise ValueError(f"{job.target} has no complete, intact checkpoint to evaluate")
        return [found[0]]
    return [Path(p) for p in job.checkpoints] or [None]


def _position(ckpt: Path, data_dir: str) -> tuple[int, float, int]:
    """(step, epoch, tokens seen) of a checkpoint: the training rows it had consumed (its
    manifest's data_position), over the dataset's rows and sequence length."""
    manifest = read_manifest(ckpt)
    train = PackedDataset(data_dir, "train")
    rows_seen = int(manifest.get("data_position", 0))
    return manifest["step"], rows_seen / train.rows, rows_seen * train.seq_len


def _visits(ckpt: Path, data_dir: str) -> np.ndarray | None:
    """How often the checkpoint's run had trained on each training row (row_visits of its
    data_position, in the order its config.json's seed draws); None when the checkpoint is
    not in a run directory trained on ``data_dir``'s rows (its config.json absent, or naming
    other data)."""
    run_config = ckpt.parent.parent / "config.json"
    if not run_config.is_file():
        return None
    run = json.loads(run_config.read_text())
    train = PackedDataset(data_dir, "train")
    if Path(run.get("data", "")).resolve() != Path(data_dir).resolve() or "seed" not in run:
        return None
    return row_visits(int(read_manifest(ckpt).get("data_position", 0)), train.rows,
                      int(run["seed"]), train.shuffled)


def run(job: EvalJob, grid: Grid | None = None) -> list[dict]:
    """Evaluate the job's checkpoints; returns each one's summary. Collective over the grid."""
    job.validate()
    grid = grid or Grid.init(*job.grid, timeout_s=job.collective_timeout_s)
    lead = grid.rank == grid.ranks[0]
    out = Path(job.out_dir)
    progress = MetricsLog(out / "logs" / "eval" / "progress.jsonl", None, lead)
    canaries = CanarySet.load(job.data)
    targets = _targets(job, grid)
    if job.config.reference:
        progress.write({"done": 0, "total": len(targets), "stage": "reference model"})
    reference = reference_nll(job, canaries, grid)
    run_root = Path(job.target) / "checkpoints"
    newest = (complete_checkpoints(run_root) or [None])[-1] if run_root.is_dir() else None
    summaries = []
    for i, ckpt in enumerate(targets):
        what = ckpt.name if ckpt is not None else Path(job.target).name
        progress.write({"done": i, "total": len(targets), "stage": f"{what}: loading"})
        t0 = time.perf_counter()
        if ckpt is None:
            model = load_pretrained(job.target, grid)
        else:
            # _targets verified the latest already; a chosen one is verified here.
            model = load_checkpoint_model(ckpt, grid, verify=not job.latest)
        model.eval()
        progress.write({"done": i, "total": len(targets), "stage": f"{what}: scoring"})
        with torch.no_grad(), _autocast(job.config, grid):
            scored = score_canaries(model, canaries, job.config, reference)
            add_row_extraction(model, job.data, job.config, scored)
            if job.config.validation_loss:
                loss, tokens = validation_loss(model, job.data, job.config.batch_size)
                scored.summary["validation_loss"] = loss
                scored.summary["perplexity_by_domain"]["background"] = \
                    background_perplexity(loss, tokens)
        dt = time.perf_counter() - t0
        del model
        scored.summary["checkpoint"] = str(ckpt or job.target)
        if lead:
            if ckpt is not None:
                visits = _visits(ckpt, job.data)
                if visits is not None:
                    add_trained_occurrences(scored.records, canaries.canaries, visits)
                step, epoch, tokens = _position(ckpt, job.data)
                scored.summary["step"] = step
                write_eval_files(out / "evals" / ckpt.name, scored)
                replace_curve_record(out / CHECKPOINT_CURVE, curve_record(
                    scored.summary, scored.records, step=step, epoch=epoch, tokens_seen=tokens,
                    source="checkpoint", time_s=dt))
            if ckpt is None or job.latest or ckpt == newest:
                write_eval_files(out, scored)
        progress.write({"done": i + 1, "total": len(targets), "stage": f"{what}: done"})
        summaries.append(scored.summary)
    return summaries


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m axolab.memorization.job JOB.json", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with warnings.catch_warnings():
        warnings.simplefilter("always", SkippedCheckpointWarning)
        run(load_config(EvalJob, argv[0]))
    return 0


if __name__ == "__main__":
    from axolab.launch.rank_exit import exit_rank

    exit_rank(main())
