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
