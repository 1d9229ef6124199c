"""Parallel pieces against their serial torch/HF counterparts on 8 gloo ranks."""

import copy

import pytest
import torch
import torch.nn.functional as F

from models import rel_err, tiny_model


def _grid(shape):
    from axolab.parallel import Grid

    n = shape[0] * shape[1] * shape[2] * shape[3]
    return Grid.init(*shape, ranks=range(n))


def vocab_ops(shape, vocab):
    """Vocab-parallel CE / log-probs / argmax vs torch on the full logits, incl. padded slices."""
    from axolab.parallel import (VocabShard, vocab_parallel_argmax, vocab_parallel_cross_entropy,
                                 vocab_parallel_logprobs)
    from axolab.parallel.layout import padded_size

    grid = _grid(shape)
    if grid is None:
        return None
    g = torch.Generator().manual_seed(vocab)
    # Small integers make exact ties common, which argmax must break like torch (lowest id).
    full = torch.randint(-3, 4, (6, 5, vocab), generator=g).double()
    targets = torch.randint(0, vocab, (6, 5), generator=g)
    targets[0, :3] = -100
    local_n = padded_size(vocab, grid.y.size) // grid.y.size
    shard = VocabShard(grid.y, grid.y.index * local_n, local_n, vocab)
    local = F.pad(full, (0, local_n * grid.y.size - vocab), value=123.0)  # padding must be ignored
    local = local[..., shard.start:shard.start + local_n].clone().requires_grad_()
    ref = full.clone().requires_grad_()
    ce = vocab_parallel_cross_entropy(local, targets, shard)
    ref_ce = F.cross_entropy(ref.transpose(1, 2), targets, reduction="none")
    upstream = torch.rand(6, 5, generator=g, dtype=torch.float64)
    (ce * upstream).sum().backward(retain_graph=True)
    (ce * upstream).sum().backward()  # a second backward through the same graph must work
    (2 * ref_ce * upstream).sum().backward()
    safe = targets.clamp_min(0)
    return {
        "ce": rel_err(ce, ref_ce),
        # The reference gradient, zero-padded like the logits: padding columns must get none.
        "grad": rel_err(local.grad, F.pad(ref.grad, (0, local_n * grid.y.size - vocab))
                        [..., shard.start:shard.start + local_n]) if shard.start < vocab
        else float(local.grad.abs().max()),
        "logprobs": rel_err(vocab_parallel_logprobs(local.detach(), safe, shard),
                            torch.log_softmax(full, -1).gather(-1, safe[..., None])[..., 0]),
        "argmax_equal": bool(torch.equal(vocab_parallel_argmax(local.detach(), shard),
                                         full.argmax(-1))),
    }


@pytest.mark.parametrize("shape,vocab", [((1, 1, 4, 2), 9), ((2, 1, 4, 1), 13), ((1, 2, 2, 2), 7),
                                         ((1, 1, 8, 1), 50)])
def test_vocab_parallel_ops(pool8, shape, vocab):
    results = pool8.run(vocab_ops, shape, vocab)
    # None: a pool rank outside the grid; every rank of the grid must answer
    assert sum(r is not None for r in results) == shape[0] * shape[1] * shape[2] * shape[3], results
    for rank, r in enumerate(results):
        if r is None:
            continue
        assert r["argmax_equal"], f"rank {rank}: argmax differs from torch.argmax"
        for k in ("ce", "grad", "logprobs"):
            assert r[k] < 1e-12, f"rank {rank}: {k} rel err {r[k]:.2e}"


