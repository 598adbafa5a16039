"""Models the benchmarks run on, built from configs with random weights (no downloads).

Two sizes:
- "reduced" (CPU): Stable Diffusion's VAE block layout (4 UpDecoderBlock2D, 2 layers per block,
  attention mid-block) at 1/8 (influence) or 1/16 (distortion) of SD's width on 4×8×8 latents
  (64² images), and a small UNet2DModel on the same latents.
- "sd" (GPU): SD v1's own VAE and UNet configs (4×64×64 latents, 512² decoder output,
  UNet2DConditionModel with 768-d cross-attention fed a random text embedding).
"""
from __future__ import annotations

import torch

SD_SCALING = 0.18215

# Stable Diffusion v1's vae/config.json and unet/config.json (the fields that shape the nets).
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
              norm_num_groups=32, sample_size=512)
SD_UNET = dict(sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
               block_out_channels=(320, 640, 1280, 1280),
               down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
               up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
               cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD_TEXT_TOKENS = 77


def sd_layout_vae(width_div: int = 8, latent_hw: int = 8, seed: int = 0):
    """AutoencoderKL with SD's block layout at 1/width_div of SD's width (width_div=1: SD itself)."""
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    widths = tuple(c // width_div for c in SD_VAE["block_out_channels"])
    groups = min(SD_VAE["norm_num_groups"], widths[0])
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=widths,
        layers_per_block=SD_VAE["layers_per_block"], latent_channels=SD_VAE["latent_channels"],
        norm_num_groups=groups, sample_size=latent_hw * 8, scaling_factor=SD_SCALING,
        mid_block_add_attention=True,
    ).eval().requires_grad_(False)


def decoder_fn(vae):
    """x = D(z / s): the decoder of a scaled latent, as the audit differentiates it (SPEC §3)."""
    def decode(z):
        return vae.decode(z / vae.config.scaling_factor).sample
    return decode


def small_unet(latent_hw: int = 8, seed: int = 1):
    """UNet2DModel on 4×h×w latents, the size of diffaudit's digits preset (attention at the bottom)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    return UNet2DModel(
        sample_size=latent_hw, in_channels=4, out_channels=4, block_out_channels=(32, 32, 64),
        down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        layers_per_block=1, norm_num_groups=8, attention_head_dim=8,
    ).eval().requires_grad_(False)


def sd_unet(seed: int = 1):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    return UNet2DConditionModel(**SD_UNET).eval().requires_grad_(False)


def diffusion_model(size: str, device: str, unet_dtype: str = "float32"):
    """(LatentDiffusion, cond maker n -> cond or None) for the attack-sweep benchmark."""
    from diffaudit.models import LatentDiffusion
    from diffaudit.models.tiny import tiny_scheduler

    if size == "sd":
        model = LatentDiffusion(unet=sd_unet(), scheduler=tiny_scheduler(), device=device, dtype=unet_dtype)

        def cond(n):
            g = torch.Generator().manual_seed(0)
            return torch.randn(n, SD_TEXT_TOKENS, SD_UNET["cross_attention_dim"], generator=g).to(device)
        return model, cond
    model = LatentDiffusion(unet=small_unet(), scheduler=tiny_scheduler(), device=device, dtype=unet_dtype)
    return model, (lambda n: None)


def describe(module) -> dict:
    cfg = dict(module.config)
    keep = ("block_out_channels", "layers_per_block", "latent_channels", "norm_num_groups", "sample_size",
            "down_block_types", "up_block_types", "cross_attention_dim", "mid_block_add_attention")
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items() if k in keep}
    out["class"] = type(module).__name__
    out["parameters"] = sum(p.numel() for p in module.parameters())
    return out
