"""What a cached result depends on, as hashes: the model's weights, its folder, the samples.

The audit store (`audit.store.ChunkStore`) and the dynamics report folder keep results under a
manifest holding these hashes; a run whose hashes differ is refused or, when asked, recomputed.
So the hash of a model must change whenever anything that changes a score changes: every weight
tensor (values, dtype, shape), the noise schedule, the prediction type, the tokenizer, the LoRA
adapters applied.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

# Component folders of a model folder whose files determine the results (diffusers layout,
# including the transformer-based families and their second/third text encoders).
MODEL_PARTS = ("vae", "vqvae", "unet", "transformer", "scheduler", "text_encoder", "tokenizer", "text_encoder_2",
               "tokenizer_2", "text_encoder_3", "tokenizer_3")


# Settings of the model object (not of a module) that change what it computes.
# Settings that change ε̂ without changing a weight: SDXL's micro-conditions, FLUX's guidance embedding.
SCALARS = ("prediction_type", "scaling_factor", "shift_factor", "null_label", "kind", "original_size", "target_size",
           "crops_coords_top_left", "guidance")


def _update_file(h, path: Path) -> None:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)


def _update_path(h, path: Path) -> None:
    """A file's bytes, or every file under a folder (relative names and bytes, sorted)."""
    path = Path(path)
    if path.is_file():
        _update_file(h, path)
        return
    for p in sorted(path.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(path).as_posix().encode())
            _update_file(h, p)


def model_folder_hash(folder, lora=()) -> str:
    """sha256 over a model folder's components (file names and bytes; not diffaudit.json's timings),
    plus the bytes and scale of each LoRA applied (`lora`: (path, scale) pairs)."""
    folder = Path(folder)
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if p.is_file() and (rel.parts[0] in MODEL_PARTS or rel.name == "model_index.json"):
            h.update(str(rel).encode())
            _update_file(h, p)
    for path, scale in lora or ():
        h.update(f"lora scale {float(scale)!r}".encode())
        _update_path(h, Path(path))
    return h.hexdigest()


def _tensor_bytes(t: torch.Tensor):
    """The tensor's raw bytes as a buffer (no copy on CPU), for any dtype (bfloat16 included)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy() if t.numel() else b""


def _update_module(h, name: str, module: torch.nn.Module) -> None:
    h.update(f"module {name} {type(module).__name__}".encode())
    config = getattr(module, "config", None)  # e.g. a VAE's scaling_factor lives there, not in the weights
    if config is not None:
        config = dict(config) if isinstance(config, Mapping) else getattr(config, "to_dict", dict)()
        h.update(_public_config(config).encode())
    state = module.state_dict()
    for key in sorted(state):
        t = state[key]
        h.update(f"{key} {t.dtype} {tuple(t.shape)}".encode())
        h.update(_tensor_bytes(t))


def _update_tokenizer(h, name: str, tok) -> None:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is not None and hasattr(backend, "to_str"):
        body = backend.to_str()  # vocabulary, merges, normalizer: everything tokenization depends on
    else:
        body = json.dumps(sorted(tok.get_vocab().items()))
    h.update(f"tokenizer {name} {type(tok).__name__} {getattr(tok, 'model_max_length', None)}".encode())
    h.update(body.encode())


def _public_config(config) -> str:
    """A config as sorted JSON without private or version keys (equal for a model built in memory
    and the same model saved and loaded again)."""
    items = {k: v for k, v in dict(config).items() if not str(k).startswith("_") and not str(k).endswith("_version")}
    return json.dumps(items, sort_keys=True, default=str)


def model_weights_hash(model) -> str:
    """sha256 of what the model object computes with (not of any file): the config and state dict
    (names, dtypes, shapes, bytes) of every `torch.nn.Module` attribute, every tensor attribute
    (`alphas_cumprod` …), tokenizers, the scheduler's config, the settings in `SCALARS`
    (`prediction_type` …) and the LoRA list (`model.loras` or `model.lora`: (path, scale) pairs).

    Attributes are visited in name order, so the hash does not depend on construction order;
    the same weights loaded twice, on any device, give the same hash.
    """
    h = hashlib.sha256()
    attrs = dict(getattr(model, "__dict__", {}))
    if "alphas_cumprod" not in attrs and getattr(model, "alphas_cumprod", None) is not None:  # a property
        attrs["alphas_cumprod"] = torch.as_tensor(model.alphas_cumprod)
    for name in sorted(attrs):
        value = attrs[name]
        if isinstance(value, torch.nn.Module):
            _update_module(h, name, value)
        elif isinstance(value, torch.Tensor):  # alphas_cumprod, or the weights of a model built by hand
            h.update(f"tensor {name} {value.dtype} {tuple(value.shape)}".encode())
            h.update(_tensor_bytes(value))
        elif hasattr(value, "get_vocab") and callable(value.get_vocab):
            _update_tokenizer(h, name, value)
        elif name == "scheduler" and hasattr(value, "config"):
            h.update(f"scheduler {type(value).__name__} {_public_config(value.config)}".encode())
    for name in SCALARS:
        h.update(f"{name} {getattr(model, name, None)!r}".encode())
    for path, scale in getattr(model, "loras", None) or getattr(model, "lora", None) or ():
        h.update(f"lora {Path(path).name} {float(scale)!r}".encode())
        if Path(path).exists():
            _update_path(h, Path(path))
    return h.hexdigest()


def samples_hash(samples) -> str:
    """Keys, membership and a hash of the content (pixels, conditions, conversion settings; see
    `samples.content_hash`). Keys alone would let two data sets with the default keys
    ("member/0", …) share one cache."""
    from .samples import content_hash

    body = [samples.keys, np.asarray(samples.member).astype(int).tolist(), content_hash(samples)]
    return hashlib.sha256(json.dumps(body).encode()).hexdigest()[:16]
