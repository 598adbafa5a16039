"""Reading a model folder (docs/contracts.md §Models) into diffusers/transformers components.

Only local files are read (`local_files_only=True`). Weights load from safetensors, or from
pickled `.bin` files through `torch.load(weights_only=True)` inside diffusers/transformers,
which refuses pickles that carry code; every failure becomes one ModelError naming the path.
"""
from __future__ import annotations

import json
import pickle
import re
from pathlib import Path

from ..errors import DiffauditError, ModelError

VAE_CLASSES = ("AutoencoderKL", "VQModel")
UNET_CLASSES = ("UNet2DModel", "UNet2DConditionModel")


def read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or ModelError naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path}: missing {what}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelError(f"{path}: unreadable {what} ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: {what} is not a JSON object")
    return data


def _first_line(e: BaseException) -> str:
    """A short reason; a refused pickle is named as such (its own message invites unsafe loading)."""
    chain, cur = [], e
    while cur is not None and len(chain) < 8:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    if any(isinstance(c, pickle.UnpicklingError) or "Weights only load failed" in str(c) for c in chain):
        return "pickled weights refused: torch.load(weights_only=True) found non-tensor objects; use safetensors"
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _model_class(folder: Path, allowed: tuple[str, ...], what: str):
    cfg = read_json(folder / "config.json", f"{what} config")
    name = cfg.get("_class_name")
    if name not in allowed:
        raise ModelError(
            f"{folder / 'config.json'}: not a diffusers {what} config "
            f"(_class_name {name!r}; supported: {', '.join(allowed)})"
        )
    import diffusers

    return getattr(diffusers, name)


def _load_diffusers_model(folder: Path, allowed, what: str, variant=None, dtype=None):
    cls = _model_class(folder, allowed, what)
    try:
        model = cls.from_pretrained(folder, local_files_only=True, variant=variant, torch_dtype=dtype)
    except DiffauditError:
        raise
    except Exception as e:  # OSError (no weights), UnpicklingError (code in a pickle), size mismatch …
        raise ModelError(f"{folder}: cannot load {what} weights ({_first_line(e)})") from e
    return model.eval().requires_grad_(False)


def load_vae(folder: Path, variant=None):
    """AutoencoderKL or VQModel from `folder` (float32: the geometry runs in float32)."""
    import torch

    return _load_diffusers_model(folder, VAE_CLASSES, "VAE", variant, torch.float32)


def load_unet(folder: Path, variant=None, dtype=None):
    """UNet2DModel or UNet2DConditionModel from `folder` (in `dtype` when given)."""
    return _load_diffusers_model(folder, UNET_CLASSES, "UNet", variant, dtype)


def load_scheduler(folder: Path):
    """Any diffusers scheduler named by `scheduler_config.json` (alphas_cumprod comes from it)."""
    path = folder / "scheduler_config.json"
    cfg = read_json(path, "scheduler config")
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, str(cfg.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelError(f"{path}: not a diffusers scheduler config (_class_name {cfg.get('_class_name')!r})")
    try:
        return cls.from_config(cfg)
    except Exception as e:
        raise ModelError(f"{path}: invalid scheduler config ({_first_line(e)})") from e


def load_text(folder: Path):
    """(CLIPTextModel, CLIPTokenizer) from text_encoder/ and tokenizer/ (extra "text").

    The tokenizer loads from either layout: vocab.json + merges.txt (classic SD folders) or
    tokenizer.json (what transformers 5 writes), SPEC §9.
    """
    from .._checks import require_extra

    transformers = require_extra("transformers", "text")
    enc_dir, tok_dir = folder / "text_encoder", folder / "tokenizer"
    for d in (enc_dir, tok_dir):
        if not d.is_dir():
            raise ModelError(f"{d}: missing (a text-conditioned model needs text_encoder/ and tokenizer/)")
    cfg = read_json(enc_dir / "config.json", "text encoder config")
    if cfg.get("model_type") not in ("clip_text_model", "clip"):
        raise ModelError(f"{enc_dir / 'config.json'}: not a CLIP text encoder config (model_type {cfg.get('model_type')!r})")
    try:
        encoder = transformers.CLIPTextModel.from_pretrained(enc_dir, local_files_only=True)
    except Exception as e:
        raise ModelError(f"{enc_dir}: cannot load text encoder ({_first_line(e)})") from e
    try:
        tokenizer = transformers.CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True)
    except Exception as e:
        raise ModelError(f"{tok_dir}: cannot load tokenizer ({_first_line(e)})") from e
    return encoder.eval().requires_grad_(False), tokenizer


def load_folder(directory, variant=None, unet_dtype=None) -> dict:
    """All components of a model folder as a dict of LatentDiffusion constructor arguments.

    Layout: [model_index.json] [vae/] unet/ scheduler/ [text_encoder/ tokenizer/] [diffaudit.json].
    A folder without vae/ is a pixel-space model (identity decoder).
    """
    root = Path(directory)
    if not root.exists():
        raise ModelError(f"{root}: model folder does not exist")
    if not root.is_dir():
        raise ModelError(f"{root}: not a folder (expected a model folder with unet/ and scheduler/)")
    if not (root / "unet").is_dir():
        raise ModelError(f"{root}: no unet/ subfolder (expected [vae/] unet/ scheduler/ as written by save_pretrained)")
    if not (root / "scheduler").is_dir():
        raise ModelError(f"{root}: no scheduler/ subfolder (alphas_cumprod comes from its config)")
    if (root / "model_index.json").exists():
        read_json(root / "model_index.json", "pipeline index")  # fail early on a broken index
    parts = {
        "unet": load_unet(root / "unet", variant, unet_dtype),
        "scheduler": load_scheduler(root / "scheduler"),
        "vae": load_vae(root / "vae", variant) if (root / "vae").is_dir() else None,
        "info": read_json(root / "diffaudit.json", "diffaudit metadata") if (root / "diffaudit.json").exists() else {},
    }
    if (root / "text_encoder").is_dir() or (root / "tokenizer").is_dir():
        parts["text_encoder"], parts["tokenizer"] = load_text(root)
    return parts
