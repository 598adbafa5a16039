"""SimA: the denoiser queried at the clean latent itself, ε̂(z, t) (Rao, Qu & Moyer 2025,
arXiv 2509.25003; as used in arXiv 2511.20592 §3.1, ℓ4 norm).

A member's ε̂(z, t) is small: the expected denoiser is a kernel-weighted local mean of nearby
training samples, so it points back at z itself when z was trained on.
"""
from __future__ import annotations

import torch

from .base import register_attack
from .common import model_eps, prepare
from .jobs import Emit, Request, eps0_request

__all__ = ["sima"]


@torch.no_grad()
def sima(model, z: torch.Tensor, t, cond=None) -> torch.Tensor:
    """SimA vector ε̂(z, t), shaped like z (statistic: Σ|v|⁴)."""
    _, tt = prepare(model, z, t, cond)
    return model_eps(model, z, tt, cond)


def sima_job(ctx, ts):
    """One model row per sample and t; t = 0 is the shared ε̂(z, 0)."""
    def one(t):
        req = eps0_request(ctx) if t == 0 else Request(ctx.z, ctx.full(t))
        yield Emit("sima", t, (yield req))
    return (one(t) for t in ts)


register_attack(
    "sima", sima, 4, display_name="SimA", job=sima_job, first_t=0, needs=("cond",),
    reference="Rao et al. 2025, arXiv 2509.25003; arXiv 2511.20592 §3.1",
    description="ε̂(z, t): the noise predicted at the clean latent", calls_per_t=1,
)
