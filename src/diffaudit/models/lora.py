"""LoRA adapters (arXiv:2106.09685) on a loaded model, through diffusers' own `load_lora_weights`.

`apply_loras(model, [(path, scale), ...])` loads each safetensors file (diffusers / PEFT format,
or kohya / A1111 keys, which diffusers' loader converts) onto the denoiser and the text encoders
its keys name, then activates them with `set_adapters(names, adapter_weights=scales)`. Nothing is
silent: a pickled file, a file whose keys match no module (a LoRA for another architecture), or
one with weights that match no module is refused in one line; shape mismatches too. The model
records `loras` [(file, scale), ...] so the audit's weights hash covers them. peft is the
optional extra "lora".
"""
from __future__ import annotations

from pathlib import Path

from .._checks import require_extra
from ..errors import DiffauditError, InputError, ModelError
from .library_logs import quiet_libraries

def parse_lora_arg(text: str) -> tuple[Path, float]:
    """"PATH" or "PATH:SCALE" (the CLI's --lora) → (path, scale); scale defaults to 1."""
    path, scale = text, 1.0
    head, sep, tail = text.rpartition(":")
    if sep and head:
        try:
            scale = float(tail)
            path = head
        except ValueError:
            pass  # a ':' inside the path, no scale
    return Path(path), scale


def lora_file(path) -> Path:
    """The safetensors file a LoRA argument names (a file, or a folder holding exactly one)."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.safetensors"))
        if len(found) != 1:
            raise ModelError(f"{p}: expected one LoRA .safetensors file in the folder, found {len(found)}")
        p = found[0]
    if not p.is_file():
        raise ModelError(f"{p}: LoRA file does not exist")
    if p.suffix != ".safetensors":
        raise ModelError(f"{p}: LoRA weights refused: diffaudit loads .safetensors only (pickled {p.suffix} files can run code)")
    return p


def _reason(e: BaseException) -> str:
    """First line of an error, plus its first 'size mismatch' line (torch puts it on line 2)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    detail = next((ln for ln in lines[1:] if "size mismatch" in ln), "")
    return f"{type(e).__name__}: {' '.join(lines[:1] + [detail]).strip()}"[:300]


def _adapter_holders(model) -> list:
    """The modules a LoRA can attach to: the denoiser and the text encoders."""
    names = ("denoiser", "text_encoder", "text_encoder_2", "text_encoder_3")
    return [m for m in (getattr(model, n, None) for n in names) if m is not None]


def _has_adapter(module, name: str) -> bool:
    return name in (getattr(module, "peft_config", None) or {})


def apply_loras(model, loras) -> None:
    """Load and activate LoRA files on `model` (a `LatentDiffusion`); see the module docstring."""
    require_extra("peft", "lora")
    entries = [(lora_file(p), _scale(s)) for p, s in loras]
    if model.pipeline_class is None or model.text_pipeline is None:
        raise ModelError(f"{model.source}: LoRA adapters are not supported for the {model.family} family")
    pipe = model.text_pipeline
    if not callable(getattr(pipe, "load_lora_weights", None)):
        raise ModelError(f"{model.source}: LoRA adapters are not supported for the {model.family} family "
                         f"({type(pipe).__name__} has no LoRA loader)")
    names = []
    for i, (path, scale) in enumerate(entries):
        name = f"diffaudit_lora_{len(model.loras) + i}"
        with quiet_libraries() as records:
            try:
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name,
                                       use_safetensors=True, local_files_only=True)
            except DiffauditError:
                raise
            except Exception as e:  # size mismatch (another architecture), unreadable file, unknown key format …
                raise ModelError(f"{path}: cannot load LoRA ({_reason(e)})") from e
        holders = [m for m in _adapter_holders(model) if _has_adapter(m, name)]
        if not holders:
            raise ModelError(f"{path}: LoRA matches no module of this {model.family} model "
                             f"(a LoRA for another architecture?)")
        unmatched = [r.getMessage() for r in records if "unexpected keys" in r.getMessage()]
        if unmatched:
            raise ModelError(f"{path}: part of the LoRA matches no module of this {model.family} model "
                             f"({unmatched[0][:160]})")
        names.append(name)
    with quiet_libraries():
        pipe.set_adapters(names, adapter_weights=[s for _, s in entries])
    for m in _adapter_holders(model):  # adapters are created in training mode, with gradients
        m.eval().requires_grad_(False)
    model.loras.extend((str(p), s) for p, s in entries)


def _scale(scale) -> float:
    try:
        return float(scale)
    except (TypeError, ValueError):
        raise InputError(f"LoRA scale must be a number, got {scale!r}") from None
