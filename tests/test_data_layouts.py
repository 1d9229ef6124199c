"""Row layouts and training-time placement: padded rows, target-only splits, corpus passes and
canary windows, each checked on the tokens the build wrote."""

import json
import math

import numpy as np
import pytest

from axolab.data import RecipeError, build, load_canaries, recipe_from_dict
from axolab.data.loader import PackedDataset, global_batch_rows


def _columns(out, split="train"):
    import datasets

    ds = datasets.load_from_disk(str(out / split))
    ids = np.asarray(ds["input_ids"], dtype=np.int64)
    lengths = np.asarray(ds["length"]) if "length" in ds.features else None
    return ids, lengths


def _recipe(**packing):
    return {"name": "t", "corpus": {"embedded": "austen", "max_documents": 300},
            "tokenizer": {"train_bpe_vocab": 300}, "canaries": [],
            "packing": {"seq_len": 64, "validation_fraction": 0.0, **packing}}


def _targets(tmp_path, n=30):
    texts = [f"Target record {i}: the patient in room {100 + i} was given {i % 7} doses."
             for i in range(n)]
    (tmp_path / "targets.jsonl").write_text("".join(json.dumps({"text": t}) + "\n"
                                                    for t in texts))
    return texts


def test_target_only_split_has_one_padded_row_per_occurrence(tmp_path):
    """background: false with padded rows is "train only on the target set": every row is one
    target document at position 0, then the end-of-document token, then padding; the rows are
    exactly the scheduled occurrences, found in the tokens; the build repeats byte for byte."""
    from transformers import AutoTokenizer

    texts = _targets(tmp_path)
    group = {"kind": "document", "name": "target", "repetitions": [1, 3], "per_count": 4,
             "min_tokens": 8, "corpus": {"files": ["targets.jsonl"]}}
    data = {**_recipe(rows="padded", background=False), "canaries": [group]}
    out = build(recipe_from_dict(data, tmp_path), tmp_path / "t", progress=False)
    ids, lengths = _columns(out)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    canaries = load_canaries(out)
    assert len(ids) == sum(c.repetitions for c in canaries) == 16
    by_tokens = {tuple(c.token_ids): c for c in canaries}
    seen: dict[str, list] = {}
    for row, (r, n) in enumerate(zip(ids, lengths)):
        assert r[n - 1] == eos and (r[n:] == eos).all(), f"row {row} is not document + padding"
        c = by_tokens[tuple(r[:n - 1].tolist())]  # KeyError: a row that is no target document
        assert c.text == texts[c.document]
        seen.setdefault(c.id, []).append([row, 0])
    for c in canaries:
        assert seen.get(c.id, []) == c.occurrences and len(c.occurrences) == c.repetitions
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == "padded" and stats["train_tokens"] == int(lengths.sum())
    again = build(recipe_from_dict(data, tmp_path), tmp_path / "t2", progress=False)
    assert all(np.array_equal(a, b) for a, b in zip(_columns(again), (ids, lengths)))


def test_padded_rows_keep_every_corpus_document_whole(tmp_path):
    """With a background, the non-canary rows are the corpus documents in corpus order, each
    cut into seq_len pieces (a new row at every document), compared with the tokenizer's own
    encoding of the corpus."""
    from transformers import AutoTokenizer

    from axolab.data.corpus import documents

    data = {**_recipe(rows="padded"), "canaries": [
        {"kind": "random", "name": "r", "length": 8, "repetitions": [1, 3], "per_count": 2}]}
    recipe = recipe_from_dict(data, tmp_path)
    out = build(recipe, tmp_path / "p", progress=False)
    ids, lengths = _columns(out)
    tok = AutoTokenizer.from_pretrained(str(out / "tokenizer"))
    eos = tok.convert_tokens_to_ids(tok.eos_token)
    canary_rows = {row for c in load_canaries(out) for row, _ in c.occurrences}
    pieces = []
    for text in documents(recipe.corpus, recipe.source):
        doc = tok(text, add_special_tokens=False)["input_ids"] + [eos]
        pieces += [doc[a:a + 64] for a in range(0, len(doc), 64)]
    rows = [r[:n].tolist() for i, (r, n) in enumerate(zip(ids, lengths)) if i not in canary_rows]
    assert rows == pieces
    for c in load_canaries(out):
        starts = [i for i, (r, n) in enumerate(zip(ids, lengths))
                  if r[:n].tolist() == c.token_ids + [eos]]
        assert starts == [row for row, _ in c.occurrences] and len(starts) == c.repetitions


