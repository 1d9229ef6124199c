"""`axolab.launch.run(config)`: a training run on N ranks, watched from a notebook cell."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from ..config import TrainConfig, config_from_dict, load_config, write_json_atomic
from .spmd import spmd


class _MetricsProgress:
    """A progress bar fed by the run's metrics.jsonl (rank 0 writes it as steps finish), so
    the ranks need no terminal and the notebook gets a real widget."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled, self.offset, self.bar = path, enabled, 0, None
        self.last: dict | None = None
        if path.exists():
            self.offset = path.stat().st_size

    def __call__(self) -> None:
        if not self.path.exists():
            return
        if self.path.stat().st_size < self.offset:  # rewritten by a resume: read it afresh
            self.offset = 0
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind(b"\n") + 1]
        self.offset += len(complete)
        for line in complete.decode().splitlines():
            if line.strip():
                self._show(json.loads(line))

    def _show(self, record: dict) -> None:
        self.last = record
        if not self.enabled or "step" not in record:
            return
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=record.get("total_steps"), initial=record["step"] - 1,
                            desc="train", unit="step")
        self.bar.update(record["step"] - self.bar.n)
        shown = {"loss": f"{record['loss']:.4f}"}
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
