"""Run configurations: typed dataclasses with a docstring per field, read strictly from JSON.

A notebook's ``parameters`` cell maps 1:1 onto one of these; every run writes its config next
to its results. Unknown keys are errors (with the closest valid name) so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainConfig:
    """Everything one training run needs; `python -m axolab.train CONFIG.json` reads it."""

    model: str = "tiny-llama"
    """A preset name (axolab.presets), a directory with a HF config.json (random init), or a
    directory with config.json + safetensors weights (fine-tuning; loaded sharded)."""
    data: str = "results/data/tiny"
    """A dataset directory written by `axolab data build` (train/, validation/, tokenizer/)."""
    run_dir: str = "results/run"
    """Where config.json, metrics.jsonl and checkpoints/ go."""
    grid: list[int] = field(default_factory=lambda: [1, 1, 1, 1])
    """[data, z, y, x]; the product is the number of ranks."""
    global_batch: int = 16
    """Sequences per optimizer step, over all ranks."""
    micro_batch: int | None = None
    """Sequences per rank per forward/backward; global_batch / (data*z*micro_batch) micro-steps
    are accumulated. Default: one micro-step."""
    steps: int | None = 100
    """Optimizer steps (or give epochs instead)."""
    epochs: float | None = None
    """Passes over the training set; overrides steps when set."""
    stop_at_step: int | None = None
    """End this session after this step (with a checkpoint) without changing the schedule; a
    later run with resume continues. For job time limits and preemption drills."""
    lr: float = 3e-4
    """Peak learning rate."""
    min_lr_ratio: float = 0.1
    """Cosine decay ends at lr * min_lr_ratio."""
    warmup_steps: int = 10
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW decoupled weight decay (matrices only; not norms or biases)."""
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""
    precision: str = "fp32"
    """"fp32", or "bf16": bf16 autocast with fp32 master weights and fp32 gradient reduction."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward instead of storing its activations."""
    overlap_communication: bool = True
    """Overlap collectives with computation (axolab.parallel.Optimizations: the input-gradient
    all-reduce behind the weight-gradient matmul, deferred Z reduce-scatters, weight prefetch,
    data-parallel buckets reduced from backward hooks). Results are unchanged."""
    tune_matmul: bool = False
    """Time the layouts of each matmul shape once and use the fastest (results unchanged)."""
    loss: str = "standard"
    """"standard" cross-entropy or "goldfish" (drop 1/goldfish_k of the tokens from the loss)."""
    goldfish_k: int = 4
    """Goldfish: one token in k is left out of the loss."""
    goldfish_h: int = 13
    """Goldfish: context width of the hash that picks dropped tokens."""
    goldfish_strategy: str = "hash"
    """Goldfish: "hash" (same passage, same mask) or "static" (every k-th position)."""
    eval_interval: int = 50
    """Validation loss every this many steps (0: never)."""
    eval_batches: int = 4
    """Global batches of the validation set per evaluation."""
    checkpoint_interval: int = 50
    """Checkpoint every this many steps (0: only at the end)."""
    keep_checkpoints: int = 2
    """How many of the newest checkpoints to keep."""
    resume: bool = True
    """Resume from the newest complete checkpoint in run_dir, if there is one."""
    log_interval: int = 1
    """Write a metrics.jsonl line every this many steps."""
    seed: int = 0
    """Seed of initialization and data order (the order depends on seed and step only)."""
    peak_flops_per_device: float | None = None
    """FLOP/s of one device for MFU; default: a table for known GPUs, measured on CPUs."""
    collective_timeout_s: float = 600.0
    """A collective that waits longer (a dead rank) fails the job instead of hanging it."""
    progress: bool = True
    """tqdm progress bar on rank 0."""

    def validate(self) -> None:
        g = self.grid
        if len(g) != 4 or any((not isinstance(v, int)) or v < 1 for v in g):
            raise ValueError(f"grid must be four positive integers [data, z, y, x], got {g}")
        shards = g[0] * g[1]
        if self.global_batch % shards:
            raise ValueError(f"global_batch={self.global_batch} does not split over data*z = "
                             f"{shards} batch shards")
        local = self.global_batch // shards
        if self.micro_batch is not None and (self.micro_batch < 1 or local % self.micro_batch):
            raise ValueError(f"micro_batch={self.micro_batch} must divide the {local} sequences "
                             f"per batch shard (global_batch {self.global_batch} / data*z "
                             f"{shards})")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision={self.precision!r}: expected fp32 or bf16")
        if self.loss not in ("standard", "goldfish"):
            raise ValueError(f"loss={self.loss!r}: expected standard or goldfish")
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        if self.loss == "goldfish" and self.goldfish_k < 2:
            raise ValueError(f"goldfish_k={self.goldfish_k} must be at least 2")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys."""
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown field {key!r}{hint}")
    obj = cls(**data)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def load_config(cls, path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    return config_from_dict(cls, json.loads(path.read_text()), path.name)


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    tmp.replace(path)