def layer_norm(shape):
    from axolab.parallel.norm import ParallelLayerNorm

    grid = _grid(shape)
    if grid is None:
        return None
    torch.manual_seed(0)
    ref = torch.nn.LayerNorm(16, eps=1e-5).double()
    with torch.no_grad():
        ref.weight.normal_()
        ref.bias.normal_()
    norm = ParallelLayerNorm(16, grid, eps=1e-5, dtype=torch.float64)
    norm.load_full("weight", ref.weight.detach())
    norm.load_full("bias", ref.bias.detach())
    x = torch.randn(4, 3, 16, dtype=torch.float64) * 3 + 1
    up = torch.randn(4, 3, 16, dtype=torch.float64)
    xs = x[..., norm.layout.local_slice].clone().requires_grad_()
    xr = x.clone().requires_grad_()
    (ref(xr) * up).sum().backward()
    (norm(xs) * up[..., norm.layout.local_slice]).sum().backward()
    return {"out": rel_err(norm(xs), ref(xr)[..., norm.layout.local_slice]),
            "dx": rel_err(xs.grad, xr.grad[..., norm.layout.local_slice]),
            "dw": rel_err(norm.weight.grad, ref.weight.grad[norm.layout.local_slice]),
            "db": rel_err(norm.bias.grad, ref.bias.grad[norm.layout.local_slice])}


def test_layer_norm_over_split_hidden(pool8):
    for rank, r in enumerate(pool8.run(layer_norm, (1, 1, 2, 4))):
        for k, v in r.items():
            assert v < 1e-12, f"rank {rank}: {k} rel err {v:.2e}"


def clip_and_mistral(shape):
    """Global grad-norm clipping vs torch's, on Mistral (sliding window) with a padding token
    and left-padded rows under an attention mask."""
    from axolab.parallel import (clip_grad_norm_, full_state_dict, gather_logits, parallelize,
                                 sync_gradients, vocab_shard)

    grid = _grid(shape)
    if grid is None:
        return None
    serial = tiny_model("mistral", tied=False)
    serial.config.pad_token_id = 3
    serial.model.embed_tokens.padding_idx = 3
    model = parallelize(copy.deepcopy(serial), grid)
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, 101, (4, 12), generator=g)
    ids[1, :4] = 3
    ids[2, 7] = 3
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    labels = ids.masked_fill(mask == 0, -100)
    ref = serial(input_ids=ids, attention_mask=mask, labels=labels)
    ref.loss.backward()
    ref_norm = torch.nn.utils.clip_grad_norm_(serial.parameters(), max_norm=0.1)
    out = model(input_ids=grid.shard_batch(ids), attention_mask=grid.shard_batch(mask),
                labels=grid.shard_batch(labels))
    out.loss.backward()
    sync_gradients(model)
    norm = clip_grad_norm_(model, max_norm=0.1)
    logits = gather_logits(out.logits, vocab_shard(model), grid)
    grads = {k: v.grad for k, v in serial.named_parameters()}
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.grad)  # export the clipped gradients through the state-dict machinery
    got = full_state_dict(model)
    keep = mask.bool()
    return {"loss": rel_err(out.loss, ref.loss), "norm": rel_err(norm, ref_norm),
            "logits": rel_err(logits[keep], ref.logits[keep]),
            "clipped_grads": max(rel_err(got[k], grads[k]) for k in grads),
            "pad_row_grad": float(got["model.embed_tokens.weight"][3].abs().max())}


@pytest.mark.parametrize("shape", [(2, 1, 2, 2), (1, 2, 2, 2), (1, 2, 4, 1)])
def test_clipping_mistral_padding_and_masks(pool8, shape):
    results = pool8.run(clip_and_mistral, shape)
    # None: a pool rank outside the grid; every rank of the grid must answer
    assert sum(r is not None for r in results) == shape[0] * shape[1] * shape[2] * shape[3], results
    for rank, r in enumerate(results):
        if r is None:
            continue
        assert r["pad_row_grad"] == 0.0, f"rank {rank}: padding_idx row got a gradient"
        for k in ("loss", "norm", "logits", "clipped_grads"):
            assert r[k] < 2e-5, f"rank {rank}: {k} rel err {r[k]:.2e}"


