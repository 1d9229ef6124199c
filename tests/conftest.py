import pytest

from rank_pool import RankPool


@pytest.fixture(scope="module")
def pool8():
    """Eight gloo ranks shared by every test of one module."""
    pool = RankPool(8)
    yield pool
    pool.close()
