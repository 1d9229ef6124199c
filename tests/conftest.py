import contextlib
import io
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
    printed, and its exit code."""
    from axolab.demo import main

    out = tmp_path_factory.mktemp("study") / "demo"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["--out", str(out), "--sizes", "tiny-llama", "--grid", "1,1,1,2",
                   "--epochs", "0.03", "--global-batch", "8", "--recipe",
                   str(Path(__file__).resolve().parents[1] / "data_recipes" / "tiny.yaml")])
    return out, printed.getvalue(), rc
