"""Benchmark 6: decoder geometry at Stable Diffusion scale on a CPU, as a proxy (arXiv 2511.20592 §3.2–3.3).

SD v1's VAE config at full width (block_out_channels 128/256/512/512, 2 layers per block,
4 latent channels; random weights built from the config, no download) on 4×32×32 latents
(256² images), one sample, in fresh subprocesses (`python benchmarks/bench_sd.py --worker KIND`)
so that each peak RSS (VmHWM) is that computation's alone:

- the passes influence and a default (gkl) distortion run are made of, timed through the
  library's own Linearization (the code path both take): a J·v (central differences,
  2 forwards), the kept graph's forward, a Jᵀ·u (one backward on it);
- influence (CPU: one graph forward, then one Jᵀ·v per probe on it, `vjp_mode="loop"`):
  seconds per sample = graph forward + 8·Jᵀ·u. `python benchmarks/bench_sd.py` also times
  `geometry.influence` whole (90 s more; 79 s whole vs 76 s from the passes in the run of
  2026-12-02 10:34), so the default `run.py` projects it from the passes;
- distortion: seconds per sample = graph forward + products/2·(J·v + Jᵀ·u).
  The products a run needs per sample are counted on the same layout at 1/16 width at the same
  latent size (d = 4096), where a full run fits the time budget. Assumption: the number of
  Lanczos steps depends on the spectrum of J, taken to be alike at both widths (random init).

Projection to 4×64×64 (512², SD v1's own size) on a GPU: per-pass FLOPs counted by
torch.utils.flop_counter on the meta device (nothing computed), times the passes per sample,
at an assumed sustained fraction of the GPU's dense TF32 peak (ASSUMED_GPU_EFFICIENCY; the
products per sample assumed equal to the 4×32×32 count).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ASSUMED_GPU_EFFICIENCY = 0.3  # sustained fraction of dense TF32 peak for float32 convolutions (assumption)
H200_TF32_TFLOPS = 494.7  # NVIDIA datasheet, dense
SD_LATENT_HW = 32
GPU_LATENT_HW = 64


def _decoder(width_div: int, hw: int, device="cpu"):
    from bench_models import decoder_fn, sd_layout_vae

    vae = sd_layout_vae(width_div, hw).to(device)
    return vae, decoder_fn(vae)


def _z(n: int, hw: int):
    import torch

    return torch.randn(n, 4, hw, hw, generator=torch.Generator().manual_seed(1))


def _gens(n: int, purpose: str):
    from diffaudit.rng import sample_generator

    return [sample_generator(0, i, purpose) for i in range(n)]


def worker(kind: str, threads: int) -> dict:
    import torch

    from bench_common import vmhwm_kib
    from diffaudit import geometry

    torch.set_num_threads(threads)
    if kind == "products":  # the products a full run needs, on the 1/16-width layout (d = 4096)
        vae, decode = _decoder(16, SD_LATENT_HW)
        z = _z(2, SD_LATENT_HW)
        st = {}
        t0 = time.process_time()
        geometry.singular_values(decode, z, generator=_gens(2, "distortion"), stats=st)
        return {"products_per_sample": st["products"].tolist(), "cpu_s": time.process_time() - t0,
                "decoder_width": "1/16"}
    vae, decode = _decoder(1, SD_LATENT_HW)
    z = _z(1, SD_LATENT_HW)
    floor = vmhwm_kib()  # no warm-up forward: seconds each, and a fresh process is what an audit starts as
    if kind == "influence":
        from diffaudit.geometry._linearize import output_shape

        # The output-shape forward is paid once per decoder (geometry remembers it), not per
        # sample: timed apart, then influence as every later chunk of an audit runs it.
        t0 = time.perf_counter()
        output_shape(decode, z)
        t_shape = time.perf_counter() - t0
        t0, c0 = time.perf_counter(), time.process_time()
        geometry.influence(decode, z, n_probes=8, generator=_gens(1, "influence"))
        out = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "products": 8, "forwards": 1,
               "shape_forward_once_s": t_shape}
    elif kind == "distortion_passes":
        # The passes a gkl run is made of, through the library's own Linearization (the code
        # path singular_values takes): the output-shape forward, a J·v (central differences:
        # 2 forwards), the kept graph's forward with the first Jᵀ·u, then a
        # Jᵀ·u alone (one: at these sizes a pass takes seconds).
        import math

        from diffaudit.geometry._inputs import default_fd_step, items_per_call
        from diffaudit.geometry._linearize import Linearization, output_shape

        def timed(fn):
            t0 = time.perf_counter()
            fn()
            return time.perf_counter() - t0

        box = {}
        t_shape = timed(lambda: box.update(xshape=output_shape(decode, z)))
        lin = Linearization(decode, z, box["xshape"], method="fd", h=default_fd_step(z.dtype),
                            items=items_per_call(None, math.prod(box["xshape"])), vjp_mode="loop")
        W = torch.randn(1, z[0].numel(), 1, generator=torch.Generator().manual_seed(0))
        t_jv = timed(lambda: box.update(P=lin.matmul(W)))
        t_graph_and_vjp = timed(lambda: lin.rmatmul(box["P"]))
        t_vjp = timed(lambda: lin.rmatmul(box["P"]))
        out = {"shape_forward_s": t_shape, "jv_s": t_jv, "graph_forward_s": t_graph_and_vjp - t_vjp, "vjp_s": t_vjp}
    else:
        raise SystemExit(f"unknown worker kind {kind!r}")
    out.update(vmhwm_mib=vmhwm_kib() / 1024, floor_mib=floor / 1024, threads=threads)
    return out


def _run_worker(kind: str, threads: int, timeout: float) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, __file__, "--worker", kind, "--threads", str(threads)],
                       capture_output=True, text=True, timeout=timeout, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"bench_sd worker {kind} failed: {r.stderr.strip().splitlines()[-1:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def pass_flops(hw: int) -> dict:
    """FLOPs of one decoder forward and of one forward + backward (input gradient) at 4×hw×hw,
    counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae, decode = _decoder(1, hw, device="meta")
        z = torch.empty(1, 4, hw, hw, device="meta")
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            decode(z)
    fwd = float(fc.get_total_flops())
    zg = z.clone().requires_grad_(True)
    with FlopCounterMode(display=False) as fc:
        x = decode(zg)
        torch.autograd.grad(x, zg, torch.empty_like(x))
    return {"forward": fwd, "forward_backward": float(fc.get_total_flops())}


