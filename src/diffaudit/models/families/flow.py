"""Flow-matching (rectified-flow) models presented to the core as their VP-equivalent.

diffusers' `FlowMatchEulerDiscreteScheduler` convention (SD3, arXiv:2403.03206 §2; FLUX):
x_σ = (1−σ)·x₀ + σ·ε, and the network predicts v ≈ ε − x₀. With s(σ) = √((1−σ)² + σ²),

    x_vp = x_σ / s = √ᾱ·x₀ + √(1−ᾱ)·ε,   √ᾱ = (1−σ)/s,   √(1−ᾱ) = σ/s,

so a VP model with that ᾱ sees the same data. Its noise prediction is ε̂ = x_σ + (1−σ)·v̂
(from x_σ = (1−σ)x₀ + σε and v = ε − x₀: x_σ + (1−σ)v = ε). The grid is σ_t = t/T,
t = 0 … T−1 (`models.schedules`): t = 0 is the clean latent, t/T is the noise fraction σ.
`eps(z_vp, t)` converts z_vp → x_σ, queries the network at σ_t and converts v̂ → ε̂, so every
attack, mask and metric applies unchanged (docs/models.md §Flow matching).
"""
from __future__ import annotations

import torch

from ..adapter import LatentDiffusion


class FlowMatchingModel(LatentDiffusion):
    """The VP-equivalent of a velocity network `denoiser(x_σ, timestep)`.

    Families override `_velocity` (how the network is called) and `_net_timestep` (the
    timestep it is given for σ; by default σ·T, the scheduler's `timesteps`, as SD3's pipeline
    passes them). Used directly, `denoiser` is any module with a `config` holding
    `in_channels` and `sample_size` whose forward(x_σ, timestep) returns v̂.
    """

    family = "flow"
    schedule_kinds = ("flow",)
    denoiser_folder = "transformer"

    def _net_timestep(self, sigma: torch.Tensor) -> torch.Tensor:
        return (sigma * self.num_train_timesteps).to(self.device, torch.float32)

    def _velocity(self, x_sigma: torch.Tensor, sigma: torch.Tensor, cond) -> torch.Tensor:
        out = self.denoiser(x_sigma, self._net_timestep(sigma))
        return (out.sample if hasattr(out, "sample") else out).float()

    def _eps(self, z_t: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        sigma = self.schedule.sigma(t).to(self.device)  # float64 [N]
        s = ((1 - sigma) ** 2 + sigma ** 2).sqrt()
        view = (-1,) + (1,) * (z_t.dim() - 1)
        x_sigma = z_t * s.float().view(view)
        v = self._velocity(x_sigma.to(self.dtype), sigma, cond)
        return x_sigma + (1 - sigma).float().view(view) * v
