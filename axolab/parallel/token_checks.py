"""Range checks of token ids that do not stop the device on the training hot path.

A plain embedding or cross-entropy raises on an id outside the vocabulary. A parallel one must
raise on every rank together (a rank that raised alone would leave its peers waiting in the
next collective), so the count of bad ids is all-reduced over the ranks that must agree; and
reading that count on the host (``.item()``) would wait for the device to finish everything
queued before it, every step. So a check only queues its small all-reduce and keeps the
result; outside :meth:`TokenChecks.deferred` it is read at once (what users calling the model
by hand expect), inside it all of them are read together, in one host read, when the block
ends: the training step reads them with its loss, where it waits for the device anyway.
Nothing is lost by waiting: an out-of-range id only gives a zero row or no loss term until
then, and the step raises before its optimizer step.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from . import comm
from .grid import Axis


class TokenChecks:
    """The pending checks of one parallelized model (on its ParallelState)."""

    def __init__(self) -> None:
        self._pending: list[tuple[torch.Tensor, str]] = []
        self._depth = 0

    def check(self, values: torch.Tensor, bad: torch.Tensor, what: str, *,
              agree: Axis | None = None, count: torch.Tensor | None = None) -> None:
        """Queue the number of ``bad`` values summed over ``agree`` (None: this rank's values
        are those of every rank that must agree), or ``count`` when the caller reduced it
        already, with the first bad value here; ``what`` names them, e.g. "input token id(s)
        outside the vocabulary [0, 100)"."""
        flat, values = bad.reshape(-1), values.reshape(-1)
        if count is None:
            count = flat.sum().reshape(1)
            if agree is not None:
                count = comm.all_reduce_sum_(count, agree)
        count = count.reshape(1)
        if flat.numel():
            here = flat.any().reshape(1)
            example = values[flat.to(torch.uint8).argmax()].reshape(1)
        else:
            here = example = torch.zeros(1, dtype=torch.long, device=values.device)
        self._pending.append((torch.cat([count.long(), here.long(), example.long()]), what))
        if not self._depth:
            self.resolve()

    @contextmanager
    def deferred(self):
        """Checks made in this block are read (and raise) once, when it ends."""
        self._depth += 1
        try:
            yield self
        except BaseException:
            self._depth -= 1
            if not self._depth:
                self._pending.clear()
            raise
        self._depth -= 1
        if not self._depth:
            self.resolve()

    def resolve(self) -> None:
        """Read every pending check (one host read) and raise for the first that failed."""
        if not self._pending:
            return
        pending, self._pending = self._pending, []
        rows = torch.stack([stats for stats, _ in pending]).tolist()
        for (count, here, example), (_, what) in zip(rows, pending):
            if count:
                where = f"e.g. {example} here" if here else "on another batch shard"
                raise ValueError(f"{count} {what} ({where})")
