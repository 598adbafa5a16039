"""Loss ("naive") attack: the denoising loss at a noise draw, ε − ε̂(√ᾱ_t z + √(1−ᾱ_t) ε, t)
(Matsumoto, Miura & Yanai 2023, arXiv 2302.03262; Carlini et al. 2023, arXiv 2301.13188;
ℓ2 norm as in arXiv 2511.20592 §4.3).

The noise is drawn per sample and t from (seed, sample id, t) by :func:`loss_noise`, so it does not
depend on batching. Its decoded-image variant (arXiv 2511.20592 App. F) decodes the predicted
clean latent z + √(1−ᾱ_t)/√ᾱ_t · v.
"""
from __future__ import annotations

import torch

from ..errors import InputError
from .base import register_attack
from .common import model_eps, prepare, residual_x0
from .jobs import Emit, Request

__all__ = ["loss", "loss_noise"]


@torch.no_grad()
def loss(model, z: torch.Tensor, t, noise: torch.Tensor, cond=None) -> torch.Tensor:
    """Loss vector noise − ε̂(√ᾱ_t z + √(1−ᾱ_t) noise, t), shaped like z (statistic: Σ|v|²).

    For batch-independent noise draw it with :func:`loss_noise` (keyed by sample id).
    """
    s, tt = prepare(model, z, t, cond)
    if not isinstance(noise, torch.Tensor) or noise.shape != z.shape:
        got = tuple(noise.shape) if isinstance(noise, torch.Tensor) else type(noise).__name__
        raise InputError(f"noise must be a tensor shaped like z {tuple(z.shape)}, got {got}")
    noise = noise.to(device=z.device, dtype=z.dtype)
    return noise - model_eps(model, s.noisy(z, tt, noise), tt, cond)


def loss_noise(shape, sample_ids, seed: int, t: int, dtype=torch.float32, device="cpu") -> torch.Tensor:
    """Loss-attack noise for timestep t, keyed by sample id (batch-independent)."""
    from ..rng import randn_per_sample

    return randn_per_sample(tuple(shape), list(sample_ids), seed, f"loss/t={int(t)}", dtype=dtype, device=device)


def loss_job(ctx, ts):
    """One model row per sample and t, at the keyed noise."""
    def one(t):
        noise = ctx.noise(t)
        tt = ctx.full(t)
        e = yield Request(ctx.sched.noisy(ctx.z, tt, noise), tt)
        yield Emit("loss", t, noise - e)
    return (one(t) for t in ts)


register_attack(
    "loss", loss, 2, display_name="Loss", job=loss_job, first_t=1, needs=("cond", "noise"),
    predicted_x0=residual_x0,
    reference="Matsumoto et al. 2023, arXiv 2302.03262; Carlini et al. 2023, arXiv 2301.13188",
    description="ε − ε̂(z_t(ε), t): the denoising loss at a keyed noise draw", calls_per_t=1,
)
