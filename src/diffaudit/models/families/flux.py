"""FLUX.1 (Black Forest Labs): `FluxTransformer2DModel`, rectified flow on packed latents.

The core sees unpacked latents [N, C, H, W] (the VAE's, so the geometry is the decoder's); the
adapter packs 2×2 patches into tokens with the pipeline's own `FluxPipeline._pack_latents`,
builds the image ids with `_prepare_latent_image_ids` and unpacks the velocity with
`_unpack_latents`. Prompts go through `FluxPipeline.encode_prompt` (T5 states, CLIP pooled
output); the condition is one packed tensor [N, L·D + P]; the text ids are zeros [L, 3], as
encode_prompt makes them. The timestep is σ·T/1000 (= σ: the pipeline divides its timesteps by
1000) in the denoiser's dtype, as the pipeline passes it; with `guidance_embeds` the guidance
value is `guidance` (FluxPipeline's default 3.5). The null condition is the empty prompt.
"""
from __future__ import annotations

import torch

from ...errors import ModelError
from ..text import encode_prompt, pack
from .flow import FlowMatchingModel, PooledTextCondition


class FluxModel(PooledTextCondition, FlowMatchingModel):
    family = "flux"
    pipeline_class = "FluxPipeline"
    guidance = 3.5  # FluxPipeline.__call__'s default guidance_scale

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        c, h, w = self.latent_shape
        if h % 2 or w % 2:
            raise ModelError(f"{self._where('vae')}: FLUX packs 2×2 latent patches; latent size {h}×{w} is odd")

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        c = int(self.denoiser.config["in_channels"]) // 4
        size = self.vae.config.get("sample_size", 0) // self.downsampling if self.vae is not None else 0
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return (c, int(h), int(w))

    def _resolve_conditioning(self) -> str:
        return "caption" if self.text_encoder_2 is not None else "embedding"

    def _encode_captions(self, captions):
        embeds, pooled, _text_ids = encode_prompt(self.text_pipeline, prompt=list(captions), prompt_2=None,
                                                  device=self.device, num_images_per_prompt=1)
        return pack([embeds, pooled])

    def _sampling_kwargs(self, steps: int) -> dict:
        """As `FluxPipeline.__call__`: σ = linspace(1, 1/steps) (unless `use_flow_sigmas`), μ from the
        packed token count."""
        import numpy as np
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = self.scheduler.config
        _, h, w = self.latent_shape
        mu = calculate_shift((h // 2) * (w // 2), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        if cfg.get("use_flow_sigmas"):
            return {"num_inference_steps": steps, "mu": mu}
        return {"sigmas": np.linspace(1.0, 1 / steps, steps), "mu": mu}

    def _net_timestep(self, sigma):
        return (sigma * self.num_train_timesteps / 1000).to(self.device, self.dtype)

    def _velocity(self, x_sigma, sigma, cond):
        from diffusers import FluxPipeline

        n, c, h, w = x_sigma.shape
        embeds, pooled = (p.to(self.device, self.dtype) for p in self._split(cond))
        tokens = FluxPipeline._pack_latents(x_sigma, n, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(n, h // 2, w // 2, self.device, self.dtype)
        txt_ids = torch.zeros(embeds.shape[1], 3, device=self.device, dtype=self.dtype)
        guidance = None
        if self.denoiser.config.get("guidance_embeds"):
            guidance = torch.full((n,), float(self.guidance), device=self.device, dtype=torch.float32)
        out = self.denoiser(hidden_states=tokens, timestep=self._net_timestep(sigma), guidance=guidance,
                            pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=txt_ids,
                            img_ids=img_ids, return_dict=False)[0]
        f = self.downsampling
        return FluxPipeline._unpack_latents(out, h * f, w * f, f).float()
