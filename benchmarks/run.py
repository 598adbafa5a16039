"""diffaudit's speed benchmarks (issue 5): one command, a table, and a JSON file.

    python benchmarks/run.py [--quick] [--device cuda] [--out benchmarks/results/]

Each figure is a ratio against a baseline measured in the same run on the same model:
1. influence: geometry.influence vs Algorithm 2 (per-sample, per-probe loop) and vs the bare
   passes (one forward + n_mc backward at the same batch size);
2. distortion: geometry.singular_values vs per-column double-backward JVPs / VJPs, at equal
   accuracy against the full Jacobian;
3. attack sweep: SimA + PIA + Loss + SecMI over the default t grid vs the bare UNet rows it needs;
4. memory: peak RSS of run_audit with 4× more samples (fresh subprocesses);
5. scaling: run_audit time vs N;
6. models: the attack sweep per model family through its adapter vs the bare denoiser forwards
   (bench_models.bench_families, tiny pipeline folders).
On a CPU the models are reduced (Stable Diffusion's VAE layout at 1/8 or 1/16 width, 64²
images); with --device cuda they default to SD v1's sizes (4×64×64 latents, 512² images).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

BENCHES = ("influence", "distortion", "sweep", "audit", "models")
# Published dense peaks (NVIDIA datasheets, SXM parts) to express achieved FLOP/s as a fraction.
GPU_PEAK_TFLOPS = {"H100": {"tf32": 494.7, "float16": 989.4}, "H200": {"tf32": 494.7, "float16": 989.4}}


def machine_info(device: str, threads: int) -> dict:
    import diffusers
    import numpy

    import diffaudit

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu_model": cpu, "cpu_cores": os.cpu_count(), "torch_threads": threads,
            "python": platform.python_version(), "platform": platform.platform(),
            "torch": torch.__version__, "diffusers": diffusers.__version__, "numpy": numpy.__version__,
            "diffaudit": getattr(diffaudit, "__version__", "?"), "device": device,
            "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    if torch.device(device).type == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(0).total_memory / 2**30
        info["cuda"] = torch.version.cuda
        info["cudnn_allow_tf32"] = torch.backends.cudnn.allow_tf32
    return info


def gpu_peak(info: dict, kind: str) -> float | None:
    name = info.get("gpu") or ""
    for key, peaks in GPU_PEAK_TFLOPS.items():
        if key in name:
            return peaks[kind]
    return None


def add_peak_fractions(results: dict, info: dict) -> None:
    """Achieved TFLOP/s (counted on the bare passes) as a fraction of the GPU's published peak:
    TF32 for the float32 geometry (cuDNN convolutions use TF32 by default), float16 for the UNet."""
    for name, kind in (("influence", "tf32"), ("sweep", "float16")):
        r = results.get(name)
        if r is not None and r.get("tflops_achieved") is not None:
            peak = gpu_peak(info, kind)
            r["gpu_peak_tflops"] = peak
            r["fraction_of_gpu_peak"] = r["tflops_achieved"] / peak if peak else None


def fmt(x, nd=2):
    return "-" if x is None else f"{x:.{nd}f}"


def _tflops(r: dict) -> str:
    t = r.get("tflops_achieved")
    if t is None:
        return "-"
    frac = r.get("fraction_of_gpu_peak")
    return f"{t:.3f}" + (f" ({100 * frac:.0f}% of peak)" if frac else "")


def table(results: dict) -> str:
    rows = [("benchmark", "figure (min run; median)", "target", "met", "samples/s", "TFLOP/s")]
    if "influence" in results:
        r = results["influence"]
        rows.append(("influence", f"{fmt(r['fraction_of_limit']['min'])} of limit ({fmt(r['fraction_of_limit']['median'])}); "
                     f"{fmt(r['speedup_vs_algorithm2']['min'])}x vs Alg.2 loop ({fmt(r['speedup_vs_algorithm2']['median'])})",
                     r["target"], str(r["target_met"]), fmt(r["samples_per_s"]), _tflops(r)))
    if "distortion" in results:
        r = results["distortion"]
        sp = r["speedup_vs_reference"]
        acc = r.get("accuracy_vs_full_jacobian", {})
        prods = r["products_per_sample"]
        for i, k in enumerate(sp):
            err = acc.get(k, {}).get("sigma_max_rel_err")
            rows.append(("distortion" if i == 0 else "", f"{k} ({prods[k]} products): {fmt(sp[k]['min'])}x vs per-column "
                         f"({fmt(sp[k]['median'])}), sigma err {f'{err:.1e}' if err is not None else '-'}",
                         r["target"] if k == r["headline_setting"] else "", str(r["target_met"]) if k == r["headline_setting"] else "",
                         fmt(r["samples"] / r["times"][k]["min_s"], 3), ""))
        if acc:
            rows.append(("", f"reference ({prods['reference_per_column']} products) sigma err "
                         f"{acc['reference_per_column']['sigma_max_rel_err']:.1e}",
                         "", "", fmt(r["samples"] / r["times"]["reference_per_column"]["min_s"], 3), ""))
    if "sweep" in results:
        r = results["sweep"]
        rows.append(("attack sweep", f"{fmt(r['overhead']['min'])}x bare UNet ({fmt(r['overhead']['median'])}); "
                     f"{fmt(r['overhead_vs_same_calls']['min'])}x same #calls; rows {r['rows_sweep']}/{r['rows_min']}",
                     r["target"], str(r["target_met"]), fmt(r["samples_per_s"]), _tflops(r)))
    if "memory" in results:
        r = results["memory"]
        pairs = ", ".join(f"{p['n']}->{p['n4']}: {fmt(p['ratio'])}x ({fmt(p['ratio_above_floor'])}x above floor)"
                          for p in r["pairs"])
        rows.append(("memory", pairs, r["target"], str(r["target_met"]), "", ""))
    if "scaling" in results:
        r = results["scaling"]
        per = ", ".join(f"N={n}: {fmt(v * 1000, 0)} ms" for n, v in r["time_per_sample_s"].items())
        rows.append(("scaling", f"time/N {per}", "linear", str(r["target_met"]),
                     fmt(1 / list(r["time_per_sample_s"].values())[-1]), ""))
    if "models" in results:
        from bench_models import table_rows

        rows += table_rows(results["models"])
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=("reduced", "sd"), default=None,
                   help="model size (default: reduced on CPU, sd on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {', '.join(BENCHES)}")
    p.add_argument("--tag", default="", help="suffix for the JSON file name")
    a = p.parse_args(argv)
    gpu = torch.device(a.device).type == "cuda"
    size = a.size or ("sd" if gpu else "reduced")
    threads = a.threads or (torch.get_num_threads() if gpu else 1)
    torch.set_num_threads(threads)
    only = [b.strip() for b in a.only.split(",") if b.strip()]
    unknown = set(only) - set(BENCHES)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {', '.join(BENCHES)}")

    from bench_audit import bench_audit
    from bench_geometry import bench_distortion, bench_influence
    from bench_models import bench_families
    from bench_sweep import bench_sweep

    info = machine_info(a.device, threads)
    info.update(quick=a.quick, size=size)
    results: dict = {}
    t_start = time.perf_counter()
    steps = {"influence": lambda: bench_influence(a.device, size, a.quick),
             "distortion": lambda: bench_distortion(a.device, size, a.quick),
             "sweep": lambda: bench_sweep(a.device, size, a.quick),
             "models": lambda: bench_families(a.device, a.quick)}
    for name in only:
        t0 = time.perf_counter()
        if name == "audit":
            results["memory"], results["scaling"] = bench_audit(a.quick, threads)
        else:
            if gpu:
                torch.cuda.reset_peak_memory_stats()
            results[name] = steps[name]()
        print(f"[{name}] {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    add_peak_fractions(results, info)
    info["wall_s"] = time.perf_counter() - t_start
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if gpu else "cpu"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{kind}-{stamp}{('-' + a.tag) if a.tag else ''}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(table(results))
    print(f"\n{info.get('gpu') or info['cpu_model']}, {threads} torch thread(s), torch {info['torch']}, "
          f"diffusers {info['diffusers']}; load average {fmt(info['load_average_start'][0]) if info['load_average_start'] else '-'}"
          f" at start; {info['wall_s']:.0f} s in all")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
