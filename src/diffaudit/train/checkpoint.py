"""Resumable checkpoints written atomically (temp file + fsync + rename); no pickles on load.

Layout under `<out>/checkpoints/`:
  <stage>-<step>.safetensors   model weights
  <stage>-<step>.optim.pt      optimizer state (plain tensors/dicts; loaded with weights_only=True)
  <stage>.json                 {"step": ..., "losses": ...} — written last, so it only ever points
                               at a complete pair of files
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .._io import _fsync_dir, atomic_write  # noqa: F401 (used below and re-exported)
from ..errors import ModelError


def write_json(path: Path, obj) -> None:
    def w(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2, sort_keys=True)

    atomic_write(path, w)


def read_json(path: Path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: cannot read training state ({e})") from None


def save_checkpoint(ckpt_dir: Path, stage: str, step: int, model, optimizer, info: dict) -> None:
    """Write weights + optimizer state for `step`, point `<stage>.json` at them, drop older ones."""
    ckpt_dir = Path(ckpt_dir)
    weights = ckpt_dir / f"{stage}-{step:08d}.safetensors"
    optim = ckpt_dir / f"{stage}-{step:08d}.optim.pt"
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    atomic_write(weights, lambda tmp: save_file(state, tmp))
    atomic_write(optim, lambda tmp: torch.save(optimizer.state_dict(), tmp))
    write_json(ckpt_dir / f"{stage}.json", dict(info, step=step, weights=weights.name, optim=optim.name))
    for old in ckpt_dir.glob(f"{stage}-*"):
        if old.name not in (weights.name, optim.name):
            old.unlink(missing_ok=True)


def load_checkpoint(ckpt_dir: Path, stage: str, model, optimizer) -> dict | None:
    """Restore the last checkpoint of `stage` into model/optimizer; its info dict, or None."""
    meta_path = Path(ckpt_dir) / f"{stage}.json"
    if not meta_path.exists():
        return None
    info = read_json(meta_path)
    weights = Path(ckpt_dir) / info["weights"]
    optim = Path(ckpt_dir) / info["optim"]
    try:
        model.load_state_dict(load_file(weights))
        optimizer.load_state_dict(torch.load(optim, weights_only=True, map_location="cpu"))
    except Exception as e:  # corrupt or foreign files: say which
        raise ModelError(f"{weights}: cannot resume from this checkpoint ({type(e).__name__}: {e})") from None
    return info


def save_pretrained_atomic(model, target: Path) -> None:
    """model.save_pretrained into a temp folder beside `target`, then rename it into place."""
    target = Path(target)
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(tmp, safe_serialization=True)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    _fsync_dir(target.parent)
