"""PIA: proximal initialization, ε₀ − ε̂(√ᾱ_t z + √(1−ᾱ_t) ε₀, t) with ε₀ = ε̂(z, 0)
(Kong et al., ICLR 2024, arXiv 2305.18355; ℓ4 norm as in arXiv 2511.20592 §4.3; App. F Eq. 12).

The model's own t = 0 output replaces the random noise of the Loss attack, so one extra query
per sample (shared across every t) makes the statistic deterministic.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import register_attack
from .common import model_eps, prepare, residual_x0
from .jobs import Emit, Request, eps0_request

__all__ = ["pia"]


@torch.no_grad()
def pia(model, z: torch.Tensor, t, cond=None, eps0: torch.Tensor | None = None) -> torch.Tensor:
    """PIA vector, shaped like z (statistic: Σ|v|⁴).

    Pass a precomputed ``eps0`` to share ε̂(z, 0) across timesteps.
    """
    s, tt = prepare(model, z, t, cond)
    if eps0 is None:
        eps0 = model_eps(model, z, torch.zeros_like(tt), cond)
    elif not isinstance(eps0, torch.Tensor) or eps0.shape != z.shape:
        raise InputError(f"eps0 must be a tensor shaped like z {tuple(z.shape)}")
    return eps0 - model_eps(model, s.noisy(z, tt, eps0.to(z.dtype)), tt, cond)


def proximal_job(name: str, transform=None):
    """Sweep job of a proximal-initialisation attack: the shared ε̂(z, 0) (optionally transformed,
    e.g. PIA-N's normalisation), then one model row per sample and t."""
    def job(ctx, ts):
        def one(t):
            eps0 = yield eps0_request(ctx)
            if transform is not None:
                eps0 = transform(eps0)
            tt = ctx.full(t)
            e = yield Request(ctx.sched.noisy(ctx.z, tt, eps0), tt)
            yield Emit(name, t, eps0 - e)
        return (one(t) for t in ts)
    return job


pia_job = proximal_job("pia")


register_attack(
    "pia", pia, 4, display_name="PIA", job=pia_job, first_t=1, needs=("cond",), predicted_x0=residual_x0,
    reference="Kong et al. 2024, arXiv 2305.18355",
    description="ε₀ − ε̂(z_t(ε₀), t) with ε₀ = ε̂(z, 0)", calls_per_t=1,
)
