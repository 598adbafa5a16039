"""Timing helpers shared by the benchmarks: interleaved repeats, min and median, ratios."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(candidates: dict[str, Callable[[], object]], repeats: int, device="cpu",
            warmup: bool = True) -> dict[str, dict]:
    """Time each candidate `repeats` times, interleaved and rotated (A B C, B C A, C A B, …),
    after one warm-up each.

    Interleaving spreads a shared machine's load over all candidates alike; rotating the order
    stops one candidate always running after the same other one (a loop of batch-1 calls leaves
    the allocator in a state that slowed the next candidate by ~30% here). The minimum is the
    least disturbed run, the median shows the spread. `warmup=False` for candidates that take
    seconds (warm the model up once beforehand instead).
    """
    for fn in candidates.values() if warmup else ():  # allocator, kernels, lazy imports
        fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in candidates}
    names = list(candidates)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "runs_s": v} for k, v in times.items()}


def ratio(times: dict, num: str, den: str) -> dict:
    """times[num] / times[den] from the minima, and from the medians."""
    return {"min": times[num]["min_s"] / times[den]["min_s"],
            "median": times[num]["median_s"] / times[den]["median_s"]}


def peak_memory(device) -> float | None:
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return None


def count_flops(fn) -> float:
    """FLOPs of one call of fn (convolutions and matmuls, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())
