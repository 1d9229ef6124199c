"""In-training memorization probes: the live parallel model scores the canaries every
``memorization_interval`` steps (and at epoch boundaries when asked), no checkpoint written.

The probe is the same measurement as ``axolab eval`` (``score_canaries``), run between two
optimizer steps in eval mode and without gradients, so the training that follows is the
training without it: no parameter, optimizer state or random-number stream is touched.
"""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from axolab.config import TrainConfig
from axolab.metrics import MetricsLog

from axolab.data.loader import epoch_reads, row_visits, rows_trained

from .curve import PROBE_CURVE, curve_record, epoch_boundary, training_position
from .canary_eval import CanarySet, add_trained_occurrences, score_canaries


class CanaryProbe:
    """Probes of one training session. Collective: every rank calls ``due`` and ``__call__``
    with the same step; the lead rank appends the record."""

    def __init__(self, cfg: TrainConfig, train_rows: int, seq_len: int,
                 resume_step: int | None, lead: bool, shuffled: bool = True):
        self.cfg, self.train_rows, self.seq_len = cfg, train_rows, seq_len
        self.shuffled = shuffled  # the training split's row order (PackedDataset.shuffled)
        self.enabled = bool(cfg.memorization_interval or cfg.memorization_at_epochs)
        self.canaries = CanarySet.load(cfg.data) if self.enabled else None
        if self.enabled and not self.canaries.canaries:
            raise ValueError(f"memorization probes asked for, but {cfg.data} has no canaries")
        # Same lifecycle as metrics.jsonl: a resume drops the records past its checkpoint.
        self.log = MetricsLog(Path(cfg.run_dir) / PROBE_CURVE, resume_step,
                              lead and self.enabled)

    def due(self, done: int, total: int) -> bool:
        """Whether to probe after ``done`` steps (of ``total``)."""
        if not self.enabled:
            return False
        every = self.cfg.memorization_interval
        if every and done % every == 0:
            return True
        return self.cfg.memorization_at_epochs and (
            done == total or epoch_boundary(done, self.cfg.global_batch, self.train_rows))

    def __call__(self, model, done: int, autocast: AbstractContextManager) -> float:
        """Probe the model after ``done`` steps; returns the seconds it took."""
        t0 = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad(), autocast:
                scored = score_canaries(model, self.canaries, self.cfg.probe)
        finally:
            model.train(was_training)
        dt = time.perf_counter() - t0
        reads = epoch_reads(self.cfg.epochs, self.train_rows)
        epoch, tokens = training_position(done, self.cfg.global_batch, self.train_rows,
                                          self.seq_len, reads)
        add_trained_occurrences(scored.records, self.canaries.canaries, row_visits(
            rows_trained(done, self.cfg.global_batch, reads), self.train_rows, self.cfg.seed,
            self.shuffled))
        self.log.write(curve_record(scored.summary, scored.records, step=done, epoch=epoch,
                                    tokens_seen=tokens, source="probe", time_s=dt))
        return dt
