"""Several processes through Hugging Face Accelerate (also under torchrun); one process without it.

    accelerate launch -m diffaudit audit --model DIR --members M.json --holdout H.json --out R

Each process computes the chunks whose index ≡ rank (mod world size) and writes them to the
shared store; after a barrier the main process gathers them and writes the report. Results do
not depend on the number of processes, since every random draw is keyed by sample.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Callable

import torch


# Ranks wait at barriers for the slowest rank (a resumed run can leave one rank most of the work)
# and for the main process's report; torch's defaults (10 min NCCL, 30 min gloo) would abort
# audits that run for hours.
BARRIER_TIMEOUT = timedelta(hours=48)


@dataclass
class ProcessGroup:
    rank: int
    world_size: int
    device: torch.device
    barrier: Callable[[], None] | None

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_distributed() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


@contextlib.contextmanager
def process_group(device: str = "cpu"):
    """The current process's place in the run (accelerate's PartialState when launched with several)."""
    if not launched_distributed():
        yield ProcessGroup(0, 1, torch.device(device), None)
        return
    from ._checks import require_extra

    require_extra("accelerate", "accelerate")
    from accelerate import PartialState

    cpu = device == "cpu" or not torch.cuda.is_available()
    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    dev = torch.device("cpu") if cpu else state.device
    try:
        yield ProcessGroup(state.process_index, state.num_processes, dev, state.wait_for_everyone)
    finally:
        state.wait_for_everyone()
