"""Every performance optimization leaves losses, gradients and trained parameters unchanged.

On several grids, each switch of :class:`axolab.parallel.Optimizations` alone, all of them
together, and all with matmul tuning train a tiny Llama for two SGD steps of two accumulated
micro-batches; the blocking and fully optimized runs also with tied embeddings, activation
checkpointing or both (one combination per grid). Every run is compared with the serial model
trained on the same global batches in one process.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from models import rel_err, tiny_model

# Against the blocking run: only the order of floating-point sums may differ.
TOL = 2e-5
TOL_SERIAL = 2e-5
# SGD, not AdamW: Adam's first step moves every weight by about lr * sign(gradient), so a
# gradient that is 0 in one run and 1e-12 in the other (an embedding row no token used)
# would look like a large difference that says nothing about the optimizations.
# Between them every axis is > 1 next to every other one.
GRIDS = [(2, 2, 1, 2), (2, 2, 2, 1), (1, 2, 2, 2)]
# Tied embeddings (the lm head's gradient then comes from two places) and activation
# checkpointing (recompute gathers weights again, inside backward) for the blocking and the
# fully optimized runs: one combination per grid, so each is covered with every axis > 1 next
# to every other one and the module stays inside the suite's time budget.
VARIANTS = {GRIDS[0]: (True, False), GRIDS[1]: (False, True), GRIDS[2]: (True, True)}
# fuse_shared_inputs is on in "all" and off in "none"; test_parallel_layers compares its
# gradients and counts its collectives.
SWITCHES = ("overlap_input_grad", "overlap_depth_grad", "prefetch_weights", "bucket_data_grads",
            "tune_matmul")


def _settings():
    from axolab.parallel import Optimizations

    none = Optimizations.none()
    out = {"none": none}
    for name in SWITCHES:
        out[f"only-{name}"] = dataclasses.replace(none, **{name: True})
    # Weight gathers in buckets: the whole tiny model in one, then a few blocks per bucket.
    out["only-gather-buckets"] = dataclasses.replace(none, gather_bucket_mb=16.0)
    out["all"] = Optimizations()
    out["all+tune, small buckets, late prefetch"] = Optimizations(
        tune_matmul=True, bucket_mb=0.001, max_in_flight=2, gather_bucket_mb=0.02,
        prefetch_late_in_backward=True)
    return out


def _batches(vocab: int, steps: int = 2, rows: int = 8, seq: int = 10):
    g = torch.Generator().manual_seed(7)
    out = []
    for _ in range(steps):
        ids = torch.randint(0, vocab, (rows, seq), generator=g)
        labels = ids.clone()
        labels[torch.rand(labels.shape, generator=g) < 0.2] = -100
        out.append((ids, labels))
    return out


def _serial_run(model, batches, checkpointing: bool):
    from axolab.activation_checkpointing import enable_activation_checkpointing

    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for ids, labels in batches:
        out = model(input_ids=ids, labels=labels)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        opt.zero_grad()
        losses.append(out.loss.detach())
    return losses, grads, model.state_dict()


def _parallel_run(model, grid, batches, checkpointing: bool, micro: int = 2):
    from axolab.activation_checkpointing import enable_activation_checkpointing
    from axolab.parallel import full_state_dict, no_data_sync, parallel_parameters, \
        sync_gradients
    from axolab.parallel import comm

    if checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses = []
    for ids, labels in batches:
        ids, labels = grid.shard_batch(ids, pad_value=0), grid.shard_batch(labels, pad_value=-100)
        kept = comm.all_reduce_sum_((labels[:, 1:] != -100).sum().double(), grid.batch)
        step_loss = 0.0
        size = ids.shape[0] // micro
        for m in range(micro):
            part = slice(m * size, (m + 1) * size)
            out = model(input_ids=ids[part], labels=labels[part], num_items_in_batch=kept)
            if m < micro - 1:
                with no_data_sync(model):
                    out.loss.backward()
            else:
                out.loss.backward()
            step_loss += out.loss.detach()
        sync_gradients(model)
        grads = {key: module.full_tensor(attr, local=param.grad)
                 for key, module, attr, param in parallel_parameters(model)}
        opt.step()
        opt.zero_grad()
        losses.append(step_loss)
    return losses, grads, full_state_dict(model)


def check_optimizations(shape, names, variant):
    from axolab.parallel import Grid, parallelize

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    if grid is None:
        return {}
    settings = _settings()
    report = {}
    # Every switch on untied weights without recompute; the blocking and the fully optimized
    # runs also with the grid's (tied, checkpointing) variant.
    cases = [(name, False, False) for name in names]
    cases += [(name, *variant) for name in ("none", "all")]
    for tied in (False, True):
        serial = tiny_model("llama", tied)
        batches = _batches(serial.config.vocab_size)
        for checkpointing in (False, True):
            todo = [name for name, t, c in cases if (t, c) == (tied, checkpointing)]
            if not todo:
                continue
            serial_run = _serial_run(copy.deepcopy(serial), batches, checkpointing)
            blocking = None
            for name in todo:
                model = parallelize(copy.deepcopy(serial), grid, optimizations=settings[name])
                run = _parallel_run(model, grid, batches, checkpointing)
                blocking = blocking or run
                for against, ref in (("serial", serial_run), ("none", blocking)):
                    report[f"{name} vs {against}, tied={tied} ckpt={checkpointing}"] = \
                        _errors(run, ref)
    return report


def _errors(run, ref) -> dict:
    (losses, grads, params), (ref_losses, ref_grads, ref_params) = run, ref
    return {"loss": max(rel_err(a, b) for a, b in zip(losses, ref_losses)),
            "grads": max(rel_err(grads[k], ref_grads[k]) for k in grads),
            "params": max(rel_err(params[k], ref_params[k]) for k in ref_params)}


@pytest.mark.parametrize("shape", GRIDS, ids=lambda s: "dzyx%d%d%d%d" % s)
def test_every_optimization_matches_the_serial_model(pool8, shape):
    names = list(_settings())
    report = pool8.run(check_optimizations, shape, names, VARIANTS[shape], timeout=600)
    assert report[0], "rank 0 is always in the grid"
    for rank, per_rank in enumerate(report):
        for run, errs in per_rank.items():
            tol = TOL_SERIAL if "vs serial" in run else TOL
            for what, err in errs.items():
                assert err < tol, f"rank {rank} {run} {what}: rel err {err:.2e}"


def test_options_are_checked():
    from axolab.parallel import Optimizations

    with pytest.raises(ValueError, match="bucket_mb must be > 0"):
        Optimizations(bucket_mb=0)
    with pytest.raises(ValueError, match="max_in_flight >= 1"):
        Optimizations(max_in_flight=0)
    with pytest.raises(ValueError, match="gather_bucket_mb must be >= 0, got -1"):
        Optimizations(gather_bucket_mb=-1)
    with pytest.raises(ValueError, match="depth_grad_dtype 'fp16': expected one of"):
        Optimizations(depth_grad_dtype="fp16")


def check_dropped_model_is_freed(shape):
    """A model trained with every optimization on is freed once dropped, and with it its
    grid's process groups and their threads (gradient hooks must not keep it alive)."""
    import gc
    import os
    import weakref

    from axolab.parallel import Grid, parallelize

    def threads() -> int:
        return len(os.listdir("/proc/self/task"))

    gc.collect()
    before = threads()
    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    model = parallelize(tiny_model("llama", False), grid)
    _parallel_run(model, grid, _batches(model.config.vocab_size, steps=1), checkpointing=False)
    during = threads()
    alive = weakref.ref(model)
    grid.destroy()
    del model, grid
    gc.collect()
    return {"freed": alive() is None, "threads": (before, during, threads())}


