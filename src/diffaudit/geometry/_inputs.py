"""Argument checks, per-sample random draws and chunk sizes shared by the geometry estimators.

Randomness (docs/contracts.md): `generator` is None (torch's global RNG), one `torch.Generator`,
or a list with one generator per sample (see `diffaudit.rng`). Every draw is made per sample, in
sample order, with the sample's generator, so results do not depend on batch or chunk size; with
a list of generators they do not depend on which other samples share the batch either.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .._checks import check_batched
from ..errors import InputError

# Decoder inputs per call when the caller does not say: sized by the decoder's output (its
# activations scale with it), capped so a tiny decoder does not build huge graphs on a CPU.
OUTPUT_ELEMS_PER_CALL = 2**20
MAX_ITEMS_PER_CALL = 256
# Per-chunk workspace for the m×ℓ sketches of the randomized SVD (elements).
WORKSPACE_ELEMS = 2**27

GeneratorArg = torch.Generator | Sequence[torch.Generator | None] | None


def check_latent(z) -> torch.Tensor:
    """Batch-first float32/float64 latent with at least one non-batch dim (docs/contracts.md)."""
    check_batched(z, "z", min_dim=2)
    if z.dtype not in (torch.float32, torch.float64):
        raise InputError(f"z must be float32 or float64 for the decoder geometry, got {z.dtype}")
    if z[0].numel() == 0:
        raise InputError(f"z has no latent dimensions (shape {tuple(z.shape)})")
    return z


def check_positive_int(value, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise InputError(f"{name} must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def per_sample_generators(generator: GeneratorArg, n: int) -> list:
    """One entry per sample: that sample's generator (shared object for a single generator)."""
    if generator is None or isinstance(generator, torch.Generator):
        return [generator] * n
    if isinstance(generator, (list, tuple)):
        if len(generator) != n:
            raise InputError(f"generator: got {len(generator)} generators for {n} samples (need one per sample)")
        for g in generator:
            if g is not None and not isinstance(g, torch.Generator):
                raise InputError(f"generator list must hold torch.Generator objects, got {type(g).__name__}")
        return list(generator)
    raise InputError(f"generator must be None, a torch.Generator or a list of them, got {type(generator).__name__}")


def draw(gens: list, shape: Sequence[int], like: torch.Tensor, kind: str = "gaussian") -> torch.Tensor:
    """Stack of per-sample draws of `shape`, one call per sample on that sample's generator.

    Drawn on the generator's device in `like`'s dtype (float32 or float64), then moved to
    `like`'s device, so the same generator gives the same numbers on CPU and GPU runs.
    """
    out = []
    for g in gens:
        dev = g.device if g is not None else torch.device("cpu")
        if kind == "gaussian":
            x = torch.randn(tuple(shape), generator=g, dtype=like.dtype, device=dev)
        elif kind == "rademacher":
            x = torch.randint(0, 2, tuple(shape), generator=g, device=dev).to(like.dtype).mul_(2).sub_(1)
        else:  # pragma: no cover - callers pass checked values
            raise InputError(f"unknown probe distribution {kind!r}")
        out.append(x)
    return torch.stack(out).to(like.device)


def items_per_call(max_batch, out_numel: int) -> int:
    """Decoder inputs per call: the caller's `max_batch`, else a budget on output elements."""
    if max_batch is not None:
        return check_positive_int(max_batch, "max_batch")
    return max(1, min(MAX_ITEMS_PER_CALL, OUTPUT_ELEMS_PER_CALL // max(1, out_numel)))


def default_fd_step(dtype: torch.dtype) -> float:
    """Central-difference step ≈ eps^(1/3): balances O(h²) truncation and O(eps/h) rounding."""
    return float(torch.finfo(dtype).eps) ** (1.0 / 3.0)
