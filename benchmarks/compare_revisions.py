"""Training-step time of two revisions of axolab, side by side in one run.

    python benchmarks/compare_revisions.py BASE [--head REV] [--rounds 5] [--steps 3]
        [--grids "1,1,1,1;1,4,1,1"] [--checkpointing] [--out FILE]

BASE (and HEAD, default: this working tree) is checked out with ``git worktree`` into a
temporary directory and imported from there (``PYTHONPATH``), while the timing code is this
file and ``speed_common.py`` for both, so only axolab differs. The model and batch are
training_speed.py's defaults (small-llama shape, 8 x 128 tokens, fp32, AdamW). Each round runs
every (revision, grid) once as a fresh set of processes, in an order rotated by the round, so
background load weighs on both revisions alike: one warm-up step, then ``--steps`` timed steps
(barrier to barrier, slowest rank). Printed per grid: the median over rounds for each revision
and the ratio head / base (below 1: head is faster); ``--out`` gets every round as JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
GRIDS = [(1, 1, 1, 1), (1, 2, 1, 2), (2, 1, 2, 1), (1, 1, 2, 2)]
SETTINGS = {"hidden": 256, "layers": 4, "heads": 8, "kv_heads": 4, "intermediate": 688,
            "vocab": 1024, "seq_len": 128, "global_batch": 8, "seed": 0, "attn": "sdpa"}


def _rank_time(s: dict, dims: tuple, steps: int) -> dict:
    """On each rank: one warm-up step, then ``steps`` timed steps; seconds per step."""
    import time

    import torch
    import torch.distributed as dist

    sys.path.insert(0, str(HERE))
    import speed_common as sc

    barrier = dist.barrier if dist.is_initialized() else (lambda: None)
    step, grid = sc.axolab_step(s, sc.global_batch(s), dims)
    loss = step().item()
    barrier()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    barrier()
    elapsed = (time.perf_counter() - t0) / steps
    del grid
    return {"step_s": elapsed, "loss": loss, "threads": torch.get_num_threads()}


def _child(dims: tuple, steps: int, checkpointing: bool) -> None:
    import torch

    s = dict(SETTINGS, checkpointing=checkpointing)
    world = dims[0] * dims[1] * dims[2] * dims[3]
    if world == 1:
        torch.set_num_threads(1)
        results = [_rank_time(s, dims, steps)]
    else:
        from axolab.perfmodel.ranks import run_on_ranks

        results = run_on_ranks(_rank_time, world, s, dims, steps)
    import axolab

    print(json.dumps({"step_s": max(r["step_s"] for r in results), "loss": results[0]["loss"],
                      "axolab": str(Path(axolab.__file__).parent)}))


def _run_child(tree: Path, dims: tuple, steps: int, checkpointing: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child",
                           ",".join(map(str, dims)), "--steps", str(steps),
                           *(["--checkpointing"] if checkpointing else [])],
                          env=env, capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise RuntimeError(f"grid {dims} on {tree} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    if Path(out["axolab"]).resolve() != (tree / "axolab").resolve():
        raise RuntimeError(f"imported axolab from {out['axolab']}, not from {tree}")
    return out


def parse_grids(text: str) -> list[tuple[int, int, int, int]]:
    """``"d,z,y,x;d,z,y,x"`` as tuples, or a ValueError naming the bad entry."""
    # Imported here, not at the top: a child run imports axolab from its own worktree.
    from axolab.grid_shape import parse_grids as parse

    return [g.dims for g in parse(text)]


def _check_revision(rev: str) -> None:
    """A ValueError, before anything is checked out, unless ``rev`` names a commit."""
    done = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--verify", "--quiet",
                           f"{rev}^{{commit}}"], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"git revision {rev!r} does not name a commit in {ROOT}")


def _checkout(rev: str, where: Path) -> Path:
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(where),
                    rev], check=True)
    return where


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("base", nargs="?", help="git revision to compare against")
    ap.add_argument("--head", default=None, help="git revision (default: this working tree)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--grids", default=";".join(",".join(map(str, g)) for g in GRIDS),
                    help="grids as d,z,y,x separated by ';'")
    ap.add_argument("--checkpointing", action="store_true",
                    help="activation checkpointing (non-reentrant) in both revisions")
    ap.add_argument("--out", default=None)
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        _child(tuple(int(v) for v in a.child.split(",")), a.steps, a.checkpointing)
        return 0
    if not a.base or a.rounds < 1 or a.steps < 1:
        ap.error(f"need BASE, --rounds >= 1 and --steps >= 1 (got BASE={a.base!r}, "
                 f"--rounds {a.rounds}, --steps {a.steps})")
    try:
        grids = parse_grids(a.grids)
        for rev in (a.base, a.head):
            if rev:
                _check_revision(rev)
    except ValueError as e:
        ap.error(str(e))
    with tempfile.TemporaryDirectory(prefix="axolab-revs-") as tmp:
        trees = {"base": _checkout(a.base, Path(tmp) / "base")}
        trees["head"] = _checkout(a.head, Path(tmp) / "head") if a.head else ROOT
        try:
            runs = [(name, g) for g in grids for name in trees]
            times: dict = {f"{n} {g}": [] for n, g in runs}
            losses: dict = {}
            for r in range(a.rounds):
                for name, g in runs[r % len(runs):] + runs[:r % len(runs)]:
                    out = _run_child(trees[name], g, a.steps, a.checkpointing)
                    times[f"{name} {g}"].append(out["step_s"])
                    losses[f"{name} {g}"] = out["loss"]
                print(f"round {r + 1}/{a.rounds} done", flush=True)
        finally:
            for name, tree in trees.items():
                if tree != ROOT:
                    subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                                    str(tree)], check=False)
    print(f"\nbase {a.base} vs head {a.head or 'working tree'}: median s/step over {a.rounds} "
          f"rounds of {a.steps} steps; {os.cpu_count()} CPUs")
    print(f"{'grid':<14}{'base s':>10}{'head s':>10}{'head/base':>11}{'loss equal':>12}")
    rows = []
    for g in grids:
        b, h = (statistics.median(times[f"{n} {g}"]) for n in ("base", "head"))
        same = losses[f"base {g}"] == losses[f"head {g}"]
        rows.append({"grid": list(g), "base_s": b, "head_s": h, "ratio": h / b,
                     "loss_equal": same})
        print(f"{str(g):<14}{b:>10.4f}{h:>10.4f}{h / b:>11.3f}{str(same):>12}")
    if a.out:
        # Imported here, not at the top: the children import the revision under test.
        from axolab.files import write_text_atomic

        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        write_text_atomic(Path(a.out), json.dumps({
            "base": a.base, "head": a.head or "working tree",
            "settings": dict(SETTINGS, checkpointing=a.checkpointing),
            "rounds": a.rounds, "steps": a.steps, "rows": rows, "times": times,
            "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "date": now}},
            indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
