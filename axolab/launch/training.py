"""`axolab.launch.run(config)`: a training run on N ranks, watched from a notebook cell."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ..config import TrainConfig, config_from_dict, load_config, write_json_atomic
from ..files import JsonlFollower
from ..runlock import check_unlocked
from .spmd import spmd


class _MetricsProgress:
    """A progress bar fed by the run's metrics.jsonl (rank 0 writes it as steps finish), so
    the ranks need no terminal and the notebook gets a real widget. The file is followed
    across a resume's rewrite and a torn last line; nothing it reads can stop the job."""

    def __init__(self, path: Path, enabled: bool):
        self.enabled, self.bar = enabled, None
        self.follower = JsonlFollower(path)
        self.last: dict | None = None

    def __call__(self) -> None:
        for record in self.follower.records():
            self._show(record)

    def _show(self, record: dict) -> None:
        self.last = record
        if not self.enabled or "step" not in record:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=record.get("total_steps"), initial=record["step"] - 1,
                            desc="train", unit="step")
        if record["step"] > self.bar.n:  # a rewrite after a resume replays earlier steps
            self.bar.update(record["step"] - self.bar.n)
        shown = {"loss": f"{record.get('loss', float('nan')):.4f}"}
        if record.get("val_loss") is not None:
            shown["val"] = f"{record['val_loss']:.4f}"
        self.bar.set_postfix(shown, refresh=False)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _as_config(config) -> TrainConfig:
    if isinstance(config, TrainConfig):
        return dataclasses.replace(config)
    if isinstance(config, dict):
        return config_from_dict(TrainConfig, config)
    return load_config(TrainConfig, config)


def run(config, nprocs: int | None = None, *, launcher: str = "auto",
        timeout_s: float | None = None, progress: bool = True, echo: bool = True) -> dict | None:
    """Train ``config`` (a TrainConfig, a dict of its fields, or a JSON path) on its grid's ranks.

    Blocks until the job ends, with a progress bar from the run's metrics; returns the last
    metrics record (None if nothing was logged). A failing rank raises LaunchError with that
    rank's error; rank logs are in RUN_DIR/logs/. Resumes from RUN_DIR's newest checkpoint
    when ``config.resume`` (the default), so calling it again after a failure continues.
    """
    cfg = _as_config(config)
    cfg.validate()
    ranks = cfg.grid[0] * cfg.grid[1] * cfg.grid[2] * cfg.grid[3]
    if nprocs is None:
        nprocs = ranks
    if nprocs != ranks:
        raise ValueError(f"nprocs={nprocs} but grid {cfg.grid} needs {ranks} ranks")
    run_dir = Path(cfg.run_dir).resolve()
    check_unlocked(run_dir)  # a second writer is refused before any rank starts
    run_dir.mkdir(parents=True, exist_ok=True)
    # The ranks draw no bar of their own: this process shows one from metrics.jsonl.
    cfg = dataclasses.replace(cfg, run_dir=str(run_dir), progress=False)
    config_path = run_dir / "launch-config.json"
    write_json_atomic(config_path, cfg.to_dict())
    watch = _MetricsProgress(run_dir / "metrics.jsonl", progress)
    try:
        spmd("axolab.train", [str(config_path)], nprocs, run_dir / "logs", launcher=launcher,
             timeout_s=timeout_s, echo=echo, watch=watch)
    finally:
        watch.close()
    return watch.last
