"""UNet families: `UNet2DModel` (pixel / latent / VQ, unconditional or class-conditional) and
`UNet2DConditionModel` with one CLIP text encoder (Stable Diffusion 1.x / 2.x, arXiv:2112.10752).

ε̂ is the UNet's output at the integer timestep t (v-prediction converted by the base class).
"""
from __future__ import annotations

import torch

from ..adapter import LatentDiffusion
from ..text import encode_prompt


class UNetModel(LatentDiffusion):
    """`UNet2DModel`: unconditional, or class labels through its class embedding."""

    family = "unet"

    def _resolve_conditioning(self) -> str:
        cfg = self.denoiser.config
        if cfg.get("num_class_embeds") is not None or cfg.get("class_embed_type") is not None:
            return "label"
        return "none"

    @property
    def num_classes(self):
        return self.denoiser.config.get("num_class_embeds")

    def _predict(self, x, t, cond):
        kw = {"class_labels": cond} if self.conditioning == "label" else {}
        return self.denoiser(x, t, **kw).sample.float()


class StableDiffusionModel(UNetModel):
    """`UNet2DConditionModel` + CLIP (`StableDiffusionPipeline.encode_prompt`); without a text
    encoder the condition is an embedding [N, L, D], or class labels for a class embedding."""

    family = "sd"
    pipeline_class = "StableDiffusionPipeline"

    def _resolve_conditioning(self) -> str:
        if self.text_encoder is not None:
            return "caption"
        if super()._resolve_conditioning() == "label":
            return "label"
        return "embedding"  # cross-attention without a text encoder: cond is a [N, L, D] tensor

    def _encode_captions(self, captions):
        embeds, _ = encode_prompt(self.text_pipeline, prompt=list(captions), device=self.device,
                                  num_images_per_prompt=1, do_classifier_free_guidance=False)
        return embeds.float()

    def _predict(self, x, t, cond):
        if self.conditioning == "label":  # class embedding only, no text: empty cross-attention context
            n = x.shape[0]
            ctx = torch.zeros(n, 1, self.denoiser.config["cross_attention_dim"], device=self.device, dtype=self.dtype)
            return self.denoiser(x, t, encoder_hidden_states=ctx, class_labels=cond).sample.float()
        return self.denoiser(x, t, encoder_hidden_states=cond.to(self.device, self.dtype)).sample.float()
