"""A training rank with a SIGKILL planted inside one write, for the kill tests:
`python -m kill_driver MODE STEP CONFIG.json` under torchrun (tests/ on PYTHONPATH).

MODE "metrics": rank 0 writes half of step STEP's metrics line, then is killed.
MODE "checkpoint": rank 0 (a writer on every grid) writes half of a file of checkpoint STEP,
then is killed.
Everything else is the real training loop; the kill lands exactly where a real one could.
"""

import json
import os
import signal
import sys
from pathlib import Path


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def plant_metrics_kill(step: int) -> None:
    import axolab.metrics as metrics

    real = metrics.append_jsonl

    def torn(path, record):
        if record.get("step") == step:
            line = (json.dumps(record) + "\n").encode()
            with open(path, "ab") as f:
                f.write(line[: len(line) // 2])
            _die()
        real(path, record)

    metrics.append_jsonl = torn


def plant_checkpoint_kill(step: int) -> None:
    import safetensors.torch as st

    real = st.save_file

    def torn(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        if f".step-{step:08d}.partial" in str(filename):
            size = Path(filename).stat().st_size
            os.truncate(filename, size // 2)
            _die()

    st.save_file = torn


def main() -> int:
    mode, step, config = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    rank = int(os.environ.get("RANK", "0"))
    if mode == "metrics" and rank == 0:
        plant_metrics_kill(step)
    elif mode == "checkpoint" and rank == 0:
        plant_checkpoint_kill(step)
    from axolab.train import main as train_main

    return train_main([config])


if __name__ == "__main__":
    from axolab.launch.rank_exit import exit_rank

    exit_rank(main())
