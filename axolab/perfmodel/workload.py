"""What one training step does: batch, sequence, precision, micro-batching, recomputation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from ..optimizations import Optimizations

Precision = Literal["bf16", "fp32"]
PRECISIONS = get_args(Precision)


@dataclass(frozen=True)
class Workload:
    """One optimizer step of axolab's training loop (:mod:`axolab.train`)."""

    global_batch: int
    """Sequences per optimizer step over all ranks (split over D*Z)."""
    seq_len: int
    """Tokens per sequence S."""
    micro_batch: int | None = None
    """Sequences per rank per forward/backward; None: the rank's whole batch shard at once
    (axolab's default). Weight all-gathers and reduce-scatters repeat every micro-step."""
    precision: Precision = "bf16"
    """"bf16": matmuls under autocast with fp32 parameters (axolab's mixed precision);
    "fp32": everything in fp32."""
    activation_checkpointing: bool = True
    """Recompute each decoder layer in backward (HF gradient checkpointing): one more forward
    of every layer, with its all-gathers and all-reduces, for far less activation memory."""
    optimizations: Optimizations = Optimizations()
    """The run's performance switches (:class:`axolab.Optimizations`; a training config's
    ``overlap_communication=False`` is ``Optimizations.none()``): which collectives run in the
    background behind which computation (see :mod:`axolab.perfmodel.overlap`) and whether
    q/k/v and gate/up communicate as one stack."""
    grad_clip: bool = True
    """Clip by the global gradient norm (one tiny all-reduce over the model group)."""
    param_bytes: int = 4
    """Bytes per parameter, gradient and Adam moment: axolab builds and trains fp32 parameters
    (bf16 is autocast only), so 4."""

    def __post_init__(self):
        for name in ("global_batch", "seq_len"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.micro_batch is not None and (not isinstance(self.micro_batch, int)
                                             or self.micro_batch < 1):
            raise ValueError(f"micro_batch must be a positive integer or None, got "
                             f"{self.micro_batch!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision {self.precision!r}: expected one of {PRECISIONS}")
        if not isinstance(self.optimizations, Optimizations):
            raise ValueError(f"optimizations must be an axolab Optimizations, got "
                             f"{type(self.optimizations).__name__}")

    @property
    def compute_bytes(self) -> int:
        """Bytes per element of matmul inputs/outputs (autocast dtype)."""
        return 2 if self.precision == "bf16" else 4

    @property
    def depth_grad_bytes(self) -> int:
        """Bytes per element of the linear layers' weight-gradient reduce-scatters over Z
        (``Optimizations.depth_grad_dtype``)."""
        return 2 if self.optimizations.depth_grad_dtype == "bf16" else self.param_bytes

    def local_batch(self, batch_shards: int) -> int:
        """Sequences per rank per step (global batch / D*Z)."""
        if self.global_batch % batch_shards:
            raise ValueError(f"global batch {self.global_batch} does not divide by data*z = "
                             f"{batch_shards}")
        return self.global_batch // batch_shards

    def micro(self, batch_shards: int) -> int:
        """Sequences per micro-step on a grid with ``batch_shards`` = D*Z."""
        local = self.local_batch(batch_shards)
        micro = self.micro_batch or local
        if local % micro:
            raise ValueError(f"micro_batch {micro} does not divide the {local} sequences per "
                             f"batch shard (global batch {self.global_batch} / data*z "
                             f"{batch_shards})")
        return micro
