"""Plumbing shared by the attack modules and the sweep: the checked model call and the checks of
(z, t, cond). The diffusion arithmetic itself lives in :mod:`diffaudit.diffusion`.

A model is any object with ``eps(z_t, t, cond=None)`` (t a LongTensor [N]) and
``alphas_cumprod`` (1-D, length T); see docs/contracts.md.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .._checks import check_batched, check_finite
from ..diffusion import VPSchedule, check_timesteps, vp_schedule
from ..errors import InputError, ModelError

__all__ = ["model_eps", "index_cond", "check_cond", "prepare", "check_interval", "residual_x0"]


class _Names:
    """Sample names computed only for the rows a NaN report shows."""

    def __init__(self, fn: Callable[[int], object]):
        self.fn = fn

    def __getitem__(self, i: int):
        return self.fn(i)


def model_eps(model, x: torch.Tensor, t: torch.Tensor, cond, names: Callable[[int], object] | None = None) -> torch.Tensor:
    """One model call, checked: a tensor shaped like x, in x's dtype, finite (NonFiniteError names
    the samples via ``names(row)``, else by row)."""
    out = model.eps(x, t) if cond is None else model.eps(x, t, cond)
    if not isinstance(out, torch.Tensor) or out.shape != x.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ModelError(f"model.eps returned {got}, expected a tensor of shape {tuple(x.shape)}")
    out = out.to(x.dtype)
    return check_finite(out, "model.eps", _Names(names) if names is not None else None)


def index_cond(cond, idx: torch.Tensor, n: int):
    """Rows idx of a batch-first condition (None passes through)."""
    if cond is None or idx.numel() == n:
        return cond
    if not isinstance(cond, torch.Tensor):
        raise InputError("cond must be a batch-first tensor when samples are processed in subsets")
    return cond[idx.to(cond.device)]


def check_cond(cond, n: int) -> None:
    if isinstance(cond, torch.Tensor) and (cond.dim() == 0 or cond.shape[0] != n):
        raise InputError(f"cond must be batch-first with {n} rows, got shape {tuple(cond.shape)}")


def check_interval(interval) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise InputError(f"interval must be a positive int, got {interval!r}")
    return interval


def prepare(model, z: torch.Tensor, t, cond, margin: int = 0) -> tuple[VPSchedule, torch.Tensor]:
    """Check the inputs of a single-call attack → (schedule, t as LongTensor [N])."""
    check_batched(z, "z")
    check_cond(cond, z.shape[0])
    s = vp_schedule(model, z.device)
    return s, check_timesteps(t, z.shape[0], s.T, z.device, margin)


def residual_x0(alphas_cumprod, z: torch.Tensor, vector: torch.Tensor, t: int) -> torch.Tensor:
    """Predicted clean latent of a noise-residual vector v = ε − ε̂(z_t(ε), t) (Loss, PIA):
    x̂₀ = (z_t − √(1−ᾱ_t) ε̂)/√ᾱ_t = z + c·v with c = √(1−ᾱ_t)/√ᾱ_t (arXiv 2511.20592 App. F)."""
    a = alphas_cumprod[t].double().item()
    c = math.sqrt(1 - a) / math.sqrt(a)
    return z + c * vector.to(z.dtype)


def keyed_noise(z: torch.Tensor, sample_ids, seed: int, attack: str, purpose: Callable[..., str]) -> Callable:
    """noise(*key) → N(0, I) draws shaped like z, one generator per sample keyed by
    (seed, sample id, purpose(*key)) (docs/architecture.md: batching changes no number)."""
    if sample_ids is None:
        raise InputError(f"{attack} needs sample_ids (noise keyed by sample id) or noise_fn")
    if len(sample_ids) != z.shape[0]:
        raise InputError(f"sample_ids has {len(sample_ids)} entries for {z.shape[0]} samples")
    from ..rng import randn_per_sample

    ids = list(sample_ids)

    def noise(*key):
        return randn_per_sample(z.shape[1:], ids, seed, purpose(*key), dtype=z.dtype, device=z.device)

    return noise
