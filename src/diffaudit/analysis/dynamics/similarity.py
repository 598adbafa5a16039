"""Memorization severity: similarity of generated images to the training image (arXiv 2509.25705 Sec. 3).

Kim et al. measure it with SSCD copy-detection embeddings (a prompt counts as memorized at
similarity ≥ 0.75). diffaudit accepts any user-supplied local embedding model (a callable, or
an SSCD-style TorchScript file via `torchscript_embedder`) and otherwise falls back to plain
cosine similarity in latent space (`space="latent"`) or of the decoded pixels (`"pixel"`).
The fallbacks are not calibrated like SSCD: compare prompts with each other, not with 0.75.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from ...errors import InputError, ModelError

SPACES = ("latent", "pixel", "embedding")


def _cos_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1, eps=1e-12)


def _images(model, z: torch.Tensor, batch: int = 8) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.decode(z[i : i + batch]).float().cpu() for i in range(0, z.shape[0], batch)])


def severity(model, finals: torch.Tensor, z_x: torch.Tensor, space: str = "latent",
             embedder: Callable | None = None, image_x: torch.Tensor | None = None) -> dict:
    """Similarity of each seed's final latent (decoded if needed) to the training image.

    finals: [N, *latent]; z_x: the training image's latent; image_x: its pixels [C, H, W]
    (used as is for "pixel"/"embedding" when given, else decode(z_x)). Returns per-seed
    similarities, their mean and max, and the mean pairwise similarity of the N generations.
    """
    if space not in SPACES:
        raise InputError(f"similarity space must be one of {SPACES}, got {space!r}")
    if space == "embedding" and embedder is None:
        raise InputError("similarity space 'embedding' needs an embedding model")
    zx = z_x.reshape(1, *finals.shape[1:]).to(finals)
    if space == "latent":
        a, b = finals, zx
    else:
        a = _images(model, finals)
        b = image_x.unsqueeze(0).float().cpu() if image_x is not None else _images(model, zx)
        if b.shape[1:] != a.shape[1:]:
            raise InputError(f"training image {tuple(b.shape[1:])} and generations {tuple(a.shape[1:])} differ in shape")
        if space == "embedding":
            with torch.no_grad():
                a, b = embedder(a), embedder(b)
    sims = _cos_rows(a, b.expand_as(a))
    n = a.shape[0]
    iu = torch.triu_indices(n, n, offset=1)
    pair = _cos_rows(a[iu[0]], a[iu[1]]).mean() if n > 1 else torch.tensor(float("nan"))
    return {"per_seed": sims, "mean": float(sims.mean()), "max": float(sims.max()), "pairwise": float(pair)}


def torchscript_embedder(path, size: int = 288, device="cpu") -> Callable:
    """An SSCD-style embedding model from a local TorchScript file (e.g. SSCD's
    `sscd_disc_mixup.torchscript.pt`): images in [-1, 1] are resized to `size`², normalised with
    the ImageNet mean/std and embedded; rows are L2-normalised. Nothing is downloaded."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: embedding model not found")
    try:
        net = torch.jit.load(str(path), map_location=device).eval()
    except Exception as e:  # noqa: BLE001 - any load failure is a bad file for the user
        raise ModelError(f"{path}: not a TorchScript model ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
    mean = torch.tensor([0.485, 0.456, 0.406], device=device).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=device).view(1, 3, 1, 1)

    def embed(x: torch.Tensor) -> torch.Tensor:
        x = (x.to(device).float() + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        e = net((x - mean) / std).float()
        return torch.nn.functional.normalize(e.flatten(1), dim=1).cpu()

    return embed
