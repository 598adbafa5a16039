"""Before-vs-after check of a refactor: the audit's stored per-sample arrays must not change.

Run the same small audit (a tiny random latent model, 48 scikit-learn digits, a reduced config)
against two source trees and compare every array the audit stores (attack statistics per
t × mask, the App. F high-frequency statistics, influence, distortion, band energies):

    git worktree add /tmp/base HEAD                       # the "before" tree
    PYTHONPATH=/tmp/base/src python benchmarks/compare_stats.py save /tmp/before
    PYTHONPATH=src           python benchmarks/compare_stats.py save /tmp/after
    python benchmarks/compare_stats.py compare /tmp/before /tmp/after [--tolerate hf__ --atol 1e-6]
    git worktree remove /tmp/base

`save DIR` writes DIR/stats.npz (the output of `diffaudit.audit.run.gather`) plus the run's
results.json and metrics.csv. `compare A B` exits 1 unless every array in A is bit-identical
(np.array_equal, NaN equal to NaN) to B's; arrays named in --tolerate (prefixes, e.g. `hf__`)
may instead differ by float rounding (max |Δ| ≤ --atol relative to the array's scale), and the
largest difference is printed. It also says whether metrics.csv is byte-identical (informative:
other changes may alter the metrics computed from equal arrays).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

CONFIG = dict(t_max=60, t_stride=10, n_random=2, bootstrap=20, chunk_size=16, batch_size=16, k=40, k_sweep=(0, 40),
              n_probes=2, svd_rank=2, svd_block_size=2, svd_power_iters=1, strata_random=2,
              hf_timesteps=(20, 50, 70))  # 70: off the main grid, the sweep adds it for the HF variant


def save(out: Path) -> None:
    import torch
    from sklearn.datasets import load_digits

    import diffaudit
    from diffaudit.audit import SampleSet, run_audit
    from diffaudit.audit.plan import from_dict
    from diffaudit.audit.run import gather
    from diffaudit.audit.store import ChunkStore
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import save_tiny_model_folder

    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = save_tiny_model_folder(Path(tmp) / "model", kind="latent", image_size=8, image_channels=1)
        model = LatentDiffusion.from_pretrained(folder)
        x = torch.from_numpy(load_digits().images[:48, None]).float() / 8 - 1  # 0..16 → [-1, 1]
        samples = SampleSet.from_tensors(x[:24], x[24:])
        config = from_dict(dict(CONFIG))
        run_audit(model, samples, config, out_dir=out, progress=False)
        stores = [ChunkStore(out / "cache" / kind, json.loads((out / "cache" / kind / "manifest.json").read_text()))
                  for kind in ("geometry", "attacks")]
        arrays = gather(samples, config, *stores)
    np.savez(out / "stats.npz", **arrays)
    print(f"{diffaudit.__file__}: {len(arrays)} arrays → {out / 'stats.npz'}")


def compare(a: Path, b: Path, tolerate: list[str], atol: float) -> int:
    A, B = np.load(a / "stats.npz"), np.load(b / "stats.npz")
    bad = 0
    if set(A.files) != set(B.files):
        print(f"different arrays: only before {sorted(set(A.files) - set(B.files))}, "
              f"only after {sorted(set(B.files) - set(A.files))}")
        bad += 1
    for k in sorted(set(A.files) & set(B.files)):
        x, y = A[k], B[k]
        if x.shape != y.shape or x.dtype != y.dtype:
            print(f"{k}: {x.dtype}{x.shape} before, {y.dtype}{y.shape} after")
            bad += 1
            continue
        if np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            print(f"{k}: bit-identical {x.dtype}{x.shape}")
            continue
        x64, y64 = x.astype(np.float64), y.astype(np.float64)
        diff = float(np.nanmax(np.abs(x64 - y64)))
        scale = float(np.nanmax(np.abs(x64))) or 1.0
        with np.errstate(divide="ignore", invalid="ignore"):
            rel = float(np.nanmax(np.abs(x64 - y64) / np.abs(x64)))
        same_nan = np.array_equal(np.isnan(x), np.isnan(y)) if x.dtype.kind == "f" else True
        ok = any(k.startswith(p) for p in tolerate) and same_nan and diff <= atol * scale
        print(f"{k}: {'rounding' if ok else 'DIFFERS'}: max |Δ| = {diff:.3g} (max |x| = {scale:.3g}), "
              f"max |Δ|/|x| = {rel:.3g}")
        if x.ndim == 3:  # e.g. hf__*: [N, t, (plain, filtered)]: which columns moved
            print(f"  bit-identical along the last axis: {[bool(np.array_equal(x[..., j], y[..., j], equal_nan=True)) for j in range(x.shape[-1])]}")
        bad += not ok
    ma, mb = a / "metrics.csv", b / "metrics.csv"
    if ma.exists() and mb.exists():
        print(f"metrics.csv: {'byte-identical' if ma.read_bytes() == mb.read_bytes() else 'differs'}")
    print("OK" if not bad else f"{bad} array(s) differ")
    return 1 if bad else 0


def main() -> int:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save")
    s.add_argument("out", type=Path)
    c = sub.add_parser("compare")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--tolerate", nargs="*", default=[], help="array-name prefixes allowed to differ by rounding")
    c.add_argument("--atol", type=float, default=1e-12, help="allowed max |Δ| relative to max |before|")
    args = p.parse_args()
    if args.cmd == "save":
        save(args.out)
        return 0
    return compare(args.before, args.after, args.tolerate, args.atol)


if __name__ == "__main__":
    sys.exit(main())
