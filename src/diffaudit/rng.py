"""Randomness keyed by (run seed, sample id, purpose), never by batch position.

Each sample gets its own torch.Generator, so batch size, order, chunking and sharding do not
change any random draw (the stacked-generator idea of NVlabs' EDM).
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import torch


def derive_seed(seed: int, sample_id, purpose: str) -> int:
    """A 63-bit seed from (seed, sample_id, purpose); stable across runs and platforms."""
    key = f"{int(seed)}|{sample_id}|{purpose}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") & ((1 << 63) - 1)


def sample_generator(seed: int, sample_id, purpose: str) -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed(derive_seed(seed, sample_id, purpose))
    return g


def randn_per_sample(
    shape: Sequence[int],
    sample_ids: Sequence,
    seed: int,
    purpose: str,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Stack of N(0, I) draws of `shape` (per sample), one generator per sample id.

    Drawn on the CPU in float64 and cast, so results do not depend on the device either.
    """
    out = [
        torch.randn(tuple(shape), generator=sample_generator(seed, sid, purpose), dtype=torch.float64)
        for sid in sample_ids
    ]
    return torch.stack(out).to(device=device, dtype=dtype)


def rand_per_sample(
    shape: Sequence[int], sample_ids: Sequence, seed: int, purpose: str, device="cpu"
) -> torch.Tensor:
    """Stack of U[0, 1) draws of `shape` per sample id (float64, for ranking/permutations)."""
    out = [
        torch.rand(tuple(shape), generator=sample_generator(seed, sid, purpose), dtype=torch.float64)
        for sid in sample_ids
    ]
    return torch.stack(out).to(device=device)
