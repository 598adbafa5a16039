"""Stable Diffusion XL (arXiv:2307.01952): a `UNet2DConditionModel` with two CLIP text encoders
and micro-conditioning (`addition_embed_type = "text_time"`).

Prompts go through `StableDiffusionXLPipeline.encode_prompt`: the concatenated penultimate
hidden states of both encoders (`encoder_hidden_states`) and the second encoder's pooled
projection (`added_cond_kwargs["text_embeds"]`). The size ids (`added_cond_kwargs["time_ids"]`)
come from the pipeline's own `_get_add_time_ids(original_size, crops_coords_top_left,
target_size)`; by default original = target = the audited image size (`image_shape`), crop
(0, 0), as the pipeline uses for an image generated at that size. Set `original_size`,
`crops_coords_top_left` or `target_size` on the model to audit other micro-conditions.

The condition is one packed tensor [N, L·D + P + 6] (`models.text.pack`): embeddings, pooled
embeddings, size ids. The null condition is the pipeline's negative prompt: zeros when the
pipeline's `force_zeros_for_empty_prompt` is set (the SDXL base default), else the empty prompt.
"""
from __future__ import annotations

import torch

from ...errors import InputError
from ..text import encode_prompt, pack, unpack
from .unet import StableDiffusionModel


class SDXLModel(StableDiffusionModel):
    family = "sdxl"
    pipeline_class = "StableDiffusionXLPipeline"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        h, w = self.image_shape[1:]
        self.original_size, self.target_size, self.crops_coords_top_left = (h, w), (h, w), (0, 0)

    def _resolve_conditioning(self) -> str:
        return "caption" if self.text_encoder_2 is not None else "embedding"

    @property
    def _pooled_dim(self) -> int:
        return int(self.denoiser.config["projection_class_embeddings_input_dim"]
                   - 6 * self.denoiser.config["addition_time_embed_dim"])

    def _time_ids(self, n: int) -> torch.Tensor:
        pipe = self.text_pipeline
        ids = pipe._get_add_time_ids(tuple(self.original_size), tuple(self.crops_coords_top_left),
                                     tuple(self.target_size), dtype=torch.float32,
                                     text_encoder_projection_dim=self.text_encoder_2.config.projection_dim)
        return ids.to(self.device).expand(n, -1)

    def _prompts(self, captions, negative: bool) -> torch.Tensor:
        out = encode_prompt(self.text_pipeline, prompt=list(captions), device=self.device, num_images_per_prompt=1,
                            do_classifier_free_guidance=negative)
        embeds, pooled = (out[1], out[3]) if negative else (out[0], out[2])
        return pack([embeds, pooled, self._time_ids(len(captions))])

    def _encode_captions(self, captions):
        return self._prompts(captions, negative=False)

    def _null_caption_cond(self, n: int):
        return self._prompts([""] * n, negative=True)

    def _check_embedding(self, cond, n: int) -> None:
        self._split(cond)
        if cond.shape[0] != n:
            raise InputError(f"the condition has {cond.shape[0]} rows for {n} latents")

    def _split(self, cond):
        return unpack(cond, [(self._pooled_dim,), (6,)], (int(self.denoiser.config["cross_attention_dim"]),))

    def _predict(self, x, t, cond):
        embeds, pooled, time_ids = self._split(cond)
        # size ids stay float32: integers like 1000 are not exact in bfloat16 (the embedding is float32 anyway)
        added = {"text_embeds": pooled.to(self.device, self.dtype), "time_ids": time_ids.to(self.device)}
        return self.denoiser(x, t, encoder_hidden_states=embeds.to(self.device, self.dtype),
                             added_cond_kwargs=added).sample.float()
