"""Matmul layout tuning: the three products of a linear layer, each computable several ways.

``x W^T`` (forward), ``g W`` (input gradient) and ``g^T x`` (weight gradient) can be computed
as written, on a transposed contiguous copy of one operand, or as the transposed problem
(``(W x^T)^T``). Which is fastest depends on the shapes, the dtype and the BLAS library; the
tuner times every variant once per (product, shape, dtype, device) and remembers the winner.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F

# Each variant returns a contiguous result: what the caller reshapes or reduces next.
VARIANTS: dict[str, dict[str, Callable]] = {
    "forward": {  # x [m, k], w [n, k] -> [m, n]
        "nt": lambda x, w: F.linear(x, w),
        "nn": lambda x, w: x @ w.t().contiguous(),
        "transposed": lambda x, w: (w @ x.t()).t().contiguous(),
    },
    "input_grad": {  # g [m, n], w [n, k] -> [m, k]
        "nn": lambda g, w: g @ w,
        "nt": lambda g, w: F.linear(g, w.t().contiguous()),
        "transposed": lambda g, w: (w.t() @ g.t()).t().contiguous(),
    },
    "weight_grad": {  # g [m, n], x [m, k] -> [n, k]
        "tn": lambda g, x: g.t() @ x,
        "nn": lambda g, x: g.t().contiguous() @ x,
        "transposed": lambda g, x: (x.t() @ g).t().contiguous(),
    },
}
DEFAULT = {"forward": "nt", "input_grad": "nn", "weight_grad": "tn"}


class MatmulTuner:
    """Per-device cache of the fastest variant of each product and shape; one per model."""

    def __init__(self, repeats: int = 3):
        self.repeats = repeats
        self.choice: dict[tuple, str] = {}
        self.timings: dict[tuple, dict[str, float]] = {}

    def __call__(self, product: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        key = (product, tuple(a.shape), tuple(b.shape), a.dtype, str(a.device))
        name = self.choice.get(key)
        if name is None:
            name = self._tune(key, product, a, b)
        return VARIANTS[product][name](a, b)

    @torch.no_grad()
    def _tune(self, key, product: str, a: torch.Tensor, b: torch.Tensor) -> str:
        times = {}
        for name, fn in VARIANTS[product].items():
            fn(a, b)  # warm-up: first calls allocate and pick kernels
            best = float("inf")
            for _ in range(self.repeats):
                if a.is_cuda:
                    torch.cuda.synchronize(a.device)
                t0 = time.perf_counter()
                fn(a, b)
                if a.is_cuda:
                    torch.cuda.synchronize(a.device)
                best = min(best, time.perf_counter() - t0)
            times[name] = best
        self.timings[key] = times
        self.choice[key] = min(times, key=times.get)
        return self.choice[key]


def plain(product: str, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The untuned layout of each product."""
    return VARIANTS[product][DEFAULT[product]](a, b)