def bench_sd(threads: int = 1, skip: str | None = None, influence_whole: bool = False) -> dict:
    """The SD-scale row; `skip`: why not (with --quick its minutes do not fit the budget);
    `influence_whole`: also time geometry.influence whole (else it is projected from the passes)."""
    if skip:
        return {"skipped": skip}
    passes = _run_worker("distortion_passes", threads, timeout=900)
    infl_s = passes["graph_forward_s"] + 8 * passes["vjp_s"]
    infl = {"s_per_sample": infl_s, "products_per_sample": 8, "peak_rss_gib": passes["vmhwm_mib"] / 1024,
            "shape_forward_once_per_audit_s": passes["shape_forward_s"],
            "how": "measured per-pass seconds: graph forward + 8 Jᵀ·u (the loop influence runs on a CPU)"}
    if influence_whole:
        whole = _run_worker("influence", threads, timeout=900)
        infl["measured_whole"] = {"s_per_sample": whole["wall_s"], "cpu_s_per_sample": whole["cpu_s"],
                                  "peak_rss_gib": whole["vmhwm_mib"] / 1024,
                                  "ratio_to_passes": whole["wall_s"] / infl_s}
    prods = _run_worker("products", threads, timeout=900)
    per_sample = sum(prods["products_per_sample"]) / len(prods["products_per_sample"])
    # A gkl run per sample: the graph's forward once, then half its products J·v and half Jᵀ·u
    # (the output-shape forward is once per audit: geometry remembers it per decoder).
    dist_s = passes["graph_forward_s"] + per_sample / 2 * (passes["jv_s"] + passes["vjp_s"])
    f32, f64 = pass_flops(SD_LATENT_HW), pass_flops(GPU_LATENT_HW)
    # Distortion: the graph's forward, then per product pair a J·v (central differences: 2
    # forwards) and a Jᵀ·u (a backward); influence: 1 forward + 8 backwards.
    bwd32, bwd64 = f32["forward_backward"] - f32["forward"], f64["forward_backward"] - f64["forward"]
    dist_flops32 = f32["forward"] + per_sample / 2 * (2 * f32["forward"] + bwd32)
    dist_flops64 = f64["forward"] + per_sample / 2 * (2 * f64["forward"] + bwd64)
    infl_flops64 = f64["forward"] + 8 * bwd64
    gpu = ASSUMED_GPU_EFFICIENCY * H200_TF32_TFLOPS * 1e12
    return {
        "latent": [4, SD_LATENT_HW, SD_LATENT_HW], "image": [3, 8 * SD_LATENT_HW, 8 * SD_LATENT_HW],
        "influence": infl,
        "distortion": {"s_per_sample": dist_s, "products_per_sample": per_sample, "products_counted_on": prods,
                       "passes_s": passes, "peak_rss_gib": passes["vmhwm_mib"] / 1024,
                       "cpu_gflops_per_s": dist_flops32 / dist_s / 1e9,
                       "how": "measured per-pass seconds x passes per sample: graph forward + products/2 x "
                              "(J·v + Jᵀ·u); the output-shape forward is once per audit"},
        "influence_cpu_gflops_per_s": (f32["forward"] + 8 * bwd32) / infl_s / 1e9,
        "flops_per_pass": {"4x32x32": f32, "4x64x64": f64},
        "gpu_projection_4x64x64": {
            "assumption": f"{ASSUMED_GPU_EFFICIENCY:.0%} of an H200's dense TF32 peak ({H200_TF32_TFLOPS} TFLOP/s) "
                          "sustained; products per sample as at 4x32x32",
            "influence_s_per_sample": infl_flops64 / gpu, "distortion_s_per_sample": dist_flops64 / gpu},
        "target": "measured (no target: a proxy for the cost of an SD-size audit)",
        "target_met": None,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", default=None)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(worker(a.worker, a.threads)))
        return 0
    print(json.dumps(bench_sd(a.threads, influence_whole=True), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
