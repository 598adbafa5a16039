"""diffaudit's speed benchmarks: one command, a table of goals with targets, and a JSON file.

    python benchmarks/run.py [--quick] [--device cuda] [--out benchmarks/results/]

Each figure is a ratio against a baseline measured in the same run on the same model:
1. influence: geometry.influence vs Algorithm 2 (per-sample, per-probe loop) and vs the bare
   passes (one forward + n_mc backward at the same batch size);
2. distortion: geometry.singular_values vs the paper authors' own Algorithm 1 code path
   (per-column functional.jvp, one forward + retained-graph backwards), at equal or better
   accuracy against the full Jacobian;
   SD scale: influence and distortion seconds, products and peak RSS per sample with SD v1's
   VAE at 4×32×32 on the CPU, and the projection to 4×64×64 on a GPU (full mode only);
   SLQ: the quadrature bias of distortion(estimator="slq") at its default steps;
3. attack sweep: SimA + PIA + Loss + SecMI over the default t grid vs the bare UNet rows it needs;
4. memory: peak RSS of run_audit with 4× more samples (fresh subprocesses);
5. scaling: run_audit time vs N;
6. demo and tests: wall time of `diffaudit demo` and of the README's test command in fresh
   subprocesses (full mode on a CPU only: absolute times, read beside the load average).
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

BENCHES = ("influence", "distortion", "sd", "slq", "sweep", "audit", "models", "demo", "tests")
# The default run: the speed goals, within 10 minutes on 2 idle cores; `--only models` adds the
# per-family sweep overhead (about a minute more).
DEFAULT = tuple(b for b in BENCHES if b != "models")
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


def _met(r: dict) -> str:
    m = r.get("target_met")
    return "-" if m is None else ("met" if m else "NOT met")


def _ratio(x: dict) -> str:
    """A ratio as 'CPU-time median (CPU min; wall min)' where CPU times were measured, else
    'wall min (wall median)'."""
    if "cpu_median" in x:
        return f"{fmt(x['cpu_median'])} (cpu min {fmt(x['cpu_min'])}; wall min {fmt(x['min'])})"
    return f"{fmt(x['min'])} ({fmt(x['median'])})"


def rows_influence(r: dict) -> list[tuple]:
    return [("influence", f"{_ratio(r['fraction_of_limit'])} of the bare passes; "
             f"{fmt(r['speedup_vs_algorithm2']['min'])}x vs Alg. 2 loop", r["target"], _met(r),
             fmt(r["samples_per_s"]), _tflops(r))]


def rows_distortion(r: dict) -> list[tuple]:
    rows = []
    sp, acc, prods = r["speedup_vs_authors"], r.get("accuracy_vs_full_jacobian", {}), r["products_per_sample"]
    for k in sp:
        err = acc.get(k, {}).get("sigma_max_rel_err")
        p = prods[k]
        count = f"{p['min']}" if p["min"] == p["max"] else f"{p['min']}-{p['max']}, mean {p['mean']:.0f}"
        head = k == r["default_setting"]
        rows.append(("distortion" if not rows else "",
                     f"{k}{' (default)' if head else ''} [{count} products]: {_ratio(sp[k])}x vs authors, "
                     f"sigma err {f'{err:.1e}' if err is not None else '-'}",
                     r["target"] if head else "", _met(r) if head else "", fmt(r["samples_per_s"][k], 3), ""))
    if "authors" in acc:
        rows.append(("", f"authors' path [{prods['authors']['min']} products] sigma err "
                     f"{acc['authors']['sigma_max_rel_err']:.1e}", "", "", fmt(r["samples_per_s"]["authors"], 3), ""))
    p = r.get("default_products_16_samples")
    if p:
        rows.append(("", f"default's products per sample over 16 samples: min {p['min']}, median {p['median']:.0f}, "
                     f"max {p['max']}", "", "", "", ""))
    return rows


def rows_sd(r: dict) -> list[tuple]:
    if "skipped" in r:
        return [("SD scale (CPU)", f"skipped: {r['skipped']}", "", "-", "", "")]
    i, d, g = r["influence"], r["distortion"], r["gpu_projection_4x64x64"]
    return [("SD scale (CPU)", f"4x32x32: influence {fmt(i['s_per_sample'], 0)} s/sample ({i['products_per_sample']} "
             f"products, peak {fmt(i['peak_rss_gib'], 1)} GiB); distortion {fmt(d['s_per_sample'], 0)} s/sample "
             f"({fmt(d['products_per_sample'], 0)} products, peak {fmt(d['peak_rss_gib'], 1)} GiB)", r["target"], _met(r), "", ""),
            ("", f"GPU projection 4x64x64: influence {fmt(g['influence_s_per_sample'], 3)} s, distortion "
             f"{fmt(g['distortion_s_per_sample'], 2)} s per sample ({g['assumption']})", "", "", "", "")]


def rows_slq(r: dict) -> list[tuple]:
    return [("SLQ bias", f"{r['summary']}", r["target"], _met(r), "", "")]


def rows_sweep(r: dict) -> list[tuple]:
    return [("attack sweep", f"{_ratio(r['overhead_vs_same_calls'])} of the bare rows in the same {r['calls_sweep']} "
             f"calls; {_ratio(r['overhead'])} in {r['calls_bare']} full calls; bookkeeping "
             f"{fmt(r['bookkeeping']['median'], 3)}x the UNet time; rows {r['rows_sweep']}/{r['rows_min']}",
             r["target"], _met(r), fmt(r["samples_per_s"]), _tflops(r))]


def rows_wall(name: str):
    def rows(r: dict) -> list[tuple]:
        if "skipped" in r:
            return [(name, r["skipped"], r["target"], _met(r), "", "")]
        extra = f", slowest test {fmt(r['slowest_test_s'], 1)} s" if r.get("slowest_test_s") is not None else ""
        load = r["load_average"][0][0]
        return [(name, f"wall {fmt(r['wall_s'], 0)} s, CPU {fmt(r['cpu_s'], 0)} s{extra} (load {fmt(load, 1)} at start; "
                 f"rc {r['returncode']})", r["target"], _met(r), "", "")]
    return rows


def rows_memory(r: dict) -> list[tuple]:
    pairs = ", ".join(f"{p['n']}->{p['n4']}: {fmt(p['ratio'])}x ({fmt(p['ratio_above_floor'])}x above floor)"
                      for p in r["pairs"])
    return [("memory", pairs, r["target"], _met(r), "", "")]


def rows_scaling(r: dict) -> list[tuple]:
    per = ", ".join(f"N={n}: {fmt(v * 1000, 0)} ms" for n, v in r["time_per_sample_s"].items())
    return [("scaling", f"time/N {per}", "linear", _met(r), fmt(1 / list(r["time_per_sample_s"].values())[-1]), "")]


# The table: one entry per result, in order; each gives that result's rows (goal, figure,
# target, met, samples/s, TFLOP/s). A new benchmark adds its result name and row function here.
def rows_models(r: dict) -> list[tuple]:
    from bench_models import table_rows

    return table_rows(r)


ROWS = [("influence", rows_influence), ("distortion", rows_distortion), ("sd", rows_sd), ("slq", rows_slq),
        ("sweep", rows_sweep), ("memory", rows_memory), ("scaling", rows_scaling), ("models", rows_models),
        ("demo", rows_wall("demo")), ("tests", rows_wall("tests"))]


def table(results: dict) -> str:
    rows = [("goal", "figure (ratios: CPU-time median of interleaved runs; CPU min; wall min)", "target", "met",
             "samples/s", "TFLOP/s")]
    for name, make in ROWS:
        if name in results:
            r = results[name]
            rows.extend([(name, f"ERROR {r['error']}", r["target"], _met(r), "", "")] if "error" in r else make(r))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def goals(results: dict) -> str:
    """One line per goal: its target and whether this run met it."""
    out = []
    for name, _ in ROWS:
        r = results.get(name)
        if r is not None and "target" in r:
            out.append(f"{name}: {r['target']}: {_met(r)}")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    p.add_argument("--device", default="cpu")
    p.add_argument("--size", choices=("reduced", "sd"), default=None,
                   help="model size (default: reduced on CPU, sd on CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default 1 on CPU)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--only", default=",".join(DEFAULT), help=f"comma list of {', '.join(BENCHES)} (default: all but models)")
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
    from bench_demo import bench_row
    from bench_geometry import bench_distortion, bench_influence
    from bench_models import bench_families
    from bench_sd import bench_sd
    from bench_slq import bench_slq_row
    from bench_sweep import bench_sweep

    info = machine_info(a.device, threads)
    info.update(quick=a.quick, size=size)
    results: dict = {}
    results_time: dict = {}
    t_start = time.perf_counter()
    steps = {"influence": lambda: bench_influence(a.device, size, a.quick),
             "distortion": lambda: bench_distortion(a.device, size, a.quick),
             "sd": lambda: bench_sd(threads, skip="--quick (minutes per sample at SD size on a CPU)" if a.quick
                                    else "--device cuda runs the other rows at SD size" if gpu else None),
             "slq": lambda: bench_slq_row(a.quick),
             "sweep": lambda: bench_sweep(a.device, size, a.quick),
             "models": lambda: bench_families(a.device, a.quick),
             "demo": lambda: bench_row("demo", a.quick or gpu),
             "tests": lambda: bench_row("tests", a.quick or gpu)}
    for name in only:
        t0 = time.perf_counter()
        try:
            if name == "audit":
                results["memory"], results["scaling"] = bench_audit(a.quick, threads)
            else:
                if gpu:
                    torch.cuda.reset_peak_memory_stats()
                results[name] = steps[name]()
        except Exception as e:  # one failing benchmark must not hide the others' figures
            failed = {"error": f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}",
                      "target": "runs", "target_met": False}
            for key in (("memory", "scaling") if name == "audit" else (name,)):
                results[key] = failed
        results_time[name] = time.perf_counter() - t0
        print(f"[{name}] {results_time[name]:.0f} s", file=sys.stderr, flush=True)
    add_peak_fractions(results, info)
    info["wall_s"] = time.perf_counter() - t_start
    info["bench_wall_s"] = results_time
    info["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    info["date"] = datetime.now(timezone.utc).isoformat(timespec="seconds")

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    kind = "gpu" if gpu else "cpu"
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    path = out / f"{kind}-{stamp}{('-' + a.tag) if a.tag else ''}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps({"machine": info, "results": results}, indent=1))
    print(table(results))
    print("\n" + goals(results))
    print(f"\n{info.get('gpu') or info['cpu_model']}, {threads} torch thread(s), torch {info['torch']}, "
          f"diffusers {info['diffusers']}; load average {fmt(info['load_average_start'][0]) if info['load_average_start'] else '-'}"
          f" at start; {info['wall_s']:.0f} s in all")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
