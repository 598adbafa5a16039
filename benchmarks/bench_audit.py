"""Benchmarks 4 and 5: peak memory and time of `run_audit` on a tiny model vs the number of samples.

Each N runs in a fresh subprocess (`python benchmarks/bench_audit.py --worker N`) so that peak
RSS (VmHWM on Linux, else resource.getrusage's ru_maxrss) belongs to that audit alone. The worker records the peak
after imports and model construction (the floor every audit pays) and after the audit; memory
is compared between N and 4N, both in total and above that floor.

The audit: the tiny AutoencoderKL + UNet2DModel of `diffaudit.models.tiny` (16² RGB images,
4×8×8 latents), random images (half members, half held-out), the default attack grid, masks
and chunking, with the decoder geometry reduced (rank-4 distortion, one power pass) and 200
bootstrap draws so that N = 1024 fits the time budget; no report files (write_report=False).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

AUDIT_OVERRIDES = dict(svd_rank=4, svd_block_size=4, svd_power_iters=1, bootstrap=200)


def _maxrss_mib() -> float:
    """Peak RSS of this process. Linux: VmHWM of /proc/self/status, because ru_maxrss carries
    over the *parent's* peak through fork/vfork + exec (a child of a 2 GB benchmark process
    reports at least 2 GB); elsewhere resource.getrusage's ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / 2**20 if sys.platform == "darwin" else r / 1024  # bytes on macOS, KiB on Linux


def worker(n: int, threads: int) -> dict:
    import torch

    torch.set_num_threads(threads)
    from diffaudit.audit import AuditConfig, SampleSet, run_audit
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_autoencoder_kl, tiny_scheduler, tiny_unet2d

    model = LatentDiffusion(unet=tiny_unet2d(), scheduler=tiny_scheduler(), vae=tiny_autoencoder_kl())
    g = torch.Generator().manual_seed(0)
    images = torch.rand(n, *model.image_shape, generator=g) * 2 - 1
    samples = SampleSet.from_tensors(images[: n // 2], images[n // 2:])
    config = AuditConfig(**AUDIT_OVERRIDES)
    floor = _maxrss_mib()
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        res = run_audit(model, samples, config, out_dir=out, progress=False, write_report=False)
        total = time.perf_counter() - t0
    timing = res.results["timing"]
    return {"n": n, "time_s": total, "geometry_s": timing["geometry_s"], "attacks_s": timing["attacks_s"],
            "encode_s": timing["encode_s"], "rest_s": total - timing["geometry_s"] - timing["attacks_s"] - timing["encode_s"],
            "floor_rss_mib": floor, "peak_rss_mib": _maxrss_mib(), "chunk_size": config.chunk_size,
            "masks": len(res.results["masks"]), "config": AUDIT_OVERRIDES}


def run_worker(n: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(n), "--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"audit worker N={n} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_audit(quick: bool, threads: int) -> tuple[dict, dict]:
    """(memory, scaling) results; the runs at N, 2N.., 4N serve both."""
    ns = (64, 128, 256) if quick else (64, 256, 1024)
    runs = [run_worker(n, threads) for n in ns]
    by_n = {r["n"]: r for r in runs}
    pairs = [(a, 4 * a) for a in ns if 4 * a in by_n]
    mem = []
    for a, b in pairs:
        ra, rb = by_n[a], by_n[b]
        mem.append({"n": a, "n4": b, "peak_rss_mib": [ra["peak_rss_mib"], rb["peak_rss_mib"]],
                    "ratio": rb["peak_rss_mib"] / ra["peak_rss_mib"],
                    "ratio_above_floor": (rb["peak_rss_mib"] - rb["floor_rss_mib"]) / (ra["peak_rss_mib"] - ra["floor_rss_mib"])})
    head = mem[-1]
    memory = {"pairs": mem, "ratio": head["ratio"], "ratio_above_floor": head["ratio_above_floor"],
              "target": "ratio <= 1.2", "target_met": head["ratio"] <= 1.2}
    per_n = [r["time_s"] / r["n"] for r in runs]
    # Linear: time/N at the largest N no more than 1.15× time/N between the two smaller ones
    # (the fixed cost of an audit makes time/N fall at small N, never rise, when it is linear).
    scaling = {"runs": runs, "time_per_sample_s": dict(zip(map(str, ns), per_n)),
               "marginal_s_per_sample": [(runs[i + 1]["time_s"] - runs[i]["time_s"]) / (ns[i + 1] - ns[i])
                                         for i in range(len(ns) - 1)],
               "target": "time/N at the largest N <= 1.15 × the smallest time/N (linear)",
               "target_met": per_n[-1] <= 1.15 * min(per_n)}
    return memory, scaling


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--worker", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args()
    print(json.dumps(worker(a.worker, a.threads)))
