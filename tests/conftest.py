import os

import pytest
import torch

# Tiny models on 2 shared cores: one intra-op thread avoids oversubscription (SPEC §9).
torch.set_num_threads(int(os.environ.get("DIFFAUDIT_TEST_THREADS", "1")))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


class _PicklePayload:
    """Unpickling this creates a file: it stands in for arbitrary code in a crafted checkpoint."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture
def pickle_payload():
    """`pickle_payload(path)`: an object whose unpickling creates `path` (proof that code ran)."""
    return lambda path: _PicklePayload(str(path))
