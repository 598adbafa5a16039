"""Reading a model folder (docs/models.md §Folders) into adapter constructor arguments.

Two layouts:
- a pipeline folder (`model_index.json`): loaded by `DiffusionPipeline.from_pretrained`, the
  family chosen by the pipeline class (`models.registry`);
- a component folder ([vae/] unet/ or transformer/, scheduler/, [text_encoder/ tokenizer/],
  [diffaudit.json]; what `diffaudit train` writes): each part loaded by its own class, the
  family chosen by the denoiser's config.

Only local files are read (`local_files_only=True`) and only safetensors weights
(`use_safetensors=True`). Folders are looked at first: a component folder whose weights are
pickles only (.bin/.pt/.ckpt/.pth) is refused in one line naming the file, before diffusers
or transformers run (nothing is unpickled, nothing is printed). Every failure is one ModelError
naming the path; the libraries' own log lines and progress bars are kept off the terminal.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from ..errors import DiffauditError, ModelError
from .first_stage import KINDS as VAE_CLASSES
from .library_logs import missing_weights, quiet_libraries
from .registry import FAMILIES, denoiser_folders, family_for_config, family_for_pipeline
from .schedules import schedule_of

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
# pipeline components diffaudit never needs (not loaded: a safety checker is a second CLIP model)
SKIPPED_COMPONENTS = ("safety_checker", "feature_extractor", "image_encoder")
TEXT_PARTS = ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")
# how a component's weights are named in messages (the second is what older messages said)
_WHAT = {"unet": "UNet weights", "transformer": "transformer weights", "vae": "VAE weights", "vqvae": "VAE weights"}


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


def _what(component: str) -> str:
    return _WHAT.get(component, "text encoder" if component.startswith("text_encoder") else f"{component} weights")


def _first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def refuse_pickles(folder: Path, component: str) -> None:
    """ModelError naming the file if `folder` holds pickled weights and no safetensors."""
    if not folder.is_dir():
        return
    files = sorted(p for p in folder.iterdir() if p.is_file())
    if any(p.suffix == ".safetensors" for p in files):
        return
    pickles = [p for p in files if p.suffix in PICKLE_SUFFIXES]
    if pickles:
        raise ModelError(f"{folder}: cannot load {_what(component)} (pickled weights refused: {pickles[0].name} is a "
                         f"pickle; diffaudit loads .safetensors only, convert it with safetensors.torch.save_file)")


def _class_of(folder: Path, allowed, what: str):
    cfg = read_json(folder / "config.json", f"{what} config")
    name = cfg.get("_class_name")
    if name not in allowed:
        raise ModelError(f"{folder / 'config.json'}: not a diffusers {what} config "
                         f"(_class_name {name!r}; supported: {', '.join(allowed)})")
    import diffusers

    return getattr(diffusers, name)


def _from_pretrained(load, folder: Path, what: str):
    """`load()` quietly; any failure (or a weight left at random init) is one ModelError."""
    with quiet_libraries() as records:
        try:
            model = load()
        except DiffauditError:
            raise
        except Exception as e:  # OSError (no weights), size mismatch, broken files …
            raise ModelError(f"{folder}: cannot load {what} ({_first_line(e)})") from e
    missing = missing_weights(records)
    if missing:
        raise ModelError(f"{folder}: cannot load {what} (weights missing from the checkpoint: {missing})")
    return model.eval().requires_grad_(False) if hasattr(model, "eval") else model


def load_vae(folder: Path, variant=None):
    """AutoencoderKL or VQModel from `folder` (float32: the geometry runs in float32)."""
    import torch

    refuse_pickles(folder, "vae")
    cls = _class_of(folder, tuple(VAE_CLASSES), "VAE")
    return _from_pretrained(lambda: cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                        variant=variant, torch_dtype=torch.float32),
                            folder, "VAE weights")


def load_denoiser(root: Path, variant=None, dtype=None):
    """(family, denoiser module) from root/unet or root/transformer (in `dtype` when given)."""
    import diffusers

    folder = next((root / f for f in denoiser_folders() if (root / f).is_dir()), None)
    if folder is None:
        raise ModelError(f"{root}: no unet/ or transformer/ subfolder (expected [vae/] unet/ scheduler/ as written by save_pretrained)")
    refuse_pickles(folder, folder.name)
    cfg = read_json(folder / "config.json", "UNet config" if folder.name == "unet" else "denoiser config")
    family = family_for_config(cfg.get("_class_name"), cfg, folder.name, folder / "config.json")
    cls = getattr(diffusers, family.denoiser)
    model = _from_pretrained(lambda: cls.from_pretrained(folder, local_files_only=True, use_safetensors=True,
                                                         variant=variant, torch_dtype=dtype),
                             folder, _what(folder.name))
    return family, model


def load_scheduler(folder: Path):
    """The diffusers scheduler named by `scheduler_config.json`, refused at once if diffaudit
    cannot map its schedule (`models.schedules`)."""
    path = folder / "scheduler_config.json"
    cfg = read_json(path, "scheduler config")
    import diffusers
    from diffusers import SchedulerMixin

    cls = getattr(diffusers, str(cfg.get("_class_name")), None)
    if not (isinstance(cls, type) and issubclass(cls, SchedulerMixin)):
        raise ModelError(f"{path}: not a diffusers scheduler config (_class_name {cfg.get('_class_name')!r})")
    try:
        with quiet_libraries():
            sched = cls.from_config(cfg)
    except Exception as e:
        raise ModelError(f"{path}: invalid scheduler config ({_first_line(e)})") from e
    schedule_of(sched, str(folder))
    return sched


def load_text(folder: Path):
    """(CLIPTextModel, CLIPTokenizer) from text_encoder/ and tokenizer/ of a component folder.

    The tokenizer loads from either layout: vocab.json + merges.txt (classic SD folders) or
    tokenizer.json (what transformers 5 writes).
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
    refuse_pickles(enc_dir, "text_encoder")
    encoder = _from_pretrained(lambda: transformers.CLIPTextModel.from_pretrained(
        enc_dir, local_files_only=True, use_safetensors=True), enc_dir, "text encoder")
    tokenizer = _from_pretrained(lambda: transformers.CLIPTokenizer.from_pretrained(tok_dir, local_files_only=True),
                                 tok_dir, "tokenizer")
    return encoder, tokenizer


