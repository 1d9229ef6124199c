"""Small notebooks the run/sweep/Slurm tests execute (written with nbformat)."""

from __future__ import annotations

from pathlib import Path

from axolab.runs.notebook_file import write_notebook

ECHO_PARAMETERS = '''\
name = "x"
count = 1
ratio = 0.5
flag = False
items = [1, 2]
anything = None
fail = False
run_dir = None'''

# Records exactly what arrived (type and value) and leaves a file before the cell that may fail.
ECHO_BODY = '''\
import json, pathlib
seen = {k: [type(v).__name__, v] for k, v in dict(name=name, count=count, ratio=ratio,
        flag=flag, items=items, anything=anything).items()}
pathlib.Path(run_dir, "seen.json").write_text(json.dumps(seen))'''

FAIL_BODY = '''\
if fail:
    raise RuntimeError(f"asked to fail (count={count})")'''


def echo_notebook(path: Path) -> Path:
    return write_notebook(path, [("parameters", ECHO_PARAMETERS), (None, ECHO_BODY),
                                 (None, FAIL_BODY), (None, "done = True")])
