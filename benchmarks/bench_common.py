"""Timing helpers shared by the benchmarks: interleaved repeats, min and median, ratios, peak RSS."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def measure(candidates: dict[str, Callable[[], object]], repeats: int | dict[str, int], device="cpu",
            warmup: bool = True) -> dict[str, dict]:
    """Time each candidate `repeats` times, interleaved and rotated (A B C, B C A, C A B, …),
    after one warm-up each. `repeats` may be a count per candidate: a candidate whose count is
    reached drops out of the later rounds (a baseline taking ten times as long as the others
    needs fewer repeats for the same share of the machine's noise).

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
    cpu: dict[str, list[float]] = {k: [] for k in candidates}
    names = list(candidates)
    counts = repeats if isinstance(repeats, dict) else dict.fromkeys(names, repeats)
    for r in range(max(counts.values())):
        for name in names[r % len(names):] + names[:r % len(names)]:
            if r >= counts[name]:
                continue
            fn = candidates[name]
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    # CPU seconds of this process beside the wall clock: on a shared machine a 1-thread run's
    # wall time also counts the time it waited for a core; its CPU time does not.
    return {k: {"min_s": min(v), "median_s": statistics.median(v), "runs_s": v,
                "cpu_min_s": min(cpu[k]), "cpu_median_s": statistics.median(cpu[k]), "cpu_runs_s": cpu[k]}
            for k, v in times.items()}


def ratio(times: dict, num: str, den: str) -> dict:
    """times[num] / times[den] from the minima and from the medians (wall clock), and from the
    CPU-time minima where both have them."""
    out = {"min": times[num]["min_s"] / times[den]["min_s"],
           "median": times[num]["median_s"] / times[den]["median_s"]}
    if "cpu_min_s" in times[num] and "cpu_min_s" in times[den]:
        out["cpu_min"] = times[num]["cpu_min_s"] / times[den]["cpu_min_s"]
        out["cpu_median"] = times[num]["cpu_median_s"] / times[den]["cpu_median_s"]
    return out


def judged(r: dict, device) -> float:
    """The ratio a CPU target is judged on: from the medians of the interleaved runs' CPU times
    (1-thread runs on a shared machine: CPU time leaves out the waits for a core, and a median
    is not set by one lucky run of the baseline); else from wall-clock minima (GPU: the
    device's time is what counts)."""
    if torch.device(device).type == "cpu" and "cpu_median" in r:
        return r["cpu_median"]
    return r["min"]


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


def vmhwm_kib() -> int | None:
    """This process's peak resident set (VmHWM, KiB; Linux), None elsewhere."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_vmhwm() -> bool:
    """Reset VmHWM to the current RSS (writing 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
