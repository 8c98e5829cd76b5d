import os
os.environ.setdefault("STRUCTLOSS_PROFILE", "smoke")
os.environ.setdefault("MPLBACKEND", "Agg")

import pytest
import torch


@pytest.fixture
def one_thread():
    "Run a test on one CPU thread (tiny models are fastest so, and do not fight other processes for cores)."
    n = torch.get_num_threads(); torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
