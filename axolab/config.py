"""Run configurations: typed dataclasses with a docstring per field, read strictly from JSON.

A notebook's ``parameters`` cell maps 1:1 onto one of these; every run writes its config next
to its results. Unknown keys are errors (with the closest valid name) so a typo never silently
falls back to a default.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .grid_shape import GridShape
from .typecheck import check_field_types


@dataclass
class EvalConfig:
    """How canaries are probed, by `axolab eval` and by in-training probes. A papermill
    parameter surface like TrainConfig: every field is plain JSON."""

    prefix_len: int = 32
    """Prompt tokens (canary tokens; shorter canaries use their first half)."""
    suffix_len: int = 32
    """Tokens to reproduce after the prompt (capped by the canary's length)."""
    curve_prefix_lens: list[int] = field(default_factory=lambda: [4, 8, 16, 32])
    """Prompt lengths k of the extraction curve (Carlini et al.'s k-extractability): for each
    k, the share of member canaries whose last ``suffix_len`` tokens greedy decoding reproduces
    from the k tokens before them. One set for every k: the member canaries holding
    max(k) + suffix_len tokens with their training context (eval.json records how many)."""
    mia_k: float = 0.2
    """Fraction of lowest-scoring tokens for Min-K% and Min-K%++."""
    batch_size: int = 32
    """Sequences per forward pass (over the whole grid; each batch is split over data*z)."""
    exposure: bool = True
    """Rank each secret canary among its candidates (exposure, Carlini et al. 2019); costs one
    scoring pass over every candidate."""
    continuations: bool = True
    """Write each canary's greedy continuation to continuations.jsonl (the canary browser and
    `continuations()` read it instead of loading the model)."""
    validation_loss: bool = False
    """Also the mean token loss over the whole validation split (eval.json validation_loss)."""
    precision: Literal["fp32", "bf16"] = "fp32"
    """"fp32", or "bf16" autocast (GPUs). In-training probes use the run's precision."""
    beams: int = 1
    """Beam-search adversary: with b > 1 each canary is also continued by the best of b beams
    (records' beam_exact, eval.json beam_exact_by_repetitions). 1: greedy only."""
    samples: int = 0
    """Sampling adversary: n > 0 draws n continuations of each canary (top_k, temperature);
    a canary counts as extracted when any of them is its suffix (sample_exact_any), and
    sample_exact_rate is the fraction that are. 0: none."""
    top_k: int = 40
    """Sampling: draw from the top_k most likely tokens (0: the whole vocabulary)."""
    temperature: float = 1.0
    """Sampling: softmax temperature."""
    sample_seed: int = 0
    """Sampling: the draws depend on this seed and the canary's position only (the same on
    every grid)."""
    rows: int = 0
    """Training-data extraction beyond canaries: sample this many rows of each of row_splits
    and greedily continue them (row_extraction.jsonl; eval.json row_extraction). 0: none."""
    row_splits: list[str] = field(default_factory=lambda: ["train", "validation"])
    """Splits sampled for row extraction; validation (never trained on) is the baseline."""
    row_prefix_len: int = 32
    """Row extraction prompt tokens (Pythia: 32); 0: the whole row but its last row_suffix_len
    tokens (the goldfish paper's probe)."""
    row_suffix_len: int = 32
    """Row extraction tokens to reproduce (Pythia: 32; goldfish paper: 50)."""
    row_seed: int = 0
    """Seed of the row sample (the same rows for every checkpoint)."""
    reference: str = ""
    """A reference model for the calibrated membership score "reference" (the target's mean
    token log-likelihood minus the reference's): a Hugging Face model directory or an axolab run
    directory (its newest intact checkpoint), sharing the dataset's tokenizer. Typically the
    base model of a fine-tuning study, or a model trained without the canaries. Empty: none.
    `axolab eval` only (a probe cannot load a second model mid-training)."""

    def validate(self, where: str = "eval config") -> None:
        """Refuse values that would fail once ranks are running."""
        check_field_types(self, where)
        for name in ("prefix_len", "suffix_len", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{where}: {name}={getattr(self, name)} must be at least 1")
        if any(k < 1 for k in self.curve_prefix_lens):
            raise ValueError(f"{where}: curve_prefix_lens={self.curve_prefix_lens} must all be "
                             "at least 1")
        if not 0 < self.mia_k <= 1:
            raise ValueError(f"{where}: mia_k={self.mia_k} must be a fraction in (0, 1]")
        for name, low in (("beams", 1), ("samples", 0), ("top_k", 0), ("rows", 0),
                          ("row_prefix_len", 0), ("row_suffix_len", 1)):
            if getattr(self, name) < low:
                raise ValueError(f"{where}: {name}={getattr(self, name)} must be at least {low}")
        if self.temperature <= 0:
            raise ValueError(f"{where}: temperature={self.temperature} must be positive")
        bad = [s for s in self.row_splits if s not in ("train", "validation")]
        if bad or not self.row_splits:
            raise ValueError(f"{where}: row_splits={self.row_splits} must name 'train' and/or "
                             "'validation'")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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
    """Passes over the training set; overrides steps when set. The last step is rounded up to a
    whole batch, whose rows past the requested passes are read but are never targets: every row
    is trained on exactly ``epochs`` times (half of them once for 0.5)."""
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
    precision: Literal["fp32", "bf16"] = "fp32"
    """"fp32", or "bf16": bf16 autocast with fp32 master weights and fp32 gradient reduction."""
    activation_checkpointing: bool = False
    """Recompute each transformer block in backward instead of storing its activations."""
    overlap_communication: bool = True
    """Overlap collectives with computation (axolab.parallel.Optimizations: the input-gradient
    all-reduce behind the weight-gradient matmul, deferred Z reduce-scatters, weight prefetch,
    data-parallel buckets reduced from backward hooks). Results are unchanged."""
    late_backward_prefetch: bool = False
    """With overlap_communication and Z > 1: start a decoder layer's backward weight gather at
    the last block of the layer after it instead of its first (one layer held gathered in
    backward instead of two: less memory, less of the gather hidden; results unchanged)."""
    tune_matmul: bool = False
    """Time the layouts of each matmul shape once and use the fastest (results unchanged)."""
    depth_grad_dtype: Literal["fp32", "bf16"] = "fp32"
    """dtype of the weight gradients' reduce-scatter over Z (Optimizations.depth_grad_dtype):
    "bf16" halves those bytes, and rounds each gradient's sum over Z to bf16 (with precision
    "bf16" the gradient leaves its matmul in bf16 anyway)."""
    loss: Literal["standard", "goldfish"] = "standard"
    """"standard" cross-entropy or "goldfish" (drop 1/goldfish_k of the tokens from the loss)."""
    goldfish_k: int = 4
    """Goldfish: one token in k is left out of the loss."""
    goldfish_h: int = 13
    """Goldfish: context width of the hash that picks dropped tokens."""
    goldfish_strategy: Literal["hash", "hash-table", "static"] = "hash"
    """Goldfish: "hash" (same passage, same mask; order-sensitive), "hash-table" (the goldfish
    paper's released rule: product of the window's ids into a seeded table, to compare with
    its models) or "static" (every k-th position)."""
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
    memorization_interval: int = 0
    """Probe the canaries of ``data`` with the live model every this many steps (0: never),
    appending a curve record to memorization_curve.jsonl. No checkpoint is written and the
    training result is the same with probes on or off."""
    memorization_at_epochs: bool = False
    """Probe the canaries also at every epoch boundary (and after the last step)."""
    probe: EvalConfig = field(default_factory=lambda: EvalConfig(continuations=False))
    """How the in-training probes score the canaries (an EvalConfig)."""

    def validate(self) -> None:
        """Refuse, with the field and the numbers, anything that would fail or silently
        misbehave once ranks are running (every check here is cheap and torch-free)."""
        check_field_types(self, "train config")
        shards = GridShape.of(self.grid).batch_shards
        at_least = {"global_batch": 1, "warmup_steps": 0, "eval_interval": 0, "eval_batches": 1,
                    "checkpoint_interval": 0, "keep_checkpoints": 1, "log_interval": 1,
                    "seed": 0, "goldfish_h": 1, "memorization_interval": 0}
        for name, low in at_least.items():
            if getattr(self, name) < low:
                raise ValueError(f"{name}={getattr(self, name)} must be at least {low}")
        for name in ("steps", "stop_at_step", "micro_batch"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be at least 1 (or null)")
        positive = ("lr", "eps", "collective_timeout_s")
        for name in positive:
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}={getattr(self, name)} must be positive")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"epochs={self.epochs} must be positive (or null)")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip={self.grad_clip} must be positive, or null for no "
                             "clipping (a negative norm would reverse the gradient)")
        if self.peak_flops_per_device is not None and not self.peak_flops_per_device > 0:
            raise ValueError(f"peak_flops_per_device={self.peak_flops_per_device} must be positive")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio={self.min_lr_ratio} must be within [0, 1]")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay={self.weight_decay} must be at least 0")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas={self.betas} must be two numbers in [0, 1)")
        if self.global_batch % shards:
            raise ValueError(f"global_batch={self.global_batch} does not split over data*z = "
                             f"{shards} batch shards")
        local = self.global_batch // shards
        if self.micro_batch is not None and local % self.micro_batch:
            raise ValueError(f"micro_batch={self.micro_batch} must divide the {local} sequences "
                             f"per batch shard (global_batch {self.global_batch} / data*z "
                             f"{shards})")
        if self.steps is None and self.epochs is None:
            raise ValueError("give steps or epochs")
        if self.loss == "goldfish" and self.goldfish_k < 2:
            raise ValueError(f"goldfish_k={self.goldfish_k} must be at least 2")
        self.probe.validate("probe")
        if self.probe.rows:
            raise ValueError(f"probe: rows={self.probe.rows}: row extraction is measured by "
                             "`axolab eval` on the kept checkpoints, not by in-training probes")
        if self.probe.reference:
            raise ValueError(f"probe: reference={self.probe.reference!r}: in-training probes "
                             "score with the live model only; score against a reference with "
                             "`axolab eval --reference` on the kept checkpoints")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def config_from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a mapping, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping of field names to values, got "
                         f"{type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"{where}: unknown field {key!r}{hint}")
    data = dict(data)
    hints = typing.get_type_hints(cls)
    for key, value in data.items():
        # A nested config (TrainConfig.probe) arrives as a mapping of its own fields.
        if dataclasses.is_dataclass(hints[key]) and isinstance(value, dict):
            data[key] = config_from_dict(hints[key], value, f"{where}: {key}")
    obj = cls(**data)
    check_field_types(obj, where)
    if hasattr(obj, "validate"):
        obj.validate()
    return obj


def load_config(cls, path: str | Path):
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"config file {path} is not valid JSON: {e}") from None
    return config_from_dict(cls, data, path.name)


def write_json_atomic(path: str | Path, data) -> None:
    """Write JSON through a temporary file and a rename, so readers never see half a file."""
    from .files import write_text_atomic

    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")