def meta_then_load(shape):
    """parallelize() on the meta device allocates nothing; loading each rank's slices of the
    serial weights afterwards gives the serial model's loss."""
    from axolab.parallel import parallel_modules, parallelize

    grid = _grid(shape)
    if grid is None:
        return None
    serial = tiny_model("qwen2", tied=True)
    with torch.device("meta"):
        empty = type(serial)(serial.config)
    model = parallelize(empty, grid)
    all_meta = all(p.is_meta for p in model.parameters())
    local = sum(p.numel() for p in model.parameters())
    full = serial.state_dict()
    for name, module in parallel_modules(model):
        for pname, p in list(module.named_parameters(recurse=False)):
            setattr(module, pname, torch.nn.Parameter(torch.empty_like(p, device="cpu")))
    if serial.config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    for name, module in parallel_modules(model):
        for pname, _ in module.named_parameters(recurse=False):
            module.load_full(pname, full[f"{name}.{pname}"])
    model.model.rotary_emb = serial.model.rotary_emb  # buffers are not parameters
    ids = torch.randint(0, 128, (grid.batch_shards * 2, 10), generator=torch.Generator().manual_seed(1))
    ref = serial(input_ids=ids, labels=ids).loss
    got = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids)).loss
    return {"all_meta": all_meta, "local_numel": local,
            "serial_numel": sum(p.numel() for p in serial.parameters()),
            "loss": rel_err(got, ref)}


def test_meta_device_model(pool8):
    for rank, r in enumerate(pool8.run(meta_then_load, (2, 2, 2, 1))):
        assert r["all_meta"], f"rank {rank}: parallelize materialized weights of a meta model"
        # 4-way model parallel (z*y = 4): each rank holds about a quarter of the weights.
        assert r["local_numel"] < 0.3 * r["serial_numel"], r
        assert r["loss"] < 2e-5, f"rank {rank}: loss rel err {r['loss']:.2e}"


def bad_inputs():
    """Errors come before any collective: every collective is replaced by one that fails."""
    import torch.distributed as dist

    from axolab.parallel import Grid, parallelize

    grid = Grid.init(2, 1, 2, 2)
    calls = []
    saved = {n: getattr(dist, n) for n in ("all_reduce", "all_gather_into_tensor",
                                           "reduce_scatter_tensor", "new_group", "barrier")}
    for n in saved:
        setattr(dist, n, lambda *a, _n=n, **k: calls.append(_n))
    messages = []
    try:
        for args in [(3, 1, 1, 2), (1, 1, 1, 4)]:
            try:
                Grid.init(*args)
            except ValueError as e:
                messages.append(str(e))
        model = tiny_model("llama", tied=False)
        model.config.num_key_value_heads = 3  # as if the checkpoint had 3 kv heads
        try:
            parallelize(model, grid)
        except ValueError as e:
            messages.append(str(e))
        odd = tiny_model("llama", tied=False)
        odd.model.layers[0].mlp.gate_proj = torch.nn.Linear(32, 63, bias=False)
        try:
            parallelize(odd, grid)
        except ValueError as e:
            messages.append(str(e))
        try:
            grid.shard_batch(torch.zeros(3, 2))
        except ValueError as e:
            messages.append(str(e))
        dropout = tiny_model("llama", tied=False)
        dropout.config.attention_dropout = 0.1
        try:
            parallelize(dropout, grid)  # x=2: ranks recomputing one attention would disagree
        except ValueError as e:
            messages.append(str(e))
    finally:
        for n, f in saved.items():
            setattr(dist, n, f)
    return messages, calls


