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
