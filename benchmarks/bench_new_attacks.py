"""What each attack adds to the demo audit's attack pass (docs/attacks.md, "In the audit").

The model: the digits demo's architecture (`diffaudit.train` preset "digits": 1×16² images, the
4×8×8 β-VAE and the 0.81M-parameter UNet, T = 1000) with seeded random weights — a trained model
costs the same per call. Its unconditional UNet serves every attack but CLiD; CLiD is timed on
the same UNet with a class embedding (11 rows, null label 10), as a class-conditional demo would
have. The pass: `diffaudit.audit.run.compute_chunk` on chunks of 64 samples with the demo's
default `AuditConfig` (grids, mask bank, batch 64) and the geometry given (random influence), so
only the attacks and their reductions are timed.

Times are interleaved in one process: the four default attacks (SimA, Loss, PIA, SecMI) as the
baseline, then the baseline plus each new attack (the marginal cost, which for PIA-N includes the
ε̂(z, 0) it shares with PIA), repeated `--repeats` times (min and median kept). Seconds per
sample × 1024 give the demo-size (512 + 512) figures; the ratio to the baseline in the same run
is the load-independent number.

    python benchmarks/bench_new_attacks.py [--n 128] [--repeats 2] [--out benchmarks/results/]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

BASE = ("sima", "loss", "pia", "secmi")
NEW = ("pian", "pfami", "gsa", "clid")
DEMO_N = 1024


def build(conditional: bool):
    import torch

    from diffaudit.models import LatentDiffusion
    from diffaudit.train.models import build_scheduler, build_unet, build_vae
    from diffaudit.train.presets import get_preset

    preset = get_preset("digits")
    torch.manual_seed(0)
    vae = build_vae(preset, 1).eval()
    unet = build_unet(preset, 11 if conditional else None).eval()
    return LatentDiffusion(unet, build_scheduler(preset), vae=vae, null_label=10 if conditional else None)


def time_pass(model, images, labels, attacks, chunk: int = 64) -> tuple[float, float]:
    """(wall seconds of the attack pass, process CPU seconds of the whole chunk calls: with one
    thread the latter is far less sensitive to other processes on a shared machine)."""
    import numpy as np
    import torch

    from diffaudit.audit import AuditConfig
    from diffaudit.audit.run import PassTiming, compute_chunk

    config = AuditConfig(attacks=tuple(attacks))
    timing = PassTiming()
    c0 = time.process_time()
    d = int(np.prod(model.latent_shape))
    for s in range(0, len(images), chunk):
        x = images[s:s + chunk]
        g = torch.Generator().manual_seed(s)
        geo = {"influence": torch.randn(len(x), d, generator=g).numpy().astype(np.float32)}
        keys = [f"s{i}" for i in range(s, s + len(x))]
        cond = None if labels is None else labels[s:s + chunk]
        compute_chunk(model, x, cond, keys, config, geo, timing)
    return timing.attacks_s, time.process_time() - c0


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=128, help="samples per timed pass (chunks of 64)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--out", type=Path, default=None, help="folder for a JSON record")
    args = p.parse_args()
    import torch

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(args.n, 1, 16, 16, generator=g) * 2 - 1
    labels = torch.randint(0, 10, (args.n,), generator=g)
    models = {False: build(False), True: build(True)}
    runs = [("base", BASE, False)] + [(a, BASE + (a,), a == "clid") for a in NEW]
    runs.append(("base (class UNet)", BASE, True))
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    cpu: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.repeats):
        for name, attacks, cond in runs:
            wall, c = time_pass(models[cond], images, labels if cond else None, attacks)
            times[name].append(wall)
            cpu[name].append(c)
    rows = {}
    for name, attacks, cond in runs:
        base = "base (class UNet)" if cond else "base"
        r = rows[name] = {"attacks": list(attacks), "conditional_unet": cond}
        for label, t in (("wall", times), ("cpu", cpu)):
            r[f"{label}_s_min"], r[f"{label}_s_median"] = min(t[name]), statistics.median(t[name])
            if name != base:
                extra = min(t[name]) - min(t[base])
                r[f"{label}_extra_s_demo"] = extra / args.n * DEMO_N
                r[f"{label}_ratio_to_base"] = min(t[name]) / min(t[base])
    print(f"attack pass on {args.n} samples (min of {args.repeats}); demo-size = × {DEMO_N}/{args.n}")
    print(f"{'run':<20} {'wall s':>7} {'cpu s':>7} {'extra wall s (demo)':>20} {'extra cpu s (demo)':>19} "
          f"{'× base (cpu)':>12}")
    nan = float("nan")
    for name, r in rows.items():
        print(f"{name:<20} {r['wall_s_min']:7.2f} {r['cpu_s_min']:7.2f} {r.get('wall_extra_s_demo', nan):20.1f} "
              f"{r.get('cpu_extra_s_demo', nan):19.1f} {r.get('cpu_ratio_to_base', nan):12.2f}")
    if args.out is not None:
        import torch as _t

        args.out.mkdir(parents=True, exist_ok=True)
        rec = {"bench": "new_attacks", "n": args.n, "repeats": args.repeats, "rows": rows,
               "raw": {"wall": times, "cpu": cpu},
               "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                           "load_average": os.getloadavg(), "torch": _t.__version__, "python": sys.version.split()[0],
                           "threads": 1},
               "created": time.strftime("%Y%m%d-%H%M%S")}
        path = args.out / f"new-attacks-cpu-{rec['created']}.json"
        path.write_text(json.dumps(rec, indent=2))
        print(f"→ {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