def test_bad_grid_and_model_fail_before_any_collective(pool8):
    for messages, calls in pool8.run(bad_inputs):
        assert calls == [], f"collectives were called: {calls}"
        assert len(messages) == 6, messages
        assert "3*1*1*2 = 6" in messages[0] and "8 ranks" in messages[0]
        assert "= 4" in messages[1]
        assert "num_key_value_heads=3" in messages[2] and "y=2" in messages[2]
        assert "model.layers.0.mlp.gate_proj: out_features=63" in messages[3]
        assert "3 rows" in messages[4] and "data*z = 2" in messages[4]
        assert "attention_dropout=0.1 with x=2" in messages[5]


def bad_token_on_one_shard(where):
    """A bad id or label on one batch shard must fail every rank, not leave some waiting."""
    from axolab.parallel import parallelize

    grid = _grid((2, 1, 2, 2))
    model = parallelize(tiny_model("llama", tied=False), grid)
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    if where == "ids":
        ids[1, 3] = 99
    else:
        labels[1, 3] = 150
    try:
        model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(labels))
    except ValueError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("where", ["ids", "labels"])
def test_bad_token_on_one_shard_fails_all_ranks(pool8, where):
    messages = pool8.run(bad_token_on_one_shard, where, timeout=120)
    for rank, m in enumerate(messages):
        assert "outside the vocabulary" in m, f"rank {rank}: {m}"
    shard1 = [m for m in messages if "e.g." in m]
    assert len(shard1) == 4 and all(("e.g. 99" in m) or ("e.g. 150" in m) for m in shard1)
    assert sum("on another batch shard" in m for m in messages) == 4


