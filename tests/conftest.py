import contextlib
import io
import json
import os
import shutil
from pathlib import Path

import pytest

from rank_pool import RankPool


@pytest.fixture(scope="session")
def pool8():
    """Eight gloo ranks shared by every multi-rank test of the session: starting them costs
    tens of seconds on a small machine, so they start once. Checks run as importable
    functions (``pool8.run(fn, *args)``); a failing check fails its test, not the pool."""
    pool = RankPool(8)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def tiny_study(tmp_path_factory):
    """`make demo`'s job on a short schedule (the tiny recipe, a standard and a goldfish k=4
    run of tiny-llama, each on two ranks), run once: the demo test checks its files and the
    goldfish notebook's sweep continues from it. Returns the study directory, what the demo
    printed, and its exit code.

    Under pytest-xdist (`make test`) the two tests may run on different workers: the first to
    ask runs the demo in the session's shared temporary directory while holding a file lock,
    the other waits for it and reads what it left (result.json, written last). (xdist_group
    with --dist loadgroup would keep the two on one worker, but pytest-xdist 3.8 names the
    group in ``item._nodeid``, which pytest 9 no longer reads: the tests then spread one by
    one and every module's fixtures start on both workers.)"""
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # one per session, shared by its workers
    study = root / "tiny_study"
    with FileLock(str(root / "tiny_study.lock")):
        if not (study / "result.json").is_file():
            from axolab.demo import main

            if study.exists():  # a worker that died half-way: start again
                shutil.rmtree(study)
            study.mkdir()
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                rc = main(["--out", str(study / "demo"), "--sizes", "tiny-llama", "--grid",
                           "1,1,1,2", "--epochs", "0.03", "--global-batch", "8", "--recipe",
                           str(Path(__file__).resolve().parents[1] / "data_recipes" /
                               "tiny.yaml")])
            (study / "result.json").write_text(json.dumps({"printed": printed.getvalue(),
                                                           "rc": rc}))
        result = json.loads((study / "result.json").read_text())
    return study / "demo", result["printed"], result["rc"]
