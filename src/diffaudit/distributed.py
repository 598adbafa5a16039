"""Several processes through Hugging Face Accelerate (also under torchrun); one process without it.

    accelerate launch -m diffaudit audit --model DIR --members M.json --holdout H.json --out R

Each process computes the chunks whose index ≡ rank (mod world size) and writes them to the
shared store; after a barrier the main process gathers them and writes the report. Results do
not depend on the number of processes, since every random draw is keyed by sample.

`run_local_processes` starts such a run on this machine's cores from inside a command (the demo)
through torchrun's own launcher (`torch.distributed.launcher.api.elastic_launch`); its workers
join the group without accelerate (plain gloo) when that extra is not installed.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import uuid
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
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

    cpu = device == "cpu" or not torch.cuda.is_available()
    if cpu and importlib.util.find_spec("accelerate") is None:
        # A CPU run needs no more than gloo's barrier, which torch has itself.
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo", timeout=BARRIER_TIMEOUT)
        try:
            yield ProcessGroup(dist.get_rank(), dist.get_world_size(), torch.device("cpu"), dist.barrier)
        finally:
            dist.barrier()
        return
    require_extra("accelerate", "accelerate")
    from accelerate import PartialState

    state = PartialState(cpu=cpu, timeout=BARRIER_TIMEOUT)
    dev = torch.device("cpu") if cpu else state.device
    try:
        yield ProcessGroup(state.process_index, state.num_processes, dev, state.wait_for_everyone)
    finally:
        state.wait_for_everyone()


def run_local_processes(fn: Callable, args: tuple, nprocs: int):
    """``fn(*args)`` in `nprocs` fresh processes on this machine (torchrun's launcher, rendezvous on
    a free local port); returns rank 0's return value. `fn` and `args` must be picklable (the
    workers are spawned, not forked: a fork after torch has run threads can hang). A DiffauditError
    in a worker is raised here as itself (one line, not the launcher's report of a failed child)."""
    import tempfile

    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nprocs, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="127.0.0.1:0", max_restarts=0,
                          monitor_interval=0.1, start_method="spawn")
    # The workers inherit the environment: name their thread count, as torchrun does (else
    # accelerate warns in every worker that it sets one).
    threads = os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=os.environ.get("MKL_NUM_THREADS", threads))
    try:
        with tempfile.TemporaryDirectory() as errors, _quiet_launcher():
            try:
                return elastic_launch(config, _worker)(fn, errors, *args)[0]
            except ChildFailedError:
                raised = _worker_error(Path(errors))
                if raised is None:
                    raise
                raise raised from None
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@contextlib.contextmanager
def _quiet_launcher():
    """The launcher logs a failed worker's traceback; the error is raised to the caller instead."""
    import logging

    loggers = [logging.getLogger(n) for n in ("torch.distributed.elastic", "torch.multiprocessing")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _worker(fn: Callable, errors: str, *args):
    """One worker: ``fn(*args)``; a DiffauditError is also written to `errors` for the parent."""
    from . import errors as errors_mod

    try:
        return fn(*args)
    except errors_mod.DiffauditError as e:
        rank = os.environ.get("RANK", "0")
        (Path(errors) / f"rank-{rank}.json").write_text(json.dumps({"type": type(e).__name__, "message": str(e)}))
        raise


def _worker_error(errors: Path) -> Exception | None:
    """The lowest rank's DiffauditError recorded by `_worker`, rebuilt as its own class."""
    from . import errors as errors_mod

    for f in sorted(errors.glob("rank-*.json"), key=lambda p: int(p.stem.split("-")[1])):
        rec = json.loads(f.read_text())
        cls = getattr(errors_mod, rec["type"], None)
        if not (isinstance(cls, type) and issubclass(cls, errors_mod.DiffauditError)):
            cls = errors_mod.DiffauditError
        return cls(rec["message"])
    return None