def test_a_dropped_model_is_freed(pool8):
    for rank, report in enumerate(pool8.run(check_dropped_model_is_freed, (2, 2, 1, 2))):
        before, during, after = report["threads"]
        assert report["freed"], f"rank {rank}: the model outlived every reference to it"
        assert during > before and after <= before, f"rank {rank}: threads {report['threads']}"


def check_bf16_depth_grads(shape):
    """One bf16-autocast backward with the Z reduce-scatters in fp32 and in bf16, each
    overlapped and blocking: per linear weight, this rank's local
    gradient (its Z shard) in each run. The embedding's and every other gradient are returned
    too: depth_grad_dtype must not touch them."""
    from axolab.parallel import (Grid, Optimizations, parallel_parameters, parallelize,
                                 sync_gradients)
    from axolab.parallel import comm
    from axolab.parallel.linear import ParallelLinear

    grid = Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))
    if grid is None:
        return {}
    serial = tiny_model("llama", False)
    ids, labels = _batches(serial.config.vocab_size, steps=1)[0]
    ids, labels = grid.shard_batch(ids, pad_value=0), grid.shard_batch(labels, pad_value=-100)
    sent = []  # dtypes of the tensors reduce-scattered
    real = comm._REDUCE_SCATTER

    def spy(out, inp, *args, **kwargs):
        sent.append(str(inp.dtype))
        return real(out, inp, *args, **kwargs)

    runs = {}
    comm._REDUCE_SCATTER = spy
    try:
        blocking = Optimizations.none()
        for name, opts in (("fp32", Optimizations()),
                           ("bf16", Optimizations(depth_grad_dtype="bf16")),
                           ("fp32 blocking", blocking),
                           ("bf16 blocking", dataclasses.replace(blocking,
                                                                 depth_grad_dtype="bf16"))):
            sent.clear()
            model = parallelize(copy.deepcopy(serial), grid, optimizations=opts)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(input_ids=ids, labels=labels).loss
            loss.backward()
            sync_gradients(model)
            runs[name] = {
                "grads": {key: (isinstance(module, ParallelLinear), param.grad.clone())
                          for key, module, attr, param in parallel_parameters(model)},
                "grad_dtypes": sorted({str(p.grad.dtype) for p in model.parameters()}),
                "sent": sorted(set(sent))}
    finally:
        comm._REDUCE_SCATTER = real
    grid.destroy()
    return runs


