"""Stable Diffusion 3 / 3.5 (arXiv:2403.03206): `SD3Transformer2DModel`, rectified flow.

Prompts go through `StableDiffusion3Pipeline.encode_prompt` (CLIP-L + CLIP-G penultimate states
padded to the T5 width and stacked with T5's, pooled CLIP projections concatenated); the
condition is one packed tensor [N, L·D + P] (`models.text.pack`). The network is called as the
pipeline does, `transformer(hidden_states=x_σ, timestep=σ·T, encoder_hidden_states,
pooled_projections)`, and presented as its VP-equivalent by `FlowMatchingModel`
(docs/models.md §Flow matching). The 16-channel VAE's scaling and shift factors are applied by
the first stage (z = s·(E(x) − shift)). The null condition is the pipeline's negative (empty) prompt.
"""
from __future__ import annotations

import torch

from ..text import encode_prompt, pack
from .flow import FlowMatchingModel, PooledTextCondition


class SD3Model(PooledTextCondition, FlowMatchingModel):
    family = "sd3"
    pipeline_class = "StableDiffusion3Pipeline"

    def _resolve_conditioning(self) -> str:
        return "caption" if self.text_encoder is not None or self.text_encoder_2 is not None else "embedding"

    def _prompts(self, captions, negative: bool) -> torch.Tensor:
        out = encode_prompt(self.text_pipeline, prompt=list(captions), prompt_2=None, prompt_3=None, device=self.device,
                            num_images_per_prompt=1, do_classifier_free_guidance=negative)
        embeds, pooled = (out[1], out[3]) if negative else (out[0], out[2])
        return pack([embeds, pooled])

    def _encode_captions(self, captions):
        return self._prompts(captions, negative=False)

    def _null_caption_cond(self, n: int):
        return self._prompts([""] * n, negative=True)

    def _velocity(self, x_sigma, sigma, cond):
        embeds, pooled = (c.to(self.device, self.dtype) for c in self._split(cond))
        return self.denoiser(hidden_states=x_sigma, timestep=self._net_timestep(sigma), encoder_hidden_states=embeds,
                             pooled_projections=pooled, return_dict=False)[0].float()
