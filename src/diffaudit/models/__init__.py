"""Model adapters (docs/contracts.md §Models): `LatentDiffusion` over diffusers models and folders.

`diffaudit.models.tiny` builds tiny random models for tests and benchmarks.
"""
from .adapter import LatentDiffusion, parse_dtype

__all__ = ["LatentDiffusion", "parse_dtype"]
