"""The overlap runtime's gradient bookkeeping (data-parallel buckets, deferred Z reduce-scatters)
in the cases a plain training step does not reach, on 8 gloo ranks against the serial model:

- a weight that gets two gradient contributions in one backward (two forward passes summed
  into one loss);
- gradients accumulated over several backward passes without ``no_data_sync`` (and the same
  loss's backward twice, with ``retain_graph``), with ``sync_gradients`` once at the end, after
  every micro-step, or twice in a row;
- frozen parameters (frozen before the first forward, frozen and unfrozen between steps);
- a backward pass that raises midway, and the steps after it.

Each case runs with every optimization off, with the defaults, and with small buckets (many
data-parallel buckets and two reduce-scatters in flight).
"""

from __future__ import annotations

import torch

from models import rel_err, tiny_model

TOL = 2e-5
# D=2 and Z=2 (data buckets over D and over D*Z, deferred Z reduce-scatters), with X or Y;
# and Z=1, where the gradients of stacked layers (q/k/v, gate/up) are cut from one block by
# autograd and share a version counter.
SHAPES = [(2, 2, 1, 2), (2, 2, 2, 1), (2, 1, 2, 2)]


def _settings():
    from axolab.parallel import Optimizations

    return {"none": Optimizations.none(), "default": Optimizations(),
            "small buckets": Optimizations(bucket_mb=0.001, max_in_flight=2,
                                           gather_bucket_mb=0.02)}


def _grid(shape):
    from axolab.parallel import Grid

    return Grid.init(*shape, ranks=range(shape[0] * shape[1] * shape[2] * shape[3]))


def _ids(seed: int) -> torch.Tensor:
    return torch.randint(0, 99, (8, 6), generator=torch.Generator().manual_seed(seed))


def _serial_grads(model) -> dict:
    return {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}


def _loss(model, grid, ids):
    ids = grid.shard_batch(ids)
    return model(input_ids=ids, labels=ids).loss


def _error(model, ref: dict) -> float:
    """Largest relative error of the model's (synced) gradients against the serial ones; a
    gradient present in one and missing in the other counts as 1."""
    from axolab.parallel import parallel_parameters

    worst = 0.0
    for key, module, attr, p in parallel_parameters(model):
        if (p.grad is None) != (ref[key] is None):
            worst = max(worst, 1.0)
        elif p.grad is not None:
            worst = max(worst, rel_err(module.full_tensor(attr, local=p.grad), ref[key]))
    return worst


def check_two_contributions(shape):
    """loss = model(a).loss + model(b).loss: every weight gets two gradients in one backward,
    the first one possibly reduce-scattered (and its data bucket launched) before the second
    arrives."""
    from axolab.parallel import parallelize, sync_gradients

    grid = _grid(shape)
    if grid is None:
        return {}
    a, b = _ids(0), _ids(1)
    report = {}
    for tied in (False, True):
        serial = tiny_model("llama", tied)
        (serial(input_ids=a, labels=a).loss + serial(input_ids=b, labels=b).loss).backward()
        ref = _serial_grads(serial)
        for name, opts in _settings().items():
            model = parallelize(tiny_model("llama", tied), grid, optimizations=opts)
            for step in range(2):  # the second step runs with the layer order known
                (_loss(model, grid, a) + _loss(model, grid, b)).backward()
                sync_gradients(model)
                report[f"{name}, tied={tied}, step {step}"] = _error(model, ref)
                model.zero_grad()
    return report


def check_accumulation(shape):
    """Two micro-steps accumulated with or without ``no_data_sync``, and one loss's backward
    run twice (``retain_graph``): the gradients must not depend on the optimizations."""
    from axolab.parallel import no_data_sync, parallelize, sync_gradients

    grid = _grid(shape)
    if grid is None:
        return {}
    a, b = _ids(0), _ids(1)
    serial = tiny_model("llama", False)
    (serial(input_ids=a, labels=a).loss / 2).backward()
    (serial(input_ids=b, labels=b).loss / 2).backward()
    ref = _serial_grads(serial)
    serial.zero_grad()
    (2 * serial(input_ids=a, labels=a).loss).backward()
    twice = _serial_grads(serial)
    report = {}
    for name, opts in _settings().items():
        model = parallelize(tiny_model("llama", False), grid, optimizations=opts)
        for pattern in ("no_data_sync on the first", "no no_data_sync",
                        "no_data_sync on the second", "zeroed in place, no no_data_sync",
                        "synced after each", "synced twice after each"):
            if pattern.startswith("zeroed in place"):
                # A step's reduced gradients zeroed in place (zero_grad(set_to_none=False))
                # are not mistaken for gradients still to be carried over.
                _loss(model, grid, b).backward()
                sync_gradients(model)
                model.zero_grad(set_to_none=False)
            for i, ids in enumerate((a, b)):
                loss = _loss(model, grid, ids) / 2
                inside = (pattern == "no_data_sync on the first" and i == 0) or \
                    (pattern == "no_data_sync on the second" and i == 1)
                if inside:
                    with no_data_sync(model):
                        loss.backward()
                else:
                    loss.backward()
                if pattern.startswith("synced"):
                    # sync_gradients after every micro-step (twice: the second changes
                    # nothing), as a loop written for one micro-step would call it.
                    for _ in range(1 + ("twice" in pattern)):
                        sync_gradients(model)
            sync_gradients(model)
            report[f"{name}, {pattern}"] = _error(model, ref)
            model.zero_grad()
        model.zero_grad()
        loss = _loss(model, grid, a)
        loss.backward(retain_graph=True)
        loss.backward()
        sync_gradients(model)
        report[f"{name}, one loss's backward twice"] = _error(model, twice)
    return report


