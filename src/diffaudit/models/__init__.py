"""Model adapters (docs/models.md): `LatentDiffusion` over diffusers models and folders.

`LatentDiffusion(...)` / `LatentDiffusion.from_pretrained(dir)` return the subclass of the
model's family (`models.registry.FAMILIES`); every family satisfies `DiffusionModel`, the
contract the core uses. `diffaudit.models.tiny` builds tiny random models for tests.
"""
from .adapter import LatentDiffusion
from .contract import DiffusionModel
from .placement import parse_dtype

__all__ = ["DiffusionModel", "LatentDiffusion", "parse_dtype"]
