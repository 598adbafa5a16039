import os

import pytest
import torch

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (SPEC §9).
torch.set_num_threads(int(os.environ.get("DIFFAUDIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
