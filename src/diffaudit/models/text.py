"""Prompts through the pipeline's own `encode_prompt` (no re-implemented text stacks).

A model loaded from a pipeline folder keeps its diffusers pipeline; one built from components
in memory gets one built here from the same module objects (so moving the adapter's modules
moves the pipeline's). Several families condition on more than one tensor (SDXL: embeddings,
pooled embeddings, size ids; PixArt: embeddings and the attention mask); the attacks take one
batch-first tensor, so `pack` flattens the parts into [N, F] and `unpack` splits them again.
"""
from __future__ import annotations

import inspect
from typing import Sequence

import torch

from ..errors import InputError, ModelError
from .library_logs import quiet_libraries

# text encoders without a usable model_max_length fall back to their position embeddings
_NO_LIMIT = 10_000


def build_pipeline(pipeline_class: str, components: dict):
    """A diffusers pipeline of class `pipeline_class` over existing modules (missing optional
    components as None; no safety checker)."""
    import diffusers

    with quiet_libraries():
        cls = getattr(diffusers, pipeline_class)
        kwargs = {}
        for k, p in inspect.signature(cls.__init__).parameters.items():
            if k == "self" or p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
                continue
            kwargs[k] = components[k] if k in components else (None if p.default is p.empty else p.default)
        for flag in ("requires_safety_checker", "add_watermarker"):
            if flag in kwargs:
                kwargs[flag] = False
        return cls(**kwargs)


def fix_tokenizer_limits(pairs) -> None:
    """Tokenizers written without a model_max_length pad to the text encoder's positions."""
    for tok, enc in pairs:
        if tok is None or enc is None:
            continue
        limit = getattr(tok, "model_max_length", None)
        if not limit or limit > _NO_LIMIT:
            positions = getattr(enc.config, "max_position_embeddings", None) or getattr(enc.config, "n_positions", None)
            if positions:
                tok.model_max_length = int(positions)


def encode_prompt(pipeline, **kwargs):
    """`pipeline.encode_prompt(**kwargs)` without gradients and without library output."""
    with torch.no_grad(), quiet_libraries():
        try:
            return pipeline.encode_prompt(**kwargs)
        except (ValueError, TypeError, RuntimeError) as e:
            raise ModelError(f"{type(pipeline).__name__}.encode_prompt failed: {type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}"[:300]) from e


def pack(parts: Sequence[torch.Tensor]) -> torch.Tensor:
    """Batch-first tensors → one float32 [N, F] tensor (rows concatenated)."""
    n = parts[0].shape[0]
    return torch.cat([p.reshape(n, -1).float() for p in parts], dim=1)


def unpack(cond: torch.Tensor, fixed: Sequence[tuple[int, ...]], first_tail: tuple[int, ...]) -> list[torch.Tensor]:
    """Inverse of `pack`: the first part has shape [N, L, *first_tail] with L free, the others
    the trailing shapes in `fixed`."""
    if not (isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.dim() == 2):
        raise InputError("this model's condition is one packed [N, F] tensor from encode_cond(captions)")
    n, f = cond.shape
    rest = sum(int(torch.tensor(s).prod()) if s else 1 for s in fixed)
    unit = int(torch.tensor(first_tail).prod()) if first_tail else 1
    if f <= rest or (f - rest) % unit:
        raise InputError(f"packed condition has {f} values per row, which does not fit this model's layout")
    out, start = [cond[:, : f - rest].reshape(n, -1, *first_tail)], f - rest
    for s in fixed:
        size = int(torch.tensor(s).prod()) if s else 1
        out.append(cond[:, start:start + size].reshape(n, *s))
        start += size
    return out
