"""The SPMD training loop: every rank runs `python -m axolab.train CONFIG.json` (or `run(config)`).

Each step reads this rank's shard of the global batch, accumulates micro-batches with the loss
normalized by the global kept-token count (so the step equals one serial step on the whole
batch), completes gradients over the batch split, clips by the global norm and steps AdamW.
Rank 0 writes metrics.jsonl; all ranks write checkpoints together.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import sys
import time
import zlib
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .activation_checkpointing import enable_activation_checkpointing
from .checkpoint import load_checkpoint, load_pretrained, resume_checkpoint, save_checkpoint
from .checkpoint.files import pretrained_weights
from .checkpoint.load import materialize
from .checkpoint.rng import rng_state, set_rng_state
from .config import TrainConfig, load_config, write_json_atomic
from .files import append_jsonl, drop_torn_tail
from .launch.preemption import PREEMPTED_EXIT, StopRequest
from .memorization.probe import CanaryProbe
from .data.loader import (PackedDataset, epoch_reads, global_batch_rows, rows_trained,
                          shard_rows, trained_rows)
from .goldfish import GoldfishRule
from .metrics import MetricsLog, device_peak, flops_per_token, memory_mb
from .parallel import (Grid, Optimizations, clip_grad_norm_, comm, no_data_sync,
                       parallel_parameters, parallel_state, parallelize, sync_gradients,
                       vocab_parallel_cross_entropy)
from .runlock import RunDirLock, RunDirLocked


def _model_config(cfg: TrainConfig):
    from transformers import AutoConfig

    from .presets import PRESETS, model_config

    if cfg.model in PRESETS:
        return model_config(cfg.model), None
    path = Path(cfg.model)
    if not path.exists():
        raise ValueError(f"model {cfg.model!r} is neither a preset ({', '.join(PRESETS)}) nor a "
                         "directory with a config.json")
    # Refuses a directory whose only weights are pickles rather than training from random init.
    weights = pretrained_weights(path) if path.is_dir() else None
    return AutoConfig.from_pretrained(str(path)), weights


@torch.no_grad()
def init_weights(model, seed: int) -> None:
    """Seeded initialization of the serial tensors, cut into shards: identical on every grid.
    Matrices ~ N(0, initializer_range), norm weights 1, biases 0 (as HF's Llama init)."""
    std = getattr(model.config, "initializer_range", 0.02)
    for key, module, attr, param in parallel_parameters(model):
        shape = module.layout_of(attr).full_shape
        if key.endswith("bias"):
            full = torch.zeros(shape)
        elif len(shape) == 1:
            full = torch.ones(shape)
        else:
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))
            full = torch.randn(shape, generator=gen) * std
        module.load_full(attr, full.to(param.dtype))


def build_model(cfg: TrainConfig, grid: Grid, vocab_needed: int):
    from transformers import AutoModelForCausalLM

    config, weights = _model_config(cfg)
    if vocab_needed > config.vocab_size:
        raise ValueError(f"the dataset's tokenizer has {vocab_needed} tokens but model "
                         f"{cfg.model!r} has vocab_size={config.vocab_size}")
    opts = Optimizations(tune_matmul=cfg.tune_matmul,
                         prefetch_late_in_backward=cfg.late_backward_prefetch,
                         depth_grad_dtype=cfg.depth_grad_dtype) \
        if cfg.overlap_communication else \
        dataclasses.replace(Optimizations.none(), tune_matmul=cfg.tune_matmul,
                            depth_grad_dtype=cfg.depth_grad_dtype)
    if weights is not None:
        return load_pretrained(weights, grid, dtype=torch.float32, optimizations=opts)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parallelize(model, grid, optimizations=opts)
    materialize(model, grid.device)
    init_weights(model, cfg.seed)
    return model


