"""PixArt-α / PixArt-Σ (arXiv:2310.00426, arXiv:2403.04692): `PixArtTransformer2DModel` with a
T5 text encoder and cross-attention under the prompt's attention mask.

Prompts go through the pipeline's `encode_prompt` (its default max_sequence_length: 120 for α,
300 for Σ; no caption cleaning). The condition is one tensor [N, L, D + 1]: the T5 embeddings
with the attention mask as the last channel. As the pipelines call it:
`transformer(x, encoder_hidden_states, encoder_attention_mask, timestep=t, added_cond_kwargs)`
at the integer timestep; learned σ: ε̂ is the first C channels. PixArt-α at sample_size 128
(1024 px) adds resolution / aspect-ratio micro-conditions from the image size, as
`PixArtAlphaPipeline` does; the null condition is the pipeline's negative (empty) prompt.
"""
from __future__ import annotations

import torch

from ...errors import InputError
from ..adapter import LatentDiffusion
from ..text import encode_prompt


class PixArtAlphaModel(LatentDiffusion):
    family = "pixart-alpha"
    denoiser_folder = "transformer"
    pipeline_class = "PixArtAlphaPipeline"
    micro_conditions_at = 128  # sample_size at which PixArtAlphaPipeline passes resolution and aspect ratio

    def _resolve_conditioning(self) -> str:
        return "caption" if self.text_encoder is not None else "embedding"

    def _prompts(self, captions, negative: bool) -> torch.Tensor:
        out = encode_prompt(self.text_pipeline, prompt=list(captions), do_classifier_free_guidance=negative,
                            num_images_per_prompt=1, device=self.device, clean_caption=False)
        embeds, mask = (out[2], out[3]) if negative else (out[0], out[1])
        return torch.cat([embeds.float(), mask.float()[..., None]], dim=-1)

    def _encode_captions(self, captions):
        return self._prompts(captions, negative=False)

    def _null_caption_cond(self, n: int):
        return self._prompts([""] * n, negative=True)

    def _check_embedding(self, cond, n: int) -> None:
        d = int(self.denoiser.config["caption_channels"])
        if not (isinstance(cond, torch.Tensor) and cond.is_floating_point() and cond.dim() == 3
                and cond.shape[0] == n and cond.shape[2] == d + 1):
            raise InputError(f"PixArt condition must be [N={n}, L, {d}+1] (T5 embeddings and the attention mask) "
                             f"from encode_cond(captions)")

    def _added_cond(self, n: int) -> dict:
        if self.micro_conditions_at is None or self.denoiser.config.get("sample_size") != self.micro_conditions_at:
            return {"resolution": None, "aspect_ratio": None}
        h, w = self.image_shape[1:]
        return {"resolution": torch.tensor([[h, w]], dtype=self.dtype, device=self.device).repeat(n, 1),
                "aspect_ratio": torch.tensor([[h / w]], dtype=self.dtype, device=self.device).repeat(n, 1)}

    def _predict(self, x, t, cond):
        embeds, mask = cond[..., :-1], cond[..., -1].round().long()
        return self.denoiser(x, encoder_hidden_states=embeds.to(self.device, self.dtype), encoder_attention_mask=mask,
                             timestep=t, added_cond_kwargs=self._added_cond(x.shape[0])).sample.float()


class PixArtSigmaModel(PixArtAlphaModel):
    family = "pixart-sigma"
    pipeline_class = "PixArtSigmaPipeline"
    micro_conditions_at = None  # PixArtSigmaPipeline never passes them