def test_bf16_depth_grads_are_the_fp32_sums_rounded(pool8):
    """depth_grad_dtype="bf16": on Z = 2 each weight gradient's Z sum is the sum of two bf16
    matmul outputs, rounded once to bf16: exactly the fp32 run's gradient rounded to bf16,
    in fp32 .grad tensors; the linear layers' reduce-scatters carry bf16 (the embedding's
    stays fp32), and every other gradient is the fp32 run's, bit for bit."""
    for rank, runs in enumerate(pool8.run(check_bf16_depth_grads, (1, 2, 2, 2))):
        for name in ("bf16", "bf16 blocking"):
            # Blocking and overlapped runs sum activation gradients in other orders: each
            # bf16 run against the fp32 run of its own schedule.
            run, ref = runs[name], runs[name.replace("bf16", "fp32")]
            assert ref["sent"] == ["torch.float32"], (rank, name, ref["sent"])
            assert run["grad_dtypes"] == ["torch.float32"], (rank, name, run["grad_dtypes"])
            assert run["sent"] == ["torch.bfloat16", "torch.float32"], (rank, name, run["sent"])
            rounded_somewhere = False
            for key, (linear, grad) in run["grads"].items():
                want = ref["grads"][key][1]
                if linear:
                    want = want.to(torch.bfloat16).float()
                    rounded_somewhere |= not torch.equal(want, ref["grads"][key][1])
                assert torch.equal(grad, want), f"rank {rank} {name} {key}: max diff " \
                    f"{(grad - want).abs().max().item():.3g}"
            assert rounded_somewhere, f"rank {rank}: no fp32 gradient needed rounding"
