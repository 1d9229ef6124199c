"""Throughput accounting: model FLOPs per token, device peak, utilization, memory."""

from __future__ import annotations

import math
import numbers
import resource
import statistics
import time
from pathlib import Path

from .files import append_jsonl, drop_torn_tail, read_jsonl, rewrite_jsonl

# Dense bf16 tensor-core peak per device (FLOP/s), from vendor data sheets.
GPU_PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12,
                 "MI250X": 191.5e12, "MI300X": 1307e12, "V100": 125e12}


# Throughput is summarized over the steps after warm-up: the first step always (it carries
# one-time costs: allocator growth, tuned-matmul choices, lazy imports) and the first 10% of
# the steps done so far. The report and the scaling sweep both use this, so one run shows one
# median throughput wherever it is read.
WARMUP_FRACTION = 0.1


def past_warmup(step: int, last_step: int) -> bool:
    """Whether logged step ``step`` counts for throughput, ``last_step`` the newest logged."""
    return step > max(1.0, WARMUP_FRACTION * last_step)


THROUGHPUT_FIELDS = ("step_time_s", "tokens_per_s", "model_flops_per_s", "mfu")


def _number(value) -> bool:
    # Records read through pandas carry NaN for a field a step did not log.
    return isinstance(value, numbers.Real) and not isinstance(value, bool) \
        and math.isfinite(value)


def throughput_summary(records: list[dict]) -> dict[str, float | None]:
    """Medians of the throughput fields over the steps past warm-up of one run's metrics
    records (the newest step when every logged step is still warm-up), and ``timed_steps``,
    how many steps the medians cover. A field no step logged is None."""
    timed = [r for r in records if _number(r.get("step_time_s"))]
    out: dict[str, float | None] = {k: None for k in THROUGHPUT_FIELDS}
    out["timed_steps"] = 0
    if not timed:
        return out
    last = max(r["step"] for r in timed)
    steady = [r for r in timed if past_warmup(r["step"], last)] or timed[-1:]
    for key in THROUGHPUT_FIELDS:
        values = [float(r[key]) for r in steady if _number(r.get(key))]
        out[key] = statistics.median(values) if values else None
    out["timed_steps"] = len(steady)
    return out


def flops_per_token(config, seq_len: int) -> float:
    """Training FLOPs per token: 6 per parameter-token for the matmuls (forward + backward,
    embedding lookup excluded) plus attention scores and values, 12 * layers * hidden * seq
    (the PaLM appendix B estimate)."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    attn = h * head_dim * (heads + 2 * kv) + heads * head_dim * h
    # GPT-NeoX's and GPT-2's MLPs have no gate: two matrices instead of three.
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) \
        or 4 * h
    mlp = (2 if getattr(config, "model_type", "") in ("gpt_neox", "gpt2") else 3) * h * inner
    matmul_params = layers * (attn + mlp) + h * config.vocab_size  # lm head included
    return 6.0 * matmul_params + 12.0 * layers * h * seq_len


def measured_cpu_peak(n: int = 512, repeats: int = 5) -> float:
    """FLOP/s of a square fp32 matmul on this process's threads (the CPU's practical peak)."""
    import torch  # here, not at the top: read_metrics serves notebook kernels, torch-free

    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def device_peak(device) -> float:
    if device.type == "cuda":
        import torch

        name = torch.cuda.get_device_name(device)
        for key, peak in GPU_PEAK_BF16.items():
            if key in name:
                return peak
        raise ValueError(f"unknown GPU {name!r}: set peak_flops_per_device in the config")
    return measured_cpu_peak()


def memory_mb(device) -> float:
    """Peak memory of this rank: GPU allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        import torch

        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MetricsLog:
    """metrics.jsonl, appended by one rank (the run directory's lock holder). On resume, lines
    past the checkpoint are dropped (an atomic rewrite) so the file reads as one uninterrupted
    run; a line torn by a kill is dropped before anything is appended."""

    def __init__(self, path: Path, resume_step: int | None, enabled: bool):
        self.path, self.enabled = Path(path), enabled
        if not enabled:
            return
        drop_torn_tail(self.path)
        if resume_step is not None and self.path.is_file():
            rewrite_jsonl(self.path, lambda r: r.get("step", 0) <= resume_step)
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def write(self, record: dict) -> None:
        if self.enabled:
            append_jsonl(self.path, record)


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Every complete record of RUN_DIR/metrics.jsonl (a torn last line is left out)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return read_jsonl(path)
