"""Make (or check) the model that ships for `diffaudit demo` (digits, seed 0) with the public commands.

    python benchmarks/make_demo_model.py [--work DIR] [--install]

Runs, in DIR with one torch thread (the thread count changes float sums, hence the weights):

    diffaudit split digits --members 512 --heldout 512 --seed 0 --out split
    diffaudit train --members split/members.json --preset digits --seed 0 --out model --no-progress

then compares the trained files with src/diffaudit/audit/demo_models/digits-seed0/bundle.json
(prints "identical" or the files that differ). `--install` copies the model (without its
training checkpoints) into the package and rewrites bundle.json: do that after a change to
the digits preset, which tests/test_demo.py checks against the shipped model's recorded preset.
About 5 CPU-minutes.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLE = Path(__file__).resolve().parents[1] / "src" / "diffaudit" / "audit" / "demo_models" / "digits-seed0"
COMMANDS = [
    ["diffaudit", "split", "digits", "--members", "512", "--heldout", "512", "--seed", "0", "--out", "split"],
    ["diffaudit", "train", "--members", "split/members.json", "--preset", "digits", "--seed", "0", "--out", "model",
     "--no-progress"],
]
ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PARTS = ("vae", "unet", "scheduler")


def file_hashes(model: Path) -> dict[str, str]:
    return {str(p.relative_to(model)): hashlib.sha256(p.read_bytes()).hexdigest()
            for part in PARTS for p in sorted((model / part).rglob("*")) if p.is_file()}


def bundle_record(work: Path) -> dict:
    import diffusers
    import torch

    from diffaudit.audit.fingerprint import model_folder_hash
    from diffaudit.data import read_split

    model = work / "model"
    return {
        "format": "diffaudit-bundled-model/1",
        "data": "digits", "seed": 0, "preset": "digits",
        "made_with": [" ".join(c) for c in COMMANDS],
        "environment": {**ENV, "torch": torch.__version__, "diffusers": diffusers.__version__, "device": "cpu"},
        "split": {"members_sha256": read_split(work / "split" / "members.json").digest(),
                  "heldout_sha256": read_split(work / "split" / "heldout.json").digest(),
                  "n_members": 512, "n_heldout": 512},
        "files_sha256": file_hashes(model),
        "model_sha256": model_folder_hash(model),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=None, help="folder to run the commands in (default: a temp dir)")
    ap.add_argument("--install", action="store_true", help="copy the model into the package, rewrite bundle.json")
    args = ap.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="demo_model_"))
    work.mkdir(parents=True, exist_ok=True)
    for cmd in COMMANDS:
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, cwd=work, env={**os.environ, **ENV}, check=True)
    record = bundle_record(work)
    shipped = BUNDLE / "bundle.json"
    if shipped.exists():
        old = json.loads(shipped.read_text())["files_sha256"]
        diff = sorted(k for k in set(old) | set(record["files_sha256"]) if old.get(k) != record["files_sha256"].get(k))
        print("identical to the shipped model" if not diff else f"differs from the shipped model: {diff}")
    if args.install:
        shutil.rmtree(BUNDLE, ignore_errors=True)
        BUNDLE.mkdir(parents=True)
        for part in PARTS:
            shutil.copytree(work / "model" / part, BUNDLE / part)
        shutil.copy2(work / "model" / "diffaudit.json", BUNDLE / "diffaudit.json")
        (BUNDLE / "bundle.json").write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print("installed", BUNDLE)
    return 0


if __name__ == "__main__":
    sys.exit(main())
