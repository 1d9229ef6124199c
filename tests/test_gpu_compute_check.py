"""benchmarks/gpu_compute_check.py on a tiny model on this machine's CPU (the device it finds):
both one-rank variants start from the same loss, and the prediction beside the measured step
is the planner's own for the same shapes and workload."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu_compute_check as gcc  # noqa: E402


def test_tiny_dry_run_writes_both_cases(tmp_path):
    out = tmp_path / "gpu.json"
    assert gcc.main(["--tiny", "--repeats", "1", "--steps", "1", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    losses = r["overhead"]["first_loss"]
    assert losses["axolab (1,1,1,1)"] == pytest.approx(losses["HF + AdamW"], rel=1e-5)

    from axolab.perfmodel import GridShape, Workload, get_machine, model_shapes, predict
    from transformers import LlamaConfig

    s = r["layers"]["shape"]
    config = LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                         intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"])
    want = predict(model_shapes(config), GridShape(1, 1, 1, 1),
                   Workload(global_batch=s["global_batch"], seq_len=s["seq_len"],
                            precision="bf16", activation_checkpointing=True),
                   get_machine("alps"))
    assert r["layers"]["prediction"]["step_time_s"] == pytest.approx(want.step_time_s)
    assert r["layers"]["measured_step_s"] > 0
    pieces = r["layers"]["pieces"]
    assert set(pieces["matmul"]) == {"qkv", "o", "gate_up", "down"}
    assert 0 < pieces["matmul_efficiency"] < 1  # no CPU reaches a GPU's bf16 peak
    # The layer's efficiency is its matmuls' FLOPs over their summed times: the per-product
    # efficiencies weighted harmonically by FLOPs (each product [n, k] x [k, m], three per
    # layer: forward, input gradient, weight gradient, the same FLOPs each).
    n, h, i = s["global_batch"] * s["seq_len"], s["hidden"], s["intermediate"]
    qkv = (s["heads"] + 2 * s["kv_heads"]) * (h // s["heads"])
    sizes = {"qkv": h * qkv, "o": h * h, "gate_up": h * 2 * i, "down": i * h}
    flops = {name: 2 * n * km for name, km in sizes.items()}
    seconds_at_peak = sum(flops[name] / e for name, parts in pieces["matmul"].items()
                          for e in parts.values())
    assert pieces["matmul_efficiency"] == pytest.approx(3 * sum(flops.values()) / seconds_at_peak)
