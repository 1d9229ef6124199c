"""Weight gradients reduce-scattered over Z without waiting for them.

A linear layer's backward hands its full block gradient here; the reduce-scatter runs while
the backward of earlier layers computes, and completes a few layers later (at most
``max_in_flight`` outstanding, each holding a block gradient) or at the end of backward, when
its result is added to ``param.grad``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import torch

from . import comm
from .grid import Axis


class DeferredDepthGrads:
    def __init__(self, depth: Axis, max_in_flight: int,
                 on_complete: Callable[[torch.nn.Parameter], None]):
        self.depth, self.max_in_flight, self.on_complete = depth, max_in_flight, on_complete
        self.pending: deque = deque()  # (work, out, param, flat); flat is kept alive until done

    def start(self, param: torch.nn.Parameter, flat: torch.Tensor) -> None:
        out, work = comm.reduce_scatter_flat(flat, self.depth, async_op=True)
        self.pending.append((work, out, param, flat))
        while len(self.pending) > self.max_in_flight:
            self._complete_oldest()

    def _complete_oldest(self) -> None:
        work, out, param, _ = self.pending.popleft()
        work.wait()
        if param.grad is None:
            param.grad = out
        else:
            param.grad.add_(out)
        self.on_complete(param)

    def drain(self) -> None:
        while self.pending:
            self._complete_oldest()
