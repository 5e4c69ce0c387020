import os

import pytest
import torch

# Deterministic CPU maths regardless of what the machine offers.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def smoke_cfg(tmp_path_factory):
    """The smoke preset with a cache shared by the whole test session."""
    from splitkit.config import get_preset

    return get_preset("smoke").replace(cache_dir=str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a test module: bitwise comparisons hold within one thread count, and on
    a shared 2-core machine (or in 2-process workers) OpenMP threads stop waiting on each other."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