HOST_READS = {"item", "tolist", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy"}


def host_reads_in_a_training_step(bad: bool):
    """The host reads a training step's forward and backward make (each waits for the device
    to finish everything queued before it): the token-id checks of the embedding and the loss
    are read once, when ``checks.deferred()`` ends, and still fail every rank on a bad id."""
    from torch.overrides import TorchFunctionMode

    from axolab.parallel import parallel_state, parallelize

    class Reads(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            name = getattr(func, "__name__", "")
            if name in HOST_READS:
                self.seen.append(name)
            return func(*args, **(kwargs or {}))

    grid = _grid((2, 1, 2, 2))
    model = parallelize(tiny_model("llama", tied=True), grid)
    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    if bad:
        ids[1, 3] = 120  # on the second batch shard only
    ids, checks = grid.shard_batch(ids), parallel_state(model).checks
    reads = Reads()
    try:
        with checks.deferred():
            with reads:
                out = model(input_ids=ids, labels=ids)
                out.loss.backward()
    except ValueError as e:
        return reads.seen, str(e)
    return reads.seen, None


def test_a_training_step_reads_nothing_on_the_host(pool8):
    for seen, error in pool8.run(host_reads_in_a_training_step, False, timeout=120):
        assert seen == [] and error is None
    results = pool8.run(host_reads_in_a_training_step, True, timeout=120)
    assert all(seen == [] for seen, _ in results)
    messages = [error for _, error in results]
    assert all(m and m.startswith("1 input token id(s) outside the vocabulary [0, 99)")
               for m in messages), messages
    assert sum("e.g. 120 here" in m for m in messages) == 4
    assert sum("on another batch shard" in m for m in messages) == 4


def all_reduces_per_pass(fuse: bool):
    """All-reduces over X and over Y in one forward and one backward of a 2-layer Llama, with
    the sibling layers that share an input (q/k/v, gate/up) stacked or not, and the input
    gradient of the first layer's q/k/v (which the stacking must not change)."""
    import torch.distributed as dist

    from axolab.parallel import Optimizations, parallelize

    grid = _grid((2, 1, 2, 2))
    model = parallelize(tiny_model("llama", tied=False), grid,
                        optimizations=Optimizations(fuse_shared_inputs=fuse))
    names = {id(grid.x.group): "x", id(grid.y.group): "y"}
    counts = {"forward": {"x": 0, "y": 0}, "backward": {"x": 0, "y": 0}}
    phase = ["forward"]
    real = dist.all_reduce

    def counting(tensor, *args, group=None, **kwargs):
        if id(group) in names:
            counts[phase[0]][names[id(group)]] += 1
        return real(tensor, *args, group=group, **kwargs)

    ids = torch.randint(0, 99, (2, 6), generator=torch.Generator().manual_seed(0))
    captured = {}
    attention = model.model.layers[0].self_attn
    attention.register_forward_pre_hook(
        lambda _m, _a, kw: captured.setdefault("h", kw["hidden_states"]).retain_grad(),
        with_kwargs=True)
    dist.all_reduce = counting
    try:
        out = model(input_ids=grid.shard_batch(ids), labels=grid.shard_batch(ids))
        phase[0] = "backward"
        out.loss.backward()
    finally:
        dist.all_reduce = real
    return counts, captured["h"].grad


def test_layers_sharing_an_input_reduce_once(pool8):
    fused = pool8.run(all_reduces_per_pass, True, timeout=120)
    apart = pool8.run(all_reduces_per_pass, False, timeout=120)
    layers = 2
    for (f, f_grad), (a, a_grad) in zip(fused, apart):
        # Per layer, q/k/v: 3 -> 1 and gate/up: 2 -> 1, over X forward and over Y backward.
        assert a["forward"]["x"] - f["forward"]["x"] == 3 * layers, (f, a)
        assert a["backward"]["y"] - f["backward"]["y"] == 3 * layers, (f, a)
        assert f["forward"]["y"] == a["forward"]["y"] and f["backward"]["x"] == a["backward"]["x"]
        assert rel_err(f_grad, a_grad) < 1e-5


def bad_target_called_directly(how: str, agree: bool = True):
    """vocab_parallel_cross_entropy / vocab_parallel_logprobs called by hand (not through the
    model's loss) with a bad target on one batch shard: every rank must raise, not only the
    ranks of that shard while the others go on into their next collective."""
    from axolab.parallel import (VocabShard, comm, vocab_parallel_cross_entropy,
                                 vocab_parallel_logprobs)
    from axolab.parallel.layout import padded_size
    from axolab.parallel.token_checks import TokenChecks

    grid = _grid((2, 1, 2, 2))
    vocab = 13
    local_n = padded_size(vocab, grid.y.size) // grid.y.size
    shard = VocabShard(grid.y, grid.y.index * local_n, local_n, vocab,
                       batch=grid.batch if agree else None)
    g = torch.Generator().manual_seed(grid.batch_index)
    logits = torch.randn(2, 5, local_n, generator=g, dtype=torch.float64)
    targets = torch.randint(0, vocab, (2, 5), generator=g)
    if grid.batch_index == 1:
        targets[1, 2] = 40
    try:
        if how == "cross_entropy":
            vocab_parallel_cross_entropy(logits, targets, shard)
        elif how == "logprobs":
            vocab_parallel_logprobs(logits, targets, shard)
        else:  # queued on a model's checks and read once, as a training step does
            checks = TokenChecks()
            with checks.deferred():
                vocab_parallel_cross_entropy(logits, targets, shard, checks=checks)
        comm.all_reduce_sum_(torch.ones(1), grid.batch)  # the caller's next collective
    except ValueError as e:
        return str(e)
    return "no error"


@pytest.mark.parametrize("how", ["cross_entropy", "logprobs", "deferred"])
def test_bad_target_called_directly_fails_all_ranks(pool8, how):
    # A rank left waiting in the next collective would time the pool out.
    messages = pool8.run(bad_target_called_directly, how, timeout=60)
    for rank, m in enumerate(messages):
        assert m.startswith("1 target token id(s) outside the vocabulary [0, 13)"), \
            f"rank {rank}: {m}"
        assert ("ignore_index" in m) == (how != "logprobs"), m
    assert sum("e.g. 40 here" in m for m in messages) == 4, messages
    assert sum("on another batch shard" in m for m in messages) == 4, messages