def _param_groups(model, weight_decay: float):
    decay, plain = [], []
    for key, _, _, param in parallel_parameters(model):
        (plain if key.endswith("bias") or "norm" in key else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": plain, "weight_decay": 0.0}]


# Fields a resumed run may change: how it runs, not what it computes.
RESUMABLE_CHANGES = {"grid", "micro_batch", "stop_at_step", "resume", "progress", "log_interval",
                     "eval_interval", "eval_batches", "checkpoint_interval", "keep_checkpoints",
                     "collective_timeout_s", "peak_flops_per_device", "activation_checkpointing",
                     "run_dir", "overlap_communication", "tune_matmul",
                     "late_backward_prefetch",
                     # probes measure the model; they do not change it
                     "memorization_interval", "memorization_at_epochs", "probe"}


def _check_resumable(cfg: TrainConfig, saved: dict, ckpt: Path) -> None:
    now = cfg.to_dict()
    # A field the saved config predates had its default then.
    defaults = TrainConfig().to_dict()
    changed = [f"{k}: {saved.get(k, defaults[k])!r} -> {now[k]!r}" for k in now
               if k not in RESUMABLE_CHANGES and saved.get(k, defaults[k]) != now[k]]
    if changed:
        raise ValueError(f"cannot resume from {ckpt}: the config changes the run ("
                         + "; ".join(changed) + "); use a new run_dir or set resume=false")


def _goldfish_rule(cfg: TrainConfig, grid: Grid, separator: int | None) -> GoldfishRule | None:
    """Built once per run: the "hash-table" strategy draws its table here. ``separator``: the
    dataset's document separator, where "hash" windows stop (axolab.goldfish)."""
    if cfg.loss != "goldfish":
        return None
    return GoldfishRule.build(cfg.goldfish_k, cfg.goldfish_h, cfg.goldfish_strategy, grid.device,
                              separator)


def _autocast(cfg: TrainConfig, grid: Grid):
    if cfg.precision == "bf16":
        return torch.autocast(grid.device.type, dtype=torch.bfloat16)
    return nullcontext()


def _train_step(cfg, model, grid, data, step, micro,
                goldfish: GoldfishRule | None) -> tuple[float, float | None]:
    """Loss of the step (over kept tokens) and, with goldfish, the loss on dropped tokens."""
    rows = shard_rows(global_batch_rows(step, cfg.global_batch, data.rows, cfg.seed,
                                        data.shuffled), grid.batch_shards, grid.batch_index)
    ids = data.read(rows).to(grid.device)
    targets = data.labels(rows, ids)  # the padding of padded rows is never a target
    # Rows past the epochs asked for only fill up the last batch: never targets (see loader).
    past = ~shard_rows(trained_rows(step, cfg.global_batch, epoch_reads(cfg.epochs, data.rows)),
                       grid.batch_shards, grid.batch_index)
    if past.any():
        targets[torch.from_numpy(past).to(grid.device)] = -100
    labels = targets if goldfish is None else goldfish.labels(targets, ids)
    dropped = targets.masked_fill(labels != -100, -100)  # targets the goldfish mask left out
    # Normalize by the kept tokens of the whole global batch, all micro-steps together.
    kept = (labels[:, 1:] != -100).sum().double()
    kept = comm.all_reduce_sum_(kept, grid.batch)
    state = parallel_state(model)
    loss = torch.zeros((), dtype=torch.float64, device=grid.device)
    dropped_sum = torch.zeros(2, dtype=torch.float64, device=grid.device)
    # The host reads nothing until the step's work is queued: the token-id checks of the
    # embedding and the loss are read once at the end, next to the loss.
    with state.checks.deferred():
        for start in range(0, ids.shape[0], micro):
            with _autocast(cfg, grid):
                # No KV cache: a training forward never decodes, and building one copies
                # every layer's keys and values.
                out = model(input_ids=ids[start:start + micro],
                            labels=labels[start:start + micro], num_items_in_batch=kept,
                            use_cache=False)
            last = start + micro >= ids.shape[0]
            # Data-parallel gradients are reduced once, in the last micro-step's backward.
            with nullcontext() if last else no_data_sync(model):
                out.loss.backward()
            loss += out.loss.detach()
            if cfg.loss == "goldfish":
                with torch.no_grad():  # what the model would pay on tokens it never trains on
                    target = dropped[start:start + micro, 1:]
                    per = vocab_parallel_cross_entropy(out.logits[:, :-1].float(), target,
                                                       state.vocab, checks=state.checks)
                    dropped_sum += torch.stack([per.sum().double(),
                                                (target != -100).sum().double()])
    loss = loss.item()
    if cfg.loss != "goldfish":
        return loss, None
    total, count = comm.all_reduce_sum_(dropped_sum, grid.batch).tolist()
    return loss, (total / count if count else None)


@torch.no_grad()
def evaluate(cfg, model, grid, data: PackedDataset) -> float | None:
    """Mean token loss over the first eval_batches global batches of the validation split."""
    n = min(cfg.eval_batches * cfg.global_batch, data.rows)
    n -= n % grid.batch_shards
    if n == 0:
        return None
    total, batches = 0.0, 0
    for start in range(0, n, cfg.global_batch):
        rows = shard_rows(np.arange(start, min(start + cfg.global_batch, n)), grid.batch_shards,
                          grid.batch_index)
        ids = data.read(rows).to(grid.device)
        with _autocast(cfg, grid):
            total += model(input_ids=ids, labels=ids, use_cache=False).loss.item()
        batches += 1
    return total / batches


def _record_session(run_dir: Path, start: int, grid: Grid) -> None:
    """One line per training session in sessions.jsonl: where each (re)start began, so a
    requeued or resumed run shows that it continued rather than started over."""
    env = os.environ
    record = {"start_step": start, "time": time.time(), "host": socket.gethostname(),
              "grid": list(grid.shape), "slurm_job_id": env.get("SLURM_JOB_ID"),
              "slurm_restart_count": int(env.get("SLURM_RESTART_COUNT", 0))}
    drop_torn_tail(run_dir / "sessions.jsonl")
    append_jsonl(run_dir / "sessions.jsonl", record)


def _lock_run_dir(run_dir: Path, grid: Grid, lead: bool) -> RunDirLock | None:
    """The lead rank takes the run directory's lock (waiting a little for a predecessor that is
    still exiting); every rank raises together if it is held by another run."""
    lock, refused = None, None
    if lead:
        try:
            lock = RunDirLock(run_dir, wait_s=30.0).acquire()
        except RunDirLocked as e:
            refused = str(e)
    refused = next((r for r in comm.all_gather_objects(refused, grid.world) if r), None)
    if refused:
        raise RunDirLocked(refused)
    return lock


def _stop_agreed(stop: StopRequest, grid: Grid) -> bool:
    """Whether any rank was asked to stop: every rank must leave after the same step."""
    flag = torch.tensor([1.0 if stop.requested else 0.0], device=grid.device)
    return bool(comm.all_reduce_max(flag, grid.world).item() > 0)


def run(cfg: TrainConfig, grid: Grid | None = None) -> dict:
    """Train as configured; returns the last step's metrics (with ``"preempted": True`` when a
    stop signal ended the session early, after a checkpoint). Collective over the grid's ranks.
    """
    cfg.validate()
    with StopRequest() as stop:  # from the start: a signal during set-up is kept for later
        grid = grid or Grid.init(*cfg.grid, timeout_s=cfg.collective_timeout_s)
        if list(grid.shape) != list(cfg.grid):
            raise ValueError(f"config grid {cfg.grid} but the given grid is {list(grid.shape)}")
        lead = grid.rank == grid.ranks[0]
        lock = _lock_run_dir(Path(cfg.run_dir), grid, lead)
        try:
            return _train(cfg, grid, lead, stop)
        finally:
            if lock is not None:
                lock.release()


def _train(cfg: TrainConfig, grid: Grid, lead: bool, stop: StopRequest) -> dict:
    run_dir = Path(cfg.run_dir)
    train, val = PackedDataset(cfg.data, "train"), PackedDataset(cfg.data, "validation")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(Path(cfg.data) / "tokenizer"))
    vocab = len(tokenizer)
    model = build_model(cfg, grid, vocab)
    if cfg.activation_checkpointing:
        enable_activation_checkpointing(model)
    model.train()
    opt = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr,
                            betas=tuple(cfg.betas), eps=cfg.eps)
    reads = epoch_reads(cfg.epochs, train.rows)
    total = cfg.steps if reads is None else -(-reads // cfg.global_batch)  # the last one partial
    from transformers import get_cosine_with_min_lr_schedule_with_warmup

    sched = get_cosine_with_min_lr_schedule_with_warmup(
        opt, cfg.warmup_steps, total, min_lr_rate=cfg.min_lr_ratio)
    ckpt_root = run_dir / "checkpoints"
    start, resumed = 0, None
    if cfg.resume and (found := resume_checkpoint(ckpt_root, grid)) is not None:
        ckpt, manifest = found
        _check_resumable(cfg, manifest.get("config", {}), ckpt)
        load_checkpoint(ckpt, model, opt, verify=False)  # its hashes were just checked
        start, resumed = manifest["step"], manifest["step"]
        sched.load_state_dict(manifest["scheduler"])
        set_rng_state(manifest["rng"])
    if lead:
        run_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(run_dir / "config.json", cfg.to_dict())
    log = MetricsLog(run_dir / "metrics.jsonl", resumed, lead)
    if lead:
        _record_session(run_dir, start, grid)
    micro = cfg.micro_batch or cfg.global_batch // grid.batch_shards
    goldfish = _goldfish_rule(cfg, grid, tokenizer.eos_token_id)
    seq_len = train.seq_len
    probe = CanaryProbe(cfg, train.rows, seq_len, resumed, lead, train.shuffled)
    flops = flops_per_token(model.config, seq_len) * cfg.global_batch * seq_len
    peak = cfg.peak_flops_per_device or device_peak(grid.device)
    bar = tqdm(total=total, initial=start, desc="train", unit="step",
               disable=not (lead and cfg.progress))
    record: dict = {}
    end = min(total, cfg.stop_at_step) if cfg.stop_at_step else total
    for step in range(start, end):
        t0 = time.perf_counter()
        lr = opt.param_groups[0]["lr"]
        loss, dropped_loss = _train_step(cfg, model, grid, train, step, micro, goldfish)
        sync_gradients(model)
        norm = clip_grad_norm_(model, cfg.grad_clip) if cfg.grad_clip else None
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        done = step + 1
        # An epoch run's last batch only fills up with rows past its end: not trained on,
        # not counted as throughput.
        kept = (rows_trained(done, cfg.global_batch, reads)
                - rows_trained(step, cfg.global_batch, reads)) / cfg.global_batch
        record = {"step": done, "total_steps": total, "loss": loss, "lr": lr,
                  "grad_norm": float(norm) if norm is not None else None,
                  "tokens_per_s": kept * cfg.global_batch * seq_len / dt, "step_time_s": dt,
                  "model_flops_per_s": kept * flops / dt,
                  "mfu": kept * flops / dt / (peak * grid.size),
                  "memory_mb": memory_mb(grid.device)}
        if dropped_loss is not None:
            record["loss_dropped_tokens"] = dropped_loss
        if cfg.eval_interval and (done % cfg.eval_interval == 0 or done == total):
            record["val_loss"] = evaluate(cfg, model, grid, val)
            model.train()
        if probe.due(done, total):
            record["probe_time_s"] = probe(model, done, _autocast(cfg, grid))
        if done % cfg.log_interval == 0 or done == total or "val_loss" in record \
                or "probe_time_s" in record:
            log.write(record)
        preempted = done < end and _stop_agreed(stop, grid)
        if (cfg.checkpoint_interval and done % cfg.checkpoint_interval == 0) or done == end \
                or preempted:
            save_checkpoint(ckpt_root, done, model, opt, keep_last=cfg.keep_checkpoints, state={
                "data_position": rows_trained(done, cfg.global_batch, reads), "scheduler": sched.state_dict(),
                "rng": rng_state(), "config": cfg.to_dict()})
        bar.set_postfix(loss=f"{loss:.4f}")
        bar.update()
        if preempted:
            print(f"axolab: stopped by {stop.signal_name or 'a peer rank'} after step {done} "
                  f"of {total}; checkpoint saved, a rerun resumes here", flush=True)
            record = {**record, "preempted": True}
            break
    bar.close()
    return record


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m axolab.train CONFIG.json", file=sys.stderr)
        return 2
    torch.set_num_threads(max(1, torch.get_num_threads()))
    record = run(load_config(TrainConfig, argv[0]))
    return PREEMPTED_EXIT if record.get("preempted") else 0


if __name__ == "__main__":
    from axolab.launch.rank_exit import exit_rank

    exit_rank(main())