def test_a_window_confines_a_group_to_its_span_of_training(tmp_path):
    """Two passes over the corpus, one group only in the first quarter of the split and one
    only in the last: the occurrences found in the tokens lie in those rows, the trainer reads
    the split in stored order (so in those steps), and the corpus is there twice."""
    early = {"kind": "random", "name": "early", "length": 8, "repetitions": [2, 4],
             "per_count": 2, "window": [0.0, 0.25]}
    late = {**early, "name": "late", "window": [0.75, 1.0]}
    data = {**_recipe(passes=2), "canaries": [early, late]}
    out = build(recipe_from_dict(data, tmp_path), tmp_path / "w", progress=False)
    ids, _ = _columns(out)
    flat, n = ids.reshape(-1), len(ids)
    for c in load_canaries(out):
        p = np.asarray(c.token_ids)
        hits = [int(h) for h in np.flatnonzero(flat[:len(flat) - len(p) + 1] == p[0])
                if np.array_equal(flat[h:h + len(p)], p)]
        rows = sorted(h // 64 for h in hits)
        assert len(hits) == c.repetitions and rows == sorted(r for r, _ in c.occurrences)
        lo, hi = (0, n // 4) if c.group == "early" else (3 * n // 4, n)
        assert all(lo <= r < hi for r in rows), (c.id, rows, n)
    train = PackedDataset(out, "train")
    assert not train.shuffled and PackedDataset(out, "validation").shuffled
    batch = 8
    order = np.concatenate([global_batch_rows(s, batch, train.rows, 0, train.shuffled)
                            for s in range(train.rows // batch)])
    assert np.array_equal(order, np.arange(len(order)))
    stats = json.loads((out / "stats.json").read_text())
    once = build(recipe_from_dict({**_recipe(), "canaries": []}, tmp_path), tmp_path / "o",
                 progress=False)
    single = json.loads((once / "stats.json").read_text())["train_tokens"]
    assert stats["row_order"] == "stored" and stats["passes"] == 2
    again = build(recipe_from_dict(data, tmp_path), tmp_path / "w2", progress=False)
    assert np.array_equal(_columns(again)[0], ids)  # the same bytes from the same seed
    assert [c.occurrences for c in load_canaries(again)] == \
        [c.occurrences for c in load_canaries(out)]
    # Two passes hold twice the corpus (each pass whole, up to the partial last row).
    assert 2 * single <= stats["train_tokens"] - stats["canary_tokens"] < 2 * single + 2 * 64


@pytest.mark.parametrize("change, match", [
    ({"window": [0.5, 0.5]}, r"window=\[0.5, 0.5\]: expected \[start, end\)"),
    ({"window": [0.0, 0.0001]}, r"window \[0.0, 0.0001\] of a training split of \d+ rows holds no"),
    ({"window": [0.0, 0.01], "repetitions": [200]},
     r"repeated 200 times needs as many sequences but its window holds \d+ of the \d+"),
])
def test_bad_windows_are_refused_and_leave_nothing(tmp_path, change, match):
    group = {"kind": "random", "name": "r", "length": 8, "repetitions": [2], **change}
    with pytest.raises(RecipeError, match=match):
        build(recipe_from_dict({**_recipe(), "canaries": [group]}, tmp_path), tmp_path / "out",
              progress=False)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("packing, match", [
    ({"background": False}, "background: false .* needs packing.rows: padded"),
    ({"background": False, "rows": "padded", "passes": 2}, "passes=2 repeats the corpus"),
    ({"rows": "padded", "allow_split": True}, "cannot be combined with rows: padded"),
    ({"rows": "rows"}, "packing: rows='rows' must be 'packed' or 'padded'"),
    ({"passes": 0}, "packing.passes=0 must be at least 1"),
])
def test_bad_layouts_are_refused(tmp_path, packing, match):
    group = {"kind": "random", "name": "r", "length": 8, "repetitions": [2]}
    with pytest.raises(RecipeError, match=match):
        recipe_from_dict({**_recipe(**packing), "canaries": [group]}, tmp_path)


@pytest.mark.parametrize("loss", ["standard", "goldfish"])
def test_training_on_padded_rows_never_targets_the_padding(tmp_path, loss):
    """One training step on a target-only padded split against cross-entropy written out by
    hand over each row's real tokens (and, with goldfish, over the tokens its mask drops)."""
    import torch
    import torch.nn.functional as F

    from axolab.config import TrainConfig, config_from_dict
    from axolab.goldfish import goldfish_mask
    from axolab.parallel import Grid
    from transformers import DynamicCache

    from axolab.train import _goldfish_rule, _train_step, build_model

    _targets(tmp_path)
    group = {"kind": "document", "name": "target", "repetitions": [1, 2], "per_count": 2,
             "min_tokens": 8, "corpus": {"files": ["targets.jsonl"]}}
    data_dir = build(recipe_from_dict({**_recipe(rows="padded", background=False),
                                       "canaries": [group]}, tmp_path), tmp_path / "d",
                     progress=False)
    cfg = config_from_dict(TrainConfig, dict(data=str(data_dir), run_dir=str(tmp_path / "run"),
                                             global_batch=6, loss=loss, goldfish_k=2,
                                             goldfish_h=3, progress=False))
    grid, data = Grid.init(), PackedDataset(data_dir)
    model = build_model(cfg, grid, 300)
    # No separator for goldfish: with one, every padding position's window is the same lone
    # separator, so the mask keeps or drops all the padding alike, and here it drops it: the
    # padding's own mask would then go untested.
    eos = None
    caches = []
    original = DynamicCache.__init__

    def counting(self, *args, **kwargs):
        caches.append(self)
        original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DynamicCache, "__init__", counting)
        step_loss, dropped_loss = _train_step(cfg, model, grid, data, 0, 6,
                                              _goldfish_rule(cfg, grid, eos))
    assert not caches, "a training step built a KV cache it never reads"
    rows = global_batch_rows(0, 6, data.rows, cfg.seed)
    ids, lengths = _columns(data_dir)
    ids, lengths = torch.from_numpy(ids[rows]), torch.from_numpy(lengths[rows])
    with torch.no_grad():
        logits = model(input_ids=ids).logits[:, :-1].float()
    per = F.cross_entropy(logits.transpose(1, 2), ids[:, 1:], reduction="none")
    real = torch.arange(1, ids.shape[1])[None, :] < lengths[:, None]  # target inside the row
    assert not real.all(), "the rows are not padded: the test would measure nothing"
    keep = goldfish_mask(ids, 2, 3, separator=eos)[:, 1:] if loss == "goldfish" else torch.ones_like(real)
    assert step_loss == pytest.approx(per[real & keep].mean().item(), rel=1e-5)
    padded_mean = per[keep].mean().item()
    assert abs(step_loss - padded_mean) > 1e-3, "padding targets would give the same loss"
    if loss == "goldfish":
        assert dropped_loss == pytest.approx(per[real & ~keep].mean().item(), rel=1e-5)


def test_the_last_batch_of_an_epoch_does_not_train_on_the_first_rows_again(tmp_path):
    """A stored-order split (two passes, canaries in its first quarter) whose rows make no whole
    number of batches, trained one epoch: the last step's batch is filled up with the first
    rows, where the early canaries are, and its loss must be the cross-entropy over the rows
    left in the epoch only, written out by hand."""
    import torch
    import torch.nn.functional as F

    from axolab.config import TrainConfig, config_from_dict
    from axolab.parallel import Grid
    from axolab.train import _train_step, build_model

    early = {"kind": "random", "name": "early", "length": 8, "repetitions": [2, 4],
             "per_count": 2, "window": [0.0, 0.25]}
    data = {**_recipe(passes=2), "corpus": {"embedded": "austen", "max_documents": 60},
            "canaries": [early]}
    data_dir = build(recipe_from_dict(data, tmp_path), tmp_path / "w", progress=False)
    ids, _ = _columns(data_dir)
    n, first = len(ids), min(row for c in load_canaries(data_dir) for row, _ in c.occurrences)
    # A batch whose last one, filled up with the first rows, takes in the first early canary.
    batch = next(b for b in range(8, 128) if n % b and b - n % b > first)
    last = n // batch  # the step that holds row n - 1
    cfg = config_from_dict(TrainConfig, dict(data=str(data_dir), run_dir=str(tmp_path / "run"),
                                             global_batch=batch, epochs=1, progress=False))
    grid, split = Grid.init(), PackedDataset(data_dir)
    assert not split.shuffled
    model = build_model(cfg, grid, 300)
    step_loss, _ = _train_step(cfg, model, grid, split, last, batch, None)
    with torch.no_grad():
        rows = torch.from_numpy(ids)
        per = F.cross_entropy(model(input_ids=rows).logits[:, :-1].float().transpose(1, 2),
                              rows[:, 1:], reduction="none")
    assert step_loss == pytest.approx(per[last * batch:].mean().item(), rel=1e-5)
    wrapped = torch.cat([per[last * batch:], per[:batch - n % batch]])  # the batch as read
    assert abs(step_loss - wrapped.mean().item()) > 1e-4, "the first rows would give the same loss"


@pytest.mark.parametrize("passes, epochs", [(2, 1), (1, 1), (1, 2), (1, 0.5)])
def test_an_epochs_run_trains_each_row_as_often_as_its_epochs(tmp_path, passes, epochs):
    """The rows trained on over every step of a run of ``epochs`` (stored order with two
    passes, shuffled with one): each row exactly ``epochs`` times, so each canary ``epochs``
    times its repetitions in the manifest; half an epoch trains half the rows once."""
    from axolab.data.loader import epoch_reads, trained_rows

    group = {"kind": "random", "name": "r", "length": 8, "repetitions": [2, 4], "per_count": 2,
             **({"window": [0.0, 0.25]} if passes > 1 else {})}
    data = {**_recipe(passes=passes), "corpus": {"embedded": "austen", "max_documents": 60},
            "canaries": [group]}
    out = build(recipe_from_dict(data, tmp_path), tmp_path / "d", progress=False)
    split = PackedDataset(out)
    n, batch = split.rows, 16
    assert n % batch and split.shuffled == (passes == 1)
    seen = np.zeros(n, dtype=np.int64)
    for step in range(math.ceil(epochs * n / batch)):  # the run's steps, the last one partial
        rows = global_batch_rows(step, batch, n, 0, split.shuffled)
        np.add.at(seen, rows[trained_rows(step, batch, epoch_reads(epochs, n))], 1)
    if epochs >= 1:
        assert (seen == epochs).all(), np.bincount(seen)
        for c in load_canaries(out):
            assert sum(seen[row] for row, _ in c.occurrences) == epochs * c.repetitions, c.id
    else:  # half an epoch: ceil(n / 2) rows once, the rest never
        assert np.bincount(seen).tolist() == [n // 2, n - n // 2]


def test_an_epochs_run_counts_only_the_rows_it_trains(tmp_path):
    """A run of one epoch whose last batch fills up with rows past the end: its throughput,
    the probe's position (epoch, tokens seen) and the checkpoint's data position count the
    rows trained on, n, not the rows read, steps x batch."""
    from axolab.checkpoint import latest_checkpoint, read_manifest
    from axolab.config import TrainConfig, config_from_dict
    from axolab.files import read_jsonl
    from axolab.train import run

    data = {**_recipe(passes=1), "corpus": {"embedded": "austen", "max_documents": 60},
            "canaries": [{"kind": "random", "name": "r", "length": 8, "repetitions": [2],
                          "per_count": 2}]}
    out = build(recipe_from_dict(data, tmp_path), tmp_path / "d", progress=False)
    split = PackedDataset(out)
    n, batch = split.rows, 16
    steps = -(-n // batch)
    assert n % batch
    run_dir = tmp_path / "run"
    run(config_from_dict(TrainConfig, dict(
        data=str(out), run_dir=str(run_dir), global_batch=batch, epochs=1, steps=None,
        memorization_at_epochs=True, probe=dict(prefix_len=4, suffix_len=4, exposure=False,
                                                curve_prefix_lens=[2], continuations=False),
        eval_interval=0, progress=False)))
    metrics = [r for r in read_jsonl(run_dir / "metrics.jsonl") if "tokens_per_s" in r]
    assert [r["step"] for r in metrics] == list(range(1, steps + 1))
    for r in metrics:
        rows = batch if r["step"] < steps else n - (steps - 1) * batch
        assert r["tokens_per_s"] * r["step_time_s"] == pytest.approx(rows * split.seq_len)
    probe = read_jsonl(run_dir / "memorization_curve.jsonl")[-1]
    assert probe["step"] == steps
    assert (probe["epoch"], probe["tokens_seen"]) == (1.0, n * split.seq_len)
    manifest = read_manifest(latest_checkpoint(run_dir / "checkpoints"))
    assert manifest["data_position"] == n
    assert json.loads((run_dir / "config.json").read_text())["epochs"] == 1


@pytest.mark.parametrize("rows,batch,epochs,shuffled", [(10, 4, 2.5, True), (10, 4, None, True),
                                                       (7, 3, 1.0, False), (12, 4, 0.3, True)])
def test_row_visits_count_the_rows_the_batches_train(rows, batch, epochs, shuffled):
    """row_visits after every step equals the rows the training loop's own batches take as
    targets (global_batch_rows masked by trained_rows), counted one step at a time."""
    from axolab.data.loader import epoch_reads, row_visits, rows_trained, trained_rows

    reads = epoch_reads(epochs, rows)
    steps = math.ceil(reads / batch) if reads is not None else 9
    seen = np.zeros(rows, dtype=np.int64)
    for step in range(steps):
        taken = global_batch_rows(step, batch, rows, 5, shuffled)
        np.add.at(seen, taken[trained_rows(step, batch, reads)], 1)
        visits = row_visits(rows_trained(step + 1, batch, reads), rows, 5, shuffled)
        assert visits.tolist() == seen.tolist(), step
    with pytest.raises(ValueError, match="row visits of -1 rows read over 10 rows"):
        row_visits(-1, 10, 5)
