"""The prompts file of `diffaudit dynamics` and the paired training images.

Format (UTF-8; blank lines and lines starting with `#` are skipped). Either JSON lines:

    {"prompt": "a photo of X", "image": "x.png", "memorized": true, "id": "p7"}

(`prompt` required; `image` — a file name under --images, or absolute —, `memorized` — a
label used only to report AUC/TPR of the detectors — and `id` optional), or plain text lines:

    a photo of X<TAB>x.png<TAB>1

(caption, then optionally the image file name, then optionally a 0/1 memorized label).
Ids default to the 0-based line index among prompts ("p0", "p1", ...); they name the
per-prompt result files, so they must be unique and file-name safe.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...errors import DataError, InputError

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")


@dataclass
class PromptItem:
    id: str
    prompt: str
    image: str | None = None
    memorized: bool | None = None


def _label(v, where: str) -> bool | None:
    if v is None or v == "":
        return None
    if isinstance(v, bool):
        return v
    s = str(v).strip().lower()
    if s in ("1", "true", "yes", "memorized"):
        return True
    if s in ("0", "false", "no", "not", "non-memorized"):
        return False
    raise DataError(f"{where}: memorized label must be 0/1 or true/false, got {v!r}")


def read_prompts(path) -> list[PromptItem]:
    """Parse a prompts file (see the module doc) into `PromptItem`s."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: prompts file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from None
    items: list[PromptItem] = []
    for no, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{no}"
        if line.lstrip().startswith("{"):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{where}: invalid JSON ({e.msg})") from None
            unknown = set(rec) - {"prompt", "image", "memorized", "id"}
            if unknown:
                raise DataError(f"{where}: unknown keys {sorted(unknown)} (allowed: prompt, image, memorized, id)")
            if not isinstance(rec.get("prompt"), str) or not rec["prompt"].strip():
                raise DataError(f"{where}: 'prompt' must be a non-empty string")
            pid = str(rec.get("id", f"p{len(items)}"))
            items.append(PromptItem(pid, rec["prompt"], rec.get("image") or None, _label(rec.get("memorized"), where)))
        else:
            cols = line.split("\t")
            if len(cols) > 3:
                raise DataError(f"{where}: expected at most 3 tab-separated columns (caption, image, label)")
            img = cols[1].strip() if len(cols) > 1 and cols[1].strip() else None
            lab = _label(cols[2].strip(), where) if len(cols) > 2 else None
            items.append(PromptItem(f"p{len(items)}", cols[0].strip(), img, lab))
        if not _SAFE_ID.match(items[-1].id):
            raise DataError(f"{where}: id {items[-1].id!r} must be 1-100 characters of A-Z a-z 0-9 _ . -")
    if not items:
        raise DataError(f"{path}: no prompts")
    ids = [it.id for it in items]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise DataError(f"{path}: duplicate ids {dup[:5]}")
    return items


def load_image(path, shape: tuple[int, int, int]) -> torch.Tensor:
    """One image file → float32 [C, H, W] in [-1, 1], resized (bicubic) to `shape`'s H×W.

    16-bit greyscale PNGs are rescaled from 0..65535 (Pillow's convert would clip them at 255);
    decompression bombs and unreadable files raise DataError naming the file.
    """
    from PIL import Image

    path = Path(path)
    c, h, w = shape
    if c not in (1, 3):
        raise InputError(f"images with {c} channels cannot be loaded from {path.name}")
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                a = np.asarray(im, dtype=np.float64)
                a = a / (65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0)
                im = Image.fromarray((np.clip(a, 0, 1) * 255).round().astype(np.uint8), mode="L")
            im = im.convert("L" if c == 1 else "RGB")
            if im.size != (w, h):
                im = im.resize((w, h), Image.BICUBIC)
            a = np.asarray(im, dtype=np.float32) / 255.0
    except FileNotFoundError:
        raise DataError(f"{path}: image not found") from None
    except Image.DecompressionBombError:
        raise DataError(f"{path}: image too large (Pillow's decompression-bomb limit)") from None
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None
    t = torch.from_numpy(a.copy())
    t = t.unsqueeze(0) if t.dim() == 2 else t.permute(2, 0, 1)
    return t * 2 - 1


def resolve_image(item: PromptItem, images_dir) -> Path | None:
    """The image file of a prompt: absolute, or relative to `images_dir` (required then)."""
    if item.image is None:
        return None
    p = Path(item.image)
    if not p.is_absolute():
        if images_dir is None:
            raise InputError(f"prompt {item.id} names image {item.image!r} but no --images folder was given")
        p = Path(images_dir) / p
    if not p.is_file():
        raise DataError(f"{p}: image of prompt {item.id} not found")
    return p