def _info(root: Path) -> dict:
    return read_json(root / "diffaudit.json", "diffaudit metadata") if (root / "diffaudit.json").exists() else {}


def load_component_folder(root: Path, variant=None, denoiser_dtype=None) -> dict:
    """[vae/] unet/ | transformer/, scheduler/, [text_encoder/ tokenizer/], [diffaudit.json]."""
    if not (root / "scheduler").is_dir():
        if not any((root / f).is_dir() for f in denoiser_folders()):
            raise ModelError(f"{root}: no unet/ or transformer/ subfolder (expected [vae/] unet/ scheduler/ as written by save_pretrained)")
        raise ModelError(f"{root}: no scheduler/ subfolder (alphas_cumprod comes from its config)")
    family, denoiser = load_denoiser(root, variant, denoiser_dtype)
    parts = {"family": family, "denoiser": denoiser, "scheduler": load_scheduler(root / "scheduler"),
             "vae": load_vae(root / "vae", variant) if (root / "vae").is_dir() else None, "info": _info(root)}
    if (root / "text_encoder").is_dir() or (root / "tokenizer").is_dir():
        parts["text_encoder"], parts["tokenizer"] = load_text(root)
    if any((root / p).is_dir() for p in TEXT_PARTS[2:]):
        raise ModelError(f"{root}: several text encoders need a pipeline folder (model_index.json, as "
                         f"save_pretrained of the pipeline writes it)")
    return parts


def load_pipeline_folder(root: Path, variant=None, denoiser_dtype=None) -> dict:
    """A diffusers pipeline folder through `DiffusionPipeline.from_pretrained`."""
    import torch

    index_path = root / "model_index.json"
    index = read_json(index_path, "pipeline index")
    family = family_for_pipeline(str(index.get("_class_name")), index_path)
    listed = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and len(v) == 2
              and v[0] is not None and k not in SKIPPED_COMPONENTS}
    for name, (library, _cls) in listed.items():
        if not (root / name).is_dir():
            raise ModelError(f"{root / name}: missing (model_index.json lists it)")
        if library in ("diffusers", "transformers") and name != "scheduler" and not name.startswith("tokenizer"):
            refuse_pickles(root / name, name)
    if family.folder not in listed:
        raise ModelError(f"{index_path}: no {family.folder} component listed")
    cfg = read_json(root / family.folder / "config.json", "denoiser config")
    if not family.fits(cfg.get("_class_name"), cfg):
        other = family_for_config(cfg.get("_class_name"), cfg, family.folder, root / family.folder / "config.json")
        raise ModelError(f"{index_path}: a {index.get('_class_name')} folder, but {family.folder}/config.json "
                         f"holds a {other.name} denoiser")
    scheduler = load_scheduler(root / "scheduler")
    from diffusers import DiffusionPipeline

    # not loaded: the parts diffaudit never needs, and parts the index leaves out ([null, null],
    # e.g. SD3 without T5), which diffusers wants passed explicitly as None
    skip = {k: None for k, v in index.items() if not k.startswith("_")
            and (k in SKIPPED_COMPONENTS or (isinstance(v, list) and all(x is None for x in v)))}
    dtypes = {family.folder: denoiser_dtype or torch.float32, "default": torch.float32}
    pipe = _from_pretrained(lambda: DiffusionPipeline.from_pretrained(
        root, local_files_only=True, use_safetensors=True, variant=variant, torch_dtype=dtypes, **skip),
        root, "pipeline")
    comps = pipe.components
    parts = {"family": family, "pipeline": pipe, "denoiser": comps[family.folder], "scheduler": scheduler,
             "vae": comps.get("vae", comps.get("vqvae")), "info": _info(root)}
    parts.update({k: comps[k] for k in TEXT_PARTS if comps.get(k) is not None})
    return parts


def load_folder(directory, variant=None, denoiser_dtype=None) -> dict:
    """All components of a model folder as a dict of adapter constructor arguments (plus
    "family", the registry row that chose the adapter)."""
    root = Path(directory)
    if not root.exists():
        raise ModelError(f"{root}: model folder does not exist")
    if not root.is_dir():
        raise ModelError(f"{root}: not a folder (expected a model folder with unet/ and scheduler/)")
    if (root / "model_index.json").exists():
        return load_pipeline_folder(root, variant, denoiser_dtype)
    return load_component_folder(root, variant, denoiser_dtype)


__all__ = ["FAMILIES", "load_folder", "read_json", "refuse_pickles"]