FROZEN = ("model.norm.weight", "model.layers.1.input_layernorm.weight",
          "model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.o_proj.weight")


def check_frozen(shape):
    """Parameters frozen before the first forward (replicated vectors and depth-sharded
    weights), then unfrozen, then frozen again between steps: frozen ones get no gradient,
    the others the serial model's."""
    from axolab.parallel import parallelize, sync_gradients

    grid = _grid(shape)
    if grid is None:
        return {}
    ids = _ids(0)

    def freeze(model, frozen: bool):
        for name in FROZEN:
            model.get_parameter(name).requires_grad_(not frozen)

    refs = {}
    for frozen in (True, False):
        serial = tiny_model("llama", False)
        freeze(serial, frozen)
        serial(input_ids=ids, labels=ids).loss.backward()
        refs[frozen] = _serial_grads(serial)
    report = {}
    for name, opts in _settings().items():
        model = parallelize(tiny_model("llama", False), grid, optimizations=opts)
        for step, frozen in enumerate((True, False, True)):
            freeze(model, frozen)
            _loss(model, grid, ids).backward()
            sync_gradients(model)
            report[f"{name}, step {step}, frozen={frozen}"] = _error(model, refs[frozen])
            model.zero_grad()
    return report


def check_backward_exception(shape):
    """A backward that raises midway (a hook failing, as an out-of-memory error would), caught
    by the caller, gradients zeroed: the next steps are right and nothing is left in flight."""
    from axolab.parallel import parallelize, sync_gradients
    from axolab.parallel.parallel_state import parallel_state

    grid = _grid(shape)
    if grid is None:
        return {}
    a, b = _ids(0), _ids(1)
    serial = tiny_model("llama", False)
    serial(input_ids=b, labels=b).loss.backward()
    ref = _serial_grads(serial)

    def fail(grad):
        raise RuntimeError("simulated failure in backward")

    report = {}
    for name, opts in _settings().items():
        model = parallelize(tiny_model("llama", False), grid, optimizations=opts)
        runtime = parallel_state(model).runtime
        for attempt in range(2):  # the first learns the layer order, the second knows it
            loss = _loss(model, grid, a)
            handle = model.get_parameter("model.layers.0.input_layernorm.weight") \
                .register_hook(fail)
            try:
                loss.backward()
            except RuntimeError as e:
                assert "simulated failure" in str(e), e
            else:
                raise AssertionError("the backward did not raise")
            finally:
                handle.remove()
            del loss
            model.zero_grad()
            for step in range(2):
                _loss(model, grid, b).backward()
                sync_gradients(model)
                report[f"{name}, failure {attempt}, step {step}"] = _error(model, ref)
                model.zero_grad()
                left = (runtime._in_backward, runtime.weights.in_backward,
                        len(runtime.depth_grads.pending), len(runtime.depth_grads.collecting),
                        sum(bk.work is not None for bk in runtime.data_grads.buckets))
                report[f"{name}, failure {attempt}, step {step}: left in flight"] = \
                    float(any(left))
    return report


def _check(pool, fn, shape):
    reports = pool.run(fn, shape, timeout=300)
    assert reports[0], "rank 0 is always in the grid"
    bad = [f"rank {rank} {case}: {err:.2e}" for rank, report in enumerate(reports)
           for case, err in report.items() if not err < TOL]
    assert not bad, "\n".join(bad)


def test_two_gradients_of_a_weight_in_one_backward(pool8):
    for shape in SHAPES:
        _check(pool8, check_two_contributions, shape)


def test_accumulation_with_and_without_no_data_sync(pool8):
    for shape in (SHAPES[0], SHAPES[2]):
        _check(pool8, check_accumulation, shape)


def test_frozen_parameters(pool8):
    _check(pool8, check_frozen, SHAPES[0])


def test_a_failed_backward_leaves_nothing_behind(pool8):
    _check(pool8, check_backward_exception, SHAPES[1])
