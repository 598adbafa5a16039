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

from ..._checks import check_batched, check_finite
from ...errors import InputError
from ..adapter import LatentDiffusion
from ..library_logs import quiet_libraries


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

    def velocity(self, x_sigma: torch.Tensor, sigma, cond=None, ids=None) -> torch.Tensor:
        """v̂(x_σ, σ, c) in float32, in flow coordinates (x_σ = (1−σ)·x₀ + σ·ε), at any σ in [0, 1]
        (a float or one per row): the network as the family's pipeline calls it, for a sampler on
        the scheduler's own σ grid (the flow Euler ODE of the dynamics, docs/models.md §Dynamics)."""
        check_batched(x_sigma, "x_sigma", min_dim=4)
        n = x_sigma.shape[0]
        if tuple(x_sigma.shape[1:]) != self.latent_shape:
            raise InputError(f"x_sigma has shape {tuple(x_sigma.shape[1:])}, the denoiser expects {self.latent_shape}")
        sigma = torch.as_tensor(sigma, dtype=torch.float64).to(self.device).reshape(-1).expand(n)
        if not ((sigma >= 0) & (sigma <= 1)).all():
            raise InputError("sigma must lie in [0, 1]")
        cond = self._condition(cond, n)
        with torch.no_grad():
            v = self._velocity(x_sigma.to(self.device, self.dtype), sigma, cond)
        check_finite(v, "denoiser", ids if ids is not None else [f"batch row {i}" for i in range(n)])
        return v.to(x_sigma.device)

    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """The σ a `steps`-step sampler visits, σ_0 = 1 … σ_steps = 0 (float64 [steps + 1]), as the
        family's diffusers pipeline sets its scheduler (shift and dynamic shifting included); the
        grid of `FlowMatchEulerDiscreteScheduler` for this scheduler's config."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        with quiet_libraries():
            sched = FlowMatchEulerDiscreteScheduler.from_config(self.scheduler.config)
        sched.set_timesteps(**self._sampling_kwargs(int(steps)))
        return sched.sigmas.double().cpu()

    def _sampling_kwargs(self, steps: int) -> dict:
        """`set_timesteps` arguments, as `StableDiffusion3Pipeline.__call__` passes them (μ from the
        token count where the config uses dynamic shifting)."""
        cfg = self.scheduler.config
        if not cfg.get("use_dynamic_shifting"):
            return {"num_inference_steps": steps}
        from diffusers.pipelines.stable_diffusion_3.pipeline_stable_diffusion_3 import calculate_shift

        p = int(self.denoiser.config.get("patch_size", 1))
        _, h, w = self.latent_shape
        mu = calculate_shift((h // p) * (w // p), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.16))
        return {"num_inference_steps": steps, "mu": mu}


class PooledTextCondition:
    """Captions packed as [sequence embeddings, pooled projection] in one tensor (SD3, FLUX): the
    split and the shape check their adapters share."""

    def _split(self, cond):
        from ..text import unpack

        cfg = self.denoiser.config
        return unpack(cond, [(int(cfg["pooled_projection_dim"]),)], (int(cfg["joint_attention_dim"]),))

    def _check_embedding(self, cond, n: int) -> None:
        self._split(cond)
        if cond.shape[0] != n:
            raise InputError(f"the condition has {cond.shape[0]} rows for {n} latents")
